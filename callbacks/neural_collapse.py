"""NeuralCollapseMonitor: NC metrics of the classifier's input features, logged during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from hadainit.metrics import COLLAPSE_KEYS, NearestMeanDisagreement, NeuralCollapse

from .base import SHARED_ARGS, MonitorBase
from .classifier import default_inputs, default_labels
from .sums import RunningMean, quiet_compute
from .schedule import Mode
from .source import Capture
from .state import CollapseState

#: What :class:`hadainit.metrics.NeuralCollapse` computes, NC4, and the sample counts.
NC_KEYS = COLLAPSE_KEYS + ("nc4", "num_samples", "num_ignored")


class NeuralCollapseMonitor(MonitorBase):
    """Log NC1-NC4, CDNV, ETF gaps and the KL Lyapunov value as ``<name>/<key>`` (default name ``nc``).

    Where the features come from (``mode``):

    * ``"train"`` (default): every call of the classifier during the training steps of a
      monitored epoch (a forward hook; no extra pass). Features come from a moving
      network; the classifier-dependent values use the classifier averaged over those
      steps (weighted by samples), i.e. the weights the features were produced with,
      and NC4 the logits the network actually produced.
    * ``"eval"``: one extra eval-mode, ``no_grad`` pass at the end of the epoch over
      ``eval_loader`` or the training batches (``eval_batches``, else as many as
      ``limit_train_batches`` allows): what NC papers report. Features and classifier
      are those of the end of the epoch.
    * ``"val"``: the validation batches, measured at the end of every validation run
      (also mid-epoch with ``val_check_interval < 1``, and under ``trainer.validate``).

    NC4 compares with the class means of the previous measurement (it needs means before
    the pass), so it appears from the second measurement on. The first measurement is
    made at initialization (``log_at_init``), in eval mode, before the first step.

    Several monitors in one Trainer need distinct ``name``s (the default is ``nc``,
    ``nc_eval`` or ``nc_val`` by mode). To checkpoint on a value of a ``train``/``eval``
    monitor, use ``ModelCheckpoint(monitor="nc/nc1", save_on_train_epoch_end=True)``
    (and ``EarlyStopping(..., check_on_train_epoch_end=True)``); with ``mode="val"`` the
    default ``ModelCheckpoint(monitor="nc_val/nc1")`` works. Values are measured before
    the epoch's validation run, so validation-time checkpoints see them too.

    Args:
        num_classes: K; default: the module's or datamodule's ``num_classes``, used to find the
            classifier (the ``nn.Linear`` with K outputs) when ``classifier`` is not given.
        global_mean: ``"unweighted"`` mean of the class means, or sample-``"weighted"``.
        metrics: the keys to log (default all of :data:`NC_KEYS`).
        The options shared with :class:`SpectralMonitor` follow (:data:`~hadainit.callbacks.base.SHARED_ARGS`).
    """

    PREFIX = "nc"
    KEYS = NC_KEYS
    PLOT_NAME = "neural_collapse"
    TITLE = "Neural-collapse metrics"
    STATE = CollapseState

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        global_mean: Literal["unweighted", "weighted"] = "unweighted",
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
        if global_mean not in ("unweighted", "weighted"):
            raise ValueError(f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
        super().__init__(num_classes=num_classes, classifier=classifier, mode=mode, every_n_epochs=every_n_epochs, at_epochs=at_epochs,
                         eval_loader=eval_loader, eval_batches=eval_batches, val_dataloader_idx=val_dataloader_idx,
                         name=name, metrics=metrics, plot=plot, plot_dir=plot_dir, log_at_init=log_at_init,
                         capture=capture, ignore_index=ignore_index, labels_from_batch=labels_from_batch,
                         inputs_from_batch=inputs_from_batch, forward_fn=forward_fn)
        self.global_mean = global_mean
        self._step_weight: Tensor | None = None

    def _build(self, num_classes: int, feature_dim: int) -> dict:
        # validate_args=False: no per-batch device sync; non-finite features still raise at compute()
        metrics = {
            "nc": NeuralCollapse(num_classes, feature_dim, global_mean=self.global_mean, validate_args=False),
            "nc4": NearestMeanDisagreement(num_classes, feature_dim, validate_args=False),
            "classifier": RunningMean((num_classes, feature_dim)),
        }
        if self.state.means is not None:
            metrics["nc4"].set_means(self.state.means, self.state.seen)
        return metrics

    def _set_active(self, active: bool) -> None:
        super()._set_active(active)
        # the classifier of this training step, before the optimizer changes it: what the features met
        self._step_weight = self._classifier.weight.detach().clone() if active and self.mode == "train" else None

    def _consume(self, features: Tensor, labels: Tensor, logits: Tensor) -> None:
        self._metrics["nc"].update(features, labels)
        if self.state.means is not None:
            self._metrics["nc4"].update(features, logits)
        if self._step_weight is not None:
            self._metrics["classifier"].update(self._step_weight, features.shape[0])

    def _compute(self, trainer: Trainer, epochs_done: float, samples: float) -> dict:
        if not samples:
            raise ValueError("no samples were captured (is the classifier called in the step?)")
        nc = self._metrics["nc"]
        # train mode: the classifier averaged over the steps that produced the features (synced); the
        # measurement at initialization (an eval pass before any step) uses the classifier itself
        averaged = quiet_compute(self._metrics["classifier"]) if self.mode == "train" else None
        nc.set_classifier((averaged if averaged is not None else self._classifier.weight).detach())
        values = nc.compute()  # synced across ranks: every rank gets the same values
        if self.state.means is not None:
            try:
                values["nc4"] = self._metrics["nc4"].compute()  # synced; raises on every rank alike
            except ValueError as err:
                self._warn_once(f"nc4:{err}", f"NeuralCollapseMonitor({self.name!r}): nc4 not logged: {err} (said once)")
        self.state.means, self.state.seen = nc.class_means.detach().clone(), nc.seen.clone()
        self._metrics["nc4"].set_means(self.state.means, self.state.seen)
        return values


NeuralCollapseMonitor.__doc__ += SHARED_ARGS
