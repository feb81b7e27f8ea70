"""The benchmark rows of issue 6; each returns result dicts (seconds, ratio, goal, met)."""

from __future__ import annotations

import json
import os
import statistics
import warnings
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from hadainit import _kernels, fwht, hadamard_, hadamard_matrix
from hadainit.hadamard import _fwht_reference
from hadainit.metrics import NeuralCollapse
from hadainit.metrics.functional import neural_collapse
from hadainit.ufm import UFM, spectral_flow, spectral_gd
from hadainit.ufm.dynamics import _rhs_reference, spectral_rhs

from . import peers
from .harness import compare, compare_rounds, ratio_spread


def _row(benchmark: str, case: str, seconds: dict, *, ratio=None, goal=None, met=None, **extra) -> dict:
    return {"benchmark": benchmark, "case": case, "seconds": seconds, "ratio": ratio, "goal": goal, "met": met, **extra}


#: (log2 n, batch): 4 MiB (float32) at n >= 2^14, which stays in a large L3; 2^14 x 256 is 16 / 32 MiB,
#: from memory, and at 32 MiB glibc serves every fresh output with a new mmap (page faults)
FWHT_SIZES = [(8, 64), (10, 64), (12, 64), (14, 64), (16, 16), (20, 1), (14, 256)]
FWHT_QUICK = [(8, 8), (10, 4)]


def bench_kernels(device: torch.device, quick: bool) -> list[dict]:
    """The compiled CPU kernels: built (or loaded) here, before any timed row; a first build's cost."""
    status = _kernels.status()
    seconds = {"load": status.load_seconds or 0.0}
    extra = {"available": status.available, "reason": status.reason, "recorded_build_s": status.build_seconds,
             "flags": list(status.flags)}
    if status.available:
        extra["cache_bytes"] = list(_kernels.kernel().cache_bytes())
    if not quick and status.available:
        fresh = _fresh_build_seconds()
        if fresh is not None:
            seconds["first_build"] = fresh
    return [_row("compiled CPU kernels", "first build (fresh cache) / load", seconds, **extra)]


def _fresh_build_seconds() -> float | None:
    """Wall time of a build into an empty extension cache, in a fresh process (what a new user pays once)."""
    code = "import json; from hadainit._kernels import status; s = status(); print(json.dumps([s.available, s.build_seconds]))"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=tmp)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    try:
        ok, seconds = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return seconds if ok else None


#: What a user of each entry point pays at import, and what it must not pull in.
IMPORTS = {"torch": "torch", "hadainit": "hadainit", "hadainit.metrics": "hadainit.metrics",
           "hadainit.callbacks": "hadainit.callbacks"}
HEAVY = ("lightning", "torchmetrics", "matplotlib", "scipy", "sklearn", "jsonargparse", "triton",
         "torch.utils.cpp_extension", "setuptools")


def bench_import(device: torch.device, quick: bool) -> list[dict]:
    """Import cost of each entry point in a fresh process (best of a few), and the heavy modules it loads."""
    code = ("import sys, time, json; t = time.perf_counter(); import {m}; dt = time.perf_counter() - t; "
            f"print(json.dumps([dt, sorted(h for h in {HEAVY!r} if h in sys.modules)]))")
    seconds, loaded = {}, {}
    entries = {k: IMPORTS[k] for k in ("torch", "hadainit")} if quick else IMPORTS  # quick: the ratio's two
    for label, module in entries.items():
        best = None
        for _ in range(1 if quick else 3):
            out = subprocess.run([sys.executable, "-c", code.format(m=module)], capture_output=True, text=True, check=True)
            dt, heavy = json.loads(out.stdout.strip().splitlines()[-1])
            best = dt if best is None else min(best, dt)
        seconds[label], loaded[label] = best, heavy
    return [_row("import cost", "fresh process, best of 3", seconds, ratio=seconds["hadainit"] / seconds["torch"],
                 goal="import hadainit: nothing heavy beyond torch", met=not loaded["hadainit"],
                 heavy_modules=loaded)]


def bench_fwht(device: torch.device, quick: bool) -> list[dict]:
    """fwht vs a same-size copy (the bandwidth bound) and vs the installable peers, side by side.

    The bound is the time to move the bytes a transform must move at least
    (read x once, write y once) at the copy rate measured on a buffer of the
    same size, in the same rounds: ``x.clone()``, which allocates its output as
    ``fwht`` does (the row's ratio), and ``fwht(x, out=y)`` against
    ``y.copy_(x)``, neither allocating (``out_over_copy_into``: at 32 MiB the
    fresh output's page faults dominate both ``fwht`` and ``clone``).
    Peers: :mod:`benchmarks.peers` (their conventions noted there).
    """
    _kernels.kernel()  # a first build happens here, never inside a timed row
    rows = []
    for dtype in (torch.float32, torch.float64):
        for e, batch in FWHT_QUICK if quick else FWHT_SIZES:
            n = 1 << e
            x = torch.randn(batch, n, dtype=dtype, device=device)
            y = torch.empty_like(x)
            calls = {"fwht": lambda: fwht(x), "copy": lambda: x.clone(),
                     "fwht_out": lambda: fwht(x, out=y), "copy_into": lambda: y.copy_(x)}
            peer_calls, as_fwht, notes = peers.candidates(x)
            calls.update(peer_calls)
            ref = _fwht_reference(x, 1)
            if e <= 12:
                h = hadamard_matrix(n, dtype=dtype, device=device)
                calls["dense"] = lambda: x @ h
                as_fwht["dense"] = lambda y: y
            scale = ref.abs().max().item()
            errors = {"fwht": (fwht(x) - ref).abs().max().item() / scale}
            for name, back in as_fwht.items():
                errors[name] = (back(calls[name]()).to(ref) - ref).abs().max().item() / scale
            rounds = compare_rounds(calls, device=device, repeats=3 if quick else 9,
                                    min_seconds=0.0 if quick else 0.05)
            t = {name: statistics.median(v) for name, v in rounds.items()}
            over_copy = ratio_spread(rounds, "fwht", "copy")
            out_over_copy = ratio_spread(rounds, "fwht_out", "copy_into")
            vs_peers = {name: ratio_spread(rounds, name, "fwht") for name in calls
                        if name not in ("fwht", "copy", "fwht_out", "copy_into")}
            bound_goal = e >= 14
            met = all(r[0] > 1 for r in vs_peers.values()) and (over_copy[0] <= 3 or not bound_goal)
            rows.append(_row(
                "fwht vs copy and peers", f"n=2^{e} batch {batch} {str(dtype)[6:]}", t,
                ratio=over_copy[0], goal=("<= 3x copy, " if bound_goal else "") + "faster than every peer", met=met,
                fwht_over_copy=over_copy, out_over_copy_into=out_over_copy, peers_over_fwht=vs_peers, max_rel_err=errors, peer_notes=notes,
                kernel=_kernels.status().available,
            ))
    return rows


def bench_reduced_vs_dense(device: torch.device, quick: bool) -> list[dict]:
    """One reduced CE GD step vs one dense UFM GD step (d = K), after checking they agree."""
    rows = []
    for k in (64, 128) if quick else (256, 1024, 2048):
        gen = torch.Generator().manual_seed(k)
        a = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
        model = UFM.from_spectrum(k, k, a, generator=gen, device=device)
        a_dev = a.to(device)
        model.gradient_descent(1.0, 3, record=())
        red = spectral_gd(a_dev, a_dev, lr=1.0, steps=3, record_every=3)
        agree = ((model.spectrum()[0] - red.a[-1]).abs() / red.a[-1]).max().item()
        t = compare(
            {"reduced": lambda: spectral_rhs(a_dev, a_dev, "walsh", 1, (0.0, 0.0), "ce"),
             "dense": lambda: model.step(1.0)},
            device=device, repeats=3 if k >= 1024 else 5, min_seconds=0.0 if quick else 0.05,
        )
        rows.append(_row("reduced vs dense GD step", f"K=d={k} float64", t, ratio=t["dense"] / t["reduced"],
                         goal=">= 1000 at K=2048" if k == 2048 else None,
                         met=(t["dense"] / t["reduced"] >= 1000) if k == 2048 else None,
                         max_rel_diff_after_3_steps=agree))
    return rows


#: K-vectors one reduced CE step must read or write at least (K too large for the caches): read a, b
#: (for z = H(a b)/K); write z; read z, write p (softmax); read p, write mu (second transform);
#: read mu, a, b and write a, b (the update)
STEP_FLOOR_VECTORS = 12


def _reference_gd(a: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """The reduced GD loop on the reference right-hand side (plain torch operations, fresh tensors)."""
    b = a
    for _ in range(steps + 1):
        da, db, _ = _rhs_reference(a, b, "walsh", 1, (0.0, 0.0), "ce")
        a, b = a + lr * da, b + lr * db
    return a


def _per_round(rounds: dict, name: str, calls: int) -> list[float]:
    return [t / calls for t in rounds[name]]


def bench_reduced_at_scale(device: torch.device, quick: bool) -> list[dict]:
    """Reduced GD at K = 2^16 and 2^20 (walsh, float64): time per step vs its memory floor; resident memory.

    Floor: STEP_FLOOR_VECTORS K-vector transfers at the copy rate (a ``copy_`` moves two). The goal's
    rate is that of a copy with the step's own volume: STEP_FLOOR_VECTORS / 2 K-vectors copied into as
    many (12 K-vector transfers over a working set as large as the step's). Two more rates, measured in
    the same rounds, are reported beside it: a same-size copy (one K-vector; at K = 2^16 it runs from
    L2, faster than any pass over the step's 6 MB can) and an 8 MB copy (the memory bandwidth).
    """
    rows = []
    big = torch.zeros(1 << 20, dtype=torch.float64, device=device)
    big_out = torch.empty_like(big)
    for e in (12, 14) if quick else (16, 20):
        k = 1 << e
        a = torch.linspace(0.5, 1.5, k, dtype=torch.float64, device=device)
        same_out = torch.empty_like(a)
        volume = torch.zeros(STEP_FLOOR_VECTORS // 2 * k, dtype=torch.float64, device=device)
        volume_out = torch.empty_like(volume)
        steps = 3 if quick else (300 if e <= 16 else 40)  # setup (validation, buffers) amortized
        ref_steps = 3 if quick else (30 if e <= 16 else 5)
        calls = {"gd": lambda: spectral_gd(a, a, lr=1.0, steps=steps, record_every=steps),
                 "copy_volume": lambda: volume_out.copy_(volume),
                 "copy": lambda: same_out.copy_(a), "copy_8mb": lambda: big_out.copy_(big),
                 "reference": lambda: _reference_gd(a, 1.0, ref_steps)}
        # min_seconds: a copy is timed over many calls (warm, like fwht's bound); a gd call lasts longer anyway
        rounds = compare_rounds(calls, device=device, repeats=3 if quick else 7, min_seconds=0.0 if quick else 0.05)
        step = _per_round(rounds, "gd", steps + 1)
        reference = _per_round(rounds, "reference", ref_steps + 1)
        vector_s = {"volume": [t / STEP_FLOOR_VECTORS for t in rounds["copy_volume"]],  # one K-vector read or written
                    "same": [t / 2 for t in rounds["copy"]],
                    "memory": [t / 2 * k / big.numel() for t in rounds["copy_8mb"]]}
        over = {name: _spread3([s / (STEP_FLOOR_VECTORS * v) for s, v in zip(step, vs)]) for name, vs in vector_s.items()}
        seconds = {"step": statistics.median(step), "reference_step": statistics.median(reference),
                   "copy_volume": statistics.median(rounds["copy_volume"]),
                   "copy": statistics.median(rounds["copy"]), "copy_8mb": statistics.median(rounds["copy_8mb"])}
        extra = {"over_floor": over["volume"], "over_floor_same_size": over["same"], "over_floor_memory": over["memory"],
                 "floor_s": STEP_FLOOR_VECTORS * statistics.median(vector_s["volume"]),
                 "speedup_over_reference": _spread3([r / s for r, s in zip(reference, step)])}
        if not quick and device.type == "cpu":
            extra["memory"] = _gd_memory(k, 1000)
        met = over["volume"][0] <= 4 and extra.get("memory", {}).get("growth_mib", 0.0) <= 1.0
        rows.append(_row("reduced GD at scale", f"K=2^{e} walsh float64", seconds, ratio=over["volume"][0],
                         goal="<= 4x its memory floor" + ("; resident memory flat over 1000 steps" if "memory" in extra else ""),
                         met=met, **extra))
    return rows


def _spread3(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


_GD_MEMORY = """from hadainit.ufm import spectral_gd
a = torch.linspace(0.5, 1.5, {k}, dtype=torch.float64)
spectral_gd(a, a, lr=1.0, steps=10, record_every=10)  # libraries and allocator warmed up, not counted
"""


def _gd_memory(k: int, steps: int) -> dict:
    """Resident memory of spectral_gd, in one fresh process after a warm-up call: the peak extra of a
    10-step call and then of a ``steps``-step call, each over the resident memory just before it (MiB).
    Flat: buffers are reused, nothing accumulates per step (large buffers are mapped and unmapped
    at once, MALLOC_MMAP_THRESHOLD_, so the allocator's own heuristics do not move the peaks)."""
    calls = [f"spectral_gd(a, a, lr=1.0, steps={n}, record_every={n})" for n in (10, steps)]
    short, long = _peak_extra_mib_series(_GD_MEMORY.format(k=k), calls, env={"MALLOC_MMAP_THRESHOLD_": "131072"})
    return {"steps": steps, "peak_extra_10_mib": short, f"peak_extra_mib": long, "growth_mib": long - short,
            "vector_mib": k * 8 / 2**20}


def bench_flow(device: torch.device, quick: bool) -> list[dict]:
    """spectral_flow, K = 1024 balanced, to t = 1e12: wall time and right-hand-side evaluations."""
    k = 64 if quick else 1024
    a = 0.5 + torch.rand(k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = time.perf_counter()
    res = spectral_flow(a, a, [1e12])
    wall = time.perf_counter() - start
    return [_row("spectral_flow to t=1e12", f"K={k} balanced", {"flow": wall}, goal="< 2 s", met=wall < 2.0,
                 nfev=res.nfev, status=res.status)]


class SmallCNN(nn.Module):
    """A small CIFAR-style CNN with a 512-d penultimate layer."""

    def __init__(self, num_classes: int = 100, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(16 * width, 512), nn.ReLU(),
        )
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class Float32TwoPass:
    """The baseline for the statistics pass, written here: the statistics NeuralCollapse needs (class counts,
    means, within-class scatter, per-class squared deviations) in float32 and two passes over the data, the
    way a float32 two-pass implementation computes them: means first, then deviations from them."""

    def __init__(self, k: int, d: int, device: torch.device) -> None:
        self.sums = torch.zeros(k, d, device=device)
        self.counts = torch.zeros(k, device=device)
        self.means = torch.zeros(k, d, device=device)
        self.scatter = torch.zeros(d, d, device=device)
        self.sq_norms = torch.zeros(k, device=device)
        self._diff: torch.Tensor | None = None

    def first_pass(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.sums.index_add_(0, y, x)
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=x.dtype))

    def end_first_pass(self) -> None:
        self.means = self.sums / self.counts.clamp_min(1).unsqueeze(1)

    def second_pass(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._diff is None or self._diff.shape != x.shape:
            self._diff = torch.empty_like(x)
        diff = torch.sub(x, torch.index_select(self.means, 0, y, out=self._diff), out=self._diff)
        self.scatter.addmm_(diff.T, diff)
        self.sq_norms.index_add_(0, y, torch.linalg.vecdot(diff, diff))


def _pass_accuracy(k: int, d: int, batch: int, device: torch.device) -> float:
    """Largest relative difference of nc1, cdnv, within_class_trace between precision float32 and float64."""
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(k, d, generator=gen)
    results = []
    for precision in ("float32", "float64"):
        metric = NeuralCollapse(k, d, precision=precision).to(device)
        for i in range(40):
            y = torch.randint(0, k, (batch,), generator=torch.Generator().manual_seed(i))
            x = means[y] + torch.randn(batch, d, generator=torch.Generator().manual_seed(100 + i))
            metric.update(x.to(device), y.to(device))
        results.append({key: float(value) for key, value in metric.compute().items()})
    return max(abs(results[0][key] - results[1][key]) / abs(results[1][key])
               for key in ("nc1", "cdnv", "within_class_trace"))


_MEMORY = """
def _status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))
"""


def _peak_extra_mib(setup: str, call: str) -> float:
    """Peak resident memory added by ``call`` after ``setup``, in a fresh CPU process (MiB, Linux): the peak
    (VmHWM) is reset after the setup, so only what ``call`` adds on top of the resident input counts."""
    return _peak_extra_mib_series(setup, [call])[0]


def _peak_extra_mib_series(setup: str, calls: list[str], env: dict | None = None) -> list[float]:
    """:func:`_peak_extra_mib` of each call in turn, in one fresh process (the peak reset before each)."""
    lines = ["import gc, json, torch", f"torch.set_num_threads({torch.get_num_threads()})", _MEMORY, setup, "peaks = []"]
    for call in calls:
        lines += ["gc.collect()", "open('/proc/self/clear_refs', 'w').write('5')", "before = _status('VmRSS')", call,
                  "peaks.append((_status('VmHWM') - before) / 1024)"]
    lines.append("print(json.dumps(peaks))")
    out = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_metrics(device: torch.device, quick: bool) -> list[dict]:
    """NC metrics: update vs a CNN step and vs a float32 two-pass; compute() at K=1000 d=2048 and K=10000 d=64;
    the functional form vs streaming."""
    batch, k, d = (64, 100, 512) if quick else (256, 100, 512)
    gen = torch.Generator().manual_seed(0)
    net = SmallCNN(k).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    images = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    labels = torch.randint(0, k, (batch,), generator=gen).to(device)
    feats = torch.randn(batch, d, generator=gen).to(device)
    metric = NeuralCollapse(k, d).to(device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(images), labels).backward()
        opt.step()

    t = compare({"update": lambda: metric.update(feats, labels), "cnn_step": train_step}, device=device,
                repeats=5 if quick else 9, min_seconds=0.0 if quick else 0.1)
    ratio = t["update"] / t["cnn_step"]
    # the statistics pass alone (no per-batch validation, as in the callbacks), side by side with the baseline
    fast = NeuralCollapse(k, d, precision="float32", validate_args=False).to(device)
    exact = NeuralCollapse(k, d, validate_args=False).to(device)
    base = Float32TwoPass(k, d, device)
    base.first_pass(feats, labels)
    base.end_first_pass()
    passes = compare({"pass_float32": lambda: fast.update(feats, labels),
                      "pass_float64": lambda: exact.update(feats, labels),
                      "two_pass_float32": lambda: (base.first_pass(feats, labels), base.second_pass(feats, labels))},
                     device=device, repeats=7 if quick else 15, min_seconds=0.0 if quick else 0.2)
    speedup = passes["two_pass_float32"] / passes["pass_float32"]
    rows = [_row("NC metric update vs CNN step", f"d={d} K={k} batch {batch}", {**t, **passes}, ratio=ratio,
                 goal="update < 3% of the training step", met=ratio < 0.03,
                 pass_speedup=speedup, pass_speedup_float64=passes["two_pass_float32"] / passes["pass_float64"],
                 pass_goal_met=speedup >= 1.0, pass_float32_max_rel_err=_pass_accuracy(k, d, batch, device))]
    kc, dc = (100, 256) if quick else (1000, 2048)
    big = NeuralCollapse(kc, dc).to(device)
    x = torch.randn(4 * kc, dc, generator=gen).to(device)
    y = (torch.arange(4 * kc) % kc).to(device)
    big.update(x, y)
    w = torch.randn(kc, dc, generator=gen, dtype=torch.float64).to(device)
    big.set_classifier(w)

    def compute(m=big):
        m._computed = None  # torchmetrics caches compute(); time the linear algebra every call
        return m.compute()

    tc = compare({"compute": compute}, device=device, repeats=3)
    rows.append(_row("NC metric compute()", f"K={kc} d={dc} with classifier", tc))
    rows.append(_bench_many_classes(device, quick))
    rows.append(_bench_functional(device, quick))
    return rows


_MANY_CLASSES = """from hadainit.metrics import NeuralCollapse
k, d = {k}, {d}
gen = torch.Generator().manual_seed(0)
metric = NeuralCollapse(k, d)
means = torch.randn(k, d, generator=gen)
for _ in range(4):
    metric.update(means + 0.1 * torch.randn(k, d, generator=gen), torch.arange(k))
metric.set_classifier(torch.randn(k, d, generator=gen))"""


def _bench_many_classes(device: torch.device, quick: bool) -> dict:
    """compute() with K > d: K = 10,000 classes in R^64 (4 samples per class), time and peak extra memory."""
    k, d = (500, 16) if quick else (10_000, 64)
    scope: dict = {"torch": torch}
    exec(_MANY_CLASSES.format(k=k, d=d), scope)
    big = scope["metric"].to(device)

    def compute():
        big._computed = None
        return big.compute()

    t = compare({"compute": compute}, device=device, repeats=3, warmup=0 if not quick else 1)
    extra = {}
    if not quick and device.type == "cpu":
        warm = _MANY_CLASSES.format(k=300, d=d) + "\nmetric.compute()\n"  # libraries loaded, not counted
        extra["peak_extra_mib"] = _peak_extra_mib(warm + _MANY_CLASSES.format(k=k, d=d), "metric.compute()")
    return _row("NC metric compute()", f"K={k} d={d} with classifier (K > d)", t,
                goal="seconds, memory linear in K", met=t["compute"] < 10.0, **extra)


_FUNCTIONAL = """from hadainit.metrics import NeuralCollapse
from hadainit.metrics.functional import neural_collapse
n, k, d = {n}, {k}, {d}
gen = torch.Generator().manual_seed(0)
labels = torch.randint(0, k, (n,), generator=gen)
features = torch.randn(n, d, generator=gen) + torch.randn(k, d, generator=gen)[labels]"""


def _bench_functional(device: torch.device, quick: bool) -> dict:
    """neural_collapse on in-memory features vs the streaming metric over the same rows (batches of 256)."""
    n, k, d = (2000, 10, 64) if quick else (50_000, 100, 512)
    scope: dict = {"torch": torch}
    exec(_FUNCTIONAL.format(n=n, k=k, d=d), scope)
    features, labels = scope["features"].to(device), scope["labels"].to(device)

    def streaming():
        metric = NeuralCollapse(k, d, validate_args=False).to(device)
        for i in range(0, n, 256):
            metric.update(features[i : i + 256], labels[i : i + 256])
        return metric.compute()

    t = compare({"functional": lambda: neural_collapse(features, labels, num_classes=k), "streaming": streaming},
                device=device, repeats=3, warmup=0 if not quick else 1)
    extra = {}
    if not quick and device.type == "cpu":
        warm = "\nneural_collapse(features[:4096], labels[:4096], num_classes=k)"  # libraries loaded, not counted
        mib = _peak_extra_mib(_FUNCTIONAL.format(n=n, k=k, d=d) + warm, "neural_collapse(features, labels, num_classes=k)")
        extra = {"peak_extra_mib": mib, "input_mib": n * d * 4 / 2**20}
    return _row("NC metric compute()", f"functional neural_collapse N={n} d={d} K={k} float32 vs streaming", t,
                ratio=t["functional"] / t["streaming"], **extra)


def bench_init(device: torch.device, quick: bool) -> list[dict]:
    """hadamard_matrix(4096) and hadamard_ on a 1000 x 4096 weight."""
    n, (k, d) = (512, (100, 512)) if quick else (4096, (1000, 4096))
    w = torch.empty(k, d, device=device)
    t = compare({"hadamard_matrix": lambda: hadamard_matrix(n, device=device), "hadamard_": lambda: hadamard_(w)},
                device=device, repeats=3)
    return [_row("initializers", f"hadamard_matrix({n}); hadamard_({k}x{d})", t,
                 goal="hadamard_matrix(4096) well under 1 s", met=t["hadamard_matrix"] < 0.5)]


_KD_INIT = """
import torch
from hadainit import hadamard_
w = torch.empty({k}, {d})
"""

_KD_NC = """
import torch, warnings
from hadainit.metrics import NeuralCollapse
warnings.simplefilter("ignore")
k, d = {k}, {d}
gen = torch.Generator().manual_seed(0)
labels = torch.arange(k).repeat(2)
features = torch.randn(2 * k, d, generator=gen)
weight = torch.randn(k, d, generator=gen)
"""


def bench_kd_init(device: torch.device, quick: bool) -> list[dict]:
    """More classes than features (docs/theory.md §8): hadamard_ at 1000 x 512 and 50,257 x 768, cold (the mode
    choice included) and with the modes cached (time, peak extra memory). Its own row function, so that
    ``--only bench_kd_init`` times it in a minute (``bench_kd``'s NeuralCollapse at K = 50,257 takes minutes)."""
    from hadainit.modes import _auto_modes

    rows = []
    for k, d in ((100, 16),) if quick else ((1000, 512), (50257, 768)):
        w = torch.empty(k, d, device=device)

        def cold():  # what a first call costs: auto_modes chooses the set (it is cached per (K, r, basis))
            _auto_modes.cache_clear()
            hadamard_(w)

        t = compare({"hadamard_": cold, "hadamard_ (modes cached)": lambda: hadamard_(w)}, device=device, repeats=3)
        extra = {}
        if device.type == "cpu":
            extra["peak_extra_mib"] = _peak_extra_mib(_KD_INIT.format(k=k, d=d), "hadamard_(w)")
            extra["weight_mib"] = k * d * 4 / 2**20
        rows.append(_row("K > d: hadamard_", f"{k} x {d} (modes='auto')", t,
                         goal="a couple of seconds at 50,257 x 768, the mode choice included; memory O(K r)"
                         if k > 10000 else None,
                         met=(t["hadamard_"] < 3.0) if k > 10000 else None, **extra))
    return rows


def bench_kd(device: torch.device, quick: bool) -> list[dict]:
    """More classes than features (docs/theory.md §8): the reduced step at K = 2^20 on a mode set of r = 1024
    modes (zeros off it) beside the full spectrum, and NeuralCollapse update + compute at K = 50,257, d = 768
    with its state memory."""
    from hadainit.metrics import NeuralCollapse
    from hadainit.modes import auto_modes

    rows = []
    e, r = (12, 64) if quick else (20, 1024)
    k = 1 << e
    modes = auto_modes(k, r, "walsh")
    a_full = torch.linspace(0.5, 1.5, k, dtype=torch.float64, device=device)
    a_modes = torch.zeros_like(a_full)
    a_modes[modes.to(device)] = a_full[modes.to(device)]
    steps = 3 if quick else 20
    t = compare({"modes": lambda: spectral_gd(a_modes, a_modes, lr=1.0, steps=steps, record_every=steps),
                 "full": lambda: spectral_gd(a_full, a_full, lr=1.0, steps=steps, record_every=steps)},
                device=device, repeats=3)
    per_step = {name: v / (steps + 1) for name, v in t.items()}
    rows.append(_row("K > d: reduced GD step", f"K=2^{e} walsh float64, r={r} modes vs all", per_step,
                     ratio=per_step["modes"] / per_step["full"], goal="the mode set costs what the full step does",
                     met=per_step["modes"] / per_step["full"] < 1.5))
    for k, d in ((256, 32), (1024, 32)) if quick else ((12564, 768), (50257, 768)):
        gen = torch.Generator().manual_seed(0)
        labels, feats = torch.arange(k).repeat(2), torch.randn(2 * k, d, generator=gen)
        weight = torch.randn(k, d, generator=gen)
        metric = NeuralCollapse(k, d)
        state_mib = sum(v.numel() * v.element_size() for v in metric.metric_state.values()
                        if isinstance(v, torch.Tensor)) / 2**20

        def run():
            metric.reset()
            metric.update(feats, labels)
            metric.set_classifier(weight)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return metric.compute()

        t = compare({"update_compute": run}, device=device, repeats=1 if not quick else 2)
        extra = {"state_mib": state_mib, "state_mib_per_class": state_mib / k}
        if device.type == "cpu" and not quick and k < 20000:  # the peak of the smaller head (the compute is O(K^2 d))
            extra["peak_extra_mib"] = _peak_extra_mib(_KD_NC.format(k=k, d=d),
                                                      "m = NeuralCollapse(k, d); m.update(features, labels); m.compute()")
        rows.append(_row("K > d: NeuralCollapse", f"K={k} d={d}, 2 samples per class", t, **extra))
    return rows


ROWS = [bench_import, bench_kernels, bench_fwht, bench_reduced_vs_dense, bench_reduced_at_scale, bench_flow, bench_metrics,
        bench_init, bench_kd_init, bench_kd]


#: The rows whose speed depends on the instruction set the kernels and torch run with (rerun per ISA).
ISA_ROWS = ("bench_kernels", "bench_fwht", "bench_reduced_at_scale")


def run_suite(device: torch.device, quick: bool = False, progress=None, only: str | None = None) -> list[dict]:
    """Every row (or those whose function name contains one of the comma-separated ``only``)."""
    wanted = [s.strip() for s in only.split(",")] if only else []
    isa = _kernels.kernel_isa() if device.type == "cpu" else device.type
    results = []
    for fn in ROWS:
        if wanted and not any(w in fn.__name__ for w in wanted):
            continue
        if progress:
            progress(fn.__doc__.splitlines()[0])
        rows = fn(device, quick)
        if fn.__name__ in ISA_ROWS:
            for row in rows:
                row["isa"] = isa
        results.extend(rows)
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'benchmark':<30} {'case [isa]':<36} {'times':<44} {'ratio':>9}  goal"]
    if any("fwht_over_copy" in r for r in results):
        lines.insert(0, "peers: " + "; ".join(f"{k}: {v}" for k, v in peers.CONVENTIONS.items()))
    for r in results:
        times = ", ".join(f"{k} {_fmt_time(v)}" for k, v in r["seconds"].items())
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3g}"
        goal = "" if r["goal"] is None else f"{'MET' if r['met'] else 'NOT MET'}: {r['goal']}"
        extra = ""
        if "fwht_over_copy" in r:
            extra = (f"; fwht/copy {_spread(r['fwht_over_copy'])}; fwht(out=)/copy_ {_spread(r['out_over_copy_into'])}"
                     "; peer/fwht: ") + ", ".join(
                f"{name} {_spread(v)}" for name, v in r["peers_over_fwht"].items())
            if r["peer_notes"]:
                extra += " [" + "; ".join(r["peer_notes"]) + "]"
            if not r["kernel"]:
                extra += " [pure-PyTorch fwht: the compiled kernel is unavailable]"
        if "over_floor" in r:
            extra = (f"; step/floor {_spread(r['over_floor'])} (floor {_fmt_time(r['floor_s'])}: a copy of the step's"
                     f" volume, 12 K-vectors moved; at the same-size copy rate {_spread(r['over_floor_same_size'])},"
                     f" at the 8 MB copy rate {_spread(r['over_floor_memory'])})"
                     f"; reference step/step {_spread(r['speedup_over_reference'])}")
            if "memory" in r:
                m = r["memory"]
                extra += (f"; peak extra memory {m['peak_extra_10_mib']:.1f} MiB over 10 steps, {m['peak_extra_mib']:.1f} MiB "
                          f"over {m['steps']} (growth {m['growth_mib']:+.1f} MiB; one K-vector {m['vector_mib']:.1f} MiB)")
        if "available" in r:
            extra = (f"; {'available' if r['available'] else 'UNAVAILABLE'} ({r['reason']})"
                     + ("" if r["recorded_build_s"] is None else f", recorded first build {r['recorded_build_s']:.1f} s")
                     + (f"; blocking for L1 {r['cache_bytes'][0] // 1024} KiB, L2 {r['cache_bytes'][1] // 1024} KiB"
                        if "cache_bytes" in r else ""))
        if "heavy_modules" in r:
            extra = "; heavy modules loaded: " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in r["heavy_modules"].items())
        if "nfev" in r:
            extra = f" [nfev {r['nfev']}]"
        if "pass_speedup" in r:
            extra = (f"; statistics pass, precision float32 vs float32 two-pass: {r['pass_speedup']:.2f}x "
                     f"({'MET' if r['pass_goal_met'] else 'NOT MET'}: >= 1), float64: {r['pass_speedup_float64']:.2f}x;"
                     f" float32 vs float64 max rel diff {r['pass_float32_max_rel_err']:.1e}")
        if "peak_extra_mib" in r:
            extra += f"; peak extra memory {r['peak_extra_mib']:.0f} MiB"
            if "input_mib" in r:
                extra += f" ({r['peak_extra_mib'] / r['input_mib']:.2f}x the input)"
        case = r["case"] + (f" [{r['isa']}]" if "isa" in r else "")
        lines.append(f"{r['benchmark']:<30} {case:<36} {times:<44} {ratio:>9}  {goal}{extra}")
    return "\n".join(lines)


def _spread(r) -> str:
    """(median, min, max) of a per-round ratio."""
    return f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"
