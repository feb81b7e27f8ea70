"""Lightning callbacks (installed as ``hadainit.callbacks``): neural-collapse and spectral monitors."""

from .base import MonitorBase
from .neural_collapse import NC_KEYS, NeuralCollapseMonitor
from .spectral import SPECTRAL_KEYS, SpectralMonitor

__all__ = ["MonitorBase", "NC_KEYS", "NeuralCollapseMonitor", "SPECTRAL_KEYS", "SpectralMonitor"]
