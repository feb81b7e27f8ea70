"""DDP: two real CPU processes (gloo) each updating half the data = one process with all of it.

Every rank picks its own references (the first sample of each class it sees); the sync moves the
sums of every rank to one agreed reference before adding them, so the result is exact even when the
features carry an offset 1e7 times their spread.
"""

import json
import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hadainit.metrics import NearestMeanDisagreement, NeuralCollapse

CASES = {  # name: (offset, spread, dtype, precision, rel_tol against one process)
    "float32_features": (5.0, 0.3, torch.float32, "float64", 1e-12),
    "large_offset": (1e4, 1e-3, torch.float64, "float64", 1e-9),
    "float32_products": (5.0, 0.3, torch.float32, "float32", 1e-6),
}


def _data(offset, spread, dtype):
    gen = torch.Generator().manual_seed(0)
    k, d, n = 7, 24, 300
    means = offset + torch.randn(k, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=gen)
    x = (means[labels] + spread * torch.randn(n, d, generator=gen, dtype=torch.float64)).to(dtype)
    w = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return x, labels, w


def _run(x, labels, w, batch, precision, rel_tol):
    metric = NeuralCollapse(7, 24, precision=precision)
    for i in range(0, len(x), batch):
        metric.update(x[i : i + batch], labels[i : i + batch])
    metric.set_classifier(w)
    out = metric.compute()
    nc4 = NearestMeanDisagreement(7, 24)
    nc4.set_means(metric.class_means, metric.seen)
    for i in range(0, len(x), batch):
        nc4.update(x[i : i + batch], x[i : i + batch].double() @ w.T)
    out["nc4"] = nc4.compute()
    # after the sync the local sums are back, moved to the agreed reference: still this rank's own data
    local_means = metric.statistics().means()
    for c in labels.unique().tolist():
        exact = x[labels == c].double().mean(0)
        scale = x.double().abs().max().item()
        assert (local_means[c] - exact).abs().max().item() <= rel_tol * scale, (precision, c)
    return {key: float(value) for key, value in out.items()}  # floats: written as JSON by the ranks


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for name, (offset, spread, dtype, precision, rel_tol) in CASES.items():
            x, labels, w = _data(offset, spread, dtype)
            # uneven halves and different batch sizes per rank
            mine = torch.arange(0, 170) if rank == 0 else torch.arange(170, len(x))
            results[name] = _run(x[mine], labels[mine], w, 23 if rank == 0 else 41, precision, rel_tol)
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump(results, fh)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name, (offset, spread, dtype, precision, rel_tol) in CASES.items():
        single = _run(*_data(offset, spread, dtype), batch=64, precision=precision, rel_tol=rel_tol)
        for rank in (0, 1):
            got = json.loads((tmp_path / f"rank{rank}.json").read_text())[name]
            assert set(got) == set(single)
            for key, value in single.items():
                assert math.isclose(got[key], value, rel_tol=rel_tol, abs_tol=1e-14), (name, rank, key, got[key], value)
