"""Neural-collapse metrics (SPEC section 6): streaming torchmetrics and a functional form."""

from . import functional
from .collapse import NeuralCollapse
from .logits import LogitSpectrum
from .means import NearestMeanDisagreement, NearestMeanMismatch
from .formulas import COLLAPSE_KEYS, class_mean_logit_kl, coefficient_of_variation, collapse_metrics, per_class_metrics
from .statistics import ClassStatistics

__all__ = [
    "COLLAPSE_KEYS",
    "ClassStatistics",
    "LogitSpectrum",
    "NearestMeanDisagreement",
    "NearestMeanMismatch",
    "NeuralCollapse",
    "class_mean_logit_kl",
    "coefficient_of_variation",
    "collapse_metrics",
    "functional",
    "per_class_metrics",
]
