"""One basis object: ``InitialBasis`` is the only record of a classifier's initial basis (issue 23).

``hadamard_`` leaves nothing on the tensor; the basis is returned (``return_basis=True``) or read
back from W(0) itself (``detect_basis``), deterministically, so copies of the weights give the same.
"""

import ast
import copy
import importlib
import io
import math
import pathlib
import pickle

import pytest
import torch
from torch import nn

import hadainit
from hadainit.bases import basis_matrix
from hadainit.basis import INIT_BASIS_KINDS, SOURCES, InitialBasis
from hadainit.drift import detect_basis, drift, initial_basis, leakage, monitor_basis
from hadainit.init import spectral_init

GEN = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _same(a: InitialBasis, b: InitialBasis) -> bool:
    modes_equal = (a.modes is None and b.modes is None) or (
        a.modes is not None and b.modes is not None and torch.equal(a.modes, b.modes))
    return a.kind == b.kind and torch.equal(a.left, b.left) and torch.equal(a.right, b.right) and modes_equal


@pytest.mark.parametrize("shape", [(10, 32), (16, 16), (1000, 64)])
def test_hadamard_leaves_no_attribute_on_the_tensor(shape):
    w = torch.empty(*shape)
    hadainit.hadamard_(w, generator=GEN(0))
    assert vars(w) == {}
    lin = nn.Linear(shape[1], shape[0])
    hadainit.hadamard_(lin.weight, generator=GEN(0))
    assert lin.weight.__dict__ == {} or set(lin.weight.__dict__) <= set(vars(nn.Parameter(torch.empty(1))))
    assert not any("hadainit" in name for name in dir(lin.weight))


@pytest.mark.parametrize("shape", [(8, 32), (10, 24), (1000, 64), (1024, 64)])
def test_deepcopy_and_pickle_of_a_hadamard_model_give_the_same_monitor_basis(shape):
    model = nn.Sequential(nn.Linear(7, shape[1]), nn.ReLU(), nn.Linear(shape[1], shape[0]))
    _, returned = hadainit.hadamard_(model[2].weight, generator=GEN(1), return_basis=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded = nn.Sequential(nn.Linear(7, shape[1]), nn.ReLU(), nn.Linear(shape[1], shape[0]))
    loaded.load_state_dict(torch.load(buf))
    copies = (model, copy.deepcopy(model), pickle.loads(pickle.dumps(model)), loaded)
    bases = [monitor_basis(m[2].weight) for m in copies]
    assert all(warning is None for _, warning in bases)
    first = bases[0][0]
    assert all(_same(first, b) for b, _ in bases[1:])
    # and it is the basis hadamard_ returned, up to float32 round-off of the weight
    assert first.kind == returned.kind
    if returned.modes is not None:
        assert torch.equal(first.modes, returned.modes)
    assert torch.allclose(first.right, returned.right, atol=1e-5)
    assert drift(model[2].weight, first)["drift"] < 1e-5
    # the object itself survives deepcopy and pickling
    for again in (copy.deepcopy(returned), pickle.loads(pickle.dumps(returned))):
        assert _same(again, returned)


@pytest.mark.parametrize("k, d, kind", [(8, 32, "walsh"), (16, 20, "fourier"), (10, 24, "fourier"), (16, 16, "walsh")])
def test_detection_with_distinct_singular_values(k, d, kind):
    # distinct singular values (equal within fourier pairs): W0 is spectral in its own basis only
    a = torch.linspace(1.0, 2.0, k, dtype=torch.float64)
    if kind == "fourier":
        a = hadainit.paired_spectrum(a, "fourier")  # equal within (cos, sin) pairs, distinct across
    w0, _ = spectral_init(k, d, a, basis=kind, generator=GEN(2))
    basis = detect_basis(w0)
    assert basis.kind == kind and not basis.guessed
    assert torch.equal(basis.left, basis_matrix(k, kind))
    assert drift(w0, basis)["drift"] < 1e-12
    # a walsh-spectral W0 at K = 16 is not fourier-spectral, and vice versa: the other kind is refused
    if k == 16:
        with pytest.raises(ValueError, match="not of the form"):
            initial_basis(w0, "fourier" if kind == "walsh" else "walsh")


@pytest.mark.parametrize("k, d, kind", [(1000, 64, "fourier"), (1024, 64, "walsh"), (16, 5, "fourier"), (16, 5, "walsh")])
def test_detection_of_k_above_d_mode_sets(k, d, kind):
    w, returned = hadainit.hadamard_(torch.empty(k, d, dtype=torch.float64), basis=kind, generator=GEN(3),
                                     return_basis=True)
    basis = detect_basis(w)
    assert basis.kind == kind and torch.equal(basis.modes, returned.modes)
    assert torch.allclose(basis.right, returned.right, atol=1e-12)


@pytest.mark.parametrize("k, default", [(8, "walsh"), (10, "fourier")])
def test_random_orthogonal_init_is_ambiguous_and_gets_the_default_basis(k, default):
    # equal singular values: W0 = Q (s I) V^T for every orthogonal Q; documented: hadamard_'s default for K
    w = torch.empty(k, 32, dtype=torch.float64)
    torch.nn.init.orthogonal_(w, generator=GEN(4))
    basis = detect_basis(w)
    assert basis.kind == default and not basis.guessed
    assert drift(w, basis)["drift"] < 1e-12


def test_non_spectral_init_falls_back_to_the_svd_with_the_warning():
    torch.manual_seed(5)
    w = nn.Linear(32, 10).weight
    basis, warning = monitor_basis(w)
    assert basis.kind == "svd" and basis.guessed
    assert warning is not None and "initial basis is not known" in warning
    u, _, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    assert torch.allclose(basis.left.abs(), u.abs(), atol=1e-12)  # the SVD of W0 (columns up to sign)


def test_monitor_basis_takes_an_initial_basis_object_and_checks_it():
    w, returned = hadainit.hadamard_(torch.empty(16, 32, dtype=torch.float64), basis="fourier", generator=GEN(6),
                                     return_basis=True)
    basis, warning = monitor_basis(w, returned)
    assert basis is returned and warning is None
    assert monitor_basis(w, "fourier")[0].kind == "fourier"
    with pytest.raises(ValueError, match="belongs to"):
        monitor_basis(torch.empty(16, 30).normal_(), returned)
    with pytest.raises(ValueError, match="does not fit"):
        monitor_basis(torch.randn(16, 32, dtype=torch.float64, generator=GEN(7)), returned)
    with pytest.raises(ValueError, match="expected one of"):
        monitor_basis(w, "dct")


def test_valid_kinds_are_defined_once():
    assert set(INIT_BASIS_KINDS) == {"auto", "walsh", "fourier", "hadamard", "svd"}
    assert set(SOURCES) == {"walsh", "fourier", "hadamard", "custom", "svd"}
    assert hadainit.INIT_BASIS_KINDS is INIT_BASIS_KINDS


def test_drift_does_not_import_init():
    # the old import circle hadainit/drift.py <-> hadainit/init.py
    drift_module = importlib.import_module("hadainit.drift")  # the attribute hadainit.drift is the function
    tree = ast.parse(pathlib.Path(drift_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "init" not in imported and not any(m and m.endswith(".init") for m in imported)


def test_returned_basis_reproduces_the_weight():
    w, basis = hadainit.hadamard_(torch.empty(12, 20, dtype=torch.float64), 0.7, generator=GEN(8), return_basis=True)
    assert torch.allclose(basis.left.T @ w @ basis.right, 0.7 * torch.eye(12, dtype=torch.float64), atol=1e-13)
    assert math.isclose(drift(w, basis)["drift"], 0.0, abs_tol=1e-13)


def test_ufm_holds_an_initial_basis_with_its_kind_and_mode_set():
    from hadainit.ufm import UFM

    model = UFM.from_spectrum(16, 5, [1.0, 2.0, 3.0, 4.0, 5.0], modes=[1, 2, 4, 8, 15], basis="walsh")
    basis = model.basis
    assert isinstance(basis, InitialBasis) and basis.kind == "walsh" and basis.modes.tolist() == [1, 2, 4, 8, 15]
    assert torch.equal(model.left, basis.left) and torch.equal(model.right, basis.right)  # float64 model
    assert torch.equal(basis.left, basis_matrix(16, "walsh")[:, [1, 2, 4, 8, 15]])
    assert _same(copy.deepcopy(model).basis, basis)
    again = UFM(model.W.detach(), model.H.detach(), basis=basis)
    assert again.basis is basis and torch.equal(again.left, model.left)
    with pytest.raises(ValueError, match="not both"):
        UFM(model.W.detach(), model.H.detach(), basis=basis, left=model.left, right=model.right)
    assert UFM.random(4, 8, generator=GEN(9)).basis.kind == "svd"
    assert UFM.from_spectrum(8, 8, torch.ones(8)).basis.kind == "walsh"


def test_leakage_takes_the_basis_and_agrees_with_drift_offdiag():
    w0, basis = hadainit.hadamard_(torch.empty(8, 16, dtype=torch.float64), generator=GEN(10), return_basis=True)
    w = w0 + 0.1 * torch.randn(8, 16, dtype=torch.float64, generator=GEN(11))
    by_object = leakage(w, basis).item()
    assert by_object == leakage(w, basis.left, basis.right).item()
    assert math.isclose(by_object, drift(w, basis)["drift_offdiag"], rel_tol=1e-14)
    # independent: the off-diagonal of Q^T W V by hand
    core = basis.left.T @ w @ basis.right
    expected = (core - torch.diag(torch.diagonal(core))).norm() / w.norm()
    assert math.isclose(by_object, expected.item(), rel_tol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        leakage(w, basis, basis.right)
