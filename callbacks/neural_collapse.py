"""NeuralCollapseMonitor: NC metrics of the classifier's input features, logged every few epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from hadainit.metrics import NearestMeanMismatch, NeuralCollapse
from hadainit.metrics.formulas import GLOBAL_MEAN_KINDS

from .basis import check_kind, initial_basis
from .capture import (
    FeatureCapture,
    default_inputs,
    default_labels,
    eval_pass,
    find_classifier,
    metric_checkpoint,
    restore_metric,
)
from .plotting import plot_history

MODES = ("train", "eval")


class NeuralCollapseMonitor(Callback):
    """Log NC1-NC4, CDNV, ETF gaps, leakage and the KL Lyapunov value (``nc/<key>``) every ``every_n_epochs``.

    The classifier's input features are captured by a forward hook.

    * ``mode="train"`` accumulates them during the ordinary training forward
      passes: no extra pass over the data, features from a moving network.
    * ``mode="eval"`` makes one extra pass in eval mode at the end of the epoch,
      over ``eval_loader`` or the first ``eval_batches`` training batches (what
      NC papers report). Under DDP every rank passes over its own shard of the
      training loader; an ``eval_loader`` given here is passed over whole on
      every rank, which duplicates every sample equally and leaves all metrics
      unchanged.

    The metric state is synced across ranks and every rank computes the same
    values. Lightning's ``DistributedSampler`` pads the shards by repeating up
    to ``world_size - 1`` samples; those are counted twice (exact for what the
    ranks saw, off by at most ``(world_size - 1) / N`` in weight from the dataset). NC4 compares with the class means of the previous evaluation (it
    needs means before the pass), so it appears from the second evaluation on.

    Args:
        num_classes: K; default: the classifier's ``out_features``.
        classifier: attribute path of the ``nn.Linear`` classifier (e.g. ``"fc"``);
            default: the last ``nn.Linear`` of the module.
        init_basis: the ``hadamard_`` basis kind, for the ``leakage`` key when the record on the
            weight may be lost (see :mod:`hadainit.callbacks.basis`); without a kind, no leakage.
        mode: ``"train"`` or ``"eval"``.
        every_n_epochs: evaluate after every n-th epoch.
        eval_loader, eval_batches: for ``mode="eval"`` (default: all training batches).
        global_mean: ``"unweighted"`` or ``"weighted"`` (see :class:`hadainit.metrics.NeuralCollapse`).
        plot_dir: if given, ``neural_collapse.png`` is written there at the end of fit (rank zero).
        labels_from_batch, inputs_from_batch: how to read a batch (default: ``batch[1]``, ``batch[0]``).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        classifier: str | None = None,
        init_basis: str | None = None,
        mode: str = "train",
        every_n_epochs: int = 1,
        eval_loader: Any = None,
        eval_batches: int | None = None,
        global_mean: str = "unweighted",
        plot_dir: str | Path | None = None,
        labels_from_batch: Callable = default_labels,
        inputs_from_batch: Callable = default_inputs,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        if eval_batches is not None and (not isinstance(eval_batches, int) or eval_batches < 1):
            raise ValueError(f"eval_batches must be a positive int or None, got {eval_batches!r}")
        if mode == "train" and (eval_loader is not None or eval_batches is not None):
            raise ValueError("eval_loader / eval_batches only apply to mode='eval'")
        if global_mean not in GLOBAL_MEAN_KINDS:
            raise ValueError(f"global_mean must be one of {GLOBAL_MEAN_KINDS}, got {global_mean!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if classifier is not None and not isinstance(classifier, str):
            raise TypeError(f"classifier must be an attribute path string, got {type(classifier).__name__}")
        self.num_classes = num_classes
        self.classifier_path = classifier
        self.init_basis = check_kind(init_basis)
        self.mode = mode
        self.every_n_epochs = every_n_epochs
        self.eval_loader = eval_loader
        self.eval_batches = eval_batches
        self.global_mean = global_mean
        self.plot_dir = None if plot_dir is None else Path(plot_dir)
        self.labels_from_batch = labels_from_batch
        self.inputs_from_batch = inputs_from_batch
        self.history: list[dict] = []
        self._means: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None
        self._basis: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._classifier = find_classifier(pl_module, self.classifier_path)
        k = self._classifier.out_features
        if self.num_classes is not None and self.num_classes != k:
            raise ValueError(f"num_classes={self.num_classes} but the classifier has {k} outputs")
        d = self._classifier.in_features
        # validation without per-batch device syncs; non-finite features still raise at compute()
        self._metric = NeuralCollapse(k, d, global_mean=self.global_mean, validate_args=False)
        self._nc4 = NearestMeanMismatch(k, d, validate_args=False)
        self._capture = FeatureCapture(self._classifier)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the DDP broadcast of the weights, and after a resumed run's load_state_dict
        if self._basis is None:
            basis = initial_basis(self._classifier.weight, self.init_basis)
            self._basis = False if basis.kind == "svd" else (basis.left, basis.right)  # False: no leakage

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and hasattr(self, "_capture"):
            self._capture.remove()

    def _due(self, trainer: Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not trainer.sanity_checking

    # ------------------------------------------------------------ accumulate
    def _consume(self, features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        device = features.device
        if self._metric.device != device:
            self._metric.to(device)
            self._nc4.to(device)
        self._metric.update(features, labels)
        if self._means is not None:
            self._nc4.update(features, logits)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # per batch, not per epoch: Lightning skips on_train_epoch_start when resuming mid-epoch
        self._capture.active = self.mode == "train" and self._due(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        features, logits = self._capture.take()
        if features is not None:
            self._consume(features, self.labels_from_batch(batch), logits)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._capture.active = False
        if not self._due(trainer):
            return
        if self.mode == "eval":
            loader = self.eval_loader if self.eval_loader is not None else trainer.train_dataloader
            eval_pass(trainer, pl_module, self._capture, loader, self.eval_batches, self.inputs_from_batch,
                      self.labels_from_batch, self._consume)
        self._metric.set_classifier(self._classifier.weight, basis=self._basis or None, use_record=False)
        try:
            results = self._metric.compute()  # synced across ranks: every rank gets the same values
            if self._means is not None:
                results.update(self._nc4.compute())
        except ValueError as err:  # undefined geometry (e.g. collapsed or non-finite features): say so, go on
            rank_zero_warn(f"epoch {trainer.current_epoch}: neural-collapse metrics not logged: {err}")
            self._metric.reset()
            self._nc4.reset()
            return
        self._means, self._seen = self._metric.class_means, self._metric.seen
        self._metric.reset()
        self._nc4.reset()
        self._nc4.set_means(self._means, self._seen)
        self.history.append({"epoch": trainer.current_epoch, **results})
        for key, value in results.items():
            # float64 and unsynced: the values are already global and identical on every rank
            pl_module.log(f"nc/{key}", torch.tensor(value, dtype=torch.float64), on_epoch=True, sync_dist=False)

    @rank_zero_only
    def _plot(self) -> None:
        if self.plot_dir is not None and self.history:
            self.plot_dir.mkdir(parents=True, exist_ok=True)
            plot_history(self.history, self.plot_dir / "neural_collapse.png", "Neural-collapse metrics")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._plot()

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        state = {"history": self.history, "means": self._means, "seen": self._seen, "basis": self._basis}
        if hasattr(self, "_metric"):  # mid-epoch checkpoints carry the epoch's partial sums
            state.update(metric=metric_checkpoint(self._metric), nc4=metric_checkpoint(self._nc4))
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self._means, self._seen = state_dict.get("means"), state_dict.get("seen")
        self._basis = state_dict.get("basis")
        if hasattr(self, "_nc4"):  # setup ran first (Lightning restores callbacks after setup)
            if self._means is not None:
                self._nc4.set_means(self._means, self._seen)
            restore_metric(self._metric, state_dict.get("metric"))
            restore_metric(self._nc4, state_dict.get("nc4"))
