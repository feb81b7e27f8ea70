"""The softmax in spectral coordinates (SPEC section 3).

For logits ``Z = Q diag(lam) Q^T`` in a softmax-diagonalizing basis, one sample
of class 0 carries everything: its logits ``z = Q diag(lam) Q[0, :]^T``, its
softmax ``p``, and the eigenvalues ``mu`` of ``softmax(Z)``. Both maps are one
fast transform: a Walsh–Hadamard transform (walsh) or a real FFT (fourier).

Everything here works on batches (last dim = the K modes), any float dtype,
any device (integer values and Python sequences become float64, the core's dtype rule), and stays accurate far into the slowdown regime: ``1 - mu`` and the
loss are computed from the small softmax masses directly, never as ``1 - (1 - eps)``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import _checks
from ..bases import SOFTMAX_DIAGONALIZING, resolve_basis
from ..hadamard import fwht

__all__ = ["class0_logits", "margins", "softmax_spectrum"]


@functools.lru_cache(maxsize=32)
def _fourier_half_index(num_classes: int, device: torch.device) -> Tensor:
    """Mode index of each real-FFT frequency f = 0 .. K//2 (the cos mode of each pair)."""
    k = num_classes
    idx = torch.cat((torch.zeros(1, dtype=torch.int64), 2 * torch.arange(1, (k - 1) // 2 + 1) - 1))
    if k % 2 == 0:
        idx = torch.cat((idx, torch.tensor([k - 1])))
    return idx.to(device)


@functools.lru_cache(maxsize=32)
def _fourier_mode_frequency(num_classes: int, device: torch.device) -> Tensor:
    """Frequency f of each mode: 0, 1, 1, 2, 2, ..., (K/2 for even K)."""
    modes = torch.arange(num_classes, device=device)
    return (modes + 1) // 2


def class0_logits(lam: Tensor, basis: str = "auto") -> Tensor:
    """``z = Q diag(lam) Q[0, :]^T``: the logits of a sample of class 0 (walsh: ``H_K lam / K``)."""
    lam = _checks.real_tensor(lam, "lam")
    if lam.dim() == 0:
        raise ValueError("lam must have shape (..., K), got a 0-d tensor")
    k = lam.shape[-1]
    kind = resolve_basis(k, basis)
    # divide by K first: then no partial sum exceeds max|lam| and nothing overflows near 1e308
    if kind == "walsh":
        return fwht(lam / k)
    if kind not in SOFTMAX_DIAGONALIZING:
        raise ValueError(f"spectral dynamics need a softmax-diagonalizing basis {SOFTMAX_DIAGONALIZING}, got {kind!r}")
    # z_m = (1/K) sum_f l_f cos(2 pi f m / K) over the symmetric frequency sequence l: an inverse real FFT
    half = lam.index_select(-1, _fourier_half_index(k, lam.device))
    half = half.to(torch.promote_types(lam.dtype, torch.float32)) / k
    return torch.fft.irfft(half, n=k, norm="forward").to(lam.dtype)


def margins(lam: Tensor, basis: str = "auto") -> Tensor:
    """Margins ``gamma(m) = z(0) - z(m)`` against classes m = 1 .. K-1, shape (..., K-1).

    Their sum is ``sum(lam_bar)`` (modes 1 .. K-1); at NC they are all equal.
    """
    z = class0_logits(lam, basis)
    return z[..., :1] - z[..., 1:]


def softmax_spectrum(lam: Tensor, basis: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, p, one_minus_mu)`` for logits ``Q diag(lam) Q^T``.

    ``loss = -log p(0)`` (the CE loss of every sample), ``p`` the softmax of a
    class-0 sample, ``one_minus_mu[i] = 1 - mu_i >= 0`` per mode (0 for mode 0).
    walsh: ``1 - mu_i = 2 * sum of p(m) over the classes m that mode i separates
    from class 0``; fourier: ``sum_m p(m) (1 - cos(2 pi f m / K))``.
    """
    lam = _checks.real_tensor(lam, "lam")
    if lam.dim() == 0:
        raise ValueError("lam must have shape (..., K), got a 0-d tensor")
    k = lam.shape[-1]
    kind = resolve_basis(k, basis)
    gamma = margins(lam, kind)
    # a margin beyond the dtype's range (|lam| near 1e308) is inf; clamped, the masses stay right
    # (no inf - inf = NaN) and the loss is set back to inf below
    huge = torch.finfo(gamma.dtype).max
    overflow = (gamma == -torch.inf).any(-1)
    zero = torch.zeros_like(gamma[..., :1])
    neg = torch.cat((zero, -gamma.clamp(-huge, huge)), dim=-1)  # z(m) - z(0)
    # softmax from the top logit: e = exp(neg - top); the loss is top + log(sum e), with
    # sum e - 1 summed from the terms below the top (ties count 1 each): log1p keeps
    # e ~ 1e-300 exact, and ties at huge margins keep their share (1/2 each, not 1)
    top = neg.max(-1, keepdim=True).values
    e = torch.exp(neg - top)
    at_top = neg == top
    others = (at_top.sum(-1, keepdim=True) - 1).to(e.dtype) + torch.where(at_top, 0.0, e).sum(-1, keepdim=True)
    p = e / (1.0 + others)
    loss = torch.where(overflow, torch.inf, (top + torch.log1p(others)).squeeze(-1))
    p_rest = torch.cat((zero, p[..., 1:]), dim=-1)  # mass off the true class
    rest = p_rest.sum(-1, keepdim=True)  # 1 - p(0), summed from the small terms
    if kind == "walsh":
        one_minus_mu = rest - fwht(p_rest)
    else:
        spectrum = torch.fft.rfft(p_rest.to(torch.promote_types(lam.dtype, torch.float32)), dim=-1).real.to(lam.dtype)
        one_minus_mu = rest - spectrum.index_select(-1, _fourier_mode_frequency(k, lam.device))
    one_minus_mu = torch.cat((zero, one_minus_mu[..., 1:].clamp_min(0.0)), dim=-1)
    return loss, p, one_minus_mu
