"""Property-based tests (hypothesis): the invariants hold for any admissible input, not just the chosen ones.

`make test` runs the quick profile (25 examples each); `make test-slow` the long one (400).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hadainit import constructible_orders, fwht, hadamard_, hadamard_matrix, softmax_basis
from hadainit.bases import paired_spectrum
from hadainit.metrics.functional import neural_collapse
from hadainit.ufm import (
    coefficient_of_variation,
    etf_angle,
    kl_lyapunov,
    margins,
    softmax_spectrum,
    spectral_flow,
    spectral_gd,
    unbalanced_lyapunov,
)

ORDERS = constructible_orders(256)
seeds = st.integers(0, 2**31 - 1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ Hadamard matrices


@given(st.sampled_from(ORDERS))
def test_every_constructible_order_is_orthogonal(n):
    h = hadamard_matrix(n)
    assert ((h == 1) | (h == -1)).all() and torch.equal(h @ h.T, n * torch.eye(n, dtype=h.dtype))


@given(st.integers(1, 600).filter(lambda n: n not in set(constructible_orders(1024))))
def test_every_other_order_raises_naming_the_nearest(n):
    orders = constructible_orders(1024)
    below = max(m for m in orders if m < n)
    above = min(m for m in orders if m > n)
    with pytest.raises(ValueError, match=rf"order {n}\b.*below {below}, above {above}"):
        hadamard_matrix(n)


# ------------------------------------------------------------------ fwht

shapes = st.tuples(st.lists(st.integers(1, 3), max_size=2), st.integers(0, 9), st.integers(0, 3))


@given(shapes, seeds)
def test_fwht_linear_involutive_dense_any_dim(shape, seed):
    batch, bits, pos = shape
    n = 1 << bits
    dims = list(batch)
    pos = min(pos, len(dims))
    dims.insert(pos, n)
    gen = _gen(seed)
    x = torch.randn(dims, generator=gen, dtype=torch.float64)
    y = torch.randn(dims, generator=gen, dtype=torch.float64)
    a, b = torch.randn(2, generator=gen, dtype=torch.float64).tolist()
    tol = 1e-12 * n
    assert torch.allclose(fwht(a * x + b * y, dim=pos), a * fwht(x, dim=pos) + b * fwht(y, dim=pos), atol=tol)
    assert torch.allclose(fwht(fwht(x, dim=pos), dim=pos), n * x, atol=tol)
    dense = torch.movedim(torch.movedim(x, pos, -1) @ hadamard_matrix(n), -1, pos)
    assert torch.allclose(fwht(x, dim=pos), dense, atol=tol)


@given(st.integers(0, 5), seeds)
def test_fwht_gradcheck(bits, seed):
    x = torch.randn(2, 1 << bits, generator=_gen(seed), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))


# ------------------------------------------------------------------ bases and initializers


@given(st.integers(2, 80), st.sampled_from(["auto", "fourier"]))
def test_softmax_basis_orthogonal(k, kind):
    q = softmax_basis(k, kind)
    assert torch.allclose(q.T @ q, torch.eye(k, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(q[:, 0], torch.full((k,), k**-0.5, dtype=torch.float64), atol=1e-15)


@given(st.integers(2, 40), st.integers(0, 40), st.floats(0.05, 5.0), st.booleans(), seeds,
       st.sampled_from([torch.float32, torch.float64]))
def test_hadamard_init_properties(k, extra, gain, zero_mean, seed, dtype):
    d = k + extra
    w = hadamard_(torch.empty(k, d, dtype=dtype), gain, zero_mean=zero_mean, generator=_gen(seed))
    w2 = hadamard_(torch.empty(k, d, dtype=dtype), gain, zero_mean=zero_mean, generator=_gen(seed))
    assert torch.equal(w, w2)  # reproducible
    g = w.double() @ w.double().T
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(torch.diagonal(g), torch.full((k,), gain**2, dtype=torch.float64), rtol=tol * 10)
    off = g - torch.diag(torch.diagonal(g))
    expected_off = -(gain**2) / (k - 1) if zero_mean else 0.0
    assert torch.allclose(off[~torch.eye(k, dtype=torch.bool)], torch.full((k * k - k,), expected_off, dtype=torch.float64),
                          atol=tol * 10 * gain**2)


# ------------------------------------------------------------------ reduced dynamics


def _balanced(k, basis, seed, decades=2.0):
    lam = torch.exp(math.log(10) * decades * (torch.rand(k, generator=_gen(seed), dtype=torch.float64) - 0.6))
    return paired_spectrum(lam, basis).sqrt()


ks = st.sampled_from([(4, "walsh"), (8, "walsh"), (32, "walsh"), (5, "fourier"), (6, "fourier"), (12, "fourier")])


@given(ks, seeds, st.integers(1, 3))
def test_flow_conserves_and_monotone(kb, seed, n):
    k, basis = kb
    a = _balanced(k, basis, seed)
    b = _balanced(k, basis, seed + 1)
    res = spectral_flow(a, b, torch.logspace(-1, 6, 15), basis=basis, samples_per_class=n)
    inv = res.a**2 - n * res.b**2
    assert torch.allclose(inv, (a**2 - n * b**2).expand_as(inv), atol=1e-7)


@given(ks, seeds, st.integers(10, 200))
def test_balanced_gd_modes_grow_and_lyapunov_decreases(kb, seed, steps):
    k, basis = kb
    a = _balanced(k, basis, seed)
    res = spectral_gd(a, a, lr=0.1 * k, steps=steps, basis=basis)
    lam = res.lam[:, 1:]
    assert (lam.diff(dim=0) >= 0).all()  # every mode non-decreasing from a positive balanced spectrum
    v = kl_lyapunov(res.lam)
    assert (v.diff() <= 1e-13 * v[:-1]).all()


# ------------------------------------------------------------------ extreme scales and dtypes (issue 14)

SCALE_FREE = {
    "kl_lyapunov": kl_lyapunov,
    "etf_angle": etf_angle,
    "coefficient_of_variation": coefficient_of_variation,
    "unbalanced_lyapunov": lambda x: unbalanced_lyapunov(x, _reversed(x)),
}


def _reversed(x):
    return x.flip(-1) if isinstance(x, torch.Tensor) else type(x)(reversed(x))


@given(st.sampled_from(sorted(SCALE_FREE)), st.integers(3, 40), st.floats(0.0, 12.0), st.integers(-1000, 1000), seeds)
def test_scale_free_functions_are_exact_under_power_of_two_scaling(name, k, decades, exponent, seed):
    # lam spans `decades` decades; scaled by 2^e (exact while every entry stays a normal float) the
    # value must not change by a single bit, whatever e does to the squares and sums inside
    f = SCALE_FREE[name]
    lam = torch.exp(math.log(10) * decades * -torch.rand(k, generator=_gen(seed), dtype=torch.float64))
    low, high = -1020 + math.ceil(decades * math.log2(10)), 1022
    e = min(max(exponent, low), high)
    scaled = torch.ldexp(lam, torch.tensor(e))
    assert torch.isfinite(scaled).all() and (scaled >= torch.finfo(torch.float64).tiny).all()
    assert torch.equal(f(scaled), f(lam)), (name, e)


@given(st.sampled_from(sorted(SCALE_FREE)), st.integers(3, 40), st.floats(0.5, 12.0), st.floats(-300.0, 300.0), seeds)
def test_scale_free_functions_under_any_decimal_scale(name, k, decades, exponent, seed):
    f = SCALE_FREE[name]
    lam = torch.exp(math.log(10) * decades * -torch.rand(k, generator=_gen(seed), dtype=torch.float64))
    lam = lam / lam[1:].max()  # spans exactly up to 1, down to 10^-decades
    got, ref = f(lam * 10.0**exponent), f(lam)
    # the scaling rounds each entry (relative eps): that moves the value by ~eps, not more
    assert torch.isfinite(got) and math.isclose(got.item(), ref.item(), rel_tol=1e-9, abs_tol=1e-14), (name, exponent)


ENTRY = {
    **SCALE_FREE,
    "margins": margins,
    "softmax_spectrum": lambda x: softmax_spectrum(x)[2],
    "spectral_gd": lambda x: spectral_gd(x, x, lr=0.1, steps=2).a,
}


@given(st.sampled_from(sorted(ENTRY)), st.sampled_from([4, 8, 16]), seeds,
       st.sampled_from([torch.int16, torch.int32, torch.int64, torch.uint8]))
def test_integer_inputs_in_any_form_are_float64(name, k, seed, dtype):
    f = ENTRY[name]
    values = torch.randint(1, 50, (k,), generator=_gen(seed))
    ref = f(values.to(torch.float64))
    for form in (values.tolist(), values.to(dtype), tuple(values.tolist())):
        got = f(form)
        assert got.dtype == torch.float64 and torch.equal(got, ref), (name, type(form))


@given(st.sampled_from(sorted(SCALE_FREE)), st.integers(3, 30), seeds)
def test_float32_inputs_are_computed_in_float64(name, k, seed):
    x = torch.rand(k, generator=_gen(seed)) + 0.1
    assert torch.equal(SCALE_FREE[name](x), SCALE_FREE[name](x.double()))


@given(st.sampled_from(ORDERS), st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64, torch.float16]))
def test_hadamard_matrix_exact_in_every_signed_dtype(n, dtype):
    assert torch.equal(hadamard_matrix(n, dtype=dtype).to(torch.float64), hadamard_matrix(n))


@given(st.sampled_from([torch.bool, torch.uint8, torch.int32, torch.int64]), st.integers(2, 20))
def test_non_integer_values_refuse_integer_dtypes(dtype, k):
    with pytest.raises(TypeError, match="floating dtype"):
        softmax_basis(k, "fourier", dtype=dtype)


# ------------------------------------------------------------------ metrics


@given(st.integers(2, 8), st.integers(2, 12), seeds)
def test_metrics_invariant_to_rotation_translation_and_batching(k, d, seed):
    gen = _gen(seed)
    labels = torch.arange(6 * k) % k
    x = torch.randn(k, d, generator=gen, dtype=torch.float64)[labels] + 0.3 * torch.randn(6 * k, d, generator=gen,
                                                                                          dtype=torch.float64)
    w = torch.randn(k, d, generator=gen, dtype=torch.float64)
    r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    shift = 10 * torch.randn(d, generator=gen, dtype=torch.float64)
    base = neural_collapse(x, labels, w)
    moved = neural_collapse(x @ r.T + shift, labels, w @ r.T)  # rotate features and classifier, translate features
    # nc1 = Tr(Sw Sb^+) / K carries the condition number of Sb: its round-off is about cond(Sb) * eps
    means = torch.stack([x[labels == c].mean(0) for c in range(k)])
    s = torch.linalg.svdvals(means - means.mean(0))
    cond = (s[0] / s[min(k - 1, d) - 1]).item() ** 2
    for key in ("nc1", "equinorm_means", "cos_std_means", "cos_etf_means", "etf_gap_means", "cdnv", "nc3",
                "nc3_duality", "etf_gap_classifier", "equinorm_classifier"):
        rel = max(1e-8, 100 * cond * 2.2e-16) if key == "nc1" else 1e-8
        assert math.isclose(base[key], moved[key], rel_tol=rel, abs_tol=1e-10), (key, cond)
    perm = torch.randperm(len(labels), generator=gen)
    shuffled = neural_collapse(x[perm], labels[perm], w)
    for key, value in base.items():
        rel = max(1e-10, 100 * cond * 2.2e-16) if key in ("nc1", "nc1_trace") else 1e-10
        assert math.isclose(value, shuffled[key], rel_tol=rel, abs_tol=1e-12), (key, cond)
