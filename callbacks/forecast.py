"""SpectralForecast: after each measurement of a :class:`~hadainit.callbacks.SpectralMonitor`, refit the
reduced flow (:mod:`hadainit.ufm.forecast`) to its last spectra and score the previous fit on the new one.

``SpectralMonitor(forecast=True)`` makes one itself; as a callback of its own it serves a monitor that
was built without it::

    spectral = SpectralMonitor()
    trainer = Trainer(callbacks=[spectral, SpectralForecast(spectral, window=5)])

Its values join the monitor's row (logged as ``<monitor name>/<key>``, in the monitor's history).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from hadainit.ufm.forecast import baseline_forecast, fit_forecast, spectral_margin

if TYPE_CHECKING:
    from .spectral import SpectralMonitor

#: With ``forecast=True``, from the measurement after the first fit on (see :class:`SpectralMonitor`).
FORECAST_KEYS = ("forecast_time_scale", "forecast_fit_error", "forecast_final_margin", "forecast_epochs_to_margin",
                 "forecast_margin", "forecast_margin_error", "baseline_margin_error", "forecast_spectrum_error",
                 "baseline_spectrum_error")


def check_options(window: int, target_margin: float | None) -> None:
    """Raise ``ValueError`` for a window below 3 measurements or a target margin that is not a finite number."""
    if target_margin is not None and not (isinstance(target_margin, (int, float)) and math.isfinite(target_margin)):
        raise ValueError(f"forecast_target_margin must be a finite number, got {target_margin!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 3:
        raise ValueError(f"forecast_window must be an int >= 3 (a start and two epochs to fit), got {window!r}")


class SpectralForecast(Callback):
    """Forecast a :class:`~hadainit.callbacks.SpectralMonitor`'s logit spectrum from its history.

    Args:
        monitor: the monitor whose spectra are fitted (its rows get the :data:`FORECAST_KEYS`).
        window: the measurements each fit uses (>= 3).
        target_margin: the margin ``forecast_epochs_to_margin`` waits for (None: not logged).
    """

    def __init__(self, monitor: SpectralMonitor, *, window: int = 5, target_margin: float | None = None) -> None:
        check_options(window, target_margin)
        self.monitor = monitor
        self.window = window
        self.target_margin = target_margin
        self._fits: tuple | None = None  # (forecast, baseline) fitted at the last measurement
        monitor.add_extension(self)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.monitor not in trainer.callbacks:
            raise ValueError(f"SpectralForecast follows SpectralMonitor({self.monitor.name!r}), which is not a callback "
                             "of this Trainer: add it too")

    def reset(self) -> None:
        """Forget the previous fits (the monitor's history starts afresh)."""
        self._fits = None

    def extend(self, trainer: Trainer, now: float, values: dict) -> dict:
        """The forecast keys of the measurement ``values`` after ``now`` epochs: the previous fits scored on
        it, then a refit on it and the monitor's earlier spectra (none without a logit spectrum)."""
        if "lam" not in values:
            return {}
        out = {}
        lam = torch.tensor(values["lam"], dtype=torch.float64)
        if self._fits is not None:
            model, baseline = self._fits
            truth = spectral_margin(lam, model.basis).item()
            for name, fc in (("forecast", model), ("baseline", baseline)):
                try:
                    pred = fc.predict([now])
                except (RuntimeError, ValueError):
                    continue
                if name == "forecast":
                    out["forecast_margin"] = pred["margin"].item()
                out[f"{name}_margin_error"] = abs(pred["margin"].item() - truth)
                out[f"{name}_spectrum_error"] = (torch.linalg.vector_norm(pred["lam"][0] - lam)
                                                 / torch.linalg.vector_norm(lam)).item()
        rows = [r for r in self.monitor.history if "lam" in r] + [{"epochs_done": now, "lam": values["lam"]}]
        rows = [r for r in rows[-self.window :] if r["epochs_done"] > 0]
        epochs = [r["epochs_done"] for r in rows]
        spectra = [r["lam"] for r in rows]
        try:
            model = fit_forecast(epochs, spectra)
            used = [i for i, e in enumerate(epochs) if e >= model.epoch0]
            baseline = baseline_forecast([epochs[i] for i in used], [spectra[i] for i in used])
        except (ValueError, RuntimeError):  # not enough measurements with positive modes yet
            return out
        self._fits = (model, baseline)
        out.update(forecast_time_scale=model.time_scale, forecast_fit_error=model.fit_error)
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.max_epochs >= now:
            out["forecast_final_margin"] = model.predict([float(trainer.max_epochs)])["margin"].item()
        if self.target_margin is not None:
            out["forecast_epochs_to_margin"] = model.epochs_to_margin(self.target_margin)
        return out
