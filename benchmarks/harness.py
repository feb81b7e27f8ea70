"""A small side-by-side timing harness: interleaved repetitions, medians, optional CUDA sync."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    candidates: dict[str, Callable[[], object]],
    *,
    device: torch.device | str = "cpu",
    repeats: int = 7,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in interleaved rounds.

    Interleaving (a, b, a, b, ...) exposes every candidate to the same machine
    noise, so their ratio is meaningful on a busy machine. Each timing covers
    enough calls to last ``min_seconds``.
    """
    rounds = compare_rounds(candidates, device=device, repeats=repeats, warmup=warmup, min_seconds=min_seconds)
    return {name: statistics.median(values) for name, values in rounds.items()}


def ratio_spread(rounds: dict[str, list[float]], num: str, den: str) -> tuple[float, float, float]:
    """``num / den`` per interleaved round: (median, min, max). One round times every candidate once, so
    the per-round ratio cancels the machine's slow drifts; its range is the ratio's spread."""
    ratios = [a / b for a, b in zip(rounds[num], rounds[den])]
    return statistics.median(ratios), min(ratios), max(ratios)


def compare_rounds(
    candidates: dict[str, Callable[[], object]],
    *,
    device: torch.device | str = "cpu",
    repeats: int = 7,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate in each of ``repeats`` interleaved rounds (see :func:`compare`)."""
    device = torch.device(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    calls: dict[str, int] = {}
    for name, fn in candidates.items():
        n = 1
        while True:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            if time.perf_counter() - start >= min_seconds or n >= 1 << 16:
                break
            n *= 2
        calls[name] = n
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return samples
