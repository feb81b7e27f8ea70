"""Figure helpers for the study's figures (``hadainit validate``, ``hadainit real``, ``hadainit slowdown``).

Built on the callbacks' helpers, with what a printed figure needs: a title wrapped to the figure's width with
room reserved for it (never clipped), log epoch axes on every panel alike (epoch 0, the initialization, is
left out of log axes rather than switching a panel to symlog), and few enough ticks not to collide.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from hadainit.callbacks.plotting import label, new_figure

__all__ = ["label", "new_figure", "save", "wrap_title", "log_epoch_axis", "log_ticks", "positive"]

TITLE_SIZE = 10.0


def wrap_title(title: str, width_inches: float, fontsize: float = TITLE_SIZE) -> list[str]:
    """``title`` broken into lines that fit ``width_inches`` at ``fontsize`` (an average glyph is ~0.55 em wide)."""
    chars = max(20, int(width_inches * 72 / (0.55 * fontsize)) - 2)
    return textwrap.wrap(title, chars) or [""]


def save(fig, path: Path, title: str | None = None, dpi: int = 110) -> str:
    """Lay out and write ``fig``: the title wrapped to the figure width, the panels below it (matplotlib's
    constrained layout reserves the title's lines, so nothing is clipped or overlaps)."""
    width, _ = fig.get_size_inches()
    if title:
        fig.suptitle("\n".join(wrap_title(title, width)), fontsize=TITLE_SIZE)
    fig.set_layout_engine("constrained")
    fig.savefig(path, dpi=dpi)
    return Path(path).name


def log_tick_subs(decades: float) -> tuple[float, ...]:
    """The mantissas of the labelled ticks for a log axis spanning ``decades``: 1, 2, 5 x 10^k within 1.5
    decades, 1, 3 x 10^k within 3, powers of ten beyond (labels like ``50100200500`` collide otherwise).

    >>> log_tick_subs(1.0), log_tick_subs(2.3), log_tick_subs(4.1)
    ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,))
    """
    if decades <= 1.5:
        return (1.0, 2.0, 5.0)
    if decades <= 3.0:
        return (1.0, 3.0)
    return (1.0,)


def _sparse_log_locator():
    import numpy as np
    from matplotlib.ticker import LogLocator

    class SparseLogLocator(LogLocator):
        """:class:`LogLocator` whose mantissas follow the axis' span at draw time (:func:`log_tick_subs`)."""

        def tick_values(self, vmin, vmax):
            if vmin > 0 and vmax > 0 and math.isfinite(vmin) and math.isfinite(vmax):
                self._subs = np.array(log_tick_subs(abs(math.log10(vmax / vmin))))  # set_params resets numticks
            return super().tick_values(vmin, vmax)

    return SparseLogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12)


def log_ticks(axis) -> None:
    """Labelled major ticks at 1, 2, 5 x 10^k (a short range), 1, 3 x 10^k or powers of ten (a long one), as
    plain numbers (``%g``), no minor labels: short labels that do not collide on narrow panels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_locator(_sparse_log_locator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def log_epoch_axis(ax, xlabel: str = "epochs completed (log scale)") -> None:
    """A log x axis (every panel alike; epoch 0 is not drawn) with :func:`log_ticks`."""
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel(xlabel)


def positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The points with x > 0 (for a log x axis)."""
    pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and math.isfinite(y)]
    return [p[0] for p in pts], [p[1] for p in pts]
