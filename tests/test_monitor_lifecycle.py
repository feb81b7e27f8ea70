"""A monitor across a run's life cycle (``Phase``, ``MonitorState``): reused, continued, refit, validating another
model, a failed fit; the basis and the state a checkpoint carries; undefined values warned once."""

import copy
import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hadainit.callbacks import FORECAST_KEYS, SPECTRAL_KEYS, NeuralCollapseMonitor, SpectralMonitor
from hadainit.drift import drift, initial_basis
from tests.lightning_helpers import K, TinyModule, dataset, loader, messages, trainer


# ------------------------ a monitor reused, a fit continued, a new trainer
def test_a_reused_monitor_starts_afresh_with_the_next_model():
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=2).fit(TinyModule(seed=0), loader())
    second = TinyModule(seed=7)
    expected = initial_basis(second.fc.weight, "fourier")
    trainer([monitor], max_epochs=1).fit(second, loader())
    assert [h["epoch"] for h in monitor.history] == [-1, 0]
    assert torch.allclose(monitor.basis.right, expected.right, atol=1e-12)


def test_fitting_again_with_the_same_trainer_continues_the_history():
    module = TinyModule(init="default")
    w0 = module.fc.weight.detach().clone()
    spectral = SpectralMonitor(init_basis="svd")
    t = trainer([spectral], max_epochs=2)
    t.fit(module, loader())
    t.fit_loop.max_epochs = 4
    t.fit(module, loader())
    assert [h["epoch"] for h in spectral.history] == [-1, 0, 1, 2, 3]
    expected = drift(module.fc.weight.detach(), initial_basis(w0, "svd"))["drift"]
    assert math.isclose(spectral.history[-1]["drift"], expected, rel_tol=1e-9)


def test_a_new_trainer_on_a_trained_model_starts_afresh_and_says_so():
    module = TinyModule()
    spectral = SpectralMonitor()
    trainer([spectral], max_epochs=2).fit(module, loader())
    with pytest.warns(UserWarning, match="starts from weights an earlier fit trained"):
        trainer([spectral], max_epochs=1).fit(module, loader())
    assert [h["epoch"] for h in spectral.history] == [-1, 0]


def test_a_new_trainer_with_an_explicit_basis_measures_from_the_trained_weights():
    module = TinyModule()
    spectral = SpectralMonitor(init_basis="fourier")
    trainer([spectral], max_epochs=2).fit(module, loader())
    with pytest.warns(UserWarning, match="SVD of the weights now"):
        trainer([spectral], max_epochs=1).fit(module, loader())
    assert spectral.basis.kind == "svd" and [h["epoch"] for h in spectral.history] == [-1, 0]


class Wider(TinyModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 24), nn.Tanh())
        self.fc = nn.Linear(24, K)


def test_validating_another_model_starts_afresh():
    nc, spectral = NeuralCollapseMonitor(mode="val"), SpectralMonitor(mode="val")
    val = DataLoader(dataset(100), batch_size=30)
    trainer([nc, spectral], max_epochs=1).fit(TinyModule(), loader(), val)
    results = trainer([nc, spectral], max_epochs=1).validate(Wider(), val, verbose=False)  # d = 24, not 16
    assert math.isfinite(results[0]["nc_val/nc1"])
    assert [h["epoch"] for h in nc.history] == [0]


def test_spectral_monitor_under_trainer_validate():
    monitor = SpectralMonitor(mode="val")
    t = trainer([monitor], max_epochs=1)
    with pytest.warns(UserWarning, match="no initial basis"):
        t.validate(TinyModule(), DataLoader(dataset(100), batch_size=50))
    assert "spectral_val/logit_leakage" in t.callback_metrics and "spectral_val/drift" not in t.callback_metrics


def test_a_failed_fit_leaves_no_hook_on_the_model():
    class Fails(TinyModule):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            raise RuntimeError("boom")

    module = Fails()
    with pytest.raises(RuntimeError, match="boom"):
        trainer([NeuralCollapseMonitor(), SpectralMonitor()], max_epochs=1).fit(module, loader())
    assert not module.fc._forward_hooks


# ---------------------------- the basis and the state a checkpoint carries
def test_one_set_of_drift_keys_for_every_init():
    keys = []
    for module, kwargs in [(TinyModule(), {}), (TinyModule(init="default"), {"init_basis": "svd"}),
                           (copy.deepcopy(TinyModule()), {"init_basis": "fourier"})]:
        t = trainer([SpectralMonitor(**kwargs)], max_epochs=1)
        t.fit(module, loader())
        keys.append({k for k in t.callback_metrics if k.startswith("spectral/")})
    # margin_to_t_star (MODE_SET_KEYS) only with a K > d mode set: not for these d >= K heads
    expected = {f"spectral/{k}" for k in SPECTRAL_KEYS if k not in FORECAST_KEYS}
    assert keys[0] == keys[1] == keys[2] == expected
    # a deepcopy keeps the basis now (read from W0 itself, issue 23); a non-spectral init is what is guessed
    with pytest.warns(UserWarning, match="initial basis is not known"):
        trainer([SpectralMonitor()], max_epochs=1).fit(TinyModule(init="default"), loader())


def test_basis_comes_from_the_weights_not_a_stale_record():
    module = TinyModule(seed=1, lr=0.0)  # hadamard_ left a record with seed 1's V on the weight
    module.load_state_dict(TinyModule(seed=0).state_dict())  # weights of seed 0: the record is stale
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=1).fit(module, loader())
    assert monitor.history[-1]["drift"] < 1e-6  # frozen network: no drift (a stale V read 0.46)


def test_resume_from_a_checkpoint_without_monitor_state_warns(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer([ckpt], max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path).fit(TinyModule(), loader())
    with pytest.warns(UserWarning, match="checkpoint has no state of this callback"):
        trainer([SpectralMonitor()], max_epochs=2, default_root_dir=tmp_path).fit(
            TinyModule(), loader(), ckpt_path=str(tmp_path / "last.ckpt"))


def test_checkpoint_state_is_validated_on_load():
    monitor = NeuralCollapseMonitor()
    spectral = SpectralMonitor()
    trainer([monitor, spectral], max_epochs=1).fit(TinyModule(), loader())
    trainer([monitor, spectral], max_epochs=0).fit(TinyModule(), loader())  # set up, nothing trained
    good = spectral.state_dict()
    with pytest.raises(ValueError, match="missing the key 'basis'"):
        spectral.load_state_dict({k: v for k, v in good.items() if k != "basis"})
    bad = copy.deepcopy(good)
    bad["basis"] = initial_basis(torch.randn(5, 15)).state_dict()  # a valid basis of another shape
    with pytest.raises(ValueError, match=r"state 'basis'.*\(5, 15\) weight, the classifier is \(5, 16\)"):
        spectral.load_state_dict(bad)
    bad = copy.deepcopy(good)
    bad["basis"]["right"][0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        spectral.load_state_dict(bad)
    bad = copy.deepcopy(monitor.state_dict())
    bad["metrics"]["nc"]["states"]["sums"] = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"metrics.nc.sums has shape \(3, 3\), expected \(5, 16\)"):
        monitor.load_state_dict(bad)
    with pytest.raises(ValueError, match="version"):
        monitor.load_state_dict({"history": []})


def test_state_loaded_for_validate_or_another_model_does_not_leak(tmp_path):
    module = TinyModule()
    ckpt = tmp_path / "m.ckpt"
    nc = NeuralCollapseMonitor(mode="val")
    t = trainer([nc], max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path)
    t.fit(module, loader(), DataLoader(dataset(100), batch_size=30))
    t.save_checkpoint(ckpt)
    trainer([nc], max_epochs=1).validate(module, DataLoader(dataset(100), batch_size=30), ckpt_path=str(ckpt),
                                         verbose=False)
    val = DataLoader(dataset(100), batch_size=30)
    trainer([nc], max_epochs=1).fit(TinyModule(seed=3), loader(), val)
    assert [h["epoch"] for h in nc.history] == [-1, 0]  # an unrelated model: afresh


# ------------------------------------------- undefined values and warnings
class Poison(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.fc.weight.fill_(math.nan)


def test_non_finite_weights_warn_and_training_goes_on():
    monitor = SpectralMonitor()
    with pytest.warns(UserWarning, match=r"values not logged at epoch \d+: weight contains NaN or Inf"):
        trainer([monitor, NeuralCollapseMonitor(), Poison()], max_epochs=3).fit(TinyModule(), loader())
    assert [h["epoch"] for h in monitor.history] == [-1, 0]


def test_no_compute_before_update_warning_from_the_monitors():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer([NeuralCollapseMonitor(), SpectralMonitor()], max_epochs=2).fit(TinyModule(), loader())
    assert not messages(record, "was called before the ``update`` method")


def test_an_undefined_value_is_warned_once_per_cause():
    n = 200
    y = torch.arange(n) % (K - 1)  # class K - 1 never appears: the logit spectrum is undefined every epoch
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, y), batch_size=20)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        spectral = SpectralMonitor()
        trainer([spectral], max_epochs=4).fit(TinyModule(), data)
    assert len(messages(record, "logit spectrum not logged")) == 1
    assert [h["epoch"] for h in spectral.history] == [-1, 0, 1, 2, 3]  # the drift is logged all along
