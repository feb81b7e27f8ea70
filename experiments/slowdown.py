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

DEFAULT_KEYS = ("spectral_margin", "margin_mean", "class_margin_mean")


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


def slowdown(table: list[dict], key: str | None = None, min_epoch: float = 1.0) -> dict:
    """The fitted slope of ``key`` against log(epochs completed) over epochs >= ``min_epoch``."""
    key = pick_key(table, key)
    epochs, values = series(table, key)
    kept = [(e, v) for e, v in zip(epochs, values) if e >= min_epoch]
    if len(kept) < 2:
        raise ValueError(f"{key}: fewer than two epochs >= {min_epoch} to fit a slope")
    slope, intercept = log_epoch_slope([e for e, _ in kept], [v for _, v in kept])
    last = kept[-1][1]
    return {
        "key": key, "min_epoch": min_epoch, "epochs": [e for e, _ in kept], "values": [v for _, v in kept],
        "slope_per_efold": slope, "intercept": intercept,
        "ufm_slope_per_efold": last / (last - 1.0) if last > 1.0 else None,
        "ratio_to_ufm": slope / (last / (last - 1.0)) if last > 1.0 else None,
    }


def plot(result: dict, path: Path) -> None:
    import math

    from hadainit.callbacks.plotting import label, new_figure, save

    fig, (ax,) = new_figure()
    e, v = result["epochs"], result["values"]
    ax.plot(e, v, "o", ms=3, label=result["key"])
    fit = [result["slope_per_efold"] * math.log(x) + result["intercept"] for x in e]
    ax.plot(e, fit, "-", label=f"fit: {result['slope_per_efold']:.3g} per e-fold")
    ax.plot(e, [v[-1] + math.log(x / e[-1]) for x in e], "--", label="UFM law: 1 per e-fold (through the last point)")
    label(ax, "epochs completed", result["key"], logx=True)
    save(fig, path, "Margin growth against log(epoch)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit slowdown", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a metrics.csv, or a run folder holding one")
    parser.add_argument("--key", default=None, help="the margin column (default: …/spectral_margin)")
    parser.add_argument("--min-epoch", type=float, default=1.0, help="fit over epochs completed >= this")
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
    print(f"{result['key']}: slope {result['slope_per_efold']:.4g} per e-fold of epochs "
          f"(UFM law: {ufm:.4g})" if ufm else f"{result['key']}: slope {result['slope_per_efold']:.4g} per e-fold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
