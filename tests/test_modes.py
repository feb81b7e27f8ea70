"""Mode sets for K > d (docs/theory.md §8): columns of Q, the margins m_g, the max-margin LP, choosing S."""

import itertools
import math

import pytest
import torch

from hadainit import basis_matrix
from hadainit import modes as M
from hadainit.ufm import margins

EPS = torch.finfo(torch.float64).eps


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ columns of Q without Q


@pytest.mark.parametrize("k, kind", [(2, "walsh"), (16, "walsh"), (64, "walsh"), (2, "fourier"), (3, "fourier"),
                                     (12, "fourier"), (13, "fourier"), (100, "fourier")])
def test_basis_columns_and_transpose_match_the_dense_basis(k, kind):
    q = basis_matrix(k, kind)
    modes = torch.randperm(k, generator=_gen(k))[: max(1, k // 3)]
    assert torch.equal(M.basis_columns(k, kind, modes), q[:, modes])  # bit for bit
    x = torch.randn(k, 4, generator=_gen(1), dtype=torch.float64)
    # Q^T x by one transform; round-off of a length-K sum of O(1) terms
    assert torch.allclose(M.basis_transpose(x, kind), q.T @ x, atol=10 * math.log2(k + 1) * EPS * x.abs().max())


@pytest.mark.parametrize("k", [1001, 1024])
def test_basis_columns_match_the_dense_basis_across_row_blocks(k):
    # more than 256 modes: the rows are generated in blocks; all modes (and a scattered subset) stay exact
    q = basis_matrix(k, "fourier")
    assert torch.equal(M.basis_columns(k, "fourier", torch.arange(k)), q)
    modes = torch.randperm(k, generator=_gen(3))[:600]
    assert torch.equal(M.basis_columns(k, "fourier", modes), q[:, modes])


@pytest.mark.parametrize("k, kind", [(64, "walsh"), (100, "fourier"), (101, "fourier")])
def test_mode_gains_are_the_closed_form(k, kind):
    # 1 - chi_i(g) for every shift g: walsh 2 [popcount(i & g) odd], fourier 1 - cos(2 pi f_i g / K)
    modes = torch.tensor([1, 2, 5, 7, k - 1])
    gains = M._mode_gains(modes, k, kind)
    for col, i in enumerate(modes.tolist()):
        for g in range(k):
            if kind == "walsh":
                want = 2.0 * (bin(i & g).count("1") % 2)
            else:
                want = 1.0 - math.cos(2 * math.pi * ((g * ((i + 1) // 2)) % k) / k)
            assert abs(float(gains[g, col]) - want) <= 2 * EPS


# ------------------------------------------------------------------ m_g


@pytest.mark.parametrize("k, kind", [(16, "walsh"), (32, "walsh"), (12, "fourier"), (15, "fourier")])
def test_margins_are_the_closed_form_m_g(k, kind):
    # docs/theory.md §8: walsh m_g = (2/K) sum of lam_i over i in S with popcount(i & g) odd;
    # fourier m_g = (2/K) sum_f lam_f (1 - cos(2 pi f g / K)) over the frequencies' pair values
    s = M.random_modes(k, k // 3, kind, generator=_gen(k))
    lam = torch.zeros(k, dtype=torch.float64)
    vals = torch.rand(s.numel(), generator=_gen(2), dtype=torch.float64) + 0.1
    if kind == "fourier":  # pair values equal
        freq = M.mode_frequencies(k)[s]
        per_f = {f: float(v) for f, v in zip(freq.tolist(), vals.tolist())}
        vals = torch.tensor([per_f[f] for f in freq.tolist()], dtype=torch.float64)
    lam[s] = vals
    expected = torch.zeros(k - 1, dtype=torch.float64)
    for g in range(1, k):
        if kind == "walsh":
            expected[g - 1] = 2 / k * sum(lam[i] for i in s.tolist() if bin(i & g).count("1") % 2)
        else:
            freqs = {int(M.mode_frequencies(k)[i]): lam[i] for i in s.tolist()}
            expected[g - 1] = sum((2 / k if 2 * f != k else 1 / k) * v * (1 - math.cos(2 * math.pi * f * g / k))
                                  for f, v in freqs.items())
    # and the independent dense route: z = Q diag(lam) Q[0]^T, m_g = z_0 - z_g
    q = basis_matrix(k, kind)
    z = q @ torch.diag(lam) @ q[0]
    assert torch.allclose(margins(lam, kind), expected, atol=20 * EPS)
    assert torch.allclose(z[0] - z[1:], expected, atol=20 * EPS)


# ------------------------------------------------------------------ the LP


def _brute_force_lp(modes, k, kind):
    """max_x min_g a_g . x over the simplex, by enumerating the LP's vertices (exact, no solver)."""
    groups = M._groups(M.check_modes(modes, k, kind), k, kind)
    n = len(groups)
    size = torch.tensor([g.numel() for g in groups], dtype=torch.float64)
    rows = []
    for g in range(1, k):
        lam_coef = []
        for grp in groups:
            e = torch.zeros(k, dtype=torch.float64)
            e[grp] = 1.0
            lam_coef.append(float(margins(e, kind)[g - 1]))
        rows.append(lam_coef)
    a = torch.tensor(rows, dtype=torch.float64)
    # variables (x_1..x_n, t); a vertex: sum(size x) = 1 plus n tight ones among t = a_g.x and x_j = 0
    cons = [torch.cat((-a[g], torch.ones(1, dtype=torch.float64))) for g in range(a.shape[0])]
    cons += [torch.cat((torch.eye(n, dtype=torch.float64)[j], torch.zeros(1, dtype=torch.float64))) for j in range(n)]
    best = -math.inf
    for pick in itertools.combinations(range(len(cons)), n):
        mat = torch.stack([torch.cat((size, torch.zeros(1, dtype=torch.float64)))] + [cons[c] for c in pick])
        if abs(torch.linalg.det(mat)) < 1e-12:
            continue
        sol = torch.linalg.solve(mat, torch.cat((torch.ones(1, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))))
        x, t = sol[:n], sol[n]
        if (x >= -1e-12).all() and (a @ x >= t - 1e-12).all():
            best = max(best, float(t))
    return best


@pytest.mark.parametrize("k, kind, modes", [
    (8, "walsh", [1, 2, 4]), (8, "walsh", [3, 5, 7]), (8, "walsh", [1, 2, 7]), (16, "walsh", [1, 2, 4, 8]),
    (16, "walsh", [3, 6, 12, 8]), (7, "fourier", [1, 2, 3, 4]),
    (9, "fourier", [1, 2, 5, 6]), (12, "fourier", [1, 2, 11]), (13, "fourier", [1, 2, 3, 4, 9, 10]),
    (10, "fourier", [3, 4, 7, 8, 9]),
])
def test_max_margin_equals_brute_force(k, kind, modes):
    res = M.max_margin(modes, k, kind)
    exact = _brute_force_lp(modes, k, kind)
    assert res.value == pytest.approx(exact, rel=1e-9, abs=1e-15)
    assert res.value <= res.upper * (1 + 1e-12)
    lam = res.lam
    assert lam.sum().item() == pytest.approx(1.0, abs=1e-12) and (lam >= 0).all()
    off = torch.ones(k, dtype=torch.bool)
    off[torch.tensor(modes)] = False
    assert (lam[off] == 0).all()
    assert float(margins(lam, kind).min()) == pytest.approx(res.value, rel=1e-12)


def test_spec_example_lp_solution():
    # docs/theory.md §8: walsh K = 16, S = {1, 2, 4, 8, 3}: lam* = (1, 1, 2, 2, 1)/7, t* = (2/16)(2/7) = 1/28
    res = M.max_margin([1, 2, 4, 8, 3], 16)
    assert res.value == pytest.approx(1 / 28, rel=1e-12)
    lam = torch.zeros(16, dtype=torch.float64)
    lam[[1, 2, 4, 8, 3]] = torch.tensor([1, 1, 2, 2, 1], dtype=torch.float64) / 7
    assert float(margins(lam).min()) == pytest.approx(1 / 28, rel=1e-14)  # that point attains t*


@pytest.mark.parametrize("k, kind", [(8, "walsh"), (16, "walsh"), (6, "fourier"), (7, "fourier"), (12, "fourier")])
def test_all_modes_give_the_etf(k, kind):
    res = M.max_margin("all", k, kind)
    assert res.value == pytest.approx(1 / (k - 1), rel=1e-9) and res.etf_fraction == pytest.approx(1.0, rel=1e-9)
    # the mean of m_g over shifts is sum(lam) / (K - 1) for any lam: equal margins force the uniform solution
    assert torch.allclose(res.lam[1:], torch.full((k - 1,), 1 / (k - 1), dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("k, kind, r", [(64, "walsh", 12), (60, "fourier", 14)])
def test_cutting_planes_equal_the_dense_lp(k, kind, r, monkeypatch):
    sets = [M.random_modes(k, r, kind, generator=_gen(seed)) for seed in range(3)]
    dense = [M.max_margin(s, k, kind) for s in sets]
    monkeypatch.setattr(M, "_DENSE_LP_LIMIT", 1)
    for s, ref in zip(sets, dense):
        cut = M.max_margin(s, k, kind)
        assert cut.value == pytest.approx(ref.value, rel=1e-8)
        assert cut.value <= 1 / (k - 1) + 1e-15  # the ETF bound holds for every S


# ------------------------------------------------------------------ choosing S


@pytest.mark.parametrize("k, d, kind", [(16, 5, "walsh"), (64, 20, "walsh"), (64, 32, "walsh"), (30, 8, "fourier"),
                                        (50, 16, "fourier"), (100, 40, "fourier")])
def test_auto_beats_first_and_random(k, d, kind):
    auto = M.auto_modes(k, d, kind)
    assert auto.numel() <= min(d, k - 1)
    M.check_modes(auto, k, kind, max_modes=d)  # it separates the classes
    t_auto = M.max_margin(auto, k, kind).value
    try:
        t_first = M.max_margin(M.truncation_modes(k, d, kind), k, kind).value
    except ValueError:
        t_first = 0.0  # the truncation does not separate the classes at all
    randoms = [M.max_margin(M.random_modes(k, d, kind, generator=_gen(s)), k, kind).value for s in range(3)]
    assert t_auto > t_first
    assert t_auto >= sorted(randoms)[1]  # at least the median random separating set


def test_solomon_stiffler_is_near_the_etf_at_half_the_modes():
    # all modes less a subspace of dimension k-1: every shift has K/4 or K/2 odd modes; uniform weights give
    # t = (2/K)(K/4)/(K/2) = 1/K, a fraction (K-1)/K of the ETF's 1/(K-1)
    s = M.auto_modes(64, 32, "walsh")
    assert s.numel() == 32
    lam = torch.zeros(64, dtype=torch.float64)
    lam[s] = 1 / 32
    assert float(margins(lam).min()) == pytest.approx(1 / 64, rel=1e-12)


@pytest.mark.parametrize("modes, k, kind, match", [
    ([1, 2, 3], 8, "walsh", "rank 2"), ([], 8, "walsh", "empty"), ([1, 1, 2, 4], 8, "walsh", "distinct"),
    ([0, 1, 2, 4], 8, "walsh", "constant"), ([1, 2, 4, 8], 8, "walsh", r"0 \.\. 7"),
    ([1, 2, 3], 9, "fourier", "splits"), ([3, 4], 8, "fourier", "gcd"), ([5, 6], 12, "fourier", "4 apart"),
    ([1, 2], 12, "hadamard", "softmax-diagonalizing"),
])
def test_check_modes_refusals(modes, k, kind, match):
    with pytest.raises(ValueError, match=match):
        M.check_modes(modes, k, kind)


@pytest.mark.parametrize("k, d, kind", [(16, 5, "walsh"), (64, 20, "walsh"), (30, 8, "fourier"), (100, 40, "fourier"),
                                        (64, 32, "walsh")])
def test_auto_selection_bound_is_a_certified_lower_bound(k, d, kind):
    # auto_modes ranks its candidates by _margin_lower_bound: the true minimum margin of a feasible lam on S,
    # so never above the LP value t*(S); all modes with uniform lam is the ETF, 1 / (K - 1), at once
    for s in [M.auto_modes(k, d, kind)] + [M.random_modes(k, d, kind, generator=_gen(i)) for i in range(3)]:
        bound, lp = M._margin_lower_bound(s, k, kind), M.max_margin(s, k, kind)
        assert 0 < bound <= lp.upper * (1 + 1e-9)
        assert bound >= 0.9 * lp.value  # and close: it chooses well
    assert M._margin_lower_bound(torch.arange(1, k), k, kind) == pytest.approx(1 / (k - 1), rel=1e-12)


@pytest.mark.parametrize("k, d, kind", [(64, 20, "walsh"), (100, 40, "fourier"), (1001, 300, "fourier")])
def test_batched_lower_bounds_equal_the_single_ones(k, d, kind):
    # auto_modes scores its candidates in one batch (one transform per step for all): batching changes no
    # value, bit for bit, including sets whose ascent stops early (all modes: the ETF margin is flat)
    sets = [M.auto_modes(k, d, kind), torch.arange(1, k)] + [M.random_modes(k, d, kind, generator=_gen(i))
                                                              for i in range(3)]
    batched = M._margin_lower_bounds(sets, k, kind)
    single = [M._margin_lower_bounds([s], k, kind)[0] for s in sets]
    assert batched == single
    assert batched[1] == pytest.approx(1 / (k - 1), rel=1e-12)


@pytest.mark.slow
def test_auto_is_as_good_as_random_sets_at_the_gpt2_head():
    # the defect: at K = 50,257, d = 768 the greedy alone had t* (K-1) = 0.901 against 0.911 for random_modes
    # with seed 0; auto now keeps the best of its candidates by a certified lower bound (within 1e-4 of the
    # best candidate's LP value: the bound's ranking, not the LP, chooses)
    k, d = 50_257, 768
    t_auto = M.max_margin(M.auto_modes(k, d), k).value
    t_rand = M.max_margin(M.random_modes(k, d, generator=_gen(0)), k).value
    assert t_auto >= t_rand * (1 - 1e-4)
