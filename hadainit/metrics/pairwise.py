"""Quantities over pairs of classes, in chunks of rows: memory O(chunk x K), never a K x K matrix.

Over the ordered pairs ``k != l`` of the rows ``r_k`` (class means or classifier
rows), with ``u_k = r_k / ||r_k||``:

* cosine statistics (SPEC 6, NC2): the standard deviation of ``cos = u_k . u_l`` and the mean of
  ``|cos + 1/(K-1)|``;
* CDNV (Galanti et al. 2022, SPEC 6): ``(var_k + var_l) / (2 ||mu_k - mu_l||^2)``, the mean and, per
  class, the mean over its partners;
* GNC2, hyperspherical uniformity (Liu et al. 2023, "Generalizing and decoupling neural collapse via
  hyperspherical uniformity gap"): the mean logarithmic energy ``log(1 / ||u_k - u_l||)`` and the mean
  Riesz s-energy ``||u_k - u_l||^(-s)`` of the normalized centred class means.

Pairs at distance zero (coinciding means or directions) make the CDNV and the energies infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PairStatistics", "pair_statistics"]

CHUNK_ELEMENTS = 1 << 18  # chunk rows x K entries per buffer (2 MiB in float64: the passes stay in cache)

@dataclass
class PairStatistics:
    """Means over ordered pairs ``k != l`` (floats) and per-class CDNV (K,), when asked for."""

    cos_std: float
    cos_etf: float
    cdnv: float | None = None
    cdnv_per_class: Tensor | None = None
    gnc2_log: float | None = None
    gnc2_riesz: float | None = None


def _unit_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    norms = torch.linalg.vector_norm(rows, dim=1)
    return rows / norms.unsqueeze(1), norms


def pair_statistics(
    rows: Tensor,
    variances: Tensor | None = None,
    *,
    riesz_s: float = 1.0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> PairStatistics:
    """Pair quantities of ``rows`` (K x d, no zero row). With ``variances`` (K,) the rows are centred class
    means and the CDNV and GNC2 energies are added; without, only the cosine statistics (classifier rows)."""
    k = rows.shape[0]
    unit, norms = _unit_rows(rows)
    total = unit.sum(0)
    mean_cos = ((total @ total - k) / (k * (k - 1))).item()  # from ||sum u||^2 = K + sum_{k!=l} cos
    etf = -1.0 / (k - 1)
    sq = norms.pow(2)
    coincide = 1e-13 * sq.max().item()
    chunk = max(1, min(k, chunk_elements // k))
    buffers = [torch.empty(chunk, k, dtype=rows.dtype, device=rows.device) for _ in range(3)]
    sums = torch.zeros(5, dtype=rows.dtype, device=rows.device)  # (cos - mean)^2, |cos - etf|, cdnv, log, riesz
    per_class = torch.zeros(k, dtype=rows.dtype, device=rows.device) if variances is not None else None
    for start in range(0, k, chunk):
        stop = min(start + chunk, k)
        cos, work, dist = (buf[: stop - start] for buf in buffers)
        diagonal = cos.diagonal(offset=start)  # the pairs (k, k): their terms are set to 0 below
        torch.mm(unit[start:stop], unit.T, out=cos)
        diagonal.fill_(mean_cos)
        torch.sub(cos, mean_cos, out=work)
        sums[0] += torch.linalg.vecdot(work.view(-1), work.view(-1))
        diagonal.fill_(etf)
        sums[1] += torch.sub(cos, etf, out=work).abs_().sum()
        if variances is None:
            continue
        # ||mu_k - mu_l||^2 of the centred means from their Gram: no large offsets cancel
        torch.mm(rows[start:stop], rows.T, out=dist)
        dist.mul_(-2).add_(sq[start:stop].unsqueeze(1)).add_(sq)
        torch.add(variances[start:stop].unsqueeze(1), variances, out=work).div_(dist)
        work.masked_fill_(dist <= coincide, math.inf)  # coinciding means: an infinite normalized variance
        work.diagonal(offset=start).zero_()
        row_cdnv = work.sum(1)
        per_class[start:stop] = row_cdnv / (2 * (k - 1))
        sums[2] += row_cdnv.sum() / 2
        torch.mul(cos, -2.0, out=work).add_(2.0).clamp_min_(0.0)  # ||u_k - u_l||^2
        work.diagonal(offset=start).fill_(1.0)  # log 1 = 0 and 1^(-s) = 1, subtracted below
        sums[3] -= torch.log(work, out=dist).sum() / 2
        sums[4] += work.pow_(-riesz_s / 2).sum() - (stop - start)
    values = (sums / (k * (k - 1))).tolist()
    out = PairStatistics(cos_std=math.sqrt(values[0]), cos_etf=values[1])
    if variances is not None:
        out.cdnv, out.cdnv_per_class, out.gnc2_log, out.gnc2_riesz = values[2], per_class, values[3], values[4]
    return out
