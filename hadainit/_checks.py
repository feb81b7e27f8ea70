"""Argument validation shared by the core modules: one message style everywhere."""

from __future__ import annotations

import math

LOSS_KINDS = ("ce", "mse")


def positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def loss_kind(kind: str) -> str:
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSS_KINDS}")
    return kind


def weight_decay(value) -> tuple[float, float]:
    """``(wd_W, wd_H)`` as two non-negative finite floats."""
    try:
        wd_w, wd_h = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"weight_decay must be a pair (wd_W, wd_H) of numbers, got {value!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in (wd_w, wd_h)):
        raise ValueError(f"weight_decay must be non-negative and finite, got {value!r}")
    return wd_w, wd_h


def positive_float(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v
