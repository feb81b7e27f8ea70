"""Hadamard (spectral) initializers, in the style of ``torch.nn.init``.

``hadamard_`` is the drop-in for a classifier weight; ``spectral_init`` builds
the (W, H) pair of the unconstrained features model (SPEC section 2).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from . import _checks
from .bases import basis_matrix, check_spectrum, resolve_basis
from .basis import InitialBasis
from .modes import basis_columns, resolve_modes

__all__ = ["DEFAULT_GAIN", "hadamard_", "spectral_init", "random_orthonormal"]

#: ``nn.Linear``'s default init draws U(-1/sqrt(d), 1/sqrt(d)): E||w_k||^2 = d / (3d) = 1/3,
#: whatever d. The default gain gives every row exactly that norm.
DEFAULT_GAIN = 1.0 / math.sqrt(3.0)

def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def random_orthonormal(
    rows: int,
    cols: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """A Haar-distributed ``rows x cols`` matrix with orthonormal columns (``cols <= rows``).

    Drawn in float64 on the generator's device (CPU without a generator), via QR
    of a Gaussian matrix with the signs of R's diagonal fixed.
    """
    rows = _checks.positive_int(rows, "rows")
    cols = _checks.positive_int(cols, "cols")
    dtype = _checks.floating_dtype(dtype)
    if cols > rows:
        raise ValueError(f"cannot draw {cols} orthonormal columns in dimension {rows}")
    _check_generator(generator)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    g = torch.randn(rows, cols, generator=generator, dtype=torch.float64, device=draw_device)
    q, r = torch.linalg.qr(g)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).to(dtype=dtype, device=device)


def _left_basis(num_classes: int, basis: str | Tensor) -> tuple[str, Tensor]:
    if isinstance(basis, Tensor):
        if basis.shape != (num_classes, num_classes):
            raise ValueError(f"a basis tensor must be {num_classes} x {num_classes}, got shape {tuple(basis.shape)}")
        return "custom", _checks.orthonormal_columns(basis, "a basis tensor").cpu().clone()
    if not isinstance(basis, str):
        raise TypeError(f"basis must be a str or a K x K tensor, got {type(basis).__name__}")
    kind = resolve_basis(num_classes, basis)
    return kind, basis_matrix(num_classes, kind)


def hadamard_(
    tensor: Tensor,
    gain: float | None = None,
    *,
    basis: str | Tensor = "auto",
    modes: str | Sequence[int] | Tensor = "auto",
    zero_mean: bool = False,
    generator: torch.Generator | None = None,
    return_basis: bool = False,
):
    """Fill a (K, d) classifier weight with ``Q_S diag(s) V^T`` in place, for any K >= 2 and d >= 1.

    **d >= K**: ``gain * Q V^T`` with ``Q`` the K x K basis (walsh/fourier:
    softmax-diagonalizing, docs/theory.md §2; ``"hadamard"``: any Hadamard matrix,
    orthogonal but not softmax-diagonalizing unless K is a power of two) and ``V`` a
    random d x K matrix with orthonormal columns: orthogonal rows of norm ``gain``.

    **K > d** (docs/theory.md §8): only r = min(d, K - 1) columns of a walsh or
    fourier Q fit, a *mode set* S: ``W = Q_S diag(s) V_r^T`` with equal
    ``s = gain sqrt(K / r)`` (every row has norm ``gain``; both singular bases stay
    frozen under the UFM's gradient flow). ``modes`` picks S:

    * ``"auto"`` (default): :func:`hadainit.modes.auto_modes`, a greedy code design
      for a large max-margin value t*(S) (the limit of the normalized margin);
    * ``"first"``: the first d columns of Q, constant column included: the truncated
      Hadamard classifier of Hoffer et al. (2018), for comparison (it can fail to
      separate the classes: K = 1024, d = 512 gives classes j and j + 512 equal rows);
    * explicit indices: refused (``ValueError`` naming the reason) unless they separate
      the classes (walsh: span GF(2)^log2 K; fourier: frequencies with gcd 1 with K),
      hold whole (cos, sin) pairs and number at most r.

    Only the r needed columns of Q are generated: memory O(K r), no K x K matrix.
    Like ``torch.nn.init`` it returns the tensor and leaves nothing else on it. The basis,
    with ``return_basis=True``, is returned as a :class:`hadainit.InitialBasis` (it survives
    ``deepcopy``, pickling and checkpoints; pass it to the monitors as ``init_basis``).
    Without it, :func:`hadainit.initial_basis` (``kind=None``) and the monitors read the basis
    back from the weight itself; with all singular values equal they take this function's
    default basis for that K (docs/theory.md §2): name ``basis`` there too if you chose another.

    Args:
        tensor: a 2-D floating tensor (K, d) with K >= 2, e.g. ``linear.weight``.
        gain: row norm; default :data:`DEFAULT_GAIN` = 1/sqrt(3), the expected row
            norm of ``nn.Linear``'s default initialization.
        basis: ``"auto"``, ``"walsh"``, ``"fourier"``, ``"hadamard"`` or a K x K orthogonal
            tensor (d >= K); for K > d ``"auto"``, ``"walsh"`` or ``"fourier"``.
        modes: ``"auto"``, ``"first"`` or mode indices (see above); for d >= K ``"auto"``
            and ``"first"`` both mean all K columns (today's behaviour).
        zero_mean: drop the constant mode (column 0 of Q): the rows then form a
            simplex ETF (sum to zero, pairwise cosine -1/(K-1)), still of norm ``gain``.
            Mode sets never hold the constant mode (except ``"first"``, which refuses it).
        generator: torch.Generator for ``V``.
        return_basis: return ``(tensor, InitialBasis)`` instead of ``tensor``.

    Returns:
        ``tensor`` (or ``(tensor, basis)``).

    >>> w = torch.empty(10, 64)
    >>> _ = hadamard_(w, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(w @ w.T, torch.eye(10) / 3, atol=1e-6)
    True
    >>> w, basis = hadamard_(torch.empty(1000, 512), return_basis=True)
    >>> basis.modes.numel(), torch.allclose(w.norm(dim=1), torch.full((1000,), 3 ** -0.5), atol=1e-5)
    (512, True)
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"hadamard_ needs a 2-D (num_classes, features) weight, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"hadamard_ needs a floating tensor, got dtype {tensor.dtype}")
    k, d = tensor.shape
    if k < 2 or d < 1:
        raise ValueError(
            f"hadamard_ needs num_classes >= 2 and features >= 1, got weight shape {tuple(tensor.shape)} (K={k}, d={d})"
        )
    gain = DEFAULT_GAIN if gain is None else _checks.positive_float(gain, "gain")
    zero_mean = _checks.boolean(zero_mean, "zero_mean")
    return_basis = _checks.boolean(return_basis, "return_basis")
    _check_generator(generator)
    named = isinstance(modes, str)
    if named and modes not in ("auto", "first"):
        raise ValueError(f"modes must be 'auto', 'first' or a sequence of mode indices, got {modes!r}")
    if k <= d and named:
        kind, left, right, chosen = _full_init(tensor, gain, basis, zero_mean, generator)
    else:
        kind, left, right, chosen = _mode_set_init(tensor, gain, basis, modes, zero_mean, generator)
    if not return_basis:
        return tensor
    return tensor, InitialBasis(kind, left, right, modes=chosen)


def _full_init(tensor: Tensor, gain: float, basis, zero_mean: bool, generator) -> tuple[str, Tensor, Tensor, None]:
    """d >= K: ``gain * Q V^T`` with all K columns of Q (unchanged since before mode sets)."""
    k, d = tensor.shape
    kind, q = _left_basis(k, basis)
    v = random_orthonormal(d, k, generator=generator)
    s = torch.full((k,), gain, dtype=torch.float64)
    if zero_mean:
        if kind == "custom":
            raise ValueError("zero_mean needs a basis whose column 0 is constant (a kind name), not a custom tensor")
        s[0] = 0.0
        s[1:] = gain / math.sqrt(1.0 - 1.0 / k)  # row norm^2 = s^2 (1 - 1/K)
    w = _checks.fit_dtype((q * s) @ v.T.to(q.device), tensor.dtype, f"gain {gain:g}")
    with torch.no_grad():
        tensor.copy_(w)
    return kind, q, v.cpu(), None


def _mode_set_init(
    tensor: Tensor, gain: float, basis, modes, zero_mean: bool, generator
) -> tuple[str, Tensor, Tensor, Tensor]:
    """``W = Q_S diag(s) V^T`` on a mode set S (K > d, or explicit modes): the columns of Q generated, O(K r)."""
    k, d = tensor.shape
    if not isinstance(basis, str) or basis not in ("auto", "walsh", "fourier"):
        shown = "a tensor" if isinstance(basis, Tensor) else repr(basis)
        raise ValueError(
            f"a ({k}, {d}) weight has more classes than features (or explicit modes were given): only a "
            f"softmax-diagonalizing basis ('auto', 'walsh', 'fourier') has mode sets; got basis={shown}"
        )
    kind = resolve_basis(k, basis)
    chosen = resolve_modes(modes, k, d, kind)
    if zero_mean and bool((chosen == 0).any()):
        raise ValueError("zero_mean drops the constant mode, which modes='first' (the truncation) keeps; "
                         "use modes='auto' (mode sets without the constant are zero-mean already)")
    r = chosen.numel()
    left = basis_columns(k, kind, chosen)
    v = random_orthonormal(d, r, generator=generator)
    s = torch.full((r,), gain * math.sqrt(k / r), dtype=torch.float64)  # ||W||_F^2 = K gain^2
    # the product in the weight's precision (float32 for float32/16 weights: half the time of float64)
    work = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    # s is one value for every mode: scale the d x r factor, not the K x r one (no K x r float64 temporary)
    w = left.to(work) @ (v.T * s[0]).to(work)
    _checks.fit_dtype(w[: min(k, 256)], tensor.dtype, f"gain {gain:g}")  # the range check, on a sample of rows
    with torch.no_grad():
        tensor.copy_(w)
    return kind, left, v, chosen


def spectral_init(
    num_classes: int,
    feature_dim: int,
    a,
    b=None,
    *,
    basis: str | Tensor = "auto",
    modes=None,
    samples_per_class: int = 1,
    right: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """The UFM spectral initialization ``W = Q diag(a) V^T``, ``H = V diag(b) Q^T`` (docs/theory.md §2, §8).

    With more classes than features (K > d) only a mode set S fits:
    ``W = Q_S diag(a_S) V_r^T``, ``H = V_r diag(b_S) Q_S^T`` (§8); both bases stay frozen
    and the reduced dynamics are §3's with the modes off S at exactly 0.

    Args:
        num_classes: K >= 2.
        feature_dim: d >= 1.
        a: the K singular values of W, in the basis' mode order (mode 0 = constant),
            zeros off the mode set; or, with ``modes``, one value per mode of ``modes``.
        b: those of H; None means balanced, ``a_i^2 = n b_i^2`` (``b = a / sqrt(n)``).
        basis: a kind name or a K x K orthogonal tensor. Fourier: ``a`` and ``b``
            must be equal within (cos, sin) pairs.
        modes: the mode set S (mode indices, walsh/fourier). None: all K modes when
            d >= K, else the modes where ``a`` or ``b`` is not zero (at most d of them).
        samples_per_class: n; every class's n columns of H are equal.
        right: V (d x r, orthonormal columns, r = K or |S|); drawn with ``generator`` if None.
        dtype: of W and H, a floating dtype; they must fit its range.

    Returns:
        ``(W, H)`` with W of shape (K, d) and H of shape (d, n K); column
        ``k * n + j`` of H is sample j of class k.

    >>> W, H = spectral_init(8, 16, torch.linspace(1, 2, 8))
    >>> W.shape, H.shape
    (torch.Size([8, 16]), torch.Size([16, 8]))
    >>> W, H = spectral_init(16, 5, [1.0] * 5, modes=[1, 2, 4, 8, 15])  # K > d
    >>> torch.linalg.matrix_rank(W).item()
    5
    """
    dtype = _checks.floating_dtype(dtype)
    _, q, a, b, v, _ = _spectral_factors(
        num_classes, feature_dim, a, b, basis=basis, modes=modes, samples_per_class=samples_per_class, right=right,
        generator=generator,
    )
    w, h = _compose_spectral(q, a, b, v, samples_per_class)
    return _checks.fit_dtype(w, dtype, "W"), _checks.fit_dtype(h, dtype, "H")


def _compose_spectral(q: Tensor, a: Tensor, b: Tensor, v: Tensor, samples_per_class: int = 1) -> tuple[Tensor, Tensor]:
    """``W = Q diag(a) V^T`` and ``H = V diag(b) Q^T`` with each class column repeated n times."""
    return (q * a) @ v.T, ((v * b) @ q.T).repeat_interleave(samples_per_class, dim=1)


def _spectral_factors(
    num_classes: int,
    feature_dim: int,
    a,
    b=None,
    *,
    basis: str | Tensor = "auto",
    modes=None,
    samples_per_class: int = 1,
    right: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[str, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The validated factors ``(kind, Q, a, b, V, modes)`` of :func:`spectral_init`, float64 on the CPU.

    ``modes`` None: Q is K x K and a, b have K entries. Else Q = Q_S (K x r), a and b the r values on S.
    """
    feature_dim = _checks.positive_int(feature_dim, "feature_dim")
    samples_per_class = _checks.positive_int(samples_per_class, "samples_per_class")
    k = _checks.positive_int(num_classes, "num_classes", minimum=2)
    if modes is None and feature_dim >= k:
        kind, q = _left_basis(k, basis)
        pair_kind = "hadamard" if kind == "custom" else kind  # only fourier spectra must be paired
        a = check_spectrum(a, k, pair_kind, "a")
        b = a / math.sqrt(samples_per_class) if b is None else check_spectrum(b, k, pair_kind, "b")
        if a.dim() != 1 or b.dim() != 1:
            raise ValueError(f"a and b must be 1-D of length {k}, got shapes {tuple(a.shape)}, {tuple(b.shape)}")
        return kind, q, a, b, _right_factor(right, feature_dim, k, generator), None
    if not isinstance(basis, str):
        raise ValueError(f"spectral_init with d={feature_dim} < K={k} (or a mode set) needs a walsh or fourier basis "
                         "name, not a tensor")
    kind = resolve_basis(k, basis)
    if kind not in ("walsh", "fourier"):
        raise ValueError(f"spectral_init with d={feature_dim} < K={k} (or a mode set) needs a walsh or fourier basis, "
                         f"got {basis!r}")
    if modes is not None:
        given = _mode_indices(modes, k)  # in the order of the values given for them
        a, b = _on_modes(a, given, k, "a"), (None if b is None else _on_modes(b, given, k, "b"))
        idx = torch.sort(given).values
    a = check_spectrum(a, k, kind, "a")
    b = a / math.sqrt(samples_per_class) if b is None else check_spectrum(b, k, kind, "b")
    if a.dim() != 1 or b.dim() != 1:
        raise ValueError(f"a and b must be 1-D of length {k}, got shapes {tuple(a.shape)}, {tuple(b.shape)}")
    if modes is None:
        idx = torch.nonzero((a != 0) | (b != 0)).flatten()
        if idx.numel() > feature_dim:
            raise ValueError(
                f"spectral_init needs feature_dim >= num_classes, got d={feature_dim} < K={k}, or a mode set of at "
                f"most d modes: a and b are non-zero on {idx.numel()} modes (put zeros off a mode set, or pass modes=)"
            )
    elif idx.numel() > feature_dim:
        raise ValueError(f"a mode set of {idx.numel()} modes does not fit d={feature_dim} features")
    q = basis_columns(k, kind, idx)
    return kind, q, a[idx], b[idx], _right_factor(right, feature_dim, idx.numel(), generator), idx


def _mode_indices(modes, k: int) -> Tensor:
    from .modes import _index_tensor  # the shared integer-index check

    idx = _index_tensor(modes, k, "modes")
    if torch.unique(idx).numel() != idx.numel():
        raise ValueError(f"modes must be distinct, got {idx.tolist()[:16]}")
    return idx


def _on_modes(values, idx: Tensor, k: int, name: str) -> Tensor:
    """Length-r values (or length-K values, zero off the modes) as a length-K spectrum."""
    v = _checks.real_tensor(values, name)
    if v.dim() == 1 and v.shape[0] == k and k != idx.numel():
        off = torch.ones(k, dtype=torch.bool)
        off[idx] = False
        if (v[off] != 0).any():
            raise ValueError(f"{name} has {k} entries that are not zero off the given modes")
        return v
    if v.dim() != 1 or v.shape[0] != idx.numel():
        raise ValueError(f"{name} must have one entry per mode ({idx.numel()}) or {k} entries, got shape {tuple(v.shape)}")
    out = torch.zeros(k, dtype=v.dtype)
    out[idx] = v
    return out


def _right_factor(right: Tensor | None, feature_dim: int, r: int, generator) -> Tensor:
    if right is None:
        return random_orthonormal(feature_dim, r, generator=generator)
    if not isinstance(right, Tensor) or right.shape != (feature_dim, r):
        got = tuple(right.shape) if isinstance(right, Tensor) else type(right).__name__
        raise ValueError(f"right must be a {feature_dim} x {r} tensor, got {got}")
    return _checks.orthonormal_columns(right, "right").cpu().clone()
