"""Distillation losses between a teacher and a student with different vocabularies, as pure functions.

Both take, per aligned group of tokens (:mod:`distill.align`), the student's log-probabilities over its whole
vocabulary at the group's first token, the teacher's top-k log-probabilities and the log of its remaining
(tail) mass there, and each side's *span log-scale*: the summed log-probabilities of the group's later tokens,
0 for a group of one token. A merged group's distribution is the first token's distribution times that scale,
P(y, rest | x) ≈ P(y | x)·P(rest | first token, x) (the chain rule for the span actually in the text, as GOLD
merges probabilities); the mass it leaves out, 1 − scale, is one more bucket on each side, so both stay proper
distributions. With k equal to the teacher's vocabulary size and scales 0 the losses are exact.

- :func:`uld` — Universal Logit Distillation, Boizard, Fivel, Chaabane, Yang, Peyrard & Hudelot 2024, "Towards
  Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs" (TMLR 2025): the Wasserstein-1
  distance between the two distributions when their tokens are matched by rank, which for sorted probabilities
  is Σ_i |p_s(i) − p_t(i)|, the shorter vocabulary padded with zeros.
- :func:`hybrid` — in the manner of GOLD (Patiño, Rasul, Gallouédec et al. 2025, "Unlocking On-Policy
  Distillation for Any Model Family", Hugging Face; TRL's ``GOLDTrainer``): tokens whose text is the same in both
  vocabularies are compared one to one by KL(teacher‖student), the rest by ULD's sorted distance.
"""

from __future__ import annotations

import torch

from .losses import IGNORE_INDEX, LOG_ZERO, kl_from_log_probs, shift_for_next_token, token_cross_entropy

UNMATCHED = -1  # in a teacher-to-student id map: the teacher token has no student token with the same text


def span_log_scale(target_log_probs: torch.Tensor, group_of: torch.Tensor, groups: int) -> torch.Tensor:
    """Per group, the sum of the log-probabilities of its later tokens (``group_of`` says whose each one is)."""
    return target_log_probs.new_zeros(groups).index_add(0, group_of, target_log_probs)


def sorted_l1(student_probs: torch.Tensor, teacher_top_probs: torch.Tensor, teacher_tail: torch.Tensor) -> torch.Tensor:
    """Σ_i |s(i) − t(i)| over probabilities sorted by rank, when the teacher is known on its top k only.

    ``student_probs`` [G, V] (any non-negative masses), ``teacher_top_probs`` [G, k] and ``teacher_tail`` [G]
    (the teacher's mass outside them). The first k ranks are compared one by one and the rest as one bucket,
    |Σ_{i>k} s(i) − tail|, a lower bound on the full sum by the triangle inequality, exact when the tail is 0.
    """
    k = teacher_top_probs.size(-1)
    student_top = student_probs.topk(min(k, student_probs.size(-1)), -1).values
    teacher_top = teacher_top_probs.sort(-1, descending=True).values
    width = max(student_top.size(-1), k)
    student_top = torch.nn.functional.pad(student_top, (0, width - student_top.size(-1)))
    teacher_top = torch.nn.functional.pad(teacher_top, (0, width - k))
    student_rest = (student_probs.sum(-1) - student_top.sum(-1)).clamp(min=0)
    return (student_top - teacher_top).abs().sum(-1) + (student_rest - teacher_tail).abs()


def uld(
    student_log_probs: torch.Tensor,
    teacher_top_log_probs: torch.Tensor,
    teacher_tail_log_mass: torch.Tensor,
    student_scale: torch.Tensor,
    teacher_scale: torch.Tensor,
) -> torch.Tensor:
    """Per-group ULD distance (Boizard et al. 2024) between the span distributions; see the module docstring."""
    s_scale, t_scale = student_scale.exp().unsqueeze(-1), teacher_scale.exp().unsqueeze(-1)
    student = student_log_probs.exp() * s_scale
    teacher_top = teacher_top_log_probs.exp() * t_scale
    teacher_tail = teacher_tail_log_mass.exp() * t_scale.squeeze(-1)
    left_out = (s_scale - t_scale).squeeze(-1).abs()
    return sorted_l1(student, teacher_top, teacher_tail) + left_out


def matched_kl(
    student_log_probs: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_top_log_probs: torch.Tensor,
    student_scale: torch.Tensor,
    teacher_scale: torch.Tensor,
    teacher_to_student: torch.Tensor,
) -> torch.Tensor:
    """Per-group KL(teacher‖student) over the teacher's top-k tokens that have a same-text student token, each its
    own bucket, plus one bucket for everything else (the rest of both vocabularies and the span's left-out mass)."""
    mapped = teacher_to_student[teacher_ids.long()]
    matched = mapped.ne(UNMATCHED)
    s_log = student_log_probs + student_scale.unsqueeze(-1)
    s_matched = s_log.gather(-1, mapped.clamp(min=0)).masked_fill(~matched, LOG_ZERO)
    t_matched = (teacher_top_log_probs + teacher_scale.unsqueeze(-1)).masked_fill(~matched, LOG_ZERO)
    s_buckets = torch.cat([s_matched, _log_rest(s_matched)], -1)
    t_buckets = torch.cat([t_matched, _log_rest(t_matched)], -1)
    return kl_from_log_probs(t_buckets, s_buckets)


def hybrid(
    student_log_probs: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_top_log_probs: torch.Tensor,
    teacher_tail_log_mass: torch.Tensor,
    student_scale: torch.Tensor,
    teacher_scale: torch.Tensor,
    teacher_to_student: torch.Tensor,
) -> torch.Tensor:
    """Per-group :func:`matched_kl` plus ULD over the rest (GOLD's hybrid; see the module docstring).

    ``teacher_to_student`` maps every teacher id to the student id with the same text, or UNMATCHED. What the
    KL's last bucket lumps together is compared by :func:`sorted_l1`: the teacher's unmatched top-k tokens and
    tail against the student's tokens other than the matched ones.
    """
    kl = matched_kl(
        student_log_probs, teacher_ids, teacher_top_log_probs, student_scale, teacher_scale, teacher_to_student
    )
    mapped = teacher_to_student[teacher_ids.long()]
    matched = mapped.ne(UNMATCHED)
    taken = torch.zeros_like(student_log_probs).scatter_add(-1, mapped.clamp(min=0), matched.float()).gt(0)
    student_rest = (student_log_probs + student_scale.unsqueeze(-1)).exp().masked_fill(taken, 0.0)
    teacher_rest = (teacher_top_log_probs + teacher_scale.unsqueeze(-1)).exp().masked_fill(matched, 0.0)
    teacher_tail = (teacher_tail_log_mass + teacher_scale).exp()
    return kl + sorted_l1(student_rest, teacher_rest, teacher_tail)


def _log_rest(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ p) over the last dimension, kept finite."""
    return torch.log1p(-log_probs.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-6))


GROUP_KEYS = (
    "teacher_ids",
    "teacher_log_probs",
    "teacher_tail",
    "teacher_target_log_probs",
    "group_student",
    "group_teacher",
    "span_student",
    "span_student_group",
    "span_teacher",
    "span_teacher_group",
)


def cross_kd_loss_sum(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: dict[str, torch.Tensor],
    temperature: float,
    ce_weight: float,
    teacher_to_student: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum over trained tokens of (1 − ce_weight)·KD·T² + ce_weight·CE across vocabularies, and the two sums apart.

    ``teacher`` holds the GROUP_KEYS a :class:`distill.cross_tokenizer.CrossTokenizerCollator` adds: the teacher's
    cached rows at temperature T (``teacher_*``, one row per teacher trained token, with the log-probability of
    the token itself), and the aligned groups: the student's and the teacher's row of each group's first token
    (``group_*``) and every later token of a merged group with its group (``span_*``). Student rows count the
    trained positions of the batch in row-major order, as in :func:`distill.losses.sparse_kd_loss_sum`. KD is
    :func:`hybrid` when ``teacher_to_student`` is given, else :func:`uld`; student tokens in no aligned group get
    CE only. With ``ce_weight`` 1 (SFT-only) the KD term is not computed and ``teacher`` may be empty.
    """
    s, targets = shift_for_next_token(student_logits, labels)
    ce = token_cross_entropy(s, targets).sum()
    if ce_weight == 1.0:
        return ce, ce.new_zeros(()), ce
    mask = targets.ne(IGNORE_INDEX)
    log_s = (s[mask].float() / temperature).log_softmax(-1)
    groups = teacher["group_student"].numel()
    later = teacher["span_student"]
    s_scale = span_log_scale(
        log_s[later].gather(-1, targets[mask][later].unsqueeze(-1)).squeeze(-1), teacher["span_student_group"], groups
    )
    t_scale = span_log_scale(
        teacher["teacher_target_log_probs"][teacher["span_teacher"]].float(), teacher["span_teacher_group"], groups
    )
    first_s, first_t = log_s[teacher["group_student"]], teacher["group_teacher"]
    top, tail = teacher["teacher_log_probs"][first_t].float(), teacher["teacher_tail"][first_t].float()
    if teacher_to_student is None:
        kd = uld(first_s, top, tail, s_scale, t_scale).sum()
    else:
        ids = teacher["teacher_ids"][first_t]
        kd = hybrid(first_s, ids, top, tail, s_scale, t_scale, teacher_to_student.to(ids.device)).sum()
    return (1 - ce_weight) * kd * temperature**2 + ce_weight * ce, kd, ce
