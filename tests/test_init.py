import math

import pytest
import torch
from torch import nn

from hadainit import DEFAULT_GAIN, hadamard_, spectral_init
from hadainit.bases import paired_spectrum, softmax_basis
from tests.conftest import cuda


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(2, 2), (10, 64), (16, 16), (100, 512), (12, 30)])
@pytest.mark.parametrize("basis", ["auto", "fourier", "hadamard"])
def test_rows_orthogonal_with_norm_gain(shape, basis):
    if basis == "hadamard" and shape[0] not in (2, 12, 16):
        pytest.skip("no Hadamard matrix of that order")
    w = torch.empty(*shape, dtype=torch.float64)
    out = hadamard_(w, 0.7, basis=basis, generator=_gen())
    assert out is w
    assert torch.allclose(w @ w.T, 0.49 * torch.eye(shape[0], dtype=torch.float64), atol=1e-13)
    w2, rec = hadamard_(torch.empty(*shape, dtype=torch.float64), 0.7, basis=basis, generator=_gen(), return_basis=True)
    assert torch.equal(w2, w)  # return_basis changes nothing in the values
    # W = Q diag(gain) V^T with the recorded Q and V
    assert torch.allclose(rec.left.T @ w @ rec.right, 0.7 * torch.eye(shape[0], dtype=torch.float64), atol=1e-13)
    assert torch.allclose(rec.right.T @ rec.right, torch.eye(shape[0], dtype=torch.float64), atol=1e-13)


def test_default_gain_matches_nn_linear_default_row_norm():
    # independent: the empirical mean squared row norm of nn.Linear's own default init
    torch.manual_seed(0)
    lin = nn.Linear(2048, 512)
    mean_sq = lin.weight.detach().double().pow(2).sum(1).mean().item()
    assert abs(mean_sq - DEFAULT_GAIN**2) < 0.01 * DEFAULT_GAIN**2
    w = hadamard_(torch.empty(512, 2048))
    assert torch.allclose(w.double().pow(2).sum(1), torch.full((512,), DEFAULT_GAIN**2, dtype=torch.float64), rtol=1e-5)


@pytest.mark.parametrize("k, d", [(2, 3), (8, 8), (10, 32), (64, 100)])
def test_zero_mean_rows_form_a_simplex_etf(k, d):
    w = hadamard_(torch.empty(k, d, dtype=torch.float64), 1.5, zero_mean=True, generator=_gen())
    assert torch.allclose(w.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-13)
    gram = w @ w.T
    expected = 1.5**2 * (torch.eye(k, dtype=torch.float64) * (1 + 1 / (k - 1)) - 1 / (k - 1))
    assert torch.allclose(gram, expected, atol=1e-13)  # norms 1.5, cosines -1/(K-1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_float_dtype(dtype):
    w = hadamard_(torch.empty(8, 32, dtype=dtype), generator=_gen())
    assert w.dtype == dtype
    tol = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-6, torch.float64: 1e-14}[dtype]
    gram = w.double() @ w.double().T
    assert torch.allclose(gram, torch.eye(8, dtype=torch.float64) / 3, atol=tol)


def test_generator_reproducible_and_seed_dependent():
    a = hadamard_(torch.empty(10, 40), generator=_gen(5))
    b = hadamard_(torch.empty(10, 40), generator=_gen(5))
    c = hadamard_(torch.empty(10, 40), generator=_gen(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_nn_linear_parameter_in_place():
    lin = nn.Linear(64, 10)
    hadamard_(lin.weight, generator=_gen())
    assert lin.weight.requires_grad
    assert torch.allclose(lin.weight @ lin.weight.T, torch.eye(10) / 3, atol=1e-6)
    assert hadamard_(lin.weight, generator=_gen(), return_basis=True)[1].kind == "fourier"


@pytest.mark.parametrize(
    "tensor, kwargs, exc, match",
    [
        # K > d is accepted since mode sets (docs/theory.md §8); a non-diagonalizing basis is not
        (torch.empty(12, 10), {"basis": "hadamard"}, ValueError, r"\(12, 10\)"),
        (torch.empty(1, 10), {}, ValueError, r"\(1, 10\)"),
        (torch.empty(10), {}, ValueError, r"2-D.*\(10,\)"),
        (torch.empty(2, 3, 4), {}, ValueError, r"\(2, 3, 4\)"),
        (torch.empty(4, 8, dtype=torch.int64), {}, TypeError, "floating"),
        (torch.empty(4, 8), {"gain": -1.0}, ValueError, "gain"),
        (torch.empty(4, 8), {"gain": float("nan")}, ValueError, "gain"),
        (torch.empty(10, 20), {"basis": "walsh"}, ValueError, "power-of-two"),
        (torch.empty(6, 20), {"basis": "hadamard"}, ValueError, "order 6"),
        (torch.empty(4, 8), {"basis": torch.ones(4, 4)}, ValueError, "orthonormal"),
        (torch.empty(4, 8), {"generator": 3}, TypeError, "Generator"),
    ],
)
def test_bad_input(tensor, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        hadamard_(tensor, **kwargs)


@cuda
def test_cuda_tensor():
    w = hadamard_(torch.empty(10, 64, device="cuda"))
    assert w.is_cuda
    assert torch.allclose(w @ w.T, torch.eye(10, device="cuda") / 3, atol=1e-5)


# ------------------------------------------------------------------ spectral_init


@pytest.mark.parametrize("k, basis, n", [(8, "walsh", 1), (8, "walsh", 3), (7, "fourier", 1), (10, "fourier", 2)])
def test_spectral_init_structure(k, basis, n):
    gen = _gen(1)
    a = paired_spectrum(0.5 + torch.rand(k, generator=gen, dtype=torch.float64), basis)
    b = paired_spectrum(0.5 + torch.rand(k, generator=gen, dtype=torch.float64), basis)
    v, _ = torch.linalg.qr(torch.randn(2 * k, k, generator=gen, dtype=torch.float64))
    w, h = spectral_init(k, 2 * k, a, b, basis=basis, samples_per_class=n, right=v)
    q = softmax_basis(k, basis)
    assert w.shape == (k, 2 * k) and h.shape == (2 * k, n * k)
    assert torch.allclose(q.T @ w @ v, torch.diag(a), atol=1e-14)
    for j in range(n):  # every class's n columns equal V diag(b) Q^T
        assert torch.allclose(v.T @ h[:, j::n] @ q, torch.diag(b), atol=1e-14)
    # logits of the class means are Q diag(a b) Q^T
    assert torch.allclose(w @ h[:, ::n], q @ torch.diag(a * b) @ q.T, atol=1e-14)


def test_spectral_init_balanced_default():
    a = torch.linspace(1, 2, 8, dtype=torch.float64)
    w, h = spectral_init(8, 12, a, samples_per_class=4, generator=_gen())
    q = softmax_basis(8)
    b = torch.linalg.svdvals(h[:, ::4])
    assert torch.allclose(torch.sort(b).values, torch.sort(a / 2).values, atol=1e-14)  # a^2 = n b^2
    assert torch.allclose(torch.sort(torch.linalg.svdvals(w)).values, a, atol=1e-14)
    assert torch.allclose(q.T @ w @ w.T @ q, torch.diag(a**2), atol=1e-13)


def test_spectral_init_rejects_bad_input():
    with pytest.raises(ValueError, match="modes 1 and 2"):
        spectral_init(6, 8, [1.0, 1.0, 2.0, 3.0, 3.0, 1.0], basis="fourier")
    with pytest.raises(ValueError, match="modes 3 and 4"):
        spectral_init(6, 8, [1.0] * 6, [1.0, 2.0, 2.0, 3.0, 1.0, 1.0], basis="fourier")
    with pytest.raises(ValueError, match="d=4 < K=8"):
        spectral_init(8, 4, [1.0] * 8)
    with pytest.raises(ValueError, match="length 8"):
        spectral_init(8, 8, [1.0] * 7)
    with pytest.raises(ValueError, match="finite"):
        spectral_init(4, 8, [1.0, math.inf, 1.0, 1.0])
    with pytest.raises(ValueError, match="orthonormal"):
        spectral_init(4, 8, [1.0] * 4, right=torch.ones(8, 4))
    with pytest.raises(ValueError, match="samples_per_class"):
        spectral_init(4, 8, [1.0] * 4, samples_per_class=0)


# ------------------------------------------------------------ K > d: mode sets (docs/theory.md §8)

from hadainit.bases import basis_matrix  # noqa: E402
from hadainit.drift import InitialBasis, drift, initial_basis  # noqa: E402


@pytest.mark.parametrize("k, d, basis, modes", [
    (16, 5, "walsh", "auto"), (16, 5, "walsh", [1, 2, 4, 8, 3]), (12, 7, "fourier", "auto"), (13, 6, "fourier", "auto"),
    (10, 3, "fourier", [1, 2, 9]), (11, 10, "fourier", "auto"), (64, 9, "walsh", "auto"), (16, 5, "walsh", "first"),
])
def test_k_gt_d_is_q_s_diag_v(k, d, basis, modes):
    # independent: the dense K x K basis of the kind, restricted to the recorded modes
    w, rec = hadamard_(torch.empty(k, d, dtype=torch.float64), 0.8, basis=basis, modes=modes, generator=_gen(),
                       return_basis=True)
    q = basis_matrix(k, basis)
    s = rec.modes
    r = s.numel()
    assert r <= min(d, k) and torch.equal(rec.left, q[:, s])
    assert torch.allclose(rec.right.T @ rec.right, torch.eye(r, dtype=torch.float64), atol=1e-14)
    # W = Q_S diag(s) V^T with equal s: the coefficients of W in the full basis vanish off S
    coeff = q.T @ w @ rec.right
    expected = torch.zeros(k, r, dtype=torch.float64)
    expected[s, torch.arange(r)] = 0.8 * math.sqrt(k / r)
    assert torch.allclose(coeff, expected, atol=1e-13)
    if modes != "first":
        assert 0 not in s.tolist()
        assert torch.allclose(w.norm(dim=1), torch.full((k,), 0.8, dtype=torch.float64), atol=1e-13)  # rows of norm gain
    assert torch.allclose(w.pow(2).sum(), torch.tensor(k * 0.64, dtype=torch.float64), rtol=1e-13)
    if not isinstance(modes, str):
        assert s.tolist() == sorted(modes)


def test_k_gt_d_record_and_monitor_basis_agree():
    w = torch.empty(1000, 64)
    w, basis = hadamard_(w, generator=_gen(), return_basis=True)
    assert basis.left.shape == (1000, 64)
    for recovered in (initial_basis(w), initial_basis(w.detach().clone(), "fourier")):  # detected, and named
        assert torch.equal(recovered.modes, basis.modes)
        assert torch.allclose(recovered.right, basis.right, atol=1e-6)  # float32 weight
    d = drift(w, basis)
    assert d["drift"] < 1e-6 and d["drift_out_of_span"] < 1e-6
    back = InitialBasis.from_state_dict(basis.state_dict(), shape=(1000, 64))
    assert "left" not in basis.state_dict() and torch.equal(back.left, basis.left)


def test_hoffer_truncation_keeps_constant_and_can_merge_classes():
    # first d columns of H_K, constant included: for K = 16, d = 8 rows j and j + 8 coincide (H_16 = [[H8, H8], [H8, -H8]])
    w, rec = hadamard_(torch.empty(16, 8, dtype=torch.float64), modes="first", generator=_gen(), return_basis=True)
    assert torch.equal(rec.modes, torch.arange(8))
    assert torch.allclose(w[:8], w[8:], atol=1e-15)
    w = hadamard_(torch.empty(16, 8, dtype=torch.float64), generator=_gen())  # auto separates every pair
    dist = torch.cdist(w, w) + torch.eye(16, dtype=torch.float64)
    assert dist.min() > 0.1


@pytest.mark.parametrize("shape, kwargs, match", [
    ((16, 5), {"modes": [1, 2, 4, 3]}, "rank 3"),  # cannot separate: spans only GF(2)^3
    ((16, 5), {"modes": [1, 2, 4, 8, 3, 5]}, "more than r"),
    ((12, 7), {"modes": [1, 2, 3]}, "splits a fourier"),
    ((12, 7), {"modes": [3, 4, 7, 8]}, "gcd"),  # frequencies 2 and 4 share 2 with K = 12
    ((12, 7), {"modes": [0, 1, 2]}, "constant mode"),
    ((12, 7), {"modes": "best"}, "modes must be"),
    ((12, 7), {"modes": [1.0, 2.0]}, "integer"),
    ((16, 5), {"modes": "first", "zero_mean": True}, "zero_mean"),
    ((16, 2), {}, "log2 K"),  # 2 modes cannot span GF(2)^4
    ((12, 10), {"basis": torch.eye(12)}, r"\(12, 10\)"),
])
def test_k_gt_d_refusals(shape, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        hadamard_(torch.empty(*shape), **kwargs)


def test_large_head_is_built_without_a_k_by_k_matrix():
    # 50,257 x 768 (a GPT-2 head): a K x K float64 Q would be 20 GB; the init builds only K x r columns
    w, rec = hadamard_(torch.empty(5003, 96), generator=_gen(), return_basis=True)  # a smaller K keeps it fast
    assert rec.left.shape == (5003, 96) and rec.modes.numel() == 96
    assert torch.allclose(w.double().norm(dim=1), torch.full((5003,), DEFAULT_GAIN, dtype=torch.float64), atol=1e-6)
