"""``hadainit real``: a quick look at a real network, orthogonal (``hadamard_``) vs default last-layer init (``make demo``).

An MLP on scikit-learn's digits, one seed per init, both monitors and the margin probe at log-spaced
epochs (:func:`hadainit.experiments.study_run.measured_epochs`): the same runs, analysis and figures as
``hadainit validate`` (see there), small enough for a demo. Prints a line per finished run, then a
short summary and the report's path.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .runs import prepare_out
from .study_run import RunSpec, run_study


def plan(epochs: int) -> list[RunSpec]:
    return [RunSpec("digits-mlp", init, 5e-4, 0, epochs, 128) for init in ("orthogonal", "default")]


def summary_lines(report: dict) -> list[str]:
    """The few numbers a demo user wants: per init, final accuracies, drift, leakage; the runs excluded."""
    lines = []
    for group, v in sorted(report["groups"].items()):
        _, init, _ = group.split("|")
        get = lambda k: v[k]["mean"]  # noqa: E731  (one seed: the mean is the value)
        lines.append(f"  {init:<10} train acc {get('train_acc'):.3f}  test acc {get('val_acc'):.3f}  drift "
                     f"{get('drift'):.2f}  logit_leakage {get('logit_leakage'):.2f}  label-free distance "
                     f"{get('label_free_distance'):.2f}")
    for e in report["excluded"]:
        lines.append(f"  excluded: {e['name']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit real", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/real"))
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    if args.epochs < 4:
        print(f"hadainit real: --epochs must be >= 4, got {args.epochs}", file=sys.stderr)
        return 2
    try:
        out = prepare_out(args.out, overwrite=args.overwrite)
        specs = plan(args.epochs)
        print(f"hadainit real: {len(specs)} runs of {args.epochs} epochs (digits MLP), into {out}", flush=True)
        report = run_study(specs, out, jobs=min(2, os.cpu_count() or 1), quick=True,
                           progress=lambda line: print(f"hadainit real: {line}", flush=True), command="real")
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"hadainit real: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(report)))
    print(f"hadainit real: wrote {out}/report.md, report.json and {len(report['figures'])} figures in "
          f"{report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
