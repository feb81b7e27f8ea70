"""``hadainit real``: a quick look at a real network, Hadamard vs default last-layer init (part of ``make demo``).

An MLP on scikit-learn's digits, one seed per init, both monitors every epoch: the same
runs, analysis and figures as ``hadainit validate`` (see there), small enough for a demo.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .runs import prepare_out
from .validate import RunSpec, run_study


def plan(epochs: int) -> list[RunSpec]:
    return [RunSpec("digits-mlp", init, 5e-4, 0, epochs, 128) for init in ("hadamard", "default")]


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
        report = run_study(plan(args.epochs), out, jobs=min(2, os.cpu_count() or 1), quick=True,
                           progress=lambda _: None, command="real")
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"hadainit real: {err}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"hadainit real: wrote {out}/report.md and figures in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
