"""When a monitor measures: its ``mode``, ``every_n_epochs`` / ``at_epochs``, and the checkpoint schedules
that would read its values between measurements.

Epochs are counted as done (the first training epoch is 1). ``"train"`` and ``"eval"`` measure at the end
of a due training epoch; ``"val"`` at the end of each validation run of a due epoch (every validation run
under ``trainer.validate``). The sanity check is never measured.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Literal

from lightning.pytorch import Trainer

from . import _lightning as lightning_internals

Mode = Literal["train", "eval", "val"]
MODES = ("train", "eval", "val")


def positive_int(value, name: str, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1 (or None where allowed); bools are refused."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


class Schedule:
    """``mode``, and which training epochs are due: every ``every_n_epochs``-th, or those in ``at_epochs``; and
    whether the start of training is measured (``at_init``)."""

    def __init__(self, mode: Mode = "train", every_n_epochs: int = 1, at_epochs: Iterable[int] | None = None,
                 at_init: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        positive_int(every_n_epochs, "every_n_epochs")
        if at_epochs is not None:
            if every_n_epochs != 1:
                raise ValueError("give every_n_epochs or at_epochs, not both")
            if isinstance(at_epochs, (str, bytes)) or not all(
                    isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in at_epochs):
                raise ValueError(f"at_epochs must be a list of epoch counts >= 1, got {at_epochs!r}")
        self.mode = mode
        self.every_n_epochs = every_n_epochs
        self.at_epochs = None if at_epochs is None else frozenset(at_epochs)
        self.at_init = bool(at_init)
        self.measured_epoch: int | None = None  # the training epoch last measured at its end

    def epoch_due(self, epochs_done: int) -> bool:
        """Whether the training epoch that makes ``epochs_done`` epochs is measured."""
        if self.at_epochs is not None:
            return epochs_done in self.at_epochs
        return epochs_done % self.every_n_epochs == 0

    def due(self, trainer: Trainer) -> bool:
        """The current training epoch is measured (never during the sanity check)."""
        return self.epoch_due(trainer.current_epoch + 1) and not trainer.sanity_checking

    def captures_train_batch(self, trainer: Trainer) -> bool:
        """The coming training batch feeds the measurement (``mode="train"`` on a due epoch)."""
        return self.mode == "train" and self.due(trainer)

    def at_epoch_end(self, trainer: Trainer) -> bool:
        """A measurement at the end of this training epoch (``"train"``, ``"eval"``) is due."""
        return self.mode != "val" and self.due(trainer)

    def ends_epoch(self, trainer: Trainer, batch_idx: int) -> bool:
        """The training batch ``batch_idx`` just run ends an epoch measured at its end (measured then, before the
        epoch's validation runs, so checkpoint callbacks see its values)."""
        last = lightning_internals.is_last_batch(trainer) or batch_idx + 1 >= trainer.num_training_batches
        return self.at_epoch_end(trainer) and last

    def epoch_end_pending(self, trainer: Trainer) -> bool:
        """Due at the epoch's end and not measured yet (e.g. on the last batch, before validation)."""
        return self.at_epoch_end(trainer) and self.measured_epoch != trainer.current_epoch

    def wants_pass(self, kind: str, trainer: Trainer, measured: bool) -> bool:
        """Whether the eval pass ``kind`` is due now: ``"init"`` (the measurement at initialization: asked for,
        nothing ``measured`` yet, no step taken) or ``"epoch"`` (:meth:`epoch_end_pending`); alike on every rank."""
        if kind == "init":
            return self.at_init and not measured and trainer.global_step == 0
        return self.epoch_end_pending(trainer)

    def captures_validation(self, trainer: Trainer) -> bool:
        """The validation run going on feeds the measurement: ``mode="val"``, a due epoch of a fit, or any
        run of ``trainer.validate``; never the sanity check."""
        if self.mode != "val" or trainer.sanity_checking:
            return False
        return trainer.state.fn != "fit" or self.due(trainer)

    def reset(self) -> None:
        self.measured_epoch = None

    def describe(self) -> str:
        return f"every {self.every_n_epochs} epochs" if self.at_epochs is None else "at the epochs in at_epochs"

    def check_readers(self, callbacks: Iterable, prefix: str, owner: str, warn: Callable[[str, str], None]) -> None:
        """``ModelCheckpoint``/``EarlyStopping`` on a key under ``prefix`` that run at epochs this schedule does not
        measure see the last measured value (at first, the value at initialization): ``warn(key, message)`` once
        per such callback, with the fix."""
        if self.mode == "val" or (self.every_n_epochs == 1 and self.at_epochs is None):
            return
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        for cb in callbacks:
            key = getattr(cb, "monitor", None)
            if not isinstance(cb, (ModelCheckpoint, EarlyStopping)) or not isinstance(key, str):
                continue
            if not key.startswith(f"{prefix}/"):
                continue
            every = lightning_internals.every_n_epochs(cb)
            every = 1 if every is None else every
            if self.at_epochs is None and isinstance(cb, ModelCheckpoint) and every and every % self.every_n_epochs == 0:
                continue
            fix = (f"ModelCheckpoint(every_n_epochs={self.every_n_epochs}, ...)" if isinstance(cb, ModelCheckpoint)
                   else "patience counted in measured epochs")
            warn(f"schedule-{id(cb)}", f"{type(cb).__name__}(monitor={key!r}) runs every epoch, but "
                 f"{owner} measures {self.describe()}: at the other epochs it sees the last measured value (before "
                 f"the first measurement, the value at initialization). Use {fix}, or measure every epoch.")


def epochs_done(trainer: Trainer, epoch_end: bool = False) -> float:
    """Training epochs completed, with the fraction of the current one (validation may run mid-epoch;
    max_steps may end an epoch early). A loader without a length: whole epochs only."""
    batches = trainer.num_training_batches
    if trainer.state.fn != "fit" or not math.isfinite(batches) or batches < 1:
        return trainer.current_epoch + (1.0 if epoch_end and trainer.state.fn == "fit" else 0.0)
    return trainer.current_epoch + lightning_internals.batches_ready(trainer) / batches


def log_spaced_epochs(max_epochs: int, count: int) -> list[int]:
    """About ``count`` epoch counts spread evenly on a log scale from 1 to ``max_epochs`` (both included):
    ``at_epochs`` for a long run whose figures have logarithmic epoch axes."""
    for value, name in ((max_epochs, "max_epochs"), (count, "count")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if count == 1 or max_epochs == 1:
        return [max_epochs]
    ratio = max_epochs ** (1.0 / (count - 1))
    return sorted({max(1, min(max_epochs, round(ratio**i))) for i in range(count)} | {1, max_epochs})
