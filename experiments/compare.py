"""``hadainit compare RUN... --out DIR``: overlay runs and tabulate their final values.

A run is any folder holding one Lightning ``metrics.csv`` (a ``hadainit train`` run folder, or a
plain ``CSVLogger`` folder), or the file itself. Runs are labelled by the shortest trailing part of
their paths that tells them apart (``a/hadamard`` and ``b/hadamard``, never two ``hadamard``).
One figure per metric group (the part of a key before ``/``: ``nc``, ``spectral``, ``train``,
...), a panel per key, one line per run; bookkeeping columns (counts, epoch, step, the raw
modes ``lam_i``) are not plotted. The table shows ``--keys`` (default: the main ones present).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hadainit.callbacks.plotting import NOT_PLOTTED, epoch_axis, label, new_figure, save, spans_decade

from .outdir import prepare
from .keys import COMPARE_SUFFIXES
from .runs import find_metrics_csv, read_metrics, series, write_atomic

TABLE_SUFFIXES = COMPARE_SUFFIXES


def labels_for(paths: list[Path]) -> list[str]:
    """The shortest trailing path parts that make every label distinct."""
    parts = [p.resolve().parts if p.is_dir() else p.resolve().parent.parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise ValueError("two of the runs are the same folder")


def plotted(key: str) -> bool:
    leaf = key.split("/")[-1]
    return key not in ("epoch", "epochs_done", "step") and leaf not in NOT_PLOTTED and not (
        leaf.startswith("lam_") and leaf[4:].isdigit())


def table_keys(runs: list[dict], keys: list[str] | None) -> list[str]:
    present = set().union(*(r["columns"] for r in runs))
    if keys is not None:
        missing = [k for k in keys if k not in present]
        if missing:
            raise ValueError(f"--keys {missing} are in none of the runs; columns: {sorted(present)}")
        return keys
    return [k for suffix in TABLE_SUFFIXES for k in sorted(present) if k == suffix or k.endswith(suffix)]


def compare(run_paths: list[Path], out: Path, keys: list[str] | None = None) -> dict:
    if not run_paths:
        raise ValueError("compare needs at least one run")
    out.mkdir(parents=True, exist_ok=True)
    csvs = [find_metrics_csv(p) for p in run_paths]
    runs = []
    for name, csv_path in zip(labels_for(list(run_paths)), csvs):
        table = read_metrics(csv_path)
        runs.append({"name": name, "path": str(csv_path), "table": table,
                     "columns": {k for row in table for k in row if k not in ("epoch", "epochs_done")}})
    shown = table_keys(runs, keys)
    groups: dict[str, list[str]] = {}
    for key in sorted(set().union(*(r["columns"] for r in runs))):
        if plotted(key):
            groups.setdefault(key.split("/")[0] if "/" in key else "other", []).append(key)
    figures = []
    for group, group_keys in groups.items():
        cols = min(4, len(group_keys))
        rows = -(-len(group_keys) // cols)
        fig, axes = new_figure(cols, 4.0, 3.0, nrows=rows)
        for ax, key in zip(axes, group_keys):
            xs, ys = [], []
            for run in runs:
                x, y = series(run["table"], key)
                if x:
                    ax.plot(x, y, "o-", ms=2, label=run["name"])
                    xs, ys = xs + x, ys + y
            epoch_axis(ax, xs)
            label(ax, ax.get_xlabel(), key, logy=spans_decade(ys), legend=ax is axes[0])
        for ax in axes[len(group_keys):]:
            ax.set_visible(False)
        figures.append(save(fig, out / f"{group}.png", f"{group}: {', '.join(r['name'] for r in runs)}"))
    final = {r["name"]: {k: series(r["table"], k)[1][-1] for k in shown if series(r["table"], k)[1]} for r in runs}
    lines = ["| run | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for name, row in final.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4g}" if k in row else "" for k in shown) + " |")
    write_atomic(out / "compare.md", "# hadainit compare\n\n" + "\n".join(lines) + "\n\nFigures: "
                 + ", ".join(f"`{f}`" for f in figures) + "\n")
    result = {"runs": {r["name"]: r["path"] for r in runs}, "keys": shown, "final": final, "figures": figures}
    write_atomic(out / "compare.json", json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or metrics.csv files)")
    parser.add_argument("--out", type=str, required=True, help="the output folder (never one of the runs)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--keys", default=None, help="comma-separated columns for the table")
    args = parser.parse_args(argv)
    try:
        with prepare(args.out, command="compare", overwrite=args.overwrite, inputs=args.runs) as folder:
            out = folder.path
            compare(args.runs, out, None if args.keys is None else [k for k in args.keys.split(",") if k])
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"hadainit compare: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that cannot be written
        print(f"hadainit compare: could not write {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print((out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
