"""``plot()`` of the dict-valued metrics, in the torchmetrics manner (returns ``(fig, axes)``), readable:
one panel per group of keys of one scale and meaning, never every key under one legend."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["COLLAPSE_GROUPS", "plot_values"]

#: The panels of :meth:`hadainit.metrics.NeuralCollapse.plot` (keys absent from the values are skipped).
COLLAPSE_GROUPS = {
    "NC1: within-class variability": ("nc1", "nc1_trace", "cdnv"),
    "NC2: geometry of the class means": ("equinorm_means", "cos_std_means", "cos_etf_means", "etf_gap_means",
                                         "etf_gap_floor"),
    "NC2: classifier geometry": ("equinorm_classifier", "cos_std_classifier", "cos_etf_classifier",
                                 "etf_gap_classifier"),
    "NC3/NC4: self-duality": ("nc3", "nc3_duality", "unc3", "nc4"),
    "GNC2 energies": ("gnc2_log", "gnc2_riesz", "min_distance_means"),
    "drift from the initial basis": ("drift", "drift_offdiag", "drift_out_of_span", "drift_angle"),
    "KL value": ("kl_lyapunov",),
}


def _series(val: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    steps = [val] if isinstance(val, Mapping) else list(val)
    if not steps or not all(isinstance(step, Mapping) for step in steps):
        raise TypeError("plot() takes a dict of values (one compute()) or a sequence of such dicts (a history)")
    return [{k: float(v) for k, v in step.items() if not isinstance(v, Tensor) or v.dim() == 0} for step in steps]


def plot_values(metric, val=None, ax=None, *, keys: Sequence[str] | None = None,
                groups: Mapping[str, Sequence[str]] = COLLAPSE_GROUPS):
    """Plot ``val`` (default ``metric.compute()``; or a list of such dicts, one line per key over the steps)
    with one panel per group of ``groups`` that has a key in the values; keys of no group share an
    ``"other"`` panel. ``keys`` restricts the plot to those keys. ``ax``: an Axes when one panel results,
    else a sequence of as many Axes. Returns ``(fig, axes)`` (a list of Axes, one per panel).
    """
    import matplotlib.pyplot as plt

    steps = _series(metric.compute() if val is None else val)
    present = list(dict.fromkeys(k for step in steps for k in step))
    if keys is not None:
        unknown = sorted(set(keys) - set(present))
        if unknown:
            raise ValueError(f"plot(keys=...): {unknown} are not among the values {present}")
        present = [k for k in present if k in set(keys)]
    panels: dict[str, list[str]] = {}
    for title, members in groups.items():
        chosen = [k for k in members if k in present]
        if chosen:
            panels[title] = chosen
    grouped = {k for members in panels.values() for k in members}
    other = [k for k in present if k not in grouped]
    if other:
        panels["other"] = other
    if not panels:
        raise ValueError("plot(): no values to plot")
    if ax is None:
        cols = min(3, len(panels))
        rows = -(-len(panels) // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained")
        axes = list(grid.flat)
        for extra in axes[len(panels):]:
            extra.remove()
        axes = axes[: len(panels)]
    else:
        axes = [ax] if not isinstance(ax, Sequence) else list(ax)
        if len(axes) != len(panels):
            raise ValueError(f"plot(ax=...) needs {len(panels)} Axes (panels {list(panels)}), got {len(axes)}")
        fig = axes[0].get_figure()
    steps_axis = torch.arange(len(steps)).tolist()
    for axis, (title, members) in zip(axes, panels.items()):
        for key in members:
            points = [(i, step[key]) for i, step in zip(steps_axis, steps) if key in step]
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step" if len(steps) > 1 else "")
        axis.legend(fontsize=8)
    return fig, axes
