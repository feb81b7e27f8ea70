"""``hadainit slowdown RUN``: the slowdown of margin growth on a real run, against the UFM law.

In the spectral UFM on the symmetric manifold the time to reach margin gamma is
``t(gamma) ~ e^gamma / (2 gamma)`` (SPEC 5): the margin grows by ``gamma / (gamma - 1)``,
about 1, per e-fold of training time. The counterpart on a real run is the slope of the
margin against log(epoch), fitted by least squares: with a constant learning rate,
epochs are proportional to time. Reads any ``metrics.csv`` of a run with a
:class:`~hadainit.callbacks.SpectralMonitor`; writes ``slowdown.json`` and ``slowdown.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hadainit.ufm.forecast import log_epoch_slope

from .runs import read_metrics, series
from .keys import MARGIN_DEFAULT_SUFFIXES, TRAIN_ACC

DEFAULT_KEYS = MARGIN_DEFAULT_SUFFIXES


def pick_key(table: list[dict], key: str | None) -> str:
    keys = {k for row in table for k in row}
    if key is not None:
        if key not in keys:
            raise ValueError(f"no column {key!r} in the run; columns: {sorted(keys)}")
        return key
    for suffix in DEFAULT_KEYS:
        found = sorted(k for k in keys if k.endswith("/" + suffix))
        if found:
            return found[0]
    raise ValueError(f"no margin column (…/{' …/'.join(DEFAULT_KEYS)}) in the run: was a SpectralMonitor on?")


def terminal_start(table: list[dict], epochs: float | None = None) -> float:
    """The terminal phase of a run of ``epochs`` epochs (default: the last logged): from 100% training
    accuracy on, but at least a tenth of the run; the second half if it never reached 100%."""
    if epochs is None:
        epochs = max((r["epochs_done"] for r in table), default=0.0)
    reached = next((r["epochs_done"] for r in table if r["epochs_done"] > 0 and r.get(TRAIN_ACC, 0.0) >= 1.0), None)
    return max(reached, epochs / 10) if reached is not None else epochs / 2


def slowdown(table: list[dict], key: str | None = None, min_epoch: float | None = None) -> dict:
    """The fitted slope of ``key`` against log(epochs completed) over epochs >= ``min_epoch`` (default: the
    terminal phase, :func:`terminal_start`, the window ``hadainit validate`` fits), with the fit's R^2."""
    key = pick_key(table, key)
    if min_epoch is None:
        min_epoch = terminal_start(table)
    epochs, values = series(table, key)
    kept = [(e, v) for e, v in zip(epochs, values) if e >= min_epoch and e > 0]  # log(epoch): epochs > 0
    if len(kept) < 2:
        raise ValueError(f"{key}: fewer than two epochs >= {min_epoch:g} (and > 0) to fit a slope")
    slope, intercept = log_epoch_slope([e for e, _ in kept], [v for _, v in kept])
    import math

    ys = [v for _, v in kept]
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    residual = sum((y - slope * math.log(e) - intercept) ** 2 for e, y in kept)
    last = kept[-1][1]
    # R^2 of a line through two points is 1 by construction: undefined, not a measure of fit
    r2 = (1.0 - residual / total if total > 0 else 1.0) if len(kept) >= 3 else None
    return {
        "key": key, "min_epoch": min_epoch, "epochs": [e for e, _ in kept], "values": ys,
        "all_epochs": epochs, "all_values": values,
        "slope_per_efold": slope, "intercept": intercept, "r2": r2, "points": len(kept),
        "ufm_slope_per_efold": last / (last - 1.0) if last > 1.0 else None,
        "ratio_to_ufm": slope / (last / (last - 1.0)) if last > 1.0 else None,
    }


def plot(result: dict, path: Path) -> None:
    import math

    from .figures import label, new_figure, save

    fig, (ax,) = new_figure()
    pts = [(e, v) for e, v in zip(result["all_epochs"], result["all_values"]) if e > 0]
    ax.plot([e for e, _ in pts], [v for _, v in pts], "o", ms=2, color="0.7", label="outside the fit window")
    e, v = result["epochs"], result["values"]
    ax.plot(e, v, "o", ms=3, color="tab:blue", label=f"{result['key']} (epochs >= {result['min_epoch']:g})")
    fit = [result["slope_per_efold"] * math.log(x) + result["intercept"] for x in e]
    ax.plot(e, fit, "-", color="tab:blue",
            label=f"fit: {result['slope_per_efold']:.3g} per e-fold"
            + (f" (R^2 {result['r2']:.3f})" if result["r2"] is not None else " (2 points: no R^2)"))
    ufm = result["ufm_slope_per_efold"] or 1.0
    ax.plot(e, [v[-1] + ufm * math.log(x / e[-1]) for x in e], "k--",
            label=f"UFM law: {ufm:.3g} per e-fold (through the last point)")
    label(ax, "epochs completed (log scale)", result["key"], logx=True)
    save(fig, path, "Margin growth against log(epoch)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit slowdown", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a metrics.csv, or a run folder holding one")
    parser.add_argument("--key", default=None, help="the margin column (default: …/spectral_margin)")
    parser.add_argument("--min-epoch", type=float, default=None,
                        help="fit over epochs completed >= this (default: the terminal phase, from 100%% training "
                             "accuracy and at least a tenth of the run, as hadainit validate fits)")
    parser.add_argument("--out", type=Path, default=None, help="folder for slowdown.json / .png (default: the run's)")
    args = parser.parse_args(argv)
    try:
        result = slowdown(read_metrics(args.run), args.key, args.min_epoch)
    except (FileNotFoundError, ValueError) as err:
        print(f"hadainit slowdown: {err}", file=sys.stderr)
        return 2
    out = args.out or (args.run if args.run.is_dir() else args.run.parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slowdown.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "slowdown.png")
    ufm = result["ufm_slope_per_efold"]
    fit = f"R^2 {result['r2']:.3f}" if result["r2"] is not None else "2 points: no R^2"
    print(f"{result['key']}: slope {result['slope_per_efold']:.4g} per e-fold of epochs over {result['points']} epochs >= "
          f"{result['min_epoch']:g} ({fit})" + (f"; UFM law: {ufm:.4g}" if ufm else ""))
    if result["r2"] is None:
        print(f"hadainit slowdown: only 2 epochs in the window: the slope is the line through them and says nothing "
              "about how well a log law fits (R^2 is 1 by construction, so it is not reported); widen the window with "
              "--min-epoch or measure more epochs", file=sys.stderr)
    elif result["r2"] < 0.9:
        print(f"hadainit slowdown: R^2 {result['r2']:.2f}: the margin is not linear in log(epoch) over this window, "
              "so one slope summarizes it poorly (see slowdown.png; --min-epoch moves the window)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
