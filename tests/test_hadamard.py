import math

import pytest
import torch

from hadainit import hadamard
from hadainit.hadamard import (
    _jacobsthal,
    _paley_matrix,
    constructible_orders,
    fwht,
    hadamard_matrix,
    is_constructible,
)


def _is_hadamard(h: torch.Tensor) -> bool:
    n = h.shape[0]
    return bool(((h == 1) | (h == -1)).all()) and torch.equal(h @ h.T, n * torch.eye(n, dtype=h.dtype))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64, 128, 256])
def test_sylvester_matches_popcount_formula(n):
    h = hadamard_matrix(n)
    expected = torch.tensor(
        [[(-1) ** bin(i & j).count("1") for j in range(n)] for i in range(n)], dtype=torch.float64
    )
    assert torch.equal(h, expected)


def test_every_constructible_order_up_to_256_is_hadamard_and_normalized():
    orders = constructible_orders(256)
    assert len(orders) > 50
    for n in orders:
        h = hadamard_matrix(n)
        assert _is_hadamard(h), n
        assert (h[0] == 1).all() and (h[:, 0] == 1).all(), n


def test_issue_orders_are_reached():
    for n in [12, 20, 24, 28, 36, 40, 44, 48, 56, 60]:
        assert is_constructible(n)
        assert _is_hadamard(hadamard_matrix(n))


def test_orders_that_cannot_exist_are_never_listed():
    # a Hadamard matrix of order n > 2 needs 4 | n
    assert all(n in (1, 2) or n % 4 == 0 for n in constructible_orders(1000))


@pytest.mark.parametrize("n, below, above", [(3, 2, 4), (6, 4, 8), (10, 8, 12), (668, 664, 672)])
def test_unconstructible_order_names_nearest(n, below, above):
    # 664 = 2 * (331 + 1) (Paley I, 331 prime), 672 = 4 * (167 + 1); 668 is the smallest open case
    with pytest.raises(ValueError, match=rf"order {n}\b.*below {below}, above {above}"):
        hadamard_matrix(n)


def test_bad_order_types():
    with pytest.raises(TypeError):
        hadamard_matrix(4.0)
    with pytest.raises(ValueError):
        hadamard_matrix(0)


@pytest.mark.parametrize("q", [7, 11, 9, 13, 25, 27, 49, 81, 125, 243])
def test_jacobsthal_matrix_over_prime_power_fields(q):
    # Q J = 0, Q Q^T = q I - J, symmetric for q = 1 mod 4, skew for q = 3 mod 4:
    # fails if the field arithmetic (irreducible polynomial, squares) is wrong.
    jac = _jacobsthal(q).to(torch.float64)
    ones = torch.ones(q, q, dtype=torch.float64)
    assert torch.equal(torch.diagonal(jac), torch.zeros(q, dtype=torch.float64))
    assert torch.equal(jac @ ones, torch.zeros(q, q, dtype=torch.float64))
    assert torch.equal(jac @ jac.T, q * torch.eye(q, dtype=torch.float64) - ones)
    assert torch.equal(jac.T, jac if q % 4 == 1 else -jac)


@pytest.mark.parametrize("kind, q", [("paley1", 27), ("paley1", 19), ("paley2", 9), ("paley2", 25), ("paley2", 5)])
def test_paley_constructions_from_prime_powers(kind, q):
    h = _paley_matrix(kind, q).to(torch.float64)
    assert h.shape[0] == (q + 1 if kind == "paley1" else 2 * (q + 1))
    assert _is_hadamard(h)


def test_dtype_and_device():
    h = hadamard_matrix(12, dtype=torch.float32, device="cpu")
    assert h.dtype == torch.float32 and h.device.type == "cpu"


# ------------------------------------------------------------------------- fwht


@pytest.mark.parametrize("n", [1, 2, 4, 8, 32, 64, 512, 2048, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fwht_equals_dense_product(n, dtype):
    x = torch.randn(3, n, dtype=torch.float64)
    expected = x @ hadamard_matrix(n)
    got = fwht(x.to(dtype))
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (got.double() - expected).abs().max() <= tol * math.sqrt(n) * expected.abs().max()


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2])
def test_fwht_along_any_dim_and_batch_shape(dim):
    x = torch.randn(8, 4, 16, 2, dtype=torch.float64)
    h = hadamard_matrix(x.shape[dim])
    expected = torch.movedim(torch.movedim(x, dim, -1) @ h, -1, dim)
    assert torch.allclose(fwht(x, dim=dim), expected, rtol=0, atol=1e-12)


def test_fwht_is_an_involution_up_to_n():
    x = torch.randn(5, 256, dtype=torch.float64)
    assert torch.allclose(fwht(fwht(x)), 256 * x, rtol=0, atol=1e-11)


def test_fwht_complex_and_low_precision():
    x = torch.randn(2, 64, dtype=torch.complex128)
    assert torch.allclose(fwht(x), x @ hadamard_matrix(64).to(x.dtype), atol=1e-12)
    y = torch.randn(2, 64, dtype=torch.float64)
    for dtype in (torch.bfloat16, torch.float16):
        got = fwht(y.to(dtype))
        assert got.dtype == dtype
        assert torch.allclose(got.double(), y @ hadamard_matrix(64), rtol=0.05, atol=0.2)


def test_fwht_gradients():
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))
    assert torch.autograd.gradgradcheck(fwht, (x,))
    # the gradient of <c, fwht(x)> is H c
    c = torch.randn(2, 16, dtype=torch.float64)
    (grad,) = torch.autograd.grad((fwht(x) * c).sum(), x)
    assert torch.allclose(grad, c @ hadamard_matrix(16).T, atol=1e-12)


def test_fwht_rejects_bad_input():
    with pytest.raises(ValueError, match="power-of-two length along dim -1, got 12"):
        fwht(torch.randn(3, 12))
    with pytest.raises(TypeError, match="floating"):
        fwht(torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError):
        fwht([1.0, 2.0])
    with pytest.raises(ValueError):
        fwht(torch.tensor(1.0))


# --------------------------------------------------------------------------- orders decided without enumeration

def _reference_orders(limit):
    """Independent enumeration: 2^a times products of Paley orders q + 1 (q ≡ 3 mod 4) or 2 (q + 1)
    (q ≡ 1 mod 4), q an odd prime power, found by trial division."""
    def prime_power(q):
        p = next(f for f in range(2, q + 1) if q % f == 0)
        while q % p == 0:
            q //= p
        return q == 1

    bases = {m for q in range(3, limit, 2) if prime_power(q)
             for m in [q + 1 if q % 4 == 3 else 2 * (q + 1)] if m <= limit and m & (m - 1)}
    orders = {1 << a for a in range(limit.bit_length()) if 1 << a <= limit}
    frontier = set(orders)
    while frontier:
        frontier = {n * m for n in frontier for m in bases if n * m <= limit} - orders
        orders |= frontier
    return sorted(orders)


def test_orders_agree_with_an_independent_enumeration():
    reference = _reference_orders(3000)
    assert constructible_orders(3000) == reference
    assert [n for n in range(1, 3001) if is_constructible(n)] == reference
    for limit in (1, 2, 3, 11, 12, 143, 144, 145):
        assert constructible_orders(limit) == [n for n in reference if n <= limit]


def test_recipes_take_the_largest_paley_factor_first():
    # 96: 95 = 5 * 19 is no prime power, 96 ≡ 0 (mod 8) has no Paley II; 48 = 47 + 1 (Paley I) times 2.
    # 144: 143 = 11 * 13, and 72 = 71 + 1. 36 = 2 * (17 + 1): Paley II before any Kronecker product.
    assert hadamard._recipe(96) == (48,) and hadamard._recipe(144) == (72,) and hadamard._recipe(36) == (36,)
    assert hadamard._recipe(1000000008) == (1000000008,)
    assert hadamard._paley_kind(20) == ("paley2", 9) and hadamard._paley_kind(1000000008) == ("paley1", 1000000007)


def test_a_power_of_two_is_decided_at_once(monkeypatch):
    def never(*args):
        raise AssertionError("orders were enumerated or factorized")

    monkeypatch.setattr(hadamard, "_factorize", never)
    monkeypatch.setattr(hadamard, "_sieve_orders", never)
    hadamard._recipe.cache_clear()
    assert all(is_constructible(2**k) for k in (0, 20, 40, 64, 200))
    assert not is_constructible(2**20 + 2)  # not a multiple of 4: no factorization either


def test_large_orders_are_decided_from_their_factorization():
    # 10^9 + 7 is prime and ≡ 3 (mod 4): Paley I of order 10^9 + 8, and its multiples by 4 and 12
    assert is_constructible(1000000008) and is_constructible(4 * 1000000008) and is_constructible(12 * 1000000008)
    # 4 p with p = 2^61 - 1 (a Mersenne prime): its divisors that are multiples of 4 are 4 and 4 p, and
    # 4 p is Paley only if 4 p - 1 or 2 p - 1 is a prime power; both have two or more distinct prime factors
    p = 2**61 - 1
    assert hadamard._factorize(p) == {p: 1}
    assert len(hadamard._factorize(4 * p - 1)) >= 2 and len(hadamard._factorize(2 * p - 1)) >= 2
    assert not is_constructible(4 * p)
    with pytest.raises(ValueError, match="beyond the orders decided here"):
        is_constructible(2**64 + 4)


def test_factorization_multiplies_back():
    for n in (2**64 - 1, 1000000007 * 998244353, 3**40, 2 * 3 * 5 * 7 * 11 * 13 * 17 * 19 * 23 * 29 * 31 * 37 * 41 * 43):
        factors = hadamard._factorize(n)
        assert math.prod(p**k for p, k in factors.items()) == n
        assert all(all(p % f for f in range(2, min(p, 10**5))) for p in factors)  # no small factor left in a "prime"


def test_a_matrix_too_large_to_hold_is_refused_before_anything_is_built(monkeypatch):
    def never(*args):
        raise AssertionError("construction started")

    monkeypatch.setattr(hadamard, "_sylvester", never)
    monkeypatch.setattr(hadamard, "_recipe", never)
    with pytest.raises(ValueError, match=r"order n=1099511627776 has n\^2 = 1.21e\+24 entries"):
        hadamard_matrix(2**40)
    monkeypatch.setattr(hadamard, "_memory_bytes", lambda device: 10**6)  # a machine with 1 MB
    with pytest.raises(ValueError, match=r"needs .* GiB on cpu \(4.19e\+06 entries of torch.float64\), more than"):
        hadamard_matrix(2048)
    # another device (here meta, whose memory is unknown): the int8 copy is still built on the CPU first
    memory = {"cpu": 10**6, "meta": None}
    monkeypatch.setattr(hadamard, "_memory_bytes", lambda device: memory[device.type])
    with pytest.raises(ValueError, match=r"needs .* GiB on cpu \(4.19e\+06 entries of torch.int8\)"):
        hadamard_matrix(2048, device="meta")


def test_constructible_orders_refuses_a_huge_limit():
    with pytest.raises(ValueError, match="lists orders up to limit=16777216"):
        constructible_orders(10**9)


@pytest.mark.slow
def test_constructible_orders_up_to_ten_million_agree_with_single_decisions():
    orders = constructible_orders(10**7)
    listed = set(orders)
    assert all(is_constructible(n) == (n in listed) for n in range(10**7 - 4000, 10**7 + 1))


@pytest.mark.parametrize("convert", [torch.Tensor.to_sparse, torch.Tensor.to_sparse_csr, torch.Tensor.to_sparse_csc,
                                     lambda x: x.to_sparse_bsr((2, 2))])
def test_fwht_refuses_a_sparse_tensor_in_one_line(convert):
    with pytest.raises(TypeError, match=r"^fwht needs a dense \(strided\) tensor, got layout torch.sparse_\w+; pass "
                                        r"x.to_dense\(\)$"):
        fwht(convert(torch.eye(4)))
