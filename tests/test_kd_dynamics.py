"""More classes than features (docs/theory.md §8): dense = reduced on a mode set, frozen bases, the generalized collapse."""

import math

import pytest
import torch

from hadainit import modes as M
from hadainit import spectral_init
from hadainit.bases import basis_matrix
from hadainit.ufm import UFM, margins, spectral_flow, spectral_gd, time_to_margin

EPS = torch.finfo(torch.float64).eps


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _on_set(k, modes, kind, gen, lo=0.2, hi=1.5):
    """Random values on a mode set (pairs equal), exact zeros elsewhere."""
    s = torch.as_tensor(modes)
    vals = lo + (hi - lo) * torch.rand(k, generator=gen, dtype=torch.float64)
    if kind == "fourier":
        vals = vals[M.mode_frequencies(k)]  # one value per frequency: both modes of a pair equal
    out = torch.zeros(k, dtype=torch.float64)
    out[s] = vals[s]
    return out


CASES = [  # (K, d, basis, S)
    (16, 5, "walsh", [1, 2, 4, 8, 15]),
    (16, 5, "walsh", [1, 2, 4, 8, 3]),
    (32, 7, "walsh", None),  # auto
    (12, 5, "fourier", [1, 2, 5, 6, 11]),  # frequencies 1, 3 and the Nyquist mode
    (15, 6, "fourier", None),
    (20, 9, "fourier", [3, 4, 13, 14]),  # frequencies 2 and 7: gcd(2, 7, 20) = 1 (a d > r case)
]


@pytest.mark.parametrize("k, d, basis, modes", CASES)
def test_dense_gd_equals_reduced_map_on_a_mode_set(k, d, basis, modes):
    s = M.auto_modes(k, d, basis) if modes is None else torch.tensor(sorted(modes))
    gen = _gen(k + d)
    a, b = _on_set(k, s, basis, gen), _on_set(k, s, basis, gen)
    steps, lr = 300, 0.8
    dense = UFM.from_spectrum(k, d, a, b, basis=basis, generator=gen)  # zeros off S: the set is inferred
    assert dense.left.shape == (k, s.numel()) and torch.equal(dense.left, basis_matrix(k, basis)[:, s])
    hist = dense.gradient_descent(lr, steps, record_every=50)
    red = spectral_gd(a, b, lr=lr, steps=steps, basis=basis, record_every=50)
    off = torch.ones(k, dtype=torch.bool)
    off[s] = False
    assert (red.a[:, off] == 0).all() and (red.b[:, off] == 0).all()  # modes off S stay exactly 0
    # round-off: each step adds O(K eps) relative error per mode (a length-K softmax sum), compounding over steps
    tol = 10 * k * EPS * steps
    assert ((hist.spectrum_W - red.a[:, s]).abs() / red.a[:, s]).max() < tol
    assert ((hist.spectrum_H - red.b[:, s]).abs() / red.b[:, s]).max() < tol
    assert torch.allclose(hist.loss, red.loss, rtol=tol, atol=0)
    # frozen: W stays Q_S diag(.) V^T (leakage is round-off) and has no component off S either
    assert hist.leakage_W.max() < 100 * EPS and hist.leakage_H.max() < 100 * EPS
    q = basis_matrix(k, basis)
    assert (q[:, off].T @ dense.W.detach()).abs().max() < 100 * EPS * dense.W.detach().abs().max()
    assert (red.a[-1, s] - red.a[0, s]).abs().max() > 0.05  # the spectrum moved


def test_dense_gd_equals_reduced_map_for_thousands_of_steps():
    # docs/theory.md §8's check (walsh K = 16, d = 5, S = {1, 2, 4, 8, 15}), 3000 steps, n = 2 samples per class
    k, d, s = 16, 5, [1, 2, 4, 8, 15]
    gen = _gen(3)
    vals = torch.rand(5, generator=gen, dtype=torch.float64) + 0.3
    dense = UFM.from_spectrum(k, d, vals, vals, modes=s, samples_per_class=2, generator=gen)
    hist = dense.gradient_descent(1.0, 3000, record_every=500)
    a = M.on_modes(vals, s, k)
    red = spectral_gd(a, a, lr=1.0, steps=3000, samples_per_class=2, record_every=500)
    tol = 10 * k * EPS * 3000
    assert ((hist.spectrum_W - red.a[:, s]).abs() / red.a[:, s]).max() < tol
    assert hist.leakage_W.max() < 100 * EPS and hist.leakage_H.max() < 100 * EPS
    assert (red.a[:, [0, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14]] == 0).all()


def test_spectral_init_values_per_mode_equal_zeros_off_the_set():
    s = [1, 2, 4, 8, 3]
    vals = torch.tensor([0.5, 0.7, 1.1, 0.9, 0.3], dtype=torch.float64)
    w1, h1 = spectral_init(16, 5, vals, modes=s, generator=_gen())
    w2, h2 = spectral_init(16, 5, M.on_modes(vals, s, 16), generator=_gen())
    assert torch.equal(w1, w2) and torch.equal(h1, h2)
    q = basis_matrix(16, "walsh")
    assert torch.allclose((q.T @ w1 @ w1.T @ q).diagonal()[s], vals**2, atol=1e-14)  # each value on its mode
    with pytest.raises(ValueError, match="d=4 < K=8"):
        spectral_init(8, 4, [1.0] * 8)
    with pytest.raises(ValueError, match="not zero off"):
        spectral_init(8, 4, [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], modes=[1, 2, 4])
    with pytest.raises(ValueError, match="walsh or fourier"):
        spectral_init(12, 4, [1.0, 1.0], modes=[1, 2], basis="hadamard")


# ------------------------------------------------------------------ the generalized collapse


def _flow_to(a, t_max, kind="auto"):
    times = torch.cat((torch.zeros(1, dtype=torch.float64), torch.logspace(0, math.log10(t_max), 16, dtype=torch.float64)))
    sol = spectral_flow(a, a, times, basis=kind)
    assert sol.status == 0
    return sol


def test_spec_example_flow_goes_to_the_lp_solution():
    # docs/theory.md §8: walsh K = 16, S = {1, 2, 4, 8, 3}: lam / sum(lam) -> (1, 1, 2, 2, 1)/7.
    # The approach is slow, ~c / log t (implicit-bias limits); at t = 1e15 (log t = 34.5) the starts below are
    # within 2% (c <= 0.6), and the deviation falls at least as fast as 1 / log t between t = 1e5 and 1e15.
    k, s = 16, [1, 2, 4, 8, 3]
    target = torch.zeros(k, dtype=torch.float64)
    target[s] = torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0], dtype=torch.float64) / 7
    gen = _gen(0)
    for _ in range(3):
        a = M.on_modes(torch.exp(torch.randn(5, generator=gen, dtype=torch.float64)), s, k).sqrt()
        sol = _flow_to(a, 1e15)
        lam_hat = sol.lam / sol.lam.sum(-1, keepdim=True)
        err = (lam_hat - target).abs().max(-1).values / target.max()
        assert err[-1] < 0.02
        assert err[-1] * math.log(1e15) <= err[6] * math.log(1e5)  # rows 6 and 16: t = 1e5 and 1e15
        assert (sol.lam[:, [0, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]] == 0).all()


@pytest.mark.parametrize("k, r, kind", [(32, 7, "walsh"), (21, 6, "fourier")])
def test_normalized_margin_rises_toward_one(k, r, kind):
    # along long flows from random starts, min_g m_g / (sum(lam) t*) rises (monotonically on a log-time grid) toward 1
    gen = _gen(k)
    for seed in range(2):
        s = M.random_modes(k, r, kind, generator=_gen(seed))
        t_star = M.max_margin(s, k, kind).value
        vals = torch.exp(torch.randn(k, generator=gen, dtype=torch.float64))
        if kind == "fourier":
            vals = vals[M.mode_frequencies(k)]
        a = torch.zeros(k, dtype=torch.float64)
        a[s] = vals[s].sqrt()
        sol = _flow_to(a, 1e15, kind)
        norm = margins(sol.lam, kind).min(-1).values / (sol.lam.sum(-1) * t_star)
        assert (norm.diff() > -1e-9).all()  # the solver's rtol is 1e-9
        assert norm[-1] > 0.85 and norm[-1] > norm[0] and norm[-1] <= 1 + 1e-9


def test_time_to_margin_on_a_mode_set():
    k, s = 16, [1, 2, 4, 8, 15]
    t = time_to_margin([0.5, 2.0], 0.1, k, modes=s)
    a = M.on_modes(torch.full((5,), math.sqrt(0.1), dtype=torch.float64), s, k)
    sol = spectral_flow(a, a, [0.0, float(t[0]), float(t[1])])
    gamma = margins(sol.lam).min(-1).values
    assert torch.allclose(gamma[1:], torch.tensor([0.5, 2.0], dtype=torch.float64), rtol=1e-6)
    # starting minimum margin: (2/16) * 0.1 * 2 (shifts with two odd modes of S) = 0.025 < 0.5
    assert float(gamma[0]) == pytest.approx(0.025, rel=1e-12)
    assert float(time_to_margin(0.01, 0.1, k, modes=s)) == 0.0
    with pytest.raises(ValueError, match="cannot separate"):
        time_to_margin(1.0, 0.1, k, modes=[1, 2, 4])


def test_batched_flow_event_is_a_one_line_error():
    # issue 22 item 14: a batched event used to fail inside scipy with "only one element tensors ..."
    a = torch.rand(3, 8, generator=_gen(), dtype=torch.float64) + 0.5

    def per_row(t, a, b):
        return margins(a * b).min(-1).values - 3.0

    with pytest.raises(ValueError, match=r"shape \(3,\); an event must return one number.*\(3, 8\)"):
        spectral_flow(a, a, [0.0, 10.0], events=per_row)

    def any_row(t, a, b):
        return margins(a * b).min() - 3.0

    assert spectral_flow(a, a, [0.0, 1e3], events=any_row).t_events[0].numel() == 1
