"""KD losses against hand-computed values and an independent formulation."""

import math

import torch

from distill.losses import IGNORE_INDEX, forward_kl, kd_loss_sum, embedding_cosine, embedding_mse


def test_forward_kl_matches_hand_computation():
    student = torch.tensor([[[0.0, 0.0]]])  # p_s = (1/2, 1/2)
    teacher = torch.tensor([[[math.log(3.0), 0.0]]])  # p_t = (3/4, 1/4)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert torch.allclose(forward_kl(student, teacher), torch.tensor([[expected]]), atol=1e-6)


def test_temperature_softens_and_scales_by_t_squared():
    student = torch.tensor([[[0.0, 0.0]]])
    teacher = torch.tensor([[[2 * math.log(3.0), 0.0]]])  # at T=2 the teacher is (3/4, 1/4) again
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert torch.allclose(forward_kl(student, teacher, temperature=2.0), torch.tensor([[expected]]), atol=1e-6)


def test_forward_kl_equals_torch_kl_div():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    ref = torch.nn.functional.kl_div(
        torch.log_softmax(s / 1.5, -1), torch.log_softmax(t / 1.5, -1), log_target=True, reduction="none"
    ).sum(-1) * 1.5**2
    assert torch.allclose(forward_kl(s, t, 1.5), ref, atol=1e-5)


def test_kl_is_zero_for_identical_logits_and_vocab_padding_is_cut():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 7)
    padded_teacher = torch.cat([s, torch.full((2, 4, 3), -1e4)], dim=-1)  # same family, bigger table
    assert forward_kl(s, padded_teacher).abs().max() < 1e-5


def test_kd_loss_counts_only_response_tokens():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 4, 5]])
    total, kd, ce = kd_loss_sum(s, t, labels, temperature=2.0, ce_weight=0.25)
    # independent formulation: loop over positions that predict a labelled token
    kd_ref, ce_ref = 0.0, 0.0
    for b in range(2):
        for i in range(5):
            target = labels[b, i + 1].item()
            if target == IGNORE_INDEX:
                continue
            p_t = torch.softmax(t[b, i] / 2, -1)
            kd_ref += 4 * (p_t * (torch.log(p_t) - torch.log_softmax(s[b, i] / 2, -1))).sum().item()
            ce_ref += -torch.log_softmax(s[b, i], -1)[target].item()
    assert math.isclose(kd.item(), kd_ref, rel_tol=1e-5)
    assert math.isclose(ce.item(), ce_ref, rel_tol=1e-5)
    assert math.isclose(total.item(), 0.75 * kd_ref + 0.25 * ce_ref, rel_tol=1e-5)
    # changing logits on masked positions changes nothing
    s2 = s.clone()
    s2[0, 0] += 5.0
    s2[0, 4:] += 5.0
    assert torch.allclose(kd_loss_sum(s2, t, labels, 2.0, 0.25)[0], total)


def test_embedding_losses():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert math.isclose(embedding_mse(a, b).item(), 0.5)
    assert math.isclose(embedding_cosine(a, b).item(), 0.5)
    assert embedding_cosine(a, a).item() == 0.0
