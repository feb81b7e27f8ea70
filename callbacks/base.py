"""The life cycle the monitors share, composed of named parts (one question, one place):

=======================  ==========================================  ==========================
question                 part                                        module
=======================  ==========================================  ==========================
when does it measure?    :class:`~.schedule.Schedule`                ``callbacks/schedule.py``
what data does it see?   :class:`~.source.FeatureSource`, its share  ``callbacks/source.py``,
                         of the classifier's one hook                ``callbacks/capture.py``,
                         (:class:`~.capture.ClassifierHub`), the     ``callbacks/classifier.py``
                         classifier's lookup
                         (:func:`~.classifier.find_classifier`)
where does a value go?   :class:`~.publish.Publisher` (and the       ``callbacks/publish.py``
                         figures)
what does it keep?       :class:`~.state.MonitorState` (and what     ``callbacks/state.py``,
                         one measurement's sums give), the sums'     ``callbacks/sums.py``
                         checkpoint over ranks
where does the run       :class:`~.phase.Phase`, decided by          ``callbacks/phase.py``
stand?                   :func:`~.phase.decide_phase`; the sequence
                         around it: :class:`~.phase.Binding`
=======================  ==========================================  ==========================

:class:`MonitorBase` holds the parts and wires Lightning's hooks to them.

A monitor measures at the end of every ``every_n_epochs``-th training epoch (or of the
epochs listed in ``at_epochs``, counted from 1, e.g. :func:`log_spaced_epochs` for long runs)
(``mode="train"``: the features of that epoch's training steps; ``"eval"``: one
extra eval-mode pass, shared by the eval-mode monitors of one classifier that pass over
the same data then) or at the end of each validation run (``mode="val"``, also
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

from functools import partial
from pathlib import Path
from typing import Any, Callable, ClassVar

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from . import _lightning as lightning_internals
from .classifier import default_inputs, default_labels
from .phase import Binding
from .publish import Publisher, WarnOnce
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


def refuse_twins(monitor: MonitorBase, callbacks) -> None:
    """Two monitors of a trainer's ``callbacks`` that log under one name are refused, naming the fix."""
    others = [cb for cb in callbacks if isinstance(cb, MonitorBase) and cb is not monitor and cb.name == monitor.name]
    if others:
        raise ValueError(f"two monitors log under {monitor.name!r}/: give each a distinct name=... "
                         f"({type(monitor).__name__} and {type(others[0]).__name__})")


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
        self._warn_once = WarnOnce()
        try:  # the parts check their options; the message names the monitor (two monitors take the same options)
            self.schedule = Schedule(mode, every_n_epochs, at_epochs, log_at_init)
            self.source = FeatureSource(mode, capture, eval_loader=eval_loader, eval_batches=eval_batches,
                                        val_dataloader_idx=val_dataloader_idx, ignore_index=ignore_index,
                                        labels_from_batch=labels_from_batch, inputs_from_batch=inputs_from_batch,
                                        forward_fn=forward_fn, owner=type(self).__name__, warn=self._warn_once)
            _check_identity(type(self), num_classes, classifier, name, metrics)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{type(self).__name__}: {err}") from err
        self.publisher = Publisher("", self._selected, owner=type(self).__name__)
        self.state = self.STATE(type(self).__name__)
        self.name = name or (self.PREFIX if mode == "train" else f"{self.PREFIX}_{mode}")
        self.num_classes, self.classifier_path = num_classes, classifier
        self.metrics = None if metrics is None else tuple(metrics)
        self.plot, self.plot_dir = bool(plot), None if plot_dir is None else Path(plot_dir)
        self.extensions: list = []
        self.binding = Binding(self.source, self.state, self.schedule, build=self._build, consume=self._consume,
                               wants=self._wants_pass, reset=self._reset, warn=self._warn_once)

    # ------------------------------------------------------------ the parts' faces
    name = property(lambda self: self.publisher.name, doc="The key prefix: values are logged as ``<name>/<key>``.")

    @name.setter
    def name(self, value: str) -> None:
        self.publisher.name = self.source.name = value

    mode = property(lambda self: self.schedule.mode, doc="Where the features come from (``train``, ``eval``, ``val``).")
    log_at_init = property(lambda self: self.schedule.at_init, lambda self, on: setattr(self.schedule, "at_init", bool(on)),
                           doc="Whether the start of training is measured (an eval-mode pass before the first step).")
    phase = property(lambda self: self.binding.phase, doc="Where the run stands (:class:`~.phase.Phase`); None between stages.")
    _classifier = property(lambda self: self.source.classifier)
    _classifier_name = property(lambda self: self.binding.classifier_name)
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
            refuse_twins(self, checked)
        return self._generate_state_key(name=self.name, classifier=self.classifier_path, mode=self.mode)

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

    def _wants_pass(self, kind: str, trainer: Trainer) -> bool:
        """Whether this monitor makes the eval pass ``kind`` (``"init"``, ``"epoch"``) now; see ``Schedule.wants_pass``."""
        return self.schedule.wants_pass(kind, trainer, measured=bool(self.history))

    # ------------------------------------------------------------------ binding
    def _reset(self) -> None:
        for part in (self.state, self.schedule, self._warn_once, *self.extensions):
            part.reset()

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        refuse_twins(self, trainer.callbacks)
        if stage == "fit":
            self.source.check_fit(trainer, pl_module)
        self.publisher.prepare(trainer, self.plot, self.plot_dir, self._warn_once)
        self.binding.clear()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.binding.release()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.binding.release()  # never leave the hook on a model whose run failed
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit":
            self._plot(trainer, quiet=True)  # Ctrl-C: the figures of the epochs so far

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.binding.bind(trainer, pl_module, self.classifier_path, self.num_classes)
        if not getattr(trainer.strategy, "restore_checkpoint_after_setup", False):
            self._weights_final(trainer)  # else at the start of training, once the checkpoint is loaded

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.binding.bind(trainer, pl_module, self.classifier_path, self.num_classes)  # trainer.validate: no fit did

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._weights_final(trainer)
        if self._wants_pass("init", trainer) and self.source.init_pass(trainer, pl_module):
            self._measure(trainer, -1, 0.0)

    # ------------------------------------------------ the schedule's hooks, measure, publish, resume
    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # decided per batch: Lightning skips on_train_epoch_start when resuming mid-epoch
        self._set_active(self.schedule.captures_train_batch(trainer))

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.source.take_batch(batch)
        self._set_active(False)
        if self.schedule.ends_epoch(trainer, batch_idx):
            self._finish_epoch(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._set_active(False)
        if self.schedule.epoch_end_pending(trainer):
            self._finish_epoch(trainer, pl_module, step_back=1)

    def _finish_epoch(self, trainer: Trainer, pl_module: LightningModule, step_back: int = 0) -> None:
        """Measure the epoch (or what max_steps or a stop left of it); ``step_back``: see ``publish_measurement``."""
        self.schedule.measured_epoch = trainer.current_epoch
        self.source.epoch_pass(trainer, pl_module)
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

    def _measure(self, trainer: Trainer, epoch: int, done: float, step_back: int = 0) -> None:
        measure = partial(self.state.measure, trainer, done, self._compute, self.extensions)
        self.publisher.publish_measurement(trainer, epoch, done, measure, self.history, self._warn_once, step_back)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._plot(trainer)

    def _plot(self, trainer: Trainer, quiet: bool = False) -> None:
        keys = [k for k in self.KEYS if self._selected(k)]
        self.publisher.plot(trainer, self.history, keys, self.TITLE, self.PLOT_NAME, self._figures, quiet)

    @override
    def state_dict(self) -> dict:
        return self.state.state_dict()

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        layer = self._classifier
        self.state.load_state_dict(state_dict, None if layer is None else (layer.out_features, layer.in_features))
