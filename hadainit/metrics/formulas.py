"""Neural-collapse quantities from per-class sufficient statistics (SPEC section 6).

One implementation shared by the streaming metrics and the functional form.
The statistics are sums, shifted by a per-class reference ``c_k`` (ideally
close to the class mean) so that nothing cancels when the features carry a
large common offset:

    counts[k]   = n_k
    sums[k]     = sum_{i in k} (h_i - c_k)
    sq_norms[k] = sum_{i in k} ||h_i - c_k||^2
    second      = sum_i (h_i - c_{y_i}) (h_i - c_{y_i})^T            (d x d)

Then ``mu_k = c_k + sums[k] / n_k`` and
``N Sigma_W = second - sum_k n_k delta_k delta_k^T`` with the small
``delta_k = sums[k] / n_k``. NC1 goes through the K x K Gram matrix of the
centred means: with ``G = M M^T``, ``Sigma_B^+ = K M^T (G^+)^2 M``, so
``NC1 = Tr(Sigma_W Sigma_B^+) / K = Tr((G^+)^2 M Sigma_W M^T)`` — no d x d
pseudo-inverse, and K - 1 >= d is fine.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..drift import InitialBasis, drift
from ..ufm.lyapunov import kl_to_uniform

__all__ = ["ClassStatistics", "GLOBAL_MEAN_KINDS", "class_mean_logit_kl", "collapse_metrics"]

GLOBAL_MEAN_KINDS = ("unweighted", "weighted")


@dataclass
class ClassStatistics:
    """Shifted per-class sums (see the module docstring); all float64, one device."""

    counts: Tensor
    sums: Tensor
    sq_norms: Tensor
    second: Tensor
    reference: Tensor

    def means(self) -> Tensor:
        """Class means (K x d); rows of unseen classes are the reference."""
        return self.reference + self.sums / self.counts.clamp_min(1).unsqueeze(1)


def _pair_cosine_stats(rows: Tensor) -> tuple[float, float]:
    """Over pairs k != l: std of the cosines and mean |cos + 1/(K-1)|."""
    k = rows.shape[0]
    unit = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    cos = unit @ unit.T
    pairs = cos[~torch.eye(k, dtype=torch.bool, device=rows.device)]
    return pairs.std(correction=0).item(), (pairs + 1.0 / (k - 1)).abs().mean().item()


def _cv(x: Tensor) -> float:
    return (x.std(correction=0) / x.mean()).item()


def _etf(k: int, like: Tensor) -> Tensor:
    return (torch.eye(k, dtype=like.dtype, device=like.device) - 1.0 / k) / math.sqrt(k - 1)


def _normalized_gap(g: Tensor, target: Tensor) -> float:
    return torch.linalg.matrix_norm(g / torch.linalg.matrix_norm(g) - target).item()


def class_mean_logit_kl(weight: Tensor, means: Tensor) -> float:
    """KL(u || sigma / sum sigma) of the top K-1 singular values of the double-centred ``W M^T``.

    ``weight`` and ``means`` are K x d (rows of the same classes). Double centring removes the
    bias and the global mean, so the means need not be centred. Infinite when rank-deficient.
    """
    k = means.shape[0]
    weight = weight.to(torch.float64)
    centre = torch.eye(k, dtype=weight.dtype, device=weight.device) - 1.0 / k
    sigma = torch.linalg.svdvals(centre @ weight @ means.to(weight).T @ centre)[: k - 1]
    if not sigma[-1] > sigma[0] * max(weight.shape) * torch.finfo(sigma.dtype).eps:
        return math.inf  # rank-deficient (e.g. K - 1 > d): V is infinite, not a round-off number
    return kl_to_uniform(sigma).item()


def collapse_metrics(
    stats: ClassStatistics,
    weight: Tensor | None = None,
    *,
    global_mean: str = "unweighted",
    basis: InitialBasis | None = None,
    rtol: float = 1e-12,
) -> dict[str, float]:
    """Every SPEC section 6 quantity that needs only the statistics (and the classifier).

    Classes with no sample are excluded (with a warning naming them). The
    classifier-dependent keys appear only when ``weight`` (K x d) is given;
    the drift keys (:data:`hadainit.drift.DRIFT_KEYS`) only with ``basis``. NC4 needs per-sample features:
    see :func:`hadainit.metrics.functional.nearest_mean_disagreement`.

    Args:
        stats: the sufficient statistics.
        weight: the classifier W (K x d); its bias only enters NC4, which needs samples.
        global_mean: ``"unweighted"`` mean of class means, or sample-``"weighted"``.
        basis: the classifier's initial basis (:func:`hadainit.drift.initial_basis`), for the drift keys.
        rtol: eigenvalues of G below ``rtol * max`` do not count towards the rank.
    """
    if global_mean not in GLOBAL_MEAN_KINDS:
        raise ValueError(f"global_mean must be one of {GLOBAL_MEAN_KINDS}, got {global_mean!r}")
    counts = stats.counts
    seen = counts > 0
    if not seen.all():
        missing = (~seen).nonzero().flatten().tolist()
        warnings.warn(f"classes never seen: {missing}; excluded from the neural-collapse metrics", stacklevel=3)
    k = int(seen.sum())
    if k < 2:
        raise ValueError(f"neural-collapse metrics need samples from at least 2 classes, got {k}")
    n_k = counts[seen]
    total = n_k.sum()
    delta = stats.sums[seen] / n_k.unsqueeze(1)
    means = stats.reference[seen] + delta
    if global_mean == "unweighted":
        mu_g = means.mean(0)
    else:
        mu_g = (n_k.unsqueeze(1) * means).sum(0) / total
    m = means - mu_g
    # within-class covariance: second moment about the references, corrected by the small deltas
    # (unseen classes contribute nothing to `second`)
    sigma_w = (stats.second - (delta.T * n_k) @ delta) / total
    var_k = (stats.sq_norms[seen] - n_k * delta.pow(2).sum(1)) / n_k  # E||h - mu_k||^2

    gram = m @ m.T
    eigval, eigvec = torch.linalg.eigh(gram)
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)
    cap = min(k - 1, m.shape[1])
    top = eigval[0].item()
    rank = int((eigval[:cap] > rtol * top).sum()) if top > 0 else 0
    norms = torch.linalg.vector_norm(m, dim=1)
    if rank == 0:
        raise ValueError(
            "all class means coincide (the between-class covariance is zero): the neural-collapse metrics are undefined"
        )
    if not (norms > 0).all():
        classes = seen.nonzero().flatten()[norms == 0].tolist()
        raise ValueError(f"the means of classes {classes} equal the global mean: their angles are undefined")
    u = eigvec[:, :rank]
    proj = u.T @ m  # rank x d
    a = proj @ sigma_w @ proj.T
    out: dict[str, float] = {
        "num_classes_seen": float(k),
        "nc1": (torch.diagonal(a) / eigval[:rank].pow(2)).sum().item(),
        "nc1_rank": float(rank),
        "nc1_eig_ratio": (eigval[rank - 1] / top).item(),
    }
    cos_std, cos_etf = _pair_cosine_stats(m)
    etf = _etf(k, m)
    sq = torch.diagonal(gram)
    pair_dist = sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * gram  # ||mu_k - mu_l||^2, centred: no big offsets
    off = ~torch.eye(k, dtype=torch.bool, device=m.device)
    # coinciding means (distance 0, up to round-off) make a pair's normalized variance infinite
    pair_dist = torch.where(pair_dist > 1e-13 * sq.max(), pair_dist, torch.zeros_like(pair_dist))
    ratio = (var_k.unsqueeze(0) + var_k.unsqueeze(1)) / (2 * pair_dist)
    cdnv = torch.where(pair_dist > 0, ratio, torch.full_like(ratio, math.inf))[off].mean().item()
    out.update(
        equinorm_means=_cv(norms),
        cos_std_means=cos_std,
        cos_etf_means=cos_etf,
        etf_gap_means=_normalized_gap(gram, etf),
        within_class_trace=torch.trace(sigma_w).item(),
        cdnv=cdnv,
    )
    if weight is not None:
        w_all = weight.detach().to(torch.float64)
        if w_all.dim() != 2 or w_all.shape != (counts.shape[0], stats.sums.shape[1]):
            raise ValueError(
                f"weight must be (num_classes, feature_dim) = {(counts.shape[0], stats.sums.shape[1])}, "
                f"got {tuple(weight.shape)}"
            )
        w_all = w_all.to(m.device)
        if not torch.isfinite(w_all).all():
            raise ValueError("the classifier weight contains NaN or Inf")
        w = w_all[seen]
        zero_rows = seen.nonzero().flatten()[torch.linalg.vector_norm(w, dim=1) == 0].tolist()
        if zero_rows:
            raise ValueError(f"classifier rows {zero_rows} are zero: the classifier's angles are undefined")
        w_cos_std, w_cos_etf = _pair_cosine_stats(w)
        wm = w @ m.T
        out.update(
            equinorm_classifier=_cv(torch.linalg.vector_norm(w, dim=1)),
            cos_std_classifier=w_cos_std,
            cos_etf_classifier=w_cos_etf,
            etf_gap_classifier=_normalized_gap(w @ w.T, etf),
            nc3=torch.linalg.matrix_norm(w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)).item(),
            nc3_duality=_normalized_gap(wm, etf),
            kl_lyapunov=class_mean_logit_kl(w, m),
        )
        if basis is not None:
            out.update(drift(w_all, basis))
    return out
