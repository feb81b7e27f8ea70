"""SPEC section 3: the reduced dynamics, checked against dense computations and closed forms."""

import math

import pytest
import torch
from scipy.integrate import quad
from scipy.special import expi

from hadainit.bases import paired_spectrum, softmax_basis
from hadainit.ufm import (
    UFM,
    class0_logits,
    margins,
    softmax_spectrum,
    spectral_flow,
    spectral_gd,
    time_to_margin,
)
from tests.conftest import cuda


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _paired(x, k, basis):
    assert x.shape[-1] == k
    return paired_spectrum(x, basis)


def _spectrum(k, basis, gen, low=0.3, high=1.5, batch=()):
    return _paired(low + (high - low) * torch.rand(*batch, k, generator=gen, dtype=torch.float64), k, basis)


# ------------------------------------------------------------------ the softmax


@pytest.mark.parametrize("k, basis", [(2, "walsh"), (8, "walsh"), (64, "walsh"), (3, "fourier"), (10, "fourier"), (17, "fourier")])
def test_softmax_spectrum_matches_dense_softmax(k, basis):
    gen = _gen(1)
    lam = _spectrum(k, basis, gen, -2.0, 4.0)
    q = softmax_basis(k, basis)
    z = q @ torch.diag(lam) @ q.T
    probs = torch.softmax(z, dim=0)
    mu_dense = torch.diagonal(q.T @ probs @ q)
    loss, p, one_minus_mu = softmax_spectrum(lam, basis)
    assert torch.allclose(class0_logits(lam, basis), z[:, 0], atol=1e-14)
    assert torch.allclose(p, probs[:, 0], atol=1e-15)
    assert torch.isclose(loss, -torch.log(probs[0, 0]), rtol=1e-13)
    assert torch.allclose(one_minus_mu[1:], 1 - mu_dense[1:], atol=1e-14)
    assert one_minus_mu[0] == 0
    assert torch.allclose(margins(lam, basis), z[0, 0] - z[1:, 0], atol=1e-14)


@pytest.mark.parametrize("k, basis", [(16, "walsh"), (12, "fourier"), (13, "fourier")])
def test_spec_identities(k, basis):
    # sum lam_i (1 - mu_i) = K sum p gamma; sum (1 - mu_i) = K (1 - p0); sum gamma = sum lam_bar
    lam = _spectrum(k, basis, _gen(2), 0.1, 3.0, batch=(5,))
    _, p, c = softmax_spectrum(lam, basis)
    gamma = margins(lam, basis)
    assert torch.allclose((lam[..., 1:] * c[..., 1:]).sum(-1), k * (p[..., 1:] * gamma).sum(-1), rtol=1e-12)
    assert torch.allclose(c.sum(-1), k * (1 - p[..., 0]), rtol=1e-12)
    assert torch.allclose(gamma.sum(-1), lam[..., 1:].sum(-1), rtol=1e-12)


def test_walsh_one_minus_mu_is_twice_the_separated_mass():
    k = 16
    lam = _spectrum(k, "walsh", _gen(3), 0.0, 5.0)
    _, p, c = softmax_spectrum(lam, "walsh")
    for i in range(1, k):
        separated = sum(p[m] for m in range(k) if bin(i & m).count("1") % 2 == 1)
        assert torch.isclose(c[i], 2 * separated, rtol=1e-12)


def test_slowdown_regime_stays_accurate():
    # symmetric spectrum: 1 - mu = K / (e^lam + K - 1) in closed form, down to 1e-300 and below
    for k, basis in [(8, "walsh"), (10, "fourier")]:
        for lam_value in [5.0, 40.0, 300.0, 690.0]:
            lam = torch.full((k,), lam_value, dtype=torch.float64)
            loss, _, c = softmax_spectrum(lam, basis)
            expected = k / (math.exp(lam_value) + k - 1)
            assert torch.allclose(c[1:], torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)
            assert math.isclose(loss.item(), math.log1p((k - 1) * math.exp(-lam_value)), rel_tol=1e-12)


def test_huge_class_count_walsh():
    k = 1 << 20
    lam = torch.full((k,), 3.0, dtype=torch.float64)
    _, _, c = softmax_spectrum(lam, "walsh")
    assert torch.allclose(c[1:], torch.tensor(k / (math.exp(3.0) + k - 1), dtype=torch.float64), rtol=1e-10)
    res = spectral_gd(lam.sqrt(), lam.sqrt(), lr=1.0, steps=2, record_every=2)
    assert res.a.shape == (2, k) and torch.isfinite(res.a).all()


# -------------------------------------------------------- reduced GD == dense GD

_COMBOS = [(1, (0.0, 0.0)), (3, (0.0, 0.0)), (1, (1e-3, 3e-3)), (3, (2e-3, 1e-3))]
_CASES = [(k, "walsh", n, wd) for k in (4, 8, 16, 32, 64) for n, wd in _COMBOS] + [
    (k, "fourier", *_COMBOS[i % 4]) for i, k in enumerate(range(3, 13))
]


# the grid at 300 steps (the per-step recursion is what is compared; its error only grows with steps,
# so the 1e-10 bound is no looser), plus ONE case at 2000 steps keeping the long-run claim
_STEPS = [300] * len(_CASES)
_CASES = _CASES + [(64, "walsh", 3, (2e-3, 1e-3))]
_STEPS = _STEPS + [2000]


@pytest.mark.parametrize("k, basis, n, wd, steps", [c + (s,) for c, s in zip(_CASES, _STEPS)])
def test_reduced_gd_equals_dense_gd(k, basis, n, wd, steps):
    gen = _gen(k)
    a = _spectrum(k, basis, gen, 0.2, 1.5)
    b = _spectrum(k, basis, gen, 0.2, 1.5)
    dense = UFM.from_spectrum(k, k + 5, a, b, basis=basis, samples_per_class=n, generator=gen)
    hist = dense.gradient_descent(0.8, steps, weight_decay=wd, record_every=100)
    red = spectral_gd(a, b, lr=0.8, steps=steps, basis=basis, samples_per_class=n, weight_decay=wd, record_every=100)
    assert torch.equal(hist.step, red.step)
    assert ((hist.spectrum_W - red.a).abs() / red.a.abs()).max() < 1e-10
    assert ((hist.spectrum_H - red.b).abs() / red.b.abs()).max() < 1e-10
    assert torch.allclose(hist.loss, red.loss, rtol=1e-10, atol=0)
    assert hist.leakage_W.max() < 1e-12 and hist.leakage_H.max() < 1e-12
    assert (red.a[-1] - red.a[0]).abs().max() > 0.05  # the spectrum moved


def test_reduced_mse_equals_dense_mse():
    gen = _gen(5)
    a, b = _spectrum(8, "walsh", gen), _spectrum(8, "walsh", gen)
    dense = UFM.from_spectrum(8, 12, a, b, samples_per_class=2, generator=gen)
    hist = dense.gradient_descent(0.5, 500, loss="mse", record_every=50)
    red = spectral_gd(a, b, lr=0.5, steps=500, samples_per_class=2, loss="mse", record_every=50)
    assert torch.allclose(hist.spectrum_W, red.a, rtol=1e-11, atol=0)
    assert torch.allclose(hist.loss, red.loss, rtol=1e-11, atol=1e-20)  # the loss falls to ~1e-30


# ------------------------------------------------------------------ the flow


def test_gd_converges_to_flow_at_first_order():
    a = _spectrum(8, "walsh", _gen(6))
    b = _spectrum(8, "walsh", _gen(7))
    flow = spectral_flow(a, b, [4.0])
    errors = []
    for lr in (0.2, 0.1, 0.05, 0.025):
        steps = round(4.0 / lr)
        gd = spectral_gd(a, b, lr=lr, steps=steps, record_every=steps)
        errors.append((gd.a[-1] - flow.a[-1]).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)


@pytest.mark.parametrize("k, basis, n", [(8, "walsh", 1), (8, "walsh", 3), (10, "fourier", 2)])
def test_flow_conserves_a2_minus_n_b2(k, basis, n):
    a = _spectrum(k, basis, _gen(8), 0.1, 2.0)
    b = _spectrum(k, basis, _gen(9), 0.1, 2.0)
    res = spectral_flow(a, b, torch.logspace(-1, 10, 30), basis=basis, samples_per_class=n)
    inv = res.a**2 - n * res.b**2
    assert res.status == 0
    assert torch.allclose(inv, (a**2 - n * b**2).expand_as(inv), rtol=0, atol=1e-8)
    assert (res.lam[-1, 1:] > 3).all()  # and the flow got far


def test_flow_reaches_1e12_and_1e15():
    a = 0.5 + torch.rand(1024, generator=_gen(10), dtype=torch.float64)
    res = spectral_flow(a, a, [1.0, 1e6, 1e12, 1e15])
    assert res.status == 0 and torch.isfinite(res.a).all()
    assert res.nfev < 5000
    gamma_min = margins(res.lam[-1]).min().item()
    assert gamma_min > 25  # slowdown: margins grow like log t


def test_flow_with_weight_decay_matches_gd_with_a_small_step():
    a = _spectrum(8, "walsh", _gen(11))
    b = _spectrum(8, "walsh", _gen(12))
    wd = (0.01, 0.02)
    flow = spectral_flow(a, b, [5.0, 1e4], weight_decay=wd)
    gd = spectral_gd(a, b, lr=1e-3, steps=5000, weight_decay=wd, record_every=5000)
    assert (flow.a[0] - gd.a[-1]).abs().max() < 1e-3
    # with weight decay the flow settles: the gradient vanishes at the end
    from hadainit.ufm.dynamics import spectral_rhs

    da, db, _ = spectral_rhs(flow.a[-1], flow.b[-1], "walsh", 1, wd, "ce")
    assert da.abs().max() < 1e-8 and db.abs().max() < 1e-8


def test_flow_events_reported_in_time_and_never_guessed():
    a = torch.full((8,), 1.0, dtype=torch.float64)

    def reach_margin_3(t, a, b):
        return float(margins(a * b).min()) - 3.0

    reach_margin_3.direction = 1

    def reach_margin_100(t, a, b):
        return float(margins(a * b).min()) - 100.0

    res = spectral_flow(a, a, [1e6], events=[reach_margin_3, reach_margin_100])
    assert res.t_events[0].numel() == 1 and res.t_events[1].numel() == 0
    assert math.isclose(res.t_events[0].item(), time_to_margin(3.0, 1.0, 8).item(), rel_tol=1e-7)
    # a terminal event before the first requested time: nothing made up, status 1
    reach_margin_3.terminal = True
    res = spectral_flow(a, a, [1e5, 1e6], events=reach_margin_3)
    assert res.status == 1 and res.t.numel() == 0 and res.a.shape == (0, 8) and res.loss.shape == (0,)


# ------------------------------------------------------------------ slowdown


def _symmetric_time(gamma, lam0, k):
    # independent: quadrature of dt = (e^lam + K - 1) / (2 lam) dlam on the symmetric manifold
    return quad(lambda x: (math.exp(x) + k - 1) / (2 * x), lam0, gamma, epsrel=1e-12, limit=200)[0]


def test_time_to_margin_matches_the_symmetric_manifold_integral():
    gammas = [2.0, 5.0, 10.0, 20.0]
    for k, basis in [(8, "walsh"), (8, "fourier"), (10, "fourier"), (256, "walsh")]:
        times = time_to_margin(gammas, 0.5, k, basis=basis)
        for g, t in zip(gammas, times):
            assert math.isclose(t.item(), _symmetric_time(g, 0.5, k), rel_tol=1e-6), (k, basis, g)


def test_exponential_slowdown_law():
    gammas = torch.linspace(5.0, 30.0, 11, dtype=torch.float64)  # t up to ~4e11: deep in the slowdown
    lam0, k = 0.5, 8
    ratio = time_to_margin(gammas, lam0, k) * 2 * gammas * torch.exp(-gammas)
    assert (ratio.diff() < 0).all() and (ratio > 1).all() and ratio[-1] < 1.04
    # closed form on the symmetric manifold: t = (Ei(g) - Ei(lam0)) / 2 + (K - 1)/2 log(g / lam0),
    # and Ei(g) ~ e^g / g (1 + 1/g + ...): the ratio tends to 1 like 1 + 1/gamma
    for g, r in zip(gammas.tolist(), ratio.tolist()):
        t = (expi(g) - expi(lam0)) / 2 + (k - 1) / 2 * math.log(g / lam0)
        assert math.isclose(r, t * 2 * g * math.exp(-g), rel_tol=1e-6)
        if g >= 15:
            assert abs(r - 1) < 1.2 / g


def test_time_to_margin_edge_cases():
    times = time_to_margin(torch.tensor([[0.1, 1.0], [3.0, 3.0]]), 1.0, 4)
    assert times.shape == (2, 2) and times[0, 0] == 0 and times[0, 1] == 0 and times[1, 0] == times[1, 1] > 0
    with pytest.raises(ValueError, match="lam0"):
        time_to_margin(3.0, -1.0, 4)
    with pytest.raises(ValueError, match="finite"):
        time_to_margin(float("inf"), 1.0, 4)


# ------------------------------------------------------------------ CE vs MSE


def test_mse_modes_decouple_and_converge_to_one():
    a = _spectrum(8, "walsh", _gen(13), 0.1, 2.0)
    res = spectral_flow(a, a, [1e3], loss="mse")
    assert torch.allclose(res.lam[-1], torch.ones(8, dtype=torch.float64), atol=1e-6)
    # decoupled: changing one mode's start leaves the other modes' trajectories untouched
    a2 = a.clone()
    a2[3] = 0.05
    ts = [0.5, 5.0, 50.0]
    r1 = spectral_flow(a, a, ts, loss="mse", rtol=1e-11, atol=1e-14)
    r2 = spectral_flow(a2, a2, ts, loss="mse", rtol=1e-11, atol=1e-14)
    keep = [i for i in range(8) if i != 3]
    assert torch.allclose(r1.a[:, keep], r2.a[:, keep], rtol=1e-8, atol=0)
    # the classical sigmoid: balanced n = 1 gives lam(t) = 1 / (1 + (1/lam0 - 1) e^{-2t/K})
    lam0 = a**2
    expected = 1 / (1 + (1 / lam0 - 1) * math.exp(-2 * 5.0 / 8))
    assert torch.allclose(r1.lam[1], expected, rtol=1e-8)


def test_ce_modes_grow_without_bound():
    a = _spectrum(8, "walsh", _gen(14), 0.1, 2.0)
    res = spectral_flow(a, a, [1e2, 1e4, 1e8, 1e12])
    lam_bar = res.lam[:, 1:]
    assert (lam_bar.diff(dim=0) > 0.5).all()  # roughly log t growth, every mode
    assert (lam_bar[-1] > 15).all()


# ------------------------------------------------------------------ arguments, dtype, device


def test_float32_and_batched():
    a = _spectrum(16, "walsh", _gen(15), batch=(3,))
    r64 = spectral_gd(a, a, lr=1.0, steps=50, record_every=50)
    r32 = spectral_gd(a.float(), a.float(), lr=1.0, steps=50, record_every=50)
    assert r32.a.dtype == torch.float32 and r32.a.shape == (2, 3, 16)
    assert torch.allclose(r32.a.double(), r64.a, rtol=1e-5)
    for i in range(3):
        single = spectral_gd(a[i], a[i], lr=1.0, steps=50, record_every=50)
        assert torch.allclose(single.a, r64.a[:, i], rtol=1e-14)
    flow = spectral_flow(a.float(), a.float(), [1.0, 10.0])
    assert flow.a.dtype == torch.float32 and flow.a.shape == (2, 3, 16)


@cuda
def test_cuda_gd():
    a = _spectrum(1024, "walsh", _gen(16))
    cpu = spectral_gd(a, a, lr=1.0, steps=20, record_every=20)
    gpu = spectral_gd(a.cuda(), a.cuda(), lr=1.0, steps=20, record_every=20)
    assert gpu.a.is_cuda and torch.allclose(gpu.a.cpu(), cpu.a, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(a=[1.0] * 6, b=[1.0] * 6, basis="walsh"), ValueError, "power-of-two"),
        (dict(a=[0.0, 1.0, 2.0, 1.0, 1.0], b=[1.0] * 5), ValueError, "modes 1 and 2"),
        (dict(a=[1.0] * 12, b=[1.0] * 12, basis="hadamard"), ValueError, "softmax-diagonalizing"),
        (dict(a=[1.0] * 4, b=[1.0] * 8), ValueError, "length 4"),
        (dict(a=[1.0], b=[1.0]), ValueError, "K >= 2"),
        (dict(a=[1.0, float("nan"), 1.0, 1.0], b=[1.0] * 4), ValueError, "finite"),
        (dict(a=[1.0] * 4, b=[1.0] * 4, loss="hinge"), ValueError, "unknown loss"),
        (dict(a=[1.0] * 4, b=[1.0] * 4, weight_decay=(0.1, -1)), ValueError, "non-negative"),
        (dict(a=[1.0] * 4, b=[1.0] * 4, samples_per_class=0), ValueError, "samples_per_class"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    a, b = kwargs.pop("a"), kwargs.pop("b")
    with pytest.raises(exc, match=match):
        spectral_gd(a, b, lr=0.1, steps=1, **kwargs)
    with pytest.raises(exc, match=match):
        spectral_flow(a, b, [1.0], **kwargs)


def test_bad_times():
    for t in ([], [1.0, 0.5], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="strictly increasing"):
            spectral_flow([1.0] * 4, [1.0] * 4, t)
    with pytest.raises(ValueError, match="lr"):
        spectral_gd([1.0] * 4, [1.0] * 4, lr=0.0, steps=1)
