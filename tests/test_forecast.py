"""The forecaster (hadainit.ufm.forecast): exact on the UFM up to GD discretization, honest on a real network."""

import math

import lightning as L
import pytest
import torch

from hadainit.callbacks import SpectralMonitor
from hadainit.metrics.logits import LogitSpectrum
from hadainit.ufm import UFM, time_to_margin
from hadainit.ufm.forecast import (
    baseline_forecast,
    evaluate_forecast,
    fit_forecast,
    log_epoch_slope,
    spectral_margin,
)
from tests.lightning_helpers import DigitsMLP, digits_loader


def _dense_ufm_run(lr, steps_per_epoch, epochs=16, k=8):
    """Dense full-matrix GD; the spectrum measured from its logits every `steps_per_epoch` steps."""
    a = torch.linspace(0.3, 1.2, k, dtype=torch.float64)
    model = UFM.from_spectrum(k, k, a, generator=torch.Generator().manual_seed(0))
    spectra = []
    for e in range(epochs + 1):
        if e:
            model.gradient_descent(lr, steps_per_epoch, record=())
        metric = LogitSpectrum(k)
        metric.update((model.W @ model.H).T, torch.arange(k))
        spectra.append(metric.compute()["lam"])
    return torch.arange(epochs + 1, dtype=torch.float64), torch.tensor(spectra, dtype=torch.float64)


def test_on_the_ufm_the_time_scale_is_the_step_size_up_to_discretization():
    # one epoch = m steps of size lr: flow time lr * m per epoch, the same in both runs
    results = {}
    for lr, m in [(0.4, 25), (0.2, 50)]:
        epochs, lam = _dense_ufm_run(lr, m)
        results[lr] = evaluate_forecast(epochs, lam, fit_until=8)
        results[lr]["scale_error"] = abs(results[lr]["time_scale"] / (lr * m) - 1)
    coarse, fine = results[0.4], results[0.2]
    assert coarse["scale_error"] < 0.05
    assert 0.4 < fine["scale_error"] / coarse["scale_error"] < 0.6  # first order in lr: GD vs flow
    for key, factor in (("spectrum", 0.2), ("margin", 0.2), ("kl_lyapunov", 0.5)):
        assert fine["forecast"][key] < 0.6 * coarse["forecast"][key], key
        assert coarse["forecast"][key] < factor * coarse["baseline"][key], key  # better than the naive baseline
    assert coarse["forecast"]["spectrum"] < 1e-2


def test_predictions_are_self_consistent():
    epochs, lam = _dense_ufm_run(0.4, 25, epochs=8)
    model = fit_forecast(epochs, lam)
    pred = model.predict(epochs)
    assert torch.allclose(pred["lam"][0], lam[0], rtol=1e-12)  # the flow starts at the measured spectrum
    assert torch.allclose(pred["margin"], spectral_margin(pred["lam"]), rtol=1e-12)
    target = pred["margin"][-1].item() + 1.0
    when = model.epochs_to_margin(target)
    assert math.isclose(model.predict([when])["margin"].item(), target, rel_tol=1e-6)
    assert model.epochs_to_margin(pred["margin"][0].item() - 1.0) == model.epoch0
    base = baseline_forecast(epochs[1:], lam[1:]).predict(torch.tensor([20.0, 40.0]))
    ratio = base["lam"] / lam[-1]  # the baseline keeps the last spectrum's shape
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12)
    assert torch.allclose(base["margin"], spectral_margin(base["lam"]), rtol=1e-12)


def test_log_epoch_slope_and_the_ufm_slowdown_law():
    e = torch.tensor([1.0, 2.0, 5.0, 10.0, 50.0], dtype=torch.float64)
    slope, intercept = log_epoch_slope(torch.cat((torch.zeros(1, dtype=torch.float64), e)),
                                       torch.cat((torch.tensor([-7.0], dtype=torch.float64), 2 * e.log() + 3)))
    assert math.isclose(slope, 2.0, rel_tol=1e-12) and math.isclose(intercept, 3.0, rel_tol=1e-12)  # epoch 0 ignored
    gammas = torch.tensor([18.0, 21.0, 24.0, 27.0, 30.0], dtype=torch.float64)
    times = time_to_margin(gammas, lam0=1.0, num_classes=8)
    slope, _ = log_epoch_slope(times, gammas)  # margin per e-fold of time: gamma / (gamma - 1) -> 1
    assert 1.0 < slope < 1.06


def test_bad_series_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        fit_forecast([0.0, 2.0, 1.0], torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"\(epochs, K-1\)"):
        fit_forecast([0.0, 1.0, 2.0], torch.ones(3))
    with pytest.raises(ValueError, match="every mode positive"):
        fit_forecast([0.0, 1.0, 2.0], -torch.ones(3, 3))
    with pytest.raises(ValueError, match="two epochs after its start"):
        fit_forecast([0.0, 1.0], torch.ones(2, 3))
    with pytest.raises(ValueError, match="at least two distinct epochs"):
        log_epoch_slope([0.0, 1.0], [1.0, 2.0])


def test_forecast_on_a_real_network_keeps_its_books():
    L.seed_everything(0, verbose=False)
    monitor = SpectralMonitor(mode="eval", forecast=True, forecast_target_margin=12.0)
    L.Trainer(max_epochs=5, callbacks=[monitor], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(DigitsMLP(lr=0.01), digits_loader(shuffle=True))
    rows = monitor.history
    fitted = [r for r in rows if "forecast_time_scale" in r]
    assert fitted and all(math.isfinite(r[k]) and r[k] > 0 for r in fitted for k in ("forecast_time_scale",
                                                                                      "forecast_final_margin"))
    scored = [r for r in rows if "forecast_margin" in r]
    assert scored
    for r in scored:  # the error is the previous fit's prediction against this measurement
        assert math.isclose(r["forecast_margin_error"], abs(r["forecast_margin"] - r["spectral_margin"]), rel_tol=1e-12)
        assert all(math.isfinite(r[k]) for k in ("baseline_margin_error", "forecast_spectrum_error",
                                                  "baseline_spectrum_error"))


def test_slowdown_tool_on_a_real_run(tmp_path):
    import csv
    import json

    import numpy as np
    from lightning.pytorch.loggers import CSVLogger

    from hadainit.experiments import slowdown

    L.seed_everything(0, verbose=False)
    L.Trainer(max_epochs=6, callbacks=[SpectralMonitor(mode="eval")], logger=CSVLogger(tmp_path, name="run"),
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu").fit(DigitsMLP(lr=0.01), digits_loader(shuffle=True))
    assert slowdown.main([str(tmp_path), "--min-epoch", "2"]) == 0
    result = json.loads((tmp_path / "slowdown.json").read_text())
    assert result["key"] == "spectral_eval/spectral_margin" and (tmp_path / "slowdown.png").is_file()
    with open(next(tmp_path.rglob("metrics.csv"))) as fh:  # an independent read and fit of the CSV
        rows = [r for r in csv.DictReader(fh) if r.get("spectral_eval/spectral_margin")]
    x = np.array([float(r["epoch"]) + 1 for r in rows])
    y = np.array([float(r["spectral_eval/spectral_margin"]) for r in rows])
    slope = np.polyfit(np.log(x[x >= 2]), y[x >= 2], 1)[0]
    assert math.isclose(result["slope_per_efold"], slope, rel_tol=1e-9)
    assert slowdown.main([str(tmp_path), "--key", "spectral/nope"]) == 2
