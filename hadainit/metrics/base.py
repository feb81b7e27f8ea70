"""The base of the float64-sum metrics: dtype conversions move them between devices only."""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = ["Float64Metric", "as_tensors", "check_finite_state", "check_state_size", "distributed"]

WARN_BYTES = 1 << 30  # states above 1 GiB are announced (with their size)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_state_size(name: str, nbytes: int, what: str) -> None:
    """Refuse (``ValueError``) a metric whose states alone exceed this machine's physical memory, and warn
    when they exceed 1 GiB, naming the size and ``what`` makes it: a metric must not allocate tens of
    gigabytes without a word."""
    gib = nbytes / 2**30
    memory = _physical_memory()
    if memory is not None and nbytes > memory:
        raise ValueError(f"{name}: the states would need {gib:.1f} GiB ({what}); this machine has "
                         f"{memory / 2**30:.1f} GiB of memory")
    if nbytes > WARN_BYTES:
        warnings.warn(f"{name}: the states take {gib:.1f} GiB ({what})", stacklevel=3)


def check_finite_state(*states: Tensor) -> None:
    if not all(torch.isfinite(s).all() for s in states):
        raise ValueError("non-finite features were accumulated (NaN or Inf in the metric state): "
                         "the monitored features are not finite")


def as_tensors(values: dict, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """A dict of numbers as 0-d float64 tensors on ``device`` (what every ``compute()`` returns, torchmetrics'
    convention: ``self.log_dict(metric.compute())`` and ``MetricCollection`` take them as they are)."""
    return {key: torch.as_tensor(value, dtype=torch.float64, device=device) for key, value in values.items()}


def distributed(process_group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1


class Float64Metric(Metric):
    """A metric whose float64 sums keep their dtype: ``set_dtype``, ``module.to(dtype)`` and the precision
    plugins move them between devices only (a float32 sum would lose what the float64 sums exist for)."""

    def _apply(self, fn: Callable, exclude_state: Any = "") -> nn.Module:
        def device_only(t: Tensor) -> Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(out.device)

        return super()._apply(device_only, exclude_state)
