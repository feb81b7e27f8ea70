"""Quantities over pairs of classes, in chunks of rows: memory O(chunk x K), never a K x K matrix.

Over the ordered pairs ``k != l`` of the rows ``r_k`` (class means or classifier
rows), with ``u_k = r_k / ||r_k||``:

* cosine statistics (docs/theory.md §6, NC2): the standard deviation of ``cos = u_k . u_l`` and the
  mean of ``|cos + 1/(K-1)|``;
* CDNV (Galanti et al. 2022, docs/theory.md §6): ``(var_k + var_l) / (2 ||mu_k - mu_l||^2)``, the mean
  and, per class, the mean over its partners;
* GNC2, hyperspherical uniformity (Liu et al. 2023, "Generalizing and decoupling neural collapse via
  hyperspherical uniformity gap"): the mean logarithmic energy ``log(1 / ||u_k - u_l||)`` and the mean
  Riesz s-energy ``||u_k - u_l||^(-s)`` of the normalized centred class means;
* the smallest pairwise distances ``min ||mu_k - mu_l||`` and ``min ||u_k - u_l||`` (docs/theory.md §8:
  a target of the collapse that is defined for every K, also when no simplex ETF fits in R^d).

Pairs at distance zero (coinciding means or directions) make the CDNV and the energies infinite.

Accuracy. One matrix product per chunk gives the Gram ``G = R_c R^T``; cosines and squared distances
``||r_k||^2 + ||r_l||^2 - 2 G_kl`` come from it. Where that difference cancels (squared distance below
``2^-10`` of ``||r_k||^2 + ||r_l||^2``, or cosine above ``1 - 2^-10``), the distance is recomputed from the
difference of the two rows: close means keep their digits and coinciding means give exactly 0.

Threads. The loop runs many operations over chunks of about 2 MiB; on a shared machine, threading
each of them makes every operation wait for the slowest thread. The element-wise passes run on one
thread (a scoped :func:`torch.set_num_threads`, restored afterwards); the product, one per chunk, keeps
torch's threads when it is large enough to pay for them (:data:`THREADED_PRODUCT`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["CANCELLATION", "PairStatistics", "pair_statistics"]

CHUNK_ELEMENTS = 1 << 18  # chunk rows x K entries per buffer (2 MiB in float64: the passes stay in cache)
CANCELLATION = 2.0**-10  # relative squared distance below which the Gram's difference is recomputed
THREADED_PRODUCT = 1 << 25  # multiply-adds of one chunk's product above which it runs on torch's threads
PAIRS_PER_BATCH = 1 << 15  # close pairs recomputed at a time (memory O(PAIRS_PER_BATCH x d))


@dataclass
class PairStatistics:
    """Means over ordered pairs ``k != l`` (floats) and per-class CDNV (K,), when asked for."""

    cos_std: float
    cos_etf: float
    cdnv: float | None = None
    cdnv_per_class: Tensor | None = None
    gnc2_log: float | None = None
    gnc2_riesz: float | None = None
    min_distance: float | None = None  # min ||r_k - r_l|| among the close pairs (None when there is none)
    min_unit_distance: float | None = None  # min ||u_k - u_l||


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (at most the current number), restored after."""
    before = torch.get_num_threads()
    count = max(1, min(count, before))
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unit_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    norms = torch.linalg.vector_norm(rows, dim=1)
    return rows / norms.unsqueeze(1), norms


def chunk_rows(k: int, d: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk: ``chunk_elements / K``, but at least 64 when the K x d rows no longer fit in a cache
    (a product of fewer rows would be bound by reading them)."""
    low = 64 if k * d > (1 << 19) else 1
    return max(1, min(k, max(low, chunk_elements // k)))


def _exact_pairs(rows: Tensor, unit: Tensor, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distances of the pairs (first[i], second[i]) from the differences of the rows and of the
    unit rows, in batches of :data:`PAIRS_PER_BATCH`."""
    dist, udist = torch.empty_like(first, dtype=rows.dtype), torch.empty_like(first, dtype=rows.dtype)
    for i in range(0, first.shape[0], PAIRS_PER_BATCH):
        a, b = first[i : i + PAIRS_PER_BATCH], second[i : i + PAIRS_PER_BATCH]
        dist[i : i + PAIRS_PER_BATCH] = (rows[a] - rows[b]).pow(2).sum(1)
        udist[i : i + PAIRS_PER_BATCH] = (unit[a] - unit[b]).pow(2).sum(1)
    return dist, udist


def pair_statistics(
    rows: Tensor,
    variances: Tensor | None = None,
    *,
    riesz_s: float = 1.0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> PairStatistics:
    """Pair quantities of ``rows`` (K x d, no zero row). With ``variances`` (K,) the rows are centred class
    means and the CDNV, GNC2 energies and smallest distances are added; without, only the cosine statistics
    (classifier rows)."""
    k, d = rows.shape
    unit, norms = _unit_rows(rows)
    total = unit.sum(0)
    mean_cos = ((total @ total - k) / (k * (k - 1))).item()  # from ||sum u||^2 = K + sum_{k!=l} cos
    etf = -1.0 / (k - 1)
    sq, inverse = norms.pow(2), norms.reciprocal()
    chunk = chunk_rows(k, d, chunk_elements)
    product_threads = torch.get_num_threads() if chunk * d * k >= THREADED_PRODUCT else 1
    buffers = [torch.empty(chunk, k, dtype=rows.dtype, device=rows.device) for _ in range(3)]
    sums = torch.zeros(5, dtype=rows.dtype, device=rows.device)  # (cos - mean)^2, |cos - etf|, cdnv, log, riesz
    lows = torch.full((2,), math.inf, dtype=rows.dtype, device=rows.device)  # min squared distance, unit
    per_class = torch.zeros(k, dtype=rows.dtype, device=rows.device) if variances is not None else None
    with threads(1):
        for start in range(0, k, chunk):
            stop = min(start + chunk, k)
            gram, cos, work = (buf[: stop - start] for buf in buffers)
            with threads(product_threads):
                torch.mm(rows[start:stop], rows.T, out=gram)
            torch.mul(gram, inverse[start:stop].unsqueeze(1), out=cos).mul_(inverse)
            cos.diagonal(offset=start).fill_(mean_cos)  # the pairs (k, k): their terms are 0
            torch.sub(cos, mean_cos, out=work)
            sums[0] += torch.linalg.vecdot(work.view(-1), work.view(-1))
            work.add_(mean_cos - etf).diagonal(offset=start).zero_()  # cos - etf
            sums[1] += torch.linalg.vector_norm(work.view(-1), ord=1)  # sum |cos - etf| in one pass
            if variances is None:
                continue
            _pair_distances(rows, unit, sq, variances, start, gram, cos, work, sums, lows, per_class, riesz_s)
    values = (sums / (k * (k - 1))).tolist()
    out = PairStatistics(cos_std=math.sqrt(values[0]), cos_etf=values[1])
    if variances is not None:
        out.cdnv, out.cdnv_per_class, out.gnc2_log, out.gnc2_riesz = values[2], per_class, values[3], values[4]
        out.min_distance = None if not math.isfinite(lows[0].item()) else lows[0].sqrt().item()
        out.min_unit_distance = (2 * lows[1]).sqrt().item()
    return out


def _pair_distances(rows, unit, sq, variances, start, gram, cos, work, sums, lows, per_class, riesz_s) -> None:
    """The CDNV, GNC2 and smallest-distance terms of one chunk; ``gram``, ``cos`` and ``work`` are overwritten.

    ``half = 1 - cos = ||u_k - u_l||^2 / 2``. A pair whose squared distance cancels in the Gram
    (``dist^2 < CANCELLATION (|r_k|^2 + |r_l|^2)``) has ``1 - cos < 2 CANCELLATION`` (from
    ``dist^2 = (|r_k| - |r_l|)^2 + 2 |r_k| |r_l| (1 - cos)``), so one test on ``half`` finds both kinds.
    """
    k = rows.shape[0]
    stop = start + gram.shape[0]
    dist = gram.mul_(-2).add_(sq[start:stop].unsqueeze(1)).add_(sq)  # ||mu_k - mu_l||^2 from the Gram
    half = torch.sub(torch.ones((), dtype=cos.dtype, device=cos.device), cos, out=cos)
    half.diagonal(offset=start).fill_(math.inf)
    local, partner = torch.lt(half, 2 * CANCELLATION).nonzero(as_tuple=True)
    zero = None
    if local.numel():  # where the Gram's difference cancels: from the rows' differences
        exact, uexact = _exact_pairs(rows, unit, local + start, partner)
        dist.index_put_((local, partner), exact)
        half.index_put_((local, partner), uexact / 2)
        if bool((exact == 0).any()):
            zero = exact == 0
            dist.index_put_((local[zero], partner[zero]), torch.ones((), dtype=dist.dtype, device=dist.device))
    lows[1] = torch.minimum(lows[1], half.min())
    if local.numel():
        lows[0] = torch.minimum(lows[0], exact.min())
    dist.diagonal(offset=start).fill_(math.inf)
    recip = dist.reciprocal_()  # the diagonal: 0
    if zero is not None:  # coinciding means: set apart (their 1 / 0 would meet a zero variance as NaN)
        recip.index_put_((local[zero], partner[zero]), torch.zeros((), dtype=dist.dtype, device=dist.device))
    # sum_l (v_k + v_l) / dist_kl = v_k sum_l 1/dist_kl + sum_l v_l / dist_kl: one product with [1, v]
    both = recip @ torch.stack((torch.ones_like(variances), variances), 1)
    row_cdnv = variances[start:stop] * both[:, 0] + both[:, 1]
    if zero is not None:
        row_cdnv.index_fill_(0, local[zero].unique(), math.inf)
    per_class[start:stop] = row_cdnv / (2 * (k - 1))
    sums[2] += row_cdnv.sum() / 2
    half.diagonal(offset=start).fill_(0.5)  # ||u_k - u_k||^2 := 1: log 1 = 0 and 1^(-s) = 1, subtracted below
    # log(1 / ||u_k - u_l||) = -(log 2 + log half) / 2 and ||u_k - u_l||^(-s) = 2^(-s/2) half^(-s/2)
    sums[3] -= (torch.log(half, out=work).sum() + math.log(2.0) * half.numel()) / 2
    powered = half.rsqrt_() if riesz_s == 1 else half.pow_(-riesz_s / 2)
    sums[4] += powered.sum() * 2.0 ** (-riesz_s / 2) - (stop - start)
