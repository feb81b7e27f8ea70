"""Matplotlib helpers (Agg backend: no display needed), shared by the callbacks and the validation runs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.2):
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save(fig, path: Path, title: str | None = None) -> str:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def label(ax, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)


NOT_PLOTTED = ("epoch", "num_classes_seen", "nc1_rank")  # bookkeeping, not quantities to watch


def plot_history(history: list[dict], path: Path, title: str) -> str | None:
    """One PNG with a panel per scalar quantity against epoch (log scale where positive values span a decade)."""
    keys = [k for k in (history[0] if history else {}) if k not in NOT_PLOTTED and isinstance(history[0][k], (int, float))]
    if not keys:
        return None
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes.flat, keys):
        values = [h.get(key, math.nan) for h in history]
        ax.plot(epochs, values, "o-", ms=3)
        finite = [v for v in values if math.isfinite(v)]
        label(ax, "epoch", key, logy=bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite), legend=False)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    return save(fig, path, title)
