"""Neural-collapse metrics for features already in memory, in the torchmetrics functional manner.

``neural_collapse(features, labels, weight, bias)`` streams over the rows in
chunks: one pass for the exact class means (used as the reference), one pass
adding the shifted statistics with the same update as the streaming
:class:`~hadainit.metrics.NeuralCollapse` (``statistics.accumulate``), then the
same formulas (``formulas.collapse_metrics``); NC4 in chunks too. Extra memory is
O(chunk x (d + K) + K x d + d^2), whatever the number of rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..drift import InitialBasis
from .formulas import collapse_metrics, per_class_metrics, unit_scale
from .statistics import ClassStatistics, Float32Accumulator, Workspace, accumulate, choose_scale

__all__ = ["PRECISIONS", "check_batch", "check_classifier", "class_statistics", "logit_spectrum",
           "nearest_mean_disagreement", "nearest_mean_disagreements", "neural_collapse", "per_class"]

PRECISIONS = ("float64", "float32")
CHUNK_ROWS = 1024


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


def _check_label_range(labels: Tensor, num_classes: int) -> None:
    if labels.numel():
        low, high = labels.aminmax()
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low.item()}, {high.item()}]")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_classifier(
    weight: Tensor | nn.Linear | None, bias: Tensor | None, num_classes: int, feature_dim: int
) -> tuple[Tensor | None, Tensor | None]:
    """``(weight, bias)`` as detached tensors, checked; an ``nn.Linear`` gives both (``bias`` overrides its own)."""
    if isinstance(weight, nn.Linear):
        bias = weight.bias if bias is None else bias
        weight = weight.weight
    if weight is None:
        if bias is not None:
            raise ValueError("a bias needs a classifier weight")
        return None, None
    if not isinstance(weight, Tensor):
        raise TypeError(f"the classifier must be a weight Tensor or an nn.Linear, got {type(weight).__name__}")
    if weight.shape != (num_classes, feature_dim):
        raise ValueError(f"weight must be a ({num_classes}, {feature_dim}) tensor, got {tuple(weight.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != (num_classes,):
            shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape ({num_classes},), got {shape}")
        if not torch.isfinite(bias).all():
            raise ValueError("the classifier bias contains NaN or Inf")
        bias = bias.detach()
    return weight.detach(), bias


def class_statistics(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    reference: Tensor | None = None,
    *,
    precision: str = "float64",
    chunk_rows: int = CHUNK_ROWS,
) -> ClassStatistics:
    """The shifted sufficient statistics (:mod:`.statistics`), streamed over chunks of rows.

    ``reference=None`` shifts by the class means (a first pass; float32 sums suffice for a shift point).
    Labels and finiteness are checked (a NaN or Inf anywhere makes the sums non-finite).
    """
    check_batch(features, labels, num_classes, values=False)
    check_precision(precision)
    n, d = features.shape
    device, f64 = features.device, torch.float64
    labels = labels.to(device=device, dtype=torch.int64)
    _check_label_range(labels, num_classes)
    chunks = [slice(i, min(i + chunk_rows, n)) for i in range(0, n, chunk_rows)]
    if reference is None:
        sum_dtype = f64 if features.dtype == f64 else torch.float32
        raw = torch.zeros(num_classes, d, dtype=sum_dtype, device=device)
        for rows in chunks:
            raw.index_add_(0, labels[rows], features[rows].detach().to(sum_dtype))
        _check_finite(raw)
        counts = torch.bincount(labels, minlength=num_classes).to(sum_dtype)
        reference = raw / counts.clamp_min(1).unsqueeze(1)
    reference = reference.detach().to(device=device, dtype=f64)
    stats = ClassStatistics(
        torch.zeros(num_classes, dtype=f64, device=device),
        torch.zeros(num_classes, d, dtype=f64, device=device),
        torch.zeros(num_classes, dtype=f64, device=device),
        torch.zeros(d, d, dtype=f64, device=device),
        reference.clone(),
        choose_scale(features[chunks[0]], labels[chunks[0]], reference) if chunks else None,
    )
    if precision == "float32":
        fast, stats = Float32Accumulator(), Float32Accumulator.exact_reference(stats)
        for rows in chunks:
            fast.start(stats)
            fast.add(stats, features[rows].detach(), labels[rows])
        fast.flush(stats)
    else:
        workspace = Workspace()
        for rows in chunks:
            accumulate(stats, features[rows].detach(), labels[rows], workspace)
    _check_finite(stats.sq_norms)
    return stats


def _check_finite(sums: Tensor) -> None:
    if not torch.isfinite(sums).all():
        raise ValueError("features contain NaN or Inf")


def check_seen(seen: Tensor | None, num_classes: int) -> Tensor | None:
    """``seen`` as a bool mask of length K with at least one class, or None."""
    if seen is None:
        return None
    if not isinstance(seen, Tensor) or seen.shape != (num_classes,):
        shape = tuple(seen.shape) if isinstance(seen, Tensor) else type(seen).__name__
        raise ValueError(f"seen must be a ({num_classes},) mask of the classes that have a mean, got {shape}")
    seen = seen.to(torch.bool)
    if not seen.any():
        raise ValueError("seen marks no class: there is no class mean to compare with")
    return seen


def nearest_mean_disagreement(features: Tensor, means: Tensor, logits: Tensor, seen: Tensor | None = None) -> Tensor:
    """NC4: the fraction of rows whose nearest class mean differs from ``argmax(logits)``, a 0-d float64
    tensor (the functional twin of :class:`~hadainit.metrics.NearestMeanDisagreement`; the count of such
    rows: :func:`nearest_mean_disagreements`).

    >>> means = torch.tensor([[0.0], [1.0]])
    >>> nearest_mean_disagreement(torch.tensor([[0.1], [0.9]]), means, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    tensor(0.5000, dtype=torch.float64)
    """
    if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, d) tensor, got {getattr(features, 'shape', type(features).__name__)}")
    return nearest_mean_disagreements(features, means, logits, seen).to(torch.float64) / features.shape[0]


def nearest_mean_disagreements(features: Tensor, means: Tensor, logits: Tensor, seen: Tensor | None = None) -> Tensor:
    """Number of rows where the nearest class mean differs from ``argmax(logits)`` (0-d int64 tensor).

    ``means`` is K x d (float64 recommended); ``seen`` (bool, K) restricts the
    nearest-mean search to classes that have a mean.
    """
    x = features.detach().to(torch.float64)
    mu = means.to(device=x.device, dtype=torch.float64)
    seen = check_seen(seen, mu.shape[0])
    idx = torch.arange(mu.shape[0], device=x.device)
    if seen is not None:
        idx = idx[seen.to(x.device)]
        mu = mu[idx]
    centre = mu.mean(0)  # distances about a central point: no large common offset
    xc, mc = x - centre, mu - centre
    scale = unit_scale(mc)  # a power of two: the squared distances neither over- nor underflow
    xc, mc = xc * scale, mc * scale
    dist = mc.pow(2).sum(1).unsqueeze(0) - 2 * xc @ mc.T
    nearest = idx[dist.argmin(1)]
    return (nearest != logits.detach().argmax(1).to(x.device)).sum()


def _nc4(features: Tensor, weight: Tensor, bias: Tensor | None, stats: ClassStatistics, chunk_rows: int) -> float:
    w = weight.to(device=features.device, dtype=torch.float64)
    b = None if bias is None else bias.to(w)
    means, seen = stats.means(), stats.counts > 0
    mismatches = torch.zeros((), dtype=torch.float64, device=features.device)
    for start in range(0, features.shape[0], chunk_rows):
        x = features[start : start + chunk_rows].detach().to(torch.float64)
        logits = x @ w.T if b is None else torch.addmm(b, x, w.T)
        mismatches += nearest_mean_disagreements(x, means, logits, seen)
    return mismatches.item() / features.shape[0]


def _statistics(name: str, features: Tensor, labels: Tensor, weight, bias, num_classes: int | None,
                precision: str):
    """The functional entry points' common start: validated input, the classifier as (weight, bias) tensors,
    the one-pass class statistics. Returns (stats, weight, bias)."""
    check_batch(features, labels, 1, values=False)
    if features.shape[0] == 0:
        raise ValueError(f"{name} got no samples (empty features): the metrics are undefined")
    num_classes = _num_classes(labels, weight, num_classes)
    weight, bias = check_classifier(weight, bias, num_classes, features.shape[1])
    return class_statistics(features, labels, num_classes, precision=precision), weight, bias


def _num_classes(labels: Tensor, weight: Tensor | nn.Linear | None, num_classes: int | None) -> int:
    if num_classes is not None:
        return num_classes
    if isinstance(weight, nn.Linear):
        return weight.out_features
    return weight.shape[0] if isinstance(weight, Tensor) else int(labels.max()) + 1


def neural_collapse(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | nn.Linear | None = None,
    bias: Tensor | None = None,
    *,
    num_classes: int | None = None,
    global_mean: str = "unweighted",
    basis: InitialBasis | None = None,
    rtol: float = 1e-12,
    riesz_s: float = 1.0,
    precision: str = "float64",
) -> dict[str, float]:
    """All SPEC section 6 metrics of in-memory features, as a dict of floats.

    Keys: ``nc1`` (with ``nc1_rank``, ``nc1_eig_ratio``), ``nc1_trace``, ``equinorm_means``,
    ``cos_std_means``, ``cos_etf_means``, ``etf_gap_means``, ``cdnv``, ``gnc2_log``, ``gnc2_riesz``,
    ``within_class_trace``, ``num_classes_seen``; with ``weight``: ``equinorm_classifier``,
    ``cos_std_classifier``, ``cos_etf_classifier``, ``etf_gap_classifier``, ``nc3``, ``nc3_duality``,
    ``unc3``, ``nc4`` (nearest mean of these same features vs ``argmax(W h + bias)``), ``kl_lyapunov``,
    and the drift keys (:data:`hadainit.drift.DRIFT_KEYS`) when ``basis`` is given. Definitions and
    sources: :mod:`hadainit.metrics.formulas`, :mod:`hadainit.metrics.pairwise`.

    Args:
        features: (N, d) floating features, any dtype (sums in float64; see ``precision``).
        labels: (N,) integer labels in [0, K).
        weight, bias: the classifier, (K, d) and (K,), or an ``nn.Linear`` as ``weight``.
        num_classes: K; default ``weight.shape[0]`` or ``labels.max() + 1``.
        global_mean: ``"unweighted"`` (mean of class means) or ``"weighted"``.
        basis: the classifier's initial basis (:func:`hadainit.drift.initial_basis`), for the drift keys.
        rtol: relative eigenvalue cutoff of the between-class rank, in (0, 1).
        riesz_s: exponent of the GNC2 Riesz energy.
        precision: ``"float64"`` (exact to round-off) or ``"float32"`` (faster; README section 3).

    >>> feats, labels = torch.randn(60, 8), torch.arange(60) % 3
    >>> sorted(neural_collapse(feats, labels))[:3]
    ['cdnv', 'cos_etf_means', 'cos_std_means']
    """
    stats, weight, bias = _statistics("neural_collapse", features, labels, weight, bias, num_classes, precision)
    out = collapse_metrics(stats, weight, global_mean=global_mean, basis=basis, rtol=rtol, riesz_s=riesz_s)
    if weight is not None:
        out["nc4"] = _nc4(features, weight, bias, stats, CHUNK_ROWS)
    return out


def per_class(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | nn.Linear | None = None,
    *,
    num_classes: int | None = None,
    global_mean: str = "unweighted",
    precision: str = "float64",
) -> dict[str, Tensor]:
    """Per-class CDNV and (with ``weight``) duality distances of in-memory features:
    see :func:`hadainit.metrics.formulas.per_class_metrics`."""
    stats, weight, _ = _statistics("per_class", features, labels, weight, None, num_classes, precision)
    return per_class_metrics(stats, weight, global_mean=global_mean)


def __getattr__(name: str):
    # logit_spectrum lives in .logits (which imports this module); re-exported here lazily, no import cycle
    if name == "logit_spectrum":
        from .logits import logit_spectrum

        return logit_spectrum
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
