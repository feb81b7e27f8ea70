"""Shifted per-class sufficient statistics: how batches are added, and how sums move between references.

The streaming metric and the functional form keep, per class ``k``, sums taken
about a *reference* point ``c_k`` (close to the class mean, so that nothing
cancels when the features carry a large common offset)::

    counts[k]   = n_k
    sums[k]     = s   sum_{i in k} (h_i - c_k)
    sq_norms[k] = s^2 sum_{i in k} ||h_i - c_k||^2
    second      = s^2 sum_i (h_i - c_{y_i}) (h_i - c_{y_i})^T          (d x d)

All four are float64 sums. ``s`` (``scale``, a power of two, 1 for ordinary data) is chosen on
the first batch of a pass (:func:`choose_scale`) when the shifted features lie outside
[2^-200, 2^200]: squares of features below ~1e-154 would underflow and above ~1e154 overflow
in float64, so without it the scale-free values would be NaN at such scales. Sums about one reference move exactly (to
round-off) to another with :meth:`ClassStatistics.rebased`, which is what makes
``merge_state`` and the DDP sync exact when the two sides picked different
references.

Precision of ``second`` (``precision``). ``"float64"``: every product in
float64, exact to round-off. ``"float32"`` (:class:`Float32Accumulator`): the
features are shifted and multiplied in float32; up to :data:`GROUP` batches are
summed in float32 (inside the matrix product), then added to the float64 sums.
That is a few float32 roundings relative to ``||h - c_k||^2``: small while the
reference stays within a few spreads of the class mean (README section 3 states
the contract).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ClassStatistics", "Float32Accumulator", "GROUP", "Workspace", "accumulate", "choose_scale",
           "pick_references"]

F64 = torch.float64
SCALE_BAND = 200  # shifted features within [2^-200, 2^200] are summed unscaled (their squares stay normal)
GROUP = 32  # batches summed in float32 before they go into the float64 sums (each flush is a d x d pass)


def symmetric_blocks(d: int) -> list[slice]:
    """Column blocks for the symmetric product: only the blocks on and above the diagonal are multiplied
    (n(n+1)/2 of n^2: 3/4 of the work for 2 blocks, 5/8 for 4). One block below d = 512, where smaller
    matrix products lose more than the saving (measured on CPU, float32)."""
    n = 1 if d < 512 else 2 if d < 1024 else 4
    size = -(-d // n)
    return [slice(i, min(i + size, d)) for i in range(0, d, size)]


@dataclass
class ClassStatistics:
    """Shifted per-class sums (see the module docstring); all float64, one device."""

    counts: Tensor
    sums: Tensor
    sq_norms: Tensor
    second: Tensor
    reference: Tensor
    scale: Tensor | None = None  # s of the module docstring (0-dim float64); None means 1

    def __post_init__(self) -> None:
        if self.scale is None:
            self.scale = torch.ones((), dtype=F64, device=self.counts.device)

    def means(self) -> Tensor:
        """Class means (K x d); rows of unseen classes are the reference."""
        return self.reference + self.sums / (self.counts.clamp_min(1) * self.scale).unsqueeze(1)

    def with_scale(self, scale: Tensor) -> ClassStatistics:
        """The same statistics with the power of two ``scale`` (exact: only exponents change)."""
        scale = scale.to(self.scale)
        if torch.equal(scale, self.scale):
            return self
        factor = scale / self.scale
        return ClassStatistics(self.counts.clone(), self.sums * factor, self.sq_norms * factor * factor,
                               self.second * factor * factor, self.reference.clone(), scale.clone())

    def rebased(self, reference: Tensor) -> ClassStatistics:
        """The same data summed about ``reference`` (K x d): with ``e_k = c_k - c'_k``,
        ``h - c' = (h - c) + e``, so the sums gain ``n e``, ``2 s.e + n|e|^2`` and
        ``S^T E + E^T S + E^T diag(n) E``. Rows of classes without samples just take the new point."""
        reference = reference.to(self.reference)
        seen = (self.counts > 0).unsqueeze(1)
        e = torch.where(seen, self.reference - reference, torch.zeros_like(reference)) * self.scale
        ne = self.counts.unsqueeze(1) * e
        cross = self.sums.T @ e
        return ClassStatistics(
            counts=self.counts.clone(),
            sums=self.sums + ne,
            sq_norms=self.sq_norms + 2 * (self.sums * e).sum(1) + (ne * e).sum(1),
            second=self.second + cross + cross.T + ne.T @ e,
            reference=reference.clone(),
            scale=self.scale.clone(),
        )

    def merged(self, other: ClassStatistics) -> ClassStatistics:
        """The statistics of both data sets, about this side's reference (the other's for classes seen only there)."""
        if other.sums.shape != self.sums.shape:
            raise ValueError(f"cannot merge statistics of shape {tuple(other.sums.shape)} "
                             f"into {tuple(self.sums.shape)}")
        target = torch.where((self.counts > 0).unsqueeze(1), self.reference, other.reference.to(self.reference))
        common = self.scale if bool(self.counts.sum() > 0) or not bool(other.counts.sum() > 0) else other.scale
        a, b = self.with_scale(common).rebased(target), other.with_scale(common).rebased(target)
        return ClassStatistics(a.counts + b.counts, a.sums + b.sums, a.sq_norms + b.sq_norms,
                               a.second + b.second, target, common.to(self.scale).clone())

    def symmetric_second(self) -> Tensor:
        """``second`` made exactly symmetric (a float32 product need not be)."""
        return (self.second + self.second.T) / 2


class Workspace:
    """Buffers reused by every batch (no fresh d x d or B x d temporaries per call)."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


def pick_references(
    reference: Tensor, counts: Tensor, features: Tensor, labels: Tensor, mirror: Tensor | None = None
) -> None:
    """Give every class that has no sample yet (``counts == 0``) and appears in this batch a reference:
    its first sample here. Written into ``reference`` (and its float32 ``mirror``) in place; nothing
    syncs with the host on a GPU."""
    b, k = labels.shape[0], reference.shape[0]
    new = counts.index_select(0, labels) == 0
    if features.device.type == "cpu" and not bool(new.any()):
        return  # the common case after the first batches; the check is free on the CPU
    positions = torch.arange(b, device=labels.device)
    first = torch.full((k,), b, dtype=torch.int64, device=labels.device)
    first.scatter_reduce_(0, labels, positions, reduce="amin")
    picked = features.index_select(0, first.index_select(0, labels))
    if mirror is not None:
        picked = picked.to(mirror.dtype)  # the float32 path shifts by float32 points
    picked = picked.to(F64)
    rows = torch.where(new.unsqueeze(1), picked, reference.index_select(0, labels))
    reference.index_copy_(0, labels, rows)  # rows of one class carry one value: the order of writes does not matter
    if mirror is not None:
        mirror.index_copy_(0, labels, rows.to(mirror.dtype))  # float32 samples: the same values


def choose_scale(features: Tensor, labels: Tensor, reference: Tensor) -> Tensor:
    """The power of two ``s`` (0-dim float64, on the reference's device) for a pass whose first batch is
    ``features``: 1 while ``max |h - c_y|`` (or ``max |h|`` if that is 0) lies in [2^-200, 2^200]; else the
    power that brings it to about 1. No host synchronization."""
    x = features.detach().to(device=reference.device, dtype=F64)
    if x.numel() == 0:
        return torch.ones((), dtype=F64, device=reference.device)
    top = (x - reference.index_select(0, labels)).abs().max()
    top = torch.where(top > 0, top, x.abs().max())
    inside = (top == 0) | ~torch.isfinite(top) | ((top >= 2.0**-SCALE_BAND) & (top <= 2.0**SCALE_BAND))
    power = torch.exp2(-torch.frexp(top).exponent.to(F64))
    return torch.where(inside, torch.ones_like(power), power)


def accumulate(stats: ClassStatistics, features: Tensor, labels: Tensor, workspace: Workspace | None = None) -> None:
    """Add a batch (features B x d, int64 labels on the statistics' device) to ``stats`` in place, in float64."""
    b, d = features.shape
    ws = workspace or Workspace()
    shifted = ws.get("shifted64", (b, d), F64, stats.second.device)
    torch.index_select(stats.reference, 0, labels, out=shifted)
    torch.sub(features.to(F64), shifted, out=shifted)
    shifted.mul_(stats.scale)  # exact: a power of two
    stats.counts.index_add_(0, labels, torch.ones(b, dtype=F64, device=shifted.device))
    stats.sums.index_add_(0, labels, shifted)
    stats.sq_norms.index_add_(0, labels, torch.linalg.vecdot(shifted, shifted))
    stats.second.addmm_(shifted.T, shifted)


class Float32Accumulator:
    """The ``precision="float32"`` update: float32 shifts and products, flushed into the float64 sums.

    Holds a float32 copy of the reference (exact: the reference is rounded to float32 first, the sums
    moved with it) and the float32 sums of the current group of at most :data:`GROUP` batches. The
    owner calls :meth:`flush` before anything reads the states and :meth:`discard` when it resets them.
    Each group is scaled by a power of two chosen on its first batch, so that squares neither over- nor
    underflow in float32 (groups whose later batches are 2^24 times larger than the first overflow, and
    ``compute()`` then reports non-finite sums).
    """

    def __init__(self) -> None:
        self.batches = 0
        self._mirror: Tensor | None = None
        self._scale: Tensor | None = None
        self._pending: dict[str, Tensor] = {}
        self._products: list[tuple[Tensor, slice, slice]] = []  # (output block, rows, cols) on and above the diagonal
        self._batch: tuple[Tensor, Tensor, list[tuple[Tensor, Tensor, Tensor]]] | None = None  # reused per batch size
        self._ws = Workspace()

    @staticmethod
    def exact_reference(stats: ClassStatistics) -> ClassStatistics:
        """``stats`` about a reference that float32 holds exactly (moved there if needed): the float32
        shifts then subtract the very point the sums are taken about."""
        rounded = stats.reference.to(torch.float32).to(F64)
        return stats if torch.equal(rounded, stats.reference) else stats.rebased(rounded)

    def start(self, stats: ClassStatistics) -> None:
        """Open a group if none is open; ``stats.reference`` must be :meth:`exact_reference`."""
        if self._mirror is not None:
            return
        k, d = stats.sums.shape
        device = stats.second.device
        self._mirror = stats.reference.to(torch.float32)
        for name, shape in (("sums", (k, d)), ("sq_norms", (k,)), ("second", (d, d))):
            self._pending[name] = self._ws.get(name, shape, torch.float32, device).zero_()
        blocks = symmetric_blocks(d)
        self._products = [(self._pending["second"][rows, cols], rows, cols)
                          for i, rows in enumerate(blocks) for cols in blocks[i:]]
        self._batch = None

    @property
    def mirror(self) -> Tensor | None:
        """The float32 copy of the reference while a group is open."""
        return self._mirror

    def _batch_buffers(self, b: int, d: int, device: torch.device) -> tuple[Tensor, Tensor, list]:
        if self._batch is None or self._batch[0].shape[0] != b:
            low = torch.empty(b, d, dtype=torch.float32, device=device)
            products = [(out, low[:, rows].T, low[:, cols]) for out, rows, cols in self._products]
            self._batch = (low, torch.ones(b, dtype=F64, device=device), products)
        return self._batch

    def add(self, stats: ClassStatistics, features: Tensor, labels: Tensor) -> None:
        """Add a batch; ``stats.reference`` must already hold this batch's classes (and :meth:`start` was called)."""
        b, d = features.shape
        p = self._pending
        low, ones, products = self._batch_buffers(b, d, features.device)
        torch.index_select(self._mirror, 0, labels, out=low)
        torch.sub(features if features.dtype == torch.float32 else features.to(torch.float32), low, out=low)
        if self.batches == 0:
            self._scale = self._choose_scale(low)
        if self._scale is not None:
            low.mul_(self._scale)
        stats.counts.index_add_(0, labels, ones)
        p["sums"].index_add_(0, labels, low)
        p["sq_norms"].index_add_(0, labels, torch.linalg.vector_norm(low, dim=1).square_())
        for out, left, right in products:  # the blocks on and above the diagonal; flush() mirrors them
            out.addmm_(left, right)
        self.batches += 1
        if self.batches == GROUP:
            self.flush(stats)

    @staticmethod
    def _choose_scale(low: Tensor) -> Tensor | None:
        low_min, low_max = torch.aminmax(low)
        top = torch.maximum(low_max, -low_min)
        if low.device.type == "cpu":  # a free host check: most data needs no scaling
            value = top.item()
            if not math.isfinite(value) or value == 0 or 2.0**-32 < value < 2.0**32:
                return None
        return torch.exp2(-torch.frexp(top).exponent.to(torch.float32))

    def flush(self, stats: ClassStatistics, *, keep_mirror: bool = False) -> None:
        """Add the open group to the float64 sums (in place) and close it; ``keep_mirror``: the float32 copy
        of the reference stays for the next group (the reference is unchanged), which starts at once."""
        if self.batches == 0:
            return
        p = self._pending
        second = p["second"]
        blocks = symmetric_blocks(second.shape[0])
        for i, rows in enumerate(blocks):
            for cols in blocks[i + 1 :]:
                second[cols, rows] = second[rows, cols].T
        # the group's own power of two undone and the metric's applied (both exact)
        factor = stats.scale if self._scale is None else self._scale.to(F64).reciprocal() * stats.scale
        stats.sums.add_(p["sums"].to(F64) * factor)
        stats.sq_norms.add_(p["sq_norms"].to(F64) * factor**2)
        stats.second.add_(second.to(F64) * factor**2)
        if keep_mirror:
            self.batches, self._scale = 0, None
            for pending in p.values():
                pending.zero_()
        else:
            self.discard()

    def discard(self) -> None:
        """Drop the open group (its states were reset or replaced)."""
        self.batches = 0
        self._scale = None
        self._mirror = None
