"""``hadainit compare RUN_DIR... --out DIR``: overlay runs of ``hadainit train`` and tabulate their final values."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hadainit.callbacks.plotting import label, new_figure, save

TABLE_KEYS = ("val/acc", "train/acc", "nc/nc1", "nc/cdnv", "nc/etf_gap_means", "nc/etf_gap_classifier", "nc/nc3",
              "nc/nc4", "nc/kl_lyapunov", "spectral/drift", "spectral/drift_out_of_span", "spectral/logit_leakage", "spectral/kl_lyapunov")


def load_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory of `hadainit train` (no report.json)")
    report = json.loads(path.read_text())
    report["name"] = f"{Path(run_dir).name} ({report['config']['init']})"
    return report


def compare(run_dirs: list[Path], out: Path) -> dict:
    """One figure per metric present in every run (against epoch), and a table of final values."""
    if len(run_dirs) < 1:
        raise ValueError("compare needs at least one run directory")
    runs = [load_run(r) for r in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    common = set.intersection(*({k for row in r["epochs"] for k in row} for r in runs)) - {"epoch"}
    figures = []
    for key in sorted(common):
        fig, (ax,) = new_figure()
        positive = True
        for run in runs:
            epochs = [row["epoch"] for row in run["epochs"] if key in row]
            values = [row[key] for row in run["epochs"] if key in row]
            positive &= all(v > 0 and math.isfinite(v) for v in values)
            ax.plot(epochs, values, "o-", ms=3, label=run["name"])
        label(ax, "epoch", key, logy=positive)
        figures.append(save(fig, out / (key.replace("/", "_") + ".png"), key))
    table = {run["name"]: {k: run["final"].get(k) for k in TABLE_KEYS if k in run["final"]} for run in runs}
    keys = [k for k in TABLE_KEYS if any(k in row for row in table.values())]
    lines = ["| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join("" if row.get(k) is None else f"{row[k]:.4g}" for k in keys) + " |")
    (out / "compare.md").write_text("# hadainit compare\n\n" + "\n".join(lines) + "\n\nFigures: "
                                    + ", ".join(f"`{f}`" for f in figures) + "\n")
    result = {"runs": [str(r) for r in run_dirs], "final": table, "figures": figures}
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories written by `hadainit train`")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        compare(args.runs, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"hadainit compare: {err}", file=sys.stderr)
        return 2
    print((args.out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
