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


#: Readable panel labels of the monitors' keys (docs/theory.md §4-§7 define them); others: the key, spaced.
LABELS = {
    "nc1": "NC1  tr(Σ_W Σ_B⁺)/K", "nc1_eig_ratio": "NC1 eigenvalue ratio", "nc1_trace": "NC1 (trace ratio)",
    "within_class_trace": "within-class trace  tr Σ_W", "cdnv": "CDNV (class-distance normalized var.)",
    "equinorm_means": "norm spread of class means (CV)", "cos_std_means": "cosine spread of class means (std)",
    "cos_etf_means": "class means: cosines vs ETF", "etf_gap_means": "class means: distance to simplex ETF",
    "gnc2_log": "GNC2 log energy", "gnc2_riesz": "GNC2 Riesz energy",
    "equinorm_classifier": "norm spread of classifier rows (CV)", "cos_std_classifier": "cosine spread of rows (std)",
    "cos_etf_classifier": "classifier rows: cosines vs ETF", "etf_gap_classifier": "classifier: distance to ETF",
    "nc3": "NC3  classifier vs class means", "nc3_duality": "NC3 duality gap", "unc3": "NC3 (uniform duality)",
    "kl_lyapunov": "Lyapunov value V (KL)", "nc4": "NC4  mismatch with nearest class mean",
    "drift": "drift from the initial basis", "drift_offdiag": "drift inside span(V0), off-diagonal",
    "drift_out_of_span": "drift out of span(V0)", "drift_angle": "largest principal angle to span(V0) (rad)",
    "sv_max": "largest singular value of W", "sv_min": "smallest singular value of W",
    "sv_cv": "singular values of W (CV)", "logit_leakage": "logit leakage",
    "logit_residual": "logit residual", "lam_min": "smallest mode λ", "lam_mean": "mean mode λ",
    "lam_max": "largest mode λ", "modes_nonpositive": "modes λ ≤ 0 (count)", "etf_angle": "angle to the ETF (rad)",
    "kl_lyapunov_modes": "V(λ) from the modes", "spectral_margin": "spectral margin",
    "margin_mean": "sample margin (mean)", "margin_min": "sample margin (min)",
    "margin_positive": "samples with positive margin (fraction)", "class_margin_mean": "class-mean margin (mean)",
    "class_margin_min": "class-mean margin (min)", "logit_norm": "logit norm",
}


def readable(key: str) -> str:
    """The panel label of a logged key (``nc_eval/nc1`` -> ``NC1  tr(Σ_W Σ_B⁺)/K``)."""
    leaf = key.rsplit("/", 1)[-1]
    return LABELS.get(leaf, leaf.replace("_", " "))


def log_limits(ax, xs, ys) -> None:
    """A log y axis scaled to the values after initialization (x > 0): the init value (e.g. ~1e-8 for a
    Hadamard init's drift) would squash the useful range; when it lies off the scale, the panel says so."""
    later = [y for x, y in zip(xs, ys) if x > 0 and math.isfinite(y) and y > 0]
    first = [y for x, y in zip(xs, ys) if x <= 0 and math.isfinite(y)]
    if len(later) < 2 or min(later) == max(later):
        return
    lo, hi = min(later), max(later)
    pad = (hi / lo) ** 0.05
    ax.set_ylim(lo / pad, hi * pad)
    off = [y for y in first if not lo / pad <= y <= hi * pad]
    if off:
        ax.text(0.02, 0.02, f"at init: {off[0]:.2g} (off scale)", transform=ax.transAxes, fontsize=7, color="0.35")


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
    """One ``Figure`` with a panel per scalar quantity against ``x_key``, saved to ``path``; None if nothing to plot.

    Panels carry readable labels (:func:`readable`), share one epoch range (a key measured later, like NC4,
    sits in the same frame as the others) and put log scales on the values after initialization."""
    keys = history_keys(history, keys)
    if not keys:
        return None
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = new_figure(cols, 3.4, 2.6, nrows=rows)
    all_x = [h[x_key] for h in history if x_key in h and math.isfinite(h[x_key])]
    for ax, key in zip(axes, keys):
        points = [(h[x_key], h[key]) for h in history if key in h and x_key in h]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "o-", ms=2.5, lw=1)
        epoch_axis(ax, all_x)
        if all_x and min(all_x) < max(all_x):
            ax.set_xlim(min(all_x), max(all_x) * 1.05 if ax.get_xscale() != "linear" else
                        max(all_x) + 0.03 * (max(all_x) - min(all_x)))
        logy = spans_decade([y for x, y in points if x > 0] or ys)
        ax.set_title(readable(key), fontsize=8.5)
        label(ax, ax.get_xlabel(), "", logy=logy, legend=False)
        if logy:
            log_limits(ax, xs, ys)
        ax.tick_params(which="both", labelsize=7)
        ax.xaxis.label.set_size(7.5)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    save(fig, path, title)
    return fig
