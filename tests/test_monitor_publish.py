"""Where a monitor's values go (``Publisher``): checkpoint callbacks and early stopping, ``trainer.validate``'s
results, the loggers (Lightning's step and separator, charting loggers), the figures."""

import math
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from torch.utils.data import DataLoader

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.callbacks.plotting import plot_history
from hadainit.metrics.functional import neural_collapse
from tests.lightning_helpers import TinyModule, body_features, dataset, loader, trainer


# --------------------------------- checkpoint callbacks and early stopping
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


def test_trainer_validate_returns_the_monitor_values():
    module = TinyModule(lr=0.0)
    val = DataLoader(dataset(100), batch_size=30)
    t = trainer([NeuralCollapseMonitor(mode="val")], max_epochs=1)
    results = t.validate(module, val, verbose=False)
    x, y = dataset(100).tensors
    ref = neural_collapse(body_features(module, x), y, module.fc.weight.detach())
    assert math.isclose(results[0]["nc_val/nc1"], ref["nc1"], rel_tol=1e-9)
    assert t.callback_metrics["nc_val/nc1"].dtype == torch.float64


# ----------------------------------------------------------------- loggers
def test_metrics_selection_logs_only_what_was_asked():
    t = trainer([NeuralCollapseMonitor(metrics=["nc1", "nc4"])], max_epochs=2)
    t.fit(TinyModule(), loader())
    assert {k for k in t.callback_metrics if k.startswith("nc/")} == {"nc/nc1", "nc/nc4"}


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


# ----------------------------------------------------------------- figures
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


def test_plot_dir_under_a_file_is_refused_before_training(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    module = TinyModule()
    before = module.fc.weight.detach().clone()
    with pytest.raises(ValueError, match="lies under .*file, which is a file"):
        trainer([NeuralCollapseMonitor(plot_dir=afile / "figs")], max_epochs=2).fit(module, loader())
    assert torch.equal(module.fc.weight, before)  # refused at setup: not one step trained


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
