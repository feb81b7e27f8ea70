import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hadainit.bases import paired_spectrum
from hadainit.ufm import UFM


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _spectrum(k, basis, gen, low=0.5, high=1.5):
    return paired_spectrum(low + (high - low) * torch.rand(k, generator=gen, dtype=torch.float64), basis)


def test_n1_is_a_two_layer_linear_network_on_one_hot_inputs():
    k, d = 6, 9
    ufm = UFM.random(k, d, std=0.5, generator=_gen())
    net = nn.Sequential(nn.Linear(k, d, bias=False), nn.Linear(d, k, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(ufm.H)  # first layer = H
        net[1].weight.copy_(ufm.W)  # second layer = W
    x, y = torch.eye(k, dtype=torch.float64), torch.arange(k)
    ref = F.cross_entropy(net(x), y)
    ref.backward()
    loss = ufm.loss()
    assert torch.isclose(loss, ref, rtol=1e-14)
    g_w, g_h = ufm.gradients()
    assert torch.allclose(g_w, net[1].weight.grad, atol=1e-15)
    assert torch.allclose(g_h, net[0].weight.grad, atol=1e-15)


@pytest.mark.parametrize("kind", ["ce", "mse"])
@pytest.mark.parametrize("n", [1, 3])
def test_loss_matches_spec_formula(kind, n):
    k, d, wd = 5, 7, (0.01, 0.03)
    ufm = UFM.random(k, d, std=0.7, samples_per_class=n, generator=_gen(1))
    z = (ufm.W @ ufm.H).detach()
    total = 0.0
    for col in range(k * n):
        c = col // n  # column (k, j) is sample j of class k
        if kind == "ce":
            total += -(z[c, col] - torch.logsumexp(z[:, col], 0)).item()
        else:
            total += 0.5 * sum((z[m, col].item() - (m == c)) ** 2 for m in range(k))
    expected = total / (k * n) + 0.005 * ufm.W.pow(2).sum().item() + 0.015 * ufm.H.pow(2).sum().item()
    assert math.isclose(ufm.loss(kind, wd).item(), expected, rel_tol=1e-13)


@pytest.mark.parametrize("kind", ["ce", "mse"])
@pytest.mark.parametrize("n", [1, 3])
def test_closed_form_gradients_equal_autograd(kind, n):
    ufm = UFM.random(5, 7, std=0.7, samples_per_class=n, generator=_gen(2))
    wd = (0.02, 0.05)
    ufm.loss(kind, wd).backward()
    g_w, g_h = ufm.gradients(kind, wd)
    assert torch.allclose(g_w, ufm.W.grad, atol=1e-15)
    assert torch.allclose(g_h, ufm.H.grad, atol=1e-15)


def test_step_updates_both_from_the_old_iterate():
    ufm = UFM.random(4, 6, std=0.5, generator=_gen(3))
    w0, h0 = ufm.W.detach().clone(), ufm.H.detach().clone()
    g_w, g_h = ufm.gradients()
    ufm.step(0.3)
    assert torch.allclose(ufm.W, w0 - 0.3 * g_w, atol=1e-15)
    assert torch.allclose(ufm.H, h0 - 0.3 * g_h, atol=1e-15)


@pytest.mark.parametrize("k, basis", [(8, "walsh"), (16, "walsh"), (7, "fourier"), (10, "fourier")])
@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_singular_vectors_stay_frozen_from_spectral_init(k, basis, kind):
    gen = _gen(4)
    ufm = UFM.from_spectrum(k, 2 * k, _spectrum(k, basis, gen), basis=basis, samples_per_class=2, generator=gen)
    hist = ufm.gradient_descent(0.5, 400, loss=kind, weight_decay=(1e-3, 2e-3), record_every=50)
    assert hist.leakage_W.max() < 1e-13 and hist.leakage_H.max() < 1e-13
    # and the spectrum did move: the dynamics are not trivial
    assert (hist.spectrum_W[-1] - hist.spectrum_W[0]).abs().max() > 1e-2
    # the tracked spectrum is the SVD (up to sign and order)
    assert torch.allclose(
        torch.sort(hist.spectrum_W[-1].abs()).values, torch.sort(torch.linalg.svdvals(ufm.W)).values, atol=1e-12
    )


def test_paley_and_random_inits_leak():
    gen = _gen(5)
    ufm = UFM.from_spectrum(12, 24, _spectrum(12, "hadamard", gen, 0.2, 2.0), basis="hadamard", generator=gen)
    assert ufm.leakage()[0] < 1e-14
    hist = ufm.gradient_descent(1.0, 300, record_every=100)
    assert hist.leakage_W[-1] > 1e-3
    rnd = UFM.random(16, 32, std=0.1, generator=gen)
    assert rnd.leakage()[0] < 1e-14  # the SVD basis of W(0)
    hist = rnd.gradient_descent(1.0, 300, record_every=100)
    assert hist.leakage_W[-1] > 1e-2


def test_recording_schedule_and_contents():
    ufm = UFM.random(4, 6, generator=_gen(6))
    hist = ufm.gradient_descent(0.1, 10, record=("loss", "singular_values"), record_every=4)
    assert hist.step.tolist() == [0, 4, 8, 10]
    assert hist.loss.shape == (4,) and hist.singular_values.shape == (4, 4)
    assert hist.spectrum_W is None and hist.leakage_W is None
    assert (hist.loss[1:] < hist.loss[:-1]).all()


def test_bad_arguments():
    ufm = UFM.random(4, 6, generator=_gen(7))
    with pytest.raises(ValueError, match="unknown loss"):
        ufm.loss("hinge")
    with pytest.raises(ValueError, match="non-negative"):
        ufm.loss("ce", (-1.0, 0.0))
    with pytest.raises(TypeError, match="pair"):
        ufm.loss("ce", 0.1)
    with pytest.raises(ValueError, match="lr"):
        ufm.gradient_descent(-0.1, 10)
    with pytest.raises(ValueError, match="cannot record"):
        ufm.gradient_descent(0.1, 10, record=("margins",))
    with pytest.raises(ValueError, match="K \\* n = 8 columns"):
        UFM(torch.zeros(4, 6), torch.zeros(6, 5), samples_per_class=2)
    with pytest.raises(ValueError, match="finite"):
        UFM(torch.full((4, 6), math.nan), torch.zeros(6, 4))
    with pytest.raises(ValueError, match="tracks no basis"):
        UFM.random(8, 4, generator=_gen()).leakage()
