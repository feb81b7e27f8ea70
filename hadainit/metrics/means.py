"""NC4 against the class means of a previous pass: :class:`NearestMeanDisagreement`, the streaming twin of
:func:`hadainit.metrics.functional.nearest_mean_disagreement` (``NearestMeanMismatch`` is its deprecated name)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .. import _checks
from .base import Float64Metric, check_finite_state
from .functional import check_batch, check_seen, nearest_mean_disagreements

__all__ = ["NearestMeanDisagreement", "NearestMeanMismatch"]

F64 = torch.float64


class NearestMeanDisagreement(Float64Metric):
    """NC4: the fraction of samples whose nearest class mean disagrees with ``argmax`` of the logits.

    ``compute()`` returns it as a 0-d float64 tensor (the streaming form of
    :func:`~hadainit.metrics.functional.nearest_mean_disagreement`).

    The class means come from a previous pass or epoch (:meth:`set_means`, e.g.
    ``NeuralCollapse.class_means`` after its ``compute()``): using the means of
    the pass being measured would need a second pass. States: two float64 sums.

    >>> metric = NearestMeanDisagreement(2, 1)
    >>> metric.set_means(torch.tensor([[0.0], [1.0]]))
    >>> metric.update(torch.tensor([[0.1], [0.9]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    >>> metric.compute()
    tensor(0.5000, dtype=torch.float64)
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
            raise ValueError(f"{type(self).__name__} needs class means: call set_means(...) first")
        if logits.dim() != 2 or logits.shape != (features.shape[0], self.num_classes):
            raise ValueError(f"logits must be ({features.shape[0]}, {self.num_classes}), got {tuple(logits.shape)}")
        check_batch(features, logits.detach().argmax(1), self.num_classes, self.feature_dim, values=False)
        if self.validate_args and not (torch.isfinite(features).all() & torch.isfinite(logits).all()):
            raise ValueError("features or logits contain NaN or Inf")
        self.mismatches += nearest_mean_disagreements(features, self._means, logits, self._seen).to(self.mismatches)
        self.total += features.shape[0]

    def compute(self) -> Tensor:
        if self.total == 0:
            raise ValueError(f"{type(self).__name__}.compute() before any update")
        return self.mismatches / self.total


class NearestMeanMismatch(NearestMeanDisagreement):
    """Deprecated name of :class:`NearestMeanDisagreement` (warns ``DeprecationWarning``); its ``compute()``
    keeps the old form ``{"nc4": 0-d tensor}``."""

    def __init__(self, *args, **kwargs) -> None:
        warnings.warn("NearestMeanMismatch is deprecated: use NearestMeanDisagreement (compute() returns the "
                      "0-d tensor itself, not {'nc4': ...})", DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return {"nc4": super().compute()}
