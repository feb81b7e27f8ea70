"""Lightning callbacks (installed as ``hadainit.callbacks``): neural-collapse and spectral monitors, and the
spectral forecaster."""

from .base import MonitorBase
from .forecast import SpectralForecast
from .neural_collapse import NC_KEYS, NeuralCollapseMonitor
from .schedule import log_spaced_epochs
from .spectral import FORECAST_KEYS, MODE_SET_KEYS, SPECTRAL_KEYS, SpectralMonitor

__all__ = ["MonitorBase", "log_spaced_epochs", "NC_KEYS", "NeuralCollapseMonitor", "FORECAST_KEYS", "MODE_SET_KEYS",
           "SPECTRAL_KEYS", "SpectralMonitor", "SpectralForecast"]
