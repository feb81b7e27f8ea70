"""Where a monitor's run stands when it binds to a model: the one decision of its life cycle.

A monitor binds at the start of every fit and of every ``trainer.validate`` (after the module's
``setup``/``configure_model`` and after a checkpoint's callback state was loaded). What it keeps from
before (history, initial basis, the last class means) follows from five facts, in this table (``*``:
either; rows are read top down, the first match wins):

=========  ==========  ==========  ===========  ===========  ====================  ==============================
stage      restored    same model  trained      history      phase                 history and basis
=========  ==========  ==========  ===========  ===========  ====================  ==============================
fit        yes         \\*          \\*           \\*           ``RESUMED``           the checkpoint's
fit        no          yes         yes          \\*           ``CONTINUING``        kept: the same Trainer goes on
fit        no          yes         no           yes          ``REFIT``             afresh, basis from the SVD now
fit        no          \\*          \\*           \\*           ``FRESH``             afresh
validate   yes         \\*          \\*           \\*           ``RESUMED``           the checkpoint's
validate   no          no          \\*           yes (or a     ``VALIDATING_OTHER``  afresh
                                               basis)
validate   no          \\*          \\*           \\*           ``VALIDATING``        kept
=========  ==========  ==========  ===========  ===========  ====================  ==============================

*restored*: this monitor's state was loaded from the checkpoint of this fit or validation; *same model*:
the classifier weight is the one the monitor followed last (the same parameter object); *trained*: the
Trainer has taken optimizer steps (``global_step > 0``: the same Trainer fits again); *history*: the
monitor holds measurements (for validate: or an initial basis).

A strategy that restores the checkpoint after its setup (``restore_checkpoint_after_setup``) loads the
state after this decision; the loaded history and basis then replace what the phase kept.

:class:`Binding` runs the sequence around the decision: cleared at setup, bound at the start of the fit or
validation (classifier found, phase entered, metrics built, hook attached), released at its end.
"""

from __future__ import annotations

from enum import Enum
from functools import partial
from typing import Any, Callable


class Phase(Enum):
    """The monitor's phase from its binding to a model until the stage ends (see the module's table)."""

    FRESH = "fresh"  # a fit of a model without state of this monitor: the history starts now
    CONTINUING = "continuing"  # the same Trainer fits the same model again: history and basis go on
    RESUMED = "resumed"  # the checkpoint carried this monitor's state: it goes on from there
    REFIT = "refit"  # a new Trainer fits weights an earlier fit trained: afresh, drift from their SVD
    VALIDATING = "validating"  # trainer.validate of the model followed (or of one without state): kept
    VALIDATING_OTHER = "validating_other"  # trainer.validate of another model: afresh

    @property
    def starts_afresh(self) -> bool:
        """The monitor's history, basis and per-run memory are cleared on entering this phase."""
        return self in (Phase.FRESH, Phase.REFIT, Phase.VALIDATING_OTHER)


def decide_phase(*, fitting: bool, restored: bool, same_model: bool, trained: bool, history: bool,
                 basis: bool = False) -> Phase:
    """The phase of a monitor binding to a model, from the facts of the module's table.

    Args:
        fitting: the stage is a fit (else ``trainer.validate``).
        restored: this monitor's state was loaded from the stage's checkpoint.
        same_model: the classifier weight is the one the monitor followed last.
        trained: the Trainer has taken optimizer steps already (``global_step > 0``).
        history: the monitor holds measurements.
        basis: the monitor holds an initial basis.

    >>> decide_phase(fitting=True, restored=False, same_model=True, trained=False, history=True)
    <Phase.REFIT: 'refit'>
    """
    if restored:
        return Phase.RESUMED
    if fitting:
        if same_model and trained:
            return Phase.CONTINUING
        return Phase.REFIT if same_model and history else Phase.FRESH
    if not same_model and (history or basis):
        return Phase.VALIDATING_OTHER
    return Phase.VALIDATING


def enter_phase(trainer, state, weight, label: str, warn: Callable[[str, str], None]) -> Phase:
    """The phase of the monitor ``label`` (e.g. ``SpectralMonitor('spectral')``) binding to the classifier ``weight``,
    from the trainer's stage and step and its :class:`~.state.MonitorState` ``state``; ``warn(key, message)`` says
    what a ``REFIT`` means, with the fix."""
    phase = decide_phase(fitting=trainer.state.fn == "fit", restored=state.restored, trained=trainer.global_step > 0,
                         same_model=state.follows(weight), history=bool(state.history), basis=state.basis is not None)
    if phase is Phase.REFIT:
        warn("refit", f"{label}: this fit (a new Trainer) starts from weights an earlier fit trained: the history "
             "starts afresh and drift is measured from the SVD of the weights now. To continue the history, continue "
             "with the same Trainer (fit again with a larger max_epochs) or resume from its checkpoint.")
    return phase


class Binding:
    """A monitor's tie to one model for one stage: the classifier its :class:`~.source.FeatureSource` captures,
    the metrics its :class:`~.state.MonitorState` gathers, and the phase (None between stages). For a fit, its
    :class:`~.schedule.Schedule` checks the checkpoint callbacks that read the monitor's values.

    The monitor's side is given once: ``build(K, d)`` (its metrics), ``consume(features, labels, logits)``,
    ``wants(kind, trainer)`` (the eval passes it makes now), ``reset()`` (start afresh), ``warn(key, message)``.
    """

    def __init__(self, source, state, schedule, *, build: Callable, consume: Callable, wants: Callable,
                 reset: Callable[[], None], warn: Callable[[str, str], None]) -> None:
        self.source, self.state, self.schedule = source, state, schedule
        self.build, self.consume, self.wants, self.reset, self.warn = build, consume, wants, reset, warn
        self.phase: Phase | None = None
        self.classifier_name: str | None = None

    def clear(self) -> None:
        """At setup: nothing bound. The classifier is found later (:meth:`bind`): the module's own setup() and
        configure_model() run after this hook and may build or replace layers; a checkpoint's state is loaded
        in between."""
        self.source.detach()
        self.source.classifier, self.phase, self.state.metrics = None, None, {}

    def bind(self, trainer, pl_module, path: str | None, num_classes: int | None) -> None:
        """At the start of a fit or a validation (after the module's setup/configure_model and a checkpoint's load;
        once per stage): find the classifier, enter the phase (:func:`enter_phase`; ``reset()`` when it starts
        afresh), build the metrics, attach the hook."""
        if self.phase is not None:
            return
        self.classifier_name, classifier = self.source.locate(trainer, pl_module, path, num_classes)
        self.phase = enter_phase(trainer, self.state, classifier.weight, self.source.label, self.warn)
        if self.phase.starts_afresh:
            self.reset()
        self.state.bind(classifier, self.build, pl_module.device)
        self.source.attach(classifier, partial(self.state.take, self.consume), self.wants)
        if trainer.state.fn == "fit":
            self.schedule.check_readers(trainer.callbacks, self.source.name, self.source.label, self.warn)

    def release(self) -> None:
        """At the stage's end (or its failure): the hook leaves the model; a state loaded for this stage (fit, or
        validate with ``ckpt_path``) is used up."""
        self.source.detach()
        self.phase = None
        self.state.restored = False
