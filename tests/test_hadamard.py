import math

import pytest
import torch

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
