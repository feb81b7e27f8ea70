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

CHUNK_ELEMENTS = 1 << 21  # chunk rows x K entries per temporary (16 MiB in float64)


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
    mean_cos = ((total @ total - k) / (k * (k - 1))).item()  # sum over pairs, from ||sum u||^2 = K + sum_{k!=l} cos
    sq = norms.pow(2)
    chunk = max(1, chunk_elements // k)
    sums = torch.zeros(5, dtype=rows.dtype, device=rows.device)  # (cos - mean)^2, |cos + 1/(K-1)|, cdnv, log, riesz
    per_class = torch.zeros(k, dtype=rows.dtype, device=rows.device) if variances is not None else None
    coincide = 1e-13 * sq.max()
    for start in range(0, k, chunk):
        stop = min(start + chunk, k)
        cos = unit[start:stop] @ unit.T
        own = torch.arange(start, stop, device=rows.device)
        local = own - start
        cos[local, own] = mean_cos  # the diagonal: contributes 0 to the spread ...
        sums[0] += (cos - mean_cos).pow(2).sum()
        cos[local, own] = -1.0 / (k - 1)  # ... and 0 here
        sums[1] += (cos + 1.0 / (k - 1)).abs().sum()
        if variances is None:
            continue
        cos[local, own] = 1.0
        # ||mu_k - mu_l||^2 of the centred means, from their cosine: no large offsets cancel
        dist = (sq[start:stop].unsqueeze(1) + sq) - 2 * cos * (norms[start:stop].unsqueeze(1) * norms)
        dist = torch.where(dist > coincide, dist, torch.zeros_like(dist))
        ratio = (variances[start:stop].unsqueeze(1) + variances) / (2 * dist)
        ratio = torch.where(dist > 0, ratio, torch.full_like(ratio, math.inf))  # coinciding means: 0/0 is infinite too
        ratio[local, own] = 0.0
        rows_cdnv = ratio.sum(1)
        per_class[start:stop] = rows_cdnv / (k - 1)
        sums[2] += rows_cdnv.sum()
        unit_dist = (2 - 2 * cos).clamp_min(0)  # ||u_k - u_l||^2
        unit_dist[local, own] = 1.0  # log 1 = 0 and 1^(-s) = 1 (subtracted below)
        sums[3] += -0.5 * unit_dist.log().sum()
        sums[4] += unit_dist.pow(-riesz_s / 2).sum() - (stop - start)
    pairs = k * (k - 1)
    values = (sums / pairs).tolist()
    out = PairStatistics(cos_std=math.sqrt(values[0]), cos_etf=values[1])
    if variances is not None:
        out.cdnv, out.cdnv_per_class, out.gnc2_log, out.gnc2_riesz = values[2], per_class, values[3], values[4]
    return out
