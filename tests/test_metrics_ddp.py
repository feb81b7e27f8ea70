"""DDP: two real CPU processes (gloo) each updating half the data = one process with all of it."""

import json
import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hadainit.metrics import NearestMeanMismatch, NeuralCollapse


def _data():
    gen = torch.Generator().manual_seed(0)
    k, d, n = 7, 24, 300
    means = 5.0 + torch.randn(k, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=gen)
    x = (means[labels] + 0.3 * torch.randn(n, d, generator=gen, dtype=torch.float64)).float()
    w = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return x, labels, w


def _run(x, labels, w, batch):
    metric = NeuralCollapse(7, 24)
    for i in range(0, len(x), batch):
        metric.update(x[i : i + batch], labels[i : i + batch])
    metric.set_classifier(w)
    out = metric.compute()
    nc4 = NearestMeanMismatch(7, 24)
    nc4.set_means(metric.class_means, metric.seen)
    for i in range(0, len(x), batch):
        nc4.update(x[i : i + batch], x[i : i + batch].double() @ w.T)
    out.update(nc4.compute())
    return out


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, labels, w = _data()
        # uneven halves and different batch sizes per rank
        mine = torch.arange(0, 170) if rank == 0 else torch.arange(170, len(x))
        out = _run(x[mine], labels[mine], w, batch=23 if rank == 0 else 41)
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump(out, fh)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    x, labels, w = _data()
    single = _run(x, labels, w, batch=64)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(got) == set(single)
        for key, value in single.items():
            assert math.isclose(got[key], value, rel_tol=1e-12, abs_tol=1e-14), (rank, key, got[key], value)
