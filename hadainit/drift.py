"""The initial singular basis of a classifier, and how far the classifier drifted from it (SPEC section 6).

A classifier initialized as ``W0 = Q diag(s) V0^T`` (:func:`hadainit.hadamard_`
with a basis kind) stays of that form in the spectral UFM: only ``s`` moves.
On a real network it drifts. With ``C = Q^T W V0``,

    drift             = || W - Q diag(diag C) V0^T ||_F / ||W||_F
    drift_offdiag     = || offdiag(C) ||_F / ||W||_F                (= :func:`leakage`)
    drift_out_of_span = || W - Q C V0^T ||_F / ||W||_F
    drift^2           = drift_offdiag^2 + drift_out_of_span^2       (Pythagoras)

The out-of-span part is zero in the UFM (the gradient of W lies in span(V0))
and usually the larger part on a real network: measuring ``offdiag(C)`` alone
is blind to it. ``drift_angle`` is the largest principal angle between span(V0)
and the current row space of W, an extra.

The basis is an explicit :class:`InitialBasis` object, never a hidden attribute
of a tensor (those do not survive ``deepcopy``, ``load_state_dict`` or a DDP
broadcast). :func:`initial_basis` recovers it from the initial weights and a
basis kind: ``V0 = W0^T Q diag(1/s)``, exact for ``W0 = Q diag(s) V0^T`` and,
read from weights every DDP rank received from rank 0, the same on all ranks.
Without a kind it is the SVD of W0, which is arbitrary within repeated singular
values (``hadamard_``'s are all equal): :attr:`InitialBasis.guessed` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .bases import BASIS_KINDS, basis_matrix, resolve_basis
from .init import spectral_record
from .modes import basis_columns, basis_transpose

__all__ = ["DRIFT_KEYS", "InitialBasis", "drift", "initial_basis", "leakage", "principal_angles"]

#: The keys of :func:`drift`, the same for every initialization.
DRIFT_KEYS = ("drift", "drift_offdiag", "drift_out_of_span", "drift_angle")

#: Where an :class:`InitialBasis` came from: a basis kind, a user's K x K tensor, or the SVD of W0.
SOURCES = tuple(k for k in BASIS_KINDS if k != "auto") + ("custom", "svd")

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


def _weight64(weight: Tensor, name: str = "weight") -> Tensor:
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name} must be a 2-D floating (K, d) tensor, got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return w


def initial_basis(weight: Tensor, kind: str | Tensor | None = None) -> InitialBasis:
    """The initial basis of a classifier from its weights at initialization, ``W0`` (K x d).

    Args:
        weight: W0.
        kind: the left basis: ``"walsh"``, ``"fourier"``, ``"hadamard"``, ``"auto"``, a K x K
            orthogonal tensor, or ``"svd"`` (take the SVD of W0). ``None``: the kind recorded by
            :func:`hadainit.hadamard_` on ``weight`` if there is one (the record is lost by
            ``deepcopy`` and ``torch.multiprocessing``), else ``"svd"``.

    Raises:
        ValueError: if W0 is not of the form ``Q diag(s) V^T`` for the named basis.

    >>> import hadainit
    >>> w = hadainit.hadamard_(torch.empty(8, 32), generator=torch.Generator().manual_seed(0))
    >>> initial_basis(w.clone(), "walsh").kind
    'walsh'
    """
    w = _weight64(weight, "W0")
    k, d = w.shape
    if kind is None:
        record = spectral_record(weight)
        if record is not None and record.kind == "custom":
            kind = record.left
        else:
            kind = record.kind if record is not None else "svd"
    if isinstance(kind, str) and kind == "svd":
        if not torch.linalg.matrix_norm(w) > 0:
            raise ValueError("W0 is zero: it has no singular basis")
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        return InitialBasis("svd", u, vh.T)
    if k > d:
        return _mode_set_basis(w, kind)
    if isinstance(kind, Tensor):
        name, left = "custom", kind.detach().to(device="cpu", dtype=torch.float64)
        if left.shape != (k, k):
            raise ValueError(f"a basis tensor must be {k} x {k}, got shape {tuple(left.shape)}")
    elif isinstance(kind, str):
        name = resolve_basis(k, kind)
        left = basis_matrix(k, name)
    else:
        raise TypeError(f"kind must be a basis kind name, 'svd', a tensor or None, got {type(kind).__name__}")
    cols = w.T @ left  # d x K: column i is s_i v_i when W0 = Q diag(s) V^T
    s = torch.linalg.vector_norm(cols, dim=0)
    if not s.max() > 0:
        raise ValueError("W0 is zero: it has no singular basis")
    gram = cols.T @ cols
    off = (gram - torch.diag(torch.diagonal(gram))).abs().max() / s.max() ** 2
    if not off < _ORTHONORMAL_TOL:
        raise ValueError(
            f"W0 is not of the form Q diag(s) V^T for the {name} basis (its columns in that basis are not "
            f"orthogonal: relative off-diagonal {off.item():.3g}); was it initialized by hadamard_ with this basis?"
        )
    good = s > 1e-6 * s.max()
    right = torch.zeros(d, k, dtype=torch.float64)
    right[:, good] = cols[:, good] / s[good]
    if not good.all():  # modes with s_i = 0 (zero_mean): any orthonormal completion, chosen deterministically
        n_good, n_bad = int(good.sum()), int((~good).sum())
        full = torch.linalg.qr(torch.cat((right[:, good], torch.eye(d, dtype=torch.float64)), dim=1))[0]
        right[:, ~good] = full[:, n_good : n_good + n_bad]
    return InitialBasis(name, left, right)


def _mode_set_basis(w: Tensor, kind) -> InitialBasis:
    """K > d: ``W0 = Q_S diag(s) V^T`` read back by one transform, ``C = Q^T W0`` (K x d, no K x K matrix):
    the rows of C that are not zero are the mode set S, and ``V = C[S]^T / s``."""
    k, d = w.shape
    if isinstance(kind, Tensor) or kind not in ("auto", "walsh", "fourier"):
        shown = "a tensor" if isinstance(kind, Tensor) else repr(kind)
        raise ValueError(f"a ({k}, {d}) W0 has more classes than features: its basis is a walsh or fourier mode set "
                         f"(kind 'auto', 'walsh', 'fourier') or the SVD ('svd'); got {shown}")
    name = resolve_basis(k, kind)
    coeffs = basis_transpose(w, name)  # row i: s_i v_i^T
    s = torch.linalg.vector_norm(coeffs, dim=1)
    if not s.max() > 0:
        raise ValueError("W0 is zero: it has no singular basis")
    modes = torch.nonzero(s > 1e-6 * s.max()).flatten()
    rows = coeffs[modes]
    gram = rows @ rows.T
    off = (gram - torch.diag(torch.diagonal(gram))).abs().max() / s.max() ** 2
    if modes.numel() > d or not off < _ORTHONORMAL_TOL:
        raise ValueError(
            f"W0 is not of the form Q_S diag(s) V^T for a {name} mode set ({modes.numel()} modes carry weight, "
            f"relative off-diagonal {off.item():.3g}); was it initialized by hadamard_ with this basis?"
        )
    return InitialBasis.from_modes(name, k, modes, (rows / s[modes, None]).T)


def _check_basis_for(w: Tensor, basis: InitialBasis) -> tuple[Tensor, Tensor]:
    if not isinstance(basis, InitialBasis):
        raise TypeError(f"basis must be an InitialBasis (see hadainit.drift.initial_basis), got {type(basis).__name__}")
    if basis.shape != tuple(w.shape):
        raise ValueError(f"the basis belongs to a {basis.shape} weight, got a weight of shape {tuple(w.shape)}")
    return basis.left, basis.right


def _unit_scale(w: Tensor, name: str = "weight") -> Tensor:
    """W divided by its largest entry: every drift value is scale-invariant, so nothing over- or underflows."""
    top = w.abs().max()
    if not top > 0:
        raise ValueError(f"{name} is zero: its drift is undefined (it is relative to the norm of W)")
    return w / top


def drift(weight: Tensor, basis: InitialBasis) -> dict[str, float]:
    """The drift of ``weight`` (K x d) from ``basis``: the :data:`DRIFT_KEYS` (module docstring), float64.

    Raises ``ValueError`` for a zero or non-finite weight (the relative drift is undefined).
    """
    w = _unit_scale(_weight64(weight))
    left, right = _check_basis_for(w, basis)
    norm = torch.linalg.matrix_norm(w)
    core = left.T @ w @ right
    offdiag = torch.linalg.matrix_norm(core - torch.diag(torch.diagonal(core)))
    out_of_span = torch.linalg.matrix_norm(w - left @ core @ right.T)
    return {
        "drift": (torch.hypot(offdiag, out_of_span) / norm).item(),
        "drift_offdiag": (offdiag / norm).item(),
        "drift_out_of_span": (out_of_span / norm).item(),
        "drift_angle": _row_space_angle(w, right),
    }


def _row_space_angle(w: Tensor, right: Tensor) -> float:
    r = right.shape[1]
    _, sv, vh = torch.linalg.svd(w, full_matrices=False)
    if sv.shape[0] < r or not sv[r - 1] > sv[0] * max(w.shape) * torch.finfo(w.dtype).eps:
        return math.pi / 2  # W's row space has dimension < r: some direction of span(V0) is orthogonal to it
    return principal_angles(right, vh[:r].T).max().item()


def leakage(weight: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Frozen-singular-vector leakage ``||offdiag(left^T W right)||_F / ||W||_F`` (``drift_offdiag``).

    Zero while ``W`` stays of the form ``left @ diag(s) @ right^T``. It does not see drift out
    of span(right): use :func:`drift` on a real network. Computed in the weight's dtype, on its device.

    Args:
        weight: W, shape (K, d).
        left: K x r basis (orthonormal columns), e.g. ``Q``.
        right: d x r basis (orthonormal columns), e.g. the initial ``V``.
    """
    if (
        weight.dim() != 2
        or left.dim() != 2
        or right.dim() != 2
        or left.shape[0] != weight.shape[0]
        or right.shape[0] != weight.shape[1]
        or left.shape[1] != right.shape[1]
    ):
        raise ValueError(
            f"leakage needs W (K, d), left (K, r), right (d, r); got {tuple(weight.shape)}, "
            f"{tuple(left.shape)}, {tuple(right.shape)}"
        )
    if not torch.isfinite(weight).all():
        raise ValueError("leakage: the weight contains NaN or Inf")
    top = weight.detach().abs().max()
    if not top > 0:
        raise ValueError("leakage of a zero weight is undefined (it is relative to ||W||_F)")
    w = weight / top
    core = left.T @ w @ right
    off = core - torch.diag_embed(torch.diagonal(core))
    return torch.linalg.matrix_norm(off) / torch.linalg.matrix_norm(w)


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the column spans of ``a`` and ``b`` (orthonormal columns).

    Small angles come from the sines (``svd(B - A A^T B)``), large ones from the cosines
    (``svd(A^T B)``): each is accurate where the other loses digits (arccos near 1 does).
    """
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    cross = a.T @ b
    cos = torch.linalg.svdvals(cross).clamp(-1.0, 1.0)  # descending: angles ascending
    sin = torch.linalg.svdvals(b - a @ cross).clamp(-1.0, 1.0).flip(0)  # ascending
    return torch.where(sin.pow(2) < 0.5, torch.arcsin(sin), torch.arccos(cos))
