"""Streaming, DDP-exact neural-collapse metrics (``torchmetrics.Metric``).

Every state is a float64 sum (``dist_reduce_fx="sum"``), so a DDP sync is an
exact sum of the per-rank states. One pass over the data: ``update`` adds
shifted sums (a few matrix products), ``compute`` does the linear algebra.

Numerical stability. The sums are taken about a per-class *reference* point
(``formulas`` module), fixed before the first sum is added: given explicitly
(:meth:`NeuralCollapse.set_reference`), or else the class means of the first
batch. Under DDP that first-batch reference is summed over the ranks (one
``all_reduce`` in the first ``update`` only) so that every rank shifts by the
same point and the synced sums stay exact. The reference is kept across
``reset()`` (``forward`` resets internally, and mixing references would be
wrong); ``set_reference(None)`` on an empty metric picks a fresh one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric

from .. import _checks
from ..drift import InitialBasis
from .formulas import GLOBAL_MEAN_KINDS, ClassStatistics, collapse_metrics
from .functional import check_batch, nearest_mean_disagreement

__all__ = ["ClassMeans", "NeuralCollapse", "NearestMeanMismatch"]


def _check_finite_state(*states: Tensor) -> None:
    if not all(torch.isfinite(s).all() for s in states):
        raise ValueError("non-finite features were accumulated (NaN or Inf in the metric state): "
                         "the monitored features are not finite")


def _distributed(process_group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1


class NeuralCollapse(Metric):
    """NC1-NC3, CDNV, leakage and the KL Lyapunov value from one streaming pass.

    Args:
        num_classes: K.
        feature_dim: d (the state holds a d x d float64 matrix).
        global_mean: ``"unweighted"`` (mean of class means, default) or ``"weighted"``.
        reference: optional K x d shift (e.g. last epoch's means); see the module docstring.
        rtol: relative eigenvalue cutoff for the rank of the between-class Gram matrix.
        validate_args: check label range and finiteness in every ``update`` (one device sync per
            batch). Without it, non-finite features are still caught, at ``compute()``.

    Call :meth:`set_classifier` before ``compute()`` for the classifier keys
    (see :func:`hadainit.metrics.functional.neural_collapse` for the key list).
    After ``compute()``, :attr:`class_means` holds the synced class means and
    :attr:`seen` which classes had samples (for :class:`NearestMeanMismatch`).

    >>> metric = NeuralCollapse(num_classes=3, feature_dim=8)
    >>> metric.update(torch.randn(30, 8), torch.arange(30) % 3)
    >>> round(metric.compute()["num_classes_seen"])
    3
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        *,
        global_mean: str = "unweighted",
        reference: Tensor | None = None,
        rtol: float = 1e-12,
        validate_args: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = _checks.positive_int(num_classes, "num_classes", minimum=2)
        self.feature_dim = _checks.positive_int(feature_dim, "feature_dim")
        self.validate_args = bool(validate_args)
        if global_mean not in GLOBAL_MEAN_KINDS:
            raise ValueError(f"global_mean must be one of {GLOBAL_MEAN_KINDS}, got {global_mean!r}")
        self.global_mean = global_mean
        self.rtol = _checks.positive_float(rtol, "rtol")
        k, d, f64 = num_classes, feature_dim, torch.float64
        self.add_state("counts", torch.zeros(k, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(k, d, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sq_norms", torch.zeros(k, dtype=f64), dist_reduce_fx="sum")
        self.add_state("second", torch.zeros(d, d, dtype=f64), dist_reduce_fx="sum")
        self.register_buffer("reference", None)
        self._weight: Tensor | None = None
        self._basis: InitialBasis | None = None
        self.class_means: Tensor | None = None
        self.seen: Tensor | None = None
        if reference is not None:
            self.set_reference(reference)

    # ------------------------------------------------------------------ setup
    def set_reference(self, reference: Tensor | None) -> None:
        """Fix the shift (K x d) for the next pass; only on an empty metric. None: pick at the next update."""
        if self.counts.sum() > 0:
            raise ValueError("set_reference needs an empty metric (call reset() first): the sums use the old one")
        if reference is None:
            self.reference = None
            return
        if reference.shape != (self.num_classes, self.feature_dim) or not torch.isfinite(reference).all():
            raise ValueError(
                f"reference must be a finite ({self.num_classes}, {self.feature_dim}) tensor, got {tuple(reference.shape)}"
            )
        self.reference = reference.detach().to(device=self.counts.device, dtype=torch.float64).clone()

    def set_classifier(self, weight: Tensor | None, *, basis: InitialBasis | None = None) -> None:
        """The classifier W (K x d) used by the next ``compute()`` (None: no classifier keys);
        ``basis`` (:func:`hadainit.drift.initial_basis`) adds the drift keys. The next ``compute()``
        is fresh: values cached for another classifier are dropped."""
        if weight is not None and (not isinstance(weight, Tensor) or weight.shape != (self.num_classes, self.feature_dim)):
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(f"weight must be a ({self.num_classes}, {self.feature_dim}) tensor, got {shape}")
        if basis is not None and not isinstance(basis, InitialBasis):
            raise TypeError(f"basis must be an InitialBasis (hadainit.drift.initial_basis), got {type(basis).__name__}")
        self._weight, self._basis = weight, basis
        self._computed = None  # torchmetrics caches compute(); it depends on the classifier too

    def _first_reference(self, x: Tensor, labels: Tensor) -> Tensor:
        k = self.num_classes
        sums = torch.zeros(k + 1, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k + 1).to(torch.float64)
        sums[k], counts[k] = x.sum(0), float(x.shape[0])  # the batch mean, for classes not in the batch
        if _distributed(self.process_group):
            packed = torch.cat((sums, counts.unsqueeze(1)), dim=1)
            dist.all_reduce(packed, group=self.process_group)  # every rank must shift by the same point
            sums, counts = packed[:, :-1], packed[:, -1]
        means = sums / counts.clamp_min(1).unsqueeze(1)
        return torch.where((counts[:k] > 0).unsqueeze(1), means[:k], means[k])

    # ---------------------------------------------------------------- metric
    def update(self, features: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        """Add a batch: features (B, d) of any float dtype, integer labels (B,)."""
        check_batch(features, labels, self.num_classes, self.feature_dim, values=self.validate_args)
        x = features.detach().to(device=self.counts.device, dtype=torch.float64)
        labels = labels.to(device=self.counts.device, dtype=torch.int64)  # any integer dtype indexes
        if self.reference is None:
            self.reference = self._first_reference(x, labels)
        shifted = x - self.reference[labels]
        self.counts += torch.bincount(labels, minlength=self.num_classes)
        self.sums.index_add_(0, labels, shifted)
        self.sq_norms.index_add_(0, labels, shifted.pow(2).sum(1))
        self.second.addmm_(shifted.T, shifted)

    def statistics(self) -> ClassStatistics:
        reference = self.reference if self.reference is not None else torch.zeros_like(self.sums)
        return ClassStatistics(self.counts, self.sums, self.sq_norms, self.second, reference)

    def compute(self) -> dict[str, float]:
        _check_finite_state(self.sums, self.second)
        stats = self.statistics()
        self.class_means, self.seen = stats.means().clone(), stats.counts > 0
        return collapse_metrics(stats, self._weight, global_mean=self.global_mean, basis=self._basis, rtol=self.rtol)


class NearestMeanMismatch(Metric):
    """NC4: the fraction of samples whose nearest class mean disagrees with ``argmax`` of the logits.

    The class means come from a previous pass or epoch (:meth:`set_means`, e.g.
    ``NeuralCollapse.class_means`` after its ``compute()``): using the means of
    the pass being measured would need a second pass. States: two float64 sums.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, num_classes: int, feature_dim: int, *, validate_args: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = _checks.positive_int(num_classes, "num_classes", minimum=2)
        self.feature_dim = _checks.positive_int(feature_dim, "feature_dim")
        self.validate_args = bool(validate_args)
        self.add_state("mismatches", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._means: Tensor | None = None
        self._seen: Tensor | None = None

    def set_means(self, means: Tensor, seen: Tensor | None = None) -> None:
        """Class means (K x d) to compare against; ``seen`` masks classes without a mean."""
        if means.shape != (self.num_classes, self.feature_dim) or not torch.isfinite(means).all():
            raise ValueError(f"means must be a finite ({self.num_classes}, {self.feature_dim}) tensor, got {tuple(means.shape)}")
        self._means = means.detach().to(torch.float64)
        self._seen = None if seen is None else seen.to(torch.bool)

    def update(self, features: Tensor, logits: Tensor) -> None:  # type: ignore[override]
        """Add a batch of features (B, d) and the classifier's logits (B, K) for them."""
        if self._means is None:
            raise ValueError("NearestMeanMismatch needs class means: call set_means(...) first")
        if logits.dim() != 2 or logits.shape != (features.shape[0], self.num_classes):
            raise ValueError(f"logits must be ({features.shape[0]}, {self.num_classes}), got {tuple(logits.shape)}")
        check_batch(features, logits.detach().argmax(1), self.num_classes, self.feature_dim, values=False)
        if self.validate_args and not (torch.isfinite(features).all() & torch.isfinite(logits).all()):
            raise ValueError("features or logits contain NaN or Inf")
        self.mismatches += nearest_mean_disagreement(features, self._means, logits, self._seen).to(self.mismatches)
        self.total += features.shape[0]

    def compute(self) -> dict[str, float]:
        if self.total == 0:
            raise ValueError("NearestMeanMismatch.compute() before any update")
        return {"nc4": (self.mismatches / self.total).item()}


class ClassMeans(Metric):
    """Per-class feature means from one streaming pass (float64 sums): the light state
    :class:`~hadainit.callbacks.SpectralMonitor` needs for the class-mean logit matrix.

    ``compute()`` returns ``(means K x d, seen K bool)``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, feature_dim: int, *, validate_args: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = _checks.positive_int(num_classes, "num_classes", minimum=2)
        self.feature_dim = _checks.positive_int(feature_dim, "feature_dim")
        self.validate_args = bool(validate_args)
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(num_classes, feature_dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        check_batch(features, labels, self.num_classes, self.feature_dim, values=self.validate_args)
        labels = labels.to(device=self.counts.device, dtype=torch.int64)
        self.counts += torch.bincount(labels, minlength=self.num_classes)
        self.sums.index_add_(0, labels, features.detach().to(device=self.counts.device, dtype=torch.float64))

    def compute(self) -> tuple[Tensor, Tensor]:
        _check_finite_state(self.sums)
        return self.sums / self.counts.clamp_min(1).unsqueeze(1), self.counts > 0
