import math

import pytest
import torch

from hadainit.bases import basis_matrix, check_spectrum, mode_pairs, paired_spectrum, resolve_basis, softmax_basis
from hadainit.drift import leakage
from hadainit.hadamard import hadamard_matrix

WALSH_K = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
FOURIER_K = list(range(2, 65))


EPS64 = torch.finfo(torch.float64).eps


def _admissible(k: int, kind: str, gen: torch.Generator, scale: float = 3.0) -> torch.Tensor:
    return paired_spectrum(scale * torch.rand(k, generator=gen, dtype=torch.float64), kind)


def _offdiag_after_softmax(q: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    d = q.T @ torch.softmax(q @ torch.diag(lam) @ q.T, dim=0) @ q
    return d - torch.diag(torch.diagonal(d))


@pytest.mark.parametrize("kind, sizes", [("walsh", WALSH_K), ("fourier", FOURIER_K)])
def test_basis_is_orthogonal_with_constant_first_column(kind, sizes):
    for k in sizes:
        q = softmax_basis(k, kind)
        assert torch.allclose(q.T @ q, torch.eye(k, dtype=torch.float64), atol=1e-13), k
        assert torch.allclose(q[:, 0], torch.full((k,), 1 / math.sqrt(k), dtype=torch.float64), atol=1e-15)


def test_fourier_columns_follow_the_spec():
    k = 10
    q = softmax_basis(k, "fourier")
    j = torch.arange(k, dtype=torch.float64)
    for f in range(1, 5):
        assert torch.allclose(q[:, 2 * f - 1], math.sqrt(2 / k) * torch.cos(2 * math.pi * f * j / k), atol=1e-15)
        assert torch.allclose(q[:, 2 * f], math.sqrt(2 / k) * torch.sin(2 * math.pi * f * j / k), atol=1e-15)
    assert torch.allclose(q[:, -1], (-1.0) ** j / math.sqrt(k))


@pytest.mark.parametrize("k", [1001, 1024])
def test_fourier_columns_follow_the_spec_across_the_frequency_blocks(k):
    # the columns are gathered from a 2K-entry table in blocks of 256 frequencies: check columns on both
    # sides of each block edge against math.cos / math.sin of the exact angle (python floats, independent)
    q = softmax_basis(k, "fourier")
    for f in (1, 255, 256, 257, 300, (k - 1) // 2):
        cos = torch.tensor([math.sqrt(2 / k) * math.cos(2 * math.pi * ((f * j) % k) / k) for j in range(k)],
                           dtype=torch.float64)
        sin = torch.tensor([math.sqrt(2 / k) * math.sin(2 * math.pi * ((f * j) % k) / k) for j in range(k)],
                           dtype=torch.float64)
        assert (q[:, 2 * f - 1] - cos).abs().max() <= 4 * EPS64
        assert (q[:, 2 * f] - sin).abs().max() <= 4 * EPS64


@pytest.mark.parametrize("kind, sizes", [("walsh", WALSH_K), ("fourier", FOURIER_K)])
def test_softmax_is_diagonalized(kind, sizes):
    gen = torch.Generator().manual_seed(0)
    for k in sizes:
        q = softmax_basis(k, kind)
        for _ in range(3):
            off = _offdiag_after_softmax(q, _admissible(k, kind, gen))
            assert off.abs().max() < 1e-14, (k, off.abs().max())


def test_walsh_logits_depend_on_xor_and_fourier_logits_are_circulant():
    gen = torch.Generator().manual_seed(1)
    k = 16
    q = softmax_basis(k, "walsh")
    z = q @ torch.diag(_admissible(k, "walsh", gen)) @ q.T
    for i in range(k):
        for j in range(k):
            assert torch.isclose(z[i, j], z[0, i ^ j], atol=1e-14)
    k = 11
    q = softmax_basis(k, "fourier")
    z = q @ torch.diag(_admissible(k, "fourier", gen)) @ q.T
    for i in range(k):
        for j in range(k):
            assert torch.isclose(z[i, j], z[0, (j - i) % k], atol=1e-14)
            assert torch.isclose(z[i, j], z[j, i], atol=1e-14)


def test_paley_order_12_does_not_diagonalize_the_softmax():
    q = basis_matrix(12, "hadamard")
    assert torch.allclose(q, hadamard_matrix(12) / math.sqrt(12))
    assert torch.allclose(q.T @ q, torch.eye(12, dtype=torch.float64), atol=1e-14)
    gen = torch.Generator().manual_seed(2)
    lam = _admissible(12, "hadamard", gen)
    off = _offdiag_after_softmax(q, lam)
    d = q.T @ torch.softmax(q @ torch.diag(lam) @ q.T, dim=0) @ q
    assert off.norm() / d.norm() > 1e-2  # the leakage the exact theory rules out for walsh/fourier


def test_unpaired_fourier_spectrum_is_not_diagonalized_and_is_rejected():
    q = softmax_basis(8, "fourier")
    lam = torch.linspace(0.5, 3.0, 8, dtype=torch.float64)
    assert _offdiag_after_softmax(q, lam).abs().max() > 1e-3
    with pytest.raises(ValueError, match="modes 1 and 2"):
        check_spectrum(lam, 8, "fourier", "lam")


def test_check_spectrum_accepts_pairs_and_rejects_bad_shapes():
    lam = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.equal(check_spectrum(lam, 6, "fourier", "lam"), lam)
    with pytest.raises(ValueError, match="length 6"):
        check_spectrum(lam[:5], 6, "fourier", "lam")
    with pytest.raises(ValueError, match="finite"):
        check_spectrum(torch.tensor([0.0, float("nan"), 1.0, 1.0]), 4, "walsh", "lam")


def test_mode_pairs():
    assert mode_pairs(8, "walsh").shape == (0, 2)
    assert mode_pairs(7, "fourier").tolist() == [[1, 2], [3, 4], [5, 6]]
    assert mode_pairs(8, "fourier").tolist() == [[1, 2], [3, 4], [5, 6]]


def test_resolve_basis():
    assert resolve_basis(8) == "walsh"
    assert resolve_basis(10) == "fourier"
    with pytest.raises(ValueError, match="power-of-two number of classes, got 10"):
        resolve_basis(10, "walsh")
    with pytest.raises(ValueError, match="unknown basis"):
        resolve_basis(8, "dct")
    with pytest.raises(ValueError, match=">= 2"):
        softmax_basis(1)
    with pytest.raises(ValueError, match="does not diagonalize"):
        softmax_basis(12, "hadamard")


def test_leakage_zero_for_aligned_and_matches_definition():
    gen = torch.Generator().manual_seed(3)
    q = softmax_basis(8)
    v, _ = torch.linalg.qr(torch.randn(20, 8, generator=gen, dtype=torch.float64))
    w = q @ torch.diag(torch.rand(8, generator=gen, dtype=torch.float64)) @ v.T
    assert leakage(w, q, v) < 1e-15
    w2 = w + 0.1 * torch.randn(8, 20, generator=gen, dtype=torch.float64)
    core = q.T @ w2 @ v
    manual = math.sqrt(sum(core[i, j].item() ** 2 for i in range(8) for j in range(8) if i != j)) / w2.norm().item()
    assert torch.isclose(leakage(w2, q, v), torch.tensor(manual, dtype=torch.float64), rtol=1e-12)
    with pytest.raises(ValueError):
        leakage(w, q, v[:, :7])
