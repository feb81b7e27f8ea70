"""The CIFAR recipe (`hadainit train --config configs/cifar10_resnet18.yaml`) on synthetic data in the official
on-disk format (CIFAR cannot be downloaded here); the loading code is the real one."""

import json
import math
from pathlib import Path

import pytest
import torch

from hadainit.experiments import data, train
from hadainit.experiments.models import CifarResNet18
from hadainit.experiments.module import apply_init
from tests.cifar_fixtures import skip_checksums, write_fake_cifar

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = ["--model.arch", "tiny", "--trainer.max_epochs", "2", "--data.batch_size", "50", "--data.num_workers", "0",
         "--model.lr", "0.05", "--trainer.precision", "32-true", "--trainer.accelerator", "cpu",
         "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("data"), "cifar10", n_train=300, n_test=100)


def test_real_loading_code_reads_the_official_format(cifar10_root, monkeypatch):
    skip_checksums(monkeypatch)
    ds = data.cifar("cifar10", cifar10_root, train=True, augment=False)
    assert len(ds) == 300 and ds[0][0].shape == (3, 32, 32)
    assert sorted(set(ds.targets)) == list(range(10))


@pytest.mark.parametrize("init", ["hadamard", "default"])
def test_the_shipped_recipe_runs_and_reports(cifar10_root, tmp_path, monkeypatch, init):
    skip_checksums(monkeypatch)
    out = tmp_path / init
    argv = ["--config", str(CONFIGS / "cifar10_resnet18.yaml"), "--data.data_dir", str(cifar10_root),
            "--model.init", init, "--out", str(out), *SMALL]
    assert train.main(argv) == 0
    for name in ("report.json", "report.md", "metrics.csv", "curves.png", "nc.png", "spectral.png", "config.yaml"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    epochs = report["epochs"]
    assert [e["epoch"] for e in epochs] == [-1, 0, 1]  # -1: the monitors' values at initialization
    assert epochs[0]["spectral/drift"] < 1e-6 and "nc/nc1" in epochs[0]  # float32 W0
    for key in ("nc/nc1", "nc/cdnv", "nc/etf_gap_means", "nc/kl_lyapunov", "spectral/sv_max", "val/acc", "train/loss"):
        values = [e[key] for e in epochs[1:]]
        assert all(math.isfinite(v) for v in values), key
        assert values[0] != values[1], key  # the metrics move
    assert epochs[-1]["spectral/drift"] > 0 and "nc/nc4" in report["final"]
    assert report["steps_per_second"] > 0 and report["config"]["model"]["arch"] == "tiny"


def test_cifar100_recipe(tmp_path, monkeypatch):
    skip_checksums(monkeypatch)
    root = write_fake_cifar(tmp_path / "data", "cifar100", n_train=200, n_test=100)
    out = tmp_path / "run"
    argv = ["--config", str(CONFIGS / "cifar100_resnet18.yaml"), "--data.data_dir", str(root), "--out", str(out),
            *SMALL, "--trainer.max_epochs", "1", "--data.batch_size", "100"]
    assert train.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_classes"] == 100 and report["final"]["nc/num_classes_seen"] == 100


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    argv = ["--config", str(CONFIGS / "cifar10_resnet18.yaml"), "--data.data_dir", str(tmp_path), "--out",
            str(tmp_path / "o"), *SMALL]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cifar-10-batches-py") in err and "download" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.cifar("mnist", tmp_path, train=True, augment=False)


def test_inits_and_resnet18_shape():
    model = CifarResNet18(10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.fc.in_features == 512 and not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    fc = torch.nn.Linear(512, 10)
    apply_init(fc, "etf", seed=0)
    assert torch.allclose(fc.weight.sum(0), torch.zeros(512), atol=1e-6) and (fc.bias == 0).all()
    with pytest.raises(ValueError, match="unknown init"):
        apply_init(fc, "xavier", seed=0)
