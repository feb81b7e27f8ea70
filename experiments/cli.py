"""The ``hadainit`` console command.

Threads: torch's default (one thread per core) makes the small work of these commands several
times slower on a machine with other work running (see README, "A real network"), so every
command runs one torch thread by default, except ``train`` on data it does not know to be small
(CIFAR, or a GPU). ``--threads N`` (anywhere on the command line) or ``HADAINIT_THREADS=N``
chooses N for any command; ``hadainit validate`` and ``real`` run one thread per training process.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "ufm": ("hadainit.experiments.ufm_demo", "the UFM theory reproduced: figures, report.json, report.md (make demo)"),
    "real": ("hadainit.experiments.real", "a quick Hadamard-vs-default comparison on real data (make demo)"),
    "train": ("hadainit.experiments.train", "train a classifier with the monitors on (LightningCLI)"),
    "validate": ("hadainit.experiments.study_run", "the real-data study of the paper's open questions (make validate)"),
    "compare": ("hadainit.experiments.compare", "overlay runs and tabulate their final values"),
    "slowdown": ("hadainit.experiments.slowdown", "slope of the margin against log(epoch) in a run"),
    "demo": ("hadainit.experiments.demo", "the dense UFM from four initializations"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hadainit COMMAND [options] [--threads N]   (hadainit COMMAND --help for a command's options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "--threads N (or HADAINIT_THREADS=N): torch threads; default 1 (small work), train on CIFAR/GPU: torch's"]
    return "\n".join(lines)


def take_threads(argv: list[str]) -> tuple[int | None, list[str]]:
    """``--threads N`` / ``--threads=N`` taken out of ``argv``, else ``HADAINIT_THREADS``: ``(N or None, rest)``.

    >>> take_threads(["ufm", "--threads", "3", "--quick"])
    (3, ['ufm', '--quick'])
    """
    rest, value = [], None
    args = iter(argv)
    for a in args:
        if a == "--threads":
            value = next(args, "")
        elif a.startswith("--threads="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    source = "--threads"
    if value is None and os.environ.get("HADAINIT_THREADS"):
        value, source = os.environ["HADAINIT_THREADS"], "HADAINIT_THREADS"
    if value is None:
        return None, rest
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"{source} must be a positive int, got {value!r}")
    return int(value), rest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"hadainit: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        threads, argv = take_threads(argv)
    except ValueError as err:
        print(f"hadainit: {err}", file=sys.stderr)
        return 2
    import torch

    saved = torch.get_num_threads()
    if threads is not None:
        os.environ["HADAINIT_THREADS"] = str(threads)  # train reads it; worker processes inherit it
        torch.set_num_threads(threads)
    elif argv[0] != "train":  # train decides from its data and accelerator
        torch.set_num_threads(1)
    try:
        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
    finally:
        torch.set_num_threads(saved)


if __name__ == "__main__":
    sys.exit(main())
