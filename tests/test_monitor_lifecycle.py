"""The monitors across a run's life cycle as users set it up: true precisions, layers built or replaced
by the module's own setup, trainer.validate's results, continued fits, runs stopped mid-epoch,
checkpoint schedules, label layouts, and warnings said once."""

import math
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.drift import drift, initial_basis
from hadainit.metrics.functional import neural_collapse
from tests.lightning_helpers import D, K, TinyModule, dataset, loader, trainer


def _features(module, x):
    with torch.no_grad():
        return module.body(x.to(module.fc.weight.dtype))


def _messages(record, text: str) -> list[str]:
    return [str(w.message) for w in record if text in str(w.message)]


# --------------------------------------------------------- true precision
def test_true_double_precision_eval_pass_and_values():
    """The monitor's own eval pass converts its batches like Lightning's steps do (was: Float vs Double)."""
    module = TinyModule(lr=0.0)
    nc_eval, nc_train, spectral = NeuralCollapseMonitor(mode="eval", name="nce"), NeuralCollapseMonitor(), SpectralMonitor()
    trainer([nc_eval, nc_train, spectral], max_epochs=1, precision="64-true").fit(module, loader())
    assert module.fc.weight.dtype == torch.float64
    x, y = dataset().tensors
    ref = neural_collapse(_features(module, x), y, module.fc.weight.detach())
    for monitor in (nc_eval, nc_train):
        assert [h["epoch"] for h in monitor.history] == [-1, 0]
        assert math.isclose(monitor.history[-1]["nc1"], ref["nc1"], rel_tol=1e-12)
    assert all(math.isfinite(h["drift"]) for h in spectral.history)


# ------------------------------------------- layers built by the module later
class BuiltInConfigureModel(TinyModule):
    def __init__(self):
        super().__init__(lr=0.0)
        del self.fc

    def configure_model(self):
        if not hasattr(self, "fc"):
            self.fc = nn.Linear(D, K)


class ReplacedInSetup(TinyModule):
    def __init__(self):
        super().__init__(lr=0.0)

    def setup(self, stage):
        self.fc = nn.Linear(D, K)  # e.g. a head sized from the data module


@pytest.mark.parametrize("module_type", [BuiltInConfigureModel, ReplacedInSetup])
def test_the_classifier_is_found_after_the_module_builds_it(module_type):
    module = module_type()
    nc, spectral = NeuralCollapseMonitor(), SpectralMonitor(init_basis="svd")
    trainer([nc, spectral], max_epochs=1).fit(module, loader())
    w = module.fc.weight.detach()
    sv = torch.linalg.svdvals(w.double())
    assert math.isclose(spectral.history[-1]["sv_max"], sv[0].item(), rel_tol=1e-12)
    assert spectral.history[-1]["drift"] < 1e-12  # lr = 0: the layer in use never moved
    x, y = dataset().tensors
    ref = neural_collapse(_features(module, x), y, w)
    assert math.isclose(nc.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)


# --------------------------------------------------- trainer.validate results
def test_trainer_validate_returns_the_monitor_values():
    module = TinyModule(lr=0.0)
    val = DataLoader(dataset(100), batch_size=30)
    t = trainer([NeuralCollapseMonitor(mode="val")], max_epochs=1)
    results = t.validate(module, val, verbose=False)
    x, y = dataset(100).tensors
    ref = neural_collapse(_features(module, x), y, module.fc.weight.detach())
    assert math.isclose(results[0]["nc_val/nc1"], ref["nc1"], rel_tol=1e-9)
    assert t.callback_metrics["nc_val/nc1"].dtype == torch.float64


# ------------------------------------------------------------------ warnings
def test_no_compute_before_update_warning_from_the_monitors():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer([NeuralCollapseMonitor(), SpectralMonitor()], max_epochs=2).fit(TinyModule(), loader())
    assert not _messages(record, "was called before the ``update`` method")


def test_an_undefined_value_is_warned_once_per_cause():
    n = 200
    y = torch.arange(n) % (K - 1)  # class K - 1 never appears: the logit spectrum is undefined every epoch
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, y), batch_size=20)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        spectral = SpectralMonitor()
        trainer([spectral], max_epochs=4).fit(TinyModule(), data)
    assert len(_messages(record, "logit spectrum not logged")) == 1
    assert [h["epoch"] for h in spectral.history] == [-1, 0, 1, 2, 3]  # the drift is logged all along


# ------------------------------------------------------- stopped mid-epoch
def test_a_run_stopped_mid_epoch_logs_the_fraction_it_trained():
    nc, spectral = NeuralCollapseMonitor(), SpectralMonitor()
    trainer([nc, spectral], max_epochs=5, max_steps=23).fit(TinyModule(), loader())  # 10 batches per epoch
    for monitor in (nc, spectral):
        assert [h["epochs_done"] for h in monitor.history] == [0.0, 1.0, 2.0, 2.3]
    assert nc.history[-1]["num_samples"] == 3 * 20


# ------------------------------------------------------------ continued fits
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


# ------------------------------------------------------ checkpoint schedules
def test_checkpointing_at_epochs_the_monitor_skips_is_warned(tmp_path):
    nc = NeuralCollapseMonitor(every_n_epochs=2)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "a", monitor="nc/nc1", save_on_train_epoch_end=True)
    with pytest.warns(UserWarning, match=r"ModelCheckpoint\(every_n_epochs=2"):
        trainer([nc, every_epoch], max_epochs=2, enable_checkpointing=True).fit(TinyModule(), loader())
    matched = ModelCheckpoint(dirpath=tmp_path / "b", monitor="nc/nc1", save_on_train_epoch_end=True, every_n_epochs=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer([NeuralCollapseMonitor(every_n_epochs=2), matched], max_epochs=2, enable_checkpointing=True).fit(
            TinyModule(), loader())
    assert not _messages(record, "runs every epoch")
    assert matched.best_model_path.endswith("epoch=1-step=20.ckpt")


# ------------------------------------------------------------ label layouts
def _one_hot_loader(dtype):
    x, y = dataset().tensors
    return DataLoader(TensorDataset(x, nn.functional.one_hot(y, K).to(dtype)), batch_size=20)


class OneHotModule(TinyModule):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y.float())


@pytest.mark.parametrize("dtype, error, text", [(torch.float32, TypeError, "integer class indices"),
                                                (torch.int64, ValueError, "look one-hot")])
def test_one_hot_labels_are_refused_with_the_fix(dtype, error, text):
    with pytest.raises(error, match=f"{text}.*labels_from_batch"):
        trainer([NeuralCollapseMonitor(log_at_init=False)], max_epochs=1).fit(OneHotModule(), _one_hot_loader(dtype))
    nc = NeuralCollapseMonitor(log_at_init=False, labels_from_batch=lambda batch: batch[1].argmax(-1))
    trainer([nc], max_epochs=1).fit(OneHotModule(), _one_hot_loader(dtype))
    assert nc.history[-1]["num_samples"] == 200


# ----------------------------------------------------------------- figures
def test_logit_spectrum_figure_draws_equal_pairs_once_and_says_what_it_hides(tmp_path):
    monitor = SpectralMonitor()
    monitor.history = [{"epochs_done": float(e), "lam": [e, e, 2.0 * e, 2.0 * e, 3.0 * e], "logit_leakage": 0.5,
                        "etf_angle": 0.1, "kl_lyapunov": 0.2, "kl_lyapunov_modes": math.inf if e == 0 else 0.1}
                       for e in range(4)]
    (_, fig), = monitor._figures(tmp_path)
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["modes 1, 2", "modes 3, 4", "mode 5"]
    assert "kl_lyapunov_modes (1 inf not drawn)" in labels
    assert (tmp_path / "spectral_logit_spectrum.png").is_file()


# ------------------------------------------------------- review findings
def test_a_loader_without_length_logs_whole_epochs():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            x, y = dataset().tensors
            return iter(zip(x, y))

    spectral = SpectralMonitor()
    trainer([spectral], max_epochs=2).fit(TinyModule(), DataLoader(Stream(), batch_size=20))
    assert [(h["epoch"], h["epochs_done"]) for h in spectral.history] == [(-1, 0.0), (0, 1.0), (1, 2.0)]


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


def test_a_new_trainer_with_an_explicit_basis_measures_from_the_trained_weights():
    module = TinyModule()
    spectral = SpectralMonitor(init_basis="fourier")
    trainer([spectral], max_epochs=2).fit(module, loader())
    with pytest.warns(UserWarning, match="SVD of the weights now"):
        trainer([spectral], max_epochs=1).fit(module, loader())
    assert spectral.basis.kind == "svd" and [h["epoch"] for h in spectral.history] == [-1, 0]


def test_a_failed_fit_leaves_no_hook_on_the_model():
    class Fails(TinyModule):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            raise RuntimeError("boom")

    module = Fails()
    with pytest.raises(RuntimeError, match="boom"):
        trainer([NeuralCollapseMonitor(), SpectralMonitor()], max_epochs=1).fit(module, loader())
    assert not module.fc._forward_hooks


# ------------------------------------------------ Lightning conventions (issue 22, items 5, 6, 8, 14)
def _csv_rows(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_monitors_log_at_lightnings_step_with_the_loggers_separator(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    class Dashed(CSVLogger):
        @property
        def group_separator(self) -> str:
            return "."

    table, dashed = CSVLogger(tmp_path, name="t", version=""), Dashed(tmp_path, name="d", version="")
    module = TinyModule()
    trainer([NeuralCollapseMonitor(mode="eval", plot=False)], max_epochs=2, logger=[table, dashed]).fit(
        module, loader(), loader())
    rows = _csv_rows(tmp_path / "t" / "metrics.csv")
    steps = {}  # the steps of each epoch's rows: Lightning's own (val/loss) and the monitor's
    for r in rows:
        if r.get("nc_eval/nc1") and r["epoch"] != "-1":
            steps.setdefault(int(r["epoch"]), set()).add(("nc", int(r["step"])))
        if r.get("val/loss"):
            steps.setdefault(int(r["epoch"]), set()).add(("val", int(r["step"])))
    for epoch, found in steps.items():  # one step per epoch: the monitor's rows sit on Lightning's
        assert len({s for _, s in found}) == 1 and {w for w, _ in found} == {"nc", "val"}, (epoch, found)
    other = _csv_rows(tmp_path / "d" / "metrics.csv")
    assert any(r.get("nc_eval.nc1") for r in other) and not any(k.startswith("nc_eval/") for k in other[0])


def test_charting_loggers_get_no_bookkeeping_metrics(tmp_path):
    from lightning.pytorch.loggers import Logger

    class Recorder(Logger):
        name, version = "rec", 0
        logged: list = []

        def log_metrics(self, metrics, step=None):
            self.logged.append(dict(metrics))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    rec = Recorder()
    trainer([SpectralMonitor(plot=False)], max_epochs=1, logger=rec).fit(TinyModule(), loader())
    mine = [m for m in rec.logged if any(k.startswith("spectral/") for k in m)]
    assert mine and not any("epochs_done" in m or m.get("epoch") == -1 for m in mine)


def test_without_a_logger_the_monitor_says_so():
    with pytest.warns(UserWarning, match="the trainer has no logger"):
        trainer([NeuralCollapseMonitor()], max_epochs=1).fit(TinyModule(), loader())


def test_both_monitors_take_num_classes_first_and_show_every_option():
    import inspect

    for cls in (NeuralCollapseMonitor, SpectralMonitor):
        params = inspect.signature(cls).parameters
        assert list(params)[0] == "num_classes" and params["num_classes"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert {"mode", "every_n_epochs", "plot_dir", "forward_fn"} <= set(params)
        assert "every_n_epochs: measure at the end of every n-th" in cls.__doc__
        assert cls(K).num_classes == K


def test_two_default_monitors_of_one_class_get_hadainits_message():
    with pytest.raises(ValueError, match="two monitors log under 'nc'/: give each a distinct name"):
        trainer([NeuralCollapseMonitor(), NeuralCollapseMonitor()], max_epochs=1)


def test_mode_val_without_validation_batches_names_the_option():
    with pytest.raises(ValueError, match="mode='val'\\) measures the validation batches, but this fit has no valid"):
        trainer([NeuralCollapseMonitor(mode="val")], max_epochs=1).fit(TinyModule(), loader())


def test_plot_dir_under_a_file_is_refused_before_training(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    module = TinyModule()
    before = module.fc.weight.detach().clone()
    with pytest.raises(ValueError, match="lies under .*file, which is a file"):
        trainer([NeuralCollapseMonitor(plot_dir=afile / "figs")], max_epochs=2).fit(module, loader())
    assert torch.equal(module.fc.weight, before)  # refused at setup: not one step trained


def test_a_lazy_classifier_is_refused_in_one_line():
    class Lazy(TinyModule):
        def __init__(self):
            super().__init__()
            self.fc = nn.LazyLinear(K)

    with pytest.raises(ValueError, match="nn.LazyLinear that has not been called yet"):
        trainer([NeuralCollapseMonitor(plot=False)], max_epochs=1).fit(Lazy(), loader())


def test_dashboards_share_the_epoch_range_and_scale_logs_past_init(tmp_path):
    from hadainit.callbacks.plotting import plot_history, readable

    history = [{"epochs_done": 0.0, "drift": 1e-8, "nc1": 2.0}]
    history += [{"epochs_done": float(e), "drift": 0.01 * e, "nc1": 2.0 / e, "nc4": 0.5 / e} for e in range(1, 31)]
    fig = plot_history(history, tmp_path / "h.png", "t")
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {readable("drift"), readable("nc1"), readable("nc4")} and readable("nc1").startswith("NC1")
    assert len({ax.get_xlim() for ax in axes.values()}) == 1  # nc4 (from epoch 1) in the same frame as the rest
    drift_ax = axes[readable("drift")]
    assert drift_ax.get_yscale() == "log"
    low, high = drift_ax.get_ylim()
    assert 0.005 < low < 0.01 and 0.3 < high < 0.6  # the values after init, not down to 1e-8
    assert any("off scale" in t.get_text() for t in drift_ax.texts)
