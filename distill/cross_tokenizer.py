"""Teacher and student with different tokenizers: one text, two tokenizations, aligned groups, the cached teacher.

Each example is rendered to one string (the student's chat template, when used) with the character ranges that
are trained; both tokenizers read that string with their offset mappings. The student row is what training
feeds the student; the teacher row is what the teacher cache is built from, and the cache keeps, next to the
teacher's top-k of each trained token, that token's character span, so training aligns the two sides
(:mod:`distill.align`) without the teacher. Each side adds its own BOS; when the text carries no end of turn,
each side appends its own EOS at the end of the text, and the two EOS align.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from minnow.core.errors import MinnowError

from .align import Group, Span, align, shares
from .cross_losses import UNMATCHED
from .losses import IGNORE_INDEX
from .teacher_cache import LSE_1, LSE_T, NLL, TAIL_1, TAIL_T, TeacherCache

HYBRID_MIN_SHARE = (
    0.5  # auto: hybrid when at least this share of the student's vocabulary has a same-text teacher token
)


class Rendered(NamedTuple):
    text: str
    trained: list[Span]  # character ranges whose tokens are trained
    eos: bool  # the text has no end of turn: each side appends its EOS, trained


def render(ex: dict, tok: PreTrainedTokenizerBase, chat_template: bool) -> Rendered:
    """One example as the text both tokenizers read, like :func:`distill.causal_lm.tokenize` lays it out."""
    if "text" in ex:
        return Rendered(ex["text"], [(0, len(ex["text"]))], True)
    messages = ex.get("messages") or [
        {"role": "user", "content": ex["prompt"]},
        {"role": "assistant", "content": ex["response"]},
    ]
    if chat_template and tok.chat_template:
        full = tok.apply_chat_template(messages, tokenize=False)
        spans = [
            (
                len(tok.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)),
                len(tok.apply_chat_template(messages[: i + 1], tokenize=False)),
            )
            for i, m in enumerate(messages)
            if m["role"] == "assistant"
        ]
        return Rendered(full, spans, False)
    if "prompt" in ex:
        text = ex["prompt"] + "\n" + ex["response"]
        return Rendered(text, [(len(ex["prompt"]) + 1, len(text))], True)
    text, spans = "", []
    for m in messages:
        head = f"{m['role']}: " if m["role"] != "assistant" else "assistant: "
        text += head
        if m["role"] == "assistant":
            spans.append((len(text), len(text) + len(m["content"])))
        text += m["content"] + "\n"
    return Rendered(text, spans, True)


def encode(r: Rendered, tok: PreTrainedTokenizerBase, special_tokens: bool, max_chars: int | None = None) -> dict:
    """input_ids, labels (IGNORE_INDEX off the trained ranges) and each token's character span.

    Tokens ending after ``max_chars`` are cut, and then no EOS is appended (the text was truncated).
    """
    if not tok.is_fast:
        raise MinnowError(f"{tok.name_or_path}: cross-tokenizer distillation needs a fast tokenizer (offset mappings)")
    enc = tok(r.text, add_special_tokens=special_tokens, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    keep = len(ids) if max_chars is None else sum(1 for _, end in spans if end <= max_chars)
    ids, spans = ids[:keep], spans[:keep]
    trained = [any(s < e2 and e > s2 for s2, e2 in r.trained) for s, e in spans]
    if r.eos and (max_chars is None or max_chars >= len(r.text)):
        ids, spans, trained = ids + [tok.eos_token_id], spans + [(len(r.text), len(r.text))], trained + [True]
    labels = [i if t else IGNORE_INDEX for i, t in zip(ids, trained)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "offsets": spans}


def cross_rows(
    ex: dict, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, chat_template: bool, max_len: int
) -> tuple[dict, dict]:
    """The student's row (with ``offsets``) and the teacher's (with ``target_offsets``, one per trained target).

    The student keeps at most ``max_len`` tokens; the teacher keeps the tokens of the text the student kept.
    The teacher always gets its BOS (a base teacher expects it); the student gets its special tokens unless the
    chat template already wrote them.
    """
    r = render(ex, student, chat_template)
    s = encode(r, student, special_tokens=not (chat_template and student.chat_template and "text" not in ex))
    limit = None
    if len(s["input_ids"]) > max_len:
        s = {k: v[:max_len] for k, v in s.items()}
        limit = max(end for _, end in s["offsets"])
    t = encode(r, teacher, special_tokens=True, max_chars=limit)
    targets = [span for span, label in zip(t["offsets"][1:], t["labels"][1:]) if label != IGNORE_INDEX]
    teacher_row = {
        "id": ex["id"],
        **{k: t[k] for k in ("input_ids", "attention_mask", "labels")},
        "target_offsets": targets,
    }
    return {"id": ex["id"], **s}, teacher_row


def trained_spans(row: dict) -> list[Span]:
    """Character spans of a row's trained targets (the tokens its trained positions predict), in order."""
    return [tuple(span) for span, label in zip(row["offsets"][1:], row["labels"][1:]) if label != IGNORE_INDEX]


def alignment_shares(student_rows: list[dict], teacher_rows: list[dict]) -> dict[str, float]:
    """Over all trained student tokens: the share aligned exactly, by merged spans, and unaligned."""
    groups: list[Group] = []
    for s, t in zip(student_rows, teacher_rows):
        groups += align(trained_spans(s), [tuple(x) for x in t["target_offsets"]])
    return shares(groups)


BYTE_LEVEL_CHARS: dict[str, int] = {}


def _byte_level_table() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (Radford et al. 2019, byte-level BPE)."""
    if not BYTE_LEVEL_CHARS:
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        extra = [b for b in range(256) if b not in printable]
        BYTE_LEVEL_CHARS.update({chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(extra)})
    return BYTE_LEVEL_CHARS


def token_texts(tok: PreTrainedTokenizerBase) -> dict[bytes, int]:
    """Each ordinary vocabulary entry's text as UTF-8 bytes → id; entries that are not unique, and special tokens, left out.

    Byte-level vocabularies (GPT-2 style) write bytes as printable stand-ins; SentencePiece ones write a space as
    ``▁`` and a lone byte as ``<0xNN>``. This reads vocabulary entries, it never decodes token sequences.
    """
    backend = json.loads(tok.backend_tokenizer.to_str())
    byte_level = "ByteLevel" in json.dumps([backend.get("pre_tokenizer"), backend.get("decoder")])
    table = _byte_level_table()
    special = set(tok.all_special_ids) | {int(i) for i in tok.added_tokens_decoder}
    entries: dict[bytes, list[int]] = {}
    fallback: dict[bytes, int] = {}
    for piece, i in tok.get_vocab().items():
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">") and not byte_level:
            fallback[bytes([int(piece[3:5], 16)])] = i  # a byte-fallback entry, used where no ordinary one has its text
        elif i in special or (byte_level and any(c not in table for c in piece)):
            continue
        else:
            text = bytes(table[c] for c in piece) if byte_level else piece.replace("▁", " ").encode()
            entries.setdefault(text, []).append(i)
    return fallback | {text: ids[0] for text, ids in entries.items() if len(ids) == 1}


def vocabulary_match(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> tuple[torch.Tensor, int]:
    """Teacher id → student id of the token with the same text (UNMATCHED if none), and how many match.

    The two EOS tokens (each side's end of sequence) are matched too.
    """
    s, t = token_texts(student), token_texts(teacher)
    table = torch.full((len(teacher),), UNMATCHED, dtype=torch.long)
    both = s.keys() & t.keys()
    table[torch.tensor([t[x] for x in both], dtype=torch.long)] = torch.tensor([s[x] for x in both], dtype=torch.long)
    if student.eos_token_id is not None and teacher.eos_token_id is not None:
        table[teacher.eos_token_id] = student.eos_token_id
    return table, int(table.ne(UNMATCHED).sum())


def choose_method(setting: str, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> tuple[str, str]:
    """(method, why) for a recipe's ``distill.cross_tokenizer``: ``same`` when one vocabulary, else uld or hybrid."""
    if teacher.get_vocab() == student.get_vocab():
        return "same", f"teacher and student share one vocabulary ({len(student)} tokens)"
    names = f"teacher {teacher.name_or_path} ({len(teacher)} tokens), student {student.name_or_path} ({len(student)} tokens)"
    if setting == "off":
        raise MinnowError(
            f"the tokenizers differ ({names}) and distill.cross_tokenizer is off; set it to auto, uld or hybrid"
        )
    _, matched = vocabulary_match(student, teacher)
    share = matched / len(student)
    overlap = f"{matched} of the student's {len(student)} tokens ({share:.0%}) have a teacher token with the same text"
    if setting == "uld":
        return "uld", f"different tokenizers ({names}); ULD as the recipe asks ({overlap})"
    if setting == "hybrid":
        return "hybrid", f"different tokenizers ({names}); hybrid as the recipe asks: {overlap}"
    if share >= HYBRID_MIN_SHARE:
        return (
            "hybrid",
            f"different tokenizers ({names}); auto chose hybrid: {overlap} (at least {HYBRID_MIN_SHARE:.0%})",
        )
    return (
        "uld",
        f"different tokenizers ({names}); auto chose ULD: only {overlap} (hybrid needs {HYBRID_MIN_SHARE:.0%})",
    )


class CrossTokenizerCollator:
    """Pads the student's batch and adds the cached teacher rows and the aligned groups (GROUP_KEYS of
    :mod:`distill.cross_losses`) for :func:`distill.cross_losses.cross_kd_loss_sum`.

    Only groups whose student and teacher tokens are all trained count; a student token elsewhere gets CE only.
    With ``eos_kd`` false, neither does the pair of EOS tokens both sides append (zero-width): a base teacher's
    distribution there is about the text it would write next, not about the answer ending (TRL's GOLD offers
    the same skip).
    """

    def __init__(self, collate: Callable, cache: TeacherCache, temperature: float, eos_kd: bool = True) -> None:
        self.collate, self.cache, self.temperature, self.eos_kd = collate, cache, temperature, eos_kd

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features])
        ids, logits, stats, groups, spans = [], [], [], [], []
        s_base = t_base = 0
        for f in features:
            t_ids, t_logits, t_stats = self.cache.get(f["id"])
            student = trained_spans(f)
            for g in align(student, [tuple(x) for x in self.cache.offsets(f["id"]).tolist()]):
                if not (g.student and g.teacher) or (not self.eos_kd and _zero_width(student[g.student[0]])):
                    continue
                groups.append((s_base + g.student[0], t_base + g.teacher[0]))
                spans += [(0, s_base + i, len(groups) - 1) for i in g.student[1:]]
                spans += [(1, t_base + i, len(groups) - 1) for i in g.teacher[1:]]
            s_base, t_base = s_base + len(student), t_base + t_ids.shape[0]
            ids.append(t_ids), logits.append(t_logits), stats.append(t_stats)
        stats_all = torch.cat(stats)
        lse, tail = (LSE_1, TAIL_1) if self.temperature == 1.0 else (LSE_T, TAIL_T)
        top = torch.cat(logits).float()
        target_logit = stats_all[:, LSE_1] - stats_all[:, NLL]
        batch["teacher_ids"] = torch.cat(ids).long()
        batch["teacher_log_probs"] = top / self.temperature - stats_all[:, lse : lse + 1]
        batch["teacher_tail"] = stats_all[:, tail]
        batch["teacher_target_log_probs"] = target_logit / self.temperature - stats_all[:, lse]
        pairs = torch.tensor(groups, dtype=torch.long).reshape(-1, 2)
        batch["group_student"], batch["group_teacher"] = pairs[:, 0], pairs[:, 1]
        for side, name in ((0, "student"), (1, "teacher")):
            mine = torch.tensor([(i, g) for s, i, g in spans if s == side], dtype=torch.long).reshape(-1, 2)
            batch[f"span_{name}"], batch[f"span_{name}_group"] = mine[:, 0], mine[:, 1]
        return batch


def _zero_width(span: Span) -> bool:
    return span[0] == span[1]
