"""Orthogonal bases for classifier initialization, and the softmax-diagonalizing ones.

A K x K orthogonal ``Q`` whose column 0 is the constant ``1/sqrt(K)``
(SPEC section 2). For the two *softmax-diagonalizing* kinds,
``softmax(Q diag(lam) Q^T) = Q diag(mu) Q^T`` exactly:

* ``"walsh"`` (K a power of two): ``Q = H_K / sqrt(K)``, Sylvester order;
  ``Q diag(lam) Q^T`` depends on ``i XOR j`` only.
* ``"fourier"`` (any K >= 2): constant, then (cos, sin) pairs of frequency
  ``f = 1 .. floor((K-1)/2)``, then ``(-1)^j`` for even K; with equal eigenvalues
  within each pair ``Q diag(lam) Q^T`` is a symmetric circulant.

A third kind, ``"hadamard"``, is ``H / sqrt(K)`` for any constructible Hadamard
matrix (Paley, Kronecker, ...). It is orthogonal and a valid drop-in
initializer, but it does NOT diagonalize the softmax unless K is a power of two
(where it is the walsh basis): the exact UFM theory does not apply to it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _checks
from .hadamard import hadamard_matrix, is_power_of_two

__all__ = ["BASIS_KINDS", "SOFTMAX_DIAGONALIZING", "softmax_basis", "basis_matrix", "mode_pairs", "paired_spectrum"]

BASIS_KINDS = ("auto", "walsh", "fourier", "hadamard")
#: The kinds for which ``softmax(Q diag(lam) Q^T)`` stays diagonal: the exact theory applies to these only.
SOFTMAX_DIAGONALIZING = ("walsh", "fourier")


def resolve_basis(num_classes: int, kind: str = "auto") -> str:
    """The concrete basis kind for ``num_classes``: ``"auto"`` is walsh for powers of two, else fourier."""
    _checks.positive_int(num_classes, "num_classes", minimum=2)
    if not isinstance(kind, str) or kind not in BASIS_KINDS:
        raise ValueError(f"unknown basis kind {kind!r}; expected one of {BASIS_KINDS}")
    if kind == "auto":
        return "walsh" if is_power_of_two(num_classes) else "fourier"
    if kind == "walsh" and not is_power_of_two(num_classes):
        raise ValueError(f"the walsh basis needs a power-of-two number of classes, got {num_classes}; use 'fourier'")
    return kind


def _fourier_table(num_classes: int) -> Tensor:
    """``sqrt(2/K) (cos, sin)(2 pi m / K)`` for m = 0 .. K-1, one row each (2 x K, float64).

    Every fourier entry is one of these: column ``(f, cos|sin)`` of Q at class j is the entry
    ``m = (f j) mod K`` (reduced in integers, so the angle stays exact at any K). Both
    :func:`basis_matrix` and :func:`hadainit.modes.basis_columns` gather from this table, so
    they agree bit for bit, and only 2K sines and cosines are evaluated for any number of columns.
    """
    angle = 2 * math.pi * torch.arange(num_classes, dtype=torch.int64).to(torch.float64) / num_classes
    return math.sqrt(2.0 / num_classes) * torch.stack((torch.cos(angle), torch.sin(angle)))


def _fourier(num_classes: int) -> Tensor:
    k = num_classes
    j = torch.arange(k, dtype=torch.int64)
    table = _fourier_table(k).flatten()  # cos entries 0 .. K-1, then sin entries K .. 2K-1
    q = torch.empty(k, k, dtype=torch.float64)
    q[:, 0] = 1.0 / math.sqrt(k)
    pairs = (k - 1) // 2
    for lo in range(1, pairs + 1, 256):  # blocks of frequencies: the integer entries stay O(256 K)
        f = torch.arange(lo, min(lo + 256, pairs + 1), dtype=torch.int64)
        m = (j[:, None] * f[None, :]) % k
        q[:, 2 * lo - 1 : 2 * (lo + f.numel()) - 1 : 2] = table[m]
        q[:, 2 * lo : 2 * (lo + f.numel()) : 2] = table[m + k]
    if k % 2 == 0:
        q[:, k - 1] = (1.0 - 2.0 * (j % 2)).to(torch.float64) / math.sqrt(k)
    return q


def basis_matrix(
    num_classes: int,
    kind: str = "auto",
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The K x K orthogonal basis of the given kind (any of :data:`BASIS_KINDS`), column 0 constant.

    >>> Q = basis_matrix(12, "hadamard")
    >>> torch.allclose(Q.T @ Q, torch.eye(12, dtype=Q.dtype))
    True
    """
    kind = resolve_basis(num_classes, kind)
    dtype = _checks.floating_dtype(dtype)  # the entries are +-1/sqrt(K), cos, sin: not integers
    if kind == "fourier":
        q = _fourier(num_classes)
    else:  # walsh is the Sylvester case of hadamard_matrix
        q = hadamard_matrix(num_classes) / math.sqrt(num_classes)
    return q.to(dtype=dtype, device=device)


def softmax_basis(
    num_classes: int,
    kind: str = "auto",
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The softmax-diagonalizing orthogonal basis ``Q`` of SPEC section 2.

    Args:
        num_classes: K >= 2.
        kind: ``"walsh"`` (K a power of two), ``"fourier"`` (any K) or ``"auto"``
            (walsh when possible, else fourier).
        dtype, device: of the result.

    For the fourier kind, the eigenvalues must be equal within each (cos, sin)
    pair (:func:`mode_pairs`) for the softmax to stay diagonal.

    >>> Q = softmax_basis(8)
    >>> lam = torch.rand(8, dtype=torch.float64)
    >>> P = torch.softmax(Q @ torch.diag(lam) @ Q.T, dim=0)
    >>> D = Q.T @ P @ Q
    >>> bool((D - torch.diag(torch.diagonal(D))).abs().max() < 1e-14)
    True
    """
    if not isinstance(kind, str) or kind not in BASIS_KINDS:
        raise ValueError(f"unknown basis kind {kind!r}; expected one of {('auto',) + SOFTMAX_DIAGONALIZING}")
    if kind not in ("auto",) + SOFTMAX_DIAGONALIZING:
        raise ValueError(
            f"kind {kind!r} does not diagonalize the softmax; expected one of "
            f"{('auto',) + SOFTMAX_DIAGONALIZING} (use basis_matrix for other orthogonal bases)"
        )
    return basis_matrix(num_classes, kind, dtype=dtype, device=device)


def mode_pairs(num_classes: int, kind: str = "auto") -> Tensor:
    """Index pairs ``(cos mode, sin mode)`` that must share an eigenvalue, shape (P, 2).

    Empty for walsh (every mode is free); ``[[1, 2], [3, 4], ...]`` for fourier.
    """
    kind = resolve_basis(num_classes, kind)
    if kind != "fourier":
        return torch.empty(0, 2, dtype=torch.int64)
    f = torch.arange(1, (num_classes - 1) // 2 + 1)
    return torch.stack((2 * f - 1, 2 * f), dim=1)


def paired_spectrum(values, kind: str = "auto") -> Tensor:
    """A valid spectrum for the basis ``kind`` made from K free values (last dim).

    fourier: each sin mode takes the value of its cos mode (:func:`mode_pairs`),
    so the softmax stays diagonal; walsh and hadamard: every mode is free, the
    values are returned as they are. Always a new tensor; integer values become
    float64, a floating tensor keeps its dtype and device.

    >>> paired_spectrum(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), "fourier")
    tensor([0., 1., 1., 3., 3.])
    """
    t = _checks.real_tensor(values, "values").detach().clone()
    if t.dim() == 0:
        raise ValueError("values must have shape (..., K), got a 0-d tensor")
    pairs = mode_pairs(t.shape[-1], kind).to(t.device)
    t[..., pairs[:, 1]] = t[..., pairs[:, 0]]
    return t


def check_spectrum(
    values, num_classes: int, kind: str, name: str, *, dtype: torch.dtype | None = torch.float64
) -> Tensor:
    """``values`` as a finite tensor of shape (..., K), admissible for the basis kind (internal helper).

    ``dtype=None`` keeps a floating tensor's dtype and device (float64 otherwise).
    Fourier spectra must be equal within (cos, sin) pairs (to 1e-12 relative);
    they are then made exactly equal, so the softmax stays exactly diagonal.
    """
    t = _checks.real_tensor(values, name).detach()
    if t.dim() == 0 or t.shape[-1] != num_classes:
        raise ValueError(f"{name} must have length {num_classes} in its last dim, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist() if t.numel() <= 16 else 'non-finite values'}")
    t = _checks.fit_dtype(t, t.dtype if dtype is None else dtype, name).clone()
    if resolve_basis(num_classes, kind) == "fourier":
        pairs = mode_pairs(num_classes, "fourier").to(t.device)
        c, s = t[..., pairs[:, 0]], t[..., pairs[:, 1]]
        bad = (c - s).abs() > 1e-12 * torch.maximum(c.abs(), s.abs())
        if bad.any():
            where = tuple(bad.nonzero()[0].tolist())  # first offending (batch..., pair)
            i = int(pairs[where[-1], 0])
            raise ValueError(
                f"{name} is not paired for the fourier basis: modes {i} and {i + 1} (a cos/sin pair) must be "
                f"equal, got {c[where].item()} and {s[where].item()}"
            )
        t = _tie_pairs(t, "fourier")
    return t


def _tie_pairs(t: Tensor, kind: str) -> Tensor:
    """Each fourier (cos, sin) pair set to its mean, in place (a solver's output drifts apart by round-off)."""
    if kind == "fourier":
        pairs = mode_pairs(t.shape[-1], "fourier").to(t.device)
        c, s = t[..., pairs[:, 0]], t[..., pairs[:, 1]]
        mean = c + (s - c) / 2  # (c + s) / 2 would overflow near the largest float
        t[..., pairs[:, 0]] = mean
        t[..., pairs[:, 1]] = mean
    return t
