"""The forecaster's power-law time map and per-mode rates (issue 25), and the flow's ``mode_rates``.

References: dense gradient descent preconditioned by Q diag(r) Q^T (the exact model the per-mode
flow reduces), the flow itself run at a rescaled time, and series generated from known
parameters, which a fit must recover.
"""

import math

import pytest
import torch

from hadainit.ufm import UFM, spectral_flow
from hadainit.ufm.forecast import SpectrumForecast, evaluate_forecast, fit_forecast, spectral_margin

F64 = torch.float64


def _dense_lam(k, d, a, rates, lr, steps, basis):
    """Dense GD on W, H from a spectral init, preconditioned on the left of W and the right of H."""
    model = UFM.from_spectrum(k, d, a, a, basis=basis, generator=torch.Generator().manual_seed(0))
    q = model.left
    p = q @ torch.diag(rates) @ q.T
    w, h = model.W.detach().clone(), model.H.detach().clone()
    y = torch.eye(k, dtype=F64)
    for _ in range(steps):
        g = (torch.softmax(w @ h, dim=0) - y) / k
        gw, gh = g @ h.T, w.T @ g
        w, h = w - lr * p @ gw, h - lr * gh @ p
    return torch.diagonal(q.T @ (w @ h) @ q), q.T @ (w @ h) @ q


@pytest.mark.parametrize("basis,k", [("walsh", 8), ("fourier", 6)])
def test_mode_rates_are_preconditioned_dense_gd(basis, k):
    a = torch.linspace(0.3, 1.1, k, dtype=F64)
    a[0] = 0.5
    if basis == "fourier":
        a[1:5] = torch.tensor([0.4, 0.4, 0.9, 0.9], dtype=F64)  # a cos/sin pair shares its singular value
        rates = torch.tensor([1.0, 0.4, 0.4, 2.5, 2.5, 1.7], dtype=F64)
    else:
        rates = torch.tensor([1.0, 0.3, 2.0, 0.7, 1.5, 3.0, 0.5, 1.2], dtype=F64)
    lr, steps = 2e-4, 2000
    lam_dense, z = _dense_lam(k, 2 * k, a, rates, lr, steps, basis)
    flow = spectral_flow(a, a, [lr * steps], basis=basis, mode_rates=rates, rtol=1e-11, atol=1e-14)
    plain = spectral_flow(a, a, [lr * steps], basis=basis, rtol=1e-11, atol=1e-14)
    lam_flow, lam_plain = flow.lam[0], plain.lam[0]
    # the preconditioned GD keeps the frozen vectors: Q^T Z Q stays diagonal to round-off
    off = z - torch.diag(torch.diagonal(z))
    assert off.abs().max() < 1e-12 * z.abs().max()
    # GD vs flow: first order in lr; the rates move the spectrum by far more than that
    gd_error = (lam_dense[1:] - lam_flow[1:]).abs().max().item()
    assert gd_error < 50 * lr * lam_flow[1:].abs().max().item()
    assert (lam_plain[1:] - lam_flow[1:]).abs().max().item() > 100 * gd_error


def test_equal_rates_rescale_time():
    a = torch.tensor([0.0, 0.2, 0.5, 0.9], dtype=F64)
    c = 2.75
    fast = spectral_flow(a, a, [0.5, 3.0], basis="walsh", mode_rates=torch.full((4,), c, dtype=F64), rtol=1e-12)
    ref = spectral_flow(a, a, [0.5 * c, 3.0 * c], basis="walsh", rtol=1e-12)
    torch.testing.assert_close(fast.lam, ref.lam, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("rates,match", [
    (torch.ones(3, dtype=F64), "shape"),
    (torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0], dtype=F64), "positive"),
    (torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0], dtype=F64), "positive"),
    (torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 1.0], dtype=F64), "pair"),
    (torch.tensor([1.0, 2.0, 2.0, 1.0, 3.0, 3.0], dtype=F64), "pair"),
])
def test_mode_rates_refused(rates, match):
    a = torch.full((6,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match=match):
        spectral_flow(a, a, [1.0], basis="fourier", mode_rates=rates)


def _truth(kind="walsh", power=0.5, rates=None):
    lam0 = torch.tensor([0.05, 0.08, 0.12, 0.03, 0.10, 0.06, 0.09], dtype=F64)
    return SpectrumForecast(kind, 4.0, lam0, 0.35, math.nan, power=power, rates=rates)


def test_flow_time_and_its_inverse():
    for power in (1.0, 0.5, 0.0, -0.5, 2.0):
        f = _truth(power=power)
        e = torch.tensor([4.0, 5.0, 9.0, 40.0], dtype=F64)
        t = f.flow_time(e)
        assert t[0] == 0 and (t.diff() > 0).all()
        back = torch.tensor([f.epoch_at(x) for x in t.tolist()], dtype=F64)
        torch.testing.assert_close(back, e, rtol=1e-12, atol=0)
    linear = _truth(power=1.0)
    torch.testing.assert_close(linear.flow_time(torch.tensor([9.0], dtype=F64)), torch.tensor([0.35 * 5], dtype=F64))
    bounded = _truth(power=-0.5)  # flow time never exceeds s e0 / 0.5
    assert bounded.epoch_at(0.35 * 4.0 / 0.5 * 1.0001) == math.inf


def test_power_map_recovered_and_beats_linear():
    truth = _truth(power=0.4)
    epochs = torch.arange(4.0, 40.0, 3.0, dtype=F64)
    lam = truth.predict(epochs)["lam"]
    fit = fit_forecast(epochs[:7], lam[:7], basis="walsh", time_map="power")
    assert abs(fit.power - 0.4) < 1e-3
    assert abs(fit.time_scale / 0.35 - 1) < 1e-3
    power = evaluate_forecast(epochs, lam, fit_until=epochs[6].item(), basis="walsh", time_map="power")
    linear = evaluate_forecast(epochs, lam, fit_until=epochs[6].item(), basis="walsh")
    assert power["forecast"]["spectrum"] < 1e-4
    assert linear["forecast"]["spectrum"] > 10 * power["forecast"]["spectrum"]
    assert linear["power"] == 1.0 and linear["rates"] is None


def test_per_mode_rates_recovered():
    rates = torch.tensor([0.5, 1.6, 0.8, 2.0, 1.0, 0.7, 1.3], dtype=F64)
    rates = rates / rates.log().mean().exp()  # geometric mean 1: the scale is the time scale's
    truth = _truth(power=1.0, rates=rates)
    epochs = torch.arange(4.0, 30.0, 2.0, dtype=F64)
    lam = truth.predict(epochs)["lam"]
    fit = fit_forecast(epochs, lam, basis="walsh", rates="per_mode")
    torch.testing.assert_close(fit.rates, rates, rtol=2e-3, atol=0)
    assert abs(fit.time_scale / 0.35 - 1) < 2e-3
    assert fit.fit_error < 1e-5
    shared = fit_forecast(epochs, lam, basis="walsh")
    assert shared.fit_error > 100 * fit.fit_error


def test_per_mode_rates_fourier_pairs_tied():
    lam0 = torch.tensor([0.05, 0.05, 0.1, 0.1, 0.07], dtype=F64)  # K = 6: pairs (1, 2), (3, 4), and 5
    truth = SpectrumForecast("fourier", 2.0, lam0, 0.5, math.nan, rates=torch.tensor([0.6, 0.6, 1.5, 1.5, 1.1],
                                                                                       dtype=F64))
    epochs = torch.arange(2.0, 20.0, 2.0, dtype=F64)
    fit = fit_forecast(epochs, truth.predict(epochs)["lam"], basis="fourier", rates="per_mode")
    assert torch.equal(fit.rates[[0, 2]], fit.rates[[1, 3]])
    expected = truth.rates / truth.rates.log().mean().exp()
    torch.testing.assert_close(fit.rates, expected, rtol=2e-3, atol=0)


def test_epochs_to_margin_on_a_power_map():
    f = _truth(power=0.5)
    gamma = float(spectral_margin(f.lam0, "walsh")) + 0.05
    e = f.epochs_to_margin(gamma)
    assert math.isfinite(e) and e > f.epoch0
    reached = f.predict(torch.tensor([e], dtype=F64))["margin"].item()
    assert abs(reached - gamma) < 1e-6


def test_bad_options():
    epochs = torch.arange(0.0, 8.0, dtype=F64)
    lam = _truth(power=1.0).predict(epochs + 4.0)["lam"]
    with pytest.raises(ValueError, match="time_map"):
        fit_forecast(epochs, lam, time_map="cubic")
    with pytest.raises(ValueError, match="rates"):
        fit_forecast(epochs, lam, rates="each")
    with pytest.raises(ValueError, match="start epoch > 0"):
        fit_forecast(epochs, lam, time_map="power")
    with pytest.raises(TypeError, match="power_range"):
        fit_forecast(epochs + 1, lam, time_map="power", power_range=1.0)
    with pytest.raises(ValueError, match="power_range"):
        fit_forecast(epochs + 1, lam, time_map="power", power_range=(2.0, 1.0))
