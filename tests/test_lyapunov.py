"""SPEC sections 4-5: the KL Lyapunov function and the distances to neural collapse."""

import math

import pytest
import torch

from hadainit.bases import paired_spectrum
from hadainit.ufm import (
    coefficient_of_variation,
    etf_angle,
    kl_lyapunov,
    lyapunov_derivative,
    softmax_spectrum,
    spectral_flow,
    spectral_gd,
)
from hadainit.ufm.examples import ETF_ANGLE_RISE_K8, UNBALANCED_V_RISE_A, UNBALANCED_V_RISE_B

TIMES = torch.logspace(-2, 8, 120, dtype=torch.float64)


def _random_balanced(k, basis, batch, seed, decades=3.0):
    gen = torch.Generator().manual_seed(seed)
    lam = torch.exp(math.log(10) * decades * (torch.rand(batch, k, generator=gen, dtype=torch.float64) - 0.7))
    return paired_spectrum(lam, basis).sqrt()


def test_definitions_against_direct_formulas():
    lam = torch.tensor([5.0, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    bar = lam[1:]
    v = math.log(bar.mean().item() / math.exp(bar.log().mean().item()))
    assert math.isclose(kl_lyapunov(lam).item(), v, rel_tol=1e-14)
    lam_hat = bar / bar.sum()
    kl = sum(0.25 * math.log(0.25 / x) for x in lam_hat.tolist())  # KL(u || lam_hat)
    assert math.isclose(kl_lyapunov(lam).item(), kl, rel_tol=1e-14)
    cos = bar.sum().item() / (bar.norm().item() * 2.0)
    assert math.isclose(etf_angle(lam).item(), 1 - cos, rel_tol=1e-13)
    assert math.isclose(coefficient_of_variation(lam).item(), bar.std(correction=0).item() / bar.mean().item())


def test_zero_exactly_at_nc_and_positive_elsewhere():
    nc = torch.tensor([-3.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5], dtype=torch.float64)
    assert kl_lyapunov(nc) == 0 and coefficient_of_variation(nc) == 0
    assert etf_angle(nc) < 1e-30
    near = nc.clone()
    near[3] *= 1 + 1e-6
    # near NC: V ~ cv^2 / 2, no cancellation to zero
    cv = coefficient_of_variation(near).item()
    assert math.isclose(kl_lyapunov(near).item(), cv**2 / 2, rel_tol=1e-5)
    assert math.isclose(etf_angle(near).item(), cv**2 / 2, rel_tol=1e-5)
    # and the NC manifold is invariant: the flow stays there
    res = spectral_flow(nc.abs().sqrt(), nc.abs().sqrt(), [1.0, 1e6])
    assert (kl_lyapunov(res.lam) < 1e-14).all()


def test_batched_and_bad_input():
    lam = torch.rand(3, 4, 6, dtype=torch.float64) + 0.1
    assert kl_lyapunov(lam).shape == (3, 4)
    assert torch.allclose(kl_lyapunov(lam)[1, 2], kl_lyapunov(lam[1, 2]))
    with pytest.raises(ValueError, match="> 0"):
        kl_lyapunov(torch.tensor([1.0, 1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="> 0"):
        kl_lyapunov(torch.tensor([1.0, 1.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        etf_angle(torch.tensor([1.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match="K >= 3"):
        kl_lyapunov(torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "k, basis", [(4, "walsh"), (8, "walsh"), (32, "walsh"), (1024, "walsh"), (5, "fourier"), (12, "fourier"), (101, "fourier")]
)
def test_v_decreases_along_balanced_flows(k, basis):
    a = _random_balanced(k, basis, 16, seed=k)
    res = spectral_flow(a, a, TIMES, basis=basis)
    assert res.status == 0
    v = kl_lyapunov(res.lam)  # (T, batch)
    assert (v.diff(dim=0) <= 1e-12 * v[:-1]).all()
    assert (v[-1] < v[0]).all()
    # the closed-form derivative of the proof is <= 0 and equals the chain rule
    lam = res.lam
    deriv = lyapunov_derivative(lam, basis)
    assert (deriv <= 0).all()
    _, _, c = softmax_spectrum(lam, basis)
    g = 2 * c[..., 1:] / k  # d log lam_i / dt, balanced n = 1
    bar = lam[..., 1:]
    chain = (bar / bar.sum(-1, keepdim=True) * g).sum(-1) - g.mean(-1)
    assert torch.allclose(deriv, chain, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("k, basis", [(16, "walsh"), (256, "walsh"), (10, "fourier")])
def test_v_decreases_along_balanced_gd_with_a_small_step(k, basis):
    a = _random_balanced(k, basis, 8, seed=100 + k, decades=2.0)
    res = spectral_gd(a, a, lr=0.05 * k, steps=3000, basis=basis, record_every=10)
    v = kl_lyapunov(res.lam)
    assert (v.diff(dim=0) <= 1e-12 * v[:-1]).all()
    assert (v[-1] < v[0]).all()


def test_kept_counterexample_v_increases_off_balance():
    res = spectral_flow(UNBALANCED_V_RISE_A, UNBALANCED_V_RISE_B, TIMES)
    v = kl_lyapunov(res.lam)
    assert v.max() - v[0] > 0.2  # 0.066 -> ~0.30
    # it is the imbalance: the same spectrum, balanced, decreases
    lam0 = UNBALANCED_V_RISE_A * UNBALANCED_V_RISE_B
    balanced = spectral_flow(lam0.sqrt(), lam0.sqrt(), TIMES)
    assert (kl_lyapunov(balanced.lam).diff() <= 1e-15).all()


def test_etf_angle_is_monotone_for_k4():
    # a search over balanced spectra spanning 6 decades: no increase of etf_angle for K = 4
    gen = torch.Generator().manual_seed(7)
    lam = torch.exp(math.log(10) * 6 * (torch.rand(400, 4, generator=gen, dtype=torch.float64) - 0.8))
    res = spectral_flow(lam.sqrt(), lam.sqrt(), TIMES)
    angle = etf_angle(res.lam)
    assert (angle.diff(dim=0) <= 1e-12).all()
    assert (angle[-1] < angle[0]).all()


def test_k8_example_etf_angle_rises_while_v_falls():
    a = ETF_ANGLE_RISE_K8.sqrt()
    times = torch.logspace(-2, 12, 141, dtype=torch.float64)
    res = spectral_flow(a, a, times)
    angle, v = etf_angle(res.lam), kl_lyapunov(res.lam)
    assert angle.max() - angle[0] > 0.015
    peak = int(angle.argmax())
    assert 1e2 < times[peak] < 1e4 and angle[-1] < angle[0]  # rises, then turns back towards NC
    assert (angle[peak:].diff() < 0).all()
    assert (v.diff() <= 1e-15).all() and v[-1] < v[0]


def test_v_near_nc_matches_high_precision_reference():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    gen = torch.Generator().manual_seed(11)
    for scale in (1e-1, 1e-3, 1e-6, 1e-9):
        lam = 2.0 + scale * torch.randn(9, generator=gen, dtype=torch.float64)
        bar = [mpmath.mpf(x) for x in lam[1:].tolist()]
        mean = sum(bar) / len(bar)
        ref = mpmath.log(mean) - sum(mpmath.log(x) for x in bar) / len(bar)
        assert math.isclose(kl_lyapunov(lam).item(), float(ref), rel_tol=1e-12), scale
