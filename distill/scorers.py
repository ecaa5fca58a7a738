"""Per-example quality scores: pure functions, each citing where its rule comes from, and a cache by stable id.

Every score is kept in the run directory (``data/quality.jsonl``, one row per example id with a column per
scorer), so a resumed run or a rerun of a stage reuses it; each scorer's cost (kind and seconds measured when
it ran) is kept beside it (``data/scorers.json``) and reported. Kinds, cheapest first: ``free`` (a by-product
of a pass that runs anyway, or a column of the data), ``cheap`` (text rules on the CPU), ``teacher-forward``
(one teacher pass over the data), ``student-forward`` (one student pass).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from rich.progress import track

from minnow.core import atomic

from .evaluate import batches
from .losses import IGNORE_INDEX, shift_for_next_token, token_cross_entropy

KINDS = ("free", "cheap", "teacher-forward", "student-forward")

# Gopher's stop words (Rae et al. 2021, appendix A.1.1): English prose carries at least two of them.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "*", "-", "‣", "◦", "⁃")
LINE_END_PUNCTUATION = (".", "!", "?", '"', "'", ":", ";", ")", "”", "’")


class ScoreCache:
    """Score columns per stable example id in a JSONL file, and each scorer's measured cost in a JSON sidecar."""

    def __init__(self, path: Path, cost_path: Path) -> None:
        self.path = path
        self.cost_path = cost_path
        self.rows: dict[str, dict] = {}
        if path.is_file():
            self.rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}
        self.costs: dict[str, dict] = json.loads(self.cost_path.read_text()) if self.cost_path.is_file() else {}

    def columns(
        self, cost_name: str, kind: str, ids: list[str], score: Callable[[list[int]], Iterable[dict[str, float]]]
    ) -> dict[str, dict[str, float]]:
        """Score columns for each of ``ids``: cached rows where every column is present, the rest computed by
        ``score(positions)`` (one dict of columns per position), timed under ``cost_name`` and saved."""
        assert kind in KINDS, kind
        names = self.costs.get(cost_name, {}).get("columns")
        missing = [i for i, id_ in enumerate(ids) if not names or not set(names) <= set(self.rows.get(id_, {}))]
        if missing:
            started = time.perf_counter()
            values = list(score(missing))
            seconds = time.perf_counter() - started
            for i, value in zip(missing, values):
                self.rows.setdefault(ids[i], {"id": ids[i]}).update(value)
            before = self.costs.get(cost_name, {"seconds": 0.0, "examples": 0})
            self.costs[cost_name] = {
                "kind": kind,
                "seconds": round(before["seconds"] + seconds, 4),
                "examples": before["examples"] + len(missing),
                "columns": sorted(values[0]) if values else [],
            }
            self.save()
        return {id_: self.rows[id_] for id_ in ids}

    def set_column(self, name: str, values: dict[str, float]) -> None:
        for id_, value in values.items():
            self.rows.setdefault(id_, {"id": id_})[name] = value
        self.save()

    def record_cost(self, name: str, kind: str, seconds: float, examples: int) -> None:
        """The cost of a scorer whose result is not kept per example (it is recomputed on a rerun)."""
        assert kind in KINDS, kind
        self.costs[name] = {"kind": kind, "seconds": round(seconds, 4), "examples": examples}
        atomic.write_json(self.cost_path, self.costs)

    def save(self) -> None:
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows.values()))
        atomic.write_json(self.cost_path, self.costs)


# --- heuristic quality rules -------------------------------------------------------------------------------


def _ngram_counts(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters in the most frequent word n-gram (counted at every occurrence) over all word characters.

    Gopher repetition filter (Rae et al. 2021, table A1): a document fails when this exceeds 0.20 / 0.18 / 0.16
    for n = 2 / 3 / 4.
    """
    counts = _ngram_counts(words, n)
    total = sum(len(w) for w in words)
    if not counts or not total:
        return 0.0
    gram, count = counts.most_common(1)[0]
    return 0.0 if count < 2 else count * sum(len(w) for w in gram) / total


def duplicate_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters covered by word n-grams that occur more than once over all word characters.

    Gopher repetition filter (Rae et al. 2021, table A1): a document fails when this exceeds 0.15 … 0.10
    for n = 5 … 10.
    """
    total = sum(len(w) for w in words)
    if len(words) < n or not total:
        return 0.0
    counts = _ngram_counts(words, n)
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if counts[tuple(words[i : i + n])] > 1:
            covered[i : i + n] = [True] * n
    return sum(len(w) for w, c in zip(words, covered) if c) / total


def quality_signals(text: str) -> dict[str, float]:
    """The measurements behind the Gopher, C4 and FineWeb quality rules, for one text.

    Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
    appendix A.1.1. C4: Raffel et al. 2020 (lines ending in punctuation). FineWeb: Penedo et al. 2024, "The
    FineWeb Datasets" (line-punctuation ratio, duplicated-line characters).
    """
    words = text.split()
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    n_words = len(words)
    lowered = [w.lower().strip(".,;:!?\"'()[]") for w in words]
    line_counts = Counter(lines)
    duplicate_lines = [line for line in lines if line_counts[line] > 1]
    signals = {
        "words": float(n_words),
        "mean_word_length": sum(len(w) for w in words) / n_words if n_words else 0.0,
        "symbol_word_ratio": (text.count("#") + text.count("...") + text.count("…")) / max(n_words, 1),
        "alpha_word_fraction": sum(bool(re.search(r"[^\W\d_]", w)) for w in words) / max(n_words, 1),
        "stop_words": float(sum(w in STOP_WORDS for w in lowered)),
        "bullet_line_fraction": sum(line.startswith(BULLETS) for line in lines) / len(lines),
        "ellipsis_line_fraction": sum(line.endswith(("...", "…")) for line in lines) / len(lines),
        "line_punctuation_fraction": sum(line.endswith(LINE_END_PUNCTUATION) for line in lines) / len(lines),
        "duplicate_line_fraction": len(duplicate_lines) / len(lines),
        "duplicate_line_char_fraction": sum(map(len, duplicate_lines)) / max(sum(map(len, lines)), 1),
    }
    for n in (2, 3, 4):
        signals[f"top_{n}gram_char_fraction"] = top_ngram_char_fraction(lowered, n)
    for n in (5, 6, 7, 8, 9, 10):
        signals[f"duplicate_{n}gram_char_fraction"] = duplicate_ngram_char_fraction(lowered, n)
    return signals


# (signal, lowest allowed, highest allowed). Gopher's thresholds, except the word count: Gopher asks for
# 50 to 100,000 words of a web page; distillation examples (a ticket, an answer) are often a sentence.
RULES: list[tuple[str, float, float]] = [
    ("words", 3, 100_000),
    ("mean_word_length", 3, 10),
    ("symbol_word_ratio", 0, 0.1),
    ("alpha_word_fraction", 0.8, 1),
    ("stop_words", 2, math.inf),
    ("bullet_line_fraction", 0, 0.9),
    ("ellipsis_line_fraction", 0, 0.3),
    ("line_punctuation_fraction", 0.12, 1),
    ("duplicate_line_fraction", 0, 0.3),
    ("duplicate_line_char_fraction", 0, 0.2),
    ("top_2gram_char_fraction", 0, 0.20),
    ("top_3gram_char_fraction", 0, 0.18),
    ("top_4gram_char_fraction", 0, 0.16),
    ("duplicate_5gram_char_fraction", 0, 0.15),
    ("duplicate_6gram_char_fraction", 0, 0.14),
    ("duplicate_7gram_char_fraction", 0, 0.13),
    ("duplicate_8gram_char_fraction", 0, 0.12),
    ("duplicate_9gram_char_fraction", 0, 0.11),
    ("duplicate_10gram_char_fraction", 0, 0.10),
]


def failed_rules(text: str) -> list[str]:
    """Names of the quality rules ``text`` breaks (empty: it passes them all)."""
    signals = quality_signals(text)
    return [name for name, low, high in RULES if not low <= signals[name] <= high]


def heuristic_score(text: str) -> float:
    """Fraction of the quality rules broken: 0 for clean prose, towards 1 for gibberish (lower is better)."""
    return len(failed_rules(text)) / len(RULES)


# --- near duplicates -----------------------------------------------------------------------------------------


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the lower-cased text (the whole text when it is shorter than n words)."""
    words = text.lower().split()
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicates(
    ids: list[str], texts: list[str], threshold: float, num_perm: int = 128, seed: int = 1
) -> dict[str, str]:
    """Each text whose estimated Jaccard similarity to an earlier kept one is ≥ ``threshold``: id → that one's id.

    MinHash (Broder 1997) over word 5-gram shingles with locality-sensitive hashing (``datasketch``), the
    near-duplicate removal of GPT-3 (Brown et al. 2020) and FineWeb (Penedo et al. 2024). First occurrence wins.
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    duplicate_of: dict[str, str] = {}
    for id_, text in zip(ids, texts):
        mh = MinHash(num_perm=num_perm, seed=seed)
        mh.update_batch([s.encode("utf-8") for s in shingles(text)])
        match = lsh.query(mh)
        if match:
            duplicate_of[id_] = min(match)
        elif id_ not in lsh:
            lsh.insert(id_, mh)
    return duplicate_of


# --- model scores --------------------------------------------------------------------------------------------


def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per example, over its trained tokens: mean NLL of the data, mean entropy and mean top-1 probability.

    NLL is CCNet's perplexity filter (Wenzek et al. 2020) with the teacher as the reference model; entropy and
    confidence (the probability of the model's own top choice) are the uncertainty signals of data maps
    (Swayamdipta et al. 2020, "Dataset Cartography").
    """
    logits, targets = shift_for_next_token(logits, labels)
    mask = targets.ne(IGNORE_INDEX).float()
    counts = mask.sum(-1).clamp(min=1)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    confidence = log_p.max(-1).values.exp()
    return {
        "nll": token_cross_entropy(logits, targets).sum(-1) / counts,
        "entropy": (entropy * mask).sum(-1) / counts,
        "confidence": (confidence * mask).sum(-1) / counts,
    }


@torch.inference_mode()
def model_statistics(
    model: torch.nn.Module,
    rows: list[dict],
    collate: Callable,
    batch_size: int,
    device: torch.device,
    what: str | None = None,
) -> list[dict[str, float]]:
    """``token_statistics`` of each row under ``model``, in one forward pass over the rows (a progress bar named
    after ``what`` when given)."""
    out: list[dict[str, float]] = []
    was_training = model.training
    model.eval()
    batches_ = list(batches(rows, collate, batch_size, device))
    for batch in track(batches_, description=f"Scoring with the {what}", disable=what is None or len(batches_) < 4):
        labels = batch.pop("labels")
        stats = token_statistics(model(**batch).logits, labels)
        out += [dict(zip(stats, values)) for values in zip(*(v.tolist() for v in stats.values()))]
    model.train(was_training)
    return out


def learnability(student_loss: list[float], reference_loss: list[float]) -> list[float]:
    """Student loss minus reference loss per example: high = not yet learnt, but learnable.

    RHO-LOSS (Mindermann et al. 2022, "Prioritized Training on Points that are Learnable, Worth Learning, and
    not yet Learnt") and JEST (Evans et al. 2024) select by this difference; here the reference is the teacher.
    Noise is hard for both models, so it scores low; what the teacher already knows and the student not, high.
    """
    return [s - r for s, r in zip(student_loss, reference_loss)]
