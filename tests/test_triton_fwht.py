"""The CUDA transform's Triton kernel, run on the CPU by Triton's interpreter, against the reference.

No GPU is needed: with ``TRITON_INTERPRET=1`` the same kernel source runs on CPU
tensors. What this cannot show is the speed on a GPU (``python -m benchmarks
--device cuda`` has that row).
"""

from __future__ import annotations

import pytest
import torch

from hadainit import _triton_fwht, fwht
from hadainit.hadamard import _fwht_reference, _kernel_for

pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    """The kernel decorated under Triton's interpreter (and decorated afresh after the test)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    decorate = _triton_fwht._kernel  # a test may replace the module attribute
    decorate.cache_clear()
    yield _triton_fwht
    decorate.cache_clear()


def _exact(x: torch.Tensor, dim: int) -> torch.Tensor:
    wide = torch.complex128 if x.is_complex() else torch.float64
    return _fwht_reference(x.to(wide), dim)


def _check(t, x: torch.Tensor, dim: int, passes: int) -> None:
    got = t.transform(x, dim)
    assert got.dtype == x.dtype and got.shape == x.shape and got.is_contiguous()
    exact = _exact(x, dim)
    # each pass rounds once per butterfly stage (float32 inside a pass for half inputs, once per pass)
    eps = torch.finfo(x.real.dtype if x.is_complex() else x.dtype).eps
    stages = max(1, x.shape[dim].bit_length() - 1) if x.dtype in (torch.float32, torch.float64, torch.complex64,
                                                                   torch.complex128) else passes
    scale = exact.abs().max().item() if exact.numel() else 0.0
    err = (got.to(exact.dtype) - exact).abs().max().item() if exact.numel() else 0.0
    assert err <= 2 * stages * eps * max(scale, 1e-300), (x.dtype, tuple(x.shape), dim, err, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128,
                                   torch.float16, torch.bfloat16])
def test_every_dtype_batch_shape_and_dim(interpreted, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape, dim in [((3, 8, 5), 1), ((16,), 0), ((2, 1, 3), 1), ((4, 3), 0), ((5, 2, 32), 2), ((1,), 0),
                       ((0, 4), 1), ((2, 0, 8), 2)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x = torch.complex(x, torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype) if dtype.is_complex \
            else x.to(dtype)
        _check(interpreted, x, dim, passes=1)


@pytest.mark.parametrize("max_bits", [1, 2, 3])
def test_multi_pass_plans(interpreted, monkeypatch, max_bits):
    """Chunks of at most max_bits index bits: two to seven passes, even and uneven chunks (7 bits in chunks of
    at most 3: 3 + 2 + 2), tiles that overhang the columns."""
    monkeypatch.setattr(_triton_fwht, "MAX_BITS", max_bits)
    gen = torch.Generator().manual_seed(1)
    for shape, dim in [((3, 64), 1), ((128, 3), 0), ((2, 32, 6), 1), ((4, 2), 1)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        passes = len(_triton_fwht.plan(x.shape[dim].bit_length() - 1, 1))
        _check(interpreted, x, dim, passes)
        _check(interpreted, x.to(torch.float16), dim, passes)


def test_two_pass_length_at_the_default_chunk(interpreted):
    x = torch.randn(2, 1 << 15, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert len(_triton_fwht.plan(15, 1)) == 2
    _check(interpreted, x, 1, passes=2)


def test_launches_split_and_short_rows_share_programs(interpreted, monkeypatch):
    """A pass too large for one launch is split into launches over consecutive groups; rows of the
    last dimension are the tile's columns, so a length-2 transform of many rows takes few programs."""
    gen = torch.Generator().manual_seed(6)
    monkeypatch.setattr(_triton_fwht, "MAX_BITS", 2)
    monkeypatch.setattr(_triton_fwht, "_MAX_PROGRAMS", 3)
    for shape, dim in [((7, 16, 3), 1), ((5, 32), 1), ((64, 2), 0)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        _check(interpreted, x, dim, passes=len(_triton_fwht.plan(x.shape[dim].bit_length() - 1, 1)))
    launched = []
    monkeypatch.setattr(_triton_fwht, "_MAX_PROGRAMS", 1 << 30)
    real_kernel = _triton_fwht._kernel()

    class Counting:
        def __getitem__(self, grid):
            launched.append(grid[0])
            return real_kernel[grid]

    monkeypatch.setattr(_triton_fwht, "_kernel", lambda: Counting())
    x = torch.randn(4096, 2, generator=gen, dtype=torch.float64)
    got = _triton_fwht.transform(x, 1)
    assert torch.equal(got, torch.stack((x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]), 1))
    assert launched == [4096 * 2 // 4]  # tiles of 2 rows (MAX_BITS = 2): 2048 programs, not 4096


def test_non_contiguous_and_conjugated_input(interpreted):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64).t()  # (6, 8), strides (1, 6)
    _check(interpreted, x, 1, passes=1)
    _check(interpreted, x[:, ::2], 1, passes=1)
    z = torch.randn(4, 8, generator=gen, dtype=torch.complex128).conj()  # the conjugate bit set
    _check(interpreted, z, 1, passes=1)
    assert torch.equal(interpreted.transform(z, 1), interpreted.transform(z.resolve_conj(), 1))


def test_input_untouched(interpreted):
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    before = x.clone()
    interpreted.transform(x, 1)
    assert torch.equal(x, before)


def test_plan_covers_every_bit_once():
    for bits in range(0, 40):
        for inner in (1, 3, 8):
            chunks = _triton_fwht.plan(bits, inner)
            assert sum(c for c, _ in chunks) == bits
            assert all(c <= _triton_fwht.MAX_BITS for c, _ in chunks)
            assert max(c for c, _ in chunks) - min(c for c, _ in chunks) <= 1  # as even as possible
            below = 1
            for c, chunk_inner in chunks:  # each pass's stride is the product of the bits below it
                assert chunk_inner == below * inner
                below <<= c
    with pytest.raises(ValueError, match="bits >= 0"):
        _triton_fwht.plan(-1, 1)


def test_dispatch(monkeypatch):
    """CPU tensors never take the Triton path; CUDA tensors take it unless disabled."""
    x = torch.randn(4, 8)
    assert _kernel_for(x) is not _triton_fwht.transform
    monkeypatch.setenv("HADAINIT_NO_EXTENSION", "1")
    assert not _triton_fwht.available()
    if torch.cuda.is_available():
        assert _kernel_for(x.cuda()) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_reference_and_autograd():
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float64, torch.complex64):
        for shape, dim in [((3, 8, 5), 1), ((2, 1 << 15), 1), ((1 << 10, 3), 0)]:
            x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            assert _kernel_for(x.cuda()) is _triton_fwht.transform
            _check(_triton_fwht, x.cuda(), dim, passes=2)
    x = torch.randn(4, 64, dtype=torch.float64, device="cuda", requires_grad=True)
    fwht(x, 1).pow(2).sum().backward()
    assert torch.allclose(x.grad, 2 * 64 * x.detach(), rtol=1e-12, atol=1e-12)  # H^T H = n I
