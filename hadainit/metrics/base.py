"""The base of the float64-sum metrics: dtype conversions move them between devices only."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = ["Float64Metric", "check_finite_state", "distributed"]


def check_finite_state(*states: Tensor) -> None:
    if not all(torch.isfinite(s).all() for s in states):
        raise ValueError("non-finite features were accumulated (NaN or Inf in the metric state): "
                         "the monitored features are not finite")


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
