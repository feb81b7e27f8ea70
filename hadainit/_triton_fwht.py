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

import contextlib
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
#: programs per launch at most (CUDA's grid limit is 2^31 - 1)
_MAX_PROGRAMS = 1 << 30


@functools.lru_cache(maxsize=1)
def _kernel():
    """The Triton kernel, compiled lazily by Triton per (tile shape, dtype); None without Triton."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # no Triton, or a broken install: the reference path
        return None

    @triton.jit
    def fwht_axis(src, dst, columns, column_tiles, group_stride, row_stride, column_stride, AXIS: tl.constexpr,
                  BITS: tl.constexpr, TILE: tl.constexpr, UPCAST: tl.constexpr):
        # program: one (group, column tile); a tile is AXIS rows (the transformed index) x TILE columns
        pid = tl.program_id(0)
        group = pid // column_tiles
        cols = (pid % column_tiles).to(tl.int64) * TILE + tl.arange(0, TILE).to(tl.int64)  # > 2^31 columns
        rows = tl.arange(0, AXIS)
        offs = (group.to(tl.int64) * group_stride + rows[:, None].to(tl.int64) * row_stride
                + cols[None, :].to(tl.int64) * column_stride)
        inside = (rows[:, None] < AXIS) & (cols[None, :] < columns)  # the last tile may overhang
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
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()  # launch on x's device
    with guard:
        for chunk, chunk_inner in plan(n.bit_length() - 1, inner):
            _launch(kernel, src, dst, chunk, chunk_inner, upcast)
            src = dst  # later passes in place: each program reads and writes only its own tile
    return result


def _launch(kernel, src: Tensor, dst: Tensor, chunk: int, inner: int, upcast: bool) -> None:
    """One pass: the data as (groups, 2^chunk, inner), transformed along the middle axis.

    With inner > 1 a tile's columns are contiguous elements of one group; with inner = 1
    (the lowest bits of the last dimension) they are whole rows of 2^chunk elements, so a
    program covers many short rows. Launches of at most :data:`_MAX_PROGRAMS` programs.
    """
    axis = 1 << chunk
    tile_cap = (1 << MAX_BITS) // axis
    if inner == 1:  # columns: the rows; one group
        columns, groups = src.numel() // axis, 1
        group_stride, row_stride, column_stride = 0, 1, axis
    else:
        columns, groups = inner, src.numel() // (axis * inner)
        group_stride, row_stride, column_stride = axis * inner, inner, 1
    tile = 1 << (max(1, min(columns, tile_cap)).bit_length() - 1)  # a power of two (Triton's blocks)
    column_tiles = -(-columns // tile)
    warps = max(1, min(16, axis * tile // 512))
    per_launch = max(1, _MAX_PROGRAMS // column_tiles)
    for first in range(0, groups, per_launch):
        count = min(per_launch, groups - first)
        offset = first * group_stride
        kernel[(count * column_tiles,)](_flat(src, offset), _flat(dst, offset), columns,
                                        column_tiles, group_stride, row_stride, column_stride, AXIS=axis, BITS=chunk,
                                        TILE=tile, UPCAST=upcast, num_warps=warps)


def _flat(t: Tensor, offset: int) -> Tensor:
    """The contiguous ``t`` from element ``offset`` on, as a flat view (a launch's base pointer)."""
    return t.reshape(-1)[offset:]
