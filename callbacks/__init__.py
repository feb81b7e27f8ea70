"""Lightning callbacks (installed as ``hadainit.callbacks``): neural-collapse and spectral monitors."""

from .neural_collapse import NeuralCollapseMonitor
from .spectral import SpectralMonitor, principal_angles

__all__ = ["NeuralCollapseMonitor", "SpectralMonitor", "principal_angles"]
