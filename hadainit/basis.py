"""The one record of a classifier's initial singular basis: :class:`InitialBasis` (docs/theory.md §2, §8).

``W0 = left @ diag(s) @ right.T``. :func:`hadainit.hadamard_` returns it
(``return_basis=True``), :func:`hadainit.initial_basis` rebuilds it from W0,
:class:`hadainit.ufm.UFM` holds it, :func:`hadainit.drift` and
:func:`hadainit.leakage` take it, and the monitors checkpoint it
(:meth:`InitialBasis.state_dict`). It is never hung on a tensor.

The valid kinds are defined here once: :data:`INIT_BASIS_KINDS` (what a user may
name) and :data:`SOURCES` (what an :class:`InitialBasis` may say it came from).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .bases import BASIS_KINDS
from .modes import basis_columns

__all__ = ["INIT_BASIS_KINDS", "SOURCES", "InitialBasis"]

#: The kinds a user may name for an initial basis (``hadamard_``'s ``basis`` names, plus ``"svd"``:
#: take the SVD of W0). ``initial_basis``, ``UFM`` and the monitors' ``init_basis`` accept these.
INIT_BASIS_KINDS = BASIS_KINDS + ("svd",)

#: Where an :class:`InitialBasis` came from: a basis kind, a user's K x K tensor, or the SVD of W0.
SOURCES = tuple(k for k in INIT_BASIS_KINDS if k not in ("auto", "svd")) + ("custom", "svd")

_ORTHONORMAL_TOL = 1e-5  # float32 weights carry ~1e-7 of round-off


def _orthonormality_error(m: Tensor) -> float:
    return (m.T @ m - torch.eye(m.shape[1], dtype=m.dtype)).abs().max().item() if m.numel() else 0.0


@dataclass(frozen=True, eq=False)
class InitialBasis:
    """``W0 = left @ diag(s) @ right.T``: ``left`` K x r and ``right`` d x r with orthonormal columns.

    ``kind`` is where it came from (see :data:`SOURCES`); ``kind == "svd"`` means it was
    guessed from the SVD of W0. Tensors are float64 on the CPU (converted on construction).
    ``modes`` is the mode set S of a walsh/fourier basis when ``left`` holds only those
    columns of Q (``left = Q[:, modes]``; K > d, docs/theory.md §8), else None (all of Q,
    or no Q). :meth:`from_modes` builds such a basis from S and V without a K x K matrix.
    """

    kind: str
    left: Tensor
    right: Tensor
    modes: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise ValueError(f"InitialBasis kind must be one of {SOURCES}, got {self.kind!r}")
        for name in ("left", "right"):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(f"InitialBasis {name} must be a tensor, got {type(value).__name__}")
            if value.dim() != 2 or not value.is_floating_point():
                raise ValueError(f"InitialBasis {name} must be a 2-D floating tensor, got {value.dtype} {tuple(value.shape)}")
            value = value.detach().to(device="cpu", dtype=torch.float64)
            if not torch.isfinite(value).all():
                raise ValueError(f"InitialBasis {name} contains NaN or Inf")
            err = _orthonormality_error(value)
            if not err < _ORTHONORMAL_TOL:
                raise ValueError(f"InitialBasis {name} must have orthonormal columns (max |M^T M - I| = {err:.3g})")
            object.__setattr__(self, name, value)
        if self.left.shape[1] != self.right.shape[1]:
            raise ValueError(
                f"InitialBasis left {tuple(self.left.shape)} and right {tuple(self.right.shape)} need the same number of columns"
            )
        if self.modes is not None:
            object.__setattr__(self, "modes", self._checked_modes(self.modes))

    def _checked_modes(self, modes) -> Tensor:
        """The mode set as int64: distinct indices of a walsh/fourier basis, one per column of ``left``,
        whose first rows match the generated columns (a cheap check that ``left`` is ``Q[:, modes]``)."""
        if self.kind not in ("walsh", "fourier"):
            raise ValueError(f"InitialBasis modes need a walsh or fourier kind, got {self.kind!r}")
        if not isinstance(modes, Tensor) or modes.is_floating_point() or modes.dtype == torch.bool or modes.dim() != 1:
            raise ValueError(f"InitialBasis modes must be a 1-D integer tensor, got {getattr(modes, 'dtype', type(modes).__name__)}")
        modes = modes.detach().to(device="cpu", dtype=torch.int64)
        k = self.left.shape[0]
        if modes.numel() != self.left.shape[1] or torch.unique(modes).numel() != modes.numel():
            raise ValueError(f"InitialBasis modes must be {self.left.shape[1]} distinct indices (one per column of left), "
                             f"got {modes.numel()}")
        if modes.numel() and (modes.min() < 0 or modes.max() >= k):
            raise ValueError(f"InitialBasis modes must lie in 0 .. {k - 1}")
        if k & (k - 1) and self.kind == "walsh":
            raise ValueError(f"InitialBasis: a walsh basis needs a power-of-two K, got {k}")
        probe = basis_columns(k, self.kind, modes)[: min(k, 8)]  # first rows: O(K r) once, like left itself
        if not torch.allclose(self.left[: probe.shape[0]], probe, atol=1e-9, rtol=0.0):
            raise ValueError(f"InitialBasis left is not the {self.kind} basis' columns at the given modes")
        return modes

    @classmethod
    def from_modes(cls, kind: str, num_classes: int, modes, right: Tensor) -> InitialBasis:
        """The basis ``(Q[:, modes], right)`` of a mode-set initialization, generating only those columns of Q."""
        idx = torch.as_tensor(modes, dtype=torch.int64) if not isinstance(modes, Tensor) else modes
        return cls(kind, basis_columns(num_classes, kind, idx), right, modes=idx)

    @property
    def guessed(self) -> bool:
        """True when no basis was known and the SVD of W0 was taken (arbitrary within equal singular values)."""
        return self.kind == "svd"

    @property
    def shape(self) -> tuple[int, int]:
        """The (K, d) shape of the weights this basis belongs to."""
        return self.left.shape[0], self.right.shape[0]

    def state_dict(self) -> dict:
        """``kind``, ``right`` and ``left``, or, for a mode set, ``modes`` and ``num_classes`` instead of
        ``left`` (it is regenerated on load: a checkpoint stays O(d r), not O(K r))."""
        if self.modes is None:
            return {"kind": self.kind, "left": self.left.clone(), "right": self.right.clone()}
        return {"kind": self.kind, "modes": self.modes.clone(), "num_classes": self.left.shape[0],
                "right": self.right.clone()}

    @classmethod
    def from_state_dict(cls, state: dict, *, shape: tuple[int, int] | None = None, name: str = "basis") -> InitialBasis:
        """Rebuild from :meth:`state_dict`, raising ``ValueError`` naming the key that is missing or wrong."""
        if not isinstance(state, dict):
            raise ValueError(f"{name} must be a dict with keys kind, left, right; got {type(state).__name__}")
        keys = ("kind", "modes", "num_classes", "right") if "modes" in state else ("kind", "left", "right")
        for key in keys:
            if key not in state:
                raise ValueError(f"{name} is missing the key {key!r}")
        try:
            if "modes" in state:
                k = state["num_classes"]
                if not isinstance(k, int) or isinstance(k, bool) or k < 2:
                    raise ValueError(f"num_classes must be an int >= 2, got {k!r}")
                if not isinstance(state["modes"], Tensor) or state["modes"].is_floating_point():
                    raise ValueError("modes must be an integer tensor")
                basis = cls.from_modes(state["kind"], k, state["modes"], state["right"])
            else:
                basis = cls(state["kind"], state["left"], state["right"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: {err}") from None
        if shape is not None and basis.shape != tuple(shape):
            raise ValueError(f"{name} belongs to a ({basis.shape[0]}, {basis.shape[1]}) weight, the classifier is {tuple(shape)}")
        return basis


