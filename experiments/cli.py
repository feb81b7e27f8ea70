"""The ``hadainit`` console command."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "ufm": ("hadainit.experiments.ufm", "the UFM theory reproduced: figures, report.json, report.md (make demo)"),
    "real": ("hadainit.experiments.real", "a quick Hadamard-vs-default comparison on real data (make demo)"),
    "train": ("hadainit.experiments.train", "train a classifier with the monitors on (LightningCLI)"),
    "validate": ("hadainit.experiments.validate", "the real-data study of the paper's open questions (make validate)"),
    "compare": ("hadainit.experiments.compare", "overlay runs and tabulate their final values"),
    "slowdown": ("hadainit.experiments.slowdown", "slope of the margin against log(epoch) in a run"),
    "demo": ("hadainit.experiments.demo", "the dense UFM from four initializations"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hadainit COMMAND [options]   (hadainit COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"hadainit: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
