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
        spectra.append(metric.spectra()["lam"].tolist())
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


# --------------------------------------------------------------------------- the forecaster's edges (issue 22 item 12)

def _series(scale=1.0):
    """A growing series with K = 4: lam(e) = scale * (0.3, 0.5, 0.7) * (1 + 0.3 e), e = 0..7."""
    e = torch.arange(8, dtype=torch.float64)
    return e, scale * torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64) * (1 + 0.3 * e)[:, None]


def test_the_fit_is_scale_free_where_the_flow_is_linear():
    # at lam ~ 1e-200 the logits are 0 to float64 precision: the reduced flow is linear, lam(t) = lam0 * g(t),
    # so the fitted time scale cannot depend on the spectrum's scale (it was NaN-errored and stuck at 1e-6)
    fits = [fit_forecast(*_series(scale)) for scale in (1e-200, 1e-280)]
    lo, hi = 1e-6, 1e9
    for f in fits:
        assert math.isfinite(f.fit_error) and f.range_edge is None and lo < f.time_scale < hi
    assert math.isclose(fits[0].time_scale, fits[1].time_scale, rel_tol=1e-6)
    assert math.isclose(fits[0].fit_error, fits[1].fit_error, rel_tol=1e-6)


def test_a_flow_that_cannot_move_has_no_time_scale():
    # margins ~ 1e300: the softmax is saturated, 1 - mu = 0, every time scale predicts lam(e0)
    with pytest.raises(ValueError, match="the time scale is undetermined"):
        fit_forecast(*_series(1e300))
    e, lam = _series()
    with pytest.raises(ValueError, match="the time scale is undetermined"):  # 1e-300 epochs apart: no flow time
        fit_forecast(e * 1e-300, lam)
    with pytest.raises(ValueError, match="overflows float64: pass a time_scale_range in the epochs' units"):
        fit_forecast(e * 1e300, lam)


def test_the_fitted_time_scale_stays_in_its_range_and_warns_at_an_end():
    e, lam = _series()
    free = fit_forecast(e, lam)
    assert free.range_edge is None and 1e-2 < free.time_scale < 1e2
    for bounds, edge in (((1e-6, 1e-5), "upper"), ((1e5, 1e6), "lower")):
        with pytest.warns(UserWarning, match=f"at the {edge} end of time_scale_range"):
            fitted = fit_forecast(e, lam, time_scale_range=bounds)
        assert bounds[0] <= fitted.time_scale <= bounds[1] and fitted.range_edge == edge
        assert math.isclose(fitted.time_scale, bounds[0 if edge == "lower" else 1], rel_tol=1e-5)


def test_predictions_at_undefined_epochs_and_margins_are_refused():
    e, lam = _series()
    model = fit_forecast(e, lam)
    for bad in ([math.nan], [math.inf], [1.0, math.nan]):
        with pytest.raises(ValueError, match="epochs must be finite"):
            model.predict(bad)  # NaN returned the start spectrum
    with pytest.raises(ValueError, match="gamma must be a real number, got nan"):
        model.epochs_to_margin(math.nan)  # said "never"
    assert model.epochs_to_margin(math.inf) == math.inf  # a finite flow time never reaches an infinite margin
    assert model.epochs_to_margin(-math.inf) == model.epoch0
    base = baseline_forecast(e[1:], lam[1:])
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="epochs must be > 0"):
            base.predict([bad])  # log(0) = -inf, log(-1) = NaN


def test_margins_of_undefined_or_non_real_spectra_are_refused():
    for bad in ([1.0, math.nan, 1.0], [1.0, math.inf, 1.0]):
        with pytest.raises(ValueError, match="lam must be finite"):
            spectral_margin(torch.tensor(bad))
    for dtype in (torch.bool, torch.complex128):
        with pytest.raises(TypeError, match="lam must hold real numbers"):
            spectral_margin(torch.ones(3, dtype=dtype))
    # integers are real: the margin of K = 4 at collapse, lam = (1, 1, 1): z = H (0, 1, 1, 1) / 4 = (3, -1, -1, -1) / 4
    assert spectral_margin([1, 1, 1]).item() == 1.0


def test_the_log_epoch_slope_needs_finite_epochs_and_one_value_each():
    with pytest.raises(ValueError, match="epochs must be finite, got inf"):
        log_epoch_slope([1.0, 2.0, math.inf], [1.0, 2.0, 3.0])  # was a NaN slope
    with pytest.raises(ValueError, match="one value per epoch"):
        log_epoch_slope([1.0, 2.0, 3.0], [1.0, 2.0])  # was torch's broadcasting RuntimeError
    # non-finite values are left out (documented): the slope of the rest, exactly
    slope, intercept = log_epoch_slope([1.0, 2.0, 4.0], [1.0, math.inf, 1.0 + 2 * math.log(4.0)])
    assert math.isclose(slope, 2.0, rel_tol=1e-12) and math.isclose(intercept, 1.0, rel_tol=1e-12)


def test_bad_forecast_arguments_get_one_line_messages():
    e, lam = _series()
    with pytest.raises(TypeError, match="start must be an int, got float"):
        fit_forecast(e, lam, start=1.5)  # was an IndexError from tensor indexing
    with pytest.raises(TypeError, match="start must be an int, got bool"):
        fit_forecast(e, lam, start=True)  # was a RuntimeError
    with pytest.raises(ValueError, match=r"time_scale_range must be an increasing pair of positive finite numbers"):
        fit_forecast(e, lam, time_scale_range=(0.0, 1.0))  # was "math domain error"
    with pytest.raises(TypeError, match=r"time_scale_range must be a pair \(low, high\)"):
        fit_forecast(e, lam, time_scale_range=(1.0,))
    with pytest.raises(TypeError, match="lam must hold real numbers, got dtype torch.complex128"):
        fit_forecast(e, lam.to(torch.complex128))  # the imaginary part was dropped with a warning
    with pytest.raises(ValueError, match="no epoch to fit at or before fit_until=-1.0"):
        evaluate_forecast(e, lam, -1.0)
