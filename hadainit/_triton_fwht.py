"""hadainit's CUDA transform: :func:`hadainit.fwht` of CUDA tensors through a Triton kernel (optional).

The pinned torch ships Triton, so nothing else is needed. A CUDA tensor whose
dtype is float16, bfloat16, float32, float64 or complex goes through
:func:`transform` when Triton imports and ``HADAINIT_NO_EXTENSION`` is unset;
otherwise :func:`hadainit.fwht` uses its pure-PyTorch path (the reference).

The plan. The length-n transform is ``H_n = H_{n_1} (x) ... (x) H_{n_p}``, so the
tensor, seen as ``(outer, n, inner)``, is transformed one chunk of index bits at a
time, lowest bits first: the pass for a chunk of ``c`` bits views the data as
``(outer', 2^c, inner')`` and each Triton program loads one ``2^c x BLOCK``
tile (columns ``inner'``, coalesced along the contiguous axis), runs the ``c``
butterfly stages on it in registers, and stores it back. A chunk holds up to
:data:`MAX_BITS` bits, so n <= 2^14 takes one pass (one read and one write of
the array, the copy's traffic) and n <= 2^28 two. Half-precision inputs are
transformed in float32 within a pass and rounded once per pass; complex tensors
are transformed as their real view (real and imaginary parts are one more
inner axis).

The kernel's logic is tested on the CPU by Triton's interpreter
(``TRITON_INTERPRET=1``, ``tests/test_triton_fwht.py``), against the
pure-PyTorch reference: every dtype, odd batch shapes, every ``dim``,
non-contiguous input, one- and two-pass lengths. Its speed on a GPU has not been
measured in this project (no CUDA device was available; ``benchmarks`` has the
row for when one is).
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

__all__ = ["DTYPES", "MAX_BITS", "available", "plan", "transform"]

#: dtypes :func:`transform` takes (complex as its real view).
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
#: index bits per pass: a tile of 2^14 elements per program at most.
MAX_BITS = 14


@functools.lru_cache(maxsize=1)
def _kernel():
    """The Triton kernel, compiled lazily by Triton per (tile shape, dtype); None without Triton."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # no Triton, or a broken install: the reference path
        return None

    @triton.jit
    def fwht_axis(src, dst, inner, tiles_inner, AXIS: tl.constexpr, BITS: tl.constexpr, TILE: tl.constexpr,
                  UPCAST: tl.constexpr):
        # program: one (outer index, column tile) of the (outer, AXIS, inner) view
        pid = tl.program_id(0)
        o = pid // tiles_inner
        cols = (pid % tiles_inner) * TILE + tl.arange(0, TILE)
        rows = tl.arange(0, AXIS)
        offs = o.to(tl.int64) * AXIS * inner + rows[:, None].to(tl.int64) * inner + cols[None, :]
        inside = (rows[:, None] < AXIS) & (cols[None, :] < inner)  # the last tile of a row may overhang
        x = tl.load(src + offs, mask=inside, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        for s in tl.static_range(BITS):
            # rows r and r + 2^s (bit s of r clear): (x_r + x_{r+2^s}, x_r - x_{r+2^s}), as H = [[H, H], [H, -H]]
            y = tl.permute(tl.reshape(x, (AXIS // (2 << s), 2, 1 << s, TILE)), (0, 2, 3, 1))
            low, high = tl.split(y)
            y = tl.join(low + high, low - high)
            x = tl.reshape(tl.permute(y, (0, 3, 1, 2)), (AXIS, TILE))
        tl.store(dst + offs, x.to(dst.dtype.element_ty), mask=inside)

    return fwht_axis


def available() -> bool:
    """Whether CUDA tensors can take the Triton path: Triton imports and ``HADAINIT_NO_EXTENSION`` is unset."""
    if os.environ.get("HADAINIT_NO_EXTENSION", "") not in ("", "0"):
        return False
    return _kernel() is not None


def plan(bits: int, inner: int) -> list[tuple[int, int]]:
    """The passes for a length of ``2^bits`` with ``inner`` elements after it: ``(chunk bits, inner of the
    pass)`` per pass, lowest index bits first, chunks as even as :data:`MAX_BITS` allows."""
    if bits < 0 or inner < 1:
        raise ValueError(f"plan needs bits >= 0 and inner >= 1, got {bits}, {inner}")
    passes = max(1, -(-bits // MAX_BITS))
    chunks = [bits // passes + (1 if i < bits % passes else 0) for i in range(passes)]
    out, below = [], 1
    for c in chunks:
        out.append((c, below * inner))
        below <<= c
    return out


def transform(x: Tensor, dim: int) -> Tensor:
    """``x @ H_n`` along ``dim`` (non-negative; the length a power of two), a new contiguous tensor.

    Runs the Triton kernel on ``x``'s device: a CUDA tensor, or any tensor under
    ``TRITON_INTERPRET=1`` (how the tests run it on the CPU). Validation is the
    caller's (:func:`hadainit.fwht`).
    """
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("the Triton fwht needs Triton (shipped with the CUDA builds of torch)")
    if x.dtype not in DTYPES:
        raise TypeError(f"the Triton fwht takes {DTYPES}, got {x.dtype}")
    x = x.resolve_conj().resolve_neg().contiguous()
    result = torch.empty_like(x, memory_format=torch.contiguous_format)
    src, dst = (torch.view_as_real(x), torch.view_as_real(result)) if x.is_complex() else (x, result)
    n = x.shape[dim]
    inner = math.prod(src.shape[dim + 1:])  # a complex input's real view: its 2 included
    if src.numel() == 0:
        return result
    upcast = src.dtype in (torch.float16, torch.bfloat16)
    for chunk, chunk_inner in plan(n.bit_length() - 1, inner):
        axis = 1 << chunk
        tile = 1 << (min(chunk_inner, (1 << MAX_BITS) // axis).bit_length() - 1)  # a power of two (Triton's blocks)
        tiles_inner = -(-chunk_inner // tile)
        programs = src.numel() // (axis * chunk_inner) * tiles_inner  # (index above the chunk, column tile) pairs
        warps = max(1, min(16, axis * tile // 512))
        kernel[(programs,)](src, dst, chunk_inner, tiles_inner, AXIS=axis, BITS=chunk, TILE=tile, UPCAST=upcast,
                            num_warps=warps)
        src = dst  # later passes in place: each program reads and writes only its own tile
    return result

