"""The monitors on a real small network: an MLP trained on scikit-learn's bundled digits (K = 10)."""

import copy
import math

import lightning as L
import pytest
import torch

from hadainit.bases import softmax_basis
from hadainit.callbacks import FORECAST_KEYS, SPECTRAL_KEYS, NeuralCollapseMonitor, SpectralMonitor
from hadainit.drift import InitialBasis
from hadainit.metrics.functional import neural_collapse
from hadainit.metrics.logits import logit_spectrum
from tests.lightning_helpers import DigitsMLP, assert_values_close, digits, digits_loader, features_of
from tests.metrics_reference import reference_drift


def _fit(module, callbacks, epochs=4, **kwargs):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kwargs)
    trainer.fit(module, digits_loader(shuffle=True))
    return trainer


@pytest.mark.parametrize("init", ["hadamard", "default"])
def test_drift_on_a_real_network(init):
    module = DigitsMLP(init=init)
    w0 = module.fc.weight.detach().double().clone()
    if init == "hadamard":  # Q: the fourier basis (K = 10); V0 = W0^T Q / s, independent of hadainit.drift
        q = softmax_basis(10, "fourier")
        cols = w0.T @ q
        left, right = q, cols / cols.norm(dim=0)
    else:
        u, _, vh = torch.linalg.svd(w0, full_matrices=False)
        left, right = u, vh.T
    monitor = SpectralMonitor(init_basis=None if init == "hadamard" else "svd")
    trainer = _fit(module, [monitor])
    assert {k for k in trainer.callback_metrics} == {f"spectral/{k}" for k in SPECTRAL_KEYS if k not in FORECAST_KEYS}
    ref = reference_drift(module.fc.weight.detach().double(), left, right)
    last = monitor.history[-1]
    for key, value in ref.items():
        assert math.isclose(last[key], value, rel_tol=1e-5, abs_tol=1e-6), key  # float32 W0
    for row in monitor.history:
        assert math.isclose(row["drift"] ** 2, row["drift_offdiag"] ** 2 + row["drift_out_of_span"] ** 2,
                            rel_tol=1e-9, abs_tol=1e-15)
    # what the old in-span-only leakage missed: most of the drift leaves span(V0)
    assert last["drift_out_of_span"] > last["drift_offdiag"] > 0.1


def test_eval_mode_values_equal_an_independent_pass_over_the_final_network():
    module = DigitsMLP()
    nc, spectral = NeuralCollapseMonitor(mode="eval"), SpectralMonitor(mode="eval")
    _fit(module, [nc, spectral], epochs=3)
    feats, labels = features_of(module, digits())
    weight, bias = module.fc.weight.detach(), module.fc.bias.detach()
    ref = neural_collapse(feats, labels, weight, bias)
    for key, value in ref.items():
        if key != "nc4":  # the monitor's NC4 uses the previous measurement's means
            assert math.isclose(nc.history[-1][key], value, rel_tol=1e-9, abs_tol=1e-12), key
    spec = logit_spectrum(feats, labels, weight, bias)
    assert_values_close(spectral.history[-1], spec, rel=1e-5, abs_=1e-5)  # float32 logits vs float64


def test_deepcopied_model_keeps_the_keys_and_warns():
    # the basis is read from W(0) itself: a deepcopied hadamard_ model is detected as before (walsh/fourier);
    # an unknown basis (a default nn.Linear init) is guessed from the SVD, with the warning and the same keys
    module = copy.deepcopy(DigitsMLP(init="default"))
    monitor = SpectralMonitor()
    with pytest.warns(UserWarning, match="initial basis is not known"):
        trainer = _fit(module, [monitor], epochs=1)
    assert {k for k in trainer.callback_metrics} == {f"spectral/{k}" for k in SPECTRAL_KEYS if k not in FORECAST_KEYS}
    assert isinstance(monitor.basis, InitialBasis) and monitor.basis.guessed
