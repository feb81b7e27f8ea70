"""Matplotlib helpers shared by the callbacks and the validation runs.

Figures are built as ``matplotlib.figure.Figure`` objects, never through pyplot,
and matplotlib is imported only when a figure is made: importing hadainit never
changes the user's matplotlib backend.
"""

from __future__ import annotations

import math
from pathlib import Path

#: History keys that are bookkeeping, not quantities to watch.
NOT_PLOTTED = ("epoch", "step", "epochs_done", "num_classes_seen", "nc1_rank", "num_samples", "num_ignored")


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.2, nrows: int = 1):
    """A ``Figure`` and its axes as a flat list (row-major)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save(fig, path: Path, title: str | None = None) -> str:
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.96) if title else None)  # room for the title above the panels
    fig.savefig(path, dpi=110)
    return Path(path).name


def spans_decade(values) -> bool:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def epoch_axis(ax, xs, xlabel: str = "epochs completed") -> None:
    """Logarithmic epoch axis when the run spans more than a decade; symlog keeps epoch 0 (the initialization)."""
    positive = [x for x in xs if math.isfinite(x) and x > 0]
    if positive and max(positive) > 10 * min(positive):
        if any(x <= 0 for x in xs):
            ax.set_xscale("symlog", linthresh=1.0)
        else:
            ax.set_xscale("log")
    ax.set_xlabel(xlabel)


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


def history_keys(history: list[dict], keys=None) -> list[str]:
    """Scalar keys over all rows, in first-seen order (a key that appears late, like nc4, is kept)."""
    seen: dict[str, None] = {}
    for row in history:
        for key, value in row.items():
            if key not in NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool):
                seen.setdefault(key)
    return [k for k in seen if keys is None or k in keys]


def plot_history(history: list[dict], path: Path, title: str, keys=None, x_key: str = "epochs_done"):
    """One ``Figure`` with a panel per scalar quantity against ``x_key``, saved to ``path``; None if nothing to plot."""
    keys = history_keys(history, keys)
    if not keys:
        return None
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = new_figure(cols, 4.0, 3.0, nrows=rows)
    for ax, key in zip(axes, keys):
        points = [(h[x_key], h[key]) for h in history if key in h and x_key in h]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "o-", ms=3)
        epoch_axis(ax, xs)
        label(ax, ax.get_xlabel(), key, logy=spans_decade(ys), legend=False)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    save(fig, path, title)
    return fig
