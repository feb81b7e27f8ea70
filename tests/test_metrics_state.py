"""Issue 13 items 1-7: the streaming metrics stay exact through every state change.

Each test compares with the independent dense reference (``tests.metrics_reference``) or with the
same metric on unchanged data; none copies an output of the code under test.
"""

import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hadainit.metrics import NearestMeanDisagreement, NeuralCollapse
from hadainit.metrics.functional import neural_collapse
from tests.metrics_reference import mixture, reference_metrics

STREAMED = ("nc1", "within_class_trace", "cdnv", "etf_gap_means", "cos_std_means", "equinorm_means")


def _data(k, d, n_per_class, seed=0, spread=0.5, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=gen, dtype=torch.float64) + offset
    labels = torch.arange(k).repeat(n_per_class)[torch.randperm(k * n_per_class, generator=gen)]
    x = means[labels] + spread * torch.randn(k * n_per_class, d, generator=gen, dtype=torch.float64)
    return x, labels


def _assert_close(got, want, keys=STREAMED, rtol=1e-9):
    for key in keys:
        assert math.isclose(got[key], want[key], rel_tol=rtol, abs_tol=1e-300), (key, got[key], want[key])


def _stream(metric, x, labels, batch=16):
    for i in range(0, len(x), batch):
        metric.update(x[i : i + batch], labels[i : i + batch])
    return metric


# ---------------------------------------------------------------- item 1
def test_merge_state_rebases_sums_taken_about_different_references():
    x, labels = _data(5, 12, 40, seed=21, spread=0.1, offset=5.0)
    half = len(x) // 2
    ref = reference_metrics(x, labels)
    a = _stream(NeuralCollapse(5, 12), x[:half], labels[:half])
    b = _stream(NeuralCollapse(5, 12, reference=torch.zeros(5, 12)), x[half:], labels[half:])  # far from a's
    c = _stream(NeuralCollapse(5, 12, reference=torch.ones(5, 12)), x[half:], labels[half:])
    a_dict = _stream(NeuralCollapse(5, 12), x[:half], labels[:half])
    a.merge_state(b)
    _assert_close(a.compute(), ref)
    a_dict.merge_state({**c.metric_state, "reference": c.reference})
    _assert_close(a_dict.compute(), ref)
    with pytest.raises(ValueError, match="reference"):
        NeuralCollapse(5, 12).merge_state(dict(c.metric_state))  # sums without their reference point


# ---------------------------------------------------------------- item 2
def test_failing_forward_never_touches_the_accumulated_state():
    x, labels = _data(4, 6, 20, seed=22)
    metric = _stream(NeuralCollapse(4, 6), x[:60], labels[:60])
    one_class = labels[60:] == labels[60]
    with pytest.warns(UserWarning, match="batch"):
        assert metric(x[60:][one_class], labels[60:][one_class]) == {}  # undefined for one class: no value
    with pytest.raises(ValueError, match="NaN"):
        metric(torch.full((3, 6), math.nan), torch.tensor([0, 1, 2]))  # bad input: an error, state untouched
    both = torch.cat((x[:60], x[60:][one_class])), torch.cat((labels[:60], labels[60:][one_class]))
    _assert_close(metric.compute(), reference_metrics(*both))
    batch = metric(x[60:], labels[60:])  # a defined batch value: that batch alone
    _assert_close(batch, reference_metrics(x[60:], labels[60:]))
    everything = torch.cat((both[0], x[60:])), torch.cat((both[1], labels[60:]))
    _assert_close(metric.compute(), reference_metrics(*everything))


K, D = 4, 6


class _NCModule(L.LightningModule):
    """Logs batch-level NC values with ``self.log_dict(self.nc(features, labels))`` and the epoch value."""

    def __init__(self, batch_values: bool = True) -> None:
        super().__init__()
        self.batch_values = batch_values
        self.body = nn.Linear(3, D)
        self.fc = nn.Linear(D, K)
        self.nc = NeuralCollapse(K, D)
        self.epoch_values: list[dict] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        features = self.body(x)
        if self.batch_values:
            self.log_dict({f"nc/{k}": v for k, v in self.nc(features.detach(), y).items()})
        else:
            self.nc.update(features.detach(), y)
        return nn.functional.cross_entropy(self.fc(features), y)

    def on_train_epoch_end(self) -> None:
        self.epoch_values.append(self.nc.compute())
        self.nc.reset()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # frozen: features are reproducible


def _sorted_loader():
    gen = torch.Generator().manual_seed(5)
    y = torch.arange(K).repeat_interleave(20)  # sorted labels: every batch of 10 holds one class
    x = torch.randn(len(y), 3, generator=gen) + nn.functional.one_hot(y, 3 + 1)[:, :3].float()
    return DataLoader(TensorDataset(x, y), batch_size=10, shuffle=False), x, y


def _trainer(tmp_path, **kwargs):
    kwargs.setdefault("max_epochs", 1)
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", devices=1, num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs)


def test_lightning_logging_pattern_works_on_one_class_batches(tmp_path):
    loader, x, y = _sorted_loader()
    module = _NCModule()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, enable_checkpointing=False).fit(module, loader)
    features = module.body(x).detach()
    _assert_close(module.epoch_values[0], reference_metrics(features, y), rtol=1e-6)  # float32 features


# ---------------------------------------------------------------- item 3
def test_reference_is_picked_again_after_reset_for_drifting_features():
    metric = NeuralCollapse(4, 8)
    for epoch in range(6):  # features drift by 1e4 per epoch, 1e8 times their spread
        x, labels = _data(4, 8, 25, seed=30 + epoch, spread=1e-4)
        x = x + 1e4 * epoch
        got = _stream(metric, x, labels, batch=20).compute()
        ref = reference_metrics(x, labels)
        _assert_close(got, ref, keys=("nc1", "within_class_trace", "cdnv"), rtol=1e-6)
        metric.reset()


# ---------------------------------------------------------------- item 4
def test_non_finite_bias_is_rejected():
    x, labels = _data(3, 4, 5, seed=23)
    w = torch.randn(3, 4, dtype=torch.float64)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="bias"):
            neural_collapse(x, labels, w, torch.tensor([0.0, bad, 0.0]))
        with pytest.raises(ValueError, match="bias"):
            NeuralCollapse(3, 4).set_classifier(w, bias=torch.tensor([0.0, bad, 0.0]))


# ---------------------------------------------------------------- item 5
def test_state_dict_keys_do_not_depend_on_use():
    x, labels = _data(3, 4, 5, seed=24)
    fresh, used = NeuralCollapse(3, 4), NeuralCollapse(3, 4)
    used.update(x, labels)
    assert set(fresh.state_dict()) == set(used.state_dict())
    NeuralCollapse(3, 4).load_state_dict(used.state_dict())  # strict


def test_lightning_checkpoint_of_a_module_holding_the_metric(tmp_path):
    loader, _, _ = _sorted_loader()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, callbacks=[ckpt]).fit(_NCModule(batch_values=False), loader)
        restored = _NCModule.load_from_checkpoint(ckpt.last_model_path, batch_values=False)
        assert set(restored.state_dict()) == set(_NCModule().state_dict())
        _trainer(tmp_path, max_epochs=2).fit(_NCModule(batch_values=False), loader, ckpt_path=ckpt.last_model_path)


# ---------------------------------------------------------------- item 6
SCALE_FREE = ("nc1", "nc1_trace", "cdnv", "equinorm_means", "cos_std_means", "cos_etf_means", "etf_gap_means",
              "gnc2_log", "gnc2_riesz", "equinorm_classifier", "cos_std_classifier", "cos_etf_classifier",
              "etf_gap_classifier", "nc3", "nc3_duality", "unc3", "kl_lyapunov", "nc4")


@pytest.mark.parametrize("feature_scale, weight_scale", [(1e78, 1.0), (1e-100, 1.0), (1.0, 1e160), (1.0, 1e-160)])
def test_scale_invariant_metrics_at_extreme_finite_scales(feature_scale, weight_scale):
    x, labels = _data(6, 10, 8, seed=25)
    w = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    base = neural_collapse(x, labels, w, bias)
    got = neural_collapse(x * feature_scale, labels, w * weight_scale, bias * feature_scale * weight_scale)
    streamed = _stream(NeuralCollapse(6, 10), x * feature_scale, labels)
    streamed.set_classifier(w * weight_scale)
    streamed = streamed.compute()
    for key in SCALE_FREE:
        if key in base:
            assert math.isclose(got[key], base[key], rel_tol=1e-10), (key, got[key], base[key])
            if key != "nc4":
                assert math.isclose(streamed[key], base[key], rel_tol=1e-10), (key, streamed[key], base[key])


@pytest.mark.parametrize("scale", [2.0**100, 2.0**-100])
def test_float32_features_at_extreme_scales(scale):
    x, labels = _data(5, 8, 12, seed=26)
    x32 = x.float()
    base = _stream(NeuralCollapse(5, 8), x32, labels).compute()
    got = _stream(NeuralCollapse(5, 8), x32 * scale, labels).compute()
    for key in ("nc1", "cdnv", "etf_gap_means", "equinorm_means"):
        assert math.isclose(got[key], base[key], rel_tol=1e-12), (key, got[key], base[key])


# ---------------------------------------------------------------- item 7
def test_set_dtype_keeps_float64_sums():
    x, labels = _data(3, 4, 10, seed=27)
    metric = NeuralCollapse(3, 4)
    metric.set_dtype(torch.float32)
    metric.update(x, labels)
    assert metric.second.dtype == torch.float64 and metric.reference.dtype == torch.float64
    _assert_close(metric.compute(), reference_metrics(x, labels))


def test_nearest_mean_mismatch_checks_seen():
    nc4 = NearestMeanDisagreement(3, 4)
    with pytest.raises(ValueError, match="seen"):
        nc4.set_means(torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="seen"):
        nc4.set_means(torch.zeros(3, 4), torch.ones(2, dtype=torch.bool))


def test_empty_input_and_rtol_are_checked():
    with pytest.raises(ValueError, match="no samples"):
        neural_collapse(torch.empty(0, 4), torch.empty(0, dtype=torch.int64), num_classes=3)
    with pytest.raises(ValueError, match="no samples"):
        neural_collapse(torch.empty(0, 4), torch.empty(0, dtype=torch.int64))
    for rtol in (2.0, 1.0, 0.0):
        with pytest.raises(ValueError, match="rtol"):
            NeuralCollapse(3, 4, rtol=rtol)


def test_set_classifier_accepts_a_linear_layer():
    x, labels = _data(3, 4, 10, seed=28)
    layer = nn.Linear(4, 3).double()
    a, b = _stream(NeuralCollapse(3, 4), x, labels), _stream(NeuralCollapse(3, 4), x, labels)
    a.set_classifier(layer)
    b.set_classifier(layer.weight.detach(), bias=layer.bias.detach())
    assert a.compute() == b.compute() and "nc3" in a.compute()
    with pytest.raises(TypeError, match="nn.Linear"):
        a.set_classifier("fc")
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        a.set_classifier(nn.Linear(3, 3))


# ------------------------------------------- load_state_dict: the sums follow the loaded reference
def test_load_state_dict_moves_the_held_sums_to_the_loaded_reference():
    x, y = mixture(seed=1)
    other, _ = mixture(seed=2, offset=-9.0)
    held = NeuralCollapse(4, 6)
    held.update(x, y)
    donor = NeuralCollapse(4, 6)
    donor.update(other, y)  # its reference lies far from ``held``'s data
    held.load_state_dict(donor.state_dict())
    assert torch.equal(held.reference, donor.reference)
    want = reference_metrics(x, y)
    got = held.compute()
    for key in ("nc1", "cdnv", "within_class_trace"):  # the held data's values, not a mix
        assert math.isclose(got[key], want[key], rel_tol=1e-10), (key, got[key], want[key])


def test_load_state_dict_with_persistent_states_takes_both_sums_and_reference():
    x, y = mixture(seed=3)
    donor = NeuralCollapse(4, 6)
    donor.persistent(True)
    donor.update(x, y)
    target = NeuralCollapse(4, 6)
    target.persistent(True)
    target.update(mixture(seed=4)[0], y)
    target.load_state_dict(donor.state_dict())
    want = reference_metrics(x, y)
    assert math.isclose(target.compute()["nc1"], want["nc1"], rel_tol=1e-10)
