"""What a monitor sees: the classifier calls it captures or is fed, and the extra passes it makes."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from .capture import FeatureCapture, eval_pass, has_forward


class Feeding:
    """The data side of :class:`~hadainit.callbacks.base.MonitorBase` (a mixin: the attributes it reads,
    ``_hook``, ``_metrics``, ``_classifier``, ``mode`` and the constructor options, are the monitor's)."""

    def update(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """Feed the monitor from your own step (``capture="manual"``): the classifier's input features and
        the labels (and its logits; default: computed with the current classifier). Calls outside the
        batches the monitor measures (other epochs, the sanity check) are ignored."""
        if self.capture != "manual":
            raise RuntimeError(f"{type(self).__name__}({self.name!r}) captures through a forward hook; "
                               "construct it with capture='manual' to feed it with update()")
        if not self._active:
            return
        if logits is None:
            with torch.no_grad():
                logits = self._classifier(features.detach())
        self._consume_calls([(features.detach(), logits.detach())], labels=labels)

    def _consume_calls(self, calls: list[tuple[Tensor, Tensor]], batch: Any = None, labels: Tensor | None = None) -> None:
        labels = self.labels_from_batch(batch) if labels is None else labels
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a tensor, got {type(labels).__name__}: pass labels_from_batch=...")
        k, d = self._classifier.out_features, self._classifier.in_features
        hint = ("pass labels_from_batch=lambda batch: batch[1].argmax(-1) for one-hot or soft labels, or another "
                "function returning the class indices")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"{type(self).__name__}({self.name!r}): labels must be integer class indices, got dtype "
                            f"{labels.dtype} (shape {tuple(labels.shape)}): {hint}")
        if labels.dim() == 2 and labels.shape[1] == k and any(f.numel() // d == labels.shape[0] for f, _ in calls):
            raise ValueError(f"{type(self).__name__}({self.name!r}): labels of shape {tuple(labels.shape)} look "
                             f"one-hot (one row of {k} per sample): {hint}")
        labels = labels.reshape(-1)
        for features, logits in calls:
            features, logits = features.reshape(-1, d), logits.reshape(-1, k)
            if features.shape[0] != labels.shape[0]:
                self._warn_once("rows", f"{type(self).__name__}({self.name!r}): a call of the classifier with "
                                f"{features.shape[0]} rows does not match the batch's {labels.shape[0]} labels and is "
                                "skipped (only calls with one row per label are measured; for other layouts use "
                                "capture='manual' and update(features, labels))")
                continue
            y = labels.to(features.device)
            keep = y != self.ignore_index if self.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
            bad = keep & ((y < 0) | (y >= k))
            n_keep, n_bad = torch.stack((keep.sum(), bad.sum())).tolist()  # one device sync per call
            if n_bad:
                raise ValueError(f"{type(self).__name__}({self.name!r}): labels must lie in [0, {k}) or equal "
                                 f"ignore_index={self.ignore_index}; got {y[bad][:5].tolist()}")
            if n_keep < y.shape[0]:
                features, logits, y = features[keep], logits[keep], y[keep]
            count = self._metrics["count"]
            if count.device != features.device:
                for metric in self._metrics.values():
                    metric.to(features.device)
            count.update(torch.tensor(float(n_keep)), torch.tensor(float(labels.shape[0] - n_keep)))
            if n_keep:
                self._consume(features, y, logits)

    def _forward(self, pl_module: LightningModule, batch: Any) -> Any:
        if self.forward_fn is not None:
            return self.forward_fn(pl_module, batch)
        return pl_module(self.inputs_from_batch(batch))

    def _pass(self, trainer: Trainer, pl_module: LightningModule, loader, limit) -> None:
        """An eval-mode pass over ``loader`` feeding the monitor through the hook (also with capture='manual')."""
        self._active = True
        self._hook.active = True
        FeatureCapture.exclusive = self._hook
        try:
            eval_pass(trainer, pl_module, loader, limit, self._forward,
                      lambda batch: self._consume_calls(self._hook.take(), batch))
        finally:
            FeatureCapture.exclusive = None
            self._set_active(False)

    def _measure_init(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.forward_fn is None and not has_forward(pl_module):
            self._warn_once("init", f"{type(self).__name__}({self.name!r}): no values at initialization: "
                            f"{type(pl_module).__name__} has no forward(); pass forward_fn=...")
            return
        loader, limit = self._val_loader(trainer) if self.mode == "val" else self._eval_loader(trainer)
        if loader is None:
            self._warn_once("init", f"{type(self).__name__}({self.name!r}): no data loader at initialization")
            return
        self._pass(trainer, pl_module, loader, limit)
        self._measure(trainer, -1, 0.0)

    def _eval_loader(self, trainer: Trainer):
        """The extra pass's data: ``eval_loader`` whole, or the training batches (``eval_batches``, else as
        many as ``limit_train_batches`` allows)."""
        if self.eval_loader is not None:
            return self.eval_loader, self.eval_batches
        limit = self.eval_batches if self.eval_batches is not None else trainer.num_training_batches
        return trainer.train_dataloader, None if not math.isfinite(limit) else int(limit)

    def _val_loader(self, trainer: Trainer):
        """The monitored validation loader and its batch limit (Lightning sets them up lazily)."""
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
        loaders = trainer.val_dataloaders
        if not isinstance(loaders, (list, tuple)):
            loaders = [] if loaders is None else [loaders]
        if self.val_dataloader_idx >= len(loaders):
            return None, None
        limits = trainer.num_val_batches
        limit = limits[self.val_dataloader_idx] if isinstance(limits, list) and len(limits) > self.val_dataloader_idx else None
        return loaders[self.val_dataloader_idx], None if limit is None or not math.isfinite(limit) else int(limit)

