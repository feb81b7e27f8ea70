"""The collapse metrics at K > d + 1 (issue 24 item 5): the ETF-gap floor against a dense Gram computation
(and attained by orthonormal non-constant basis columns), the min distance of the normalized centred means
against a loop over pairs, the once-said "no simplex ETF" warning, and state memory linear in K."""

import itertools
import math
import warnings

import pytest
import torch

from hadainit.metrics import NeuralCollapse
from hadainit.metrics.formulas import etf_gap_floor
from hadainit.metrics.logits import LogitSpectrum
from hadainit.modes import basis_columns

F64 = torch.float64


def _dense_etf_gap(m: torch.Tensor) -> float:
    k = m.shape[0]
    c = m - m.mean(0)
    g = c @ c.T
    e = (torch.eye(k, dtype=F64) - 1.0 / k) / math.sqrt(k - 1)
    return torch.linalg.matrix_norm(g / torch.linalg.matrix_norm(g) - e).item()


def _features(means: torch.Tensor, per_class: int, noise: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    k, d = means.shape
    labels = torch.arange(k).repeat(per_class)
    return means[labels] + noise * torch.randn(k * per_class, d, generator=gen, dtype=F64), labels


@pytest.mark.parametrize("k, d, basis", [(16, 5, "walsh"), (12, 4, "fourier"), (10, 9, "fourier")])
def test_etf_gap_floor_is_the_closed_form_attained_by_basis_columns(k, d, basis):
    expected = math.sqrt(2 - 2 * math.sqrt(d / (k - 1))) if k - 1 > d else 0.0
    assert etf_gap_floor(k, d) == pytest.approx(expected, rel=1e-15, abs=1e-15)
    modes = list(range(1, d + 1))  # fourier: whole (cos, sin) pairs for even d; d = K - 1: every mode
    q = basis_columns(k, basis, modes)  # K x d, orthonormal, orthogonal to the constant vector
    assert torch.allclose(q.T @ q, torch.eye(d, dtype=F64), atol=1e-13)
    assert _dense_etf_gap(q) == pytest.approx(etf_gap_floor(k, d), rel=1e-12, abs=1e-12)
    gen = torch.Generator().manual_seed(k)
    for _ in range(5):  # no K x d means do better than the floor
        assert _dense_etf_gap(torch.randn(k, d, generator=gen, dtype=F64)) >= etf_gap_floor(k, d) - 1e-12
    feats, labels = _features(q, per_class=3, noise=0.0)
    metric = NeuralCollapse(k, d)
    metric.update(feats, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric.compute()
    assert out["etf_gap_means"] == pytest.approx(etf_gap_floor(k, d), rel=1e-10, abs=1e-12)
    assert out["etf_gap_floor"] == etf_gap_floor(k, d)


def test_min_distance_of_normalized_centred_means_against_a_loop_and_the_warning_once():
    k, d = 12, 4
    gen = torch.Generator().manual_seed(2)
    means = torch.randn(k, d, generator=gen, dtype=F64)
    feats, labels = _features(means, per_class=5, noise=0.1, seed=3)
    mu = torch.stack([feats[labels == c].mean(0) for c in range(k)])
    u = mu - mu.mean(0)
    u = u / u.norm(dim=1, keepdim=True)
    loop = min((u[a] - u[b]).norm().item() for a, b in itertools.combinations(range(k), 2))
    metric = NeuralCollapse(k, d)
    with pytest.warns(UserWarning, match="no simplex ETF exists") as record:
        for _ in range(3):
            metric.update(feats, labels)
            out = metric.compute()
            metric.reset()
    assert sum("no simplex ETF" in str(w.message) for w in record) == 1  # said once, not per compute
    assert out["min_distance_means"] == pytest.approx(loop, rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # K <= d + 1: no such warning
        small = NeuralCollapse(5, 4)
        small.update(*_features(torch.randn(5, 4, generator=gen, dtype=F64), 4, 0.1))
        small.compute()


def _state_bytes(metric) -> int:
    return sum(v.numel() * v.element_size() for v in metric.metric_state.values() if isinstance(v, torch.Tensor))


def test_state_memory_is_affine_in_k_and_never_k_by_k():
    d = 768
    for make in (lambda k: NeuralCollapse(k, d), lambda k: LogitSpectrum(k, feature_dim=d)):
        sizes = [_state_bytes(make(k)) for k in (1000, 2000, 4000)]
        slope = (sizes[1] - sizes[0]) / 1000
        assert sizes[2] - sizes[1] == pytest.approx(2000 * slope, rel=1e-12)  # affine in K: no K^2 term
        assert slope <= 8 * (d + 4)  # float64 per class: a d-vector and a few scalars
        k = 50257  # a language-model head: O(K d) (a K x K float64 state would be 20 GB)
        assert _state_bytes(make(k)) <= sizes[0] + slope * (k - 1000) + 1
