"""The one place hadainit's callbacks and run code read Lightning or torchmetrics internals.

Lightning's public API does not expose a few things the monitors need; each use is named
here, with what it means and the public alternative where one exists, so that a new
release of either library breaks one tested module (``tests/test_lightning_adapter.py``
checks every function against the pinned versions), not the monitors. Nothing outside this
module touches these attributes.

============================  ===============================================================
function                      internal it reads (lightning 2.x / torchmetrics 1.x)
============================  ===============================================================
:func:`logger_step`           ``fit_loop.epoch_loop._batches_that_stepped``: the step Lightning
                              logs its own rows at (``global_step`` counts optimizer steps,
                              one past Lightning's rows at an epoch's end)
:func:`batches_ready`         ``fit_loop.epoch_loop.batch_progress.current.ready``
:func:`batches_completed`     ``fit_loop.epoch_loop.batch_progress.total.completed``
:func:`is_last_batch`         ``fit_loop.epoch_loop.batch_progress.is_last_batch``
:func:`has_val_loader`        ``fit_loop.epoch_loop.val_loop._data_source.is_defined()``
:func:`setup_val_data`        ``fit_loop.epoch_loop.val_loop.setup_data()`` (the loop's own setup, public on
                              the loop, not on the Trainer)
:func:`every_n_epochs`        ``ModelCheckpoint._every_n_epochs`` (no public getter)
:func:`before_transfer`       ``LightningModule._on_before_batch_transfer``: the module's and the
                              datamodule's ``on_before_batch_transfer`` hooks, as Lightning runs them
:func:`saved_progress`        a checkpoint's ``loops.fit_loop["epoch_loop.batch_progress"]`` and ``epoch``
:func:`callbacks_in_check`    the frame of ``_validate_callbacks_list`` (Trainer's check of its callback
                              list asks every ``state_key``): the list being checked
:func:`set_update_count`      ``Metric._update_count`` (read-only property ``update_count``) and the
                              ``compute()`` cache ``Metric._computed``
============================  ===============================================================
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torchmetrics import Metric

__all__ = ["batches_completed", "batches_ready", "before_transfer", "callbacks_in_check", "every_n_epochs", "has_val_loader",
           "is_last_batch", "logger_step", "saved_progress", "set_update_count", "setup_val_data"]


def logger_step(trainer: Trainer) -> int:
    """The step Lightning's own logged rows carry now (its loggers' x axis)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def batches_ready(trainer: Trainer) -> int:
    """Training batches of the current epoch fetched so far."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def batches_completed(trainer: Trainer) -> int:
    """Training batches completed over the whole fit (resumed fits included)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)


def is_last_batch(trainer: Trainer) -> bool:
    """Whether the training batch just run is the epoch's last (also for loaders without a length)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def has_val_loader(trainer: Trainer) -> bool:
    """Whether this fit has validation data (a loader passed to ``fit`` or a ``val_dataloader``)."""
    return bool(trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined())


def every_n_epochs(checkpoint: Any) -> int | None:
    """A ``ModelCheckpoint``'s ``every_n_epochs`` (None for another callback or an unknown layout)."""
    value = getattr(checkpoint, "_every_n_epochs", None)
    return value if isinstance(value, int) else None


def before_transfer(pl_module: LightningModule, batch: Any) -> Any:
    """The batch after the module's (and datamodule's) ``on_before_batch_transfer`` hooks."""
    return pl_module._on_before_batch_transfer(batch, dataloader_idx=0)


def set_update_count(metric: Metric, count: int) -> None:
    """Restore how many ``update`` calls a metric's state holds (``compute()`` warns at 0), and drop
    its cached ``compute()`` result."""
    metric._update_count = int(count)
    metric._computed = None


def saved_progress(checkpoint: dict) -> tuple[int, int]:
    """``(epochs, batches)`` of a loaded checkpoint dict: the training epochs it had completed, and the
    batches of the next one it had trained (0 for a checkpoint saved at an epoch's end)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    epoch = int(checkpoint.get("epoch", 0))
    if progress.get("is_last_batch"):  # saved at the end of an epoch (validation end or epoch end)
        return epoch + 1, 0
    return epoch, int(progress.get("current", {}).get("completed", 0))


def setup_val_data(trainer: Trainer) -> None:
    """Set up the fit's validation loaders now (Lightning does it lazily, at the first validation run), so that
    ``trainer.val_dataloaders`` and ``trainer.num_val_batches`` are known before it."""
    trainer.fit_loop.epoch_loop.val_loop.setup_data()


def callbacks_in_check() -> list | None:
    """The callback list ``Trainer(...)`` is checking, when a callback's ``state_key`` is asked by that check
    (``connectors.callback_connector._validate_callbacks_list``), else None: a callback can refuse a bad list
    with its own message before Lightning's generic one."""
    caller = sys._getframe(2)  # 0: here, 1: the state_key property, 2: whoever asked for it
    if caller.f_code.co_name == "_validate_callbacks_list":
        return list(caller.f_locals.get("callbacks") or [])
    return None
