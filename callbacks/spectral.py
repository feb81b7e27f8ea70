"""SpectralMonitor: the classifier's drift from its initial singular basis, and the class-mean logit spectrum."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from hadainit._threads import lapack
from hadainit.drift import DRIFT_KEYS, drift
from hadainit.metrics import coefficient_of_variation
from hadainit.metrics.logits import LOGIT_KEYS, OPTIONAL_LOGIT_KEYS, LogitSpectrum
from typing_extensions import override

from .base import SHARED_ARGS, MonitorBase
from .phase import Phase
from .classifier import default_inputs, default_labels
from .forecast import FORECAST_KEYS, SpectralForecast, check_options
from .plotting import epoch_axis, label, new_figure, save
from .schedule import Mode
from .source import Capture

SV_KEYS = ("sv_max", "sv_min", "sv_cv")
#: Every key :class:`SpectralMonitor` logs: the same for every initialization.
#: above this size of K x K float64 logit sums, the spectrum uses the factored state in every mode
FACTORED_ABOVE_BYTES = 256 * 2**20

SPECTRAL_KEYS = DRIFT_KEYS + SV_KEYS + LOGIT_KEYS + FORECAST_KEYS + ("num_samples", "num_ignored")
#: Logged only for a classifier initialized on a K > d mode set (docs/theory.md §8): the margin over t*(S).
MODE_SET_KEYS = OPTIONAL_LOGIT_KEYS

InitBasis = Literal["auto", "walsh", "fourier", "hadamard", "svd"]


class SpectralMonitor(MonitorBase):
    """Log ``<name>/<key>`` (default name ``spectral``): how far the classifier W left its initial
    singular basis, its singular values, and the class-mean logit spectrum of SPEC section 7.

    * Drift (:mod:`hadainit.drift`), the same keys for every init: ``drift`` (the full residual
      ``||W - Q diag(Q^T W V0) V0^T||_F / ||W||_F``), split exactly into ``drift_offdiag``
      (in span(V0), off the diagonal) and ``drift_out_of_span``, and ``drift_angle`` (largest
      principal angle between span(V0) and W's row space). The basis is the ``hadamard_`` basis
      when known (``init_basis``, or the record ``hadamard_`` left on the weight), else the SVD of
      W(0), with a warning: arbitrary within repeated singular values. It is kept in
      ``state_dict``: a resumed run measures drift from the true initialization.
    * ``sv_max``, ``sv_min``, ``sv_cv``: the singular values of W (all of them in ``history``).
    * The logit spectrum (:mod:`hadainit.metrics.logits`, needs K >= 3): ``logit_leakage``, the
      modes ``lam`` (full list in ``history``; min/mean/max logged), ``etf_angle``,
      ``kl_lyapunov_modes`` (V(lam); ``inf`` when a mode is <= 0), ``kl_lyapunov`` (singular
      values of the centred class-mean logits), sample and class-mean margins, ``logit_norm``.
      They come from the logits the network produced in the measured pass (``mode`` as in
      :class:`NeuralCollapseMonitor`). On a real network V is a diagnostic and can rise.
    * ``forecast=True`` (:mod:`hadainit.ufm.forecast`): after each measurement the reduced
      flow is refitted to the last ``forecast_window`` measurements (started at the first of
      them with positive modes; one time scale, ``forecast_time_scale``) and the naive
      baseline beside it. Logged: the forecast margin at ``max_epochs``
      (``forecast_final_margin``), the epoch it reaches ``forecast_target_margin``
      (``forecast_epochs_to_margin``, ``inf`` if never), and, once the next measurement
      arrives, what the previous fits predicted for it and their errors (spectral margin
      and relative spectrum; forecast and baseline). The keys appear once a fit exists
      (three measurements after initialization with positive modes).

    Args:
        log_modes: also log every mode, as ``lam_1`` .. ``lam_(K-1)`` (the history always has them).
        init_basis: the classifier's basis kind at initialization: ``"walsh"``, ``"fourier"``,
            ``"hadamard"``, ``"auto"`` (walsh for powers of two, else fourier), or ``"svd"``
            (no known basis). Default: the ``hadamard_`` record if any (lost by ``deepcopy`` and
            under ``ddp_spawn``), else the SVD of W(0) with a warning.
        forecast: refit the reduced flow after each measurement (see above).
        forecast_window: the measurements each fit uses (>= 3).
        forecast_target_margin: the margin ``forecast_epochs_to_margin`` waits for (None: not logged).
        metrics: the keys to log (default all of :data:`SPECTRAL_KEYS`, and :data:`MODE_SET_KEYS` on a K > d mode set).
        The options shared with :class:`NeuralCollapseMonitor` follow (:data:`~hadainit.callbacks.base.SHARED_ARGS`).
    """

    PREFIX = "spectral"
    KEYS = SPECTRAL_KEYS + MODE_SET_KEYS
    PLOT_NAME = "spectral"
    TITLE = "Classifier drift and logit spectrum"

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        init_basis: InitBasis | None = None,
        log_modes: bool = False,
        forecast: bool = False,
        forecast_window: int = 5,
        forecast_target_margin: float | None = None,
        classifier: str | None = None,
        mode: Mode = "train",
        every_n_epochs: int = 1,
        at_epochs: list[int] | None = None,
        eval_loader: Any = None,
        eval_batches: int | None = None,
        val_dataloader_idx: int = 0,
        name: str | None = None,
        metrics: list[str] | None = None,
        plot: bool = True,
        plot_dir: str | Path | None = None,
        log_at_init: bool = True,
        capture: Capture = "hook",
        ignore_index: int | None = -100,
        labels_from_batch: Callable[[Any], Tensor] = default_labels,
        inputs_from_batch: Callable[[Any], Any] = default_inputs,
        forward_fn: Callable[[LightningModule, Any], Any] | None = None,
    ) -> None:
        if init_basis is not None and init_basis not in ("auto", "walsh", "fourier", "hadamard", "svd"):
            raise ValueError(f"init_basis must be one of auto, walsh, fourier, hadamard, svd or None, got {init_basis!r}")
        check_options(forecast_window, forecast_target_margin)
        super().__init__(num_classes=num_classes, classifier=classifier, mode=mode, every_n_epochs=every_n_epochs, at_epochs=at_epochs,
                         eval_loader=eval_loader, eval_batches=eval_batches, val_dataloader_idx=val_dataloader_idx,
                         name=name, metrics=metrics, plot=plot, plot_dir=plot_dir, log_at_init=log_at_init,
                         capture=capture, ignore_index=ignore_index, labels_from_batch=labels_from_batch,
                         inputs_from_batch=inputs_from_batch, forward_fn=forward_fn)
        self.init_basis = init_basis
        self.log_modes = bool(log_modes)
        self.forecast = bool(forecast)
        self.forecast_window = forecast_window
        self.forecast_target_margin = forecast_target_margin
        self._t_star: tuple | None = None  # (the mode set, its t*), computed once per basis
        if self.forecast:  # its values join this monitor's rows (see SpectralForecast)
            SpectralForecast(self, window=forecast_window, target_margin=forecast_target_margin)

    def _reset(self) -> None:
        super()._reset()
        self._t_star = None

    # ----------------------------------------------------------- the basis policy
    @override
    def _weights_final(self, trainer: Trainer) -> None:
        """The initial basis, taken once the weights are final for the start of training: after the DDP
        broadcast and after a checkpoint's weights and callback state were loaded (for every strategy,
        also those that restore after setup)."""
        if self.basis is not None:
            return
        resumed_without_state = trainer.ckpt_path is not None and not self.state.restored
        if resumed_without_state:
            self._warn_once("resume", f"{type(self).__name__}({self.name!r}): the checkpoint has no state of this "
                            "callback; its history starts now and its initial basis is taken from the resumed weights")
        kind = "svd" if resumed_without_state or self.phase is Phase.REFIT else self.init_basis
        from hadainit.drift import monitor_basis  # the whole policy: given, detected from W(0), or the SVD

        basis, warning = monitor_basis(self._classifier.weight, kind)
        if warning is not None:
            self._warn_once("guessed", f"{type(self).__name__}({self.name!r}): {warning}")
        self.basis = basis

    def _build(self, num_classes: int, feature_dim: int) -> dict:
        if num_classes < 3:
            return {}
        # K > d: the factored O(K d) state (class means of the features, the classifier at measurement time)
        # instead of K x K logit sums. Exact where every feature of the pass sees that classifier (eval, val);
        # in train mode only where K x K would not fit (docs/theory.md §8).
        kxk_bytes = 8 * num_classes * (num_classes + 1)
        factored = num_classes > feature_dim and (self.mode != "train" or kxk_bytes > FACTORED_ABOVE_BYTES)
        if factored and self.mode == "train":
            self._warn_once("factored-train", f"SpectralMonitor({self.name!r}): K = {num_classes} is too large for "
                            "K x K logit sums, so the spectrum is that of the epoch's class-mean features through the "
                            "classifier at the measurement (in mode='train' the features met earlier weights)")
        return {"logits": LogitSpectrum(num_classes, feature_dim=feature_dim if factored else None)}

    def _consume(self, features: Tensor, labels: Tensor, logits: Tensor) -> None:
        if "logits" in self._metrics:
            spectrum = self._metrics["logits"]
            spectrum.update(logits, labels, features if spectrum.feature_dim is not None else None)

    def _mode_set_t_star(self) -> float | None:
        """t*(S) of the initial basis's mode set (K > d; docs/theory.md §8), solved once; None without one."""
        modes = None if self.basis is None else getattr(self.basis, "modes", None)
        if modes is None:
            return None
        key = (self.basis.kind, tuple(modes.tolist()))
        if getattr(self, "_t_star", None) is None or self._t_star[0] != key:
            from hadainit.modes import max_margin  # scipy's LP: only for monitors that need it

            self._t_star = (key, max_margin(list(key[1]), self._classifier.weight.shape[0], key[0]).value)
        return self._t_star[1]

    def _compute(self, trainer: Trainer, epochs_done: float, samples: float) -> dict:
        w = self._classifier.weight.detach()
        if self.basis is not None:
            values = drift(w, self.basis)
        else:  # trainer.validate without a fit: the initial weights were never seen
            values = {}
            self._warn_once("no-basis", f"SpectralMonitor({self.name!r}): no initial basis (this monitor saw no fit "
                            "and holds no restored state), so the drift keys are not logged")
        with lapack(*w.shape):
            sv = torch.linalg.svdvals(w.to(device="cpu", dtype=torch.float64))
        values.update(sv_max=sv[0].item(), sv_min=sv[-1].item(), sv_cv=coefficient_of_variation(sv),
                      singular_values=sv.tolist())
        spectrum = self._metrics.get("logits")
        if spectrum is not None and samples:
            if spectrum.feature_dim is not None:
                bias = self._classifier.bias
                spectrum.set_classifier(w, None if bias is None else bias.detach())
            spectrum.set_t_star(self._mode_set_t_star())  # margin_to_t_star, when the init's mode set is known
            try:
                spec = {k: float(v) for k, v in spectrum.compute().items()}  # synced across ranks
                spec.update({k: v.tolist() for k, v in spectrum.spectra().items()})  # lam, zc_singular_values
                values.update(spec)
            except ValueError as err:  # e.g. a class never seen, or collapsed logits: the drift is still logged
                self._warn_once(f"spectrum:{err}", f"SpectralMonitor({self.name!r}): logit spectrum not logged after "
                                f"{epochs_done:g} epochs: {err} (said once; the drift is still logged)")
        elif spectrum is not None:
            self._warn_once("no-logits", f"SpectralMonitor({self.name!r}): no logits were captured, so the logit "
                            "spectrum is not logged (is the classifier called in the step?)")
        if self.log_modes and "lam" in values:  # the whole spectrum in the loggers' tables, as lam_1 .. lam_(K-1)
            values.update({f"lam_{i}": v for i, v in enumerate(values["lam"], start=1)})
        return values

    def _selected(self, key: str) -> bool:
        return super()._selected(key) or (self.log_modes and key.startswith("lam_"))

    def _figures(self, directory: Path) -> list:
        rows = [r for r in self.history if "lam" in r]
        if not rows:
            return []
        fig, (ax, ax2) = new_figure(2)
        xs = [r["epochs_done"] for r in rows]
        modes = list(zip(*[r["lam"] for r in rows]))
        groups: dict[tuple, list[int]] = {}  # equal series drawn once (the fourier basis's (cos, sin) pairs)
        for i, mode in enumerate(modes, start=1):
            groups.setdefault(tuple(mode), []).append(i)
        for mode, members in groups.items():
            name = f"mode {members[0]}" if len(members) == 1 else "modes " + ", ".join(map(str, members))
            ax.plot(xs, mode, "-", lw=1, alpha=0.8, label=name if len(groups) <= 10 else None)
        epoch_axis(ax, xs)
        label(ax, ax.get_xlabel(), "lam_i = diag(Q^T Z_c Q), i >= 1")
        for key in ("logit_leakage", "etf_angle", "kl_lyapunov", "kl_lyapunov_modes"):
            values = [r[key] for r in rows]
            hidden = sum(not math.isfinite(v) for v in values)
            ax2.plot(xs, values, "o-", ms=3, label=key + (f" ({hidden} inf not drawn)" if hidden else ""))
        epoch_axis(ax2, xs)
        label(ax2, ax2.get_xlabel(), "value", logy=True)
        save(fig, directory / f"{self.name}_logit_spectrum.png", f"Class-mean logit spectrum ({self.name})")
        return [("logit_spectrum", fig)]


SpectralMonitor.__doc__ += SHARED_ARGS
