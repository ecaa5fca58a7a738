"""Distillation losses as pure functions of logits or embeddings.

Token losses return per-token values; callers sum over the tokens they train on and divide by the number
of such tokens in the whole optimizer step, so the loss is per token whatever the padding, the gradient
accumulation or the number of processes.

Every token divergence is written once over log-probabilities (``*_from_log_probs``), so the dense losses
(full vocabulary) and the sparse one over cached top-k teacher logits plus a tail bucket share it.
Each is scaled by T² like Hinton et al.'s forward KL, so the gradient magnitude does not depend on T.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSSES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")
LOG_ZERO = -1e30  # stands in for log 0 so that 0·log 0 terms are 0, with finite gradients


def align_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut both to the shared vocabulary size: models of one family pad their embedding tables differently."""
    v = min(student_logits.size(-1), teacher_logits.size(-1))
    return student_logits[..., :v], teacher_logits[..., :v]


def kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ p (log p − log q) over the last dimension."""
    log_p, log_q = log_p.clamp(min=LOG_ZERO), log_q.clamp(min=LOG_ZERO)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w·p + (1 − w)·q), computed in log space."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def forward_kl_from_log_probs(log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher‖p_student) (Hinton, Vinyals & Dean 2015): mean-seeking, the student covers every teacher mode."""
    return kl_from_log_probs(log_t, log_s)


def reverse_kl_from_log_probs(log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """KL(p_student‖p_teacher), mode-seeking: the student puts its mass where the teacher is confident.

    Gu, Dong, Wei & Huang 2023, "MiniLLM: Knowledge Distillation of Large Language Models" (ICLR 2024), argue for
    reverse KL in generative KD; MiniLLM optimises its sequence-level form by policy gradient, this is the
    per-token form (as used by GKD and DistiLLM).
    """
    return kl_from_log_probs(log_s, log_t)


def jsd_from_log_probs(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence JSD(β) between teacher P and student Q:

    β·KL(P‖M) + (1 − β)·KL(Q‖M) with M = β·P + (1 − β)·Q, 0 < β < 1; small β behaves like forward KL, large β
    like reverse KL. Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD, ICLR 2024), eq. in §3.
    """
    log_m = log_mixture(log_t, log_s, beta)
    return beta * kl_from_log_probs(log_t, log_m) + (1 - beta) * kl_from_log_probs(log_s, log_m)


def skew_kl_from_log_probs(log_s: torch.Tensor, log_t: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-skew KL: KL(P‖α·P + (1 − α)·Q), teacher P, student Q; bounded, with stable gradients for small α.

    Ko, Kim, Chen & Yun 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models" (ICML 2024).
    """
    return kl_from_log_probs(log_t, log_mixture(log_t, log_s, alpha))


def skew_reverse_kl_from_log_probs(log_s: torch.Tensor, log_t: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-skew reverse KL: KL(Q‖α·Q + (1 − α)·P), teacher P, student Q (Ko et al. 2024, DistiLLM)."""
    return kl_from_log_probs(log_s, log_mixture(log_s, log_t, alpha))


def divergence(
    name: str, jsd_beta: float = 0.5, skew_alpha: float = 0.1
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-position divergence ``f(log_p_student, log_p_teacher)`` a recipe's ``distill.loss`` names."""
    table: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "forward_kl": forward_kl_from_log_probs,
        "reverse_kl": reverse_kl_from_log_probs,
        "jsd": lambda s, t: jsd_from_log_probs(s, t, jsd_beta),
        "skew_kl": lambda s, t: skew_kl_from_log_probs(s, t, skew_alpha),
        "skew_reverse_kl": lambda s, t: skew_reverse_kl_from_log_probs(s, t, skew_alpha),
    }
    if name not in table:
        raise ValueError(f"unknown distillation loss {name!r}; one of {', '.join(LOSSES)}")
    return table[name]


def softened(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """Log-probabilities of both at temperature T over the shared vocabulary, in float32."""
    s, t = align_vocab(student_logits.float(), teacher_logits.float())
    return F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position KL(p_teacher || p_student) of temperature-softened distributions, times T².

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": soften both with T and scale
    by T² so the gradient magnitude does not depend on T.
    """
    return forward_kl_from_log_probs(*softened(student_logits, teacher_logits, temperature)) * temperature**2


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position KL(p_student‖p_teacher) at temperature T, times T² (MiniLLM, Gu et al. 2023)."""
    return reverse_kl_from_log_probs(*softened(student_logits, teacher_logits, temperature)) * temperature**2


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position JSD(β) at temperature T, times T² (GKD, Agarwal et al. 2024)."""
    return jsd_from_log_probs(*softened(student_logits, teacher_logits, temperature), beta) * temperature**2


def skew_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position α-skew KL at temperature T, times T² (DistiLLM, Ko et al. 2024)."""
    return skew_kl_from_log_probs(*softened(student_logits, teacher_logits, temperature), alpha) * temperature**2


def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position α-skew reverse KL at temperature T, times T² (DistiLLM, Ko et al. 2024)."""
    return (
        skew_reverse_kl_from_log_probs(*softened(student_logits, teacher_logits, temperature), alpha) * temperature**2
    )


def token_cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood of ``targets``; 0 where the target is IGNORE_INDEX."""
    return F.cross_entropy(student_logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at position i predict the token at i + 1."""
    return logits[:, :-1], labels[:, 1:]


Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kd_loss_sum(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    ce_weight: float,
    div: Divergence = forward_kl_from_log_probs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum over trained tokens of (1 - ce_weight)·KD + ce_weight·CE, and the two sums apart.

    ``labels`` hold IGNORE_INDEX on prompt and padding, so only response tokens count; KD is ``div`` of the
    temperature-softened distributions times T².
    """
    s, targets = shift_for_next_token(student_logits, labels)
    t, _ = shift_for_next_token(teacher_logits, labels)
    mask = targets != IGNORE_INDEX
    kd = (div(*softened(s[mask], t[mask], temperature)) * temperature**2).sum()
    ce = token_cross_entropy(s, targets).sum()
    return (1 - ce_weight) * kd + ce_weight * ce, kd, ce


def hidden_state_loss_sum(
    student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Sum over the positions ``mask`` [batch, seq] selects of the mean, over paired layers, of ‖h_s − h_t‖² / ‖h_t‖².

    Intermediate-state distillation: TinyBERT (Jiao et al. 2020) matches each student layer's hidden states to those
    of a mapped teacher layer; Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
    Distillation") adds such a term to logit KD when healing depth-pruned LLMs. The error is relative to the teacher
    state's norm, so the residual stream's growth with depth does not let the last layers dominate. The states are
    lists of [batch, seq, hidden] paired by index.
    """
    mask = mask.bool()
    errors = []
    for student, teacher in zip(student_states, teacher_states, strict=True):
        s, t = student[mask].float(), teacher[mask].float()
        errors.append(((s - t) ** 2).sum(-1) / (t**2).sum(-1).clamp(min=1e-12))
    return torch.stack(errors).mean(0).sum()


def topk_buckets(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_topk_log_probs: torch.Tensor,
    teacher_tail_log_mass: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over k + 1 buckets: the teacher's top-k tokens, and all the rest.

    ``student_logits`` is [N, V] (one row per trained position), ``teacher_ids`` and ``teacher_topk_log_probs``
    are [N, k] (the teacher's log-probabilities at temperature T of its k most likely tokens) and
    ``teacher_tail_log_mass`` is [N] (log of the teacher's remaining mass at T). The student's tail bucket is
    the mass it puts on every other token, so both are proper distributions over the same k + 1 outcomes.
    """
    s = student_logits.float() / temperature
    lse = s.logsumexp(-1, keepdim=True)
    top = s.gather(-1, teacher_ids.long()) - lse
    tail = s.scatter(-1, teacher_ids.long(), LOG_ZERO).logsumexp(-1, keepdim=True) - lse
    teacher = torch.cat([teacher_topk_log_probs.float(), teacher_tail_log_mass.float().unsqueeze(-1)], -1)
    return torch.cat([top, tail], -1), teacher


def sparse_kd_loss_sum(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_topk_log_probs: torch.Tensor,
    teacher_tail_log_mass: torch.Tensor,
    temperature: float,
    ce_weight: float,
    div: Divergence = forward_kl_from_log_probs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`kd_loss_sum`, with the teacher given as cached top-k log-probabilities plus a tail bucket.

    The teacher rows are the trained positions of the batch in row-major order (what ``mask`` selects).
    Sparse (top-k) logit KD as studied by Raman et al. 2023, "For Distillation, Tokens Are Not All You Need"
    (NeurIPS 2023 workshop), and Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating Knowledge
    Distillation in LLMs" (who show plain top-k is biased); here the mass outside the top k is kept as one
    tail bucket, so the divergence is taken between two proper distributions over k + 1 outcomes (a lower
    bound on the full-vocabulary divergence, exact as k approaches the vocabulary size).
    """
    s, targets = shift_for_next_token(student_logits, labels)
    mask = targets != IGNORE_INDEX
    log_s, log_t = topk_buckets(s[mask], teacher_ids, teacher_topk_log_probs, teacher_tail_log_mass, temperature)
    kd = (div(log_s, log_t) * temperature**2).sum()
    ce = token_cross_entropy(s, targets).sum()
    return (1 - ce_weight) * kd + ce_weight * ce, kd, ce


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between sentence embeddings (Reimers & Gurevych 2020, "Making Monolingual Sentence
    Embeddings Multilingual using Knowledge Distillation")."""
    return F.mse_loss(student.float(), teacher.float())


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between sentence embeddings; scale-free companion of the MSE above."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def similarity_matrix_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the in-batch cosine-similarity matrices of student and teacher.

    Similarity-preserving KD (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation", ICCV): the student
    matches which texts the teacher finds alike, which is what retrieval ranks by; the dimensions may differ.
    """
    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    return F.mse_loss(s @ s.T, t @ t.T)


def token_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the token vectors [batch, seq, hidden] of student and teacher, over real tokens.

    Hidden-state distillation of TinyBERT (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language
    Understanding", eq. 8), here on the last layer, without the projection (student and teacher share the width).
    """
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    squared = (student.float() - teacher.float()).pow(2) * mask
    return squared.sum() / (mask.sum() * student.size(-1))


def mapped_token_mse(
    student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor:
    """:func:`token_mse` averaged over layer pairs: each student layer's token vectors against those of the teacher
    layer it is mapped to (TinyBERT's hidden-state loss over its layer mapping, Jiao et al. 2020, eqs. 8 and 11)."""
    pairs = list(zip(student_states, teacher_states, strict=True))
    return sum(token_mse(s, t, attention_mask) for s, t in pairs) / len(pairs)


def self_relation(x: torch.Tensor, attention_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Log-softmax of scaled dot products of ``x`` [batch, seq, hidden] with itself, per relation head:
    [batch, heads, seq, seq], padding keys masked out (MiniLMv2's self-attention relation, eq. 2)."""
    b, n, d = x.shape
    split = x.float().view(b, n, heads, d // heads).transpose(1, 2)
    scores = split @ split.transpose(-1, -2) / math.sqrt(d // heads)
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], LOG_ZERO)
    return F.log_softmax(scores, dim=-1)


def attention_relation_kl(
    student: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """MiniLMv2 multi-head self-attention relation distillation (Wang et al. 2021, "MiniLMv2: Multi-Head
    Self-Attention Relation Distillation for Compressing Pretrained Transformers", eq. 3): the mean over the
    query-query, key-key and value-value relations of KL(teacher relation ‖ student relation), averaged over relation
    heads and real query tokens. ``student`` and ``teacher`` are (queries, keys, values), each [batch, seq, hidden];
    the widths may differ, as the relation heads split each one.
    """
    rows = attention_mask.bool()[:, None, :].expand(-1, heads, -1)
    total = torch.zeros((), device=attention_mask.device)
    for s, t in zip(student, teacher):
        kl = kl_from_log_probs(self_relation(t, attention_mask, heads), self_relation(s, attention_mask, heads))
        total = total + kl[rows].mean()
    return total / 3
