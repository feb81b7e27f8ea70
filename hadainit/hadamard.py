"""Hadamard matrices and the fast Walsh–Hadamard transform.

Constructions (all returned *normalized*: first row and first column all +1):

* **Sylvester** for powers of two, natural order ``H[i, j] = (-1)^popcount(i & j)``.
  Only this family diagonalizes the softmax (SPEC section 2).
* **Paley I**, order ``q + 1`` for a prime power ``q ≡ 3 (mod 4)``.
* **Paley II**, order ``2 (q + 1)`` for a prime power ``q ≡ 1 (mod 4)``.
* **Kronecker products** of the above.

A Paley (or Kronecker-with-Paley) matrix is a perfectly good orthogonal
initializer for a real network, but it does *not* diagonalize the softmax: the
exact UFM theory of this package does not apply to it.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from typing import Iterable

import torch
from torch import Tensor

from . import _checks, _kernels, _triton_fwht

__all__ = ["hadamard_matrix", "constructible_orders", "is_constructible", "fwht"]


def is_power_of_two(n: int) -> bool:
    """Whether the int ``n`` is 1, 2, 4, 8, ... (internal helper)."""
    return n >= 1 and n & (n - 1) == 0


# --------------------------------------------------------------------------- #
# Which orders can be built, and how.
#
# An order is constructible here iff it is 2^a * m_1 * ... * m_k with each m_i a
# Paley order (q + 1 or 2 (q + 1) for an odd prime power q, not a power of two).
# Single orders are decided from the factorization of n (no enumeration of the
# orders below it); the list of all orders up to a limit is a sieve.
# --------------------------------------------------------------------------- #

#: Miller-Rabin witnesses that decide primality exactly for every n < 3.3e24.
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
#: is_constructible decides orders below this bound (every power of two at once, whatever its size).
ORDER_BOUND = 1 << 64
#: constructible_orders lists orders up to this limit (a sieve of ``limit`` bytes).
ORDERS_LIMIT = 1 << 24


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _WITNESSES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_brent(n: int) -> int:
    """A non-trivial factor of the odd composite ``n`` (Brent's variant of Pollard's rho)."""
    for c in range(1, n):
        y, m, g, r, q = 2, 128, 1, 1, 1
        x = ys = y
        while g == 1:
            x = y
            for _ in range(r):
                y = (y * y + c) % n
            k = 0
            while k < r and g == 1:
                ys = y
                for _ in range(min(m, r - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += m
            r *= 2
        if g == n:  # the batch overshot: step one at a time
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if g != n:
            return g
    raise AssertionError(f"no factor of {n} found")  # pragma: no cover


def _factorize(n: int) -> dict[int, int]:
    """Prime factorization ``{p: k}`` of ``1 <= n < ORDER_BOUND``."""
    factors: dict[int, int] = {}
    for p in (2, 3, 5, 7, 11, 13):
        while n % p == 0:
            factors[p] = factors.get(p, 0) + 1
            n //= p
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if _is_prime(m):
            factors[m] = factors.get(m, 0) + 1
        else:
            f = _pollard_brent(m)
            stack += [f, m // f]
    return factors


def _prime_power(q: int) -> tuple[int, int] | None:
    """``(p, k)`` with ``q = p^k``, p prime, or None."""
    if q < 2:
        return None
    factors = _factorize(q)
    return next(iter(factors.items())) if len(factors) == 1 else None


def _paley_kind(m: int) -> tuple[str, int] | None:
    """How the Paley order ``m`` (not a power of two) is built: ``("paley2", q)`` for ``m = 2 (q + 1)``,
    q ≡ 1 (mod 4), else ``("paley1", q)`` for ``m = q + 1``, q ≡ 3 (mod 4); None if neither applies.
    (Paley II first: its field is the smaller one.)"""
    if m % 4 or is_power_of_two(m):
        return None
    if m % 8 == 4:
        q = m // 2 - 1
        if _prime_power(q) is not None:
            return ("paley2", q)
    q = m - 1
    return ("paley1", q) if _prime_power(q) is not None else None


def _divisors(factors: dict[int, int]) -> list[int]:
    divisors = [1]
    for p, k in factors.items():
        divisors = [d * p**i for d in divisors for i in range(k + 1)]
    return sorted(divisors)


@functools.lru_cache(maxsize=4096)
def _recipe(n: int) -> tuple[int, ...] | None:
    """The Paley factors of order ``n``, largest first (the rest is Sylvester); None if not constructible."""
    if is_power_of_two(n):
        return ()
    if n < 1 or n % 4:
        return None
    # the largest Paley factor whose cofactor is constructible: fewest Kronecker factors
    for m in reversed(_divisors(_factorize(n))):
        if _paley_kind(m) is not None:
            rest = _recipe(n // m)
            if rest is not None:
                return (m,) + rest
    return None


def _sieve_orders(limit: int) -> Tensor:
    """A bool tensor ``c`` of length ``limit + 1``: ``c[n]`` iff order n is constructible."""
    composite = torch.zeros(limit + 1, dtype=torch.bool)
    composite[:2] = True
    for p in range(2, math.isqrt(limit) + 1):
        if not composite[p]:
            composite[p * p :: p] = True
    primes = (~composite).nonzero().flatten()
    powers = [primes[primes > 2]]
    for p in primes[1:].tolist():  # the odd prime powers p^k, k >= 2
        if p * p > limit:
            break
        powers.append(torch.tensor([p**k for k in range(2, int(math.log(limit, p)) + 2) if p**k <= limit]))
    q = torch.cat(powers)
    m = torch.where(q % 4 == 3, q + 1, 2 * (q + 1))
    m = torch.unique(m[m <= limit])
    bases = m[(m & (m - 1)) != 0]  # powers of two are Sylvester already
    orders = torch.zeros(limit + 1, dtype=torch.bool)
    orders[1 << torch.arange(limit.bit_length())] = True
    small = bases[bases * bases <= limit].tolist()
    for b in small:  # several factors of one base: repeat until b^r exceeds the limit
        power = b
        while power <= limit:
            span = limit // b
            orders[b :: b][:span] |= orders[1 : span + 1].clone()
            power *= b
    # a base above sqrt(limit) occurs at most once, beside a cofactor below sqrt(limit)
    large = bases[bases * bases > limit]
    for k in orders[: math.isqrt(limit) + 1].nonzero().flatten().tolist():
        orders[k * large[large <= limit // k]] = True
    return orders


@functools.lru_cache(maxsize=8)
def _orders(limit: int) -> tuple[int, ...]:
    return tuple(_sieve_orders(limit).nonzero().flatten().tolist())


def constructible_orders(limit: int) -> list[int]:
    """All orders ``n <= limit`` for which :func:`hadamard_matrix` can build a matrix.

    A sieve over ``1 .. limit``, about linear in ``limit`` (at most ``ORDERS_LIMIT`` = 2^24:
    ``ValueError`` above); for one order, :func:`is_constructible` answers at once.

    >>> constructible_orders(24)
    [1, 2, 4, 8, 12, 16, 20, 24]
    """
    limit = _checks.positive_int(limit, "limit")
    if limit > ORDERS_LIMIT:
        raise ValueError(f"constructible_orders lists orders up to limit={ORDERS_LIMIT} (2^24), got limit={limit}; "
                         "ask is_constructible(n) about single orders")
    return list(_orders(limit))


def _decidable(n: int, name: str = "n") -> None:
    if n >= ORDER_BOUND and not is_power_of_two(n):
        raise ValueError(f"{name}={n} is beyond the orders decided here (powers of two, or n < 2^64)")


def is_constructible(n: int) -> bool:
    """Whether :func:`hadamard_matrix` can build an order-``n`` matrix (it may still be too large for memory).

    False for n < 1; ``TypeError`` for a non-int. A power of two is True at once; other
    orders are decided from the factorization of n (orders up to 2^64; ``ValueError`` above).

    >>> is_constructible(2**40), is_constructible(668)
    (True, False)
    """
    n = _checks.integer(n, "n")
    if n < 1:
        return False
    _decidable(n)
    return _recipe(n) is not None


def _nearest_orders(n: int) -> tuple[int | None, int]:
    """The constructible orders next to ``n`` (a power of two above n is always one)."""
    below = next((m for m in range(n - 1, 0, -1) if (m <= 2 or m % 4 == 0) and _recipe(m) is not None), None)
    above = next(m for m in range(n + 1, 2 * n + 1) if (m <= 2 or m % 4 == 0) and _recipe(m) is not None)
    return below, above


# --------------------------------------------------------------------------- #
# Finite fields GF(p^k): just enough for the quadratic character.
# --------------------------------------------------------------------------- #

def _poly_mod(a: list[int], m: list[int], p: int) -> list[int]:
    """Remainder of ``a`` by the monic polynomial ``m`` over GF(p); coefficients low to high."""
    a = a[:]
    deg_m = len(m) - 1
    for i in range(len(a) - 1, deg_m - 1, -1):
        c = a[i] % p
        if c:
            for j in range(deg_m + 1):
                a[i - deg_m + j] = (a[i - deg_m + j] - c * m[j]) % p
    return [x % p for x in a[:deg_m]] + [0] * max(0, deg_m - len(a))


def _monic_polys(p: int, degree: int) -> Iterable[list[int]]:
    for code in range(p**degree):
        yield [(code // p**i) % p for i in range(degree)] + [1]


def _irreducible_poly(p: int, k: int) -> list[int]:
    """The first monic irreducible polynomial of degree k over GF(p), by trial division."""
    for f in _monic_polys(p, k):
        if f[0] == 0:
            continue
        if all(any(_poly_mod(f, g, p)) for d in range(1, k // 2 + 1) for g in _monic_polys(p, d)):
            return f
    raise AssertionError(f"no irreducible polynomial of degree {k} over GF({p})")  # pragma: no cover


@functools.lru_cache(maxsize=64)
def _quadratic_character_table(q: int) -> tuple[Tensor, Tensor]:
    """For GF(q): (chi, digits) where ``chi[e]`` is the quadratic character of element e
    and ``digits[e]`` its base-p coefficient vector (elements are encoded as integers)."""
    p, k = _prime_power(q)  # type: ignore[misc]
    digits = torch.tensor([[(e // p**i) % p for i in range(k)] for e in range(q)], dtype=torch.int64)
    if k == 1:
        squares = {(y * y) % p for y in range(1, p)}
    else:
        f = _irreducible_poly(p, k)
        squares = set()
        for e in range(1, q):
            d = digits[e].tolist()
            prod = [0] * (2 * k - 1)
            for i, x in enumerate(d):
                for j, y in enumerate(d):
                    prod[i + j] += x * y
            squares.add(sum(c * p**i for i, c in enumerate(_poly_mod(prod, f, p))))
    chi = -torch.ones(q, dtype=torch.int64)
    chi[0] = 0
    chi[list(squares)] = 1
    return chi, digits


def _jacobsthal(q: int) -> Tensor:
    """``Q[a, b] = chi(a - b)`` over GF(q), as an int64 q x q matrix."""
    chi, digits = _quadratic_character_table(q)
    p = _prime_power(q)[0]  # type: ignore[index]
    if digits.shape[1] == 1:
        idx = torch.arange(q)
        return chi[(idx[:, None] - idx[None, :]) % p]
    weights = p ** torch.arange(digits.shape[1])
    index = torch.zeros(q, q, dtype=torch.int64)
    for i, w in enumerate(weights.tolist()):  # one digit at a time keeps memory at q^2
        index += ((digits[:, None, i] - digits[None, :, i]) % p) * w
    return chi[index]


# --------------------------------------------------------------------------- #
# Construction.
# --------------------------------------------------------------------------- #

def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.int8)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def _paley(m: int) -> Tensor:
    return _paley_matrix(*_paley_kind(m))  # type: ignore[misc]


def _paley_matrix(kind: str, q: int) -> Tensor:
    """Paley I (order q + 1, q ≡ 3 mod 4) or Paley II (order 2(q + 1), q ≡ 1 mod 4), normalized."""
    jac = _jacobsthal(q)
    ones = torch.ones(q, 1, dtype=torch.int64)
    if kind == "paley1":  # skew S = [[0, 1^T], [-1, Q]], H = I + S
        s = torch.cat((torch.cat((torch.zeros(1, 1, dtype=torch.int64), ones.T), 1), torch.cat((-ones, jac), 1)), 0)
        h = torch.eye(q + 1, dtype=torch.int64) + s
    else:  # symmetric conference matrix C, H = C (x) [[1,-1],[-1,-1]] + I (x) [[1,1],[1,-1]]
        c = torch.cat((torch.cat((torch.zeros(1, 1, dtype=torch.int64), ones.T), 1), torch.cat((ones, jac), 1)), 0)
        h = torch.kron(c, torch.tensor([[1, -1], [-1, -1]])) + torch.kron(
            torch.eye(q + 1, dtype=torch.int64), torch.tensor([[1, 1], [1, -1]])
        )
    return _normalize(h.to(torch.int8))


def _normalize(h: Tensor) -> Tensor:
    """Flip signs of rows, then columns, so that the first column and row are all +1."""
    h = h * h[:, :1]
    return h * h[:1, :]


def _memory_bytes(device: torch.device) -> int | None:
    """The total memory of ``device`` (None where it is not known)."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, RuntimeError, ValueError, AssertionError):
        pass
    return None


def _check_fits(n: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse an order whose matrix cannot be held: more than 2^63 entries, or more bytes than the memory
    it needs: the construction builds an int8 copy on the CPU (whatever the target device), then the result."""
    entries = n * n
    itemsize = torch.empty((), dtype=dtype).element_size()
    if entries >= 1 << 63:
        raise ValueError(f"a Hadamard matrix of order n={n} has n^2 = {entries:.3g} entries, more than a tensor can "
                         "hold (2^63); for products with H use fwht(x) (powers of two) instead")
    cpu = torch.device("cpu")
    needs = [(cpu, entries + (entries * itemsize if device.type == "cpu" else 0))]
    if device.type != "cpu":
        needs.append((device, entries * itemsize))
    for where, needed in needs:
        memory = _memory_bytes(where)
        if memory is not None and needed > memory:
            raise ValueError(f"a Hadamard matrix of order n={n} needs {needed / 2**30:.3g} GiB on {where} ({entries:.3g} "
                             f"entries of {dtype if where == device else torch.int8}), more than the "
                             f"{memory / 2**30:.3g} GiB of memory there; for products with H use fwht(x) "
                             "(powers of two) instead")


def hadamard_matrix(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """A normalized Hadamard matrix of order ``n``: entries ±1, ``H @ H.T == n * I``.

    Powers of two give the Sylvester matrix ``H[i, j] = (-1)^popcount(i & j)``;
    other orders use Paley I/II constructions and Kronecker products with
    Sylvester. Only the Sylvester matrices diagonalize the softmax (SPEC section 2).

    Args:
        n: the order; see :func:`constructible_orders` for what can be built.
        dtype: dtype of the result (default float64): floating, complex or a
            signed integer dtype (the entries are +-1); bool and unsigned
            dtypes cannot hold -1 and raise ``TypeError``.
        device: device of the result.

    Raises:
        ValueError: if no construction is known here for ``n`` (the message names
            the nearest constructible orders below and above), or if the ``n^2``
            entries would not fit in the memory of the target device (checked
            before anything is allocated).

    >>> H = hadamard_matrix(12)
    >>> bool((H @ H.T == 12 * torch.eye(12, dtype=H.dtype)).all())
    True
    """
    n = _checks.positive_int(n, "n")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    if not dtype.is_signed:  # bool, uint8, ...: -1 would become True or 255
        raise TypeError(f"dtype {dtype} cannot hold the -1 entries of a Hadamard matrix; use a signed or floating dtype")
    target = _device(device)
    _check_fits(n, dtype, target)
    recipe = _recipe(n)
    if recipe is None:
        below, above = _nearest_orders(n)
        raise ValueError(
            f"no Hadamard matrix of order {n} can be constructed here (orders must be 1, 2 or a multiple of 4 "
            f"reachable by Sylvester/Paley/Kronecker); nearest constructible orders: below {below}, above {above}"
        )
    sylvester_order = n // math.prod(recipe)
    h = _sylvester(sylvester_order)
    for m in recipe:
        h = torch.kron(h, _paley(m))
    return h.to(dtype=dtype, device=target)


def _device(device) -> torch.device:
    """``device`` as a torch.device (None: the CPU); one line naming it when it is none."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, (str, int)) or isinstance(device, bool):
        raise TypeError(f"device must be a torch.device, a string such as 'cpu' or 'cuda:0', or a CUDA index, "
                        f"got {type(device).__name__} {device!r}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {device!r} is not a device torch knows (e.g. 'cpu', 'cuda', 'cuda:1', 'mps')") from None


# --------------------------------------------------------------------------- #
# Fast Walsh–Hadamard transform.
# --------------------------------------------------------------------------- #

# The transform is a Kronecker product of small Sylvester blocks applied one
# axis at a time: log2(n)/_BLOCK_BITS passes over memory with dense block
# products instead of log2(n) butterfly passes.
_BLOCK_BITS = 5


@functools.lru_cache(maxsize=64)
def _sylvester_block(bits: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _sylvester(1 << bits).to(dtype=dtype, device=device)


def _fwht_last(x: Tensor) -> Tensor:
    n = x.shape[-1]
    bits = n.bit_length() - 1
    passes = max(1, -(-bits // _BLOCK_BITS))
    chunks = [bits // passes + (1 if i < bits % passes else 0) for i in range(passes)]
    y = x.reshape(-1, n)
    inner = n
    for b in chunks:
        block = _sylvester_block(b, x.dtype, x.device)
        inner >>= b
        if inner == 1:
            y = y.reshape(-1, 1 << b) @ block
        else:
            y = torch.matmul(block, y.reshape(-1, 1 << b, inner))
    return y.reshape(x.shape)


def _fwht_reference(x: Tensor, dim: int) -> Tensor:
    """The pure-PyTorch transform along ``dim`` (non-negative): the fallback, and the tests' reference.
    A contiguous result; complex input as its real and imaginary parts (a complex product with the
    real block would make ``inf * 0`` terms, NaN, out of an infinite part)."""
    if x.is_complex():
        return torch.complex(_fwht_reference(x.real, dim), _fwht_reference(x.imag, dim))
    return _fwht_last(x.movedim(dim, -1).contiguous()).movedim(-1, dim).contiguous()


#: dtypes the compiled kernel transforms (complex as its real view); others take the pure-PyTorch path.
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_PLAIN = (Tensor, torch.nn.Parameter)


def _kernel_for(x: Tensor):
    """The compiled transform ``f(x, dim)`` that applies to ``x``, else None: the C++ kernel for a plain CPU
    tensor of a kernel dtype, the Triton kernel for a plain CUDA tensor of one of its dtypes."""
    if type(x) not in _PLAIN:
        return None
    if x.is_cuda:
        return _triton_fwht.transform if x.dtype in _triton_fwht.DTYPES and _triton_fwht.available() else None
    if x.dtype not in _KERNEL_DTYPES or not x.is_cpu:
        return None
    ext = _kernels.kernel()
    return ext.fwht if ext is not None else None


def _transform(x: Tensor, dim: int) -> Tensor:
    compiled = _kernel_for(x)
    return compiled(x, dim) if compiled is not None else _fwht_reference(x, dim)


class _FWHT(torch.autograd.Function):
    """``x @ H_n`` along ``dim``. H is symmetric, so the backward and the tangent are the same transform;
    staying inside the Function keeps it differentiable any number of times. The vmap rule moves the
    batch dimension to the front, where the transform treats it as one more batch dimension."""

    @staticmethod
    def forward(x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        return _transform(x, dim)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _FWHT.apply(grad, ctx.dim), None

    @staticmethod
    def jvp(ctx, tangent: Tensor, _dim) -> Tensor:  # type: ignore[override]
        return _FWHT.apply(tangent, ctx.dim)

    @staticmethod
    def vmap(info, in_dims, x: Tensor, dim: int):  # type: ignore[override]
        batch_dim = in_dims[0]
        if batch_dim is None:
            return _FWHT.apply(x, dim), None
        return _FWHT.apply(x.movedim(batch_dim, 0), dim + 1), 0


def _dim_index(dim, ndim: int) -> int:
    """``dim`` as an index in ``[0, ndim)``; torch's error (type and wording) when out of range."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})")
    return int(dim) % ndim


def _check_dense(x: Tensor) -> None:
    """A sparse, nested or masked tensor has no strided layout for the transform: one line saying how to pass it."""
    if x.layout != torch.strided:
        raise TypeError(f"fwht needs a dense (strided) tensor, got layout {x.layout}; pass x.to_dense()")
    if x.is_nested:
        raise TypeError("fwht needs a dense (strided) tensor, got a nested tensor; transform its components "
                        "(x.unbind()) one by one")
    masked = getattr(getattr(torch, "masked", None), "MaskedTensor", None)
    if masked is not None and isinstance(x, masked):
        raise TypeError("fwht needs a dense (strided) tensor, got a MaskedTensor; pass x.get_data() with the "
                        "masked entries filled in")


def fwht(x: Tensor, dim: int = -1, *, out: Tensor | None = None) -> Tensor:
    """Fast Walsh–Hadamard transform along ``dim``: ``fwht(x) == x @ H_n`` (unnormalized).

    ``H_n`` is the Sylvester matrix of :func:`hadamard_matrix`. Cost O(n log n)
    per vector; any batch shape and strides, autograd (the transform is its own
    adjoint, so gradients of any order), ``torch.vmap`` and ``torch.func``
    transforms, CPU or CUDA; the dtype is kept; the result is contiguous.
    ``fwht(fwht(x)) == n * x``.

    On the CPU, float32/float64/complex64/complex128 go through a compiled
    butterfly kernel (built once on first use, see ``hadainit._kernels``;
    :func:`fwht_kernel_status` says whether it is in use); other dtypes, other
    devices, or a machine without a C++ compiler use the pure-PyTorch path,
    which gives the same values to round-off. On CUDA, float16/bfloat16/float32/
    float64/complex go through a Triton kernel (``hadainit._triton_fwht``; one
    pass over memory up to n = 2^14, two up to 2^28).

    Args:
        x: a dense (strided) floating or complex tensor; a sparse, nested or
            masked tensor raises ``TypeError``.
        dim: the dimension to transform; its length must be a power of two.
        out: a contiguous tensor of ``x``'s shape, dtype and device to write the
            result into (``x`` itself: in place), returned. On the CPU kernel the
            transform writes it directly: repeated transforms of large tensors
            then skip the fresh output's page faults, which for outputs of 32 MiB
            and more (glibc serves those with a new ``mmap`` every call) cost
            several times the transform itself. Not with autograd (as torch's
            ``out=``); a partial overlap with ``x`` raises ``ValueError``.

    >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    tensor([1., 1., 1., 1.])
    >>> x = torch.tensor([1.0, 2.0]); fwht(x, out=x); x
    tensor([ 3., -1.])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_dense(x)
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"fwht needs a floating or complex tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("fwht needs at least one dimension, got a 0-d tensor")
    index = _dim_index(dim, x.dim())
    n = x.shape[index]
    if not is_power_of_two(n):
        raise ValueError(f"fwht needs a power-of-two length along dim {dim}, got {n} (shape {tuple(x.shape)})")
    if out is not None:
        return _fwht_out(x, index, out)
    if not _differentiated(x):
        compiled = _kernel_for(x)
        if compiled is not None:  # no autograd to record: the kernel directly, no Function overhead
            return compiled(x, index)
    return _FWHT.apply(x, index)


def _fwht_out(x: Tensor, index: int, out: Tensor) -> Tensor:
    """``fwht(x, index)`` written into ``out`` (checked here; the CPU kernel writes it directly)."""
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    _check_dense(out)
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must have x's shape, dtype and device: x {tuple(x.shape)} {x.dtype} {x.device}, "
                         f"out {tuple(out.shape)} {out.dtype} {out.device}")
    if not out.is_contiguous() or out.is_conj() or out.is_neg():
        raise ValueError("out must be contiguous (and not a lazily conjugated or negated view)")
    if _differentiated(x) or out.requires_grad:
        raise ValueError("fwht(..., out=) does not support autograd (as torch's out= arguments); call fwht(x)")
    if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() and not (
            out.data_ptr() == x.data_ptr() and x.is_contiguous()):
        raise ValueError("out shares memory with x without being x itself: pass x (in place) or a separate tensor")
    compiled = _kernel_for(x)
    if compiled is not None and x.is_cpu:
        _kernels.kernel().fwht_into(x, out, index)
    else:
        out.copy_(_transform(x, index))
    return out


_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _differentiated(x: Tensor) -> bool:
    """Whether some autograd (backward, forward-mode dual numbers, torch.func) or vmap must see this call."""
    return (
        (x.requires_grad and torch.is_grad_enabled())
        or _is_functorch_wrapped(x)
        or getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0  # inside a dual_level() block
    )


def fwht_kernel_status() -> "_kernels.KernelStatus":
    """Whether :func:`fwht` uses its compiled CPU kernel (building it first if not yet tried), and why not."""
    return _kernels.status()
