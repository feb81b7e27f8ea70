"""Other libraries' conventions for neural-collapse quantities, each under its own definition.

hadainit's own keys (:data:`hadainit.metrics.COLLAPSE_KEYS`, docs/theory.md §6) follow
one set of conventions. The neural-collapse literature and its most used library
(rhubarbwu/neural-collapse) use others for the same ideas; comparing numbers across them
needs the definitions side by side. Everything here is float64, computed from class means
(and, for NC5, an out-of-distribution mean), exactly as written; nothing is rescaled.

* **NC5**, ID/OOD orthogonality (Ammar et al. 2024, "NECO", arXiv:2310.06823):
  ``mean_k |cos(mu_k - c, mu_ood - c)|`` over the K in-distribution class means and the
  global mean of out-of-distribution features. ``c = 0`` in the paper and in
  rhubarbwu's ``orthogonality_deviation(M, m_G_ood)``; ``center=`` takes e.g. the ID global
  mean. Neural collapse drives it to 0 (OOD features orthogonal to the class means).
* **GNC2 statistics** (Liu et al. 2023, hyperspherical uniformity): the mean *and the
  variance* of a pair kernel over the K(K-1)/2 unordered pairs of normalized centred
  class means ``u_k = (mu_k - mu_G) / ||mu_k - mu_G||``. hadainit logs only the means
  (``gnc2_log``, ``gnc2_riesz`` with exponent ``riesz_s``, default 1); rhubarbwu's
  ``kernel_stats`` also gives the variance, and its Riesz kernel uses the exponent
  ``S = d - 2`` of the feature dimension, with the sign of ``S``:
  ``sign(S) ||u_k - u_l||^(-S)``. :func:`gnc2_statistics` computes both conventions.
* **Uniform duality**: hadainit's ``unc3`` is the population *standard deviation* over
  classes of ``cos(w_k, mu_k - mu_G)``; rhubarbwu reports the *variance* of the same cosines,
  ``unc3 ** 2`` (:func:`uniform_duality_variance`); Wu & Papyan 2024 divide the spread by the
  mean cosine, undefined while that is <= 0 (as at initialization).

>>> m = torch.eye(3, dtype=torch.float64)  # 3 classes whose centred means form a simplex ETF
>>> round(nc5_ood_orthogonality(m, torch.ones(3, dtype=torch.float64), center=m.mean(0)), 12)
0.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks

__all__ = ["gnc2_statistics", "nc5_ood_orthogonality", "uniform_duality_variance"]


def _matrix(values, name: str) -> Tensor:
    m = _checks.real_tensor(values, name, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{name} must be a (K, d) matrix of class means, got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{name} must be finite")
    return m


def _vector(values, name: str, d: int) -> Tensor:
    v = _checks.real_tensor(values, name, dtype=torch.float64)
    if v.shape != (d,):
        raise ValueError(f"{name} must be a vector of the features' dimension {d}, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} must be finite")
    return v


def _unit_rows(x: Tensor, name: str) -> Tensor:
    """Rows scaled to unit norm; a zero row is an error (its direction is undefined)."""
    scale = x.abs().amax(dim=1, keepdim=True)  # scale first: no underflow in the squares
    if (scale == 0).any():
        rows = torch.nonzero(scale.squeeze(1) == 0).flatten().tolist()
        raise ValueError(f"{name}: rows {rows[:8]} are zero, their direction is undefined")
    y = x / scale
    return y / torch.linalg.vector_norm(y, dim=1, keepdim=True)


def nc5_ood_orthogonality(class_means, ood_mean, *, center=None) -> float:
    """NC5 of Ammar et al. 2024: ``mean_k |cos(mu_k - c, mu_ood - c)|`` (0 at collapse).

    Args:
        class_means: ``(K, d)`` in-distribution class means.
        ood_mean: ``(d,)`` the mean of out-of-distribution features.
        center: ``(d,)`` subtracted from both before the cosines; ``None``: 0 (the paper's and
            rhubarbwu's convention), e.g. the ID global mean to measure it on centred means.

    Raises:
        ValueError: a shape mismatch, a non-finite value, or a zero (centred) vector, whose
            cosine is undefined.

    >>> nc5_ood_orthogonality([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0])  # cos 45 degrees, twice
    0.7071067811865475
    """
    m = _matrix(class_means, "class_means")
    o = _vector(ood_mean, "ood_mean", m.shape[1])
    if center is not None:
        c = _vector(center, "center", m.shape[1])
        m, o = m - c, o - c
    u = _unit_rows(m, "class_means (centred)" if center is not None else "class_means")
    v = _unit_rows(o.unsqueeze(0), "ood_mean (centred)" if center is not None else "ood_mean")[0]
    return (u @ v).abs().mean().item()


def gnc2_statistics(class_means, global_mean=None, *, kernel: str = "log", riesz_s: float | None = None) -> dict:
    """Mean and population variance of a GNC2 pair kernel over the unordered pairs of class means.

    On ``u_k = (mu_k - mu_G) / ||mu_k - mu_G||``, for the ``K (K - 1) / 2`` pairs ``k < l``:

    * ``kernel="log"``: ``log(1 / ||u_k - u_l||)`` (hadainit's ``gnc2_log`` is its mean);
    * ``kernel="riesz"``: ``sign(s) ||u_k - u_l||^(-s)``; ``riesz_s=None`` takes
      rhubarbwu's ``s = d - 2`` (``s = 0``: the constant 1), a number gives hadainit's
      ``gnc2_riesz`` convention (its default ``riesz_s = 1``).

    Args:
        class_means: ``(K, d)`` class means, K >= 2.
        global_mean: ``(d,)`` the centre ``mu_G``; ``None``: the mean of the class means
            (balanced classes).
        kernel: ``"log"`` or ``"riesz"``.
        riesz_s: the Riesz exponent (see above).

    Returns:
        ``{"mean": ..., "variance": ..., "pairs": K (K - 1) / 2, "s": s}`` (``s`` only for
        riesz). Coinciding normalized means give ``inf`` (an infinite energy, as in theory),
        never NaN: then the variance is ``inf`` too.

    >>> gnc2_statistics(torch.eye(3, dtype=torch.float64))["variance"]  # a simplex ETF: equal distances
    0.0
    """
    m = _matrix(class_means, "class_means")
    k, d = m.shape
    if k < 2:
        raise ValueError(f"gnc2_statistics needs at least 2 classes, got {k}")
    if kernel not in ("log", "riesz"):
        raise ValueError(f"kernel must be 'log' or 'riesz', got {kernel!r}")
    g = m.mean(0) if global_mean is None else _vector(global_mean, "global_mean", d)
    u = _unit_rows(m - g, "class_means - global_mean")
    i, j = torch.triu_indices(k, k, offset=1)
    dist = torch.linalg.vector_norm(u[i] - u[j], dim=1)  # from differences: exact for close means
    out: dict = {"pairs": int(dist.numel())}
    if kernel == "log":
        values = -torch.log(dist)  # dist = 0: +inf
    else:
        s = float(d - 2) if riesz_s is None else _checks.real_number(riesz_s, "riesz_s")
        if s == 0:
            values = torch.ones_like(dist)
        else:
            values = math.copysign(1.0, s) * dist.pow(-s)  # dist = 0 and s > 0: +inf
        out["s"] = s
    if torch.isinf(values).any():
        out["mean"] = out["variance"] = math.inf
        return out
    mean = values.mean()
    out["mean"] = mean.item()
    out["variance"] = ((values - mean) ** 2).mean().item()
    return out


def uniform_duality_variance(unc3: float) -> float:
    """The variance convention of uniform duality from hadainit's ``unc3`` (a standard deviation).

    >>> uniform_duality_variance(0.5)
    0.25
    """
    value = _checks.real_number(unc3, "unc3")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"unc3 is a standard deviation: finite and >= 0, got {unc3!r}")
    return value * value
