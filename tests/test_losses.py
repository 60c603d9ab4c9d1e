"""Property tests for the pure distillation losses in metakd.losses."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from metakd.losses import feature_mse, hard_ce, kd_kl, kd_loss, masked_mean_pool

SETTINGS = settings(max_examples=50, deadline=None)

finite = st.floats(min_value=-8.0, max_value=8.0, allow_nan=False, allow_infinity=False)
temperatures = st.floats(min_value=0.25, max_value=8.0, allow_nan=False)
alphas = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: one intra-op thread avoids thread-pool overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tensor(draw, shape, elements=finite) -> torch.Tensor:
    return torch.from_numpy(draw(hnp.arrays(np.float64, shape, elements=elements)))


@st.composite
def logit_pair(draw, max_lead_dims: int = 2):
    """Two float64 logit tensors of one shape ``[*lead, C]`` with 1..max_lead_dims leading dims."""
    lead = draw(st.lists(st.integers(1, 4), min_size=1, max_size=max_lead_dims))
    shape = (*lead, draw(st.integers(2, 6)))
    return _tensor(draw, shape), _tensor(draw, shape)


@st.composite
def logits_and_labels(draw):
    b, c = draw(st.integers(1, 6)), draw(st.integers(2, 6))
    zs, zt = _tensor(draw, (b, c)), _tensor(draw, (b, c))
    labels = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=b, max_size=b)), dtype=torch.long)
    return zs, zt, labels


@st.composite
def hidden_pair_and_mask(draw):
    b, length, h = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    s, t = _tensor(draw, (b, length, h)), _tensor(draw, (b, length, h))
    mask = torch.tensor(draw(hnp.arrays(np.int64, (b, length), elements=st.integers(0, 1))))
    return s, t, mask


def reference_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(z_T/T) || softmax(z_S/T)), summed over classes, mean over all rows (via F.kl_div)."""
    c = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.reshape(-1, c) / temperature, dim=-1)
    p = F.softmax(teacher_logits.reshape(-1, c) / temperature, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean")


# ---------------------------------------------------------------------------- kd_kl
@SETTINGS
@given(pair=logit_pair(), temperature=temperatures)
def test_kd_kl_zero_for_identical_logits(pair, temperature):
    z, _ = pair
    assert abs(float(kd_kl(z, z.clone(), temperature))) < 1e-12


@SETTINGS
@given(pair=logit_pair(), temperature=temperatures)
def test_kd_kl_non_negative_and_scalar(pair, temperature):
    zs, zt = pair
    value = kd_kl(zs, zt, temperature)
    assert value.shape == ()
    assert value.dtype == torch.float64
    assert math.isfinite(float(value))
    assert float(value) >= -1e-12


@SETTINGS
@given(pair=logit_pair(), temperature=temperatures)
def test_kd_kl_is_t_squared_times_kl_at_temperature(pair, temperature):
    zs, zt = pair
    expected = temperature**2 * reference_kl(zs, zt, temperature)
    torch.testing.assert_close(kd_kl(zs, zt, temperature), expected, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(pair=logit_pair(), temperature=temperatures, data=st.data())
def test_kd_kl_invariant_to_per_row_constant(pair, temperature, data):
    zs, zt = pair
    shifts = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False)
    cs = _tensor(data.draw, (*zs.shape[:-1], 1), shifts)
    ct = _tensor(data.draw, (*zt.shape[:-1], 1), shifts)
    torch.testing.assert_close(kd_kl(zs + cs, zt + ct, temperature), kd_kl(zs, zt, temperature),
                               rtol=1e-9, atol=1e-10)


def test_kd_kl_positive_for_different_distributions():
    zs = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    p = torch.softmax(zt, -1)[0]
    expected = float((p * torch.log(p / 0.5)).sum())  # T = 1
    assert float(kd_kl(zs, zt, 1.0)) == pytest.approx(expected, rel=1e-12)
    assert expected > 0.1


def test_kd_kl_rows_are_every_leading_position():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    zt = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(kd_kl(zs, zt, 2.0), kd_kl(zs.reshape(6, 5), zt.reshape(6, 5), 2.0))


def test_kd_kl_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        kd_kl(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="shape"):
        kd_kl(torch.zeros(2, 3), torch.zeros(3, 3), 1.0)


# ---------------------------------------------------------------------------- kd_loss
@SETTINGS
@given(batch=logits_and_labels(), temperature=temperatures)
def test_kd_loss_alpha_one_is_pure_kd_kl(batch, temperature):
    zs, zt, labels = batch
    torch.testing.assert_close(kd_loss(zs, zt, labels, temperature, 1.0), kd_kl(zs, zt, temperature),
                               rtol=1e-12, atol=1e-14)


@SETTINGS
@given(batch=logits_and_labels(), temperature=temperatures)
def test_kd_loss_alpha_zero_is_pure_cross_entropy(batch, temperature):
    zs, zt, labels = batch
    torch.testing.assert_close(kd_loss(zs, zt, labels, temperature, 0.0), F.cross_entropy(zs, labels),
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hard_ce(zs, labels), F.cross_entropy(zs, labels))


@SETTINGS
@given(batch=logits_and_labels(), temperature=temperatures, alpha=alphas)
def test_kd_loss_is_linear_mix(batch, temperature, alpha):
    zs, zt, labels = batch
    expected = alpha * temperature**2 * reference_kl(zs, zt, temperature) + (1 - alpha) * F.cross_entropy(zs, labels)
    torch.testing.assert_close(kd_loss(zs, zt, labels, temperature, alpha), expected, rtol=1e-9, atol=1e-12)


def test_kd_loss_zero_weight_skips_its_term():
    zs = torch.randn(3, 4, dtype=torch.float64)
    # alpha = 1: the hard term is skipped, so labels that CE would reject do not matter.
    bad_labels = torch.tensor([7, 9, 11])
    torch.testing.assert_close(kd_loss(zs, zs + 1.0, bad_labels, 2.0, 1.0), kd_kl(zs, zs + 1.0, 2.0))
    # alpha = 0: the soft term is skipped, so a NaN teacher does not poison the loss.
    labels = torch.tensor([0, 1, 3])
    nan_teacher = torch.full_like(zs, float("nan"))
    torch.testing.assert_close(kd_loss(zs, nan_teacher, labels, 2.0, 0.0), F.cross_entropy(zs, labels))


# ---------------------------------------------------------------------------- gradients
def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    fn(*leaves).backward()
    return [leaf.grad for leaf in leaves]


def test_kd_kl_gradients_reach_student_and_teacher():
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(4, 3, generator=g, dtype=torch.float64)
    zt = torch.randn(4, 3, generator=g, dtype=torch.float64)
    gs, gt = _grads(lambda s, t: kd_kl(s, t, 2.0), zs, zt)
    assert gs is not None and float(gs.abs().sum()) > 0
    assert gt is not None and float(gt.abs().sum()) > 0
    # and they are the right gradients for both inputs (a detached teacher fails this)
    assert torch.autograd.gradcheck(lambda s, t: kd_kl(s, t, 2.0),
                                    (zs.clone().requires_grad_(True), zt.clone().requires_grad_(True)))


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_kd_loss_gradients_reach_student_and_teacher(alpha):
    g = torch.Generator().manual_seed(2)
    zs = torch.randn(5, 3, generator=g, dtype=torch.float64)
    zt = torch.randn(5, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 0])
    gs, gt = _grads(lambda s, t: kd_loss(s, t, labels, 1.5, alpha), zs, zt)
    assert gs is not None and float(gs.abs().sum()) > 0
    assert gt is not None and float(gt.abs().sum()) > 0
    assert torch.autograd.gradcheck(lambda s, t: kd_loss(s, t, labels, 1.5, alpha),
                                    (zs.clone().requires_grad_(True), zt.clone().requires_grad_(True)))


def test_feature_mse_gradients_reach_student_and_teacher():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    gs, gt = _grads(lambda a, b: feature_mse(a, b, mask), s, t)
    assert gs is not None and gt is not None
    torch.testing.assert_close(gt, -gs)
    assert float(gt[mask.bool()].abs().sum()) > 0
    assert float(gs[~mask.bool()].abs().sum()) == 0.0  # padding gets no gradient


# ---------------------------------------------------------------------------- feature_mse
@SETTINGS
@given(batch=hidden_pair_and_mask(), data=st.data())
def test_feature_mse_ignores_masked_positions(batch, data):
    s, t, mask = batch
    before = feature_mse(s, t, mask)
    pad = (mask == 0).unsqueeze(-1).expand_as(s)
    noise_s = _tensor(data.draw, s.shape, st.floats(-100, 100, allow_nan=False))
    noise_t = _tensor(data.draw, t.shape, st.floats(-100, 100, allow_nan=False))
    after = feature_mse(torch.where(pad, noise_s, s), torch.where(pad, noise_t, t), mask)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(batch=hidden_pair_and_mask())
def test_feature_mse_masked_equals_manual(batch):
    s, t, mask = batch
    rows = [((s[b, i] - t[b, i]) ** 2).mean() for b in range(s.shape[0]) for i in range(s.shape[1]) if mask[b, i]]
    expected = torch.stack(rows).mean() if rows else torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(feature_mse(s, t, mask), expected, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(batch=hidden_pair_and_mask())
def test_feature_mse_all_ones_mask_is_plain_mse(batch):
    s, t, _ = batch
    ones = torch.ones(s.shape[:2], dtype=torch.long)
    torch.testing.assert_close(feature_mse(s, t, ones), F.mse_loss(s, t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(feature_mse(s, t), F.mse_loss(s, t), rtol=1e-10, atol=1e-12)
    # [B, H] inputs without a mask
    torch.testing.assert_close(feature_mse(s[:, 0], t[:, 0]), F.mse_loss(s[:, 0], t[:, 0]), rtol=1e-10, atol=1e-12)


def test_feature_mse_bool_mask_same_as_int_mask():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    torch.testing.assert_close(feature_mse(s, t, mask.bool()), feature_mse(s, t, mask))


def test_feature_mse_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        feature_mse(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="shape"):
        feature_mse(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4), torch.ones(2, 3))


# ---------------------------------------------------------------------------- masked_mean_pool
@SETTINGS
@given(batch=hidden_pair_and_mask())
def test_masked_mean_pool_matches_manual_mean(batch):
    hidden, _, mask = batch
    pooled = masked_mean_pool(hidden, mask)
    assert pooled.shape == (hidden.shape[0], hidden.shape[2])
    for b in range(hidden.shape[0]):
        real = hidden[b][mask[b].bool()]
        expected = real.mean(0) if len(real) else torch.zeros(hidden.shape[2], dtype=hidden.dtype)
        torch.testing.assert_close(pooled[b], expected, rtol=1e-10, atol=1e-12)


def test_masked_mean_pool_fully_masked_row_is_zero_not_nan():
    hidden = torch.ones(2, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = masked_mean_pool(hidden, mask)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled[0], torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(pooled[1], torch.zeros(4, dtype=torch.float64))


# ---------------------------------------------------------------------------- divergences
from metakd.losses import DIVERGENCES, kd_divergence, kd_jsd, kd_reverse_kl  # noqa: E402

betas = st.floats(min_value=0.01, max_value=0.99, allow_nan=False)


def _probs(z: torch.Tensor, t: float) -> torch.Tensor:
    return F.softmax(z / t, dim=-1)


@SETTINGS
@given(logit_pair(), temperatures)
def test_reverse_kl_matches_its_definition_and_is_forward_kl_with_roles_swapped(pair, t):
    zs, zt = pair
    ps, pt = _probs(zs, t), _probs(zt, t)
    want = (ps * (ps.log() - pt.log())).sum(-1).mean() * t * t
    assert torch.allclose(kd_reverse_kl(zs, zt, t), want, rtol=1e-9, atol=1e-9)
    assert torch.allclose(kd_reverse_kl(zs, zt, t), kd_kl(zt, zs, t), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(logit_pair(), temperatures, betas)
def test_jsd_matches_its_definition(pair, t, beta):
    zs, zt = pair
    ps, pt = _probs(zs, t), _probs(zt, t)
    m = beta * pt + (1 - beta) * ps
    want = (beta * (pt * (pt.log() - m.log())).sum(-1) + (1 - beta) * (ps * (ps.log() - m.log())).sum(-1))
    assert torch.allclose(kd_jsd(zs, zt, t, beta), want.mean() * t * t, rtol=1e-8, atol=1e-9)


@SETTINGS
@given(logit_pair(), temperatures, betas)
def test_jsd_swapping_roles_is_jsd_of_one_minus_beta(pair, t, beta):
    zs, zt = pair
    assert torch.allclose(kd_jsd(zs, zt, t, beta), kd_jsd(zt, zs, t, 1 - beta), rtol=1e-9, atol=1e-10)


@SETTINGS
@given(logit_pair(), temperatures)
def test_symmetric_jsd_is_bounded_by_ln2(pair, t):
    zs, zt = pair
    value = float(kd_jsd(zs, zt, t, 0.5)) / (t * t)
    assert -1e-12 <= value <= math.log(2) + 1e-12


@SETTINGS
@given(logit_pair(), temperatures, st.sampled_from(DIVERGENCES), betas)
def test_every_divergence_is_non_negative_and_zero_on_equal_logits(pair, t, name, beta):
    zs, zt = pair
    assert float(kd_divergence(zs, zt, t, name, beta)) >= -1e-10
    assert abs(float(kd_divergence(zt, zt, t, name, beta))) <= 1e-10


def test_kd_loss_default_soft_term_is_forward_kl():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    assert torch.equal(kd_loss(zs, zt, y, 2.0, 0.7), kd_loss(zs, zt, y, 2.0, 0.7, "forward_kl"))
    assert not torch.allclose(kd_loss(zs, zt, y, 2.0, 0.7, "reverse_kl"), kd_loss(zs, zt, y, 2.0, 0.7))


def test_unknown_divergence_and_bad_beta_are_refused():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown divergence"):
        kd_divergence(z, z, 1.0, "wasserstein")
    for beta in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="beta"):
            kd_jsd(z, z, 1.0, beta)
