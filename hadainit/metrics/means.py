"""Streaming class means (:class:`ClassMeans`) and NC4 against means of a previous pass (:class:`NearestMeanMismatch`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks
from .base import Float64Metric, check_finite_state
from .functional import check_batch, check_seen, nearest_mean_disagreement

__all__ = ["ClassMeans", "NearestMeanMismatch"]

F64 = torch.float64


class NearestMeanMismatch(Float64Metric):
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
        self.add_state("mismatches", torch.zeros((), dtype=F64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=F64), dist_reduce_fx="sum")
        self._means: Tensor | None = None
        self._seen: Tensor | None = None

    def set_means(self, means: Tensor, seen: Tensor | None = None) -> None:
        """Class means (K x d) to compare against; ``seen`` (K bools, at least one) masks classes without a mean."""
        if means.shape != (self.num_classes, self.feature_dim) or not torch.isfinite(means).all():
            raise ValueError(f"means must be a finite ({self.num_classes}, {self.feature_dim}) tensor, got {tuple(means.shape)}")
        self._seen = check_seen(seen, self.num_classes)
        self._means = means.detach().to(F64)

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


class ClassMeans(Float64Metric):
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
        self.add_state("counts", torch.zeros(num_classes, dtype=F64), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(num_classes, feature_dim, dtype=F64), dist_reduce_fx="sum")

    def update(self, features: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        check_batch(features, labels, self.num_classes, self.feature_dim, values=self.validate_args)
        labels = labels.to(device=self.counts.device, dtype=torch.int64)
        self.counts += torch.bincount(labels, minlength=self.num_classes)
        self.sums.index_add_(0, labels, features.detach().to(device=self.counts.device, dtype=F64))

    def compute(self) -> tuple[Tensor, Tensor]:
        check_finite_state(self.sums)
        return self.sums / self.counts.clamp_min(1).unsqueeze(1), self.counts > 0
