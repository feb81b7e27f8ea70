"""The benchmark rows of issue 6; each returns result dicts (seconds, ratio, goal, met)."""

from __future__ import annotations

import time

import torch
from torch import nn

from hadainit import fwht, hadamard_, hadamard_matrix
from hadainit.metrics import NeuralCollapse
from hadainit.ufm import UFM, spectral_flow, spectral_gd
from hadainit.ufm.dynamics import spectral_rhs

from .harness import compare


def _row(benchmark: str, case: str, seconds: dict, *, ratio=None, goal=None, met=None, **extra) -> dict:
    return {"benchmark": benchmark, "case": case, "seconds": seconds, "ratio": ratio, "goal": goal, "met": met, **extra}


def bench_fwht(device: torch.device, quick: bool) -> list[dict]:
    """fwht vs the dense product x @ H, and vs a memory-bandwidth bound.

    The bound is the time to move the bytes a transform must move at least
    (read x once, write y once) at the copy bandwidth measured on a buffer of
    the same size, side by side: ``x.clone()``, so cache effects are the same.
    """
    rows = []
    exponents = range(8, 11) if quick else range(8, 15)
    for dtype in (torch.float32, torch.float64):
        for e in exponents:
            n = 1 << e
            x = torch.randn(64, n, dtype=dtype, device=device)
            h = hadamard_matrix(n, dtype=dtype, device=device)
            err = (fwht(x) - x @ h).abs().max().item() / (x @ h).abs().max().item()
            t = compare({"fwht": lambda: fwht(x), "dense": lambda: x @ h, "copy": lambda: x.clone()},
                        device=device, repeats=5 if quick else 9, min_seconds=0.0 if quick else 0.02)
            bound = t["copy"]
            rows.append(_row(
                "fwht vs dense x @ H", f"n=2^{e} batch 64 {str(dtype)[6:]}", t,
                ratio=t["dense"] / t["fwht"], goal="faster than x @ H", met=t["dense"] > t["fwht"],
                bandwidth_bound_s=bound, fwht_over_bound=t["fwht"] / bound,
                within_3x_bound=t["fwht"] <= 3 * bound, max_rel_err=err,
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


def bench_reduced_at_scale(device: torch.device, quick: bool) -> list[dict]:
    """Reduced GD at K = 2^16 and 2^20 (walsh, float64): time per step."""
    rows = []
    for e in (12, 14) if quick else (16, 20):
        k = 1 << e
        a = torch.linspace(0.5, 1.5, k, dtype=torch.float64, device=device)
        steps = 3 if quick else 10
        t = compare({"step": lambda: spectral_gd(a, a, lr=1.0, steps=steps, record_every=steps)},
                    device=device, repeats=3 if e >= 20 else 5)
        per_step = {"step": t["step"] / (steps + 1)}  # steps + 1 right-hand sides (the last for the loss)
        goal = e == 20
        rows.append(_row("reduced GD at scale", f"K=2^{e} walsh float64", per_step,
                         goal="<= 100 ms per step at K=2^20" if goal else None,
                         met=per_step["step"] <= 0.1 if goal else None))
    return rows


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


def bench_metrics(device: torch.device, quick: bool) -> list[dict]:
    """NC metric update (d=512, K=100, batch 256) vs a small CNN training step; compute() at K=1000, d=2048."""
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
    rows = [_row("NC metric update vs CNN step", f"d={d} K={k} batch {batch}", t, ratio=ratio,
                 goal="update < 3% of the training step", met=ratio < 0.03)]
    kc, dc = (100, 256) if quick else (1000, 2048)
    big = NeuralCollapse(kc, dc).to(device)
    x = torch.randn(4 * kc, dc, generator=gen).to(device)
    y = (torch.arange(4 * kc) % kc).to(device)
    big.update(x, y)
    w = torch.randn(kc, dc, generator=gen, dtype=torch.float64).to(device)
    big.set_classifier(w)

    def compute():
        big._computed = None  # torchmetrics caches compute(); time the linear algebra every call
        return big.compute()

    tc = compare({"compute": compute}, device=device, repeats=3)
    rows.append(_row("NC metric compute()", f"K={kc} d={dc} with classifier", tc))
    return rows


def bench_init(device: torch.device, quick: bool) -> list[dict]:
    """hadamard_matrix(4096) and hadamard_ on a 1000 x 4096 weight."""
    n, (k, d) = (512, (100, 512)) if quick else (4096, (1000, 4096))
    w = torch.empty(k, d, device=device)
    t = compare({"hadamard_matrix": lambda: hadamard_matrix(n, device=device), "hadamard_": lambda: hadamard_(w)},
                device=device, repeats=3)
    return [_row("initializers", f"hadamard_matrix({n}); hadamard_({k}x{d})", t,
                 goal="hadamard_matrix(4096) well under 1 s", met=t["hadamard_matrix"] < 0.5)]


ROWS = [bench_fwht, bench_reduced_vs_dense, bench_reduced_at_scale, bench_flow, bench_metrics, bench_init]


def run_suite(device: torch.device, quick: bool = False, progress=None, only: str | None = None) -> list[dict]:
    results = []
    for fn in ROWS:
        if only and only not in fn.__name__:
            continue
        if progress:
            progress(fn.__doc__.splitlines()[0])
        results.extend(fn(device, quick))
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'benchmark':<30} {'case':<36} {'times':<44} {'ratio':>9}  goal"]
    for r in results:
        times = ", ".join(f"{k} {_fmt_time(v)}" for k, v in r["seconds"].items())
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3g}"
        goal = "" if r["goal"] is None else f"{'MET' if r['met'] else 'NOT MET'}: {r['goal']}"
        extra = ""
        if "fwht_over_bound" in r:
            extra = f"; bound (goal <= 3x): {r['fwht_over_bound']:.1f}x {'MET' if r['within_3x_bound'] else 'NOT MET'}"
        if "nfev" in r:
            extra = f" [nfev {r['nfev']}]"
        lines.append(f"{r['benchmark']:<30} {r['case']:<36} {times:<44} {ratio:>9}  {goal}{extra}")
    return "\n".join(lines)


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"
