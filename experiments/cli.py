"""The ``hadainit`` console command: ``hadainit ufm | train | compare | demo``."""

from __future__ import annotations

import sys

COMMANDS = {
    "ufm": "hadainit.experiments.ufm",
    "train": "hadainit.experiments.train",
    "compare": "hadainit.experiments.compare",
    "slowdown": "hadainit.experiments.slowdown",
    "demo": "hadainit.experiments.demo",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: hadainit {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
