"""Neural-collapse quantities from the class statistics (SPEC section 6): the compute side, one function each.

Notation: ``M`` (K x d) the centred class means of the seen classes,
``Sigma_W`` the within-class covariance, ``Sigma_B = M^T M / K``, ``W`` the
classifier rows of the seen classes.

* NC1 ``= Tr(Sigma_W Sigma_B^+) / K = sum_i v_i^T Sigma_W v_i / lambda_i`` over the
  eigenpairs of ``M^T M`` (same non-zero eigenvalues as the Gram ``M M^T``): the K x K
  Gram when K <= d, the d x d matrix when K > d; no d x d pseudo-inverse, no K x K
  matrix when K is large. ``nc1_trace = Tr(Sigma_W) / Tr(Sigma_B)`` (Tirer et al. 2023,
  "Perturbation analysis of neural collapse").
* ETF gaps ``|| G / ||G||_F - E ||_F`` for ``G = A B^T``: the K x K matrix when K - 1 <= d;
  otherwise from d x d products (``||G||_F^2 = <A^T A, B^T B>``, ``<G, E>`` from sums), where
  rank(G) <= d < K - 1 keeps the gap above ``sqrt(1 - d / (K - 1))``, so nothing cancels.
* Pair quantities (cosines, CDNV, GNC2 energies) in chunks: :mod:`.pairwise`.
* ``unc3``: the spread (population std) over classes of ``cos(w_k, mu_k - mu_G)``: uniform duality
  (Wu & Papyan 2024, "Linguistic collapse: neural collapse in (large) language models"), 0 when every
  class is equally aligned with its classifier row. They divide by the mean cosine (a coefficient of
  variation); that is undefined while the mean is <= 0, as at initialization, so the spread is reported.

Scale. Every scale-free value is computed from ``M`` and ``W`` divided by powers of two that bring
their largest entry to about 1 (``Sigma_W`` and the variances by the square): exact at any finite scale
of the features or the classifier. ``within_class_trace`` is not scale-free and is reported as it is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks
from ..drift import InitialBasis, drift
from ..ufm.lyapunov import kl_to_uniform
from .._threads import lapack
from .pairwise import pair_statistics
from .statistics import ClassStatistics

__all__ = [
    "COLLAPSE_KEYS",
    "ClassStatistics",
    "GLOBAL_MEAN_KINDS",
    "class_geometry",
    "class_mean_logit_kl",
    "classifier_metrics",
    "coefficient_of_variation",
    "collapse_metrics",
    "etf_gap",
    "mean_geometry_metrics",
    "nc1_metrics",
    "per_class_metrics",
]

GLOBAL_MEAN_KINDS = ("unweighted", "weighted")


def check_rtol(rtol: float) -> float:
    """``rtol`` as a float in (0, 1): the relative eigenvalue cutoff of the between-class rank."""
    try:
        value = float(rtol)
    except (TypeError, ValueError):
        raise TypeError(f"rtol must be a number, got {type(rtol).__name__}") from None
    if not 0 < value < 1:
        raise ValueError(f"rtol must lie in (0, 1) (a relative eigenvalue cutoff), got {rtol!r}")
    return value


def coefficient_of_variation(values: Tensor) -> float:
    """``std / mean`` over the last dim (population std); infinite when the mean is <= 0."""
    mean = values.mean()
    if not mean > 0:
        return math.inf
    return (values.std(correction=0) / mean).item()


def unit_scale(x: Tensor) -> Tensor:
    """The power of two (float64, 0-dim) that brings ``max |x|`` into [1/2, 1); 1 for a zero ``x``."""
    top = x.abs().max()
    if not top > 0:
        return torch.ones((), dtype=torch.float64, device=x.device)
    return torch.exp2(-torch.frexp(top).exponent.to(torch.float64))


@dataclass
class Geometry:
    """Seen classes only; ``centred``, ``sigma_w`` and ``variances`` are scaled (see the module docstring)."""

    classes: Tensor  # indices of the seen classes
    centred: Tensor  # M * scale
    sigma_w: Tensor  # Sigma_W * scale^2
    variances: Tensor  # E||h - mu_k||^2 * scale^2, per class
    within_class_trace: float  # Tr(Sigma_W), unscaled


def class_geometry(stats: ClassStatistics, global_mean: str = "unweighted") -> Geometry:
    """Class means, within-class covariance and variances of the seen classes (warns about unseen ones)."""
    if global_mean not in GLOBAL_MEAN_KINDS:
        raise ValueError(f"global_mean must be one of {GLOBAL_MEAN_KINDS}, got {global_mean!r}")
    seen = stats.counts > 0
    classes = seen.nonzero().flatten()
    if len(classes) < seen.shape[0]:
        missing = (~seen).nonzero().flatten().tolist()
        warnings.warn(f"classes never seen: {missing}; excluded from the neural-collapse metrics", stacklevel=4)
    if len(classes) < 2:
        raise ValueError(f"neural-collapse metrics need samples from at least 2 classes, got {len(classes)}")
    n_k = stats.counts[classes]
    total = n_k.sum()
    delta = stats.sums[classes] / n_k.unsqueeze(1)  # in the units of the sums: s (h - c)
    means = stats.reference[classes] + delta / stats.scale
    mu_g = means.mean(0) if global_mean == "unweighted" else (n_k.unsqueeze(1) * means).sum(0) / total
    centred = means - mu_g
    if not centred.abs().max() > 0:
        raise ValueError(
            "all class means coincide (the between-class covariance is zero): the neural-collapse metrics are undefined"
        )
    # second moment about the references, corrected by the small deltas (unseen classes add nothing to it);
    # both in units of s^2, then brought to the units of the scaled means by the power of two unit / s
    sigma_w = (stats.symmetric_second() - (delta.T * n_k) @ delta) / total
    variances = (stats.sq_norms[classes] - n_k * delta.pow(2).sum(1)) / n_k
    scale = unit_scale(centred)
    ratio = scale / stats.scale
    trace = torch.trace(sigma_w) / stats.scale / stats.scale
    return Geometry(classes, centred * scale, sigma_w * ratio * ratio, variances * ratio * ratio, trace.item())


def nc1_metrics(geo: Geometry, rtol: float = 1e-12) -> dict[str, float]:
    """``nc1`` (with ``nc1_rank``, ``nc1_eig_ratio``) and ``nc1_trace``."""
    m = geo.centred
    k, d = m.shape
    with lapack(min(k, d)):  # one thread for small matrices: multi-threaded LAPACK collapses on shared cores
        if k <= d:
            eigval, eigvec = torch.linalg.eigh(m @ m.T)
        else:
            eigval, eigvec = torch.linalg.eigh(m.T @ m)
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)
    top = eigval[0]
    rank = int((eigval[: min(k - 1, d)] > rtol * top).sum())
    lam = eigval[:rank]
    if k <= d:  # rows u_i^T M = sqrt(lambda_i) v_i^T
        proj = eigvec[:, :rank].T @ m
        nc1 = ((proj @ geo.sigma_w) * proj).sum(1) / lam.pow(2)
    else:
        v = eigvec[:, :rank]
        nc1 = ((geo.sigma_w @ v) * v).sum(0) / lam
    return {
        "nc1": nc1.sum().item(),
        "nc1_rank": float(rank),
        "nc1_eig_ratio": (lam[-1] / top).item(),
        "nc1_trace": (torch.trace(geo.sigma_w) / (m.pow(2).sum() / k)).item(),
    }


def etf_gap(a: Tensor, b: Tensor) -> float:
    """``|| G / ||G||_F - E ||_F`` with ``G = A B^T`` (K x K) and ``E = (I - 11^T/K) / sqrt(K - 1)``."""
    k, d = a.shape
    if k - 1 <= d:
        g = a @ b.T
        norm = torch.linalg.matrix_norm(g)
        if not norm > 0:
            raise ValueError("A B^T is zero (the rows are orthogonal): its ETF gap is undefined")
        etf = (torch.eye(k, dtype=g.dtype, device=g.device) - 1.0 / k) / math.sqrt(k - 1)
        return torch.linalg.matrix_norm(g / norm - etf).item()
    norm = ((a.T @ a) * (b.T @ b)).sum().sqrt()
    if not norm > 0:
        raise ValueError("A B^T is zero (the rows are orthogonal): its ETF gap is undefined")
    inner = ((a * b).sum() - a.sum(0) @ b.sum(0) / k) / math.sqrt(k - 1)  # <G, E>, and ||E||_F = 1
    return (2 - 2 * inner / norm).clamp_min(0).sqrt().item()


def mean_geometry_metrics(geo: Geometry, riesz_s: float = 1.0) -> dict[str, float]:
    """NC2 of the class means, CDNV, GNC2 and the within-class trace."""
    norms = torch.linalg.vector_norm(geo.centred, dim=1)
    if not (norms > 0).all():
        raise ValueError(f"the means of classes {geo.classes[norms == 0].tolist()} equal the global mean: "
                         "their angles are undefined")
    pairs = pair_statistics(geo.centred, geo.variances, riesz_s=riesz_s)
    return {
        "equinorm_means": coefficient_of_variation(norms),
        "cos_std_means": pairs.cos_std,
        "cos_etf_means": pairs.cos_etf,
        "etf_gap_means": etf_gap(geo.centred, geo.centred),
        "within_class_trace": geo.within_class_trace,
        "cdnv": pairs.cdnv,
        "gnc2_log": pairs.gnc2_log,
        "gnc2_riesz": pairs.gnc2_riesz,
        "min_distance_means": pairs.min_unit_distance,
        "etf_gap_floor": etf_gap_floor(*geo.centred.shape),
    }


def etf_gap_floor(num_classes: int, feature_dim: int) -> float:
    """The smallest ETF gap ``|| G / ||G||_F - E ||_F`` any K x K matrix of rank <= d can have:
    ``sqrt(2 - 2 sqrt(d / (K - 1)))`` when K - 1 > d (no simplex ETF fits in R^d, docs/theory.md §8), else 0.
    (``<G, E> / ||G||_F`` is at most the norm of E's best rank-d part, ``sqrt(d / (K - 1))``; the Gram of any
    d orthonormal non-constant basis vectors attains it.)"""
    k, d = num_classes, feature_dim
    return math.sqrt(2 - 2 * math.sqrt(d / (k - 1))) if k - 1 > d else 0.0


def etf_impossible_message(num_classes: int, feature_dim: int) -> str:
    """What K > d + 1 means for the ETF keys (the once-said warning of the metrics)."""
    return (f"K = {num_classes} classes in d = {feature_dim} dimensions (K > d + 1): no simplex ETF exists, so "
            f"etf_gap_means, etf_gap_classifier and nc3_duality stay >= etf_gap_floor = "
            f"{etf_gap_floor(num_classes, feature_dim):.4g}, cos_etf_* stay > 0 and kl_lyapunov is inf: not a "
            "failure to collapse. The targets defined here are min_distance_means, gnc2_log, gnc2_riesz and the "
            "normalized class-mean margin of LogitSpectrum (docs/theory.md §8)")


def classifier_rows(weight: Tensor, geo: Geometry, num_classes: int) -> Tensor:
    """The classifier rows of the seen classes (float64, scaled to a largest entry of about 1), checked."""
    w_all = weight.detach().to(device=geo.centred.device, dtype=torch.float64)
    if w_all.shape != (num_classes, geo.centred.shape[1]):
        raise ValueError(f"weight must be (num_classes, feature_dim) = {(num_classes, geo.centred.shape[1])}, "
                         f"got {tuple(weight.shape)}")
    if not torch.isfinite(w_all).all():
        raise ValueError("the classifier weight contains NaN or Inf")
    w = w_all[geo.classes]
    zero_rows = geo.classes[torch.linalg.vector_norm(w, dim=1) == 0].tolist()
    if zero_rows:
        raise ValueError(f"classifier rows {zero_rows} are zero: the classifier's angles are undefined")
    return w * unit_scale(w)


def classifier_metrics(w: Tensor, geo: Geometry) -> dict[str, float]:
    """NC2 of the classifier rows, NC3 (self-duality), UNC3 and the KL Lyapunov value."""
    m = geo.centred
    pairs = pair_statistics(w)
    w_norms = torch.linalg.vector_norm(w, dim=1)
    cosines = (w * m).sum(1) / (w_norms * torch.linalg.vector_norm(m, dim=1))
    return {
        "equinorm_classifier": coefficient_of_variation(w_norms),
        "cos_std_classifier": pairs.cos_std,
        "cos_etf_classifier": pairs.cos_etf,
        "etf_gap_classifier": etf_gap(w, w),
        "nc3": torch.linalg.matrix_norm(w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)).item(),
        "nc3_duality": etf_gap(w, m),
        "unc3": cosines.std(correction=0).item(),
        "kl_lyapunov": class_mean_logit_kl(w, m),
    }


def class_mean_logit_kl(weight: Tensor, means: Tensor) -> float:
    """KL(u || sigma / sum sigma) of the top K-1 singular values of the double-centred ``W M^T``.

    ``weight`` and ``means`` are K x d (rows of the same classes). Double centring removes the
    bias and the global mean, so the means need not be centred. Infinite when rank-deficient
    (always when K - 1 > d). Scale-free: both are rescaled by powers of two first.

    This is the ``kl_lyapunov`` key of :class:`~hadainit.metrics.NeuralCollapse`: the KL of singular values,
    not :func:`hadainit.ufm.kl_lyapunov` of the modes ``diag(Q^T Z_c Q)`` (that is ``kl_lyapunov_modes`` of
    :class:`~hadainit.metrics.LogitSpectrum`); they coincide in the spectral UFM only.
    """
    k, d = means.shape
    if k - 1 > d:
        return math.inf  # rank(W M^T) <= d < K - 1
    weight = weight.detach().to(torch.float64)
    means = means.detach().to(weight)
    weight, means = weight * unit_scale(weight), means * unit_scale(means)
    centre = torch.eye(k, dtype=weight.dtype, device=weight.device) - 1.0 / k
    with lapack(k):
        sigma = torch.linalg.svdvals(centre @ weight @ means.T @ centre)[: k - 1]
    if not sigma[-1] > sigma[0] * max(weight.shape) * torch.finfo(sigma.dtype).eps:
        return math.inf  # rank-deficient: V is infinite, not a round-off number
    return kl_to_uniform(sigma).item()


#: The keys of :func:`collapse_metrics` with a classifier (the drift keys come on top with a basis).
COLLAPSE_KEYS = (
    "num_classes_seen", "nc1", "nc1_rank", "nc1_eig_ratio", "nc1_trace", "within_class_trace", "cdnv",
    "equinorm_means", "cos_std_means", "cos_etf_means", "etf_gap_means", "gnc2_log", "gnc2_riesz",
    "min_distance_means", "etf_gap_floor",
    "equinorm_classifier", "cos_std_classifier", "cos_etf_classifier", "etf_gap_classifier",
    "nc3", "nc3_duality", "unc3", "kl_lyapunov",
)


def collapse_metrics(
    stats: ClassStatistics,
    weight: Tensor | None = None,
    *,
    global_mean: str = "unweighted",
    basis: InitialBasis | None = None,
    rtol: float = 1e-12,
    riesz_s: float = 1.0,
) -> dict[str, float]:
    """Every SPEC section 6 quantity that needs only the statistics (and the classifier).

    Classes with no sample are excluded (with a warning naming them). The classifier keys appear
    only when ``weight`` (K x d) is given; the drift keys (:data:`hadainit.drift.DRIFT_KEYS`) only
    with ``basis``. NC4 needs per-sample features: see
    :func:`hadainit.metrics.functional.nearest_mean_disagreement`.

    Args:
        stats: the sufficient statistics.
        weight: the classifier W (K x d); its bias only enters NC4, which needs samples.
        global_mean: ``"unweighted"`` mean of class means, or sample-``"weighted"``.
        basis: the classifier's initial basis (:func:`hadainit.drift.initial_basis`), for the drift keys.
        rtol: eigenvalues of ``M^T M`` below ``rtol * max`` do not count towards the rank; in (0, 1).
        riesz_s: the exponent of the GNC2 Riesz energy (> 0).
    """
    rtol = check_rtol(rtol)
    riesz_s = _checks.positive_float(riesz_s, "riesz_s")
    geo = class_geometry(stats, global_mean)
    out = {"num_classes_seen": float(len(geo.classes)), **nc1_metrics(geo, rtol), **mean_geometry_metrics(geo, riesz_s)}
    if weight is not None:
        out.update(classifier_metrics(classifier_rows(weight, geo, stats.counts.shape[0]), geo))
        if basis is not None:
            out.update(drift(weight.detach().to(device=geo.centred.device, dtype=torch.float64), basis))
    return out


def per_class_metrics(
    stats: ClassStatistics, weight: Tensor | None = None, *, global_mean: str = "unweighted"
) -> dict[str, Tensor]:
    """Per-class values of the seen classes (tensors indexed like ``classes``).

    * ``cdnv``: class k's CDNV averaged over the other classes (their mean is ``cdnv``);
    * ``duality`` (with ``weight``): ``|| w_k / ||W||_F - (mu_k - mu_G) / ||M||_F ||``, class k's part
      of NC3 (``sum_k duality_k^2 = nc3^2``).
    """
    geo = class_geometry(stats, global_mean)
    out = {"classes": geo.classes, "cdnv": pair_statistics(geo.centred, geo.variances).cdnv_per_class}
    if weight is not None:
        w = classifier_rows(weight, geo, stats.counts.shape[0])
        m = geo.centred
        gap = w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)
        out["duality"] = torch.linalg.vector_norm(gap, dim=1)
    return out
