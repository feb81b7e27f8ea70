"""precision="float32": the accuracy contract (README section 3), and float32 groups that never escape a read.

The float32 update keeps up to ``GROUP`` batches in float32 buffers; everything that reads or replaces
the states (compute, ``metric_state``, ``state_dict``, the DDP sync, ``merge_state``, a checkpoint
restore) must see them added first.
"""

import math

import pytest
import torch

from hadainit.callbacks.sums import metric_checkpoint, restore_metric
from hadainit.metrics import NeuralCollapse
from hadainit.metrics.statistics import GROUP
from tests.metrics_reference import reference_metrics

KEYS = ("nc1", "nc1_trace", "within_class_trace", "cdnv", "etf_gap_means", "cos_std_means", "gnc2_log")


def _data(k=6, d=20, n=400, seed=0, offset=0.0, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=gen) + offset
    labels = torch.randint(0, k, (n,), generator=gen)
    return (means[labels] + spread * torch.randn(n, d, generator=gen)).float(), labels


def _stream(metric, x, labels, batch=10):
    for i in range(0, len(x), batch):
        metric.update(x[i : i + batch], labels[i : i + batch])
    return metric


def _assert_close(got, want, rtol):
    for key in KEYS:
        assert math.isclose(got[key], want[key], rel_tol=rtol), (key, got[key], want[key])


@pytest.mark.parametrize("offset, spread", [(0.0, 1.0), (100.0, 1.0), (3.0, 1e-2)])
def test_accuracy_contract(offset, spread):
    x, labels = _data(offset=offset, spread=spread)
    ref = reference_metrics(x, labels)  # float64, from the same float32 values
    _assert_close(_stream(NeuralCollapse(6, 20, precision="float32"), x, labels).compute(), ref, rtol=2e-6)


@pytest.mark.parametrize("precision, rtol", [("float64", 1e-11), ("float32", 2e-6)])
def test_checkpoint_inside_a_float32_group_restores_exactly(precision, rtol):
    x, labels = _data(n=300, seed=1)
    first = _stream(NeuralCollapse(6, 20, precision=precision), x[:150], labels[:150])  # 15 batches: a group is open
    saved = metric_checkpoint(first)  # what the callbacks store mid-epoch: metric_state, update_count, reference
    resumed = NeuralCollapse(6, 20, precision=precision)
    restore_metric(resumed, saved, "nc")
    _stream(resumed, x[150:], labels[150:])
    _assert_close(resumed.compute(), reference_metrics(x, labels), rtol)
    state = first.state_dict()  # a used metric loads into a fresh one; the open group went in first
    assert set(state) == {"reference"} and torch.equal(state["reference"], first.reference)


def test_every_read_sees_the_open_group():
    x, labels = _data(n=50, seed=2)
    metric = _stream(NeuralCollapse(6, 20, precision="float32"), x, labels)
    assert 0 < len(x) // 10 < GROUP  # the batches are still in the float32 group
    assert metric.metric_state["counts"].sum() == len(x)
    sums = metric.metric_state["sums"]
    assert sums.abs().sum() > 0 and torch.isfinite(sums).all()
    other = _stream(NeuralCollapse(6, 20, precision="float32"), x, labels)
    merged = NeuralCollapse(6, 20)
    merged.merge_state(metric)
    merged.merge_state(other)
    doubled = reference_metrics(torch.cat((x, x)), torch.cat((labels, labels)))
    _assert_close(merged.compute(), doubled, rtol=2e-6)


def test_batch_order_and_size_within_the_contract():
    x, labels = _data(n=640, seed=3)
    base = _stream(NeuralCollapse(6, 20, precision="float32"), x, labels, batch=640).compute()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(4))
    for batch in (1, 7, 64):  # 640 batches of one row: many groups and flushes
        _assert_close(_stream(NeuralCollapse(6, 20, precision="float32"), x[perm], labels[perm], batch).compute(),
                      base, rtol=2e-6)


@pytest.mark.parametrize("scale", [2.0**100, 2.0**-100])
def test_float32_products_at_extreme_scales(scale):
    # squares of 2^100 overflow float32 and of 2^-100 underflow: each group is scaled by a power of two
    x, labels = _data(n=120, seed=5)
    base = _stream(NeuralCollapse(6, 20, precision="float32"), x, labels).compute()
    got = _stream(NeuralCollapse(6, 20, precision="float32"), x * scale, labels).compute()
    for key in ("nc1", "cdnv", "etf_gap_means", "equinorm_means", "gnc2_riesz"):
        assert math.isclose(got[key], base[key], rel_tol=1e-12), (key, got[key], base[key])


def test_explicit_reference_and_float64_features():
    x, labels = _data(n=100, seed=6)
    ref = reference_metrics(x, labels)
    odd = torch.full((6, 20), 1 / 3, dtype=torch.float64)  # not a float32 number: the sums move to one
    metric = _stream(NeuralCollapse(6, 20, precision="float32", reference=odd), x.double(), labels)
    _assert_close(metric.compute(), ref, rtol=2e-6)


def test_reduced_float32_matmul_precision_is_announced():
    x, labels = _data(n=20, seed=7)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with pytest.warns(UserWarning, match="reduced precision"):
            NeuralCollapse(6, 20, precision="float32").update(x, labels)
    finally:
        torch.set_float32_matmul_precision(previous)
