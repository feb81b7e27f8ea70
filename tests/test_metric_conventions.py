"""Other libraries' conventions (hadainit.metrics.conventions, issue 22 item 9): NC5 of Ammar et al. 2024,
GNC2 mean and variance with rhubarbwu's Riesz exponent d - 2, uniform duality as a variance; each against
closed forms, a plain loop over pairs and classes, and hadainit's own keys on the same features."""

import itertools
import math

import pytest
import torch

from hadainit.metrics import functional
from hadainit.metrics.conventions import gnc2_statistics, nc5_ood_orthogonality, uniform_duality_variance

F64 = torch.float64


def _etf(k: int, d: int, gen) -> torch.Tensor:
    """K simplex-ETF means in R^d (d >= K - 1), rotated at random, around a random centre."""
    centred = torch.eye(k, dtype=F64) - 1.0 / k
    basis = torch.linalg.eigh(centred)[1][:, 1:]  # orthonormal columns spanning 1^perp (eigenvalue 1)
    q, _ = torch.linalg.qr(torch.randn(d, k - 1, generator=gen, dtype=F64))
    return (centred @ basis) @ q.T * 3.0 + torch.randn(d, generator=gen, dtype=F64)


def test_nc5_against_a_loop_and_its_conventions():
    gen = torch.Generator().manual_seed(0)
    m, o, c = torch.randn(7, 5, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64), \
        torch.randn(5, generator=gen, dtype=F64)
    for center in (None, c):
        cc = torch.zeros(5, dtype=F64) if center is None else c
        loop = sum(abs(float(torch.dot(mk - cc, o - cc) / ((mk - cc).norm() * (o - cc).norm()))) for mk in m) / 7
        assert nc5_ood_orthogonality(m, o, center=center) == pytest.approx(loop, rel=1e-14)
    # at collapse: an OOD mean orthogonal to every centred class mean (here: along the centre) gives 0
    means = _etf(4, 6, gen)
    centre = means.mean(0)
    assert nc5_ood_orthogonality(means, centre, center=torch.zeros(6, dtype=F64)) >= 0
    normal = torch.linalg.svd((means - centre).T)[0][:, -1]  # orthogonal to the centred means' span
    assert nc5_ood_orthogonality(means, centre + normal, center=centre) == pytest.approx(0.0, abs=1e-15)
    # an OOD mean along one class's centred mean: |cos| = 1 for it and 1/(K-1) for the others (ETF)
    assert nc5_ood_orthogonality(means, means[0], center=centre) == pytest.approx((1 + 3 * (1 / 3)) / 4, rel=1e-13)


def test_nc5_refuses_undefined_cosines_and_bad_shapes():
    with pytest.raises(ValueError, match="zero"):
        nc5_ood_orthogonality([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="zero"):
        nc5_ood_orthogonality([[1.0, 0.0], [0.0, 1.0]], [2.0, 2.0], center=[0.0, 1.0])  # class 1 is the centre
    with pytest.raises(ValueError, match="dimension 2"):
        nc5_ood_orthogonality([[1.0, 0.0]], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        nc5_ood_orthogonality([[1.0, math.nan]], [1.0, 0.0])
    with pytest.raises(TypeError):
        nc5_ood_orthogonality([[1.0, 0.0]], torch.tensor([True, False]))


@pytest.mark.parametrize("k, d", [(4, 3), (5, 7), (10, 12)])
def test_gnc2_on_a_simplex_etf_is_the_closed_form(k, d):
    gen = torch.Generator().manual_seed(k)
    means = _etf(k, d, gen)
    dist = math.sqrt(2 * k / (k - 1))  # normalized simplex-ETF vectors: cos = -1/(K-1) for every pair
    log = gnc2_statistics(means)
    assert log["pairs"] == k * (k - 1) // 2
    assert log["mean"] == pytest.approx(-math.log(dist), rel=1e-13)
    assert log["variance"] == pytest.approx(0.0, abs=1e-26)
    riesz = gnc2_statistics(means, kernel="riesz")  # rhubarbwu's exponent d - 2
    assert riesz["s"] == d - 2
    assert riesz["mean"] == pytest.approx(dist ** -(d - 2), rel=1e-12)
    assert gnc2_statistics(means, kernel="riesz", riesz_s=1.0)["mean"] == pytest.approx(1 / dist, rel=1e-13)


def test_gnc2_against_a_loop_and_hadainits_own_keys():
    gen = torch.Generator().manual_seed(3)
    k, d = 6, 4
    feats = torch.randn(240, d, generator=gen, dtype=F64) + 2 * torch.randn(k, d, generator=gen, dtype=F64).repeat(40, 1)
    labels = torch.arange(240) % k
    means = torch.stack([feats[labels == c].mean(0) for c in range(k)])
    u = means - means.mean(0)
    u = u / u.norm(dim=1, keepdim=True)
    for kernel, s, f in (("log", None, lambda r: -math.log(r)), ("riesz", None, lambda r: r ** -(d - 2)),
                         ("riesz", 1.0, lambda r: 1 / r), ("riesz", -1.0, lambda r: -r)):
        vals = [f(float((u[a] - u[b]).norm())) for a, b in itertools.combinations(range(k), 2)]
        mean = sum(vals) / len(vals)
        got = gnc2_statistics(means, kernel=kernel, riesz_s=s)
        assert got["mean"] == pytest.approx(mean, rel=1e-13)
        assert got["variance"] == pytest.approx(sum((v - mean) ** 2 for v in vals) / len(vals), rel=1e-11)
    own = functional.neural_collapse(feats, labels, riesz_s=1.0)
    assert gnc2_statistics(means)["mean"] == pytest.approx(own["gnc2_log"], rel=1e-12)
    assert gnc2_statistics(means, kernel="riesz", riesz_s=1.0)["mean"] == pytest.approx(own["gnc2_riesz"], rel=1e-12)


def test_gnc2_edges():
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=F64)  # classes 0 and 1 normalize alike
    got = gnc2_statistics(same, global_mean=torch.zeros(2, dtype=F64))
    assert got["mean"] == math.inf and got["variance"] == math.inf  # an infinite energy, not NaN
    assert gnc2_statistics(torch.eye(2, dtype=F64) * 5, kernel="riesz")["mean"] == 1.0  # d = 2: s = 0, the constant 1
    with pytest.raises(ValueError, match="at least 2 classes"):
        gnc2_statistics([[1.0, 2.0]])
    with pytest.raises(ValueError, match="'log' or 'riesz'"):
        gnc2_statistics(torch.eye(3), kernel="riez")
    with pytest.raises(ValueError, match="zero"):
        gnc2_statistics(torch.eye(3), global_mean=torch.tensor([1.0, 0.0, 0.0]))


def test_uniform_duality_variance_is_the_square_of_hadainits_unc3():
    gen = torch.Generator().manual_seed(5)
    feats, labels = torch.randn(90, 6, generator=gen, dtype=F64), torch.arange(90) % 5
    w = torch.randn(5, 6, generator=gen, dtype=F64)
    means = torch.stack([feats[labels == c].mean(0) for c in range(5)])
    cos = torch.nn.functional.cosine_similarity(w, means - means.mean(0), dim=1)
    own = functional.neural_collapse(feats, labels, w)
    assert uniform_duality_variance(own["unc3"]) == pytest.approx(float(cos.var(correction=0)), rel=1e-12)
    with pytest.raises(ValueError, match="standard deviation"):
        uniform_duality_variance(-0.1)
