"""The compiled fwht kernel against the pure-PyTorch reference and dense x @ H; autograd, vmap, fallback.

Tests that need the kernel skip where it cannot be built (no compiler); the
fallback tests run everywhere. No timing here: speed is `python -m benchmarks`.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hadainit import _kernels, fwht, hadamard_matrix
from hadainit.hadamard import _fwht_reference, fwht_kernel_status

ROOT = Path(__file__).resolve().parents[1]
KERNEL = _kernels.kernel()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason=f"fwht kernel unavailable: {fwht_kernel_status().reason}")

TOL = {torch.float64: 1e-14, torch.complex128: 1e-14, torch.float32: 2e-6, torch.complex64: 2e-6}

# (shape, dim): odd batch shapes, lengths 1 .. 2^18 (both the one-thread and the two-sweep paths),
# inner sizes that are powers of two and not, below and above a SIMD register
CASES = [
    ((1,), 0), ((2,), 0), ((8,), -1), ((3, 4), 1), ((5, 16), -1), ((7, 1024), 1), ((1, 3), 0),
    ((3, 32, 5), 1), ((2, 64, 3), 1), ((4, 256, 5), 1), ((3, 16, 2), 1), ((2, 8, 16), 1),
    ((2, 1 << 12, 1000), 1), ((1 << 11, 3), 0), ((3, 1 << 15), 1), ((1, 1 << 18), -1),
    ((2, 1 << 13, 4), 1), ((5, 7, 128), 2), ((256, 2, 3), 0),
]


def _relerr(got, ref):
    scale = ref.abs().max().clamp_min(1e-300)
    return ((got - ref).abs().max() / scale).item()


@needs_kernel
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape,dim", CASES)
def test_kernel_equals_reference(shape, dim, dtype):
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(len(shape) + shape[0]))
    got = KERNEL.fwht(x, dim % x.dim())
    ref = _fwht_reference(x, dim % x.dim())
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
    assert _relerr(got, ref) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("n", [4, 64, 512])
def test_kernel_equals_dense_product_in_float64(n):
    x = torch.randn(9, n, dtype=torch.float64)
    assert _relerr(KERNEL.fwht(x, 1), x @ hadamard_matrix(n)) < 1e-14


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
def test_non_contiguous_inputs(dtype):
    base = torch.randn(6, 64, 10, dtype=dtype)
    views = {
        "transposed": (base.transpose(0, 2), 1),
        "strided": (base[::2, :, ::3], 1),
        "expanded": (base[:1, :, :1].expand(4, 64, 3), 1),
        "permuted-last": (base.permute(2, 0, 1), 2),
    }
    if dtype.is_complex:
        views["conjugated"] = (base.conj(), 1)
    for name, (view, dim) in views.items():
        got = fwht(view, dim)
        assert _relerr(got, _fwht_reference(view.resolve_conj(), dim)) < TOL[dtype], name
    # the input is never written to
    before = base.clone()
    fwht(base.transpose(0, 2), 1)
    assert torch.equal(base, before)


@needs_kernel
def test_public_fwht_uses_the_kernel_on_cpu_float():
    x = torch.randn(4, 32, dtype=torch.float64)
    assert fwht_kernel_status().available
    assert torch.equal(fwht(x), KERNEL.fwht(x, 1))
    assert torch.equal(fwht(x.T, dim=0), KERNEL.fwht(x.T, 0))


def test_low_precision_takes_the_reference_path():
    x = torch.randn(3, 64)
    for dtype in (torch.float16, torch.bfloat16):
        got = fwht(x.to(dtype))
        assert got.dtype == dtype
        assert torch.equal(got, _fwht_reference(x.to(dtype), 1))


def test_complex_infinite_parts_and_contiguous_results_on_every_path():
    """The reference transforms real and imaginary parts apart (a complex product with the real block
    turned an infinite part into NaN everywhere) and returns a contiguous tensor, like the kernel."""
    x = torch.tensor([complex("inf"), 1 + 2j, 0, 0], dtype=torch.complex128)
    want = torch.tensor([complex(math.inf, 2), complex(math.inf, -2)] * 2, dtype=torch.complex128)
    assert torch.equal(_fwht_reference(x, 0), want)
    assert torch.equal(fwht(x), want)
    for dtype in (torch.float16, torch.float32, torch.complex64):
        y = torch.randn(8, 3).to(dtype)
        assert _fwht_reference(y, 0).is_contiguous() and fwht(y, 0).is_contiguous()


def test_empty_batches():
    for dtype in (torch.float32, torch.float64, torch.float16):
        x = torch.randn(0, 3, 8, dtype=dtype)
        assert fwht(x, 2).shape == (0, 3, 8)


# ------------------------------------------------------------------ autograd and torch.func


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gradcheck_and_gradgradcheck_any_dim(dim):
    x = torch.randn(4, 8, 2, dtype=torch.float64, requires_grad=True)
    f = lambda t: fwht(t, dim)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradcheck_complex():
    x = torch.randn(3, 16, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))


def test_vmap_over_any_batch_dim():
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    assert torch.allclose(torch.vmap(fwht)(x), fwht(x, -1), rtol=0, atol=1e-12)
    assert torch.allclose(torch.vmap(fwht, in_dims=1)(x), fwht(x.transpose(0, 1), -1), rtol=0, atol=1e-12)
    # nested vmap, and vmap of a gradient
    assert torch.allclose(torch.vmap(torch.vmap(fwht))(x), fwht(x), rtol=0, atol=1e-12)
    c = torch.randn(16, dtype=torch.float64)
    grads = torch.vmap(torch.func.grad(lambda t: (fwht(t) * c).sum()))(x[:, 0])
    assert torch.allclose(grads, fwht(c).expand(5, 16), rtol=0, atol=1e-12)


def test_vmap_with_a_transform_dim():
    x = torch.randn(16, 6, 4, dtype=torch.float64)  # vmap over dim 1; each sample (16, 4), transform its dim 0
    got = torch.vmap(lambda t: fwht(t, 0), in_dims=1)(x)
    assert torch.allclose(got, fwht(x, 0).transpose(0, 1), rtol=0, atol=1e-12)


def test_forward_mode_dual_numbers():
    import torch.autograd.forward_ad as fwAD

    x, v = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    with fwAD.dual_level():
        out = fwht(fwAD.make_dual(x, v))
        primal, tangent = fwAD.unpack_dual(out)
    assert torch.allclose(primal, fwht(x), rtol=0, atol=1e-12)
    assert tangent is not None and torch.allclose(tangent, fwht(v), rtol=0, atol=1e-12)


def test_forward_mode_jvp():
    x = torch.randn(3, 8, dtype=torch.float64)
    v = torch.randn(3, 8, dtype=torch.float64)
    out, tangent = torch.func.jvp(fwht, (x,), (v,))
    assert torch.allclose(out, fwht(x), rtol=0, atol=1e-12)
    assert torch.allclose(tangent, fwht(v), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ fallback: no compiler, broken compiler


def test_forced_fallback_gives_the_reference(monkeypatch):
    monkeypatch.setattr(_kernels, "kernel", lambda: None)
    x = torch.randn(3, 5, 64, dtype=torch.float64, requires_grad=True)
    got = fwht(x, 2)
    assert torch.equal(got, _fwht_reference(x.detach(), 2))
    got.sum().backward()
    assert torch.allclose(x.grad, fwht(torch.ones(3, 5, 64, dtype=torch.float64), 2), rtol=0, atol=1e-12)
    assert torch.allclose(torch.vmap(fwht)(x.detach()), got.detach(), rtol=0, atol=1e-12)


def test_a_failing_build_falls_back(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp_extension

    def broken_load(*args, **kwargs):
        raise RuntimeError("Error building extension: simulated compiler failure")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", broken_load)
    monkeypatch.setattr(_kernels, "_status", None)
    monkeypatch.setattr(_kernels, "_module", None)
    status = _kernels.status()
    assert not status.available and "simulated compiler failure" in status.reason
    x = torch.randn(4, 32, dtype=torch.float64)
    assert torch.equal(fwht(x), _fwht_reference(x, 1))


def _fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(_kernels, "_status", None)
    monkeypatch.setattr(_kernels, "_module", None)
    cflags, ldflags = _kernels._compile_flags()
    name = _kernels._name(cflags, ldflags)
    directory = _kernels._extensions_root() / name
    return name, directory


def test_a_broken_leftover_build_says_how_to_rebuild(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp_extension

    name, directory = _fresh_cache(monkeypatch, tmp_path)
    directory.mkdir(parents=True)
    _kernels._library_path(directory, name).write_bytes(b"\x7fELF truncated")  # a build killed mid-write

    def load(*args, **kwargs):  # ninja finds the output up to date; importing it fails
        raise ImportError("invalid ELF header")

    monkeypatch.setattr(cpp_extension, "load", load)
    status = _kernels.status()
    assert not status.available and "delete the folder to rebuild" in status.reason and str(directory) in status.reason


def test_a_process_that_waited_for_another_build_says_so(monkeypatch, tmp_path):
    import json

    import torch.utils.cpp_extension as cpp_extension

    name, directory = _fresh_cache(monkeypatch, tmp_path)

    def load(*args, **kwargs):  # the other process finishes (and marks) the build while this one waits
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _kernels._MARKER).write_text(json.dumps({"build_seconds": 12.5}))
        return object()

    monkeypatch.setattr(cpp_extension, "load", load)
    status = _kernels.status()
    assert status.available and status.reason == "built by another process (waited for it)"
    assert status.build_seconds == 12.5


def test_a_stale_marker_beside_a_deleted_library_is_a_fresh_build(monkeypatch, tmp_path):
    import json

    import torch.utils.cpp_extension as cpp_extension

    name, directory = _fresh_cache(monkeypatch, tmp_path)
    directory.mkdir(parents=True)
    (directory / _kernels._MARKER).write_text(json.dumps({"build_seconds": 99.0}))  # the library was deleted
    monkeypatch.setattr(cpp_extension, "load", lambda *args, **kwargs: object())
    status = _kernels.status()
    assert status.available and status.reason == "built" and status.build_seconds != 99.0
    assert json.loads((directory / _kernels._MARKER).read_text())["build_seconds"] == status.build_seconds


def _run(env_extra: dict, tmp_path) -> str:
    code = (
        "import torch; from hadainit import fwht; from hadainit.hadamard import _fwht_reference, fwht_kernel_status\n"
        "x = torch.randn(3, 5, 64, dtype=torch.float64)\n"
        "assert torch.equal(fwht(x, 2), _fwht_reference(x, 2))\n"
        "print(fwht_kernel_status().reason)\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), **env_extra)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_environment_switch_disables_the_kernel(tmp_path):
    assert _run({_kernels.DISABLE_ENV: "1"}, tmp_path) == f"disabled by {_kernels.DISABLE_ENV}"


@pytest.mark.parametrize("compiler", ["/nonexistent/c++", "false"])
def test_missing_or_broken_compiler_breaks_nothing(compiler, tmp_path):
    reason = _run({"CXX": compiler}, tmp_path)
    expected = "no /nonexistent/c++ on PATH" if compiler.startswith("/") else "build failed"
    assert reason.startswith(expected), reason


# ------------------------------------------------------------ the kernel's ISA (issue 21)
@pytest.mark.parametrize("asked, capability, flags", [
    ("native", "AVX512", {"-mavx512f", "-mavx2"}), ("", "AVX2", {"-mavx2", "-mfma"}), ("avx2", "AVX512", {"-mavx2"}),
    ("sse", "AVX512", set()), ("SSE", "AVX2", set()), ("native", "DEFAULT", set()),
])
def test_the_kernel_isa_is_chosen_by_the_environment(monkeypatch, asked, capability, flags):
    monkeypatch.setattr(_kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setenv(_kernels.ISA_ENV, asked)
    cflags, _ = _kernels._compile_flags()
    simd = {f for f in cflags if f.startswith("-mavx") or f == "-mfma"}
    assert flags <= simd
    if "-mavx512f" not in flags:
        assert not any(f.startswith("-mavx512") for f in simd), cflags
    if not flags:
        assert not simd, cflags  # the x86-64 baseline: SSE2 only


def test_each_isa_builds_its_own_cached_copy(monkeypatch):
    monkeypatch.setattr(_kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    names = set()
    for isa in ("avx512", "avx2", "sse"):
        monkeypatch.setenv(_kernels.ISA_ENV, isa)
        names.add(_kernels._name(*_kernels._compile_flags()))
    assert len(names) == 3


@pytest.mark.parametrize("asked, capability, match", [
    ("avx1024", "AVX512", "must be one of"), ("avx512", "AVX2", "torch dispatches to AVX2"),
    ("avx2", "DEFAULT", "torch dispatches to DEFAULT"),
])
def test_an_isa_the_cpu_or_the_cap_cannot_run_is_refused(monkeypatch, asked, capability, match):
    monkeypatch.setattr(_kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setenv(_kernels.ISA_ENV, asked)
    with pytest.raises(ValueError, match=match):
        _kernels.kernel_isa()
    monkeypatch.setattr(_kernels, "_status", None)
    monkeypatch.setattr(_kernels, "_module", None)
    status = _kernels.status()  # fwht falls back to its torch path and says why
    assert not status.available and _kernels.ISA_ENV in status.reason


def test_the_running_kernel_matches_the_configuration_under_test():
    """Under `make test-isa` the kernel really is the capped build (not a cached native one)."""
    status = _kernels.status()
    if not status.available:
        pytest.skip(f"no compiled kernel here: {status.reason}")
    isa = _kernels.kernel_isa()
    has512 = any(f.startswith("-mavx512") for f in status.flags)
    has2 = "-mavx2" in status.flags
    assert (has512, has2) == {"avx512": (True, True), "avx2": (False, True), "sse": (False, False)}.get(isa, (has512, has2))
    l1, l2 = _kernels.kernel().cache_bytes()
    assert l1 & (l1 - 1) == 0 and l2 & (l2 - 1) == 0 and 8 * 1024 <= l1 <= l2


def test_the_transform_is_the_same_for_other_cache_plans(tmp_path):
    """The blocking is read from the machine's caches; a smaller L2 (Zen 2/3) takes other code paths.

    Every plan applies the radix-2 stages in the same order (only which sweep does which stage moves),
    so the values are the same bits as under this machine's plan; and within TOL of the reference."""
    if not _kernels.status().available:
        pytest.skip("no compiled kernel here")
    gen = torch.Generator().manual_seed(21)
    xs = [torch.randn(3, 1 << e, dtype=dt, generator=gen) for e in (9, 13, 15, 17) for dt in (torch.float32, torch.float64)]
    xs.append(torch.randn(2, 1 << 12, 3, dtype=torch.float64, generator=gen))
    torch.save(xs, tmp_path / "x.pt")
    code = ("import sys, torch; from hadainit import fwht, _kernels; assert _kernels.status().available; "
            "print(_kernels.kernel().cache_bytes()); xs = torch.load(sys.argv[1]); "
            "torch.save([fwht(x, 1) for x in xs], sys.argv[2])")
    for plan in ("16384,131072", "32768,524288"):
        env = {**os.environ, "HADAINIT_CACHE_BYTES": plan}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                             capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "(" + plan.replace(",", ", ") + ")"
        for x, y in zip(xs, torch.load(tmp_path / "y.pt")):
            assert torch.equal(y, fwht(x, 1)), (plan, x.shape, x.dtype)
            assert _relerr(y, _fwht_reference(x, 1)) < TOL[x.dtype]


# fwht(x, out=): the same values written into a given tensor (repeated large transforms skip the
# fresh output's page faults, see benchmarks/suite.py's fwht rows); in place with out=x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
@pytest.mark.parametrize("shape, dim", [((8,), 0), ((3, 1 << 12), 1), ((4, 256, 5), 1), ((1 << 11, 3), 0)])
def test_out_is_the_transform_written_in_place_or_into(shape, dim, dtype):
    x = torch.randn(shape, dtype=dtype)
    expected = x @ hadamard_matrix(x.shape[dim], dtype=torch.float64).to(dtype) if x.dim() == 1 else None
    ref = _fwht_reference(x, dim % x.dim())
    out = torch.empty_like(x)
    got = fwht(x, dim, out=out)
    assert got is out
    assert _relerr(out, ref) <= TOL[dtype]
    assert torch.equal(out, fwht(x, dim))  # the same kernel, the same bits
    if expected is not None:
        assert _relerr(out, expected) <= TOL[dtype]
    y = x.clone()
    assert fwht(y, dim, out=y) is y and torch.equal(y, out)  # in place
    strided = torch.randn(shape[::-1], dtype=dtype).transpose(0, -1) if x.dim() > 1 else x
    assert torch.equal(fwht(strided, dim, out=torch.empty_like(strided, memory_format=torch.contiguous_format)),
                       fwht(strided, dim))


def test_out_on_the_fallback_path_gives_the_reference(monkeypatch):
    monkeypatch.setattr("hadainit.hadamard._kernel_for", lambda x: None)
    x = torch.randn(5, 64, dtype=torch.float64)
    out = torch.empty_like(x)
    assert fwht(x, out=out) is out
    assert torch.equal(out, _fwht_reference(x, 1))
    x16 = torch.randn(3, 16, dtype=torch.bfloat16)  # no kernel dtype: the torch path, written into out
    o16 = torch.empty_like(x16)
    assert torch.equal(fwht(x16, out=o16), fwht(x16))


def test_out_refuses_what_it_cannot_write():
    x = torch.randn(4, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape, dtype and device"):
        fwht(x, out=torch.empty(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape, dtype and device"):
        fwht(x, out=torch.empty(4, 16, dtype=torch.float32))
    with pytest.raises(ValueError, match="contiguous"):
        fwht(x, out=torch.empty(16, 4, dtype=torch.float64).t())
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        fwht(x, out=[0.0] * 64)
    with pytest.raises(ValueError, match="autograd"):
        fwht(x.clone().requires_grad_(), out=torch.empty_like(x))
    with pytest.raises(ValueError, match="autograd"):
        fwht(x, out=torch.empty_like(x).requires_grad_())
    buf = torch.randn(5, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="shares memory"):
        fwht(buf[:4], out=buf[1:])  # overlapping rows: the transform would read what it wrote
    with pytest.raises(ValueError, match="shares memory"):
        fwht(buf[1:], out=buf[:4])
