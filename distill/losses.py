"""Distillation losses as pure functions of logits or embeddings.

Token losses return per-token values; callers sum over the tokens they train on and divide by the number
of such tokens in the whole optimizer step, so the loss is per token whatever the padding, the gradient
accumulation or the number of processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def align_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut both to the shared vocabulary size: models of one family pad their embedding tables differently."""
    v = min(student_logits.size(-1), teacher_logits.size(-1))
    return student_logits[..., :v], teacher_logits[..., :v]


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position KL(p_teacher || p_student) of temperature-softened distributions, times T².

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": soften both with T and scale
    by T² so the gradient magnitude does not depend on T.
    """
    s, t = align_vocab(student_logits.float(), teacher_logits.float())
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature**2


def token_cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood of ``targets``; 0 where the target is IGNORE_INDEX."""
    return F.cross_entropy(
        student_logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at position i predict the token at i + 1."""
    return logits[:, :-1], labels[:, 1:]


def kd_loss_sum(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    ce_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum over trained tokens of (1 - ce_weight)·KD + ce_weight·CE, and the two sums apart.

    ``labels`` hold IGNORE_INDEX on prompt and padding, so only response tokens count.
    """
    s, targets = shift_for_next_token(student_logits, labels)
    t, _ = shift_for_next_token(teacher_logits, labels)
    mask = (targets != IGNORE_INDEX).float()
    kd = (forward_kl(s, t, temperature) * mask).sum()
    ce = token_cross_entropy(s, targets).sum()
    return (1 - ce_weight) * kd + ce_weight * ce, kd, ce


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between sentence embeddings (Reimers & Gurevych 2020, "Making Monolingual Sentence
    Embeddings Multilingual using Knowledge Distillation")."""
    return F.mse_loss(student.float(), teacher.float())


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between sentence embeddings; scale-free companion of the MSE above."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
