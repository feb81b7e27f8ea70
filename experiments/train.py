"""``hadainit train``: train a classifier with both monitors on (LightningCLI), and write its report.

    hadainit train                                   # an MLP on scikit-learn's digits, CPU, about a minute
    hadainit train --model.init default --out runs/default
    hadainit train --config configs/cifar10_resnet18.yaml --data.data_dir ~/data
    hadainit train --print_config                    # the full configuration, every option
    hadainit train --out runs/x --ckpt_path runs/x/checkpoints/last.ckpt   # resume

``--model.*`` (:class:`~hadainit.experiments.module.ClassifierModule`), ``--data.*`` (a data module:
``Digits``, ``MNIST1D``, ``CIFAR``; e.g. ``--data MNIST1D``), ``--trainer.*`` (Lightning's Trainer),
``--nc_monitor.*`` and ``--spectral_monitor.*`` (the callbacks). The run folder ``--out`` gets
``metrics.csv``, ``config.yaml``, ``checkpoints/``, the monitors' figures, ``curves.png``,
``report.json`` and ``report.md``; a non-empty ``--out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from jsonargparse import ActionYesNo
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor

from .data import ClassificationData
from .module import ClassifierModule
from .report_run import write_run_report
from .runs import check_out, clear_out, write_atomic


class Throughput(L.Callback):
    """Training steps per second of each epoch."""

    def __init__(self) -> None:
        self.steps_per_second: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._batches = time.perf_counter(), 0  # Lightning skips the epoch start on a mid-epoch resume

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.steps_per_second.append(self._batches / (time.perf_counter() - self._start))


class TrainCLI(LightningCLI):
    """LightningCLI with the monitors as configurable callbacks, the run folder and resume."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(NeuralCollapseMonitor, "nc_monitor")
        parser.add_lightning_class_args(SpectralMonitor, "spectral_monitor")
        parser.set_defaults({"nc_monitor.classifier": "model.fc", "nc_monitor.mode": "eval",
                             "spectral_monitor.classifier": "model.fc", "spectral_monitor.mode": "eval"})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.add_argument("--out", type=str, default="runs/train", help="the run folder")
        parser.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace a non-empty --out")
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="resume from this checkpoint (e.g. OUT/checkpoints/last.ckpt)")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        trainer = cfg.trainer
        for key in ("limit_train_batches", "limit_val_batches"):
            value = trainer.get(key)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"--trainer.{key} must be a positive number (a count or a fraction), got {value!r}")
        if trainer.get("max_epochs") is not None and trainer.max_epochs < 1 and trainer.max_epochs != -1:
            raise ValueError(f"--trainer.max_epochs must be >= 1 (or -1), got {trainer.max_epochs}")
        devices = trainer.get("devices")
        if isinstance(devices, int) and devices == 0 or devices in ("0",):
            raise ValueError("--trainer.devices 0 selects no device: use 'auto', a positive count or a list")
        resume = cfg.ckpt_path is not None
        if resume and not Path(cfg.ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {cfg.ckpt_path} does not exist")
        out = Path(cfg.out)
        if resume and out.is_dir() and any(out.iterdir()) and not _inside(Path(cfg.ckpt_path), out):
            raise FileExistsError(f"--out {out} holds another run than --ckpt_path {cfg.ckpt_path}: resume into the "
                                  "checkpoint's own run folder, or into a new (empty) folder")
        # checked only: the folder is emptied (--overwrite) once the data is known to load
        self.out = check_out(out, overwrite=cfg.overwrite, resume=resume)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        extra = {"default_root_dir": str(self.out)}
        if self.config.trainer.get("logger") in (None, True):
            extra["logger"] = CSVLogger(save_dir=str(self.out), name="", version="")
        self.throughput = Throughput()
        trainer = super().instantiate_trainer(**extra, **kwargs)
        trainer.callbacks.append(self.throughput)
        return trainer


def cli(argv: list[str] | None = None) -> TrainCLI:
    return TrainCLI(
        ClassifierModule,
        ClassificationData,
        subclass_mode_data=True,
        args=argv,
        run=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "max_epochs": 300,
            "accelerator": "auto",
            "callbacks": [ModelCheckpoint(save_last=True)],
            "log_every_n_steps": 1,
        },
        parser_kwargs={"prog": "hadainit train", "description": __doc__.splitlines()[0], "exit_on_error": False,
                       "default_env": False},
        auto_configure_optimizers=False,
    )


DATA_MODULES = ("Digits", "MNIST1D", "CIFAR")


def _default_data(argv: list[str]) -> list[str]:
    """The digits unless the command line chooses a data module: given first, so a --config file that has a
    ``data`` section replaces it and one without keeps it. An unknown name is refused in one line."""
    for i, a in enumerate(argv):
        name = a.split("=", 1)[1] if a.startswith("--data=") else argv[i + 1] if a == "--data" and i + 1 < len(argv) else None
        if name is not None and name.isidentifier() and name not in DATA_MODULES:  # paths, files, JSON: jsonargparse's
            raise ValueError(f"--data {name}: unknown data module; choose one of {', '.join(DATA_MODULES)} "
                             "(see hadainit train --data.help NAME)")
    chosen = any(a == "--data" or a.startswith(("--data=", "--data.class_path")) for a in argv)
    return argv if chosen else ["--data", "Digits", *argv]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _rows_before(out: Path, ckpt_path: str | None) -> list[dict]:
    """On resume, the rows the run logged up to its checkpoint (CSVLogger starts a new file): from ``out``'s
    metrics.csv when resuming in place, else from the checkpoint's own run folder (``RUN/checkpoints/x.ckpt``)."""
    if ckpt_path is None:
        return []
    ckpt = Path(ckpt_path)
    metrics = out / "metrics.csv" if _inside(ckpt, out) else ckpt.resolve().parent.parent / "metrics.csv"
    if not metrics.is_file():
        print(f"hadainit train: no metrics.csv beside {ckpt_path}: the history before the checkpoint is not in "
              f"{out}/metrics.csv", file=sys.stderr)
        return []
    step = torch.load(ckpt_path, map_location="cpu", weights_only=False)["global_step"]
    with open(metrics, newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get("step") and int(float(row["step"])) <= step]


def _epochs_before(earlier: list[dict]) -> int | None:
    """The epochs a resumed run had trained before this session (None: not resumed)."""
    epochs = [int(float(row["epoch"])) + 1 for row in earlier if row.get("epoch")]
    return max(epochs, default=0) if earlier else None


def _prepend(metrics: Path, earlier: list[dict]) -> None:
    rows, fields = [], []
    if metrics.is_file():
        with open(metrics, newline="") as fh:
            reader = csv.DictReader(fh)
            rows, fields = list(reader), list(reader.fieldnames or [])
    fields += [k for row in earlier for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(fields)))
    writer.writeheader()
    writer.writerows(earlier + rows)
    write_atomic(metrics, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads args= only; sys.argv would confuse it
    try:
        run = cli(_default_data(argv))
        run.datamodule.prepare_data()  # a missing or broken data set fails here, before the folder is touched
        run.datamodule.setup("fit")
        if run.config.ckpt_path is None:
            clear_out(run.out)
        run.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        earlier = _rows_before(run.out, run.config.ckpt_path)
        for stale in ("report.json", "report.md", "curves.png") if earlier else ():
            (run.out / stale).unlink(missing_ok=True)  # rewritten at the end; never left beside new metrics
        try:
            run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=run.config.ckpt_path)
        finally:  # CSVLogger started a new metrics.csv: the history before the checkpoint goes back in, always
            if earlier and run.trainer.is_global_zero:
                _prepend(run.out / "metrics.csv", earlier)
        if run.trainer.is_global_zero:
            write_run_report(run.out, run.trainer, run.model, run.datamodule, time.perf_counter() - start,
                             run.throughput.steps_per_second, config=run.config.as_dict(),
                             resumed_at=_epochs_before(earlier))
    except SystemExit:
        raise
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError, argparse.ArgumentError,
            MisconfigurationException) as err:
        print(f"hadainit train: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    written = [p.name for p in sorted(run.out.iterdir()) if p.suffix in (".md", ".json", ".csv", ".png", ".yaml")]
    print(f"hadainit train: wrote {', '.join(written)} in {run.out}")
    return 0


def _one_line(err: BaseException) -> str:
    """The error in one line; jsonargparse's nested dumps (every subtype it tried) cut to their first line."""
    import re

    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) <= 3:
        return " ".join(lines)
    # a parser dump: its first line names the key, the given value and the types it tried say what was wrong
    message = lines[0].rstrip(":")
    given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None)
    expected = [re.sub(r"<class '([\w.]+)'>", r"\1", line.split("Expected a", 1)[1].strip())
                for line in lines if "Expected a" in line]
    nested = re.match(r"NestedArg\(key='([\w.]+)'", given or "")
    if nested:  # an option the chosen class does not take
        key = lines[0].split('"')[1] if '"' in lines[0] else "?"
        return (f"--{key}.{nested.group(1)}: not an option of the chosen {key} class "
                f"(hadainit train --{key}.help NAME lists its options)")
    if given is not None:
        message += f": got {given!r}"
    if expected:
        message += f", expected {' or '.join(dict.fromkeys(expected))}"
    return f"{message} (hadainit train --help lists the options)"


if __name__ == "__main__":
    sys.exit(main())
