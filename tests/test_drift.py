"""hadainit.drift: the initial basis as an explicit object, and the full drift from it (SPEC section 6)."""

import copy
import math

import pytest
import torch

import hadainit
from hadainit.bases import basis_matrix
from hadainit.drift import DRIFT_KEYS, InitialBasis, drift, initial_basis, leakage, principal_angles
from hadainit.ufm import UFM
from tests.metrics_reference import reference_drift

GEN = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _hadamard(k, d, seed=0, **kwargs):
    return hadainit.hadamard_(torch.empty(k, d, dtype=torch.float64), generator=GEN(seed), **kwargs)


@pytest.mark.parametrize("k,d,kind", [(8, 32, "walsh"), (10, 24, "fourier"), (12, 12, "hadamard"), (5, 9, "fourier")])
def test_recovered_basis_reproduces_the_initialization(k, d, kind):
    w0 = _hadamard(k, d, basis=kind)
    basis = initial_basis(copy.deepcopy(w0), kind)  # the kind named: no record is needed
    assert basis.kind == kind and not basis.guessed
    assert torch.allclose(basis.left, basis_matrix(k, kind), atol=0)
    core = basis.left.T @ w0 @ basis.right
    assert torch.allclose(core, torch.diag(torch.diagonal(core)), atol=1e-14)
    _, returned = hadainit.hadamard_(torch.empty(k, d, dtype=torch.float64), basis=kind, generator=GEN(0),
                                     return_basis=True)  # the same draw as _hadamard (checked below)
    assert torch.allclose(returned.left.T @ w0 @ returned.right, core, atol=1e-14)
    assert torch.allclose(basis.right, returned.right, atol=1e-13)
    assert all(v < 1e-14 for v in drift(w0, basis).values())


def test_zero_mean_etf_init_and_custom_tensor():
    w0 = _hadamard(8, 16, zero_mean=True)
    basis = initial_basis(w0, "walsh")
    assert torch.allclose(basis.right.T @ basis.right, torch.eye(8, dtype=torch.float64), atol=1e-12)
    assert drift(w0, basis)["drift"] < 1e-14
    q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=GEN(1)))[0]
    w1 = hadainit.hadamard_(torch.empty(6, 10, dtype=torch.float64), basis=q, generator=GEN(2))
    assert initial_basis(w1).kind == "fourier"  # equal singular values: any basis fits, the default is taken
    assert drift(w1, initial_basis(w1, q))["drift"] < 1e-14


def test_kind_detected_from_w0_else_guessed_svd():
    fc = torch.nn.Linear(32, 8)
    hadainit.hadamard_(fc.weight)
    assert initial_basis(fc.weight).kind == "walsh"
    assert initial_basis(copy.deepcopy(fc).weight).kind == "walsh"  # read from the values: deepcopy keeps it
    default = torch.nn.Linear(32, 8).weight
    guess = initial_basis(default)
    assert guess.kind == "svd" and guess.guessed
    assert drift(default, guess)["drift"] < 1e-6  # float32 weights: float32 round-off


def test_wrong_kind_for_the_weights_is_an_error():
    w = torch.nn.Linear(32, 8).weight
    with pytest.raises(ValueError, match="not of the form Q diag"):
        initial_basis(w, "walsh")
    with pytest.raises(ValueError, match="power-of-two"):
        initial_basis(_hadamard(6, 8), "walsh")


def test_full_drift_sees_motion_out_of_the_initial_span():
    # issue 10 item 5: offdiag(Q^T W V0) is blind to a change orthogonal to span(V0)
    k, d = 8, 32
    w0 = _hadamard(k, d)
    basis = initial_basis(w0, "walsh")
    e = torch.randn(k, d, dtype=torch.float64, generator=GEN(3))
    e = e - e @ basis.right @ basis.right.T  # orthogonal to span(V0)
    w = w0 + e
    out = drift(w, basis)
    assert out["drift_offdiag"] < 1e-14
    assert math.isclose(leakage(w, basis.left, basis.right).item(), out["drift_offdiag"], abs_tol=1e-15)
    assert math.isclose(out["drift_out_of_span"], (e.norm() / w.norm()).item(), rel_tol=1e-12)
    assert out["drift"] > 0.5
    assert out["drift_angle"] > 0.1


@pytest.mark.parametrize("k,d", [(8, 32), (10, 10), (12, 5)])
def test_drift_against_a_dense_reference_and_pythagoras(k, d):
    w0 = torch.randn(k, d, dtype=torch.float64, generator=GEN(4))
    basis = initial_basis(w0)
    w = w0 + 0.3 * torch.randn(k, d, dtype=torch.float64, generator=GEN(5))
    out, ref = drift(w, basis), reference_drift(w, basis.left, basis.right)
    assert tuple(out) == DRIFT_KEYS
    for key in DRIFT_KEYS:
        assert math.isclose(out[key], ref[key], rel_tol=1e-10, abs_tol=1e-14), key
    assert math.isclose(out["drift"] ** 2, out["drift_offdiag"] ** 2 + out["drift_out_of_span"] ** 2, rel_tol=1e-12)


def test_spectral_ufm_does_not_drift():
    k = 8
    a = torch.linspace(0.5, 2.0, k, dtype=torch.float64)
    model = UFM.from_spectrum(k, 16, a, generator=GEN(6))
    basis = initial_basis(model.W.detach().clone(), "walsh")
    model.gradient_descent(1.0, 300, record=())
    out = drift(model.W.detach(), basis)
    assert out["drift"] < 1e-13 and out["drift_angle"] < 1e-7


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_drift_is_exact_at_any_finite_scale(scale):
    w0 = _hadamard(8, 16)
    basis = initial_basis(w0, "walsh")
    w = w0 + 0.1 * torch.randn(8, 16, dtype=torch.float64, generator=GEN(7))
    ref = drift(w, basis)
    out = drift(w * scale, basis)
    for key in DRIFT_KEYS:
        assert math.isclose(out[key], ref[key], rel_tol=1e-12), key
    assert math.isclose(leakage(w * scale, basis.left, basis.right).item(), ref["drift_offdiag"], rel_tol=1e-12)


def test_undefined_drift_is_an_error():
    basis = initial_basis(_hadamard(4, 8), "walsh")
    with pytest.raises(ValueError, match="zero"):
        drift(torch.zeros(4, 8), basis)
    with pytest.raises(ValueError, match="zero"):
        leakage(torch.zeros(4, 8), basis.left, basis.right)
    with pytest.raises(ValueError, match="NaN or Inf"):
        drift(torch.full((4, 8), math.nan), basis)
    with pytest.raises(ValueError, match=r"\(4, 8\) weight"):
        drift(torch.randn(4, 9), basis)
    with pytest.raises(TypeError, match="InitialBasis"):
        drift(torch.randn(4, 8), (basis.left, basis.right))


def test_rank_deficient_weight_has_a_right_angle():
    basis = initial_basis(_hadamard(4, 8), "walsh")
    w = torch.zeros(4, 8, dtype=torch.float64)
    w[0, 0] = 1.0  # rank 1 < 4: some direction of span(V0) is orthogonal to the row space
    assert drift(w, basis)["drift_angle"] == math.pi / 2


def test_basis_validation_and_state_round_trip():
    basis = initial_basis(_hadamard(4, 8), "walsh")
    again = InitialBasis.from_state_dict(basis.state_dict(), shape=(4, 8))
    assert again.kind == "walsh" and torch.equal(again.right, basis.right)
    state = basis.state_dict()
    with pytest.raises(ValueError, match="missing the key 'right'"):
        InitialBasis.from_state_dict({k: v for k, v in state.items() if k != "right"})
    with pytest.raises(ValueError, match=r"\(4, 8\) weight, the classifier is \(4, 9\)"):
        InitialBasis.from_state_dict(state, shape=(4, 9))
    with pytest.raises(ValueError, match="NaN or Inf"):
        InitialBasis.from_state_dict({**state, "right": torch.full((8, 4), math.nan)})
    with pytest.raises(ValueError, match="orthonormal"):
        InitialBasis("walsh", basis.left, 2 * basis.right)
    with pytest.raises(ValueError, match="kind"):
        InitialBasis("dct", basis.left, basis.right)


def test_principal_angles_are_accurate_when_tiny():
    d, r, eps = 10, 3, 1e-9
    a = torch.eye(d, dtype=torch.float64)[:, :r]
    b = a.clone()
    b[:, 0] = torch.tensor([math.cos(eps)] + [0.0] * (r - 1) + [math.sin(eps)] + [0.0] * (d - r - 1), dtype=torch.float64)
    angles = principal_angles(a, b)
    assert math.isclose(angles.max().item(), eps, rel_tol=1e-9)
    assert angles[0] == 0.0 and torch.all(angles[1:] >= angles[:-1])
