"""``hadainit train``: train a classifier with both monitors on (LightningCLI), and write its report.

    hadainit train                                   # an MLP on scikit-learn's digits, CPU, about a minute
    hadainit train --model.init default --out runs/default
    hadainit train --config configs/cifar10_resnet18.yaml --data.data_dir ~/data
    hadainit train --print_config                    # the full configuration, every option
    hadainit train --out runs/x --ckpt_path runs/x/checkpoints/last.ckpt   # resume

``--model.*`` (:class:`~hadainit.experiments.module.ClassifierModule`), ``--data.*`` (a data module:
``Digits``, ``MNIST1D``, ``CIFAR``; e.g. ``--data MNIST1D``), ``--trainer.*`` (Lightning's Trainer),
``--nc_monitor.*`` and ``--spectral_monitor.*`` (the callbacks). The run folder ``--out`` gets
``metrics.csv``, ``config.yaml``, ``checkpoints/``, the monitors' figures, ``curves.png`` (``--curves``),
``report.json`` and ``report.md``; a non-empty ``--out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from jsonargparse import ActionYesNo
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.callbacks import _lightning as lightning_internals

from . import _jsonargparse as jsonargparse_internals
from .data import ClassificationData, Digits
from .module import ClassifierModule
from .run_report import write_run_report
from .outdir import LOCK, MARKER, check_out, claim
from .runs import write_atomic


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


class TrainParser(LightningArgumentParser):
    """LightningCLI's parser; a chosen logger whose package is missing is said before the logger's arguments are
    checked, and a configuration it refuses travels on the error (``err.config``: the classes chosen)."""

    def validate(self, namespace, *args, **kwargs) -> None:
        if "trainer" in namespace:
            _check_logger_packages(namespace.get("trainer.logger"))
        try:
            return super().validate(namespace, *args, **kwargs)
        except (TypeError, KeyError) as err:
            err.config = namespace
            raise


class TrainCLI(LightningCLI):
    """LightningCLI with the monitors as configurable callbacks, the run folder and resume."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(NeuralCollapseMonitor, "nc_monitor")
        parser.add_lightning_class_args(SpectralMonitor, "spectral_monitor")
        parser.set_defaults({"data": {"class_path": f"{Digits.__module__}.{Digits.__name__}"},
                             "nc_monitor.classifier": "model.fc", "nc_monitor.mode": "eval",
                             "spectral_monitor.classifier": "model.fc", "spectral_monitor.mode": "eval"})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.add_argument("--out", type=str, default="runs/train", help="the run folder")
        parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                            help="replace a non-empty --out (only a folder an earlier hadainit command made)")
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="resume from this checkpoint (e.g. OUT/checkpoints/last.ckpt)")
        parser.add_argument("--curves", type=bool, default=True,
                            help="draw the run report's curves.png (false: report.json and report.md only)")
        jsonargparse_internals.counts_before_fractions(parser)

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
        self.checkpoint = _read_checkpoint(cfg.ckpt_path) if resume else None
        if resume and trainer.get("max_epochs") not in (None, -1):
            done, batches = _progress(self.checkpoint)
            if done >= trainer.max_epochs:
                raise ValueError(f"--ckpt_path {cfg.ckpt_path} has trained {done} epochs already, and "
                                 f"--trainer.max_epochs is {trainer.max_epochs}: nothing to resume; pass a larger "
                                 "--trainer.max_epochs to train on")
        out = Path(cfg.out) if cfg.out.strip() else cfg.out
        if resume and isinstance(out, Path) and out.is_dir() and any(p.name not in (LOCK, MARKER) for p in out.iterdir()) \
                and not _inside(Path(cfg.ckpt_path), out):
            raise FileExistsError(f"--out {out} holds another run than --ckpt_path {cfg.ckpt_path}: resume into the "
                                  "checkpoint's own run folder, or into a new (empty) folder")
        configs = [str(c) for c in (cfg.get("config") or [])]
        # checked only: the folder is emptied (--overwrite) once the data is known to load
        self.out = check_out(out, overwrite=cfg.overwrite, resume=resume, inputs=[] if resume else configs)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """The run folder's contents do not depend on the logger chosen: hadainit's CSVLogger writes
        ``OUT/metrics.csv`` first (``trainer.log_dir`` is ``OUT``: config.yaml), the user's loggers come after;
        checkpoints go to ``OUT/checkpoints`` and the monitors' figures to ``OUT``."""
        init = self.config_init.trainer
        chosen = init.get("logger")
        user = [] if chosen in (None, True, False) else list(chosen) if isinstance(chosen, (list, tuple)) else [chosen]
        callbacks = list(init.get("callbacks") or [])
        if init.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(dirpath=str(self.out / "checkpoints"), save_last=True))
        for key in ("nc_monitor", "spectral_monitor"):
            monitor = self.config_init.get(key)
            if monitor is not None and monitor.plot_dir is None:
                monitor.plot_dir = self.out
        self.throughput = Throughput()
        extra = {"default_root_dir": str(self.out), "callbacks": callbacks,
                 "logger": [CSVLogger(save_dir=str(self.out), name="", version=""), *user]}
        trainer = super().instantiate_trainer(**{**kwargs, **extra})
        trainer.callbacks.append(self.throughput)
        return trainer


def cli(argv: list[str] | None = None) -> TrainCLI:
    return TrainCLI(
        ClassifierModule,
        ClassificationData,
        subclass_mode_data=True,
        parser_class=TrainParser,
        args=argv,
        run=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "max_epochs": 300,
            "accelerator": "auto",
            "log_every_n_steps": 1,
        },
        parser_kwargs={"prog": "hadainit train", "description": __doc__.splitlines()[0], "exit_on_error": False,
                       "default_env": False},
        auto_configure_optimizers=False,
    )


def _read_checkpoint(path: str) -> dict:
    """The checkpoint at ``path``, loaded on the CPU; one-line errors for a missing, empty or unreadable file."""
    import pickle
    import zipfile

    ckpt = Path(path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt_path {path} does not exist" + (" (a folder)" if ckpt.is_dir() else ""))
    if ckpt.stat().st_size == 0:
        raise ValueError(f"--ckpt_path {path} is empty (0 bytes): not a checkpoint")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--ckpt_path {path} is not a readable PyTorch checkpoint ({first})") from err
    if not isinstance(state, dict) or "state_dict" not in state or "loops" not in state:
        raise ValueError(f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict and loop state): "
                         "pass a file written by ModelCheckpoint, e.g. OUT/checkpoints/last.ckpt")
    return state


def _progress(checkpoint: dict) -> tuple[int, int]:
    """``(epochs, batches)``: the training epochs a checkpoint had completed, and the batches of the next one."""
    return lightning_internals.saved_progress(checkpoint)


DATA_MODULES = ("Digits", "MNIST1D", "CIFAR")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _rows_before(out: Path, ckpt_path: str | None, checkpoint: dict | None) -> list[dict]:
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
    step = checkpoint["global_step"]
    with open(metrics, newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get("step") and int(float(row["step"])) <= step]


def _resumed_at(checkpoint: dict | None) -> str | None:
    """How far the checkpoint had trained, in words (None: not resumed)."""
    if checkpoint is None:
        return None
    epochs, batches = _progress(checkpoint)
    return (f"{epochs} epoch" + ("" if epochs == 1 else "s")
            + (f" and {batches} batch" + ("" if batches == 1 else "es") if batches else ""))


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


def _small_work(run: TrainCLI) -> bool:
    """The built-in small data sets on the CPU: one thread is faster than many (see README, "A real network")."""
    return type(run.datamodule).__name__ in ("Digits", "MNIST1D") and run.trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def main(argv: list[str] | None = None) -> int:
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads args= only; sys.argv would confuse it
    saved_threads, saved_sigint = torch.get_num_threads(), signal.getsignal(signal.SIGINT)
    run = folder = None
    trained = interrupted = False
    try:
        # our own CSVLogger writes into the run folder, which holds the marker (and, on resume, the run)
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        run = cli(argv)
        threads = os.environ.get("HADAINIT_THREADS")
        if threads or _small_work(run):
            torch.set_num_threads(int(threads) if threads else 1)
        run.datamodule.prepare_data()  # a missing or broken data set fails here, before the folder is touched
        run.datamodule.setup("fit")
        resume = run.config.ckpt_path is not None
        folder = claim(run.out)  # the lock: no second command writes here meanwhile
        check_out(run.out, overwrite=run.config.overwrite, resume=resume)  # again, under the lock
        if not resume:
            folder.clear()
        folder.mark("train")
        start = time.perf_counter()
        earlier = _rows_before(run.out, run.config.ckpt_path, run.checkpoint)
        for stale in ("report.json", "report.md", "curves.png") if earlier else ():
            (run.out / stale).unlink(missing_ok=True)  # rewritten at the end; never left beside new metrics
        try:
            run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=run.config.ckpt_path)
        except SystemExit:  # Lightning turns Ctrl-C into sys.exit(1) once its callbacks have run
            if run.trainer.state.status != "interrupted":
                raise
            interrupted = True
        finally:  # CSVLogger started a new metrics.csv: the history before the checkpoint goes back in, always
            trained = run.trainer.global_step > (run.checkpoint or {}).get("global_step", 0)
            if earlier and run.trainer.is_global_zero:
                _prepend(run.out / "metrics.csv", earlier)
        if run.trainer.is_global_zero:
            write_run_report(run.out, run.trainer, run.model, run.datamodule, time.perf_counter() - start,
                             run.throughput.steps_per_second, config=run.config.as_dict(),
                             resumed_at=_resumed_at(run.checkpoint), interrupted=interrupted,
                             curves=run.config.curves)
    except SystemExit:
        raise
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError, argparse.ArgumentError,
            MisconfigurationException, ImportError) as err:
        print(f"hadainit train: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that cannot be written
        print(f"hadainit train: could not write {err.filename or (run.out if run else '')}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(saved_threads)
        signal.signal(signal.SIGINT, saved_sigint)  # Lightning ignores Ctrl-C after an interrupt
        if folder is not None:
            in_place = run.config.ckpt_path is not None and _inside(Path(run.config.ckpt_path), run.out)
            if trained or interrupted or in_place:
                folder.release()
            else:  # nothing trained: leave no config.yaml or copied metrics.csv that looks like a run
                folder.discard()
    written = [p.name for p in sorted(run.out.iterdir()) if p.suffix in (".md", ".json", ".csv", ".png", ".yaml")]
    if interrupted:
        print(f"hadainit train: interrupted in epoch {run.trainer.current_epoch + 1} (step {run.trainer.global_step}); "
              f"wrote {', '.join(written)} in {run.out} (resume with --ckpt_path {run.out}/checkpoints/last.ckpt)")
        return 130
    print(f"hadainit train: wrote {', '.join(written)} in {run.out}")
    return 0


#: the optional package each logger needs
LOGGER_PACKAGES = {"TensorBoardLogger": ("tensorboard", "tensorboardX"), "WandbLogger": ("wandb",),
                   "MLFlowLogger": ("mlflow",), "CometLogger": ("comet_ml",), "NeptuneLogger": ("neptune",)}


def _check_logger_packages(logger) -> None:
    """A chosen logger (the parsed ``trainer.logger``: a class spec, a list of them, a bool or None) whose package
    is missing: "install X" in one line, before anything is instantiated."""
    for spec in logger if isinstance(logger, list) else [logger]:
        missing = _missing_package(str(spec.get("class_path", ""))) if hasattr(spec, "get") else None
        if missing:
            raise ImportError(missing)


def _missing_package(logger: str) -> str | None:
    """For a logger (a class name or import path) whose package is not installed, the one-line "pip install X"."""
    import importlib.util

    name = logger.rsplit(".", 1)[-1]
    packages = LOGGER_PACKAGES.get(name)
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        return f"--trainer.logger {name} needs the {packages[0]} package: pip install {packages[0]}"
    return None


def _one_line(err: BaseException) -> str:
    """The error in one line: a parser error (jsonargparse's, whose message nests the dumps of every type it tried)
    from the option, the value given and the reason; any other error as its message, cut to its first line."""
    chain = jsonargparse_internals.chain(err)
    if any(jsonargparse_internals.raised_in(e, "jsonargparse") for e in chain):
        message = _parser_message(err, chain)
        if message:
            return message
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return " ".join(lines) if len(lines) <= 3 else f"{lines[0].rstrip(':')} (hadainit train --help lists the options)"


_MISSING = object()


def _config_value(path, dest: str):
    """The value a config file gives the option ``dest`` (``trainer.limit_train_batches``), else ``_MISSING``."""
    import yaml

    try:
        value = yaml.safe_load(Path(str(path)).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return _MISSING
    for part in dest.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _parser_message(err: BaseException, chain: list[BaseException]) -> str | None:
    """A jsonargparse error in one line, from the structure of its chain: the option the parser was given and its
    value (argparse's call of the option's action), the options the error passed through, and the innermost error
    (the reason: the class's own words, a key its parser does not accept, a value no type takes). None: no option
    known (the message is short: used as it is)."""
    leaf, given = chain[-1], jsonargparse_internals.given(chain)
    actions = [a for e in chain for a in jsonargparse_internals.actions(e)]
    if given is not None and given[0].dest == "config":  # a --config file: the option inside it that failed
        path, actions = given[2], [a for a in actions if a.dest != "config"]
        value = _config_value(path, actions[0].dest) if actions else _MISSING
        given = None if value is _MISSING else (actions[0], f"--{actions[0].dest}", value)
        specs = value if isinstance(value, list) else [value]
        plain = given is not None and not any(isinstance(v, dict) for v in specs)  # a value, not class specs
    else:
        plain = False
    if given is None and not actions:
        return None
    action = given[0] if given else actions[0]
    option = given[1].rstrip("+") if given else f"--{action.dest}"
    value = given[2] if given else None
    base = f"--{action.dest}"
    nested = option.startswith(base + ".")  # --data.batch_size: an option of the class chosen for --data
    text = leaf.args[0] if isinstance(leaf, KeyError) and leaf.args else str(leaf)  # a KeyError's str is a repr
    reason = next((line.strip() for line in str(text).splitlines() if line.strip()), type(leaf).__name__)
    if action.dest == "data" and option in ("--data", "--data.class_path") and isinstance(value, str) \
            and value.isidentifier() and value not in DATA_MODULES:
        return (f"--data {value}: unknown data module; choose one of {', '.join(DATA_MODULES)} "
                f"(see hadainit train --data.help NAME)")
    if isinstance(leaf, KeyError) and nested:  # jsonargparse's NSKeyError: the chosen class has no such parameter
        return (f"{option}: not an option of the chosen {action.dest} class "
                f"(hadainit train {base}.help NAME lists its options)")
    inner = [e for e in chain[1:] if isinstance(e, argparse.ArgumentError)]  # the chosen class's own parser said
    if not jsonargparse_internals.raised_in(leaf, "jsonargparse") and not isinstance(leaf, argparse.ArgumentError):
        cls = jsonargparse_internals.instance_of(leaf)
        return f"{base}{f' ({cls})' if cls else ''}: {reason}"  # the class refused its arguments
    hint = jsonargparse_internals.typehint(actions[-1] if actions else action)
    if given is not None and hint is not None and (actions[-1] is not action if nested else not inner or plain):
        found = f" ({reason})" if isinstance(leaf, (ImportError, AttributeError)) else ""
        expected = jsonargparse_internals.type_name(hint)
        return f"{option}: got {value!r}, expected {expected}{found} (hadainit train --help lists the options)"
    config = next((e.config for e in chain if hasattr(e, "config")), None)  # see TrainParser.validate
    chosen = config.get(action.dest) if config is not None and action.dest in config else None
    name = str(chosen.get("class_path", "")).rsplit(".", 1)[-1] if hasattr(chosen, "get") else ""
    return f"{option}{f' ({name})' if inner and name else ''}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
