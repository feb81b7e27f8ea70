"""`hadainit train` / `hadainit compare` end to end on synthetic data in the official CIFAR on-disk format."""

import json
import math

import pytest
import torch

from hadainit.experiments import compare as compare_mod
from hadainit.experiments import data, train
from hadainit.experiments.models import CifarResNet18
from tests.cifar_fixtures import skip_checksums, write_fake_cifar

ARGS = ["--model", "tiny", "--epochs", "2", "--batch-size", "50", "--num-workers", "0", "--lr", "0.05"]


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("data"), "cifar10", n_train=300, n_test=100)


def test_real_loading_code_reads_the_official_format(cifar10_root, monkeypatch):
    skip_checksums(monkeypatch)
    ds = data.cifar("cifar10", cifar10_root, train=True, augment=False)
    assert len(ds) == 300 and ds[0][0].shape == (3, 32, 32)
    assert sorted(set(ds.targets)) == list(range(10))


@pytest.mark.parametrize("init", ["hadamard", "default"])
def test_train_run_writes_report_plots_and_moving_metrics(cifar10_root, tmp_path, monkeypatch, init):
    skip_checksums(monkeypatch)
    out = tmp_path / init
    assert train.main(["--dataset", "cifar10", "--data-dir", str(cifar10_root), "--init", init, "--out", str(out), *ARGS]) == 0
    for name in ("report.json", "report.md", "metrics.csv", "curves.png", "nc.png", "spectral.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    epochs = report["epochs"]
    assert [e["epoch"] for e in epochs] == [-1, 0, 1]  # -1: the monitors' values at initialization
    assert epochs[0]["spectral/drift"] < 1e-6 and "nc/nc1" in epochs[0]  # float32 W0
    for key in ("nc/nc1", "nc/cdnv", "nc/etf_gap_means", "nc/kl_lyapunov", "spectral/sv_max", "val/acc", "train/loss"):
        values = [e[key] for e in epochs[1:]]
        assert all(math.isfinite(v) for v in values), key
        assert values[0] != values[1], key  # the metrics move
    drift = "spectral/drift"
    assert epochs[-1][drift] > 0
    assert report["steps_per_second"] > 0 and "nc/nc4" in report["final"]


def test_compare_two_runs(cifar10_root, tmp_path, monkeypatch):
    skip_checksums(monkeypatch)
    runs = []
    for init in ("hadamard", "etf"):
        runs.append(tmp_path / init)
        train.main(["--dataset", "cifar10", "--data-dir", str(cifar10_root), "--init", init, "--out", str(runs[-1]),
                    "--no-monitors", *ARGS])
    result = compare_mod.compare(runs, tmp_path / "cmp")
    assert set(result["final"]) == {"hadamard (hadamard)", "etf (etf)"}
    assert (tmp_path / "cmp" / "val_acc.png").is_file() and (tmp_path / "cmp" / "compare.md").is_file()
    assert compare_mod.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_cifar100_format(tmp_path, monkeypatch):
    skip_checksums(monkeypatch)
    root = write_fake_cifar(tmp_path / "data", "cifar100", n_train=200, n_test=100)
    out = tmp_path / "run"
    assert train.main(["--dataset", "cifar100", "--data-dir", str(root), "--out", str(out), "--epochs", "1",
                       "--model", "tiny", "--batch-size", "100", "--num-workers", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["nc/num_classes_seen"] == 100


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cifar-10-batches-py") in err and "--download" in err
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.cifar("mnist", tmp_path, train=True, augment=False)
    with pytest.raises(SystemExit):
        train.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])


def test_inits_and_resnet18_shape():
    model = CifarResNet18(10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.fc.in_features == 512 and not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    fc = torch.nn.Linear(512, 10)
    train.apply_init(fc, "etf", seed=0)
    assert torch.allclose(fc.weight.sum(0), torch.zeros(512), atol=1e-6) and (fc.bias == 0).all()
    with pytest.raises(ValueError, match="unknown init"):
        train.apply_init(fc, "xavier", seed=0)
