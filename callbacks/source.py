"""What a monitor sees: the classifier's calls, captured by a forward hook or fed through ``update()``, or
made by an eval-mode pass, checked and handed on as ``(features, labels, logits)`` rows.

The monitor tells its :class:`FeatureSource` when to capture (``set_active``), where the rows go (the
``sink`` given to :meth:`FeatureSource.attach`) and which eval passes it wants now (``wants``); the source
owns its share of the classifier's hook (:class:`~.capture.ClassifierHub`, one per classifier), the label
checks, the ignore index and the loaders of the extra passes.

An eval pass is made once per point of the run: it feeds every source on the classifier that would make
the same pass now (``mode="eval"``, the same data and forward, a measurement due), and those skip their
own. A source with other data makes its own pass, whose calls no other source sees.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from . import _lightning as lightning_internals
from .capture import ClassifierHub, FeatureCapture, eval_pass, model_pass, subscribe
from .classifier import default_inputs, default_labels, find_classifier, has_forward, known_num_classes
from .schedule import positive_int

Capture = Literal["hook", "manual"]
CAPTURES = ("hook", "manual")
#: ``sink(features, labels, logits, ignored)``: the kept rows of one classifier call (possibly none) and how
#: many rows the ignore index excluded.
Sink = Callable[[Tensor, Tensor, Tensor, int], None]
#: ``wants(kind, trainer)``: whether the monitor makes the eval pass ``kind`` (``"init"``, ``"epoch"``) now.
Wants = Callable[[str, Trainer], bool]


def _wants_none(kind: str, trainer: Trainer) -> bool:
    """The default ``wants``: no pass of another source feeds this one."""
    return False


class FeatureSource:
    """The data side of a monitor (``owner`` and ``name``: how messages name it, e.g.
    ``NeuralCollapseMonitor('nc')``; ``warn(key, message)``: its warn-once). The other arguments are the
    monitor's (see :data:`~hadainit.callbacks.base.SHARED_ARGS`)."""

    def __init__(
        self,
        mode: str = "train",
        capture: Capture = "hook",
        *,
        eval_loader: Any = None,
        eval_batches: int | None = None,
        val_dataloader_idx: int = 0,
        ignore_index: int | None = -100,
        labels_from_batch: Callable[[Any], Tensor] = default_labels,
        inputs_from_batch: Callable[[Any], Any] = default_inputs,
        forward_fn: Callable[[LightningModule, Any], Any] | None = None,
        owner: str = "monitor",
        name: str = "",
        warn: Callable[[str, str], None] = lambda key, message: None,
    ) -> None:
        if capture not in CAPTURES:
            raise ValueError(f"capture must be one of {CAPTURES}, got {capture!r}")
        positive_int(eval_batches, "eval_batches", allow_none=True)
        if isinstance(val_dataloader_idx, bool) or not isinstance(val_dataloader_idx, int) or val_dataloader_idx < 0:
            raise ValueError(f"val_dataloader_idx must be an int >= 0, got {val_dataloader_idx!r}")
        if mode != "eval" and (eval_loader is not None or eval_batches is not None):
            raise ValueError("eval_loader / eval_batches only apply to mode='eval'")
        if mode == "eval" and capture == "manual":
            raise ValueError("capture='manual' feeds the monitor from your training or validation step; "
                             "mode='eval' makes its own pass: use the hook")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
        for fn_name, fn in (("labels_from_batch", labels_from_batch), ("inputs_from_batch", inputs_from_batch)):
            if not callable(fn):
                raise TypeError(f"{fn_name} must be callable, got {type(fn).__name__}")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"forward_fn must be callable, got {type(forward_fn).__name__}")
        self.mode, self.capture = mode, capture
        self.eval_loader, self.eval_batches, self.val_dataloader_idx = eval_loader, eval_batches, val_dataloader_idx
        self.ignore_index = ignore_index
        self.labels_from_batch, self.inputs_from_batch, self.forward_fn = labels_from_batch, inputs_from_batch, forward_fn
        self.owner, self.name, self.warn = owner, name, warn
        self.active = False  # the coming calls are measured
        self.classifier: nn.Linear | None = None
        self.fed: tuple | None = None  # the point of the run whose eval pass fed this source last
        self._capture = FeatureCapture(self)  # this source's share of the classifier's hook
        self._hub: ClassifierHub | None = None  # the hook of the classifier attached to
        self._sink: Sink | None = None
        self._wants: Wants = _wants_none

    # ---------------------------------------------------------------- requirements
    def check_fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``mode="val"`` measures the validation batches: a fit without them would never measure."""
        if self.mode != "val":
            return
        from lightning.pytorch.utilities.model_helpers import is_overridden

        defined = lightning_internals.has_val_loader(trainer)
        if not defined or not is_overridden("validation_step", pl_module):
            missing = "no validation loader" if not defined else "no validation_step"
            raise ValueError(f"{self.owner}({self.name!r}, mode='val') measures the validation batches, but this fit "
                             f"has {missing}: pass val_dataloaders=... to fit (or a datamodule with val_dataloader) "
                             "and define validation_step, or use mode='eval' or 'train'")
        if trainer.limit_val_batches == 0:
            raise ValueError(f"{self.owner}({self.name!r}, mode='val') measures the validation batches, but "
                             "limit_val_batches=0 runs none: allow some, or use mode='eval' or 'train'")

    @property
    def label(self) -> str:
        return f"{self.owner}({self.name!r})"

    def locate(self, trainer: Trainer, pl_module: LightningModule, path: str | None,
               num_classes: int | None) -> tuple[str, nn.Linear]:
        """Find the classifier (:func:`~.classifier.find_classifier`; ``num_classes`` default: the module's or
        datamodule's), known from now on, and check that the module can make this source's passes."""
        name, self.classifier = find_classifier(pl_module, path, known_num_classes(num_classes, trainer, pl_module))
        self.check_forward(pl_module)
        return name, self.classifier

    def check_forward(self, pl_module: LightningModule) -> None:
        """``mode="eval"`` runs the module itself: it needs a ``forward`` (or ``forward_fn``)."""
        if self.mode == "eval" and self.forward_fn is None and not has_forward(pl_module):
            raise ValueError(f"{type(pl_module).__name__} has no forward(): mode='eval' needs forward_fn=... "
                             "(or use mode='train', which captures the training steps' calls)")

    # ---------------------------------------------------------------- binding
    def attach(self, classifier: nn.Linear, sink: Sink, wants: Wants | None = None) -> None:
        """Capture ``classifier``'s calls (through its hub's hook) and hand the rows to ``sink``; ``wants``: the
        eval passes the monitor makes now (another source's same pass then feeds this one)."""
        self.detach()
        self.classifier, self._sink = classifier, sink
        if wants is not None:
            self._wants = wants
        self._hub = subscribe(classifier, self._capture)

    def detach(self) -> None:
        """Leave the classifier's hook (the classifier stays known, e.g. for a checkpoint's shape)."""
        if self._hub is not None:
            self._hub.leave(self._capture)
            self._hub = None
        self.active = self._capture.active = False
        self.fed = None

    def set_active(self, active: bool) -> None:
        """Measure the coming calls (or not): the hook captures unless the user feeds ``update()``."""
        self.active = active
        self._capture.active = active and self.capture == "hook" and self._hub is not None

    # ---------------------------------------------------------------- the three ways in
    def take_batch(self, batch: Any) -> None:
        """Hand on the calls the hook captured during ``batch`` (a training or validation step)."""
        if self._capture.calls:
            self.consume(self._capture.take(), batch)

    def update(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """``capture="manual"``: one call's features and labels (logits default to the current classifier's)."""
        if self.capture != "manual":
            raise RuntimeError(f"{self.label} captures through a forward hook; "
                               "construct it with capture='manual' to feed it with update()")
        if not self.active:
            return
        if logits is None:
            with torch.no_grad():
                logits = self.classifier(features.detach())
        self.consume([(features.detach(), logits.detach())], labels=labels)

    def run_pass(self, trainer: Trainer, pl_module: LightningModule, loader, limit,
                 receivers: list[FeatureSource] = ()) -> None:
        """An eval-mode pass over ``loader`` feeding this source and ``receivers`` through the hook (also with
        capture='manual'); no other source's capture sees its calls."""
        sources = [self, *receivers]
        for source in sources:
            source.active = source._capture.active = True

        def consume(batch: Any) -> None:
            for source in sources:
                source.consume(source._capture.take(), batch)

        try:
            with model_pass(pl_module, self._hub, [source._capture for source in sources]):
                eval_pass(trainer, pl_module, loader, limit, self._forward, consume)
        finally:
            for source in sources:
                source.set_active(False)

    def shared_pass(self, trainer: Trainer, pl_module: LightningModule, kind: str, loader, limit) -> None:
        """The eval pass ``kind`` (``"init"``, ``"epoch"``) of this point of the run, made once: nothing when
        another source's pass fed this one already, else it also feeds every source on the classifier that
        would make the same pass now (:meth:`makes_same_pass`)."""
        point = (kind, trainer.current_epoch, trainer.global_step)
        if self.fed == point:
            return
        receivers = [c.owner for c in self._hub.captures if isinstance(c.owner, FeatureSource) and c.owner is not self
                     and c.owner.makes_same_pass(self, point, trainer)]
        for source in (self, *receivers):
            source.fed = point
        self.run_pass(trainer, pl_module, loader, limit, receivers)

    def makes_same_pass(self, other: FeatureSource, point: tuple, trainer: Trainer) -> bool:
        """Whether this source would make ``other``'s eval pass at ``point`` (``(kind, epoch, step)``) itself:
        both ``mode="eval"`` with the same data (``eval_loader`` object, ``eval_batches``) and forward
        (``forward_fn``, ``inputs_from_batch``), not fed at this point yet, and its monitor wants the pass now."""
        return (self.mode == other.mode == "eval" and self.fed != point
                and self.eval_loader is other.eval_loader and self.eval_batches == other.eval_batches
                and self.forward_fn is other.forward_fn and self.inputs_from_batch is other.inputs_from_batch
                and self._wants(point[0], trainer))

    def epoch_pass(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``mode="eval"``: the extra pass at the end of an epoch (or its share of another source's); else nothing."""
        if self.mode == "eval":
            self.shared_pass(trainer, pl_module, "epoch", *self.eval_data(trainer))

    def init_pass(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """The pass of the measurement at initialization; False (warned) when there is none to make."""
        if self.forward_fn is None and not has_forward(pl_module):
            self.warn("init", f"{self.label}: no values at initialization: "
                      f"{type(pl_module).__name__} has no forward(); pass forward_fn=...")
            return False
        loader, limit = self.val_data(trainer) if self.mode == "val" else self.eval_data(trainer)
        if loader is None:
            self.warn("init", f"{self.label}: no data loader at initialization")
            return False
        self.shared_pass(trainer, pl_module, "init", loader, limit)
        return True

    # ---------------------------------------------------------------- rows
    def consume(self, calls: list[tuple[Tensor, Tensor]], batch: Any = None, labels: Tensor | None = None) -> None:
        """Check the labels of ``batch`` (or ``labels``) against each call and hand the kept rows to the sink."""
        labels = self.labels_from_batch(batch) if labels is None else labels
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a tensor, got {type(labels).__name__}: pass labels_from_batch=...")
        k, d = self.classifier.out_features, self.classifier.in_features
        hint = ("pass labels_from_batch=lambda batch: batch[1].argmax(-1) for one-hot or soft labels, or another "
                "function returning the class indices")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"{self.label}: labels must be integer class indices, got dtype "
                            f"{labels.dtype} (shape {tuple(labels.shape)}): {hint}")
        if labels.dim() == 2 and labels.shape[1] == k and any(f.numel() // d == labels.shape[0] for f, _ in calls):
            raise ValueError(f"{self.label}: labels of shape {tuple(labels.shape)} look "
                             f"one-hot (one row of {k} per sample): {hint}")
        labels = labels.reshape(-1)
        for features, logits in calls:
            features, logits = features.reshape(-1, d), logits.reshape(-1, k)
            if features.shape[0] != labels.shape[0]:
                self.warn("rows", f"{self.label}: a call of the classifier with "
                          f"{features.shape[0]} rows does not match the batch's {labels.shape[0]} labels and is "
                          "skipped (only calls with one row per label are measured; for other layouts use "
                          "capture='manual' and update(features, labels))")
                continue
            y = labels.to(features.device)
            keep = y != self.ignore_index if self.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
            bad = keep & ((y < 0) | (y >= k))
            n_keep, n_bad = torch.stack((keep.sum(), bad.sum())).tolist()  # one device sync per call
            if n_bad:
                raise ValueError(f"{self.label}: labels must lie in [0, {k}) or equal "
                                 f"ignore_index={self.ignore_index}; got {y[bad][:5].tolist()}")
            if n_keep < y.shape[0]:
                features, logits, y = features[keep], logits[keep], y[keep]
            self._sink(features, y, logits, labels.shape[0] - n_keep)

    def _forward(self, pl_module: LightningModule, batch: Any) -> Any:
        if self.forward_fn is not None:
            return self.forward_fn(pl_module, batch)
        return pl_module(self.inputs_from_batch(batch))

    # ---------------------------------------------------------------- the passes' data
    def eval_data(self, trainer: Trainer):
        """The extra pass's data: ``eval_loader`` whole, or the training batches (``eval_batches``, else as
        many as ``limit_train_batches`` allows)."""
        if self.eval_loader is not None:
            return self.eval_loader, self.eval_batches
        limit = self.eval_batches if self.eval_batches is not None else trainer.num_training_batches
        return trainer.train_dataloader, None if not math.isfinite(limit) else int(limit)

    def val_data(self, trainer: Trainer):
        """The monitored validation loader and its batch limit (Lightning sets them up lazily)."""
        lightning_internals.setup_val_data(trainer)
        loaders = trainer.val_dataloaders
        if not isinstance(loaders, (list, tuple)):
            loaders = [] if loaders is None else [loaders]
        if self.val_dataloader_idx >= len(loaders):
            return None, None
        limits = trainer.num_val_batches
        limit = limits[self.val_dataloader_idx] if isinstance(limits, list) and len(limits) > self.val_dataloader_idx else None
        return loaders[self.val_dataloader_idx], None if limit is None or not math.isfinite(limit) else int(limit)
