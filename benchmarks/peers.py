"""The fast Walsh–Hadamard transforms a Python user could install instead of hadainit's ``fwht``.

Benchmark-only peers (the ``bench`` extra: ``pip install -e '.[bench]'``), never
dependencies of the package; a peer that is not installed is skipped with a note.
Each adapter computes the same transform as ``fwht(x)`` on a (batch, n) tensor,
in the peer's own convention (noted in :data:`CONVENTIONS`), out of place.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Callable

import torch

CONVENTIONS = {
    "hadamard_transform": "hadamard-transform (pure PyTorch): x @ H / sqrt(n), normalized",
    "pyfwht_cpu": "pyfwht Backend CPU (C, SIMD): x @ H, unnormalized; float64 only on the CPU, rows one by one",
    "pyfwht_openmp": "pyfwht Backend OPENMP (C, OpenMP threads): x @ H, unnormalized; float64 only on the CPU",
    "dense": "dense x @ H_n (torch matmul; only for n <= 2^12, where H_n fits comfortably)",
}


def available() -> dict[str, bool]:
    """Which peer packages are installed."""
    return {name: importlib.util.find_spec(name) is not None for name in ("hadamard_transform", "pyfwht")}


def candidates(x: torch.Tensor) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[object], torch.Tensor]], list[str]]:
    """``(calls, as_fwht, notes)`` for a (batch, n) tensor: the peers' calls, each result mapped back to
    ``fwht``'s convention (to check that they compute the same transform), and why a peer is missing."""
    calls: dict[str, Callable[[], object]] = {}
    as_fwht: dict[str, Callable[[object], torch.Tensor]] = {}
    notes = []
    have = available()
    n = x.shape[-1]
    if have["hadamard_transform"]:
        from hadamard_transform import hadamard_transform

        calls["hadamard_transform"] = lambda: hadamard_transform(x)
        as_fwht["hadamard_transform"] = lambda y: y * math.sqrt(n)
    else:
        notes.append("hadamard-transform not installed (pip install hadamard-transform)")
    if not have["pyfwht"]:
        notes.append("pyfwht not installed (pip install pyfwht)")
    elif x.device.type != "cpu" or x.dtype != torch.float64:
        notes.append(f"pyfwht: no {x.dtype} on the CPU (its CPU backends take float64, int8, int32)")
    else:
        import pyfwht

        array = x.numpy()
        for backend in ("cpu", "openmp"):
            if backend == "openmp" and not pyfwht.has_openmp():
                notes.append("pyfwht built without OpenMP")
                continue
            calls[f"pyfwht_{backend}"] = lambda backend=backend: pyfwht.fwht(array, backend=backend)
            as_fwht[f"pyfwht_{backend}"] = torch.from_numpy
    return calls, as_fwht, notes
