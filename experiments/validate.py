"""``hadainit validate`` (``make validate``): the paper's open questions on real networks, with seed spread.

Runs: {digits MLP, digits CNN, mnist1d MLP} x last-layer init {hadamard, etf, default} x weight
decay {0, 5e-4} x seeds, SGD with momentum at a constant learning rate (epochs are then
proportional to training time), both monitors in eval mode every epoch (``lam_i`` logged too).
Each run is a folder with Lightning's ``metrics.csv``; every number of ``report.json`` /
``report.md`` is computed from those files by :mod:`hadainit.experiments.study` (``--analyze-only``
recomputes the report from an existing folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .runs import prepare_out, write_atomic

SETUPS = {  # name: (data module, arch, lr): each reaches 100% training accuracy within 50-90 epochs
    "digits-mlp": ("Digits", "mlp", 0.05),
    "digits-cnn": ("Digits", "cnn", 0.05),
    "mnist1d-mlp": ("MNIST1D", "mlp", 0.05),
}
INITS = ("hadamard", "etf", "default")


@dataclass(frozen=True)
class RunSpec:
    setup: str
    init: str
    weight_decay: float
    seed: int
    epochs: int
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.setup}/{self.init}-wd{self.weight_decay:g}-s{self.seed}"


def plan(quick: bool, seeds: int | None = None, epochs: int | None = None) -> list[RunSpec]:
    """The runs of the study (``quick``: a subset that keeps every question answerable)."""
    n_seeds = seeds or (2 if quick else 3)
    n_epochs = epochs or (40 if quick else 200)
    setups = ("digits-mlp", "mnist1d-mlp") if quick else tuple(SETUPS)
    decays = (5e-4,) if quick else (0.0, 5e-4)
    return [RunSpec(s, i, wd, seed, n_epochs, 128) for s in setups for i in INITS for wd in decays
            for seed in range(n_seeds)]


def train_one(spec: RunSpec, root: str) -> dict:
    """One run, in this process: its folder gets metrics.csv (and nothing else the report needs)."""
    import logging
    import warnings

    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor, log_spaced_epochs

    from . import data
    from .module import ClassifierModule

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-run banner in the study's output
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|log_every_n_steps).*")
    data_name, arch, lr = SETUPS[spec.setup]
    dm = getattr(data, data_name)(batch_size=spec.batch_size)
    folder = Path(root) / "runs" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    L.seed_everything(spec.seed, verbose=False)
    module = ClassifierModule(arch=arch, init=spec.init, num_classes=dm.num_classes, input_shape=dm.input_shape,
                              lr=lr, momentum=0.9, weight_decay=spec.weight_decay, schedule="constant", seed=spec.seed)
    when = log_spaced_epochs(spec.epochs, 50)  # measured densely early, sparsely late: log epoch axes
    monitors = [
        NeuralCollapseMonitor(classifier="model.fc", mode="eval", plot=False, at_epochs=when),
        SpectralMonitor(classifier="model.fc", mode="eval", plot=False, log_modes=True, at_epochs=when,
                        init_basis="svd" if spec.init == "default" else "auto"),
    ]
    start = time.perf_counter()
    trainer = L.Trainer(max_epochs=spec.epochs, accelerator="cpu", devices=1, callbacks=monitors,
                        logger=CSVLogger(folder, name="", version=""), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    return {**asdict(spec), "name": spec.name, "seconds": time.perf_counter() - start}


def run_all(specs: list[RunSpec], root: Path, jobs: int, progress=print) -> list[dict]:
    done = []
    if jobs <= 1:
        for i, spec in enumerate(specs, 1):
            done.append(train_one(spec, str(root)))
            progress(f"[{i}/{len(specs)}] {spec.name}: {done[-1]['seconds']:.1f} s")
        return done
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_one, spec, str(root)) for spec in specs]
        for i, future in enumerate(futures, 1):
            done.append(future.result())
            progress(f"[{i}/{len(specs)}] {done[-1]['name']}: {done[-1]['seconds']:.1f} s")
    return done


def run_study(specs: list[RunSpec], out: Path, *, jobs: int, quick: bool, progress=print,
              command: str = "validate") -> dict:
    """Train ``specs`` into ``out/runs``, record them in ``runs.json``, and write the analysis."""
    from .study import analyze

    start = time.perf_counter()
    done = run_all(specs, out, jobs, progress)
    wall = time.perf_counter() - start
    write_atomic(out / "runs.json", json.dumps({"quick": quick, "wall_seconds": wall, "runs": done,
                                                "command": command}, indent=2))
    return analyze(out, done, quick=quick, seconds=wall, command=command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit validate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/validate"), help="the study folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quick", action="store_true", help="a subset of about a minute (what the tests run)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3; quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 200; quick 40)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs")
    parser.add_argument("--analyze-only", action="store_true", help="recompute the report from --out/runs")
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "jobs"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "seeds" else 1):
            print(f"hadainit validate: --{name} must be >= {2 if name == 'seeds' else 1}, got {value}", file=sys.stderr)
            return 2
    from .study import analyze

    try:
        if args.analyze_only:
            out = args.out
            saved = json.loads((out / "runs.json").read_text())
            report = analyze(out, saved["runs"], quick=saved["quick"], seconds=saved["wall_seconds"],
                             command=saved.get("command", "validate"))
        else:
            out = prepare_out(args.out, overwrite=args.overwrite)
            specs = plan(args.quick, args.seeds, args.epochs)
            print(f"hadainit validate: {len(specs)} runs, {args.jobs} at a time, into {out}")
            report = run_study(specs, out, jobs=args.jobs, quick=args.quick)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, TypeError) as err:
        print(f"hadainit validate: {err if not isinstance(err, KeyError) else f'runs.json lacks {err}'}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"hadainit validate: wrote {out}/report.md, report.json and figures ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
