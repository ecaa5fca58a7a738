"""KD losses against hand-computed values and an independent formulation."""

import math

import torch

from minnow.distill.losses import (
    IGNORE_INDEX,
    attention_relation_kl,
    embedding_cosine,
    embedding_mse,
    forward_kl,
    kd_loss_sum,
    mapped_token_mse,
    similarity_matrix_mse,
    token_mse,
)


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
    ref = (
        torch.nn.functional.kl_div(
            torch.log_softmax(s / 1.5, -1), torch.log_softmax(t / 1.5, -1), log_target=True, reduction="none"
        ).sum(-1)
        * 1.5**2
    )
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


def test_mapped_token_mse_averages_the_layer_pairs_over_real_tokens():
    mask = torch.tensor([[1, 1, 0]])
    teacher = [torch.zeros(1, 3, 2), torch.ones(1, 3, 2)]
    student = [torch.zeros(1, 3, 2), torch.ones(1, 3, 2)]
    assert mapped_token_mse(student, teacher, mask).item() == 0.0
    student[1] = torch.tensor([[[1.0, 3.0], [1.0, 1.0], [9.0, 9.0]]])  # one real token off by 2 in one of 4 values
    assert math.isclose(mapped_token_mse(student, teacher, mask).item(), (0 + 4 / 4) / 2)
    with pytest.raises(ValueError):
        mapped_token_mse(student, teacher[:1], mask)


def test_embedding_losses():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert math.isclose(embedding_mse(a, b).item(), 0.5)
    assert math.isclose(embedding_cosine(a, b).item(), 0.5)
    assert embedding_cosine(a, a).item() == 0.0


# --- every divergence of `distill.loss`: hand-computed two-outcome values, then scipy / torch.distributions ---

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.spatial.distance import jensenshannon  # noqa: E402
from scipy.stats import entropy  # noqa: E402

from minnow.distill.losses import (  # noqa: E402
    divergence,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    sparse_kd_loss_sum,
    topk_buckets,
)

P_T, P_S = (0.75, 0.25), (0.5, 0.5)  # teacher and student of the two-token example above
TWO = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[math.log(3.0), 0.0]]])  # (student, teacher) logits


def kl2(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def mix(p, q, w):
    return tuple(w * a + (1 - w) * b for a, b in zip(p, q))


def test_reverse_kl_by_hand():
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert math.isclose(reverse_kl(*TWO).item(), expected, rel_tol=1e-6)


def test_jsd_by_hand():
    beta = 0.3
    m = (beta * 0.75 + 0.7 * 0.5, beta * 0.25 + 0.7 * 0.5)  # (0.575, 0.425)
    expected = beta * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1])) + 0.7 * (
        0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    )
    assert math.isclose(generalized_jsd(*TWO, beta=beta).item(), expected, rel_tol=1e-6)


def test_skew_kls_by_hand():
    a = 0.1
    m = (0.1 * 0.75 + 0.9 * 0.5, 0.1 * 0.25 + 0.9 * 0.5)  # teacher-skewed mixture (0.525, 0.475)
    assert math.isclose(
        skew_kl(*TWO, alpha=a).item(), 0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1]), rel_tol=1e-6
    )
    r = (0.1 * 0.5 + 0.9 * 0.75, 0.1 * 0.5 + 0.9 * 0.25)  # student-skewed mixture (0.725, 0.275)
    assert math.isclose(
        skew_reverse_kl(*TWO, alpha=a).item(), 0.5 * math.log(0.5 / r[0]) + 0.5 * math.log(0.5 / r[1]), rel_tol=1e-6
    )


def _np_softmax(x, t):
    e = np.exp((x - x.max()) / t)
    return e / e.sum()


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_every_divergence_matches_scipy_loop(t):
    """Explicit per-position loop in float64 with scipy's KL (`entropy`) and JS distance."""
    torch.manual_seed(1)
    s, te = torch.randn(2, 3, 13) * 2, torch.randn(2, 3, 13) * 2
    got = {
        "forward_kl": forward_kl(s, te, t),
        "reverse_kl": reverse_kl(s, te, t),
        "jsd": generalized_jsd(s, te, 0.5, t),
        "jsd_0.2": generalized_jsd(s, te, 0.2, t),
        "skew_kl": skew_kl(s, te, 0.1, t),
        "skew_reverse_kl": skew_reverse_kl(s, te, 0.3, t),
    }
    for b in range(2):
        for i in range(3):
            q = _np_softmax(s[b, i].double().numpy(), t)
            p = _np_softmax(te[b, i].double().numpy(), t)
            m2 = 0.2 * p + 0.8 * q
            ref = {
                "forward_kl": entropy(p, q),
                "reverse_kl": entropy(q, p),
                "jsd": jensenshannon(p, q) ** 2,
                "jsd_0.2": 0.2 * entropy(p, m2) + 0.8 * entropy(q, m2),
                "skew_kl": entropy(p, 0.1 * p + 0.9 * q),
                "skew_reverse_kl": entropy(q, 0.3 * q + 0.7 * p),
            }
            for name, value in ref.items():
                assert math.isclose(got[name][b, i].item(), t**2 * value, rel_tol=1e-4, abs_tol=1e-6), name


def test_forward_and_reverse_kl_match_torch_distributions():
    torch.manual_seed(2)
    s, t = torch.randn(4, 17), torch.randn(4, 17)
    ps, pt = torch.distributions.Categorical(logits=s), torch.distributions.Categorical(logits=t)
    assert torch.allclose(forward_kl(s, t), torch.distributions.kl_divergence(pt, ps), atol=1e-5)
    assert torch.allclose(reverse_kl(s, t), torch.distributions.kl_divergence(ps, pt), atol=1e-5)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"])
def test_divergences_vanish_at_equality_and_give_finite_gradients(name):
    torch.manual_seed(3)
    s = torch.randn(5, 9, requires_grad=True)
    div = divergence(name, 0.5, 0.1)
    log_s = torch.log_softmax(s, -1)
    assert div(log_s, log_s.detach()).abs().max() < 1e-6
    t = torch.randn(5, 9) * 30  # a very confident teacher: probabilities underflow to 0
    div(log_s, torch.log_softmax(t, -1)).sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_kd_loss_sum_uses_the_chosen_divergence():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 4, 5]])
    _, kd, _ = kd_loss_sum(s, t, labels, 2.0, 0.0, divergence("reverse_kl"))
    mask = labels[:, 1:] != IGNORE_INDEX
    assert math.isclose(kd.item(), reverse_kl(s[:, :-1], t[:, :-1], 2.0)[mask].sum().item(), rel_tol=1e-5)


# --- sparse KD over cached top-k teacher log-probabilities plus a tail bucket ---


def _teacher_cache_rows(t_logits, k, temperature):
    """What the cache stores for each position: top-k ids, their log-probs at T, and log of the rest's mass."""
    log_p = torch.log_softmax(t_logits / temperature, -1)
    top = log_p.topk(k, -1)
    tail = log_p.scatter(-1, top.indices, -math.inf).logsumexp(-1)  # -inf when k covers the vocabulary
    return top.indices, top.values, tail


def test_topk_buckets_by_explicit_loop():
    torch.manual_seed(4)
    s, t = torch.randn(3, 10), torch.randn(3, 10)
    ids, vals, tail = _teacher_cache_rows(t, 4, 2.0)
    log_s, log_t = topk_buckets(s, ids, vals, tail, 2.0)
    for n in range(3):
        p_s = np.array(_np_softmax(s[n].double().numpy(), 2.0))
        p_t = np.array(_np_softmax(t[n].double().numpy(), 2.0))
        top = ids[n].tolist()
        rest = [v for v in range(10) if v not in top]
        assert np.allclose(log_s[n].exp().numpy(), list(p_s[top]) + [p_s[rest].sum()], atol=1e-6)
        assert np.allclose(log_t[n].exp().numpy(), list(p_t[top]) + [p_t[rest].sum()], atol=1e-6)


def test_sparse_kd_with_full_top_k_equals_dense_and_is_a_lower_bound_below():
    torch.manual_seed(5)
    s, t = torch.randn(2, 6, 12), torch.randn(2, 6, 12) * 2
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 4, 5]])
    mask = labels[:, 1:] != IGNORE_INDEX
    rows = t[:, :-1][mask]
    for name in ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]:
        div = divergence(name)
        dense = kd_loss_sum(s, t, labels, 2.0, 0.3, div)
        full = sparse_kd_loss_sum(s, labels, *_teacher_cache_rows(rows, 12, 2.0), 2.0, 0.3, div)
        assert torch.allclose(torch.stack(full), torch.stack(dense), rtol=1e-4), name
        sparse = sparse_kd_loss_sum(s, labels, *_teacher_cache_rows(rows, 3, 2.0), 2.0, 0.3, div)
        if name == "forward_kl":  # grouping outcomes never increases an f-divergence
            assert 0 < sparse[1] <= dense[1] + 1e-6
        assert torch.allclose(sparse[2], dense[2])  # cross-entropy needs no teacher


def test_similarity_matrix_mse_by_hand_and_scale_free():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # similarities [[1, 0], [0, 1]]
    teacher = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # similarities [[1, 0.6], [0.6, 1]]
    assert math.isclose(similarity_matrix_mse(student, teacher).item(), 2 * 0.6**2 / 4, rel_tol=1e-6)
    assert math.isclose(similarity_matrix_mse(3 * student, teacher).item(), 0.18, rel_tol=1e-6)
    assert similarity_matrix_mse(student, torch.randn(2, 5)).shape == ()  # widths may differ


def test_token_mse_counts_real_tokens_only():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    teacher = torch.zeros(1, 2, 2)
    assert math.isclose(token_mse(student, teacher, torch.tensor([[1, 0]])).item(), (1 + 4) / 2)
    assert math.isclose(token_mse(student, teacher, torch.tensor([[1, 1]])).item(), (1 + 4 + 9 + 16) / 4)


def test_attention_relation_kl_by_hand():
    """One head of width 1: the teacher's query 0 relates to keys 0, 1 as softmax(1, 0); the student's uniformly."""
    teacher = torch.tensor([[[1.0], [0.0]]])
    student = torch.zeros(1, 2, 1)
    p = math.e / (math.e + 1)
    row0 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)  # row 1 is uniform for both: KL 0
    got = attention_relation_kl((student,) * 3, (teacher,) * 3, torch.tensor([[1, 1]]), heads=1)
    assert math.isclose(got.item(), row0 / 2, rel_tol=1e-5)


def test_attention_relation_kl_ignores_padding_and_vanishes_at_equality():
    torch.manual_seed(0)
    s, t = [torch.randn(1, 3, 8) for _ in range(3)], [torch.randn(1, 3, 12) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1]])
    alone = attention_relation_kl(s, t, mask, heads=4)
    padded = attention_relation_kl(
        [torch.cat([x, torch.randn(1, 2, 8)], 1) for x in s],
        [torch.cat([x, torch.randn(1, 2, 12)], 1) for x in t],
        torch.tensor([[1, 1, 1, 0, 0]]),
        heads=4,
    )
    assert alone.item() > 0 and math.isclose(padded.item(), alone.item(), rel_tol=1e-5)
    assert attention_relation_kl(t, t, mask, heads=4).abs().item() < 1e-6
