"""The life cycle the monitors share, composed of named parts (one question, one place):

=======================  ==========================================  ==========================
question                 part                                        module
=======================  ==========================================  ==========================
when does it measure?    :class:`~.schedule.Schedule`                ``callbacks/schedule.py``
what data does it see?   :class:`~.source.FeatureSource`             ``callbacks/source.py``
where does a value go?   :class:`~.publish.Publisher`                ``callbacks/publish.py``
what does it keep?       :class:`~.state.MonitorState`               ``callbacks/state.py``
where does the run       :class:`~.phase.Phase`, decided by          ``callbacks/phase.py``
stand?                   :func:`~.phase.decide_phase`
=======================  ==========================================  ==========================

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

A subclass defines what one measurement is (``_build``, ``_consume``, ``_compute``, ``_figures``);
:meth:`MonitorBase.add_extension` adds values to every row (e.g. :class:`~.forecast.SpectralForecast`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from . import _lightning as lightning_internals
from .capture import SampleCount, default_inputs, default_labels, find_classifier, known_num_classes, quiet_compute
from .phase import Phase, decide_phase
from .plotting import plot_history
from .publish import Publisher, check_writable
from .schedule import Mode, Schedule, epochs_done
from .source import Capture, FeatureSource
from .state import MonitorState

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



def _plain(value):
    """A metric's value as the history keeps it: a 0-d tensor as a float, a 1-d one as a list."""
    if isinstance(value, Tensor):
        return float(value) if value.dim() == 0 else value.detach().cpu().tolist()
    return value


def _check_identity(cls, num_classes, classifier, name, metrics) -> None:
    """The monitor's own options (the schedule and the feature source check theirs)."""
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if classifier is not None and not isinstance(classifier, str):
        raise TypeError(f"classifier must be an attribute path string, got {type(classifier).__name__}")
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if metrics is not None:
        if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
            raise TypeError(f"metrics must be a list of key names, got {metrics!r}")
        unknown = sorted(set(metrics) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown} for {cls.__name__}; choose from {list(cls.KEYS)}")


class MonitorBase(Callback):
    """Shared by :class:`NeuralCollapseMonitor` and :class:`SpectralMonitor`; see the module docstring."""

    PREFIX: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]]  # every scalar key the monitor can log
    PLOT_NAME: ClassVar[str]
    TITLE: ClassVar[str]
    STATE: ClassVar[type[MonitorState]] = MonitorState

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
        self._warned: set[str] = set()
        self.schedule = Schedule(mode, every_n_epochs, at_epochs)
        self.source = FeatureSource(mode, capture, eval_loader=eval_loader, eval_batches=eval_batches,
                                    val_dataloader_idx=val_dataloader_idx, ignore_index=ignore_index,
                                    labels_from_batch=labels_from_batch, inputs_from_batch=inputs_from_batch,
                                    forward_fn=forward_fn, owner=type(self).__name__, warn=self._warn_once)
        _check_identity(type(self), num_classes, classifier, name, metrics)
        self.publisher = Publisher("", self._selected, owner=type(self).__name__)
        self.state = self.STATE(type(self).__name__)
        self.name = name or (self.PREFIX if mode == "train" else f"{self.PREFIX}_{mode}")
        self.num_classes, self.classifier_path = num_classes, classifier
        self.metrics = None if metrics is None else tuple(metrics)
        self.plot, self.plot_dir, self.log_at_init = bool(plot), None if plot_dir is None else Path(plot_dir), bool(log_at_init)
        self.phase: Phase | None = None  # decided when the monitor binds to a model; None between stages
        self.extensions: list = []
        self._classifier_name: str | None = None

    # ------------------------------------------------------------ the parts' faces
    name = property(lambda self: self.publisher.name, doc="The key prefix: values are logged as ``<name>/<key>``.")

    @name.setter
    def name(self, value: str) -> None:
        self.publisher.name = self.source.name = value

    mode = property(lambda self: self.schedule.mode, doc="Where the features come from (``train``, ``eval``, ``val``).")
    _classifier = property(lambda self: self.source.classifier)
    _metrics = property(lambda self: self.state.metrics)

    history = property(lambda self: self.state.history, lambda self, rows: setattr(self.state, "history", rows),
                       doc="One row per measurement: ``epoch`` (-1 at initialization), ``step``, ``epochs_done``, values.")
    basis = property(lambda self: self.state.basis, lambda self, basis: setattr(self.state, "basis", basis),
                     doc="The classifier's initial basis (:class:`~hadainit.drift.InitialBasis`) drift is measured from.")

    def update(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """Feed the monitor from your own step (``capture="manual"``): the classifier's input features and
        the labels (and its logits; default: computed with the current classifier). Calls outside the
        batches the monitor measures (other epochs, the sanity check) are ignored."""
        self.source.update(features, labels, logits)

    def add_extension(self, extension) -> None:
        """Add values to every measured row: ``extension.extend(trainer, epochs_done, values) -> dict`` is called
        after each measurement, ``extension.reset()`` when the history starts afresh."""
        self.extensions.append(extension)

    @property
    @override
    def state_key(self) -> str:
        checked = lightning_internals.callbacks_in_check()  # Trainer(...)'s check of its callbacks asks first
        if checked is not None:
            self._refuse_twins(checked)
        return self._generate_state_key(name=self.name, classifier=self.classifier_path, mode=self.mode)

    def _refuse_twins(self, callbacks) -> None:
        others = [cb for cb in callbacks if isinstance(cb, MonitorBase) and cb is not self and cb.name == self.name]
        if others:
            raise ValueError(f"two monitors log under {self.name!r}/: give each a distinct name=... "
                             f"({type(self).__name__} and {type(others[0]).__name__})")

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

    def _weights_final(self, trainer: Trainer) -> None:
        """Called once the weights are final for the start of training (after a DDP broadcast and a checkpoint's
        restore, for every strategy); default nothing."""

    def _set_active(self, active: bool) -> None:
        self.source.set_active(active)

    def _selected(self, key: str) -> bool:
        return key in self.KEYS and (self.metrics is None or key in self.metrics)

    # ------------------------------------------------------------------ binding
    def _reset(self) -> None:
        self.state.reset()
        self.schedule.reset()
        self._warned = set()
        for extension in self.extensions:
            extension.reset()

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._refuse_twins(trainer.callbacks)
        if stage == "fit":
            self.source.check_fit(trainer, pl_module)
        if not trainer.loggers:
            self._warn_once("no-logger", f"{type(self).__name__}({self.name!r}): the trainer has no logger: the values "
                            "go to the monitor's history and trainer.callback_metrics only"
                            + ("" if self.plot_dir is not None or not self.plot else ", and no figures are made "
                               "(pass plot_dir=... for them)"))
        if self.plot and self.plot_dir is not None:
            check_writable(self.plot_dir, "plot_dir")
        # the classifier is found later (_bind): the module's own setup() and configure_model() run after
        # this hook and may build or replace layers; a checkpoint's state is loaded in between
        self.source.detach()
        self.source.classifier, self.phase, self.state.metrics = None, None, {}
        self._plot_dir = self.plot_dir
        if self._plot_dir is None and self.plot and trainer.loggers:
            log_dir = trainer.log_dir  # a collective under DDP: called on every rank
            self._plot_dir = None if log_dir is None else Path(log_dir)

    def _bind(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Find the classifier, decide the phase, build the metrics, attach the hook: at the start of a fit or a
        validation, after the module's setup/configure_model and after a checkpoint's state was loaded."""
        if self.phase is not None:
            return
        name, classifier = find_classifier(pl_module, self.classifier_path,
                                           known_num_classes(self.num_classes, trainer, pl_module))
        self.source.check_forward(pl_module)
        fitting = trainer.state.fn == "fit"
        self.phase = decide_phase(fitting=fitting, restored=self.state.restored, trained=trainer.global_step > 0,
                                  same_model=self.state.follows(classifier.weight), history=bool(self.history),
                                  basis=self.basis is not None)
        if self.phase is Phase.REFIT:
            self._warn_once("refit", f"{type(self).__name__}({self.name!r}): this fit (a new Trainer) starts from weights "
                            "an earlier fit trained: the history starts afresh and drift is measured from the SVD of "
                            "the weights now. To continue the history, continue with the same Trainer (fit again with "
                            "a larger max_epochs) or resume from its checkpoint.")
        if self.phase.starts_afresh:
            self._reset()
        shape = (classifier.out_features, classifier.in_features)
        self._classifier_name = name
        self.source.classifier = classifier
        self.state.check(shape)
        metrics = {**self._build(*shape), "count": SampleCount()}
        for metric in metrics.values():  # on the module's device: a sync (NCCL) before the first batch works
            metric.to(pl_module.device)
        self.state.set_metrics(metrics)
        self.source.attach(classifier, self._take, self._wants_pass)
        self.state.follow(classifier.weight)
        if fitting:
            self.schedule.check_readers(trainer.callbacks, self.name, f"{type(self).__name__}({self.name!r})",
                                        self._warn_once)

    def _take(self, features: Tensor, labels: Tensor, logits: Tensor, ignored: int) -> None:
        """The source's sink: count the rows, and measure the kept ones."""
        metrics = self.state.metrics
        if metrics["count"].device != features.device:
            for metric in metrics.values():
                metric.to(features.device)
        metrics["count"].update(torch.tensor(float(features.shape[0])), torch.tensor(float(ignored)))
        if features.shape[0]:
            self._consume(features, labels, logits)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.source.detach()
        self.phase = None
        self.state.restored = False  # a state loaded for this stage (fit, or validate with ckpt_path) is used up

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "exception")  # never leave the hook on a model whose run failed
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit":
            try:  # Ctrl-C: the figures of the epochs so far
                self._plot(trainer)
            except Exception as err:  # never mask the interrupt
                rank_zero_warn(f"{type(self).__name__}: no figures after the interrupt: {err}")

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._bind(trainer, pl_module)
        if not getattr(trainer.strategy, "restore_checkpoint_after_setup", False):
            self._weights_final(trainer)  # else at the start of training, once the checkpoint is loaded

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._bind(trainer, pl_module)  # trainer.validate: no fit bound it

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._weights_final(trainer)
        if self._wants_pass("init", trainer):
            if self.source.init_pass(trainer, pl_module):
                self._measure(trainer, -1, 0.0)

    # ----------------------------------------------------------- the schedule's hooks
    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # decided per batch: Lightning skips on_train_epoch_start when resuming mid-epoch
        self._set_active(self.schedule.captures_train_batch(trainer))

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.source.take_batch(batch)
        self._set_active(False)
        # measure before the epoch's validation runs, so checkpoint callbacks see this epoch's values
        last = lightning_internals.is_last_batch(trainer) or batch_idx + 1 >= trainer.num_training_batches
        if self.schedule.at_epoch_end(trainer) and last:
            self._finish_epoch(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._set_active(False)
        if self.schedule.epoch_end_pending(trainer):
            self._finish_epoch(trainer, pl_module, step_back=1)

    def _wants_pass(self, kind: str, trainer: Trainer) -> bool:
        """Whether this monitor makes the eval pass ``kind`` now: ``"init"`` (the measurement at initialization)
        or ``"epoch"`` (due at this epoch's end, not measured yet); decided alike on every rank."""
        if kind == "init":
            return self.log_at_init and not self.history and trainer.global_step == 0
        return self.schedule.epoch_end_pending(trainer)

    def _finish_epoch(self, trainer: Trainer, pl_module: LightningModule, step_back: int = 0) -> None:
        """Measure the epoch; ``step_back``: Lightning counted the last batch already (at the epoch's end it logs
        the epoch's rows one step back, and so do we)."""
        self.schedule.measured_epoch = trainer.current_epoch
        if self.mode == "eval":
            self.source.epoch_pass(trainer, pl_module)
        # a whole epoch, or less when max_steps (or a stop) ended it early
        self._measure(trainer, trainer.current_epoch, epochs_done(trainer, epoch_end=True), step_back)

    @override
    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        # one validation loader per monitor (several loaders are several data sets)
        self._set_active(self.schedule.captures_validation(trainer) and dataloader_idx == self.source.val_dataloader_idx)

    @override
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.source.take_batch(batch)
        self._set_active(False)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.schedule.captures_validation(trainer):
            self._measure(trainer, trainer.current_epoch, epochs_done(trainer))

    # ---------------------------------------------------------- measure, publish
    def _measure(self, trainer: Trainer, epoch: int, done: float, step_back: int = 0) -> None:
        metrics = self.state.metrics
        try:
            counts = quiet_compute(metrics["count"])  # synced: every rank takes the same branches below
            values = {k: _plain(v) for k, v in self._compute(trainer, done, counts["num_samples"]).items()}
            for extension in self.extensions:
                values.update({k: _plain(v) for k, v in extension.extend(trainer, done, values).items()})
            values.update({k: _plain(v) for k, v in counts.items()})
        except ValueError as err:  # undefined (collapsed or non-finite features, a class missing): say so, go on
            self._warn_once(f"undefined:{err}", f"{type(self).__name__}({self.name!r}): values not logged at "
                            f"{'initialization' if epoch < 0 else f'epoch {epoch}'}: {err} (said once; the same cause "
                            "at a later epoch is not repeated)")
            values = None
        finally:
            for metric in metrics.values():
                metric.reset()
        if values is None:
            return
        # the step Lightning logs its own rows of this point at (its loggers' x axis), not global_step
        step = max(0, lightning_internals.logger_step(trainer) - step_back)
        self.publisher.publish(trainer, {"epoch": epoch, "step": step, "epochs_done": done, **values}, self.history)

    @override
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
        self.publisher.send_figures(trainer, figures + self._figures(self._plot_dir))

    # ------------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict:
        return self.state.state_dict()

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        layer = self._classifier
        self.state.load_state_dict(state_dict, None if layer is None else (layer.out_features, layer.in_features))
