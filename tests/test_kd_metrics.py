"""The generalized collapse targets at K > d + 1 (docs/theory.md §8) in the metrics.

Every value is checked against an independent dense computation or a closed form:

* a spectral init on a mode set S with ``lam`` the max-margin LP solution has class-mean logits
  ``Z = Q_S diag(lam) Q_S^T``, nuclear norm ``sum(lam) = 1`` and minimum class margin ``t*(S)``;
* the simplex ETF (K <= d + 1) has every normalized pair distance ``sqrt(2K / (K - 1))``;
* the Gram of d orthonormal non-constant basis vectors attains ``etf_gap_floor``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from hadainit.metrics import NeuralCollapse
from hadainit.metrics.formulas import etf_gap, etf_gap_floor
from hadainit.metrics.logits import DENSE_LIMIT, LogitSpectrum, factored_spectrum
from hadainit.modes import auto_modes, basis_columns, max_margin

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _lp_factors(k: int, modes, basis: str):
    """``W = Mu = Q_S diag(sqrt(lam))`` (K x r) for the LP solution ``lam``: ``Z = Q_S diag(lam) Q_S^T``."""
    mm = max_margin(modes, k, basis)
    q = basis_columns(k, basis, mm.modes)
    w = q * mm.lam[mm.modes].sqrt()
    return mm, w


def _dense_class_margin(z: torch.Tensor) -> torch.Tensor:
    """``Z[k, k] - max_{j != k} Z[j, k]`` by brute force."""
    k = z.shape[0]
    off = z.clone()
    off.fill_diagonal_(-math.inf)
    return z.diagonal() - off.max(0).values


def _dense_geometry(means: torch.Tensor, s: float = 1.0) -> dict:
    """Min pairwise distance and GNC2 energies of the normalized centred means, all pairs formed."""
    c = means - means.mean(0)
    u = c / c.norm(dim=1, keepdim=True)
    k = u.shape[0]
    dist = torch.cdist(u, u)
    off = ~torch.eye(k, dtype=torch.bool)
    d = dist[off]
    return {"min": d.min().item(), "log": (-d.log()).mean().item(), "riesz": d.pow(-s).mean().item()}


@pytest.mark.parametrize("k, d, basis, modes", [
    (16, 5, "walsh", [1, 2, 4, 8, 3]),  # theory §8's example: t* = 1/28
    (12, 4, "fourier", None),
    (32, 6, "walsh", None),
])
def test_class_margin_normalized_is_t_star_at_the_lp_solution(k, d, basis, modes):
    modes = auto_modes(k, d, basis) if modes is None else modes
    mm, w = _lp_factors(k, modes, basis)
    z = w @ w.T
    dense = _dense_class_margin(z).min() / torch.linalg.svdvals(z - z.mean(0) - z.mean(1, keepdim=True) + z.mean()).sum()
    assert dense.item() == pytest.approx(mm.value, rel=1e3 * EPS * k)
    metric = LogitSpectrum(k, basis=basis, feature_dim=w.shape[1])
    metric.set_classifier(w)
    metric.set_t_star(mm.value)
    metric.update(w @ w.T, torch.arange(k), w)  # sample k = its class mean, logits W h
    out = {**metric.compute(), **metric.spectra()}
    tol = 1e3 * EPS * k
    assert out["class_margin_normalized"] == pytest.approx(dense.item(), rel=tol)
    assert out["margin_to_t_star"] == pytest.approx(1.0, rel=tol)
    if modes == [1, 2, 4, 8, 3]:
        assert out["class_margin_normalized"] == pytest.approx(1 / 28, rel=tol)


def test_factored_class_margin_beyond_the_dense_limit():
    k, d = 2 * DENSE_LIMIT, 12  # the factored path (no K x K), walsh
    mm, w = _lp_factors(k, auto_modes(k, d, "walsh"), "walsh")
    out = factored_spectrum(w, w, None, "walsh")
    # nuclear norm of Q_S diag(lam) Q_S^T is sum(lam) = 1; the min class margin is t*(S)
    assert out["class_margin_normalized"] == pytest.approx(mm.value, rel=1e4 * EPS * k)
    lam = torch.as_tensor(out["lam"], dtype=F64)
    assert torch.allclose(lam, mm.lam[1:], atol=1e3 * EPS * k)


def _nc(means: torch.Tensor, **kwargs) -> dict:
    k, d = means.shape
    metric = NeuralCollapse(k, d, **kwargs)
    metric.update(means, torch.arange(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric.compute()


def test_simplex_etf_known_values():
    k, d = 5, 8
    means = torch.zeros(k, d, dtype=F64)
    means[:, :k] = torch.eye(k, dtype=F64) - 1.0 / k  # a simplex ETF in R^d
    out = _nc(3.0 * means)
    dist = math.sqrt(2 * k / (k - 1))
    tol = 100 * EPS * k
    assert out["min_distance_means"] == pytest.approx(dist, rel=tol)
    assert out["gnc2_log"] == pytest.approx(-math.log(dist), rel=tol)
    assert out["gnc2_riesz"] == pytest.approx(1 / dist, rel=tol)
    assert out["etf_gap_means"] == pytest.approx(0.0, abs=1e-7)  # a sqrt of a difference: sqrt(eps)
    assert out["etf_gap_floor"] == 0.0
    assert etf_gap_floor(k, k - 1) == 0.0  # K = d + 1: the ETF fits


@pytest.mark.parametrize("k, d, basis", [(16, 5, "walsh"), (12, 4, "fourier"), (64, 7, "walsh")])
def test_geometry_keys_against_dense(k, d, basis):
    gen = torch.Generator().manual_seed(k + d)
    _, w = _lp_factors(k, auto_modes(k, d, basis), basis)
    rot = torch.linalg.qr(torch.randn(w.shape[1], d, generator=gen, dtype=F64))[0]
    means = 5.0 * w @ rot.T + torch.randn(d, generator=gen, dtype=F64)  # a global offset: centring matters
    out = _nc(means, riesz_s=1.5)
    ref = _dense_geometry(means, s=1.5)
    tol = 1e3 * EPS * k
    assert out["min_distance_means"] == pytest.approx(ref["min"], rel=1e-7)  # from 1 - cos: sqrt(eps) absolute
    assert out["gnc2_log"] == pytest.approx(ref["log"], rel=tol, abs=tol)
    assert out["gnc2_riesz"] == pytest.approx(ref["riesz"], rel=tol)


@pytest.mark.parametrize("k, d, basis", [(16, 5, "walsh"), (12, 4, "fourier"), (100, 9, "fourier")])
def test_etf_gap_floor_is_attained_by_orthonormal_modes(k, d, basis):
    floor = etf_gap_floor(k, d)
    assert floor == pytest.approx(math.sqrt(2 - 2 * math.sqrt(d / (k - 1))), rel=EPS)
    modes = auto_modes(k, d, basis)
    q = basis_columns(k, basis, modes)  # K x d, orthonormal, orthogonal to 1
    g = q @ q.T
    e = (torch.eye(k, dtype=F64) - 1.0 / k) / math.sqrt(k - 1)
    dense = torch.linalg.matrix_norm(g / torch.linalg.matrix_norm(g) - e).item()
    assert dense == pytest.approx(floor, rel=1e3 * EPS * k)
    assert etf_gap(q, q) == pytest.approx(floor, abs=1e-7)
    out = _nc(math.sqrt(k) * q)
    assert out["etf_gap_floor"] == pytest.approx(floor, rel=EPS)
    assert out["etf_gap_means"] == pytest.approx(floor, abs=1e-7)
    gen = torch.Generator().manual_seed(k)
    for _ in range(5):  # no rank-d Gram does better
        a = torch.randn(k, d, generator=gen, dtype=F64)
        assert etf_gap(a, a) >= floor - 1e-7


def test_etf_impossible_warned_once_not_raised():
    k, d = 12, 4
    _, w = _lp_factors(k, auto_modes(k, d, "fourier"), "fourier")
    metric = NeuralCollapse(k, d)
    metric.update(w, torch.arange(k))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = metric.compute()
        metric.update(w, torch.arange(k))
        out2 = metric.compute()
    said = [c for c in caught if "no simplex ETF" in str(c.message)]
    assert len(said) == 1
    assert "min_distance_means" in out1 and "etf_gap_means" in out2
    assert out1["etf_gap_means"] >= out1["etf_gap_floor"] - 1e-7
    metric = NeuralCollapse(5, 4)  # K = d + 1: the ETF fits, nothing said
    metric.update(torch.eye(5, 4, dtype=F64) - 0.2, torch.arange(5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric.compute()
    assert not [c for c in caught if "no simplex ETF" in str(c.message)]


def _state_bytes(metric) -> int:
    return sum(getattr(metric, name).numel() * getattr(metric, name).element_size() for name in metric._defaults)


@pytest.mark.parametrize("k, d", [(1000, 512), (50_257, 768)])
def test_large_heads_state_linear_in_k(k, d):
    gen = torch.Generator().manual_seed(0)
    n = 64
    x = torch.randn(n, d, generator=gen)
    labels = torch.arange(n) * (k // n)
    nc = NeuralCollapse(k, d)
    nc.update(x, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes never seen
        out = nc.compute()
    assert out["num_classes_seen"] == n
    biggest = max(getattr(nc, name).numel() for name in nc._defaults)
    assert biggest <= k * d  # no K x K state
    assert _state_bytes(nc) == 8 * (k * (d + 2) + d * d + 1)  # sums, counts, sq_norms, second, scale
    spec = LogitSpectrum(k, feature_dim=d)
    spec.update(torch.randn(n, k, generator=gen), labels, x)
    assert max(getattr(spec, name).numel() for name in spec._defaults) == k * d
    assert _state_bytes(spec) == 8 * (k * (d + 1) + 4)
    small = LogitSpectrum(k // 4, feature_dim=d)
    assert _state_bytes(spec) - _state_bytes(small) == 8 * (k - k // 4) * (d + 1)  # linear in K


def test_logit_spectrum_computes_at_imagenet_size():
    k, d = 1000, 512
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(k, d, generator=gen, dtype=F64)
    mu = torch.randn(k, d, generator=gen, dtype=F64)
    spec = LogitSpectrum(k, feature_dim=d)
    spec.set_classifier(w)
    spec.update(mu @ w.T, torch.arange(k), mu)
    out = spec.compute()
    z = w @ mu.T
    zc = z - z.mean(0) - z.mean(1, keepdim=True) + z.mean()
    ref = _dense_class_margin(z).min() / torch.linalg.svdvals(zc).sum()
    assert out["class_margin_normalized"] == pytest.approx(ref.item(), rel=1e-9)
