"""Aligning two tokenizations of one text by character spans, never by decoding token strings.

Both tokenizers read the same string; each token comes with its ``(start, end)`` character span from the fast
tokenizer's offset mapping. The text is cut where *neither* tokenization has a token straddling the position;
between two consecutive cuts lie one or more tokens of each side, which cover the same text and form a group
(Boizard et al. 2024 align by position; GOLD, Patiño et al. 2025, by text spans; this is the span form).

- One token on each side: aligned **exactly**.
- Several on either side: a **merged** span; its log-probability is the sum of its tokens' (the chain rule).
- Tokens of one side only (a BOS or EOS the other tokenizer does not add, a token the other side dropped):
  **unaligned**.

Byte-level tokenizers (GPT-2, SmolLM, Qwen) split a multi-byte character into byte tokens that all report the
character's span, and byte-fallback tokenizers (Gemma, Llama 2) do the same with ``<0xNN>`` tokens: overlapping
spans never produce a cut inside them, so a character cut into bytes lands whole in one group. Zero-width tokens
(special tokens added by the tokenizer, e.g. BOS at 0, an appended EOS at the end) pair up with the other side's
zero-width tokens at the same position, in order; the rest stay unaligned.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

Span = tuple[int, int]


class Group(NamedTuple):
    """Token indices of each side covering the same text (indices into the span lists given to :func:`align`)."""

    student: tuple[int, ...]
    teacher: tuple[int, ...]

    @property
    def kind(self) -> str:
        if not self.student or not self.teacher:
            return "unaligned"
        return "exact" if len(self.student) == len(self.teacher) == 1 else "merged"


def cuts(student: Sequence[Span], teacher: Sequence[Span]) -> list[int]:
    """Positions, among the token ends of either side, that no token of either side straddles."""
    inside: set[int] = set()
    for start, end in (*student, *teacher):
        inside.update(range(start + 1, end))
    return sorted({end for start, end in (*student, *teacher) if end > start} - inside)


def align(student: Sequence[Span], teacher: Sequence[Span]) -> list[Group]:
    """Groups of student and teacher tokens covering the same text, in text order.

    Spans are character (or byte) offsets into one shared text, each side in token order (a tokenizer's offset
    mapping). Zero-width spans are tokens that cover no text, see the module docstring.
    """
    points = cuts(student, teacher)
    wide: dict[int, tuple[list[int], list[int]]] = {}
    zero: dict[int, tuple[list[int], list[int]]] = {}
    for side, spans in enumerate((student, teacher)):
        for i, (start, end) in enumerate(spans):
            if end > start:
                wide.setdefault(bisect_right(points, start), ([], []))[side].append(i)
            else:
                zero.setdefault(start, ([], []))[side].append(i)
    keyed: list[tuple[tuple[int, int, int], Group]] = []  # (start, zero-width first, order)
    for s, t in wide.values():
        start = min(spans[i][0] for spans, side in ((student, s), (teacher, t)) for i in side)
        keyed.append(((start, 1, 0), Group(tuple(s), tuple(t))))
    for at, (s, t) in zero.items():
        for n in range(max(len(s), len(t))):
            keyed.append(((at, 0, n), Group(tuple(s[n : n + 1]), tuple(t[n : n + 1]))))
    return [group for _, group in sorted(keyed)]


def shares(groups: Sequence[Group]) -> dict[str, float]:
    """Share of student tokens aligned exactly, by a merged span, and not at all."""
    counts = {"exact": 0, "merged": 0, "unaligned": 0}
    for group in groups:
        counts[group.kind] += len(group.student)
    total = sum(counts.values())
    return {kind: (n / total if total else 0.0) for kind, n in counts.items()} | {"student_tokens": total}
