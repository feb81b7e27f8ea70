"""SPEC 5b: U(a, b), a Lyapunov function of the gradient flow from every positive spectral start."""

import math

import pytest
import torch

from hadainit.bases import paired_spectrum
from hadainit.ufm import (
    kl_lyapunov,
    spectral_flow,
    spectral_gd,
    unbalanced_lyapunov,
    unbalanced_lyapunov_derivative,
)
from hadainit.ufm.dynamics import spectral_rhs
from hadainit.ufm.examples import UNBALANCED_V_RISE_A, UNBALANCED_V_RISE_B

BASES = [(4, "walsh"), (16, "walsh"), (5, "fourier"), (12, "fourier")]


def _draw(k, basis, batch, seed, low=-2.0, high=1.0):
    """a and b independent, log-uniform over 10^low .. 10^high, paired for the fourier basis."""
    gen = torch.Generator().manual_seed(seed)

    def one():
        return paired_spectrum(10 ** (low + (high - low) * torch.rand(batch, k, generator=gen, dtype=torch.float64)), basis)

    return one(), one()


def _u_naive(a, b, n):
    """The definition, written out (fine at moderate values; differentiable)."""
    a, bp = a[..., 1:], math.sqrt(n) * b[..., 1:]
    return torch.log(((a**2 + bp**2) / 2).mean(-1)) - torch.log(((a + bp) / 2) ** 2).mean(-1)


@pytest.mark.parametrize("n", [1, 3])
def test_definition(n):
    a, b = _draw(9, "fourier", 50, seed=n)
    u = unbalanced_lyapunov(a, b, samples_per_class=n)
    assert u.shape == (50,) and u.dtype == torch.float64 and (u > 0).all()
    assert torch.allclose(u, _u_naive(a, b, n), rtol=1e-12, atol=0)
    assert torch.equal(u[7], unbalanced_lyapunov(a[7], b[7], samples_per_class=n))  # batched like the rest


@pytest.mark.parametrize("k, basis", BASES)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_balanced_u_is_v(k, basis, n):
    a, _ = _draw(k, basis, 20, seed=k + n)
    b = a / math.sqrt(n)  # a_i^2 = n b_i^2
    assert torch.allclose(unbalanced_lyapunov(a, b, samples_per_class=n), kl_lyapunov(a * b), rtol=1e-12, atol=1e-15)


def test_zero_exactly_when_balanced_at_nc():
    nc = torch.tensor([0.3, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    assert unbalanced_lyapunov(nc, nc) == 0
    assert unbalanced_lyapunov(nc, nc / math.sqrt(3), samples_per_class=3) < 1e-30
    # NC but unbalanced: a = 2 b' everywhere, U = log(1 + d^2 / m^2) with d / m = 1/3
    assert math.isclose(unbalanced_lyapunov(nc, nc / 2).item(), math.log(1 + 1 / 9), rel_tol=1e-14)
    # balanced but not NC: U = V > 0
    lam = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert unbalanced_lyapunov(lam.sqrt(), lam.sqrt()) > 0.05


def test_exact_at_extreme_scales_against_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    a = [0.0, 1e-300, 1.0, 1e300, 3e-200]
    b = [0.0, 2e-300, 1e300, 1.0, 1e-5]
    for n in (1, 3):
        am = [mpmath.mpf(x) for x in a[1:]]
        bm = [mpmath.sqrt(n) * mpmath.mpf(x) for x in b[1:]]
        ref = mpmath.log(sum((x**2 + y**2) / 2 for x, y in zip(am, bm)) / 4) - sum(
            mpmath.log(((x + y) / 2) ** 2) for x, y in zip(am, bm)) / 4
        assert math.isclose(unbalanced_lyapunov(a, b, samples_per_class=n).item(), float(ref), rel_tol=1e-13)


def test_accurate_near_balanced_nc_against_mpmath():
    # U is second-order small there (~ dev^2) and computed without cancellation; forming (a + b')/2
    # rounds each entry (relative 1e-16), so the attainable relative accuracy is ~1e-16 / dev
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    gen = torch.Generator().manual_seed(8)
    for scale, eps in [(1.0, 1e-4), (3e-200, 1e-6), (7e250, 1e-7)]:
        a = scale * (1 + eps * torch.randn(9, generator=gen, dtype=torch.float64))
        b = scale * (1 + eps * torch.randn(9, generator=gen, dtype=torch.float64))
        am, bm = [mpmath.mpf(x) for x in a[1:].tolist()], [mpmath.mpf(x) for x in b[1:].tolist()]
        ref = mpmath.log(sum((x**2 + y**2) / 2 for x, y in zip(am, bm)) / 8) - sum(
            mpmath.log(((x + y) / 2) ** 2) for x, y in zip(am, bm)) / 8
        assert math.isclose(unbalanced_lyapunov(a, b).item(), float(ref), rel_tol=300 * 1e-16 / eps), (scale, eps)


@pytest.mark.parametrize("k, basis", BASES)
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("wd", [(0.0, 0.0), (0.02, 0.02), (0.05, 0.01)])
def test_closed_form_derivative_is_the_chain_rule(k, basis, n, wd):
    # dU/dt = grad U . (da/dt, db/dt): autograd through the written-out definition, the reduced flow's RHS
    a, b = _draw(k, basis, 16, seed=10 * k + n)
    da, db, _ = spectral_rhs(a, b, basis, n, wd, "ce")
    a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
    ga, gb = torch.autograd.grad(_u_naive(a_, b_, n).sum(), (a_, b_))
    chain = (ga * da).sum(-1) + (gb * db).sum(-1)
    closed = unbalanced_lyapunov_derivative(a, b, basis, samples_per_class=n, weight_decay=wd)
    assert torch.allclose(closed, chain, rtol=1e-9, atol=1e-15)
    if wd[0] == wd[1]:  # no decay, or equal decays: the proof's inequality
        assert (closed <= 0).all()


CASES = [(3, "fourier"), (4, "walsh"), (7, "fourier"), (16, "walsh"), (64, "walsh"), (100, "fourier"), (256, "walsh")]


def test_u_never_increases_along_random_unbalanced_flows():
    times = torch.logspace(-2, 8, 81, dtype=torch.float64)
    worst, v_rose, drops, count = -math.inf, 0, [], 0
    for k, basis in CASES:
        for n in (1, 3):
            a, b = _draw(k, basis, 8, seed=1000 + k + n)  # 3 decades each, independent
            res = spectral_flow(a, b, times, basis=basis, samples_per_class=n)
            assert res.status == 0
            u = unbalanced_lyapunov(res.a, res.b, samples_per_class=n)
            worst = max(worst, (u.diff(dim=0) / u[:-1]).max().item())
            deriv = unbalanced_lyapunov_derivative(res.a, res.b, basis, samples_per_class=n)
            assert (deriv <= 0).all()
            v = kl_lyapunov(res.lam)
            v_rose += int((v.diff(dim=0) > 1e-9 * v[:-1]).any(0).sum())
            drops += (u[-1] / u[0]).tolist()
            count += a.shape[0]
    assert worst <= 1e-13, worst  # round-off at most
    assert sorted(drops)[count // 2] < 0.8  # and U really moved (not a vacuous check)
    assert v_rose > 0  # V, on the same flows, is not monotone


def test_kept_counterexample_v_rises_while_u_falls():
    times = torch.logspace(-2, 8, 101, dtype=torch.float64)
    res = spectral_flow(UNBALANCED_V_RISE_A, UNBALANCED_V_RISE_B, times)
    u, v = unbalanced_lyapunov(res.a, res.b), kl_lyapunov(res.lam)
    assert v.max() - v[0] > 0.2
    assert (u.diff() <= 0).all() and u[-1] < 0.2 * u[0]


def test_u_and_the_balance_gap_tend_to_zero_along_a_long_flow():
    a0, b0 = UNBALANCED_V_RISE_A, UNBALANCED_V_RISE_B
    res = spectral_flow(a0, b0, torch.logspace(0, 100, 51, dtype=torch.float64))
    assert res.status == 0
    u = unbalanced_lyapunov(res.a, res.b)
    assert (u.diff() < 0).all() and u[-1] < u[0] / 100
    a, bp = res.a[:, 1:], res.b[:, 1:]
    c = a0[1:] ** 2 - b0[1:] ** 2  # conserved
    gap = a - bp
    assert torch.allclose(gap, c / (a + bp), rtol=1e-6, atol=1e-12)  # gap_i = c_i / (a_i + b'_i)
    assert ((a + bp).diff(dim=0) > 0).all()  # so the gap shrinks as the modes grow
    assert (gap[:, 2].diff() < 0).all() and gap[-1, 2] < gap[0, 2] / 2.5  # the unbalanced mode


@pytest.mark.parametrize("n", [1, 3])
def test_u_never_increases_with_equal_weight_decays(n):
    # the decay terms cancel in dU/dt for wd_W = wd_H (module docs); with decay the flow converges,
    # to balanced NC, and U falls to the solver's noise floor (rtol^2 ~ 1e-18)
    times = torch.logspace(-2, 6, 41, dtype=torch.float64)
    wd = (3e-3, 3e-3)
    for k, basis in [(8, "walsh"), (10, "fourier")]:
        a, b = _draw(k, basis, 6, seed=2000 + k + n)
        res = spectral_flow(a, b, times, basis=basis, samples_per_class=n, weight_decay=wd)
        u = unbalanced_lyapunov(res.a, res.b, samples_per_class=n)
        assert (u.diff(dim=0) <= 1e-13 * u[:-1] + 1e-16).all() and (u[-1] < 1e-10).all()
        deriv = unbalanced_lyapunov_derivative(res.a, res.b, basis, samples_per_class=n, weight_decay=wd)
        assert (deriv <= 1e-17).all()  # 2 wd - 2 wd cancels to round-off


def test_gradient_descent_steps_approach_the_flow():
    # under GD nothing is claimed; as the step shrinks, (U(step) - U) / lr tends to dU/dt (error O(lr))
    a, b = _draw(8, "walsh", 4, seed=5)
    deriv = unbalanced_lyapunov_derivative(a, b, samples_per_class=2)
    errors = []
    for lr in (1e-2, 1e-3, 1e-4):
        res = spectral_gd(a, b, lr=lr, steps=1, samples_per_class=2)
        u = unbalanced_lyapunov(res.a, res.b, samples_per_class=2)
        errors.append(((u[1] - u[0]) / lr - deriv).abs().max().item())
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5
