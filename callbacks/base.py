"""The life cycle the monitors share: find the classifier, capture its calls, decide when, compute, log, plot, resume.

A monitor measures at the end of every ``every_n_epochs``-th training epoch (or of the
epochs listed in ``at_epochs``, counted from 1, e.g. :func:`log_spaced_epochs` for long runs)
(``mode="train"``: the features of that epoch's training steps; ``"eval"``: one
extra eval-mode pass) or at the end of each validation run (``mode="val"``, also
under ``trainer.validate``), and once at initialization, before the first step.

Values are written to every logger of the trainer (with the epoch and global
step) and to ``trainer.callback_metrics`` as float64 scalars as soon as they are
computed, so ``ModelCheckpoint(monitor=...)`` and ``EarlyStopping`` see them. They
are global already (the metric states are synced across DDP ranks, every rank
computes the same numbers), so they are not reduced again.
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from torchmetrics import Metric

from hadainit.drift import InitialBasis

from .capture import (
    FeatureCapture,
    SampleCount,
    default_inputs,
    default_labels,
    find_classifier,
    has_forward,
    metric_checkpoint,
    quiet_compute,
    restore_metric,
)
from . import _lightning as lightning_internals
from .feed import Feeding
from .plotting import plot_history

Mode = Literal["train", "eval", "val"]
Capture = Literal["hook", "manual"]
MODES = ("train", "eval", "val")
CAPTURES = ("hook", "manual")
STATE_VERSION = 2


#: The Args of the options both monitors take (appended to their docstrings: ``--help`` shows them).
SHARED_ARGS = """
        num_classes: K; default: the module's or datamodule's ``num_classes``, used to find the
            classifier (the ``nn.Linear`` with K outputs) when ``classifier`` is not given.
        classifier: attribute path of the classifier ``nn.Linear`` (e.g. ``"model.fc"``).
        mode: where the features come from: ``"train"`` (the training steps), ``"eval"`` (an extra
            eval-mode pass at the end of the epoch), ``"val"`` (the validation batches; needs a
            validation loader).
        every_n_epochs: measure at the end of every n-th training epoch.
        at_epochs: or at these epoch counts (e.g. :func:`~hadainit.callbacks.log_spaced_epochs`).
        eval_loader: ``mode="eval"``: the loader of the extra pass (default: the training loader).
        eval_batches: ``mode="eval"``: at most this many batches (default: as ``limit_train_batches``).
        val_dataloader_idx: ``mode="val"``: which validation loader is measured.
        name: the key prefix (``<name>/<key>``); default by class and mode (``nc``, ``nc_eval``, ...).
        plot: write the history figures at the end of the fit.
        plot_dir: where (default ``trainer.log_dir``; checked at setup).
        log_at_init: measure once before the first step (eval mode).
        capture: ``"hook"`` (a forward hook on the classifier) or ``"manual"`` (call ``update()``).
        ignore_index: labels excluded from the measurement (None: none).
        labels_from_batch: the labels of a batch (default: ``batch[1]``).
        inputs_from_batch: the inputs of a batch, for the eval pass (default: ``batch[0]``).
        forward_fn: ``forward_fn(module, inputs)`` for a module without ``forward``.
"""


def _positive_int(value, name: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _plain(value):
    """A metric's value as the history keeps it: a 0-d tensor as a float, a 1-d one as a list."""
    if isinstance(value, Tensor):
        return float(value) if value.dim() == 0 else value.detach().cpu().tolist()
    return value


def _check_writable(path: Path, what: str) -> None:
    """``path`` is (or can be made as) a writable folder: said at setup, not after the last epoch."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies under {parent}, which is a file"
                raise ValueError(f"{what} {path} {where}, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{what} {path}: {parent} is not writable")
            return


class MonitorBase(Feeding, Callback):
    """Shared by :class:`NeuralCollapseMonitor` and :class:`SpectralMonitor`; see the module docstring."""

    PREFIX: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]]  # every scalar key the monitor can log
    PLOT_NAME: ClassVar[str]
    TITLE: ClassVar[str]

    def __init__(
        self,
        num_classes: int | None = None,
        *,
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
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if capture not in CAPTURES:
            raise ValueError(f"capture must be one of {CAPTURES}, got {capture!r}")
        _positive_int(every_n_epochs, "every_n_epochs")
        if at_epochs is not None:
            if every_n_epochs != 1:
                raise ValueError("give every_n_epochs or at_epochs, not both")
            if isinstance(at_epochs, (str, bytes)) or not all(
                    isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in at_epochs):
                raise ValueError(f"at_epochs must be a list of epoch counts >= 1, got {at_epochs!r}")
        _positive_int(eval_batches, "eval_batches", allow_none=True)
        if isinstance(val_dataloader_idx, bool) or not isinstance(val_dataloader_idx, int) or val_dataloader_idx < 0:
            raise ValueError(f"val_dataloader_idx must be an int >= 0, got {val_dataloader_idx!r}")
        if mode != "eval" and (eval_loader is not None or eval_batches is not None):
            raise ValueError("eval_loader / eval_batches only apply to mode='eval'")
        if mode == "eval" and capture == "manual":
            raise ValueError("capture='manual' feeds the monitor from your training or validation step; "
                             "mode='eval' makes its own pass: use the hook")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if classifier is not None and not isinstance(classifier, str):
            raise TypeError(f"classifier must be an attribute path string, got {type(classifier).__name__}")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
        if metrics is not None:
            if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
                raise TypeError(f"metrics must be a list of key names, got {metrics!r}")
            unknown = sorted(set(metrics) - set(self.KEYS))
            if unknown:
                raise ValueError(f"unknown metrics {unknown} for {type(self).__name__}; choose from {list(self.KEYS)}")
        for fn_name, fn in (("labels_from_batch", labels_from_batch), ("inputs_from_batch", inputs_from_batch)):
            if not callable(fn):
                raise TypeError(f"{fn_name} must be callable, got {type(fn).__name__}")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"forward_fn must be callable, got {type(forward_fn).__name__}")
        self.num_classes = num_classes
        self.classifier_path = classifier
        self.mode = mode
        self.every_n_epochs = every_n_epochs
        self.at_epochs = None if at_epochs is None else frozenset(at_epochs)
        self.eval_loader = eval_loader
        self.eval_batches = eval_batches
        self.val_dataloader_idx = val_dataloader_idx
        self.name = name or (self.PREFIX if mode == "train" else f"{self.PREFIX}_{mode}")
        self.metrics = None if metrics is None else tuple(metrics)
        self.plot = bool(plot)
        self.plot_dir = None if plot_dir is None else Path(plot_dir)
        self.log_at_init = bool(log_at_init)
        self.capture = capture
        self.ignore_index = ignore_index
        self.labels_from_batch = labels_from_batch
        self.inputs_from_batch = inputs_from_batch
        self.forward_fn = forward_fn
        self.history: list[dict] = []
        self.basis: InitialBasis | None = None
        self._loaded = False
        self._pending_metrics: dict | None = None
        self._hook: FeatureCapture | None = None
        self._active = False
        self._finished_epoch: int | None = None
        self._warned: set[str] = set()
        self._bound = False
        self._classifier = None
        self._metrics: dict = {}
        self._last_weight = None  # the classifier weight the last fit monitored (a weak reference)
        self._from_trained = False  # this fit starts from weights an earlier fit trained (basis: their SVD)

    # --------------------------------------------------------------- identity
    @property
    def state_key(self) -> str:
        caller = sys._getframe(1)  # Lightning's check of the callback list (Trainer(...)) asks first: our message
        if caller.f_code.co_name == "_validate_callbacks_list":
            self._refuse_twins(caller.f_locals.get("callbacks") or [])
        return self._generate_state_key(name=self.name, classifier=self.classifier_path, mode=self.mode)

    def _refuse_twins(self, callbacks) -> None:
        others = [cb for cb in callbacks if isinstance(cb, MonitorBase) and cb is not self and cb.name == self.name]
        if others:
            raise ValueError(
                f"two monitors log under {self.name!r}/: give each a distinct name=... "
                f"({type(self).__name__} and {type(others[0]).__name__})"
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # ------------------------------------------------------ subclass interface
    def _build(self, num_classes: int, feature_dim: int) -> dict[str, Metric]:
        """The metrics accumulating one measurement (a dict name -> Metric)."""
        raise NotImplementedError

    def _consume(self, features: Tensor, labels: Tensor, logits: Tensor) -> None:
        raise NotImplementedError

    def _compute(self, trainer: Trainer, epochs_done: float, samples: float) -> dict:
        """The values of one measurement after ``epochs_done`` epochs, from ``samples`` samples (over all
        ranks: a decision taken on it is the same on every rank); ``ValueError`` when undefined (warned)."""
        raise NotImplementedError

    def _figures(self, directory: Path) -> list:
        """Figures beyond the history panels (saved under ``directory``); default none."""
        return []

    needs_basis: ClassVar[bool] = False
    init_basis: Any = None

    # ------------------------------------------------------------------ setup
    def _reset(self) -> None:
        self.history = []
        self.basis = None
        self._pending_metrics = None
        self._finished_epoch = None
        self._warned = set()

    def _known_num_classes(self, trainer: Trainer, pl_module: LightningModule) -> int | None:
        """``num_classes``, else the module's or the datamodule's ``num_classes`` (hyperparameter or attribute)."""
        hparams = getattr(pl_module, "hparams", None)
        for value in (
            self.num_classes,
            hparams.get("num_classes") if isinstance(hparams, dict) else None,
            getattr(pl_module, "num_classes", None),
            getattr(trainer.datamodule, "num_classes", None),
        ):
            if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
                return value
        return None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._refuse_twins(trainer.callbacks)
        if stage == "fit" and self.mode == "val":
            self._check_val_loader(trainer, pl_module)
        if not trainer.loggers:
            self._warn_once("no-logger", f"{type(self).__name__}({self.name!r}): the trainer has no logger: the values "
                            "go to the monitor's history and trainer.callback_metrics only"
                            + ("" if self.plot_dir is not None or not self.plot else ", and no figures are made "
                               "(pass plot_dir=... for them)"))
        if self.plot and self.plot_dir is not None:
            _check_writable(self.plot_dir, "plot_dir")
        # the classifier is found later (_bind): the module's own setup() and configure_model() run after
        # this hook and may build or replace layers; a checkpoint's state is loaded in between
        self._unbind()
        self._plot_dir = self.plot_dir
        if self._plot_dir is None and self.plot and trainer.loggers:
            log_dir = trainer.log_dir  # a collective under DDP: called on every rank
            self._plot_dir = None if log_dir is None else Path(log_dir)

    def _check_val_loader(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``mode="val"`` measures the validation batches: a fit without them would never measure."""
        from lightning.pytorch.utilities.model_helpers import is_overridden

        defined = lightning_internals.has_val_loader(trainer)
        if not defined or not is_overridden("validation_step", pl_module):
            missing = "no validation loader" if not defined else "no validation_step"
            raise ValueError(f"{type(self).__name__}({self.name!r}, mode='val') measures the validation batches, but "
                             f"this fit has {missing}: pass val_dataloaders=... to fit (or a datamodule with "
                             "val_dataloader) and define validation_step, or use mode='eval' or 'train'")
        if trainer.limit_val_batches == 0:
            raise ValueError(f"{type(self).__name__}({self.name!r}, mode='val') measures the validation batches, but "
                             "limit_val_batches=0 runs none: allow some, or use mode='eval' or 'train'")

    def _unbind(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._bound = False
        self._classifier = None
        self._metrics = {}

    def _bind(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Find the classifier, build the metrics, attach the hook: at the start of a fit or a validation,
        after the module's setup/configure_model and after a checkpoint's state was loaded."""
        if self._bound:
            return
        name, classifier = find_classifier(pl_module, self.classifier_path, self._known_num_classes(trainer, pl_module))
        if self.mode == "eval" and self.forward_fn is None and not has_forward(pl_module):
            raise ValueError(f"{type(pl_module).__name__} has no forward(): mode='eval' needs forward_fn=... "
                             "(or use mode='train', which captures the training steps' calls)")
        previous = None if self._last_weight is None else self._last_weight()
        same_model = previous is classifier.weight
        self._from_trained = False
        if trainer.state.fn == "fit" and not self._loaded:
            if not (same_model and trainer.global_step > 0):  # a fit of another model, or a fresh Trainer
                if same_model and self.history:
                    self._warn_once("refit", f"{type(self).__name__}({self.name!r}): this fit (a new Trainer) starts "
                                    "from weights an earlier fit trained: the history starts afresh and drift is "
                                    "measured from the SVD of the weights now. To continue the history, continue "
                                    "with the same Trainer (fit again with a larger max_epochs) or resume from its "
                                    "checkpoint.")
                    self._from_trained = True
                self._reset()
            # else: the same Trainer continues training the same model: history and initial basis go on
        elif not self._loaded and not same_model and (self.history or self.basis is not None):
            self._reset()  # trainer.validate of another model than the one this monitor followed
        self._classifier_name, self._classifier = name, classifier
        self._check_restored(classifier)
        k, d = classifier.out_features, classifier.in_features
        self._metrics = self._build(k, d)
        self._metrics["count"] = SampleCount()
        for metric in self._metrics.values():  # on the module's device: a sync (NCCL) before the first batch works
            metric.to(pl_module.device)
        if self._pending_metrics is not None:
            self._restore_metrics(self._pending_metrics)
            self._pending_metrics = None
        self._hook = FeatureCapture(classifier)
        self._last_weight = weakref.ref(classifier.weight)
        self._bound = True
        if trainer.state.fn == "fit":
            self._check_schedules(trainer)

    def _check_restored(self, classifier) -> None:
        """A restored state must fit the classifier found (its shape was unknown when it was loaded)."""
        if self.basis is not None:
            self.basis = InitialBasis.from_state_dict(self.basis.state_dict(), name="state 'basis'",
                                                      shape=(classifier.out_features, classifier.in_features))

    def _check_schedules(self, trainer: Trainer) -> None:
        """Checkpointing or early stopping on this monitor's keys at epochs it does not measure sees the last
        measured value (at first, the value at initialization): say so once, with the fix."""
        if self.mode == "val" or (self.every_n_epochs == 1 and self.at_epochs is None):
            return
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        for cb in trainer.callbacks:
            key = getattr(cb, "monitor", None)
            if not isinstance(cb, (ModelCheckpoint, EarlyStopping)) or not isinstance(key, str):
                continue
            if not key.startswith(f"{self.name}/"):
                continue
            every = lightning_internals.every_n_epochs(cb)
            every = 1 if every is None else every
            if self.at_epochs is None and isinstance(cb, ModelCheckpoint) and every and every % self.every_n_epochs == 0:
                continue
            schedule = f"every {self.every_n_epochs} epochs" if self.at_epochs is None else "at the epochs in at_epochs"
            fix = (f"ModelCheckpoint(every_n_epochs={self.every_n_epochs}, ...)" if isinstance(cb, ModelCheckpoint)
                   else "patience counted in measured epochs")
            self._warn_once(f"schedule-{id(cb)}", f"{type(cb).__name__}(monitor={key!r}) runs every epoch, but "
                            f"{type(self).__name__}({self.name!r}) measures {schedule}: at the other epochs it sees "
                            f"the last measured value (before the first measurement, the value at initialization). "
                            f"Use {fix}, or measure every epoch.")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._bound = False
        self._active = False
        self._loaded = False  # a state loaded for this stage (fit, or validate with ckpt_path) is used up

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "exception")  # never leave the hook on a model whose run failed
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit":
            try:  # Ctrl-C: the figures of the epochs so far
                self._plot(trainer)
            except Exception as err:  # never mask the interrupt
                rank_zero_warn(f"{type(self).__name__}: no figures after the interrupt: {err}")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._bind(trainer, pl_module)
        if not getattr(trainer.strategy, "restore_checkpoint_after_setup", False):
            self._ensure_basis(trainer)  # else at the start of training, once the checkpoint is loaded

    def _ensure_basis(self, trainer: Trainer) -> None:
        """The initial basis, taken once the weights are final for the start of training: after the DDP
        broadcast and after a checkpoint's weights and callback state were loaded (for every strategy,
        also those that restore after setup)."""
        if not self.needs_basis or self.basis is not None:
            return
        resumed_without_state = trainer.ckpt_path is not None and not self._loaded
        if resumed_without_state:
            self._warn_once("resume", f"{type(self).__name__}({self.name!r}): the checkpoint has no state of this "
                            "callback; its history starts now and its initial basis is taken from the resumed weights")
        kind = "svd" if resumed_without_state or self._from_trained else self.init_basis
        self.basis = self._initial_basis(self._classifier.weight, kind)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._bind(trainer, pl_module)  # trainer.validate: no fit bound it

    def _initial_basis(self, weight: Tensor, kind) -> InitialBasis:
        from hadainit.drift import monitor_basis  # the whole policy: given, detected from W(0), or the SVD

        basis, warning = monitor_basis(weight, kind)
        if warning is not None:
            self._warn_once("guessed", f"{type(self).__name__}({self.name!r}): {warning}")
        return basis

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._ensure_basis(trainer)
        if self.log_at_init and not self.history and trainer.global_step == 0:
            self._measure_init(trainer, pl_module)

    # ----------------------------------------------------------- when to work
    def _due(self, trainer: Trainer) -> bool:
        done = trainer.current_epoch + 1
        due = done in self.at_epochs if self.at_epochs is not None else done % self.every_n_epochs == 0
        return due and not trainer.sanity_checking

    def _set_active(self, active: bool) -> None:
        """Measure the coming batches (or not): the hook captures unless the user feeds ``update()``."""
        self._active = active
        if self._hook is not None:
            self._hook.active = active and self.capture == "hook"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # decided per batch: Lightning skips on_train_epoch_start when resuming mid-epoch
        self._set_active(self.mode == "train" and self._due(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._hook is not None and self._hook.calls:
            self._consume_calls(self._hook.take(), batch)
        self._set_active(False)
        # measure before the epoch's validation runs, so checkpoint callbacks see this epoch's values
        last = lightning_internals.is_last_batch(trainer) or batch_idx + 1 >= trainer.num_training_batches
        if self.mode != "val" and self._due(trainer) and last:
            self._finish_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._set_active(False)
        if self.mode != "val" and self._due(trainer) and self._finished_epoch != trainer.current_epoch:
            self._finish_epoch(trainer, pl_module, step_back=1)

    def _finish_epoch(self, trainer: Trainer, pl_module: LightningModule, step_back: int = 0) -> None:
        """Measure the epoch; ``step_back``: Lightning counted the last batch already (at the epoch's end it logs
        the epoch's rows one step back, and so do we)."""
        self._finished_epoch = trainer.current_epoch
        if self.mode == "eval":
            self._pass(trainer, pl_module, *self._eval_loader(trainer))
        # a whole epoch, or less when max_steps (or a stop) ended it early
        self._measure(trainer, trainer.current_epoch, self._epochs_done(trainer, epoch_end=True), step_back)

    def _val_active(self, trainer: Trainer) -> bool:
        if self.mode != "val" or trainer.sanity_checking:
            return False
        return trainer.state.fn != "fit" or self._due(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        # one validation loader per monitor (several loaders are several data sets)
        self._set_active(self._val_active(trainer) and dataloader_idx == self.val_dataloader_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._hook is not None and self._hook.calls:
            self._consume_calls(self._hook.take(), batch)
        self._set_active(False)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._val_active(trainer):
            self._measure(trainer, trainer.current_epoch, self._epochs_done(trainer))

    @staticmethod
    def _epochs_done(trainer: Trainer, epoch_end: bool = False) -> float:
        """Training epochs completed, with the fraction of the current one (validation may run mid-epoch;
        max_steps may end an epoch early). A loader without a length: whole epochs only."""
        batches = trainer.num_training_batches
        if trainer.state.fn != "fit" or not math.isfinite(batches) or batches < 1:
            return trainer.current_epoch + (1.0 if epoch_end and trainer.state.fn == "fit" else 0.0)
        return trainer.current_epoch + lightning_internals.batches_ready(trainer) / batches

    # ---------------------------------------------------------- measure, log
    def _measure(self, trainer: Trainer, epoch: int, epochs_done: float, step_back: int = 0) -> None:
        try:
            counts = quiet_compute(self._metrics["count"])  # synced: every rank takes the same branches below
            values = {k: _plain(v) for k, v in self._compute(trainer, epochs_done, counts["num_samples"]).items()}
            values.update({k: _plain(v) for k, v in counts.items()})
        except ValueError as err:  # undefined (collapsed or non-finite features, a class missing): say so, go on
            self._warn_once(f"undefined:{err}", f"{type(self).__name__}({self.name!r}): values not logged at "
                            f"{'initialization' if epoch < 0 else f'epoch {epoch}'}: {err} (said once; the same cause "
                            "at a later epoch is not repeated)")
            values = None
        finally:
            for metric in self._metrics.values():
                metric.reset()
        if values is None:
            return
        # the step Lightning logs its own rows of this point at (its loggers' x axis), not global_step
        step = max(0, lightning_internals.logger_step(trainer) - step_back)
        row = {"epoch": epoch, "step": step, "epochs_done": epochs_done, **values}
        self.history.append(row)
        self._publish(trainer, row)

    def _selected(self, key: str) -> bool:
        return key in self.KEYS and (self.metrics is None or key in self.metrics)

    def _publish(self, trainer: Trainer, row: dict) -> None:
        scalars = {f"{self.name}/{k}": float(v) for k, v in row.items()
                   if self._selected(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
        module = trainer.lightning_module
        if trainer.state.fn != "fit" and trainer.validating and module is not None:
            # trainer.validate: through the module's log, so the values are also in what validate() returns
            for key, value in scalars.items():  # equal on every rank: the sync is an exact no-op, and quiet
                module.log(key, torch.tensor(value, dtype=torch.float64, device=module.device), on_step=False,
                           on_epoch=True, add_dataloader_idx=False, sync_dist=True)
            return
        for key, value in scalars.items():
            trainer.callback_metrics[key] = torch.tensor(value, dtype=torch.float64)
        from lightning.pytorch.loggers import CSVLogger

        for logger in trainer.loggers:  # loggers write on rank zero only
            sep = getattr(logger, "group_separator", "/")
            values = {k.replace("/", sep, 1): v for k, v in scalars.items()}
            if isinstance(logger, CSVLogger):  # a table: where the row belongs (epoch -1: initialization), as
                values.update(epoch=row["epoch"], epochs_done=row["epochs_done"])  # hadainit's readers use
            logger.log_metrics(values, step=row["step"])

    # ------------------------------------------------------------------- plot
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._plot(trainer)

    @rank_zero_only
    def _plot(self, trainer: Trainer) -> None:
        if not self.plot or self._plot_dir is None or not self.history:
            return
        self._plot_dir.mkdir(parents=True, exist_ok=True)
        keys = [k for k in self.KEYS if self._selected(k)]
        figures = [(self.PLOT_NAME, plot_history(self.history, self._plot_dir / f"{self.name}.png",
                                                 f"{self.TITLE} ({self.name})", keys))]
        figures += self._figures(self._plot_dir)
        for tag, fig in figures:
            if fig is None:
                continue
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                try:
                    if hasattr(experiment, "add_figure"):  # TensorBoard
                        experiment.add_figure(f"{self.name}{getattr(logger, 'group_separator', '/')}{tag}", fig,
                                              global_step=lightning_internals.logger_step(trainer))
                    elif hasattr(logger, "log_image"):  # e.g. Weights & Biases
                        logger.log_image(key=f"{self.name}/{tag}", images=[fig])
                except Exception as err:  # a logger that cannot take images must not end the run
                    rank_zero_warn(f"{type(self).__name__}: could not send the figure to {type(logger).__name__}: {err}")

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        state = {"version": STATE_VERSION, "history": self.history,
                 "basis": None if self.basis is None else self.basis.state_dict()}
        if getattr(self, "_metrics", None):  # mid-epoch checkpoints carry the epoch's partial sums
            state["metrics"] = {name: metric_checkpoint(m) for name, m in self._metrics.items()}
        return state

    def _restore_metrics(self, saved: dict) -> None:
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint state 'metrics' must be a dict, got {type(saved).__name__}")
        for name, metric in self._metrics.items():
            if name not in saved:
                raise ValueError(f"checkpoint state metrics.{name} is missing")
            restore_metric(metric, saved[name], f"metrics.{name}")

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict):
            raise ValueError(f"{type(self).__name__} state must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"{type(self).__name__} state has version {state_dict.get('version')!r}, "
                             f"expected {STATE_VERSION} (a checkpoint of another hadainit version)")
        for key in ("history", "basis"):
            if key not in state_dict:
                raise ValueError(f"{type(self).__name__} state is missing the key {key!r}")
        history = state_dict["history"]
        if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
            raise ValueError(f"{type(self).__name__} state 'history' must be a list of dicts")
        classifier = getattr(self, "_classifier", None)
        shape = None if classifier is None else (classifier.out_features, classifier.in_features)
        basis = state_dict["basis"]
        self.basis = None if basis is None else InitialBasis.from_state_dict(basis, shape=shape, name="state 'basis'")
        self.history = [dict(row) for row in history]
        saved = state_dict.get("metrics")
        if saved is not None:
            if getattr(self, "_metrics", None):
                self._restore_metrics(saved)
            else:
                self._pending_metrics = saved
        self._loaded = True
