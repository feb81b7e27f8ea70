"""The report of one training run: ``report.json``, ``report.md`` and ``curves.png`` in the run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hadainit.callbacks import _lightning as lightning_internals
from hadainit.callbacks.plotting import epoch_axis, label, new_figure, save

from .runs import read_metrics, series, write_atomic
from .keys import RUN_CURVES

CURVES = RUN_CURVES


def plot_curves(table: list[dict], path: Path) -> None:
    fig, axes = new_figure(2)
    for ax, keys, ylabel in zip(axes, CURVES, ("accuracy", "cross-entropy")):
        xs = []
        for key in keys:
            x, y = series(table, key)
            xs += x
            ax.plot(x, y, "o-", ms=2, label=key)
        epoch_axis(ax, xs)
        label(ax, ax.get_xlabel(), ylabel, logy=ylabel == "cross-entropy")
    save(fig, path, "Training curves")


def _jsonable(value):
    """A config value for report.json: callables as their dotted import path (as config.yaml has them)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return str(value)


def epochs_trained(trainer) -> float:
    """Training epochs done, with the fraction of an epoch ``max_steps`` (or an interrupt) ended early: the batches
    trained over the batches of an epoch (Lightning counts an epoch that ``max_steps`` cut short as completed)."""
    batches = trainer.num_training_batches
    done = lightning_internals.batches_completed(trainer)
    if not (isinstance(batches, (int, float)) and math.isfinite(batches) and batches >= 1):
        return float(trainer.current_epoch)  # a loader without a length: whole epochs
    return done / batches


def write_run_report(out: Path, trainer, module, datamodule, seconds: float, steps_per_second: list[float],
                     config: dict, resumed_at: str | None = None, interrupted: bool = False,
                     curves: bool = True) -> dict:
    """Read the run's ``metrics.csv`` back and write the report files (atomically).

    Args:
        resumed_at: how far the checkpoint this session resumed from had trained, in words (e.g. ``"25 epochs"``).
        interrupted: the run was stopped by Ctrl-C (the report says so; figures of the epochs so far).
        curves: draw ``curves.png``.
    """
    metrics = out / "metrics.csv"
    table = read_metrics(metrics) if metrics.is_file() else []
    final: dict[str, float] = {}
    for row in table:  # the last value of every column
        final.update({k: v for k, v in row.items() if k not in ("epoch", "epochs_done")})
    if not table:
        final = {k: float(v) for k, v in trainer.callback_metrics.items()}
    sps = sorted(steps_per_second[1:] or steps_per_second)
    report = {
        "config": json.loads(json.dumps(config, default=_jsonable)),
        "data": type(datamodule).__name__,
        "num_classes": module.num_classes,
        "epochs_trained": epochs_trained(trainer),
        "steps": trainer.global_step,
        "interrupted": interrupted,
        "precision": str(trainer.precision),
        "accelerator": type(trainer.accelerator).__name__,
        "seconds": seconds,
        "resumed_after_epochs": resumed_at,
        "steps_per_second": sps[len(sps) // 2] if sps else None,
        "final": final,
        "epochs": table,
    }
    if table and curves:
        plot_curves(table, out / "curves.png")
    write_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=True))
    hp = module.hparams
    lines = [
        f"# hadainit train: {hp.arch} on {report['data']} (K = {module.num_classes}), last layer {hp.init}",
        "",
        ("Interrupted (Ctrl-C): the values below are those of the epochs done. " if interrupted else "")
        + f"{report['epochs_trained']:.4g} epochs ({report['steps']} steps), lr {hp.lr} ({hp.schedule}), momentum {hp.momentum}, weight decay "
        f"{hp.weight_decay}, precision {report['precision']}, {report['accelerator']}, {seconds:.0f} s"
        + (f" in this session (resumed from a checkpoint after {resumed_at})" if resumed_at is not None else "")
        + (f", {report['steps_per_second']:.1f} steps/s (median epoch)." if report["steps_per_second"] else "."),
        "",
        "| quantity | final value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value:.6g} |" for key, value in sorted(final.items()) if isinstance(value, float)
              and (math.isfinite(value) or math.isinf(value))]
    figures = sorted(p.name for p in out.glob("*.png"))
    if figures:
        lines += ["", "Figures: " + ", ".join(f"`{name}`" for name in figures) + "."]
    if metrics.is_file():
        lines += ["", "Per-epoch values: `metrics.csv` (epoch -1: the monitors' values at initialization)."]
    else:
        lines += ["", "No metrics.csv (no logger): the values above are the trainer's last callback metrics."]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    return report
