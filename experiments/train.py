"""``hadainit train``: a CIFAR-style network with Hadamard vs default last-layer init, both monitors on.

Writes into ``--out``: ``metrics.csv`` (Lightning CSVLogger), ``neural_collapse.png``,
``spectral.png``, ``curves.png``, ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

import hadainit
from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.callbacks.plotting import label, new_figure, save

from . import data
from .models import MODELS, build_model

INITS = ("hadamard", "default", "etf")


def apply_init(fc: nn.Linear, init: str, seed: int) -> None:
    """``hadamard``: rows Q V^T / sqrt(3) (nn.Linear's row norm); ``etf``: the same without the constant
    mode (a simplex ETF); both zero the bias. ``default``: nn.Linear's own init, untouched."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    if init == "default":
        return
    hadainit.hadamard_(fc.weight, zero_mean=init == "etf", generator=torch.Generator().manual_seed(seed))
    if fc.bias is not None:
        nn.init.zeros_(fc.bias)


class ClassifierModule(L.LightningModule):
    """Cross-entropy training with SGD + momentum + weight decay and a cosine or one-cycle schedule."""

    def __init__(self, model: str = "resnet18", num_classes: int = 10, init: str = "hadamard", lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "cosine", seed: int = 0) -> None:
        super().__init__()
        if schedule not in ("cosine", "onecycle"):
            raise ValueError(f"schedule must be 'cosine' or 'onecycle', got {schedule!r}")
        self.save_hyperparameters()
        self.model = build_model(model, num_classes)
        apply_init(self.model.fc, init, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=hp.momentum > 0)
        total = self.trainer.estimated_stepping_batches
        if hp.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Throughput(L.Callback):
    """Training steps per second of each epoch (after the first, which includes warm-up)."""

    def __init__(self) -> None:
        self.steps_per_second: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.steps_per_second.append(self._batches / (time.perf_counter() - self._start))


def epoch_table(metrics_csv: Path) -> list[dict]:
    """The CSVLogger file as one dict per epoch (epoch-level values only)."""
    rows: dict[int, dict] = {}
    with open(metrics_csv) as fh:
        for row in csv.DictReader(fh):
            if not row.get("epoch"):
                continue
            entry = rows.setdefault(int(float(row["epoch"])), {"epoch": int(float(row["epoch"]))})
            for key, value in row.items():
                if value not in ("", None) and key not in ("epoch", "step"):
                    entry[key] = float(value)
    return [rows[e] for e in sorted(rows)]


def _plot_curves(table: list[dict], path: Path) -> None:
    fig, (ax, ax2) = new_figure(2)
    epochs = [r["epoch"] for r in table]
    for key in ("train/acc", "val/acc"):
        ax.plot(epochs, [r.get(key, math.nan) for r in table], "o-", label=key)
    for key in ("train/loss", "val/loss"):
        ax2.plot(epochs, [r.get(key, math.nan) for r in table], "o-", label=key)
    label(ax, "epoch", "accuracy")
    label(ax2, "epoch", "cross-entropy")
    save(fig, path, "Training curves")


def _write_markdown(report: dict, path: Path) -> None:
    final = report["final"]
    lines = [
        f"# hadainit train: {report['config']['model']} on {report['config']['dataset']}, init={report['config']['init']}",
        "",
        f"{report['config']['epochs']} epochs, precision {report['precision']}, accelerator {report['accelerator']}, "
        f"{report['seconds']:.0f} s, {report['steps_per_second']:.2f} steps/s (median epoch).",
        "",
        "| quantity | final value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value:.6g} |" for key, value in final.items()]
    lines += ["", "Figures: `curves.png`, `neural_collapse.png`, `spectral.png`; per-epoch values: `metrics.csv`."]
    path.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> dict:
    """Train one configuration; returns the report written to ``args.out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(args.seed, workers=True)
    k = data.num_classes(args.dataset)
    train_set = data.cifar(args.dataset, args.data_dir, train=True, augment=True, download=args.download)
    val_set = data.cifar(args.dataset, args.data_dir, train=False, augment=False, download=False)
    loader_kw = dict(batch_size=args.batch_size, num_workers=args.num_workers, persistent_workers=args.num_workers > 0)
    train_loader = DataLoader(train_set, shuffle=True, drop_last=False, **loader_kw)
    val_loader = DataLoader(val_set, shuffle=False, **loader_kw)
    module = ClassifierModule(args.model, k, args.init, args.lr, args.momentum, args.weight_decay, args.schedule,
                              args.seed)
    throughput = Throughput()
    callbacks = [throughput]
    if not args.no_monitors:
        callbacks += [
            NeuralCollapseMonitor(k, classifier="model.fc", mode=args.nc_mode, plot_dir=out,
                                  eval_batches=args.nc_eval_batches if args.nc_mode == "eval" else None),
            SpectralMonitor(classifier="model.fc", plot_dir=out),
        ]
    accelerator = args.accelerator
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator=accelerator, devices=args.devices, precision=precision,
        logger=CSVLogger(save_dir=str(out), name="", version=""), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=args.progress, enable_model_summary=False,
        limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches,
        num_sanity_val_steps=0, deterministic=False,
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    seconds = time.perf_counter() - start
    report = {}
    if trainer.is_global_zero:
        table = epoch_table(out / "metrics.csv")
        _plot_curves(table, out / "curves.png")
        final = {key: value for key, value in table[-1].items() if key != "epoch"} if table else {}
        sps = sorted(throughput.steps_per_second[1:] or throughput.steps_per_second)
        report = {
            "config": {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()},
            "precision": precision,
            "accelerator": str(trainer.accelerator.__class__.__name__),
            "seconds": seconds,
            "steps_per_second": sps[len(sps) // 2] if sps else math.nan,
            "steps_per_second_by_epoch": throughput.steps_per_second,
            "final": final,
            "epochs": table,
        }
        (out / "report.json").write_text(json.dumps(report, indent=2))
        _write_markdown(report, out / "report.md")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hadainit train", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(data.DATASETS), default="cifar10")
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py / cifar-100-python")
    p.add_argument("--download", action="store_true", help="fetch the dataset into --data-dir if missing")
    p.add_argument("--init", choices=INITS, default="hadamard")
    p.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "onecycle"), default="cosine")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32-true on CPU")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--nc-mode", choices=("train", "eval"), default="train")
    p.add_argument("--nc-eval-batches", type=int, default=None)
    p.add_argument("--no-monitors", action="store_true", help="train without the callbacks (overhead baseline)")
    p.add_argument("--limit-train-batches", type=float, default=None)
    p.add_argument("--limit-val-batches", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    p.add_argument("--out", required=True, help="run directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        raise SystemExit("hadainit train: --epochs and --batch-size must be positive")
    try:
        run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"hadainit train: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/report.json, report.md, metrics.csv and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
