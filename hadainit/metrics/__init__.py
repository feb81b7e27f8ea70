"""Neural-collapse metrics (SPEC section 6): streaming torchmetrics and a functional form."""

from . import functional
from .collapse import ClassMeans, NearestMeanMismatch, NeuralCollapse
from .formulas import ClassStatistics, class_mean_logit_kl, collapse_metrics

__all__ = [
    "ClassMeans",
    "ClassStatistics",
    "NearestMeanMismatch",
    "NeuralCollapse",
    "class_mean_logit_kl",
    "collapse_metrics",
    "functional",
]
