"""Mode sets: the spectral initialization with more classes than features, K > d (docs/theory.md §8).

A *mode set* ``S`` is a set of non-constant columns of the softmax basis ``Q``
(walsh or fourier) with ``r = |S| <= min(d, K - 1)``; fourier sets hold whole
(cos, sin) pairs. ``W(0) = Q_S diag(a_S) V_r^T`` keeps both singular bases
frozen for any K (the gradient only sees the modes of S). What S decides is
*where* cross-entropy takes the spectrum: the logit gap between the true class
j and class j + g (walsh: j XOR g; fourier: j + g mod K) is the same for all j,

    m_g(lam) = sum_{i in S} lam_i q_i(0) (q_i(0) - q_i(g))
             = (1/K) sum_{i in S} lam_i (1 - chi_i(g)),     chi_i(g) = (-1)^popcount(i & g)  (walsh)
                                                                       cos(2 pi f_i g / K)   (fourier)

(:func:`hadainit.ufm.margins` returns all of them, one transform), and the
normalized spectrum ``lam / sum(lam)`` goes to a solution of the max-margin LP

    t*(S) = max_{lam >= 0 on S, sum(lam) = 1}  min_{g != 0} m_g(lam)       (:func:`max_margin`).

Averaging ``m_g`` over the K - 1 shifts gives ``sum(lam) / (K - 1)`` for every
S, so ``t*(S) <= 1 / (K - 1)``, with equality for S = all modes (the simplex
ETF): ``t*(S) (K - 1)``, the *ETF fraction*, says how close a mode set comes.

Nothing here builds a K x K matrix: :func:`basis_columns` generates only the
needed columns of Q, :func:`basis_transpose` applies ``Q^T`` by one transform.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _checks, _threads
from .bases import _fourier_table, resolve_basis
from .hadamard import fwht

__all__ = [
    "MODE_CHOICES",
    "MaxMargin",
    "auto_modes",
    "basis_columns",
    "basis_transpose",
    "check_modes",
    "first_modes",
    "max_margin",
    "mode_frequencies",
    "on_modes",
    "random_modes",
    "resolve_modes",
    "truncation_modes",
]

#: The named choices of ``hadamard_(..., modes=...)``; explicit mode indices are the third kind.
MODE_CHOICES = ("auto", "first")

#: Above this many LP coefficients the LP is solved by cutting planes over the shifts (still exact).
_DENSE_LP_LIMIT = 2_000_000


def _mode_kind(num_classes: int, basis: str) -> str:
    kind = resolve_basis(num_classes, basis)
    if kind not in ("walsh", "fourier"):
        raise ValueError(
            f"mode sets need a softmax-diagonalizing basis ('walsh' or 'fourier'), got {basis!r}: "
            "for more classes than features only those keep the singular vectors frozen"
        )
    return kind


def mode_frequencies(num_classes: int) -> Tensor:
    """Frequency of each fourier mode: 0, 1, 1, 2, 2, ... (and K/2 for the last mode of an even K)."""
    return (torch.arange(num_classes) + 1) // 2


def basis_columns(num_classes: int, basis: str, modes, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The columns ``Q[:, modes]`` of the softmax basis (K x r) without forming Q.

    Equal, bit for bit, to ``hadainit.basis_matrix(K, basis)[:, modes]``; memory O(K r).

    >>> from hadainit import basis_matrix
    >>> torch.equal(basis_columns(12, "fourier", [3, 4, 11]), basis_matrix(12, "fourier")[:, [3, 4, 11]])
    True
    """
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    kind = _mode_kind(k, basis)
    idx = _index_tensor(modes, k, "modes")
    j = torch.arange(k, dtype=torch.int64)
    rows = torch.empty(idx.numel(), k, dtype=torch.float64)  # Q_S^T: each mode a contiguous row
    if kind == "walsh":
        odd = torch.zeros(idx.numel(), k, dtype=torch.bool)
        for bit in range(k.bit_length() - 1):  # parity of popcount(i & j), one bit at a time
            odd ^= ((idx >> bit) & 1).bool()[:, None] & ((j >> bit) & 1).bool()[None, :]
        rows = (1.0 - 2.0 * odd.to(torch.float64)) / math.sqrt(k)
        return rows.T.to(dtype)
    # fourier: every entry is a gather from the 2K-entry table (cos, then sin) at m = (f j) mod K,
    # the same entries basis_matrix gathers (bit for bit); int32 suffices while f j < K^2 / 2 < 2^31
    table = _fourier_table(k).flatten()
    freq = mode_frequencies(k)[idx]
    sin_row = (idx % 2 == 0) & (idx > 0) & (2 * freq != k)
    itype = torch.int32 if k * k // 2 < 2**31 else torch.int64
    jj = j.to(itype)
    for lo in range(0, idx.numel(), 256):  # blocks of rows: the integer entries stay O(256 K)
        hi = min(lo + 256, idx.numel())
        m = (freq[lo:hi].to(itype)[:, None] * jj[None, :]) % k
        m += (sin_row[lo:hi].to(itype) * k)[:, None]
        torch.index_select(table, 0, m.flatten(), out=rows[lo:hi].view(-1))
    rows[idx == 0] = 1.0 / math.sqrt(k)
    rows[(2 * freq == k) & (idx > 0)] = (1.0 - 2.0 * (j % 2)).to(torch.float64) / math.sqrt(k)
    return rows.T.to(dtype)


def basis_transpose(x: Tensor, basis: str) -> Tensor:
    """``Q^T x`` along dim 0 of ``x`` (K x m), by one transform per column: O(K m log K), no K x K matrix.

    walsh: ``fwht(x) / sqrt(K)``; fourier: the real FFT, ``Re`` for the cos modes and ``-Im``
    for the sin modes. Row i of the result is mode i (float64 for non-float64 input).
    """
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"basis_transpose needs a 2-D floating (K, m) tensor, got {getattr(x, 'shape', type(x))}")
    k = x.shape[0]
    kind = _mode_kind(k, basis)
    x = x.to(torch.float64)
    if kind == "walsh":
        return fwht(x, dim=0) / math.sqrt(k)
    spec = torch.fft.rfft(x, dim=0)
    out = torch.empty_like(x)
    out[0] = spec[0].real / math.sqrt(k)
    pairs = (k - 1) // 2
    out[1 : 2 * pairs : 2] = math.sqrt(2.0 / k) * spec[1 : pairs + 1].real
    out[2 : 2 * pairs + 1 : 2] = -math.sqrt(2.0 / k) * spec[1 : pairs + 1].imag
    if k % 2 == 0:
        out[k - 1] = spec[k // 2].real / math.sqrt(k)
    return out


def _index_tensor(modes, num_classes: int, name: str) -> Tensor:
    if isinstance(modes, Tensor):
        if modes.is_floating_point() or modes.is_complex() or modes.dtype == torch.bool:
            raise TypeError(f"{name} must be integer mode indices, got dtype {modes.dtype}")
        idx = modes.detach().to(device="cpu", dtype=torch.int64).flatten()
    else:
        try:
            values = list(modes)
        except TypeError:
            raise TypeError(f"{name} must be a sequence of integer mode indices, got {type(modes).__name__}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) or hasattr(v, "__index__") for v in values):
            raise TypeError(f"{name} must be integer mode indices, got {values[:8]}")
        idx = torch.tensor([int(v) for v in values], dtype=torch.int64)
    if idx.numel() and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"{name} must be mode indices in 0 .. {num_classes - 1}, got {idx.tolist()[:16]}")
    return idx


def _gf2_rank(values: list[int]) -> int:
    """Rank over GF(2) of the integers' bit vectors."""
    basis: dict[int, int] = {}
    for v in values:
        while v:
            top = v.bit_length() - 1
            if top not in basis:
                basis[top] = v
                break
            v ^= basis[top]
    return len(basis)


def check_modes(modes, num_classes: int, basis: str = "auto", *, max_modes: int | None = None,
                name: str = "modes") -> Tensor:
    """A valid mode set as a sorted int64 tensor, or ``ValueError`` naming why it is not one.

    Valid: distinct non-constant modes (1 .. K-1), at most ``max_modes`` of them,
    whole (cos, sin) pairs for fourier, and *separating the classes* (every shift g
    has a positive margin coefficient): walsh, S spans GF(2)^log2(K); fourier, the
    frequencies of S and K have gcd 1.

    >>> check_modes([1, 2, 4, 8, 15], 16).tolist()
    [1, 2, 4, 8, 15]
    """
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    kind = _mode_kind(k, basis)
    idx = _index_tensor(modes, k, name)
    uniq = torch.unique(idx)
    if uniq.numel() != idx.numel():
        raise ValueError(f"{name} must be distinct, got {idx.tolist()[:16]}")
    if uniq.numel() == 0:
        raise ValueError(f"{name} is empty: no mode separates the classes")
    if (uniq == 0).any():
        raise ValueError(f"{name} contains mode 0, the constant mode, which never affects the loss "
                         "(modes='first' is the truncation that keeps it)")
    if max_modes is not None and uniq.numel() > max_modes:
        raise ValueError(f"{name} has {uniq.numel()} modes, more than r = min(d, K - 1) = {max_modes}")
    if kind == "walsh":
        bits = k.bit_length() - 1
        rank = _gf2_rank(uniq.tolist())
        if rank < bits:
            raise ValueError(
                f"{name} cannot separate the {k} classes: walsh modes must span GF(2)^{bits} (rank {bits}), "
                f"these have rank {rank} (at least log2 K = {bits} modes are needed)"
            )
        return uniq
    partner = torch.where(uniq % 2 == 1, uniq + 1, uniq - 1)
    nyquist = (k % 2 == 0) & (uniq == k - 1)
    partner = torch.where(nyquist, uniq, partner)
    missing = partner[~torch.isin(partner, uniq)]
    if missing.numel():
        i = int(missing[0])
        lo = i if i % 2 == 1 else i - 1
        raise ValueError(f"{name} splits a fourier (cos, sin) pair: modes {lo} and {lo + 1} come together")
    freqs = torch.unique(mode_frequencies(k)[uniq]).tolist()
    g = k
    for f in freqs:
        g = math.gcd(g, f)
    if g != 1:
        raise ValueError(f"{name} cannot separate the {k} classes: the fourier frequencies {freqs[:8]} share the "
                         f"divisor {g} with K = {k} (classes {k // g} apart are never told apart); their gcd with K must be 1")
    return uniq


def on_modes(values, modes, num_classes: int) -> Tensor:
    """A length-K spectrum with ``values`` on ``modes`` and exact zeros elsewhere (batch dims kept).

    >>> on_modes([2.0, 3.0], [1, 3], 4).tolist()
    [0.0, 2.0, 0.0, 3.0]
    """
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    idx = _index_tensor(modes, k, "modes")
    v = _checks.real_tensor(values, "values")
    if v.dim() == 0 or v.shape[-1] != idx.numel():
        raise ValueError(f"values must have {idx.numel()} entries (one per mode) in the last dim, got {tuple(v.shape)}")
    out = torch.zeros(*v.shape[:-1], k, dtype=v.dtype, device=v.device)
    out[..., idx.to(v.device)] = v
    return out


def first_modes(num_classes: int, feature_dim: int) -> Tensor:
    """The Hoffer et al. (2018) truncation: the first ``min(d, K)`` columns of Q, constant column 0 included."""
    return torch.arange(min(feature_dim, num_classes), dtype=torch.int64)


def truncation_modes(num_classes: int, feature_dim: int, basis: str = "auto") -> Tensor:
    """The non-constant modes among the truncation's first d columns, less a fourier pair it splits.

    The part of the Hoffer et al. truncation that the exact theory covers: its t* is
    ``max_margin(truncation_modes(K, d))`` (0 when these modes do not separate the classes).
    """
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    kind = _mode_kind(k, basis)
    first = first_modes(k, _checks.positive_int(feature_dim, "feature_dim"))[1:]
    if kind == "fourier" and first.numel() and first[-1] % 2 == 1 and first[-1] != k - 1:
        first = first[:-1]  # the cos mode of a pair whose sin column was cut off
    return first


def _budget(num_classes: int, kind: str, max_modes: int) -> int:
    """How many modes a set can use: r, less one for an odd K's fourier pairs when r is odd."""
    r = min(max_modes, num_classes - 1)
    if kind == "fourier" and r % 2 == 1 and num_classes % 2 == 1:
        r -= 1
    return r


def auto_modes(num_classes: int, max_modes: int, basis: str = "auto", *, sharpness: float = 4.0) -> Tensor:
    """A separating mode set of ``r = min(max_modes, K - 1)`` modes chosen for a large ``t*(S)``.

    Greedy code design, one transform per round (no LP): start from a separating
    core (walsh: the log2 K unit vectors 1, 2, 4, ...; fourier: frequency 1, which
    every frequency coprime to K is equivalent to), then repeatedly add the mode
    (fourier: the pair, or the Nyquist mode) that most raises the *soft minimum*
    over shifts g of the uniform-weight margin ``w_g = sum_{i in S} (1 - chi_i(g))``:
    the mode maximizing ``sum_g p_g (1 - chi_i(g))`` with
    ``p_g ~ exp(-sharpness (w_g - min w) / std(w))`` (a plain argmin ties among
    thousands of shifts). For walsh the Solomon–Stiffler code (all modes less
    subspaces on disjoint bit ranges, optimal where it exists, e.g. r = K/2) is
    a candidate too. So are :data:`AUTO_RANDOM_CANDIDATES` random separating sets
    (:func:`random_modes`, seeds 0, 1, ...). The candidate kept is the one with the
    largest *certified lower bound* on t*(S): the best true minimum margin of a
    feasible ``lam`` found by ``min(150, 6e5 / K)`` steps of exponentiated-gradient
    ascent of a soft minimum of the margins (two transforms a step; the exact LP
    takes about 30 s per set at K = 50,257). So auto is at least as good as the best
    candidate by that bound; by the LP value it can lose to a candidate whose bound
    ranked lower, by little (6e-6 relative at K = 50,257, d = 768). For r = K - 1 the
    result is all modes (the ETF). Deterministic; cached per (K, r, basis).
    The LP then reweights: ``max_margin(auto_modes(...)).value`` is its t*.

    >>> auto_modes(16, 5).tolist()
    [1, 2, 4, 8, 15]
    """
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    kind = _mode_kind(k, basis)
    r = _budget(k, kind, _checks.positive_int(max_modes, "max_modes"))
    return torch.tensor(_auto_modes(k, r, kind, _checks.positive_float(sharpness, "sharpness")), dtype=torch.int64)


#: Random spanning sets that ``auto_modes`` also scores (fixed seeds: the choice stays deterministic).
AUTO_RANDOM_CANDIDATES = 4


@functools.lru_cache(maxsize=16)
def _auto_modes(k: int, budget: int, kind: str, sharpness: float) -> tuple[int, ...]:
    # one thread: the work is a sequence of length-K transforms, and a 1-D FFT on two threads is
    # slower than on one (measured at K = 50,257: 8.5 ms against 5.4 ms); the result does not depend on it
    with _threads.threads(1):
        return _auto_modes_work(k, budget, kind, sharpness)


def _auto_modes_work(k: int, budget: int, kind: str, sharpness: float) -> tuple[int, ...]:
    mult = torch.zeros(k, dtype=torch.float64)
    if kind == "walsh":
        bits = k.bit_length() - 1
        if budget < bits:
            raise ValueError(f"{k} classes need at least log2 K = {bits} walsh modes to be separated; r = {budget}")
        mult[[1 << b for b in range(bits)]] = 1.0
    elif budget < 2:
        raise ValueError(f"{k} classes need at least 2 fourier modes (one (cos, sin) pair) to be separated; r = {budget}")
    else:
        mult[1:3] = 1.0
    candidates = [_greedy(k, kind, mult, budget - int(mult.sum()), sharpness)]
    if kind == "walsh":
        stiffler = _solomon_stiffler(k, budget)
        if stiffler is not None:
            candidates.append(stiffler)
    if budget < k - 1:  # r = K - 1 is every mode: nothing to choose
        for seed in range(AUTO_RANDOM_CANDIDATES):
            try:
                candidates.append(random_modes(k, budget, kind, generator=torch.Generator().manual_seed(seed)))
            except ValueError:
                continue
    scores = _margin_lower_bounds(candidates, k, kind)
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))  # ties: the earlier (greedy first)
    return tuple(candidates[best].tolist())


def _margin_lower_bound(modes: Tensor, k: int, kind: str, *, iterations: int | None = None) -> float:
    """A certified lower bound on t*(S), cheaply: exponentiated-gradient ascent of a soft minimum of the margins.

    Each iteration is two transforms (the margins ``m_g`` of ``lam``, and ``sum_g p_g (1 - chi_i(g))`` per mode
    for the soft-min weights ``p``); the value returned is the best *true* minimum margin seen (of a feasible
    ``lam`` on S, sum 1), so it never exceeds t*(S). Pairs keep equal values (their scores are equal).
    ``iterations`` defaults to ``min(150, 6e5 / K)`` (at least 1: the uniform weights), a bounded cost at any K.
    """
    return _margin_lower_bounds([modes], k, kind, iterations=iterations)[0]


def _margin_lower_bounds(sets: list[Tensor], k: int, kind: str, *, iterations: int | None = None) -> list[float]:
    """:func:`_margin_lower_bound` of several mode sets, their transforms batched (one call per step for all).

    Batching changes no value: each row's transform is the one-row transform bit for bit, and the rest
    of an ascent step is done per set, as alone (a test holds this). At K = 50,257, on one thread, a
    real FFT of five rows takes 17 ms against 5.4 ms for one row.
    """
    if iterations is None:
        iterations = max(1, min(150, 600_000 // k))
    lam = torch.stack([_indicator(modes, k) for modes in sets])
    for row in lam:
        row /= row.sum()
    on = lam > 0
    best = [0.0] * len(sets)
    live = list(range(len(sets)))
    for it in range(iterations):
        if not live:
            break
        w_all = _shift_coefficients(lam[live], kind)[:, 1:]  # K m_g, g = 1 .. K-1, one row per live set
        going, weights = [], []
        for row, i in enumerate(live):
            w = w_all[row]
            low = float(w.min())
            best[i] = max(best[i], low / k)
            if not low > 0:
                continue  # this set is done
            temp = low * (0.05 * (1 - it / iterations) + 0.002)  # the soft minimum sharpens as it goes
            p = torch.zeros(k, dtype=torch.float64)
            p[1:] = torch.exp(-(w - low) / temp)
            going.append(i)
            weights.append(p)
        if not going:
            break
        p = torch.stack(weights)
        scores = _shift_coefficients(p, kind) if kind == "walsh" else _fourier_scores(p)
        still = []
        for row, i in enumerate(going):
            score = scores[row][on[i]]
            spread = float(score.std()) if score.numel() > 1 else 0.0
            if not spread > 0:
                continue
            lam[i, on[i]] *= torch.exp(0.3 * (score - score.mean()) / spread)
            lam[i] /= lam[i].sum()
            still.append(i)
        live = still
    return best


def _indicator(modes: Tensor, k: int) -> Tensor:
    out = torch.zeros(k, dtype=torch.float64)
    out[modes] = 1.0
    return out


def _solomon_stiffler(k: int, budget: int) -> Tensor | None:
    """All non-zero walsh modes less the non-zero points of subspaces on disjoint bit ranges, or None.

    Removing subspaces of dimensions u_1, u_2, ... (sum <= log2 K) from the 2^k - 1 modes leaves
    every shift g a count ``K/2 - sum_j [g not orthogonal to U_j] 2^(u_j - 1)`` of odd modes: the
    uniform minimum margin of the Griesmer bound (Solomon and Stiffler, 1965) where it applies.
    """
    bits = k.bit_length() - 1
    remove, dims = k - 1 - budget, []
    while remove > 0:
        u = (remove + 1).bit_length() - 1  # the largest u with 2^u - 1 <= remove
        dims.append(u)
        remove -= (1 << u) - 1
    if sum(dims) > bits:
        return None
    keep = torch.ones(k, dtype=torch.bool)
    keep[0] = False
    low = 0
    for u in dims:  # the subspace of the bits low .. low + u - 1
        keep[(torch.arange(1, 1 << u) << low)] = False
        low += u
    return torch.nonzero(keep).flatten()


def _shift_coefficients(mult: Tensor, kind: str) -> Tensor:
    """``w_g = sum_i mult_i (1 - chi_i(g))`` for every shift g (length K, batch dims kept): one transform."""
    k = mult.shape[-1]
    if kind == "walsh":
        return mult.sum(-1, keepdim=True) - fwht(mult)
    from .ufm.spectral import class0_logits  # lazy: hadainit.ufm imports this package's init

    return mult.sum(-1, keepdim=True) - k * class0_logits(mult, "fourier")


def _mode_gains(modes: Tensor, k: int, kind: str) -> Tensor:
    """``1 - chi_i(g)`` for g = 0 .. K-1 (rows) and the given modes i (columns), O(K r) integer work."""
    g = torch.arange(k, dtype=torch.int64)
    if kind == "walsh":
        odd = torch.zeros(k, modes.numel(), dtype=torch.bool)
        for bit in range(k.bit_length() - 1):
            odd ^= ((g >> bit) & 1).bool()[:, None] & ((modes >> bit) & 1).bool()[None, :]
        return 2.0 * odd.to(torch.float64)
    f = mode_frequencies(k)[modes]
    cos = torch.cos(2 * math.pi * g.to(torch.float64) / k)  # cos(2 pi m / K): the entry at m = (g f) mod K
    itype = torch.int32 if k * k // 2 < 2**31 else torch.int64  # g f < K^2 / 2
    m = (g.to(itype)[:, None] * f.to(itype)[None, :]) % k
    return 1.0 - torch.index_select(cos, 0, m.flatten()).view(k, -1)


def _greedy(k: int, kind: str, mult: Tensor, extra: int, sharpness: float) -> Tensor:
    """Add ``extra`` modes to the set ``mult > 0`` by the soft-min rule of :func:`auto_modes`.

    At most ``max(40, 2e6 / K)`` transforms: a round adds the best ``ceil(left / rounds left)``
    units (a mode, or a fourier pair), so sets for K up to a few thousand classes are built one
    unit at a time and a 50,257-class set in 40 rounds (about 0.5 s); ``w`` is
    updated from the added modes' columns, not by a transform.
    """
    w = _shift_coefficients(mult, kind)
    rounds = max(40, int(2e6 / k))
    while extra > 0:
        wg = w[1:]
        spread = max(float(wg.std()), 1e-12) if wg.numel() > 1 else 1.0
        p = torch.zeros(k, dtype=torch.float64)
        p[1:] = torch.exp(-sharpness * (wg - wg.min()) / spread)
        # score_i = sum_g p_g (1 - chi_i(g)) per mode: the same transform, applied to p
        score = _shift_coefficients(p, kind) if kind == "walsh" else _fourier_scores(p)
        score[0] = -math.inf
        score[mult > 0] = -math.inf
        nyquist_only = False
        if kind == "fourier":
            score[2::2] = -math.inf  # a pair is chosen through its cos mode
            if k % 2 == 0 and extra % 2 == 1:
                score[: k - 1] = -math.inf  # an odd budget: the Nyquist mode (one mode) goes first
                nyquist_only = True
            elif k % 2 == 0:
                score[k - 1] = -math.inf  # an even budget stays even: pairs only
        units = int(torch.isfinite(score).sum())
        if units == 0:
            break
        per_unit = 1 if kind == "walsh" or nyquist_only else 2
        take = max(1, min(units, -(-(extra // per_unit) // rounds)))
        picked = torch.argsort(score, descending=True, stable=True)[:take]
        added = []
        for i in picked.tolist():
            single = kind == "walsh" or (k % 2 == 0 and i == k - 1)  # a walsh mode, or the Nyquist mode
            cost = 1 if single else 2
            if cost > extra:
                continue
            added += [i] if single else [i, i + 1]
            extra -= cost
        if not added:
            break
        added_t = torch.tensor(added, dtype=torch.int64)
        mult[added_t] = 1.0
        w = w + _mode_gains(added_t, k, kind).sum(1)
        rounds = max(1, rounds - 1)
    return torch.nonzero(mult > 0).flatten()


def _fourier_scores(p: Tensor) -> Tensor:
    """Per mode i, ``sum_g p_g (1 - cos(2 pi f_i g / K))`` (both modes of a pair alike), one real FFT."""
    k = p.shape[-1]
    re = torch.fft.rfft(p).real  # sum_g p_g cos(2 pi f g / K), f = 0 .. K // 2
    per_freq = p.sum(-1, keepdim=True) - re
    return per_freq[..., mode_frequencies(k)]


def random_modes(num_classes: int, max_modes: int, basis: str = "auto", *,
                 generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random *separating* mode set of r = min(max_modes, K - 1) modes (whole fourier pairs).

    Rejection sampling: draws until the set separates the classes (spans GF(2)^log2 K, or frequencies
    with gcd 1), which for r >= 2 log2 K almost always holds at the first draw.
    """
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    kind = _mode_kind(k, basis)
    budget = _budget(k, kind, _checks.positive_int(max_modes, "max_modes"))
    for _ in range(1000):
        if kind == "walsh":
            cand = (torch.randperm(k - 1, generator=generator)[:budget] + 1).tolist()
        else:
            units = [(2 * f - 1, 2 * f) for f in range(1, (k - 1) // 2 + 1)] + ([(k - 1,)] if k % 2 == 0 else [])
            order = torch.randperm(len(units), generator=generator).tolist()
            cand, left = [], budget
            for u in order:
                if len(units[u]) <= left:
                    cand += list(units[u])
                    left -= len(units[u])
        try:
            return check_modes(cand, k, kind)
        except ValueError:
            continue
    raise ValueError(f"no separating set of {budget} modes found for K = {k} in 1000 draws")


def resolve_modes(modes, num_classes: int, feature_dim: int, basis: str) -> Tensor:
    """The mode indices that ``hadamard_(..., modes=modes)`` uses for a (K, d) weight (sorted int64).

    ``"auto"``: :func:`auto_modes` with r = min(d, K - 1); ``"first"``: :func:`first_modes`
    (constant included); explicit indices: :func:`check_modes` with at most r of them.
    """
    r = min(feature_dim, num_classes - 1)
    if isinstance(modes, str):
        if modes not in MODE_CHOICES:
            raise ValueError(f"modes must be one of {MODE_CHOICES} or a sequence of mode indices, got {modes!r}")
        if modes == "first":
            return first_modes(num_classes, feature_dim)
        return auto_modes(num_classes, r, basis)
    return check_modes(modes, num_classes, basis, max_modes=r)


@dataclass(frozen=True)
class MaxMargin:
    """The solution of the max-margin LP over a mode set (module docstring).

    ``value`` is t*(S) (the minimum margin of ``lam``, checked over all K - 1 shifts);
    ``upper`` the LP bound it is certified against (``value <= t* <= upper``, equal to
    round-off); ``lam`` a maximizer, length K, zeros off S, ``sum(lam) = 1``, pairs equal;
    ``etf_fraction = value * (K - 1)`` (1 for the simplex ETF, the best any S can do).
    """

    value: float
    upper: float
    lam: Tensor
    modes: Tensor
    active: Tensor
    iterations: int

    @property
    def etf_fraction(self) -> float:
        return self.value * (self.lam.shape[0] - 1)


def _groups(modes: Tensor, k: int, kind: str) -> list[Tensor]:
    """The LP's free values: one per walsh mode, one per fourier frequency (a pair shares its value)."""
    if kind == "walsh":
        return [modes[i : i + 1] for i in range(modes.numel())]
    freq = mode_frequencies(k)[modes]
    return [modes[freq == f] for f in torch.unique(freq).tolist()]


def _coefficient_rows(shifts: Tensor, groups: list[Tensor], k: int, kind: str) -> Tensor:
    """``A[s, j] = K * dm_{g_s} / dx_j``: the margin coefficients, times K, of each group j's value."""
    reps = torch.stack([grp[0] for grp in groups])
    sizes = torch.tensor([grp.numel() for grp in groups], dtype=torch.float64)
    if kind == "walsh":
        odd = torch.zeros(shifts.numel(), reps.numel(), dtype=torch.bool)
        for bit in range(k.bit_length() - 1):
            odd ^= ((shifts >> bit) & 1).bool()[:, None] & ((reps >> bit) & 1).bool()[None, :]
        return 2.0 * odd.to(torch.float64) * sizes
    f = mode_frequencies(k)[reps]
    angle = 2 * math.pi * ((shifts[:, None] * f[None, :]) % k).to(torch.float64) / k
    return (1.0 - torch.cos(angle)) * sizes


def max_margin(modes, num_classes: int, basis: str = "auto", *, rtol: float = 1e-9) -> MaxMargin:
    """t*(S): the max-margin LP over a mode set, solved exactly with ``scipy.optimize.linprog`` (HiGHS).

    The group symmetry leaves one constraint per shift g (walsh: g = 1 .. K-1; fourier:
    g = 1 .. K//2, as ``m_g = m_{K-g}``) in one variable per free value (a walsh mode,
    a fourier frequency). Up to a few million coefficients the LP is solved at once;
    above, by cutting planes: solve on a subset of shifts, add every shift the solution
    violates (all margins in one transform), repeat until the bound ``upper`` and the
    solution's true minimum margin ``value`` agree to ``rtol``.

    Args:
        modes: a separating mode set (:func:`check_modes`), or ``"all"`` for every
            non-constant mode.
        num_classes: K.
        basis: ``"walsh"``, ``"fourier"`` or ``"auto"``.
        rtol: relative gap between the certified bounds at which cutting planes stop.

    >>> res = max_margin([1, 2, 4, 8, 3], 16)
    >>> round(res.value * 28, 9), (res.lam[[1, 2, 4, 8, 3]] * 7).round(decimals=6).tolist()
    (1.0, [1.0, 1.0, 2.0, 2.0, 1.0])
    """
    from scipy.optimize import linprog  # lazy: importing hadainit must not pay for scipy.optimize

    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    kind = _mode_kind(k, basis)
    if isinstance(modes, str) and modes == "all":
        modes = range(1, k)
    s = check_modes(modes, k, kind)
    rtol = _checks.positive_float(rtol, "rtol")
    groups = _groups(s, k, kind)
    n = len(groups)
    sizes = torch.tensor([grp.numel() for grp in groups], dtype=torch.float64)
    all_shifts = torch.arange(1, k if kind == "walsh" else k // 2 + 1, dtype=torch.int64)
    cost = torch.zeros(n + 1, dtype=torch.float64)
    cost[-1] = -1.0  # maximize t
    a_eq = torch.cat((sizes, torch.zeros(1, dtype=torch.float64)))[None, :]
    bounds = [(0, None)] * n + [(None, None)]

    def solve(shifts: Tensor) -> tuple[Tensor, float]:
        rows = _coefficient_rows(shifts, groups, k, kind)
        a_ub = torch.cat((-rows, torch.ones(rows.shape[0], 1, dtype=torch.float64)), dim=1)
        res = linprog(cost.numpy(), A_ub=a_ub.numpy(), b_ub=torch.zeros(rows.shape[0]).numpy(),
                      A_eq=a_eq.numpy(), b_eq=[1.0], bounds=bounds, method="highs",
                      options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
        if res.status != 0:
            raise RuntimeError(f"the max-margin LP failed: {res.message}")
        x = torch.as_tensor(res.x[:n], dtype=torch.float64).clamp_min(0.0)
        return x, float(-res.fun) / k

    def spectrum(x: Tensor) -> Tensor:
        lam = torch.zeros(k, dtype=torch.float64)
        for grp, value in zip(groups, x):
            lam[grp] = value
        return lam / lam.sum()

    from .ufm.spectral import margins  # lazy: hadainit.ufm imports hadainit.init, which imports this module

    if all_shifts.numel() * n <= _DENSE_LP_LIMIT:
        x, upper = solve(all_shifts)
        lam = spectrum(x)
        gamma = margins(lam, kind)
        return MaxMargin(float(gamma.min()), upper, lam, s, torch.nonzero(gamma <= upper * (1 + 1e-7)).flatten() + 1, 1)
    uniform = spectrum(torch.ones(n, dtype=torch.float64))
    gamma = margins(uniform, kind)[all_shifts - 1]
    shifts = all_shifts[torch.argsort(gamma)[: 4 * n + 16]]
    for it in range(1, 201):
        x, upper = solve(shifts)
        lam = spectrum(x)
        gamma_all = margins(lam, kind)
        gamma = gamma_all[all_shifts - 1]
        value = float(gamma.min())
        if upper - value <= rtol * upper:
            active = torch.nonzero(gamma_all <= upper * (1 + 1e-7)).flatten() + 1
            return MaxMargin(value, upper, lam, s, active, it)
        violated = all_shifts[gamma < upper * (1 - rtol / 2)]
        violated = violated[~torch.isin(violated, shifts)]
        order = torch.argsort(gamma[violated - 1])[: 2 * n + 16]
        shifts = torch.cat((shifts, violated[order]))
    raise RuntimeError(f"cutting planes did not converge for K = {k}, r = {s.numel()} (gap {upper - value:.3g})")
