"""Where a monitor's measured values go: its history, ``trainer.callback_metrics`` (what ``ModelCheckpoint``
and ``EarlyStopping`` read), every logger of the trainer, and the figures at the end.

A row is published once, as soon as it is measured. Its values are global already (the metric states
are synced across DDP ranks, every rank computes the same numbers), so they are not reduced again.
Under ``trainer.validate`` the values go through the module's ``log``, so that ``validate()`` returns
them too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_warn

from . import _lightning as lightning_internals


def check_writable(path: Path, what: str) -> None:
    """``path`` is (or can be made as) a writable folder: said at setup, not after the last epoch."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies under {parent}, which is a file"
                raise ValueError(f"{what} {path} {where}, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{what} {path}: {parent} is not writable")
            return


class Publisher:
    """Sends the rows of the monitor named ``name`` on: ``selected(key)`` says which scalar keys are logged
    (as ``<name>/<key>``, with each logger's ``group_separator``); ``history`` receives every row whole."""

    def __init__(self, name: str, selected: Callable[[str], bool], owner: str = "monitor") -> None:
        self.name = name
        self.selected = selected
        self.owner = owner

    def scalars(self, row: dict) -> dict[str, float]:
        """The row's logged values: the selected keys whose values are numbers (bools are not)."""
        return {f"{self.name}/{k}": float(v) for k, v in row.items()
                if self.selected(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def publish(self, trainer: Trainer, row: dict, history: list[dict]) -> None:
        """Append ``row`` (with ``epoch``, ``step``, ``epochs_done``) to ``history`` and log its scalars."""
        history.append(row)
        scalars = self.scalars(row)
        module = trainer.lightning_module
        if trainer.state.fn != "fit" and trainer.validating and module is not None:
            # trainer.validate: through the module's log, so the values are also in what validate() returns
            for key, value in scalars.items():  # equal on every rank: the sync is an exact no-op, and quiet
                module.log(key, torch.tensor(value, dtype=torch.float64, device=module.device), on_step=False,
                           on_epoch=True, add_dataloader_idx=False, sync_dist=True)
            return
        for key, value in scalars.items():
            trainer.callback_metrics[key] = torch.tensor(value, dtype=torch.float64)
        for logger in trainer.loggers:  # loggers write on rank zero only
            sep = getattr(logger, "group_separator", "/")
            values = {k.replace("/", sep, 1): v for k, v in scalars.items()}
            if isinstance(logger, CSVLogger):  # a table: where the row belongs (epoch -1: initialization), as
                values.update(epoch=row["epoch"], epochs_done=row["epochs_done"])  # hadainit's readers use
            logger.log_metrics(values, step=row["step"])

    def send_figures(self, trainer: Trainer, figures: list) -> None:
        """``(tag, figure)`` pairs to the loggers that take images (TensorBoard, Weights & Biases)."""
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
                    rank_zero_warn(f"{self.owner}: could not send the figure to {type(logger).__name__}: {err}")
