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
"""

from __future__ import annotations

from enum import Enum


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
