"""The metrics in the torchmetrics mould: tensors from compute(), Lightning logging, MetricCollection, plot(),
the mirrored functional twins, the deprecated names, and the torchmetrics privates the adapter names."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torchmetrics import MetricCollection

from hadainit.metrics import (LogitSpectrum, NearestMeanDisagreement, NearestMeanMismatch, NeuralCollapse,
                              functional)
from hadainit.metrics.logits import LOGIT_KEYS, SPECTRUM_KEYS

F64 = torch.float64


def _blobs(k=4, d=6, n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(k, d, generator=gen)
    labels = torch.arange(n) % k
    return means[labels] + torch.randn(n, d, generator=gen), labels


# ----------------------------------------------------------------- item 1: tensors
def test_compute_returns_zero_dim_float64_tensors():
    x, y = _blobs()
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    nc = NeuralCollapse(4, 6)
    nc.update(x, y)
    nc.set_classifier(w)
    out = nc.compute()
    want = functional.neural_collapse(x, y, w)  # the functional twin (floats), same formulas
    assert set(out) == set(want) - {"nc4"}
    for key, value in out.items():
        assert isinstance(value, torch.Tensor) and value.dtype == F64 and value.dim() == 0, key
        assert float(value) == want[key] or math.isclose(float(value), want[key], rel_tol=1e-12), key
    spectrum = LogitSpectrum(4)
    spectrum.update(x @ w.T, y)
    scalars, spectra = spectrum.compute(), spectrum.spectra()
    assert set(scalars) == set(LOGIT_KEYS) and set(spectra) == set(SPECTRUM_KEYS)  # no list in compute()
    assert all(v.dtype == F64 and v.dim() == 0 for v in scalars.values())
    assert all(v.dtype == F64 and v.shape == (3,) for v in spectra.values())


def test_forward_returns_tensors():
    x, y = _blobs()
    out = NeuralCollapse(4, 6)(x, y)
    assert out and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values())


def test_nearest_mean_disagreement_class_and_function_mirror():
    x, y = _blobs(seed=3)
    gen = torch.Generator().manual_seed(4)
    means, logits = torch.randn(4, 6, generator=gen, dtype=F64), torch.randn(24, 4, generator=gen)
    dense = ((x.to(F64).unsqueeze(1) - means).pow(2).sum(2).argmin(1) != logits.argmax(1)).sum().item()
    metric = NearestMeanDisagreement(4, 6)
    metric.set_means(means)
    metric.update(x[:10], logits[:10])
    metric.update(x[10:], logits[10:])
    assert metric.compute().dim() == 0 and metric.compute().dtype == F64
    assert float(metric.compute()) == dense / 24
    assert float(functional.nearest_mean_disagreement(x, means, logits)) == dense / 24
    assert int(functional.nearest_mean_disagreements(x, means, logits)) == dense


def test_deprecated_name_warns_and_keeps_its_form():
    with pytest.warns(DeprecationWarning, match="NearestMeanDisagreement"):
        old = NearestMeanMismatch(4, 6)
    assert isinstance(old, NearestMeanDisagreement)
    x, y = _blobs()
    old.set_means(torch.zeros(4, 6, dtype=F64))
    old.update(x, torch.randn(24, 4))
    assert set(old.compute()) == {"nc4"}


def test_logit_spectrum_exported_and_in_functional():
    from hadainit.metrics.functional import logit_spectrum
    from hadainit.metrics.logits import logit_spectrum as original

    assert logit_spectrum is original
    x, y = _blobs()
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    metric = LogitSpectrum(4)
    metric.update(x.to(F64) @ w.to(F64).T, y)
    out = logit_spectrum(x, y, w)
    for key, value in {**metric.compute(), **metric.spectra()}.items():
        assert torch.allclose(torch.as_tensor(out[key], dtype=F64), value, rtol=1e-12, atol=1e-14), key


def test_class_means_removed():
    import hadainit.metrics as metrics

    assert not hasattr(metrics, "ClassMeans")


def test_in_a_metric_collection():
    x, y = _blobs()
    collection = MetricCollection({"nc": NeuralCollapse(4, 6)}, prefix="train/")
    collection.update(x, y)
    out = collection.compute()
    alone = NeuralCollapse(4, 6)
    alone.update(x, y)
    want = alone.compute()
    assert set(out) == {f"train/{k}" for k in want}  # a dict-valued compute() is flattened, prefixed
    for key, value in want.items():
        assert torch.equal(out[f"train/{key}"], value), key


class _Tiny(pl.LightningModule):
    """A real LightningModule that logs the metrics the way Lightning users do."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(6, 5), nn.Linear(5, 4)
        self.nc = NeuralCollapse(4, 5)
        self.spectrum = LogitSpectrum(4)
        self.logged: list[dict] = []

    def training_step(self, batch, _):
        x, y = batch
        h = self.body(x)
        logits = self.head(h)
        self.nc.update(h.detach(), y)
        self.spectrum.update(logits.detach(), y)
        return nn.functional.cross_entropy(logits, y)

    def on_train_epoch_end(self):
        self.nc.set_classifier(self.head)
        values = self.nc.compute()
        self.log_dict(values)  # the dict of 0-d tensors, as it is
        self.log("nc1_alone", values["nc1"])  # one scalar
        self.log_dict({f"logits/{k}": v for k, v in self.spectrum.compute().items()})
        self.logged.append({k: float(v) for k, v in values.items()})
        self.nc.reset()
        self.spectrum.reset()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_logged_from_a_lightning_module(tmp_path):
    x, y = _blobs(n=48, seed=5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = _Tiny()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's few-workers / small-batch notes
        trainer.fit(model, loader)
    logged = trainer.logged_metrics
    assert len(model.logged) == 2
    last = model.logged[-1]
    assert math.isclose(float(logged["nc1_alone"]), last["nc1"], rel_tol=1e-6)  # logged as float32 by Lightning
    assert math.isclose(float(logged["nc1"]), last["nc1"], rel_tol=1e-6)
    assert "logits/logit_leakage" in logged
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().count("nc1_alone") == 1


# ----------------------------------------------------------------- item 2: plot()
@pytest.fixture
def agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_neural_collapse_plot_one_panel_per_group(agg):
    from hadainit.metrics.plotting import COLLAPSE_GROUPS

    x, y = _blobs()
    nc = NeuralCollapse(4, 6)
    nc.update(x, y)
    nc.set_classifier(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)))
    values = nc.compute()
    fig, axes = nc.plot()
    assert isinstance(fig, agg.Figure) and len(fig.axes) == len(axes)
    grouped = {k for members in COLLAPSE_GROUPS.values() for k in members}
    titles = [a.get_title() for a in axes]
    assert "NC1: within-class variability" in titles and "other" in titles
    labels = [line.get_label() for a in axes for line in a.get_lines()]
    assert sorted(labels) == sorted(values)  # every key once, in one panel
    assert max(len(a.get_lines()) for a in axes) <= 8  # never every key under one legend
    other = axes[titles.index("other")]
    assert {line.get_label() for line in other.get_lines()} == set(values) - grouped


def test_plot_history_and_keys(agg):
    x, y = _blobs()
    nc = NeuralCollapse(4, 6)
    history = []
    for seed in range(3):
        nc.reset()
        nc.update(*_blobs(seed=seed))
        history.append(nc.compute())
    fig, axes = nc.plot(history, keys=["nc1", "cdnv", "num_classes_seen"])
    assert [a.get_title() for a in axes] == ["NC1: within-class variability", "other"]
    lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert set(lines) == {"nc1", "cdnv"}
    assert list(lines["nc1"].get_ydata()) == [float(h["nc1"]) for h in history]
    with pytest.raises(ValueError, match="not among"):
        nc.plot(history, keys=["nc9"])
    _, given = agg.subplots(1, 2)
    fig2, axes2 = nc.plot(history, ax=list(given), keys=["nc1", "num_classes_seen"])
    assert axes2 == list(given)


def test_logit_spectrum_plot(agg):
    from hadainit.metrics.logits import LOGIT_GROUPS

    x, y = _blobs()
    spectrum = LogitSpectrum(4)
    spectrum.update(x @ torch.randn(6, 4, generator=torch.Generator().manual_seed(2)), y)
    fig, axes = spectrum.plot()
    assert [a.get_title() for a in axes] == list(LOGIT_GROUPS)[: len(axes)]
    assert sorted(line.get_label() for a in axes for line in a.get_lines()) == sorted(LOGIT_KEYS)


# ----------------------------------------------------- item 4: the torchmetrics privates, in one adapter
ALLOWED = {"__init__", "update", "compute", "reset", "forward", "merge_state", "sync", "plot", "_load_from_state_dict"}


def test_neural_collapse_overrides_only_what_torchmetrics_expects():
    from torchmetrics import Metric

    overridden = {name for name in vars(NeuralCollapse) if callable(getattr(Metric, name, None))}
    assert overridden <= ALLOWED, overridden - ALLOWED  # no state_dict, metric_state, __setattr__, _apply


def test_float32_path_leaves_complete_states_between_updates():
    x, y = _blobs(n=40, seed=7)
    fast, exact = NeuralCollapse(4, 6, precision="float32"), NeuralCollapse(4, 6)
    fast.update(x, y)
    exact.update(x, y)
    # the raw states, read as torchmetrics reads them (no flush hook): already hold the batch
    assert torch.equal(fast.metric_state["counts"], exact.metric_state["counts"])
    scale = exact.sums.abs().max()
    assert (fast.sums - exact.sums).abs().max() <= 64 * torch.finfo(torch.float32).eps * scale


def test_adapter_against_the_pinned_torchmetrics():
    from hadainit.metrics import _torchmetrics as tm

    x, y = _blobs()
    nc = NeuralCollapse(4, 6)
    nc.update(x, y)
    first = nc.compute()
    assert nc._computed is not None  # torchmetrics caches compute(): the private drop_cached clears
    tm.drop_cached(nc)
    assert nc._computed is None
    nc.set_classifier(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)))
    assert "nc3" in nc.compute() and "nc3" not in first  # recomputed, not the cached dict
    count = nc.update_count
    tm.add_update_count(nc, 3)
    assert nc.update_count == count + 3
    assert tm.is_synced(nc) is False
    with tm.synced(nc):  # no process group: the local states, and the flags exist
        assert torch.equal(nc.counts, torch.bincount(y, minlength=4).to(F64))
    tm.set_forward_cache(nc, {"a": 1})
    assert nc._forward_cache == {"a": 1}
    spectrum = LogitSpectrum(4)
    spectrum.update(torch.randn(8, 4), torch.arange(8) % 4)
    spectrum.compute()
    tm.drop_cached(spectrum)
    assert spectrum._computed is None


def test_kl_keys_say_what_they_compute():
    # kl_lyapunov_modes is hadainit.ufm.kl_lyapunov of the measured modes; kl_lyapunov is the KL of the
    # singular values of Z_c (the same only when Z_c is diagonal in the basis, as in the spectral UFM)
    from hadainit.ufm import kl_lyapunov
    from hadainit.ufm.lyapunov import kl_to_uniform

    k = 8
    z = torch.randn(k, k, generator=torch.Generator().manual_seed(0), dtype=F64) + 3 * torch.eye(k, dtype=F64)
    metric = LogitSpectrum(k)
    metric.update(z.T, torch.arange(k))
    out, spectra = metric.compute(), metric.spectra()
    modes = kl_lyapunov(torch.cat((torch.zeros(1, dtype=F64), spectra["lam"])))
    assert math.isclose(float(out["kl_lyapunov_modes"]), float(modes), rel_tol=1e-12)
    zc = z - z.mean(0) - z.mean(1, keepdim=True) + z.mean()
    sigma = torch.linalg.svdvals(zc)[: k - 1]
    assert math.isclose(float(out["kl_lyapunov"]), float(kl_to_uniform(sigma)), rel_tol=1e-10)
    assert float(out["kl_lyapunov"]) > 2 * float(out["kl_lyapunov_modes"])  # they differ on this matrix
