"""The reduced right-hand side and GD step with reused buffers and fused passes (SPEC section 3).

:func:`hadainit.ufm.dynamics.spectral_rhs` computes one evaluation in ~36
separate torch operations, each allocating a fresh K-vector (at K = 2^20 in
float64 the first-touch page faults of those 8 MB temporaries cost as much as
the arithmetic). :class:`FusedRHS` does the same evaluation in a dozen passes
over buffers allocated once:

1. ``z = (a * b) / K``, then the Walsh–Hadamard transform in place (fourier:
   ``class0_logits``): the logits of a class-0 sample;
2. the top logit offset ``top`` from ``max z``: subtracting ``z(0)`` and
   clamping are monotone, so ``max_m (z(m) - z(0)) = max z - z(0)`` exactly
   (and whether a margin overflows to ``-inf``);
3. ``e = neg - top`` with ``-inf`` at the top entries (``exp(-inf) = 0``: the
   reference's ``where(at_top, 0, e)``), then torch's ``exp_`` and ``sum``;
4. ``p_rest = e / (1 + others)`` (``1 / (1 + others)`` at the top entries,
   0 at class 0), torch's ``sum`` for ``rest``, the transform in place for ``mu``;
5. ``c = max(rest - mu, 0)``, ``(da, db)``, and the step ``a + lr * da`` (or the
   derivatives, for the flow) in one pass.

With the compiled kernels, a walsh CE evaluation is one call (``ce_walsh``: the
passes above, with torch's ``exp_`` and ``sum`` called from C++) and ``z`` is
transformed into ``e`` in place; MSE is a single pass (``c = 1 - a b``).

Every value is the reference's bit for bit: the passes perform the same IEEE
operations in the same order (the C++ kernels are built without fused
multiply-add), and ``exp`` and the sums are the same torch calls on arrays equal
to the reference's. The tests check this against ``spectral_rhs`` on many states.
The passes run as compiled kernels (:mod:`hadainit._kernels`) on the CPU, else as
torch operations on the same buffers (:class:`TorchPasses`: CUDA, or no compiler).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _kernels
from .spectral import _fourier_mode_frequency, class0_logits

__all__ = ["FusedRHS", "TorchPasses", "fused_dtypes"]


def fused_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes :class:`FusedRHS` handles (others use the reference implementation)."""
    return (torch.float32, torch.float64)


class TorchPasses:
    """The passes of :class:`FusedRHS` as torch operations on the caller's buffers (any device)."""

    @staticmethod
    def logits_input(a: Tensor, b: Tensor, z: Tensor) -> None:
        torch.mul(a, b, out=z)
        z.div_(a.shape[-1])

    @staticmethod
    def fwht_(x: Tensor, dim: int) -> None:
        from ..hadamard import fwht

        x.copy_(fwht(x, dim))

    @staticmethod
    def top_of(z: Tensor) -> tuple[Tensor, Tensor]:
        huge = torch.finfo(z.dtype).max
        rest = z[:, 1:]
        gamma_min = z[:, 0] - rest.amax(-1)  # min over m of gamma(m) = z(0) - z(m); NaN if a z(m) is
        # a margin of -inf overflows the loss even when another z(m) is NaN (the reference's any(gamma == -inf))
        least = z[:, 0] - torch.where(rest.isnan(), -math.inf, rest).amax(-1)
        return (-gamma_min.clamp(-huge, huge)).clamp_min(0.0), least == -math.inf

    @staticmethod
    def shift(z: Tensor, top: Tensor, e: Tensor, mask: Tensor) -> Tensor:
        huge = torch.finfo(z.dtype).max
        torch.sub(z[:, :1], z, out=e)  # gamma(m) = z(0) - z(m)
        e.clamp_(-huge, huge).neg_()
        e[:, 0] = 0.0
        at_top = torch.eq(e, top.unsqueeze(-1))
        mask.copy_(at_top)
        e.sub_(top.unsqueeze(-1)).masked_fill_(at_top, -math.inf)
        return at_top.sum(-1)

    @staticmethod
    def probs(e: Tensor, mask: Tensor, count: Tensor, total: Tensor) -> Tensor:
        others = (count - 1).to(e.dtype) + total
        d = (1.0 + others).unsqueeze(-1)
        at_top = 1.0 / d
        e.div_(d)
        torch.where(mask.bool(), at_top, e, out=e)
        e[:, 0] = 0.0
        return others

    @staticmethod
    def _finish(c: Tensor, a: Tensor, b: Tensor, out_a: Tensor, out_b: Tensor, n: int, wd_w: float, wd_h: float,
                lr: float, step: bool) -> None:
        k = a.shape[-1]
        da = c * b / k - wd_w * a
        db = c * a / (n * k) - wd_h * b
        if step:
            torch.add(a, lr * da, out=out_a)
            torch.add(b, lr * db, out=out_b)
        else:
            out_a.copy_(da)
            out_b.copy_(db)

    @classmethod
    def update_ce(cls, mu, rest, a, b, out_a, out_b, n, wd_w, wd_h, lr, step) -> None:
        c = rest.unsqueeze(-1) - mu
        c.clamp_min_(0.0)
        c[:, 0] = 0.0
        cls._finish(c, a, b, out_a, out_b, n, wd_w, wd_h, lr, step)

    @classmethod
    def update_mse(cls, a, b, out_a, out_b, n, wd_w, wd_h, lr, step) -> None:
        cls._finish(1.0 - a * b, a, b, out_a, out_b, n, wd_w, wd_h, lr, step)


class FusedRHS:
    """One evaluation of the reduced right-hand side, or one GD step, over buffers reused call after call.

    Args:
        shape: the shape ``(..., K)`` of ``a`` and ``b``.
        dtype, device: theirs (float32 or float64).
        kind: ``"walsh"`` or ``"fourier"``; samples_per_class, weight_decay, loss as in ``spectral_rhs``.
        passes: the implementation of the passes; default the compiled kernels on the CPU when they
            are available, else :class:`TorchPasses`.
    """

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device, kind: str,
                 samples_per_class: int, weight_decay: tuple[float, float], loss: str, passes=None) -> None:
        if dtype not in fused_dtypes():
            raise TypeError(f"FusedRHS handles {fused_dtypes()}, got {dtype}")
        self.shape = torch.Size(shape)
        self.k = self.shape[-1]
        self.rows = math.prod(self.shape[:-1])
        self.kind, self.n, self.loss_kind = kind, samples_per_class, loss  # validated by the caller
        self.wd_w, self.wd_h = weight_decay
        if passes is None:
            passes = _kernels.kernel() if torch.device(device).type == "cpu" else None
            passes = passes if passes is not None else TorchPasses
        self.passes = passes
        flat = (self.rows, self.k)
        if loss == "ce":
            self.e = torch.empty(flat, dtype=dtype, device=device)
            # the compiled shift works in place (z becomes e): one K-buffer fewer to keep in cache
            self.z = self.e if hasattr(passes, "ce_walsh") else torch.empty(flat, dtype=dtype, device=device)
            self.mask = torch.empty(flat, dtype=torch.uint8, device=device)
        self._top = self._others = self._overflow = None

    def _rows(self, t: Tensor) -> Tensor:
        return t.reshape(self.rows, self.k)

    def evaluate(self, a: Tensor, b: Tensor, out_a: Tensor | None, out_b: Tensor | None,
                 lr: float | None = None) -> None:
        """From ``(a, b)`` (contiguous, of the constructor's shape): ``out <- (a, b) + lr * (da, db)`` if ``lr``
        is given, else ``out <- (da, db)``; ``out_a = None`` computes only what :meth:`loss` needs."""
        a2, b2 = self._rows(a), self._rows(b)
        step = lr is not None
        args = (self.n, self.wd_w, self.wd_h, float(lr) if step else 0.0, step)
        if self.loss_kind == "mse":
            if out_a is not None:
                self.passes.update_mse(a2, b2, self._rows(out_a), self._rows(out_b), *args)
            return
        if self.kind == "walsh" and hasattr(self.passes, "ce_walsh"):  # the compiled passes: all in one call
            out = (None, None) if out_a is None else (self._rows(out_a), self._rows(out_b))
            self._top, self._others, self._overflow = self.passes.ce_walsh(a2, b2, self.z, self.e, self.mask, *out, *args)
            return
        mu, rest = self._softmax_spectrum(a2, b2)
        if out_a is not None:
            self.passes.update_ce(mu, rest, a2, b2, self._rows(out_a), self._rows(out_b), *args)

    def _softmax_spectrum(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """The reference's ``softmax_spectrum`` up to ``1 - mu``: returns ``(mu, rest)``, keeps the loss's parts."""
        z, e, mask = self.z, self.e, self.mask
        if self.kind == "walsh":
            self.passes.logits_input(a, b, z)
            self.passes.fwht_(z, 1)
        else:
            z = class0_logits(a * b, "fourier")
        top, self._overflow = self.passes.top_of(z)
        count = self.passes.shift(z, top, e, mask)
        e.exp_()
        others = self.passes.probs(e, mask, count, e.sum(-1))
        rest = e.sum(-1)
        self._top, self._others = top, others
        if self.kind == "walsh":
            self.passes.fwht_(e, 1)
            return e, rest
        spectrum = torch.fft.rfft(e.to(torch.promote_types(e.dtype, torch.float32)), dim=-1).real.to(e.dtype)
        return spectrum.index_select(-1, _fourier_mode_frequency(self.k, e.device)), rest

    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """The loss at the ``(a, b)`` of the last :meth:`evaluate` (shape ``shape[:-1]``), as ``spectral_rhs``."""
        k = self.k
        if self.loss_kind == "ce":
            value = torch.where(self._overflow, torch.inf, self._top + torch.log1p(self._others))
            value = value.reshape(self.shape[:-1])
        else:
            c = 1.0 - a * b
            value = 0.5 * c.pow(2).sum(-1) / k
        wd_w, wd_h = self.wd_w, self.wd_h
        if wd_w or wd_h:
            value = value + 0.5 * wd_w * a.pow(2).sum(-1) + 0.5 * wd_h * self.n * b.pow(2).sum(-1)
        return value
