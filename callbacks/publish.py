"""Where a monitor's measured values go: its history, ``trainer.callback_metrics`` (what ``ModelCheckpoint``
and ``EarlyStopping`` read), every logger of the trainer, and the figures at the end (where they go is
settled at setup, :meth:`Publisher.prepare`).

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
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from . import _lightning as lightning_internals
from .plotting import plot_history


class WarnOnce:
    """``warn(key, message)``: a warning on rank zero, said once per ``key`` until :meth:`reset`."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.said:
            self.said.add(key)
            rank_zero_warn(message)

    def reset(self) -> None:
        self.said = set()


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
        self.directory: Path | None = None  # where the figures go (settled at setup); None: no figures

    def prepare(self, trainer: Trainer, plot: bool, plot_dir: Path | None, warn: Callable[[str, str], None]) -> None:
        """At setup: ``warn(key, message)`` when the trainer has no logger, check ``plot_dir``, and settle the
        folder of the figures (``plot_dir``, default the trainer's ``log_dir``; none without ``plot``)."""
        if not trainer.loggers:
            warn("no-logger", f"{self.owner}({self.name!r}): the trainer has no logger: the values go to the monitor's "
                 "history and trainer.callback_metrics only" + ("" if plot_dir is not None or not plot else
                                                                 ", and no figures are made (pass plot_dir=... for them)"))
        if plot and plot_dir is not None:
            check_writable(plot_dir, "plot_dir")
        self.directory = plot_dir if plot else None
        if plot_dir is None and plot and trainer.loggers:
            log_dir = trainer.log_dir  # a collective under DDP: called on every rank
            self.directory = None if log_dir is None else Path(log_dir)

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

    def publish_measurement(self, trainer: Trainer, epoch: int, done: float, measure: Callable[[], dict],
                            history: list[dict], warn: Callable[[str, str], None], step_back: int = 0) -> None:
        """:meth:`publish` the values ``measure()`` gives at epoch ``epoch`` (-1: initialization) after ``done``
        epochs, at the step Lightning logs its own rows of this point at (its loggers' x axis), not ``global_step``;
        ``step_back``: Lightning counted the epoch's last batch already (at the epoch's end it logs the epoch's rows
        one step back). Undefined values (``ValueError``: collapsed or non-finite features, a class missing) are
        not published: ``warn(key, message)`` says so, once per cause, and the run goes on."""
        try:
            values = measure()
        except ValueError as err:
            where = "initialization" if epoch < 0 else f"epoch {epoch}"
            warn(f"undefined:{err}", f"{self.owner}({self.name!r}): values not logged at {where}: {err} (said once; "
                 "the same cause at a later epoch is not repeated)")
            return
        step = max(0, lightning_internals.logger_step(trainer) - step_back)
        self.publish(trainer, {"epoch": epoch, "step": step, "epochs_done": done, **values}, history)

    @rank_zero_only
    def plot(self, trainer: Trainer, history: list[dict], keys: list[str], title: str, plot_name: str,
             more: Callable[[Path], list], quiet: bool = False) -> None:
        """On rank zero: the history panels of ``keys`` and the figures of ``more(directory)`` saved under
        :attr:`directory` and sent to the loggers that take images; nothing without a directory or a history.
        ``quiet`` (after an interrupt): a failure is warned, never raised over the interrupt."""
        directory = self.directory
        if directory is None or not history:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            figure = plot_history(history, directory / f"{self.name}.png", f"{title} ({self.name})", keys)
            self.send_figures(trainer, [(plot_name, figure)] + more(directory))
        except Exception as err:
            if not quiet:
                raise
            rank_zero_warn(f"{self.owner}: no figures after the interrupt: {err}")

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
