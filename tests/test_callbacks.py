"""The Lightning callbacks: correct values against an independent computation, resume, DDP, arguments."""

import math

import pytest
import torch
from torch import nn

from hadainit import DEFAULT_GAIN
from hadainit.bases import softmax_basis
from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor, principal_angles
from hadainit.init import spectral_record
from hadainit.metrics.functional import neural_collapse
from tests.lightning_helpers import K, TinyModule, dataset, loader, trainer


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
    basis = _init_basis(module.fc.weight)
    monitor = NeuralCollapseMonitor(mode="eval")
    trainer([monitor], max_epochs=2).fit(module, loader())
    data = dataset()
    ref = neural_collapse(_features(module, data), data.tensors[1], module.fc.weight.detach(), basis=basis)
    last = monitor.history[-1]
    assert last["epoch"] == 1 and len(monitor.history) == 2
    for key, value in ref.items():
        if key == "nc4":  # the callback's NC4 uses the previous evaluation's means
            continue
        assert math.isclose(last[key], value, rel_tol=1e-9, abs_tol=1e-12), key
    assert "nc4" in last and "nc4" not in monitor.history[0]


def test_train_mode_accumulates_the_training_forward_passes():
    module = TinyModule(lr=0.0)  # frozen network: the training-pass features equal the final ones
    monitor = NeuralCollapseMonitor(mode="train")
    t = trainer([monitor], max_epochs=1)
    t.fit(module, loader())
    data = dataset()
    ref = neural_collapse(_features(module, data), data.tensors[1], module.fc.weight.detach())
    for key in ("nc1", "cdnv", "etf_gap_means", "nc3", "kl_lyapunov"):
        assert math.isclose(monitor.history[0][key], ref[key], rel_tol=1e-9), key
        assert t.callback_metrics[f"nc/{key}"].dtype == torch.float64
        assert math.isclose(t.callback_metrics[f"nc/{key}"].item(), ref[key], rel_tol=1e-12)


def test_spectral_monitor_values():
    module = TinyModule()
    left, right = _init_basis(module.fc.weight)
    assert torch.allclose(right, spectral_record(module.fc.weight).right, atol=1e-6)  # float32 W0
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=2).fit(module, loader())
    w = module.fc.weight.detach().double()
    core = left.T @ w @ right
    off = core - torch.diag(torch.diagonal(core))
    assert monitor.basis_kind == "fourier"
    assert math.isclose(monitor.history[-1]["leakage"], (off.norm() / w.norm()).item(), rel_tol=1e-12)
    assert monitor.history[-1]["leakage"] > 1e-4  # a real network does move the singular vectors
    assert torch.allclose(torch.tensor(monitor.singular_values[-1], dtype=torch.float64), torch.linalg.svdvals(w))
    assert monitor.history[-1]["kl_lyapunov"] > 0


def test_spectral_monitor_default_init_uses_principal_angles():
    frozen = TinyModule(init="default", lr=0.0)
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=1).fit(frozen, loader())
    assert monitor.basis_kind == "svd"
    assert monitor.history[0]["angle_left_max"] < 1e-6 and monitor.history[0]["angle_right_max"] < 1e-6
    moving = TinyModule(init="default")
    monitor = SpectralMonitor()
    trainer([monitor], max_epochs=2).fit(moving, loader())
    assert monitor.history[-1]["angle_right_max"] > 1e-3


def test_principal_angles_closed_form():
    e = torch.eye(4, dtype=torch.float64)
    theta = 0.3
    rotated = torch.stack((e[0], math.cos(theta) * e[1] + math.sin(theta) * e[2]), dim=1)
    angles = principal_angles(e[:, :2], rotated)
    assert torch.allclose(angles, torch.tensor([theta, 0.0], dtype=torch.float64), atol=1e-7)


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
        assert [h["epoch"] for h in b.history] == [0, 1, 2, 3]
        for ha, hb in zip(a.history, b.history):
            for key, value in ha.items():
                assert math.isclose(hb[key], value, rel_tol=1e-9, abs_tol=1e-12), (type(a).__name__, key)


def test_no_work_during_sanity_check_and_every_n_epochs():
    monitor = NeuralCollapseMonitor(every_n_epochs=2)
    spectral = SpectralMonitor(every_n_epochs=3)
    trainer([monitor, spectral], max_epochs=4, num_sanity_val_steps=2, limit_val_batches=2).fit(
        TinyModule(), loader(), loader()
    )
    assert [h["epoch"] for h in monitor.history] == [1, 3]
    assert [h["epoch"] for h in spectral.history] == [2]


def test_bf16_mixed_precision_on_cpu():
    monitor = NeuralCollapseMonitor()
    trainer([monitor, SpectralMonitor()], max_epochs=1, precision="bf16-mixed").fit(TinyModule(), loader())
    assert all(math.isfinite(v) for v in monitor.history[0].values())


def test_plots_written(tmp_path):
    trainer([NeuralCollapseMonitor(plot_dir=tmp_path), SpectralMonitor(plot_dir=tmp_path)], max_epochs=2).fit(
        TinyModule(), loader()
    )
    for name in ("neural_collapse.png", "spectral.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(mode="test"), ValueError, "mode"),
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
        trainer([NeuralCollapseMonitor()], max_epochs=1).fit(NoLinear(), loader())
    with pytest.raises(ValueError, match="num_classes=7"):
        trainer([NeuralCollapseMonitor(num_classes=7)], max_epochs=1).fit(TinyModule(), loader())


def test_ddp_spawn_two_processes_equal_single_process():
    # torch.multiprocessing drops the hadamard_ record from the weight: the kind is given explicitly
    def monitors():
        return [NeuralCollapseMonitor(init_basis="fourier"), SpectralMonitor(init_basis="fourier")]

    single = trainer(monitors(), max_epochs=2)
    single.fit(TinyModule(), loader(batch_size=40))
    ddp = trainer(monitors(), max_epochs=2, strategy="ddp_spawn", devices=2, use_distributed_sampler=False)
    ddp.fit(TinyModule(), loader(batch_size=20))  # 2 ranks x 20 = the single run's batches of 40
    keys = [k for k in single.callback_metrics if k.startswith(("nc/", "spectral/"))]
    assert len(keys) > 15
    for key in keys:
        a, b = single.callback_metrics[key].item(), ddp.callback_metrics[key].item()
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8), (key, a, b)  # float32 training, 2 reductions


def test_initial_basis_recovery():
    import copy

    from hadainit import hadamard_
    from hadainit.callbacks.basis import initial_basis

    w = hadamard_(torch.empty(8, 20, dtype=torch.float64), zero_mean=True, generator=torch.Generator().manual_seed(0))
    rec = spectral_record(w)
    basis = initial_basis(w)
    assert basis.kind == "walsh"
    assert torch.allclose(basis.right[:, 1:], rec.right[:, 1:], atol=1e-14)  # recovered from W0 itself
    assert torch.allclose(basis.right.T @ basis.right, torch.eye(8, dtype=torch.float64), atol=1e-12)
    core = basis.left.T @ w @ basis.right
    assert (core - torch.diag(torch.diagonal(core))).abs().max() < 1e-14
    lost = copy.deepcopy(torch.nn.Parameter(w))  # the documented limitation: deepcopy drops the record
    assert spectral_record(lost) is None and initial_basis(lost).kind == "svd"
    assert initial_basis(lost, "walsh").kind == "walsh"
    with pytest.raises(ValueError, match="init_basis"):
        NeuralCollapseMonitor(init_basis="dct")


def test_undefined_geometry_warns_and_training_goes_on():
    class Dead(TinyModule):
        def forward(self, x):
            return self.fc(0.0 * self.body(x) + 1.0)  # every feature identical: NC undefined

    monitor = NeuralCollapseMonitor()
    with pytest.warns(UserWarning, match="neural-collapse metrics not logged: all class means coincide"):
        trainer([monitor, SpectralMonitor()], max_epochs=2).fit(Dead(), loader())
    assert monitor.history == []
