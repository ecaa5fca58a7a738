"""Held-out metrics for causal-LM runs, computed over response tokens only."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from .losses import IGNORE_INDEX, align_vocab, forward_kl, shift_for_next_token, token_cross_entropy


def batches(rows: list[dict], collate: Callable, batch_size: int, device: torch.device) -> Iterator[dict]:
    for i in range(0, len(rows), batch_size):
        batch = collate(
            [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows[i : i + batch_size]]
        )
        yield {k: v.to(device) for k, v in batch.items()}


@torch.inference_mode()
def evaluate_causal(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    rows: list[dict],
    collate: Callable,
    batch_size: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Loss and perplexity of both models; KL(teacher‖student) and top-1 agreement of the student with the teacher."""
    student.eval()
    sums = {"teacher_nll": 0.0, "student_nll": 0.0, "kl": 0.0, "agree": 0.0}
    tokens = 0
    for batch in batches(rows, collate, batch_size, device):
        labels = batch.pop("labels")
        s_logits, targets = shift_for_next_token(student(**batch).logits, labels)
        t_logits, _ = shift_for_next_token(teacher(**batch).logits, labels)
        mask = targets.ne(IGNORE_INDEX)
        sums["student_nll"] += token_cross_entropy(s_logits, targets)[mask].sum().item()
        sums["teacher_nll"] += token_cross_entropy(t_logits, targets)[mask].sum().item()
        sums["kl"] += forward_kl(s_logits, t_logits)[mask].sum().item()
        s_aligned, t_aligned = align_vocab(s_logits, t_logits)
        sums["agree"] += (s_aligned.argmax(-1) == t_aligned.argmax(-1))[mask].sum().item()
        tokens += mask.sum().item()
    return _per_token(sums, tokens)


@torch.inference_mode()
def evaluate_cached(
    student: torch.nn.Module, rows: list[dict], collate: Callable, batch_size: int, device: torch.device
):
    """:func:`evaluate_causal` with the teacher read from its cache (``collate`` is a T = 1 CachedTeacherCollator).

    Teacher loss and top-1 agreement are exact; KL(teacher‖student) is taken over the cached top-k tokens plus
    one tail bucket, a lower bound on the full-vocabulary KL.
    """
    from .losses import forward_kl_from_log_probs, topk_buckets

    student.eval()
    sums = {"teacher_nll": 0.0, "student_nll": 0.0, "kl": 0.0, "agree": 0.0}
    tokens = 0
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i : i + batch_size]).items()}
        labels = batch.pop("labels")
        ids, log_probs, tail, nll = (
            batch.pop(k) for k in ("teacher_ids", "teacher_log_probs", "teacher_tail", "teacher_nll")
        )
        s_logits, targets = shift_for_next_token(student(**batch).logits, labels)
        mask = targets.ne(IGNORE_INDEX)
        s_rows = s_logits[mask]
        sums["student_nll"] += token_cross_entropy(s_logits, targets)[mask].sum().item()
        sums["teacher_nll"] += nll.sum().item()
        sums["kl"] += forward_kl_from_log_probs(*topk_buckets(s_rows, ids, log_probs, tail, 1.0)).sum().item()
        sums["agree"] += (s_rows.argmax(-1) == ids[:, 0]).sum().item()
        tokens += mask.sum().item()
    return _per_token(sums, tokens) | {"teacher_from": "cache (KL over the top-k tokens plus a tail bucket)"}


def _per_token(sums: dict[str, float], tokens: int) -> dict:
    n = max(tokens, 1)
    return {
        "teacher": {"loss": sums["teacher_nll"] / n, "perplexity": math.exp(sums["teacher_nll"] / n)},
        "student": {
            "loss": sums["student_nll"] / n,
            "perplexity": math.exp(sums["student_nll"] / n),
            "kl_to_teacher": sums["kl"] / n,
            "top1_agreement": sums["agree"] / n,
        },
        "tokens": tokens,
    }
