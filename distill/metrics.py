"""How much of the teacher's embedding geometry a student keeps: pure functions of two embedding matrices.

Rows are L2-normalised embeddings of the same texts, teacher and student.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def mean_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean cosine between each text's student and teacher embeddings (same dimension required)."""
    s = student / np.linalg.norm(student, axis=1, keepdims=True)
    t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    return float((s * t).sum(1).mean())


def pairwise_spearman(student: np.ndarray, teacher: np.ndarray) -> float:
    """Spearman correlation of all pairwise cosine similarities, student vs teacher.

    The STS-style agreement measure of Reimers & Gurevych 2019 (Sentence-BERT), taken against the teacher's
    similarities instead of human labels; it does not need equal dimensions.
    """
    iu = np.triu_indices(len(student), k=1)
    return float(spearmanr((student @ student.T)[iu], (teacher @ teacher.T)[iu]).statistic)


def topk_overlap(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each text's k nearest neighbours (itself excluded) that student and teacher share."""
    k = min(k, len(student) - 1)

    def neighbours(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]

    s, t = neighbours(student), neighbours(teacher)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(s, t)]))


def agreement(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    out = {"spearman_pairwise": pairwise_spearman(student, teacher), "top10_overlap": topk_overlap(student, teacher)}
    if student.shape[1] == teacher.shape[1]:
        out = {"mean_cosine": mean_cosine(student, teacher)} | out
    return out


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts over whitespace tokens: the longest common subsequence, as recall and precision
    combined (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"; β = 1)."""
    c, r = candidate.lower().split(), reference.lower().split()
    if not c or not r:
        return float(c == r)
    row = [0] * (len(r) + 1)
    for word in c:
        diagonal = 0
        for j, other in enumerate(r, 1):
            diagonal, row[j] = row[j], diagonal + 1 if word == other else max(row[j], row[j - 1])
    lcs = row[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(c) + len(r))


def seq_rep(text: str, n: int = 3) -> float:
    """Share of the whitespace-token n-grams of ``text`` that repeat an earlier one, 1 − unique / all: how much a
    generation loops (seq-rep-n of Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training")."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)
