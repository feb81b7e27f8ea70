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

The basis is an explicit :class:`InitialBasis` object (:mod:`hadainit.basis`),
never a hidden attribute of a tensor (those do not survive ``deepcopy``,
``load_state_dict``, spawn or a DDP broadcast). :func:`initial_basis` recovers it
from the initial weights and a basis kind: ``V0 = W0^T Q diag(1/s)``, exact for
``W0 = Q diag(s) V0^T`` and, read from weights every DDP rank received from rank
0, the same on all ranks. Without a kind, :func:`detect_basis` reads it from W0
alone (deterministic, so it survives every copy of the weights): hadamard_'s
default basis for that K if W0 fits it, else the other softmax-diagonalizing
basis if W0 fits that, else the SVD of W0 (:attr:`InitialBasis.guessed`).
A W0 with all singular values equal (``hadamard_``'s default, or any orthogonal
init) fits *every* orthonormal basis: the default basis is then taken, so an
init on another basis (``basis="fourier"`` at a power-of-two K, ``"hadamard"``,
a custom tensor) must be named (``init_basis=...``) or its :class:`InitialBasis`
passed on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._threads import lapack
from .bases import basis_matrix, resolve_basis
from .basis import _ORTHONORMAL_TOL, INIT_BASIS_KINDS, SOURCES, InitialBasis
from .hadamard import is_power_of_two
from .modes import basis_transpose

__all__ = [
    "DRIFT_KEYS", "INIT_BASIS_KINDS", "SOURCES", "InitialBasis", "detect_basis", "drift", "initial_basis", "leakage",
    "monitor_basis", "principal_angles",
]

#: The keys of :func:`drift`, the same for every initialization.
DRIFT_KEYS = ("drift", "drift_offdiag", "drift_out_of_span", "drift_angle")

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
            orthogonal tensor, or ``"svd"`` (take the SVD of W0). ``None``: :func:`detect_basis`
            (the basis W0 itself shows; the SVD when it shows none).

    Raises:
        ValueError: if W0 is not of the form ``Q diag(s) V^T`` for the named basis.

    >>> import hadainit
    >>> w = hadainit.hadamard_(torch.empty(8, 32), generator=torch.Generator().manual_seed(0))
    >>> initial_basis(w.clone(), "walsh").kind
    'walsh'
    """
    if kind is None:
        return detect_basis(weight)
    if isinstance(kind, str) and kind not in INIT_BASIS_KINDS:
        raise ValueError(f"unknown initial basis kind {kind!r}; expected one of {INIT_BASIS_KINDS}, a K x K tensor or None")
    return _basis_of(_weight64(weight, "W0"), kind, _ORTHONORMAL_TOL)


def _fit_tolerance(dtype: torch.dtype, k: int, d: int) -> float:
    """How far from orthogonal (relative) the columns of ``Q^T W0`` may be for W0 to count as spectral.

    W0 carries a relative round-off of ``eps`` per entry, with ``eps`` that of ``dtype`` or of
    float32, whichever is larger (weights are usually initialized in float32, then cast, e.g. by
    ``model.double()``); a column of ``W0^T Q`` sums ``K`` (or ``d``) such products, so its error
    grows like ``sqrt(max(K, d)) eps`` (random signs). A factor 16 covers the constant. A generic
    (non-spectral) weight is off by ~``1/sqrt(d)``, far above this for any realistic K and d.
    """
    eps = max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)
    return 16.0 * eps * max(k, d) ** 0.5


def detect_basis(weight: Tensor) -> InitialBasis:
    """The initial basis W0 shows by itself: deterministic, so the same after ``deepcopy``, pickling,
    spawn, a checkpoint or a DDP broadcast of the weights.

    The softmax-diagonalizing bases are tried in order: first :func:`hadainit.hadamard_`'s default
    for this K (``basis="auto"``: walsh for a power of two, else fourier), then the other one
    (fourier, for a power-of-two K). The first one in which W0 is ``Q diag(s) V^T`` (K <= d) or
    ``Q_S diag(s) V^T`` on a mode set (K > d, docs/theory.md §8), to the round-off of W0's dtype,
    is returned. Else the SVD of W0 (``kind == "svd"``, :attr:`InitialBasis.guessed`).

    Ambiguity: a W0 with all singular values equal (``hadamard_``'s default, ``zero_mean`` on the
    non-constant modes, or ``torch.nn.init.orthogonal_`` rows) is of that form in *every*
    orthonormal basis; the default basis is then returned. An init on another basis (``"fourier"``
    at a power-of-two K, ``"hadamard"``, a custom tensor) with equal singular values cannot be told
    apart: name it (``initial_basis(w0, kind)``) or keep the :class:`InitialBasis` that
    ``hadamard_(..., return_basis=True)`` returns.

    >>> import hadainit
    >>> w, basis = hadainit.hadamard_(torch.empty(8, 32), return_basis=True)
    >>> detect_basis(w).kind, torch.allclose(detect_basis(w).right, basis.right, atol=1e-6)
    ('walsh', True)
    """
    w = _weight64(weight, "W0")
    k, d = w.shape
    tol = _fit_tolerance(weight.dtype, k, d)
    default = resolve_basis(k, "auto")
    for kind in (default,) + tuple(x for x in ("walsh", "fourier") if x != default and (x == "fourier" or is_power_of_two(k))):
        try:
            return _basis_of(w, kind, tol)
        except ValueError:
            continue
    return _basis_of(w, "svd", tol)


def monitor_basis(weight: Tensor, init_basis=None) -> tuple[InitialBasis, str | None]:
    """The monitors' basis policy in one place: ``(basis, warning or None)`` for a classifier's W0.

    Args:
        weight: W0 (K x d), the weights at the start of training.
        init_basis: None (:func:`detect_basis`), a kind of :data:`INIT_BASIS_KINDS` or a K x K
            tensor (:func:`initial_basis`: an error if W0 does not fit it), or an
            :class:`InitialBasis` (e.g. from ``hadamard_(..., return_basis=True)``), which must
            belong to W0's shape and fit W0.

    Returns:
        The basis, and a warning text when it had to be guessed (the SVD of W0, arbitrary within
        repeated singular values), else None.
    """
    if isinstance(init_basis, InitialBasis):
        w = _weight64(weight, "W0")
        if init_basis.shape != tuple(w.shape):
            raise ValueError(f"init_basis belongs to a {init_basis.shape} weight, the classifier is {tuple(w.shape)}")
        off = drift(w, init_basis)["drift"]
        if not off <= max(_ORTHONORMAL_TOL, _fit_tolerance(weight.dtype, *w.shape)):
            raise ValueError(f"init_basis does not fit the classifier's W(0) (its drift from it is {off:.3g}): "
                             "was it returned by hadamard_ for these weights?")
        return init_basis, None
    if init_basis is not None:
        return initial_basis(weight, init_basis), None
    basis = detect_basis(weight)
    if not basis.guessed:
        return basis, None
    return basis, ("the classifier's initial basis is not known (no init_basis=... given and W(0) is not spectral in "
                   "the walsh or fourier basis): drift is measured from the SVD of W(0), arbitrary within repeated "
                   "singular values. Pass init_basis='walsh'|'fourier'|'hadamard' (or the InitialBasis that "
                   "hadamard_(..., return_basis=True) returns) for a spectral init, or init_basis='svd' to silence this.")


def _basis_of(w: Tensor, kind, tol: float) -> InitialBasis:
    """:func:`initial_basis` for a float64 W0 and a kind (not None), with the fit tolerance ``tol``."""
    k, d = w.shape
    if isinstance(kind, str) and kind == "svd":
        if not torch.linalg.matrix_norm(w) > 0:
            raise ValueError("W0 is zero: it has no singular basis")
        with lapack(*w.shape):
            u, _, vh = torch.linalg.svd(w, full_matrices=False)
        return InitialBasis("svd", u, vh.T)
    if k > d:
        return _mode_set_basis(w, kind, tol)
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
    if not off < tol:
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


def _mode_set_basis(w: Tensor, kind, tol: float) -> InitialBasis:
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
    if modes.numel() > d or not off < tol:
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
    core, offdiag = _offdiag(w, left, right)
    out_of_span = torch.linalg.matrix_norm(w - left @ core @ right.T)
    return {
        "drift": (torch.hypot(offdiag, out_of_span) / norm).item(),
        "drift_offdiag": (offdiag / norm).item(),
        "drift_out_of_span": (out_of_span / norm).item(),
        "drift_angle": _row_space_angle(w, right),
    }


def _row_space_angle(w: Tensor, right: Tensor) -> float:
    r = right.shape[1]
    with lapack(*w.shape):
        _, sv, vh = torch.linalg.svd(w, full_matrices=False)
    if sv.shape[0] < r or not sv[r - 1] > sv[0] * max(w.shape) * torch.finfo(w.dtype).eps:
        return math.pi / 2  # W's row space has dimension < r: some direction of span(V0) is orthogonal to it
    return principal_angles(right, vh[:r].T).max().item()


def leakage(weight: Tensor, left: Tensor | InitialBasis, right: Tensor | None = None) -> Tensor:
    """Frozen-singular-vector leakage ``||offdiag(left^T W right)||_F / ||W||_F`` (``drift_offdiag``).

    Zero while ``W`` stays of the form ``left @ diag(s) @ right^T``. It does not see drift out
    of span(right): use :func:`drift` on a real network. Computed in the weight's dtype, on its device
    (the same formula as :func:`drift`'s ``drift_offdiag``: :func:`_offdiag`).

    Args:
        weight: W, shape (K, d).
        left: an :class:`InitialBasis` (then no ``right``), or a K x r basis (orthonormal columns), e.g. ``Q``.
        right: d x r basis (orthonormal columns), e.g. the initial ``V``, when ``left`` is a tensor.

    >>> import hadainit
    >>> w, basis = hadainit.hadamard_(torch.empty(8, 16, dtype=torch.float64), return_basis=True)
    >>> leakage(w, basis).item() < 1e-14
    True
    """
    if isinstance(left, InitialBasis):
        if right is not None:
            raise ValueError("leakage takes an InitialBasis or left and right tensors, not both")
        left, right = left.left.to(weight), left.right.to(weight)
    elif right is None:
        raise TypeError("leakage needs an InitialBasis, or the left and right tensors")
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
    return _offdiag(w, left, right)[1] / torch.linalg.matrix_norm(w)


def _offdiag(w: Tensor, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """``(C, ||offdiag(C)||_F)`` with ``C = left^T W right``: the one route to ``drift_offdiag``."""
    core = left.T @ w @ right
    return core, torch.linalg.matrix_norm(core - torch.diag_embed(torch.diagonal(core)))


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the column spans of ``a`` and ``b`` (orthonormal columns).

    Small angles come from the sines (``svd(B - A A^T B)``), large ones from the cosines
    (``svd(A^T B)``): each is accurate where the other loses digits (arccos near 1 does).
    """
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    cross = a.T @ b
    with lapack(*cross.shape):
        cos = torch.linalg.svdvals(cross).clamp(-1.0, 1.0)  # descending: angles ascending
        sin = torch.linalg.svdvals(b - a @ cross).clamp(-1.0, 1.0).flip(0)  # ascending
    return torch.where(sin.pow(2) < 0.5, torch.arcsin(sin), torch.arccos(cos))
