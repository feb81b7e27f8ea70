"""``hadainit validate`` (``make validate``): the paper's open questions on real networks, with paired statistics.

Arms: the last layer of {digits MLP, digits CNN, mnist1d MLP} initialized ``orthogonal`` (``hadamard_``:
``Q V^T`` with V random, which a random body cannot tell from any orthogonal head), ``etf`` (the same without
the constant mode) or PyTorch's ``default``, weight decay {0, 5e-4} (the digits MLP; the others 5e-4), seeds paired across arms (same body
init and batch order); SGD with momentum at a constant learning rate, both monitors in eval mode and the
study's margin probe (:mod:`hadainit.experiments.probe`) at log-spaced epochs. Arms that see Q: the
two-layer linear head on real data (:mod:`hadainit.experiments.twolayer`), whose time map is known; the
narrow-head setup (K > d, :mod:`hadainit.experiments.narrow`); and a long full-batch GD run for the
slowdown (:mod:`hadainit.experiments.fullbatch`). Each training run is a ``hadainit train`` configuration
(:func:`run_config`: LightningCLI's model, data, trainer with the probe as a callback, ``nc_monitor``,
``spectral_monitor``, ``seed_everything``, ``out``) run through ``hadainit train``'s own entry point
(:func:`train_one`), without checkpoints or ``curves.png``; its folder ``runs/SETUP/NAME`` holds the
``config.yaml`` LightningCLI wrote beside ``metrics.csv`` and the run report, so
``hadainit train --config runs/SETUP/NAME/config.yaml --out NEW`` trains it again. The other experiments
write ``extra/*.json``; every number of ``report.json`` / ``report.md`` is computed from the runs'
``metrics.csv`` and those files by :mod:`hadainit.experiments.study` (``--analyze-only`` recomputes the report).
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

from .narrow import NARROW, NARROW_WIDTH  # noqa: F401  (NARROW_WIDTH re-exported)
from .runs import prepare_out, write_atomic

SETUPS = {  # name: (data module, arch, lr): each reaches 100% training accuracy within 50-90 epochs
    "digits-mlp": ("Digits", "mlp", 0.05),
    "digits-cnn": ("Digits", "cnn", 0.05),
    "mnist1d-mlp": ("MNIST1D", "mlp", 0.05),
}
INITS = ("orthogonal", "etf", "default")
#: the study's arm names -> ClassifierModule's init names ("orthogonal" is hadamard_ with a random V)
MODULE_INIT = {"orthogonal": "hadamard", "etf": "etf", "default": "default"}
#: the measurement grid: about this many log-spaced epochs (log_spaced_epochs removes duplicates)
MEASURED = 50
#: the quick profile (what the tests run): tiny, but every code path of the study (the paired statistics need
#: 2 seeds; the terminal phase: digits MLP at 100% training accuracy by epoch ~8)
QUICK_EPOCHS = 12
QUICK_STEPS = 300


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


def decays(setup: str, quick: bool) -> tuple[float, ...]:
    """The weight decays a setup runs at: the digits MLP at 0 (the UFM law's setting) and 5e-4 (the weight-decay
    contrast); the CNN and the mnist1d MLP, 2.5x as costly per run, at 5e-4 only (keeps ``make validate`` near
    12 minutes on 2 cores); ``quick``: 5e-4 only."""
    if quick or setup != "digits-mlp":
        return (5e-4,)
    return (0.0, 5e-4)


def plan(quick: bool, seeds: int | None = None, epochs: int | None = None, narrow: bool | None = None) -> list[RunSpec]:
    """The Lightning runs of the study (``quick``: a subset that keeps every question answerable); the
    narrow-head runs only where the K > d initializer exists (``narrow=None``: detect it)."""
    from .narrow import NARROW_INITS, kd_available

    n_seeds = seeds or (2 if quick else 4)
    n_epochs = epochs or (QUICK_EPOCHS if quick else 200)
    setups = ("digits-mlp",) if quick else tuple(SETUPS)
    with_narrow = kd_available() if narrow is None else narrow
    specs = []
    for seed in range(n_seeds):  # seed by seed: a study stopped early still has whole paired sets
        specs += [RunSpec(s, i, wd, seed, n_epochs, 128) for s in setups for wd in decays(s, quick) for i in INITS]
        if with_narrow:
            specs += [RunSpec(NARROW, i, 5e-4, seed, n_epochs, 128) for i in NARROW_INITS]
    return specs


def measured_epochs(epochs: int) -> list[int]:
    """The epochs the monitors and the probe measure at (besides the initialization)."""
    from hadainit.callbacks import log_spaced_epochs

    return log_spaced_epochs(epochs, MEASURED)


#: the package of the data modules :data:`SETUPS` names (their class paths in the configs)
DATA_CLASS = "hadainit.experiments.data."


def run_config(spec: RunSpec, out: str | Path) -> dict:
    """The ``hadainit train`` configuration (LightningCLI's, as a dict) of one study run into the folder ``out``:
    the model, the data module, both monitors in eval mode and the margin probe at :func:`measured_epochs`, a
    one-device CPU trainer without checkpoints or the run report's curves.png, the seed."""
    from .narrow import module_args

    if spec.setup != NARROW and spec.setup not in SETUPS:
        raise ValueError(f"unknown setup {spec.setup!r}; expected one of {(*SETUPS, NARROW)}")
    if spec.setup != NARROW and spec.init not in MODULE_INIT:
        raise ValueError(f"unknown init {spec.init!r} for {spec.setup}; expected one of {tuple(MODULE_INIT)}")
    data_name, arch, lr = SETUPS["digits-mlp" if spec.setup == NARROW else spec.setup]
    head = module_args(spec.init) if spec.setup == NARROW else {"arch": arch, "init": MODULE_INIT[spec.init]}
    when = measured_epochs(spec.epochs)  # measured densely early, sparsely late: log epoch axes
    monitor = {"classifier": "model.fc", "mode": "eval", "plot": False, "at_epochs": when}
    return {
        "seed_everything": spec.seed,
        "model": {**head, "lr": lr, "momentum": 0.9, "weight_decay": spec.weight_decay, "schedule": "constant",
                  "seed": spec.seed},
        "data": {"class_path": DATA_CLASS + data_name, "init_args": {"batch_size": spec.batch_size}},
        "trainer": {"max_epochs": spec.epochs, "accelerator": "cpu", "devices": 1, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1,
                    "callbacks": [{"class_path": "hadainit.experiments.probe.MarginProbe",
                                   "init_args": {"at_epochs": when}}]},
        "nc_monitor": monitor,
        "spectral_monitor": {**monitor, "log_modes": True, "init_basis": "svd" if spec.init == "default" else "auto"},
        "out": str(out),
        "curves": False,
    }


def train_one(spec: RunSpec, root: str) -> dict:
    """One run, in this process, through ``hadainit train``'s entry point (:func:`hadainit.experiments.train.main`)
    on :func:`run_config`: its folder gets ``config.yaml`` (``hadainit train --config`` re-runs it), metrics.csv
    (all the report needs), report.json and report.md."""
    import contextlib
    import io
    import logging
    import tempfile
    import warnings

    import torch

    from . import train

    torch.set_num_threads(1)
    for name in ("lightning.pytorch", "lightning.fabric"):  # no per-run banner ("Seed set to") in the study's output
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|log_every_n_steps).*")
    folder = Path(root) / "runs" / spec.name
    start = time.perf_counter()
    threads = os.environ.pop("HADAINIT_THREADS", None)  # hadainit train would honour it: the study runs one thread
    try:
        with tempfile.TemporaryDirectory(prefix="hadainit-study-") as tmp:  # the input, outside the run folder
            config = Path(tmp) / "config.yaml"
            config.write_text(json.dumps(run_config(spec, folder), indent=1))  # JSON is YAML
            printed, errors = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
                code = train.main(["--config", str(config)])
    finally:
        if threads is not None:
            os.environ["HADAINIT_THREADS"] = threads
    if code != 0:
        raise RuntimeError(f"{spec.name}: hadainit train failed (exit {code}): {errors.getvalue().strip()}")
    sys.stderr.write(errors.getvalue())  # the runs' warnings, as before
    return {**asdict(spec), "name": spec.name, "seconds": time.perf_counter() - start}


def extra_plan(quick: bool) -> list[tuple[str, dict]]:
    """The experiments besides the Lightning runs: the long full-batch GD run (first: the longest task) and the
    two-layer-head configurations."""
    from . import twolayer

    first = plan(quick, seeds=1, narrow=False)[0]  # the determinism check: this run trained a second time
    return ([("fullbatch", {"name": "digits-mlp-fullbatch", "steps": QUICK_STEPS if quick else 12_000, "lr": 0.5})]
            + [("twolayer", cfg) for cfg in twolayer.plan(quick)]
            + [("rerun", {"name": "rerun", "spec": asdict(first)})])


def run_extra(kind: str, payload: dict, root: str) -> dict:
    """One extra experiment, in this process: its result goes to ``root/extra/NAME.json``."""
    from . import fullbatch, twolayer

    start = time.perf_counter()
    if kind == "fullbatch":
        result = fullbatch.run(steps=payload["steps"], lr=payload["lr"])
    elif kind == "twolayer":
        result = twolayer.run_config(payload)
    elif kind == "rerun":  # the same run again, in its own folder: analyze compares the two metrics.csv
        spec = RunSpec(**payload["spec"])
        train_one(spec, str(Path(root) / "rerun"))
        result = {"run": spec.name}
    else:
        raise ValueError(f"unknown experiment kind {kind!r}")
    result.update(kind=kind, name=payload["name"], seconds=time.perf_counter() - start)
    folder = Path(root) / "extra"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{payload['name']}.json", json.dumps(result, default=float))
    return {"kind": kind, "name": payload["name"], "seconds": result["seconds"]}


def run_all(specs: list[RunSpec], root: Path, jobs: int, progress=print,
            extras: list[tuple[str, dict]] = (), journal=None) -> tuple[list[dict], list[dict]]:
    """Every task, ``jobs`` at a time (one thread each); returns (the Lightning runs, the extra experiments).
    ``journal(done, extra)`` is called after each finished task (the study keeps ``runs.json`` current, so a
    study stopped early can be analyzed: ``--analyze-only`` flags what did not finish)."""
    tasks = [("extra", e) for e in extras] + [("run", s) for s in specs]
    total = len(tasks)
    done: list[dict] = []
    extra: list[dict] = []

    def record(i: int, kind: str, result: dict) -> None:
        (done if kind == "run" else extra).append(result)
        progress(f"[{i}/{total}] {result['name']}: {result['seconds']:.1f} s")
        if journal is not None:
            journal(done, extra)

    if jobs <= 1:
        for i, (kind, payload) in enumerate(tasks, 1):
            result = train_one(payload, str(root)) if kind == "run" else run_extra(*payload, str(root))
            record(i, kind, result)
        return done, extra
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(kind, pool.submit(train_one, payload, str(root)) if kind == "run"
                    else pool.submit(run_extra, *payload, str(root))) for kind, payload in tasks]
        for i, (kind, future) in enumerate(futures, 1):
            record(i, kind, future.result())
    done.sort(key=lambda r: [s.name for s in specs].index(r["name"]))
    return done, extra


def run_study(specs: list[RunSpec], out: Path, *, jobs: int, quick: bool, progress=print,
              command: str = "validate", extras: list[tuple[str, dict]] = ()) -> dict:
    """Train ``specs`` into ``out/runs`` (and the ``extras`` into ``out/extra``), record them in ``runs.json``,
    and write the analysis."""
    from .study import analyze

    start = time.perf_counter()
    planned = [{**asdict(s), "name": s.name} for s in specs]

    def journal(done: list[dict], extra: list[dict], finished: bool = False) -> None:
        finished_names = {d["name"] for d in done}
        runs = done + [{**p, "seconds": 0.0, "not_finished": True} for p in planned if p["name"] not in finished_names]
        write_atomic(out / "runs.json", json.dumps({"quick": quick, "wall_seconds": time.perf_counter() - start,
                                                    "runs": runs, "extra": extra, "command": command, "jobs": jobs,
                                                    "finished": finished}, indent=2))

    done, extra = run_all(specs, out, jobs, progress, list(extras), journal=journal)
    wall = time.perf_counter() - start
    journal(done, extra, finished=True)
    return analyze(out, done, quick=quick, seconds=wall, command=command, extra=extra, jobs=jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit validate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/validate"), help="the study folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-figures", action="store_true",
                        help="with --analyze-only: recompute report.md / report.json, leave the figures as they are")
    parser.add_argument("--quick", action="store_true", help="a small subset (what the tests run)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 4; quick 2)")
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
                             command=saved.get("command", "validate"), extra=saved.get("extra", []),
                             jobs=saved.get("jobs"), finished=saved.get("finished", True),
                             figures=not args.no_figures)
        else:
            out = prepare_out(args.out, overwrite=args.overwrite)
            specs = plan(args.quick, args.seeds, args.epochs)
            extras = extra_plan(args.quick)
            print(f"hadainit validate: {len(specs)} training runs and {len(extras)} other experiments, {args.jobs} at "
                  f"a time, into {out}")
            report = run_study(specs, out, jobs=args.jobs, quick=args.quick, extras=extras)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, TypeError) as err:
        print(f"hadainit validate: {err if not isinstance(err, KeyError) else f'runs.json lacks {err}'}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"hadainit validate: wrote {out}/report.md, report.json and figures ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
