"""Neural-collapse metrics (SPEC section 6): streaming torchmetrics and a functional form."""

from . import functional
from .collapse import NearestMeanMismatch, NeuralCollapse
from .formulas import ClassStatistics, collapse_metrics

__all__ = ["ClassStatistics", "NearestMeanMismatch", "NeuralCollapse", "collapse_metrics", "functional"]
