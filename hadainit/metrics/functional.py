"""Neural-collapse metrics for features already in memory, in the torchmetrics functional manner.

``neural_collapse(features, labels, weight, bias)`` computes the exact class
means first (two passes over memory) and then the same formulas as the
streaming :class:`~hadainit.metrics.NeuralCollapse` (``formulas.collapse_metrics``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..drift import InitialBasis
from .formulas import ClassStatistics, collapse_metrics

__all__ = ["check_batch", "class_statistics", "nearest_mean_disagreement", "neural_collapse"]


def check_batch(
    features: Tensor, labels: Tensor, num_classes: int, feature_dim: int | None = None, *, values: bool = True
) -> None:
    """Raise ``TypeError``/``ValueError`` naming what is wrong with a (features, labels) batch.

    Shapes and dtypes are always checked (host-side, free); ``values=True`` also checks the label
    range and finiteness, with a single device synchronization.
    """
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"features and labels must be tensors, got {type(features).__name__}, {type(labels).__name__}")
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (batch, feature_dim), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got dtype {features.dtype}")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise ValueError(f"features have dimension {features.shape[1]}, expected feature_dim={feature_dim}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one label per feature row ({features.shape[0]}), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if not values or labels.numel() == 0:
        return
    low, high = labels.aminmax()
    flags = torch.stack((low < 0, high >= num_classes, ~torch.isfinite(features).all().to(low.device))).tolist()
    if flags[0] or flags[1]:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low.item()}, {high.item()}]")
    if flags[2]:
        raise ValueError("features contain NaN or Inf")


def class_statistics(
    features: Tensor, labels: Tensor, num_classes: int, reference: Tensor | None = None
) -> ClassStatistics:
    """The shifted sufficient statistics of ``formulas``; ``reference=None`` shifts by the exact class means."""
    check_batch(features, labels, num_classes)
    x = features.detach().to(torch.float64)
    labels = labels.to(device=x.device, dtype=torch.int64)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    if reference is None:
        raw = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, labels, x)
        reference = raw / counts.clamp_min(1).unsqueeze(1)
    reference = reference.to(device=x.device, dtype=torch.float64)
    shifted = x - reference[labels]
    sums = torch.zeros_like(reference).index_add_(0, labels, shifted)
    sq_norms = torch.zeros_like(counts).index_add_(0, labels, shifted.pow(2).sum(1))
    return ClassStatistics(counts, sums, sq_norms, shifted.T @ shifted, reference)


def nearest_mean_disagreement(features: Tensor, means: Tensor, logits: Tensor, seen: Tensor | None = None) -> Tensor:
    """Number of rows where the nearest class mean differs from ``argmax(logits)``.

    ``means`` is K x d (float64 recommended); ``seen`` (bool, K) restricts the
    nearest-mean search to classes that have a mean.
    """
    x = features.detach().to(torch.float64)
    mu = means.to(device=x.device, dtype=torch.float64)
    idx = torch.arange(mu.shape[0], device=x.device)
    if seen is not None:
        idx = idx[seen.to(x.device)]
        mu = mu[idx]
    centre = mu.mean(0)  # distances about a central point: no large common offset
    xc, mc = x - centre, mu - centre
    dist = mc.pow(2).sum(1).unsqueeze(0) - 2 * xc @ mc.T
    nearest = idx[dist.argmin(1)]
    return (nearest != logits.detach().argmax(1).to(x.device)).sum()


def neural_collapse(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    num_classes: int | None = None,
    global_mean: str = "unweighted",
    basis: InitialBasis | None = None,
) -> dict[str, float]:
    """All SPEC section 6 metrics of in-memory features, as a dict of floats.

    Keys: ``nc1`` (with ``nc1_rank``, ``nc1_eig_ratio``), ``equinorm_means``,
    ``cos_std_means``, ``cos_etf_means``, ``etf_gap_means``, ``cdnv``,
    ``within_class_trace``; with ``weight``: ``equinorm_classifier``,
    ``cos_std_classifier``, ``cos_etf_classifier``, ``etf_gap_classifier``,
    ``nc3``, ``nc3_duality``, ``nc4`` (nearest mean of these same features vs
    ``argmax(W h + bias)``), ``kl_lyapunov``, and the drift keys
    (:data:`hadainit.drift.DRIFT_KEYS`) when ``basis`` is given.

    Args:
        features: (N, d) floating features, any dtype (computed in float64).
        labels: (N,) integer labels in [0, K).
        weight, bias: the classifier, (K, d) and (K,).
        num_classes: K; default ``weight.shape[0]`` or ``labels.max() + 1``.
        global_mean: ``"unweighted"`` (mean of class means) or ``"weighted"``.
        basis: the classifier's initial basis (:func:`hadainit.drift.initial_basis`), for the drift keys.

    >>> feats, labels = torch.randn(60, 8), torch.arange(60) % 3
    >>> sorted(neural_collapse(feats, labels))[:3]
    ['cdnv', 'cos_etf_means', 'cos_std_means']
    """
    if num_classes is None:
        num_classes = weight.shape[0] if weight is not None else int(labels.max()) + 1
    stats = class_statistics(features, labels, num_classes)
    out = collapse_metrics(stats, weight, global_mean=global_mean, basis=basis)
    if weight is not None:
        w = weight.detach().to(device=features.device, dtype=torch.float64)
        logits = features.detach().to(torch.float64) @ w.T
        if bias is not None:
            if bias.shape != (num_classes,):
                raise ValueError(f"bias must have shape ({num_classes},), got {tuple(bias.shape)}")
            logits = logits + bias.detach().to(logits)
        mismatches = nearest_mean_disagreement(features, stats.means(), logits, stats.counts > 0)
        out["nc4"] = mismatches.item() / features.shape[0]
    return out
