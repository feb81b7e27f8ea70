"""The monitors in the Lightning setups users have (issue 10): each numbered defect, then the expectations."""

import copy
import math
import subprocess
import sys
import typing

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hadainit.callbacks import FORECAST_KEYS, NC_KEYS, SPECTRAL_KEYS, MonitorBase, NeuralCollapseMonitor, SpectralMonitor
from hadainit.callbacks.plotting import plot_history
from hadainit.drift import initial_basis
from hadainit.metrics.functional import neural_collapse
from tests.lightning_helpers import K, TinyModule, assert_same_history, dataset, loader, trainer


def _features(module, x, batch_size=20, chunks=1):
    """The body's features of x computed in the shapes the training steps used (batches, chunks).

    float32 products of other shapes round differently, and by how much depends on the BLAS and
    the CPU's instruction set (issue 21): a reference on all rows at once can differ from the
    batched values by ~1e-8 relative on one machine and agree to 1e-12 on another. Computed in
    the same shapes, the features are the same float32 numbers, and only the monitor's float64
    summation order remains.
    """
    module.eval()
    with torch.no_grad():
        return torch.cat([module.body(c) for b in x.split(batch_size) for c in b.chunk(chunks)])


# ----------------------------------------------------------------- item 1
def test_every_n_epochs_with_a_validation_loader_measures_training_batches_only():
    nc, sp = NeuralCollapseMonitor(every_n_epochs=2), SpectralMonitor(every_n_epochs=2)
    val = DataLoader(dataset(130), batch_size=64)  # other batch shapes than training
    trainer([nc, sp], max_epochs=4).fit(TinyModule(), loader(), val)
    assert [h["epoch"] for h in nc.history] == [-1, 1, 3]
    assert [h["epoch"] for h in sp.history] == [-1, 1, 3]
    assert all(h["num_samples"] == 200 for h in nc.history)  # no validation sample leaks in


# ----------------------------------------------------------------- item 2
class TwoViews(TinyModule):
    """Two augmented views through the classifier, and an auxiliary call with one row."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = sum(nn.functional.cross_entropy(self(v), y) for v in (x, 0.5 * x))
        self.fc(self.body(x).mean(0, keepdim=True))  # auxiliary: cannot be matched to the labels
        return loss


def test_every_call_that_matches_the_labels_is_measured():
    module = TwoViews(lr=0.0)
    monitor = NeuralCollapseMonitor()
    with pytest.warns(UserWarning, match="1 rows does not match the batch's 20 labels") as record:
        trainer([monitor], max_epochs=1).fit(module, loader())
    assert sum("does not match" in str(w.message) for w in record) == 1  # warned once
    x, y = dataset().tensors
    feats = torch.cat((_features(module, x), _features(module, 0.5 * x)))
    ref = neural_collapse(feats, torch.cat((y, y)), module.fc.weight.detach())
    assert monitor.history[-1]["num_samples"] == 400
    for key in ("nc1", "cdnv", "nc3", "within_class_trace"):
        assert math.isclose(monitor.history[-1][key], ref[key], rel_tol=1e-9), key


class Chunked(TinyModule):
    """A custom step over chunks that feeds the monitor itself (capture='manual')."""

    monitor = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = 0.0
        for xc, yc in zip(x.chunk(2), y.chunk(2)):
            h = self.body(xc)
            loss = loss + nn.functional.cross_entropy(self.fc(h), yc)
            self.monitor.update(h, yc)
        return loss


def test_manual_update_for_custom_steps():
    module = Chunked(lr=0.0)
    module.monitor = NeuralCollapseMonitor(capture="manual")
    trainer([module.monitor], max_epochs=1).fit(module, loader())
    x, y = dataset().tensors
    ref = neural_collapse(_features(module, x, chunks=2), y, module.fc.weight.detach())
    assert module.monitor.history[-1]["num_samples"] == 200
    assert math.isclose(module.monitor.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)
    with pytest.raises(RuntimeError, match="capture='manual'"):
        NeuralCollapseMonitor().update(x, y)


# ----------------------------------------------------------------- item 3
class TwoHeads(TinyModule):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc2 = nn.Linear(16, K)

    def training_step(self, batch, batch_idx):
        x, y = batch
        h = self.body(x)
        return nn.functional.cross_entropy(self.fc(h), y) + nn.functional.cross_entropy(self.fc2(h), y)


def test_several_monitors_of_one_class_in_one_trainer(tmp_path):
    def monitors():
        return [NeuralCollapseMonitor(classifier="fc"), NeuralCollapseMonitor(classifier="fc", mode="eval"),
                NeuralCollapseMonitor(classifier="fc2", name="head2"), SpectralMonitor(classifier="fc2", name="sp2")]

    mons = monitors()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    t = trainer(mons + [ckpt], max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path)
    t.fit(TwoHeads(), loader())
    assert {"nc/nc1", "nc_eval/nc1", "head2/nc1", "sp2/drift"} <= set(t.callback_metrics)
    assert len({m.state_key for m in mons}) == 4
    assert mons[0].history[-1]["nc1"] != mons[1].history[-1]["nc1"]  # train-pass vs eval-pass features
    resumed = monitors()
    trainer(resumed, max_epochs=3, default_root_dir=tmp_path).fit(TwoHeads(seed=5), loader(),
                                                                  ckpt_path=str(tmp_path / "last.ckpt"))
    for a, b in zip(mons, resumed):  # each monitor got its own state back
        assert_same_history(a.history, b.history[: len(a.history)], what=a.name)
    with pytest.raises(ValueError, match="distinct name"):
        trainer([NeuralCollapseMonitor(classifier="fc"), NeuralCollapseMonitor(classifier="fc2")], max_epochs=1).fit(
            TwoHeads(), loader())


# ----------------------------------------------------------------- item 4
def test_a_reused_monitor_starts_afresh_with_the_next_model():
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=2).fit(TinyModule(seed=0), loader())
    second = TinyModule(seed=7)
    expected = initial_basis(second.fc.weight, "fourier")
    trainer([monitor], max_epochs=1).fit(second, loader())
    assert [h["epoch"] for h in monitor.history] == [-1, 0]
    assert torch.allclose(monitor.basis.right, expected.right, atol=1e-12)


# ------------------------------------------------------------- items 6, 7
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


# ----------------------------------------------------------------- item 9
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


# ---------------------------------------------------------------- item 10
class IgnoringModule(TinyModule):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y.long(), ignore_index=-100)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_integer_label_dtypes_and_ignored_labels(dtype):
    x, y = dataset().tensors
    labels = y.to(dtype)
    if dtype == torch.int16:
        labels[::7] = -100  # cross-entropy's ignore index
    data = DataLoader(TensorDataset(x, labels), batch_size=20)
    nc, sp = NeuralCollapseMonitor(), SpectralMonitor()
    module = IgnoringModule(lr=0.0)
    trainer([nc, sp], max_epochs=1).fit(module, data)
    keep = labels != -100
    ref = neural_collapse(_features(module, x)[keep], labels[keep].long(), module.fc.weight.detach())
    assert nc.history[-1]["num_ignored"] == (~keep).sum().item() == sp.history[-1]["num_ignored"]
    assert nc.history[-1]["num_samples"] == keep.sum().item()
    assert math.isclose(nc.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)


# ---------------------------------------------------------------- item 11
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


# ------------------------------------------------------- checkpoint / stop
def test_checkpoint_and_early_stopping_on_a_monitored_value(tmp_path):
    nc = NeuralCollapseMonitor()
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="nc/nc1", mode="min", save_on_train_epoch_end=True)
    stop = EarlyStopping(monitor="nc/nc1", mode="min", patience=50, check_on_train_epoch_end=True)
    trainer([nc, ckpt, stop], max_epochs=3, enable_checkpointing=True).fit(TinyModule(), loader())
    assert math.isclose(ckpt.best_model_score.item(), min(h["nc1"] for h in nc.history if h["epoch"] >= 0))


@pytest.mark.parametrize("mode, key", [("train", "nc/nc1"), ("val", "nc_val/nc1")])
def test_validation_time_checkpoints_see_the_values(tmp_path, mode, key):
    nc = NeuralCollapseMonitor(mode=mode)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor=key, mode="min")  # checks at every validation end
    trainer([nc, ckpt], max_epochs=2, enable_checkpointing=True, val_check_interval=0.5).fit(
        TinyModule(), loader(), DataLoader(dataset(100), batch_size=50))
    assert ckpt.best_model_score is not None
    assert any(math.isclose(ckpt.best_model_score.item(), h["nc1"]) for h in nc.history)
    if mode == "val":  # measured at every validation run, mid-epoch too
        assert [h["epochs_done"] for h in nc.history] == [0.0, 0.5, 1.0, 1.5, 2.0]


# --------------------------------------------------------- eval, val modes
def test_eval_mode_respects_limit_train_batches():
    nc = NeuralCollapseMonitor(mode="eval")
    trainer([nc], max_epochs=1, limit_train_batches=3).fit(TinyModule(), loader())
    assert [h["num_samples"] for h in nc.history] == [60, 60]


def test_validation_loader_mode_and_trainer_validate():
    module = TinyModule(lr=0.0)
    nc = NeuralCollapseMonitor(mode="val")
    val = DataLoader(dataset(100), batch_size=30)
    t = trainer([nc], max_epochs=1)
    t.fit(module, loader(), val)
    x, y = dataset(100).tensors
    ref = neural_collapse(_features(module, x, batch_size=30), y, module.fc.weight.detach())
    assert math.isclose(nc.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)
    alone = NeuralCollapseMonitor(mode="val")
    t2 = trainer([alone], max_epochs=1)
    t2.validate(module, val)
    assert math.isclose(t2.callback_metrics["nc_val/nc1"].item(), ref["nc1"], rel_tol=1e-9)


class NoForward(L.LightningModule):
    num_classes = K

    def __init__(self):
        super().__init__()
        self.inner = TinyModule()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.inner(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_module_without_forward():
    train_mode = NeuralCollapseMonitor()
    with pytest.warns(UserWarning, match="no forward"):
        trainer([train_mode], max_epochs=1).fit(NoForward(), loader())
    assert [h["epoch"] for h in train_mode.history] == [0]
    with pytest.raises(ValueError, match="forward_fn"):
        trainer([NeuralCollapseMonitor(mode="eval")], max_epochs=1).fit(NoForward(), loader())
    given = NeuralCollapseMonitor(mode="eval", forward_fn=lambda module, batch: module.inner(batch[0]))
    trainer([given], max_epochs=1).fit(NoForward(), loader())
    assert [h["epoch"] for h in given.history] == [-1, 0]


# ------------------------------------------------------- finding the layer
class Ambiguous(TinyModule):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, K)


def test_auto_detection_picks_the_logit_layer_or_refuses():
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=1).fit(TinyModule(), loader())  # TinyModule.num_classes picks fc among 3
    assert monitor._classifier_name == "fc"
    with pytest.raises(ValueError, match=r"2 nn.Linear layers .* out_features == num_classes = 5"):
        trainer([SpectralMonitor()], max_epochs=1).fit(Ambiguous(), loader())
    plain = TinyModule()
    plain.num_classes = None
    with pytest.raises(ValueError, match="number of classes is unknown"):
        trainer([SpectralMonitor()], max_epochs=1).fit(plain, loader())


# ------------------------------------------ values from the weights in use
class Recorder(L.Callback):
    """Keeps every training step's classifier input and the classifier it met, independently of the monitor."""

    def setup(self, trainer, pl_module, stage):
        self.feats, self.labels, self.weights = [], [], []
        pl_module.fc.register_forward_hook(lambda m, i, o: self.feats.append(i[0].detach().clone()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weights.append((pl_module.fc.weight.detach().double().clone(), batch[1].shape[0]))
        self.labels.append(batch[1])
        self.feats.clear() if batch_idx == 0 else None


def test_train_mode_pairs_features_with_the_classifier_that_produced_them():
    recorder, nc = Recorder(), NeuralCollapseMonitor(log_at_init=False)
    trainer([recorder, nc], max_epochs=1).fit(TinyModule(lr=0.5), loader())
    w_avg = sum(w * n for w, n in recorder.weights) / sum(n for _, n in recorder.weights)
    feats, labels = torch.cat(recorder.feats), torch.cat(recorder.labels)
    ref = neural_collapse(feats, labels, w_avg)
    final = neural_collapse(feats, labels, recorder.weights[-1][0])
    assert math.isclose(nc.history[-1]["nc3"], ref["nc3"], rel_tol=1e-9)
    assert not math.isclose(nc.history[-1]["nc3"], final["nc3"], rel_tol=1e-3)


# ------------------------------------------------------ logging, plotting
def test_metrics_selection_logs_only_what_was_asked():
    t = trainer([NeuralCollapseMonitor(metrics=["nc1", "nc4"])], max_epochs=2)
    t.fit(TinyModule(), loader())
    assert {k for k in t.callback_metrics if k.startswith("nc/")} == {"nc/nc1", "nc/nc4"}


class ImageLogger(Logger):
    name, version = "images", 0
    images: list = []

    @property
    def experiment(self):
        return None

    def log_hyperparams(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_image(self, key, images):
        self.images.append(key)


def test_figures_go_to_the_log_dir_and_to_image_loggers(tmp_path):
    images = ImageLogger()
    csv = CSVLogger(tmp_path, name="run", version=0)
    trainer([NeuralCollapseMonitor(), SpectralMonitor()], max_epochs=2, logger=[csv, images]).fit(TinyModule(), loader())
    log_dir = tmp_path / "run" / "version_0"
    for name in ("nc.png", "spectral.png", "spectral_logit_spectrum.png"):
        assert (log_dir / name).read_bytes()[:4] == b"\x89PNG"
    assert set(images.images) == {"nc/neural_collapse", "spectral/spectral", "spectral/logit_spectrum"}
    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "step", "nc/nc1", "spectral/drift"} <= set(header)


def test_plot_history_log_epoch_axis_and_late_keys(tmp_path):
    history = [{"epoch": e - 1, "epochs_done": float(e), "nc1": 1.0 / (e + 1), **({"nc4": 0.1} if e else {})}
               for e in range(31)]
    fig = plot_history(history, tmp_path / "h.png", "t")
    short = plot_history(history[:5], tmp_path / "s.png", "t")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    # nc4, absent at first, is plotted; panels titled in words (issue 22 item 8), not by raw key
    assert [ax.get_title().split()[0] for ax in axes] == ["NC1", "NC4"]
    # more than a decade: symlog, which shows epoch 0; one epoch range for every panel (nc4 starts later)
    assert [ax.get_xscale() for ax in axes] == ["symlog", "symlog"]
    assert axes[0].get_xlim() == axes[1].get_xlim()
    assert all(ax.get_xscale() == "linear" for ax in short.axes if ax.get_visible())


def test_importing_the_callbacks_leaves_matplotlib_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import hadainit.callbacks, hadainit.experiments.figures; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "svg"


def test_constructor_choices_are_typed_for_lightning_cli():
    hints = typing.get_type_hints(MonitorBase.__init__)
    assert typing.get_args(hints["mode"]) == ("train", "eval", "val")
    assert typing.get_args(hints["capture"]) == ("hook", "manual")
    assert set(NC_KEYS) >= {"nc1", "nc4", "cdnv"}


# ------------------------------------------- accumulation, torch.compile
def test_gradient_accumulation_and_torch_compile():
    x, y = dataset().tensors
    for module, kwargs in [(TinyModule(lr=0.0), {"accumulate_grad_batches": 3}),
                           (torch.compile(TinyModule(lr=0.0), backend="aot_eager"), {})]:
        nc, sp = NeuralCollapseMonitor(), SpectralMonitor()
        trainer([nc, sp], max_epochs=1, **kwargs).fit(module, loader())
        inner = getattr(module, "_orig_mod", module)
        ref = neural_collapse(_features(inner, x), y, inner.fc.weight.detach())
        assert nc.history[-1]["num_samples"] == 200 and sp.history[-1]["num_samples"] == 200
        assert math.isclose(nc.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)


# ------------------------------------------------ review: pass isolation
def test_an_eval_pass_never_leaks_into_another_monitors_training_sums():
    results = []
    for order in (0, 1):
        train_mode, eval_mode = NeuralCollapseMonitor(), SpectralMonitor(mode="eval")
        monitors = [train_mode, eval_mode] if order == 0 else [eval_mode, train_mode]
        trainer(monitors, max_epochs=1).fit(TinyModule(lr=0.0), DataLoader(dataset(), batch_size=20, shuffle=True))
        results.append(train_mode.history[-1])
    assert results[0]["num_samples"] == results[1]["num_samples"] == 200
    assert math.isclose(results[0]["nc1"], results[1]["nc1"], rel_tol=1e-12)


class TwoValLoaders(TinyModule):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx)


def test_val_mode_measures_one_validation_loader():
    module = TwoValLoaders(lr=0.0)
    loaders = [DataLoader(dataset(100), batch_size=50), DataLoader(dataset(60), batch_size=30)]
    first, second = NeuralCollapseMonitor(mode="val"), NeuralCollapseMonitor(mode="val", val_dataloader_idx=1,
                                                                          name="nc_val1")
    trainer([first, second], max_epochs=2).fit(module, loader(), loaders)
    assert [h["num_samples"] for h in first.history] == [100, 100, 100]  # the initial value too
    assert [h["num_samples"] for h in second.history] == [60, 60, 60]
    assert first.history[0]["nc1"] == first.history[-1]["nc1"]  # frozen network, same data: same value


def test_spectral_monitor_under_trainer_validate():
    monitor = SpectralMonitor(mode="val")
    t = trainer([monitor], max_epochs=1)
    with pytest.warns(UserWarning, match="no initial basis"):
        t.validate(TinyModule(), DataLoader(dataset(100), batch_size=50))
    assert "spectral_val/logit_leakage" in t.callback_metrics and "spectral_val/drift" not in t.callback_metrics
