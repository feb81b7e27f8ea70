"""Argument validation shared by the core modules: one message style, one dtype rule everywhere.

Types: a wrong *type* raises ``TypeError``, a wrong *value* ``ValueError``; the
message names the argument and what was received.

The dtype rule (:func:`real_tensor`, :func:`floating_dtype`):

* values coming in (spectra, eigenvalues, weights, times) may be tensors,
  arrays or nested sequences of real numbers; integer ones -- tensors, arrays
  and Python ints alike -- become float64, Python sequences become float64,
  and a floating tensor keeps its dtype. ``bool`` and complex values are
  rejected: they are not real numbers in any sense these functions use;
* values going out have a ``dtype`` that can hold them: a floating dtype,
  except for the +-1 entries of a Hadamard matrix (any signed dtype);
* a result cast into a narrower dtype must fit its range (:func:`fit_dtype`):
  no silent inf, no silent flush to zero.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

LOSS_KINDS = ("ce", "mse")


def integer(value, name: str) -> int:
    """``value`` as an int (bool and float are not ints: TypeError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def positive_int(value, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``."""
    value = integer(value, name)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def boolean(value, name: str) -> bool:
    """A real ``bool`` (a truthy string such as ``"no"`` is not one)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def loss_kind(kind: str) -> str:
    if not isinstance(kind, str) or kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSS_KINDS}")
    return kind


def real_number(value, name: str) -> float:
    """A real number as a float: ints, floats, numpy scalars, one-element tensors; not bool or str."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def weight_decay(value) -> tuple[float, float]:
    """``(wd_W, wd_H)`` as two non-negative finite floats.

    Only a pair is accepted: a tuple or list of two numbers, or a 1-D tensor of two.
    A string (``"12"``), a dict or a set would iterate into something else.
    """
    if isinstance(value, Tensor):
        items = list(value.flatten()) if value.dim() == 1 else None
    else:
        items = list(value) if isinstance(value, (tuple, list)) else None
    if items is None or len(items) != 2:
        raise TypeError(f"weight_decay must be a pair (wd_W, wd_H) of numbers, got {value!r}")
    try:
        wd_w, wd_h = (real_number(v, "weight_decay") for v in items)
    except TypeError:
        raise TypeError(f"weight_decay must be a pair (wd_W, wd_H) of numbers, got {value!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in (wd_w, wd_h)):
        raise ValueError(f"weight_decay must be non-negative and finite, got {value!r}")
    return wd_w, wd_h


def positive_float(value, name: str) -> float:
    v = real_number(value, name)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


# --------------------------------------------------------------------------- dtypes


def real_tensor(values, name: str, *, dtype: torch.dtype | None = None) -> Tensor:
    """``values`` as a floating tensor, by the module's one dtype rule (see the module docs).

    ``dtype`` forces the result's dtype; otherwise a floating tensor keeps its own
    and everything else becomes float64.
    """
    if isinstance(values, Tensor):
        t = values
    else:
        try:
            t = torch.as_tensor(values)  # infers bool / int64 / float / complex
        except (TypeError, ValueError, RuntimeError, OverflowError):
            t = None  # e.g. Python ints beyond int64: still real numbers
        if t is None or (t.is_floating_point() and not hasattr(values, "dtype")):
            try:  # Python floats: straight to float64 (the default dtype would round them to float32)
                t = torch.as_tensor(values, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                raise TypeError(
                    f"{name} must be a tensor or a sequence of real numbers, got {type(values).__name__}"
                ) from None
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if dtype is not None:
        return t.to(dtype)
    return t if t.is_floating_point() else t.to(torch.float64)


def floating_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """A floating ``torch.dtype``: the values produced are not integers."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating dtype (the values are not integers), got {dtype}")
    return dtype


def fit_dtype(x: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """``x`` cast to ``dtype``, raising ``ValueError`` if it overflows or underflows that dtype's range.

    Overflow: a non-finite entry. Underflow: the cast lost more than the dtype's
    epsilon of ``x`` in relative Frobenius norm (entries flushed to zero or subnormal),
    which a cast within the normal range never does.
    """
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} is not finite (overflow before the cast to {dtype})")
    out = x.to(dtype)
    if dtype == x.dtype or not dtype.is_floating_point or x.numel() == 0:
        return out
    info = torch.finfo(dtype)
    big = x.detach().abs().max()
    if big == 0:
        return out
    span = f"the normal range of {dtype} is {info.tiny:.3g} .. {info.max:.3g}"
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} overflows {dtype}: magnitudes up to {big.item():.3g}; {span}")
    scaled = x.detach().to(torch.float64) / big.to(torch.float64)
    lost = torch.linalg.vector_norm(out.detach().to(torch.float64) / big.to(torch.float64) - scaled)
    if lost > info.eps * torch.linalg.vector_norm(scaled):
        raise ValueError(
            f"{name} underflows {dtype}: magnitudes up to {big.item():.3g} lose their digits (or become 0); {span}"
        )
    return out


def orthonormal_columns(m: Tensor, name: str) -> Tensor:
    """``m`` (2-D, finite) if ``M^T M = I`` to the precision of its dtype; float64 copy returned.

    Integer entries (e.g. a permutation or an identity) are read as float64, by the dtype rule.
    """
    if not isinstance(m, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(m).__name__}")
    m = real_tensor(m, name)
    if m.dim() != 2:
        raise ValueError(f"{name} must be a 2-D floating tensor, got {m.dtype} of shape {tuple(m.shape)}")
    tol = 1e-10 if m.dtype == torch.float64 else 100 * torch.finfo(m.dtype).eps
    m64 = m.detach().to(torch.float64)
    if not torch.isfinite(m64).all():
        raise ValueError(f"{name} contains NaN or Inf")
    err = (m64.T @ m64 - torch.eye(m64.shape[1], dtype=torch.float64, device=m64.device)).abs().max().item()
    if not err <= tol:
        raise ValueError(f"{name} must have orthonormal columns (max |M^T M - I| = {err:.3g} > {tol:.3g})")
    return m64
