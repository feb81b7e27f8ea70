"""The monitors' partial sums: the small metrics they keep beside the measured ones (samples, a running mean), and
each metric's sums checkpointed over every rank and restored once."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics import Metric

from . import _lightning as lightning_internals


def quiet_compute(metric: Metric):
    """``metric.compute()`` without torchmetrics' "compute before update" warning: a pass that fed a metric
    nothing is a state the monitors handle (every rank calls this alike, so the DDP sync stays collective)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
        return metric.compute()


class RunningMean(Metric):
    """The sample-weighted mean of a tensor over a pass (float64 sums, DDP-exact): the classifier
    averaged over the training steps that produced the features of a ``mode="train"`` epoch."""

    full_state_update = False

    def __init__(self, shape: tuple[int, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: int) -> None:  # type: ignore[override]
        self.total.add_(value.detach().to(self.total), alpha=float(weight))
        self.weight += weight

    def compute(self) -> Tensor | None:
        """The mean (synced across ranks), or None when nothing was added on any rank."""
        return self.total / self.weight if self.weight > 0 else None


class SampleCount(Metric):
    """Samples fed to a monitor and samples it excluded (labels equal to the ignore index)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("samples", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ignored", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: Tensor, ignored: Tensor) -> None:  # type: ignore[override]
        self.samples += samples
        self.ignored += ignored

    def compute(self) -> dict[str, float]:
        return {"num_samples": self.samples.item(), "num_ignored": self.ignored.item()}


def metric_checkpoint(metric: Metric) -> dict:
    """A metric's partial sums over every rank (and their reference point, if it has one), for a callback's
    ``state_dict``: a run resumed mid-epoch from a checkpoint continues the epoch's accumulation exactly.

    The sums are synced (a collective under DDP: Lightning calls ``state_dict`` on every rank when it
    saves a checkpoint) and marked ``"scope": "global"``; :func:`restore_metric` loads them on one
    rank only, so the next sync counts them once, for any number of ranks on resume.
    """
    with metric.sync_context(should_sync=True, should_unsync=True):  # also flushes a float32 fast path
        reference = getattr(metric, "reference", None)
        return {
            "states": {name: value.detach().cpu().clone() for name, value in metric.metric_state.items()},
            "update_count": metric.update_count,
            "reference": None if reference is None else reference.detach().cpu().clone(),
            "scope": "global",
        }


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def restore_metric(metric: Metric, saved: dict, name: str) -> None:
    """Load :func:`metric_checkpoint` output, raising ``ValueError`` naming a missing or misshapen state."""
    if not isinstance(saved, dict) or "states" not in saved or "update_count" not in saved:
        raise ValueError(f"checkpoint state {name!r} must be a dict with 'states' and 'update_count'")
    current = metric.metric_state
    states = saved["states"]
    for key, value in current.items():
        if key not in states:
            raise ValueError(f"checkpoint state {name}.{key} is missing")
        if not isinstance(states[key], Tensor) or states[key].shape != value.shape:
            got = tuple(states[key].shape) if isinstance(states[key], Tensor) else type(states[key]).__name__
            raise ValueError(f"checkpoint state {name}.{key} has shape {got}, expected {tuple(value.shape)}")
    if saved.get("scope") == "global" and _rank() != 0:  # the sums of every rank, loaded once (on rank 0)
        metric.reset()
        return
    device = next(iter(current.values())).device
    for key in current:  # copies: updates must not write into the checkpoint's tensors
        setattr(metric, key, states[key].to(device=device, dtype=current[key].dtype, copy=True))
    if saved.get("reference") is not None:
        metric.reference = saved["reference"].to(device, copy=True)
    lightning_internals.set_update_count(metric, saved["update_count"])  # read-only in torchmetrics; compute() warns at 0
