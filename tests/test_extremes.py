"""Extreme values: huge logits, half precision, degenerate classes; checked against mpmath where exact."""

import math
import warnings

import pytest
import torch

from hadainit.bases import softmax_basis
from hadainit.metrics.functional import neural_collapse
from hadainit.ufm import (
    UFM,
    coefficient_of_variation,
    etf_angle,
    kl_lyapunov,
    lyapunov_derivative,
    softmax_spectrum,
    spectral_flow,
    spectral_gd,
)
from hadainit.ufm.lyapunov import kl_to_uniform
from hadainit.ufm.dynamics import spectral_rhs

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 60


def _mp_reference(lam, basis):
    """Loss, p and 1 - mu from the dense K x K logit matrix in 60-digit arithmetic."""
    q = softmax_basis(len(lam), basis).tolist()
    k = len(lam)
    z = [sum(mpmath.mpf(q[m][i]) * mpmath.mpf(lam[i]) * mpmath.mpf(q[0][i]) for i in range(k)) for m in range(k)]
    lse = mpmath.log(sum(mpmath.exp(v) for v in z))
    p = [mpmath.exp(v - lse) for v in z]
    one_minus_mu = [sum(p[m] * (1 - mpmath.mpf(q[m][i]) / mpmath.mpf(q[0][i])) for m in range(k)) if q[0][i] != 0 else None
                    for i in range(k)]
    return lse - z[0], p, one_minus_mu


@pytest.mark.parametrize(
    "lam, basis",
    [
        ([0.0, 1e4, 5e3, 2e3, 1e4, 3e3, 7e3, 1e4], "walsh"),
        ([0.0, 40.0, 38.0, 35.0, 30.0, 45.0, 33.0, 31.0], "walsh"),
        ([0.0, -1e4, 5e3, 2e3, 1e4, -3e3, 7e3, 1e4], "walsh"),  # misclassified by a huge margin
        ([5.0, 1e4, 1e4, 2e3, 2e3, 6e3, 6e3], "fourier"),
        ([0.0, 30.0, 30.0, 36.0, 36.0, 33.0, 33.0, 41.0], "fourier"),
    ],
)
def test_softmax_spectrum_at_huge_logits_matches_mpmath(lam, basis):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, p, c = softmax_spectrum(torch.tensor(lam, dtype=torch.float64), basis)
    ref_loss, ref_p, ref_c = _mp_reference(lam, basis)
    assert torch.isfinite(loss) and torch.isfinite(p).all() and torch.isfinite(c).all()
    assert math.isclose(loss.item(), float(ref_loss), rel_tol=1e-12, abs_tol=1e-300)
    for got, want in zip(p.tolist(), ref_p):
        assert math.isclose(got, float(want), rel_tol=1e-9, abs_tol=1e-300)
    q0 = softmax_basis(len(lam), basis)[0]
    for i, (got, want) in enumerate(zip(c.tolist(), ref_c)):
        if want is not None and q0[i] != 0:  # fourier sin modes take their pair's value
            assert math.isclose(got, float(want), rel_tol=1e-9, abs_tol=1e-300), i


def test_dynamics_stay_finite_at_huge_logits():
    lam = torch.tensor([0.0, 1e4, 5e3, 2e3, 1e4, 3e3, 7e3, 1e4], dtype=torch.float64)
    da, db, value = spectral_rhs(lam.sqrt(), lam.sqrt(), "walsh", 1, (0.0, 0.0), "ce")
    assert torch.isfinite(da).all() and torch.isfinite(db).all() and math.isfinite(value.item())
    res = spectral_gd(lam.sqrt(), lam.sqrt(), lr=1.0, steps=10)
    assert torch.isfinite(res.a).all() and math.isfinite(kl_lyapunov(res.lam[-1]).item())
    flow = spectral_flow(lam.sqrt(), lam.sqrt(), [1.0, 1e15])
    assert flow.status == 0 and torch.isfinite(flow.a).all()


def test_dense_ufm_loss_and_gradients_at_huge_logits():
    lam = [0.0, 1e4, 5e3, 2e3, 1e4, 3e3, 7e3, 1e4]
    model = UFM.from_spectrum(8, 8, torch.tensor(lam, dtype=torch.float64).sqrt(), generator=torch.Generator().manual_seed(0))
    loss = model.loss()
    ref_loss, _, _ = _mp_reference(lam, "walsh")
    assert math.isclose(loss.item(), float(ref_loss), rel_tol=1e-10, abs_tol=1e-300)
    g_w, g_h = model.gradients()
    assert torch.isfinite(g_w).all() and torch.isfinite(g_h).all()


def test_single_sample_class_and_half_precision_features():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(41, 8, generator=gen)
    labels = torch.cat((torch.arange(4).repeat(10), torch.tensor([4])))  # class 4 has one sample
    w = torch.randn(5, 8, generator=gen)
    ref = neural_collapse(x.double(), labels, w)
    assert all(math.isfinite(v) for v in ref.values())
    for dtype in (torch.float16, torch.bfloat16):
        got = neural_collapse(x.to(dtype), labels, w)
        assert got.keys() == ref.keys() and all(math.isfinite(v) for v in got.values())
        assert math.isclose(got["nc1"], neural_collapse(x.to(dtype).double(), labels, w)["nc1"], rel_tol=1e-12)


def test_identical_features_are_a_clear_error():
    x = torch.ones(20, 6)
    labels = torch.arange(20) % 4
    with pytest.raises(ValueError, match="all class means coincide"):
        neural_collapse(x, labels)


def test_coinciding_pair_of_means_gives_infinite_cdnv():
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    labels = torch.arange(40) % 4
    x = means[labels] + 0.1 * torch.randn(40, 6, generator=gen, dtype=torch.float64)
    x[labels == 3] = x[labels == 2]  # classes 2 and 3: the same samples, the same mean
    assert neural_collapse(x, labels)["cdnv"] == math.inf


def test_zero_classifier_rows_are_a_clear_error():
    x = torch.randn(20, 6)
    labels = torch.arange(20) % 4
    w = torch.randn(4, 6)
    w[1] = 0
    with pytest.raises(ValueError, match=r"classifier rows \[1\] are zero"):
        neural_collapse(x, labels, w)


# ----------------------------------------------- scale-invariant functions at any finite scale (issue 14)


def _mp_v(values):
    x = [mpmath.mpf(v) for v in values]
    return mpmath.log(sum(x) / len(x)) - sum(mpmath.log(v) for v in x) / len(x)


def _mp_etf_angle(values):
    x = [mpmath.mpf(v) for v in values]
    return 1 - sum(x) / (mpmath.sqrt(sum(v * v for v in x)) * mpmath.sqrt(len(x)))


def _mp_cv(values):
    x = [mpmath.mpf(v) for v in values]
    mean = sum(x) / len(x)
    return mpmath.sqrt(sum((v - mean) ** 2 for v in x) / len(x)) / abs(mean)


@pytest.mark.parametrize(
    "lam",
    [
        [0.0, 1e308, 1.5e308, 1e308],  # the mean overflowed: NaN
        [0.0, 1e-300, 1e300, 1.0],  # 600 decades: a ratio underflowed, V was inf (true ~689)
        [0.0, 5e-324, 1.0, 2.0],  # the smallest subnormal
        [0.0, 1e-310, 1.1e-310, 1.2e-310],  # all subnormal
        [3.0, 1e-200, 2e-200, 1e-200, 4e-200],
        [0.0, 1.7e308, 1.7e308, 1.7e308, 1e-300],
    ],
)
def test_kl_lyapunov_exact_at_any_finite_scale(lam):
    assert math.isclose(kl_lyapunov(lam).item(), float(_mp_v(lam[1:])), rel_tol=1e-13)
    assert math.isclose(kl_to_uniform(torch.tensor(lam[1:], dtype=torch.float64)).item(), float(_mp_v(lam[1:])), rel_tol=1e-13)


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-100, 1.0, 1e100, 1e200, 1e300])
def test_etf_angle_and_cv_exact_at_any_finite_scale(scale):
    base = [0.0, 1.0, 2.0, 1.0, 0.5]
    lam = [x * scale for x in base]
    # was 0.5 at 1e200 (norm overflowed) and "lam_bar = 0" at 1e-200 (norm underflowed)
    assert math.isclose(etf_angle(lam).item(), float(_mp_etf_angle(lam[1:])), rel_tol=1e-13)
    assert math.isclose(coefficient_of_variation(lam).item(), float(_mp_cv(lam[1:])), rel_tol=1e-13)
    assert math.isclose(etf_angle([0.0, 1e200, 2e200, 1e200]).item(), float(_mp_etf_angle([1, 2, 1])), rel_tol=1e-13)


def test_scale_invariant_functions_stay_exact_near_nc_at_extreme_scales():
    # near NC the values are second-order small: scaling must not add a rounding error per entry
    gen = torch.Generator().manual_seed(3)
    for scale in (1e-305, 1.0, 1e305):
        lam = (1.0 + 1e-7 * torch.randn(9, generator=gen, dtype=torch.float64)) * scale
        assert math.isclose(kl_lyapunov(lam).item(), float(_mp_v(lam[1:].tolist())), rel_tol=1e-9), scale
        assert math.isclose(etf_angle(lam).item(), float(_mp_etf_angle(lam[1:].tolist())), rel_tol=1e-8), scale


def test_softmax_spectrum_at_the_largest_floats_has_no_nan():
    # margins near 1e308 used to give inf - inf = NaN masses; ties at huge margins share the mass
    for lam, basis, p_ref in [
        ([0.0, 1e308, -1e308, 1e308], "walsh", [1 / 3, 0.0, 1 / 3, 1 / 3]),
        ([0.0, 1e308, 1.5e308, 1e308, 1e308, 1.7e308, 1e308, 1.2e308], "walsh", [1.0] + [0.0] * 7),
        ([0.0, 1e308, 1e308, -1e308, -1e308], "fourier", [0.0, 0.5, 0.0, 0.0, 0.5]),
        ([0.0, 1e17, 1e17, -1e17, -1e17], "fourier", [0.0, 0.5, 0.0, 0.0, 0.5]),  # a tie at margin 4e16
    ]:
        loss, p, c = softmax_spectrum(torch.tensor(lam, dtype=torch.float64), basis)
        assert not torch.isnan(loss) and torch.isfinite(p).all() and torch.isfinite(c).all(), lam
        assert torch.allclose(p, torch.tensor(p_ref, dtype=torch.float64), atol=1e-15), (lam, p)
    # classes m and K - m tie exactly in a symmetric circulant: the reference masses are exact


def test_lyapunov_derivative_finite_at_huge_scale():
    lam = torch.tensor([0.0, 1e307, 2e307, 3e307, 1e307, 2e307, 3e307, 1e307], dtype=torch.float64)
    d = lyapunov_derivative(lam)
    assert torch.isfinite(d) and d <= 0
