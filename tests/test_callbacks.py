"""The Lightning callbacks: correct values against an independent computation, resume, DDP, arguments."""

import math
import typing

import pytest
import torch
from torch import nn

from hadainit import DEFAULT_GAIN
from hadainit.bases import softmax_basis
from hadainit.callbacks import NC_KEYS, MonitorBase, NeuralCollapseMonitor, SpectralMonitor
from hadainit.metrics.functional import neural_collapse
from hadainit.metrics.logits import logit_spectrum
from tests.lightning_helpers import K, TinyModule, assert_same_history, assert_values_close, dataset, loader, trainer
from tests.metrics_reference import reference_drift


def _features(module, data):
    feats = []
    module.eval()
    with torch.no_grad():
        for x, _ in torch.utils.data.DataLoader(data, batch_size=50):
            feats.append(module.body(x))
    return torch.cat(feats)


def _init_basis(weight):
    # W0 = Q diag(s) V^T with Q the fourier basis (K = 5): V = W0^T Q diag(1/s), from the initial weights
    q = softmax_basis(K, "fourier")
    cols = weight.detach().double().T @ q
    s = cols.norm(dim=0)
    assert torch.allclose(s, torch.full_like(s, DEFAULT_GAIN), rtol=1e-6)
    return q, cols / s


def test_eval_mode_matches_functional_metrics_of_the_final_model():
    module = TinyModule()
    monitor = NeuralCollapseMonitor(mode="eval")
    trainer([monitor], max_epochs=2).fit(module, loader())
    data = dataset()
    ref = neural_collapse(_features(module, data), data.tensors[1], module.fc.weight.detach())
    last = monitor.history[-1]
    assert [h["epoch"] for h in monitor.history] == [-1, 0, 1]  # the first one at initialization
    for key, value in ref.items():
        if key == "nc4":  # the callback's NC4 uses the previous evaluation's means
            continue
        assert math.isclose(last[key], value, rel_tol=1e-9, abs_tol=1e-12), key
    assert "nc4" in last and "nc4" not in monitor.history[0]


def test_values_at_initialization_are_those_of_the_initial_model():
    module = TinyModule()
    data = dataset()
    ref = neural_collapse(_features(module, data), data.tensors[1], module.fc.weight.detach())
    module.train()
    monitor = NeuralCollapseMonitor()
    t = trainer([monitor], max_epochs=1)
    t.fit(module, loader())
    first = monitor.history[0]
    assert first["epoch"] == -1 and first["step"] == 0 and first["epochs_done"] == 0.0
    for key in ("nc1", "cdnv", "nc3", "kl_lyapunov"):
        assert math.isclose(first[key], ref[key], rel_tol=1e-9), key


def test_train_mode_accumulates_the_training_forward_passes():
    module = TinyModule(lr=0.0)  # frozen network: the training-pass features equal the final ones
    monitor = NeuralCollapseMonitor(mode="train")
    t = trainer([monitor], max_epochs=1)
    t.fit(module, loader())
    data = dataset()
    ref = neural_collapse(_features(module, data), data.tensors[1], module.fc.weight.detach())
    for key in ("nc1", "cdnv", "etf_gap_means", "nc3", "kl_lyapunov"):
        assert math.isclose(monitor.history[-1][key], ref[key], rel_tol=1e-9), key
        assert t.callback_metrics[f"nc/{key}"].dtype == torch.float64
        assert math.isclose(t.callback_metrics[f"nc/{key}"].item(), ref[key], rel_tol=1e-12)
    assert monitor.history[-1]["num_samples"] == 200


def test_spectral_monitor_values():
    module = TinyModule(lr=0.0)
    left, right = _init_basis(module.fc.weight)
    module.lr = 0.2
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=2).fit(module, loader())
    w = module.fc.weight.detach().double()
    assert monitor.basis.kind == "fourier"
    ref = reference_drift(w, left, right)
    for key, value in ref.items():
        assert math.isclose(monitor.history[-1][key], value, rel_tol=1e-6, abs_tol=1e-8), key  # float32 W0
    assert monitor.history[-1]["drift"] > 1e-2  # a real network does move the singular vectors
    assert torch.allclose(torch.tensor(monitor.history[-1]["singular_values"], dtype=torch.float64),
                          torch.linalg.svdvals(w))
    assert monitor.history[-1]["kl_lyapunov"] > 0


def test_spectral_monitor_logit_spectrum_matches_a_frozen_network():
    module = TinyModule(lr=0.0)
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=1).fit(module, loader())
    data = dataset()
    ref = logit_spectrum(_features(module, data), data.tensors[1], module.fc.weight.detach(), module.fc.bias.detach())
    assert_values_close(monitor.history[-1], ref, rel=1e-5, abs_=1e-6)  # float32 logits vs float64


def test_default_init_gets_the_same_drift_keys_and_a_warning():
    frozen = TinyModule(init="default", lr=0.0)
    monitor = SpectralMonitor()
    with pytest.warns(UserWarning, match="initial basis is not known"):
        trainer([monitor], max_epochs=1).fit(frozen, loader())
    assert monitor.basis.kind == "svd"
    assert monitor.history[-1]["drift"] < 1e-6 and monitor.history[-1]["drift_angle"] < 1e-3
    moving = TinyModule(init="default")
    monitor = SpectralMonitor(init_basis="svd")  # chosen, not guessed: no warning
    trainer([monitor], max_epochs=2).fit(moving, loader())
    assert monitor.history[-1]["drift"] > 1e-3


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def monitors():
        return [NeuralCollapseMonitor(), SpectralMonitor()]

    full = monitors()
    trainer(full, max_epochs=4).fit(TinyModule(seed=0), loader())

    first = monitors()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(first + [ckpt], max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path).fit(
        TinyModule(seed=0), loader()
    )
    resumed = monitors()
    # a different seed: hadamard_ draws another V, so only the restored state can give the true basis
    trainer(resumed, max_epochs=4, default_root_dir=tmp_path).fit(
        TinyModule(seed=123), loader(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    for a, b in zip(full, resumed):
        assert [h["epoch"] for h in b.history] == [-1, 0, 1, 2, 3]
        assert_same_history(a.history, b.history, what=type(a).__name__)


def test_no_work_during_sanity_check_and_every_n_epochs():
    monitor = NeuralCollapseMonitor(every_n_epochs=2)
    spectral = SpectralMonitor(every_n_epochs=3)
    trainer([monitor, spectral], max_epochs=4, num_sanity_val_steps=2, limit_val_batches=2).fit(
        TinyModule(), loader(), loader()
    )
    assert [h["epoch"] for h in monitor.history] == [-1, 1, 3]
    assert [h["epoch"] for h in spectral.history] == [-1, 2]


def test_bf16_mixed_precision_on_cpu():
    monitor = NeuralCollapseMonitor()
    trainer([monitor, SpectralMonitor()], max_epochs=1, precision="bf16-mixed").fit(TinyModule(), loader())
    assert all(math.isfinite(v) for v in monitor.history[-1].values())


def test_plots_written(tmp_path):
    trainer([NeuralCollapseMonitor(plot_dir=tmp_path), SpectralMonitor(plot_dir=tmp_path)], max_epochs=2).fit(
        TinyModule(), loader()
    )
    for name in ("nc.png", "spectral.png", "spectral_logit_spectrum.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(mode="test"), ValueError, "mode"),
        (dict(capture="always"), ValueError, "capture"),
        (dict(mode="eval", capture="manual"), ValueError, "use the hook"),
        (dict(name="a/b"), ValueError, "name"),
        (dict(metrics=["nc1", "nc9"]), ValueError, r"unknown metrics \['nc9'\]"),
        (dict(metrics="nc1"), TypeError, "list of key names"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(every_n_epochs=0), ValueError, "every_n_epochs"),
        (dict(mode="train", eval_batches=3), ValueError, "mode='eval'"),
        (dict(global_mean="median"), ValueError, "global_mean"),
        (dict(num_classes=1), ValueError, "num_classes"),
        (dict(classifier=3), TypeError, "attribute path"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        NeuralCollapseMonitor(**kwargs)


def test_bad_classifier_paths():
    with pytest.raises(ValueError, match="does not exist"):
        trainer([NeuralCollapseMonitor(classifier="head")], max_epochs=1).fit(TinyModule(), loader())
    with pytest.raises(ValueError, match="not an nn.Linear"):
        trainer([SpectralMonitor(classifier="body")], max_epochs=1).fit(TinyModule(), loader())

    class NoLinear(TinyModule):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv1d(1, 1, 1))
            self.fc = nn.Identity()

    with pytest.raises(ValueError, match="no nn.Linear"):
        trainer([NeuralCollapseMonitor(num_classes=K)], max_epochs=1).fit(NoLinear(), loader())
    with pytest.raises(ValueError, match="num_classes = 7"):
        trainer([NeuralCollapseMonitor(num_classes=7)], max_epochs=1).fit(TinyModule(), loader())


def test_ddp_spawn_two_processes_equal_single_process():
    # torch.multiprocessing drops the hadamard_ record from the weight: the kind is given explicitly; the two
    # eval-mode monitors share one pass on every rank (tests/test_feature_source.py)
    def monitors():
        return [NeuralCollapseMonitor(), SpectralMonitor(init_basis="fourier"),
                NeuralCollapseMonitor(mode="eval"), SpectralMonitor(mode="eval", init_basis="fourier")]

    single = trainer(monitors(), max_epochs=2)
    single.fit(TinyModule(), loader(batch_size=40))
    ddp = trainer(monitors(), max_epochs=2, strategy="ddp_spawn", devices=2, use_distributed_sampler=False)
    ddp.fit(TinyModule(), loader(batch_size=20))  # 2 ranks x 20 = the single run's batches of 40
    keys = [k for k in single.callback_metrics if k.startswith(("nc/", "spectral/", "nc_eval/", "spectral_eval/"))]
    assert len(keys) > 15 and any(k.startswith("spectral_eval/") for k in keys)
    for key in keys:
        a, b = single.callback_metrics[key].item(), ddp.callback_metrics[key].item()
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8), (key, a, b)  # float32 training, 2 reductions


class SafeIgnore(TinyModule):
    """Cross-entropy that stays finite on a batch whose labels are all ignored."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y, reduction="sum") / (y != -100).sum().clamp_min(1)


def test_ddp_with_a_rank_whose_first_batch_is_all_ignored():
    # every decision is taken on synced counts: a rank that saw nothing must not leave the other waiting
    import faulthandler

    from torch.utils.data import DataLoader

    from tests.lightning_helpers import InterleavedSampler

    x, y = dataset().tensors
    y = y.clone()
    y[1:40:2] = -100  # rank 1 of 2 takes the odd indices: its first batch of 20 is all ignored

    def data(batch_size):
        return DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, sampler=InterleavedSampler(200))

    single = trainer([NeuralCollapseMonitor(), SpectralMonitor(init_basis="fourier")], max_epochs=1)
    single.fit(SafeIgnore(lr=0.0), data(40))  # frozen: the ranks average gradients differently from one process
    faulthandler.dump_traceback_later(300, exit=True)  # a hang fails the run instead of stalling it
    try:
        ddp = trainer([NeuralCollapseMonitor(), SpectralMonitor(init_basis="fourier")], max_epochs=1,
                      strategy="ddp_spawn", devices=2, use_distributed_sampler=False)
        ddp.fit(SafeIgnore(lr=0.0), data(20))
    finally:
        faulthandler.cancel_dump_traceback_later()
    for key in ("nc/num_ignored", "nc/num_samples", "nc/nc1", "spectral/kl_lyapunov", "spectral/drift"):
        a, b = single.callback_metrics[key].item(), ddp.callback_metrics[key].item()
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8), (key, a, b)
    assert single.callback_metrics["nc/num_ignored"].item() == 20


def test_undefined_geometry_warns_and_training_goes_on():
    class Dead(TinyModule):
        def forward(self, x):
            return self.fc(0.0 * self.body(x) + 1.0)  # every feature identical: NC undefined

    monitor = NeuralCollapseMonitor()
    with pytest.warns(UserWarning, match=r"values not logged at (initialization|epoch \d+): all class means coincide"):
        trainer([monitor, SpectralMonitor()], max_epochs=2).fit(Dead(), loader())
    assert monitor.history == []


# ------------------------------------------------------------- the options
def test_constructor_choices_are_typed_for_lightning_cli():
    hints = typing.get_type_hints(MonitorBase.__init__)
    assert typing.get_args(hints["mode"]) == ("train", "eval", "val")
    assert typing.get_args(hints["capture"]) == ("hook", "manual")
    assert set(NC_KEYS) >= {"nc1", "nc4", "cdnv"}


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


def test_an_option_error_names_the_monitor():
    """Both monitors take the shared options: the message says whose (was: "every_n_epochs must be ..." alone, which
    ``hadainit train --nc_monitor.every_n_epochs 0`` printed as it was)."""
    with pytest.raises(ValueError, match=r"^SpectralMonitor: every_n_epochs must be a positive int"):
        SpectralMonitor(every_n_epochs=0)
    with pytest.raises(TypeError, match=r"^NeuralCollapseMonitor: ignore_index must be an int or None"):
        NeuralCollapseMonitor(ignore_index=1.5)
