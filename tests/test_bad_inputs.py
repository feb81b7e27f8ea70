"""Every row of docs/bad_inputs.md, executed: input -> exception type and message."""

import math
import re
from pathlib import Path

import pytest
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hadainit import (
    basis_matrix,
    constructible_orders,
    fwht,
    hadamard_,
    hadamard_matrix,
    is_constructible,
    softmax_basis,
    spectral_init,
)
from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.drift import InitialBasis, drift, initial_basis
from hadainit.experiments import data
from hadainit.metrics import NearestMeanMismatch, NeuralCollapse
from hadainit.metrics.functional import neural_collapse
from hadainit.metrics.logits import LogitSpectrum
from hadainit.init import random_orthonormal
from hadainit.ufm import (
    UFM,
    kl_lyapunov,
    spectral_flow,
    spectral_gd,
    time_to_margin,
    unbalanced_lyapunov,
    unbalanced_lyapunov_derivative,
)
from hadainit.ufm.forecast import baseline_forecast, evaluate_forecast, fit_forecast, log_epoch_slope, spectral_margin
from tests.lightning_helpers import TinyModule, loader, trainer

TABLE = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
nan = math.nan
labels4 = torch.tensor([0, 1, 2, 3])


def _fit(callback, module=None):
    trainer([callback], max_epochs=1).fit(module or TinyModule(), loader())


class _NoLinear(TinyModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(1, 1, 1))
        self.fc = nn.Identity()


class _TwoHeads(TinyModule):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 5)


class _Unnamed(TinyModule):
    num_classes = None


class _NoForward(TinyModule):
    forward = L.LightningModule.forward

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.fc(self.body(batch[0])), batch[1])


def _basis():
    return initial_basis(hadamard_(torch.empty(4, 8), generator=torch.Generator().manual_seed(0)), "walsh")


def _fed(metric, *args):
    metric.update(*args)
    return metric


def _seeded():
    return torch.Generator().manual_seed(0)


def _ufm(left, right):
    return UFM(torch.randn(4, 8, generator=_seeded()), torch.randn(8, 4, generator=_seeded()), left=left, right=right)


def _series():
    """A growing spectrum series, K = 4 (the one of tests/test_forecast.py)."""
    e = torch.arange(8, dtype=torch.float64)
    return e, torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64) * (1 + 0.3 * e)[:, None]


def _forecast():
    return fit_forecast(*_series())


def _baseline():
    e, lam = _series()
    return baseline_forecast(e[1:], lam[1:])


def _zero_row_weight():
    w = torch.randn(4, 6)
    w[1] = 0
    return w


CASES = {
    "hadamard-order": lambda _: hadamard_matrix(6),
    "hadamard-type": lambda _: hadamard_matrix(4.0),
    "fwht-length": lambda _: fwht(torch.randn(3, 12)),
    "fwht-dtype": lambda _: fwht(torch.ones(4, dtype=torch.int64)),
    "fwht-dim": lambda _: fwht(torch.randn(3, 4), dim=2),
    "fwht-sparse": lambda _: fwht(torch.eye(4).to_sparse()),
    "fwht-sparse-csr": lambda _: fwht(torch.eye(4).to_sparse_csr()),
    "fwht-nested": lambda _: fwht(torch.nested.nested_tensor([torch.ones(4), torch.ones(8)])),
    "fwht-dim-type": lambda _: fwht(torch.randn(4), dim=0.0),
    "basis-k": lambda _: softmax_basis(1),
    "basis-walsh": lambda _: softmax_basis(12, "walsh"),
    "basis-kind": lambda _: softmax_basis(8, "dct"),
    "init-dims": lambda _: hadamard_(torch.empty(10)),
    "init-k-gt-d": lambda _: hadamard_(torch.empty(12, 10), basis="hadamard"),
    "init-modes-not-spanning": lambda _: hadamard_(torch.empty(16, 5), modes=[1, 2, 3]),
    "init-k-lt-2": lambda _: hadamard_(torch.empty(1, 10)),
    "init-int": lambda _: hadamard_(torch.empty(4, 8, dtype=torch.int64)),
    "init-gain": lambda _: hadamard_(torch.empty(4, 8), gain=-1.0),
    "spectral-unpaired": lambda _: spectral_init(6, 8, [1.0, 1.0, 2.0, 3.0, 3.0, 1.0], basis="fourier"),
    "spectral-d-lt-k": lambda _: spectral_init(8, 4, [1.0] * 8),
    "spectral-nan": lambda _: spectral_init(4, 8, [1.0, nan, 1.0, 1.0]),
    "gd-walsh": lambda _: spectral_gd([1.0] * 6, [1.0] * 6, lr=0.1, steps=1, basis="walsh"),
    "gd-unpaired": lambda _: spectral_gd([0.0, 1.0, 2.0, 1.0, 1.0], [1.0] * 5, lr=0.1, steps=1),
    "gd-nonsoftmax": lambda _: spectral_gd([1.0] * 12, [1.0] * 12, lr=0.1, steps=1, basis="hadamard"),
    "gd-nan": lambda _: spectral_gd([1.0, nan, 1.0, 1.0], [1.0] * 4, lr=0.1, steps=1),
    "gd-lr": lambda _: spectral_gd([1.0] * 4, [1.0] * 4, lr=0, steps=1),
    "flow-times": lambda _: spectral_flow([1.0] * 4, [1.0] * 4, [1.0, 0.5]),
    "lyapunov-zero": lambda _: kl_lyapunov(torch.tensor([1.0, 1.0, 0.0, 2.0])),
    "lyapunov-negative": lambda _: kl_lyapunov(torch.tensor([1.0, 1.0, -1.0, 2.0])),
    "lyapunov-nan": lambda _: kl_lyapunov(torch.tensor([1.0, nan, 1.0, 1.0])),
    "margin-lam0": lambda _: time_to_margin(3.0, -1.0, 4),
    "ufm-shapes": lambda _: UFM(torch.zeros(4, 6), torch.zeros(6, 5), samples_per_class=2),
    "ufm-loss": lambda _: UFM.random(4, 6).loss("hinge"),
    "ufm-decay": lambda _: UFM.random(4, 6).loss("ce", (-1.0, 0.0)),
    "dtype-basis-int": lambda _: softmax_basis(8, dtype=torch.int64),
    "dtype-basis-matrix-int": lambda _: basis_matrix(12, "hadamard", dtype=torch.int32),
    "dtype-spectral-int": lambda _: spectral_init(4, 8, [1.0] * 4, dtype=torch.int64),
    "dtype-ufm-int": lambda _: UFM.from_spectrum(4, 8, [1.0] * 4, dtype=torch.int64),
    "dtype-ufm-random-int": lambda _: UFM.random(4, 8, dtype=torch.int32),
    "dtype-orthonormal-int": lambda _: random_orthonormal(8, 4, dtype=torch.int64),
    "dtype-hadamard-bool": lambda _: hadamard_matrix(12, dtype=torch.bool),
    "dtype-hadamard-uint8": lambda _: hadamard_matrix(4, dtype=torch.uint8),
    "dtype-hadamard-str": lambda _: hadamard_matrix(4, dtype="float64"),
    "dtype-values-bool": lambda _: kl_lyapunov(torch.tensor([True, True, True])),
    "dtype-values-complex": lambda _: spectral_gd(torch.ones(4, dtype=torch.complex128), [1.0] * 4, lr=0.1, steps=1),
    "init-gain-overflow-f16": lambda _: hadamard_(torch.empty(4, 8, dtype=torch.float16), gain=1e6),
    "init-gain-overflow-f32": lambda _: hadamard_(torch.empty(4, 8), gain=1e300),
    "init-gain-underflow": lambda _: hadamard_(torch.empty(4, 8), gain=1e-300),
    "init-gain-str": lambda _: hadamard_(torch.empty(4, 8), gain="2"),
    "init-zero-mean-str": lambda _: hadamard_(torch.empty(4, 8), zero_mean="no"),
    "spectral-overflow": lambda _: spectral_init(4, 8, [1e300] * 4, dtype=torch.float32),
    "spectral-n-float": lambda _: spectral_init(4, 8, [1.0] * 4, samples_per_class=2.0),
    "ufm-random-underflow": lambda _: UFM.random(4, 8, std=1e-300, dtype=torch.float32),
    "gd-b-underflow": lambda _: spectral_gd(torch.ones(4, dtype=torch.float32), [1e-50] * 4, lr=0.1, steps=1),
    "gd-decay-str": lambda _: spectral_gd([1.0] * 4, [1.0] * 4, lr=0.1, steps=1, weight_decay="12"),
    "gd-decay-dict": lambda _: UFM.random(4, 6).loss("ce", {1: 0, 2: 0}),
    "gd-lr-str": lambda _: spectral_gd([1.0] * 4, [1.0] * 4, lr="0.1", steps=1),
    "gd-diverge-mse": lambda _: spectral_gd([0.0, 1.0, 2.0, 0.5], [0.0, 1.0, 0.3, 0.2], lr=10.0, steps=100, loss="mse"),
    "gd-diverge-ce": lambda _: spectral_gd([0.0, 1.0, 2.0, 0.5], [0.0, 1.0, 0.3, 0.2], lr=1e300, steps=5),
    "ufm-diverge": lambda _: UFM.random(4, 8, generator=_seeded()).gradient_descent(1e6, 100),
    "ufm-step-lr": lambda _: UFM.random(4, 6).step(nan),
    "ufm-left-bool": lambda _: _ufm(torch.eye(4, dtype=torch.bool), torch.eye(8, 4)),
    "ufm-record-str": lambda _: UFM.random(4, 6).gradient_descent(0.1, 1, record="loss"),
    "ufm-left-basis": lambda _: _ufm(2 * torch.eye(4), torch.eye(8, 4)),
    "ufm-right-basis": lambda _: _ufm(torch.eye(4), torch.ones(8, 4)),
    "margin-overflow": lambda _: time_to_margin(720.0, 0.5, 8),
    "margin-gamma-str": lambda _: time_to_margin("3", 0.5, 4),
    "forecast-scale-nan": lambda _: fit_forecast(_series()[0], _series()[1] * 1e300),
    "forecast-range": lambda _: fit_forecast(*_series(), time_scale_range=(0, 1)),
    "forecast-range-pair": lambda _: fit_forecast(*_series(), time_scale_range=(1,)),
    "forecast-start-float": lambda _: fit_forecast(*_series(), start=1.5),
    "forecast-complex": lambda _: fit_forecast(_series()[0], _series()[1].to(torch.complex128)),
    "forecast-epochs-span": lambda _: fit_forecast(_series()[0] * 1e300, _series()[1]),
    "forecast-predict-nan": lambda _: _forecast().predict([nan]),
    "forecast-predict-bool": lambda _: _forecast().predict([True]),
    "forecast-gamma-nan": lambda _: _forecast().epochs_to_margin(nan),
    "forecast-horizon": lambda _: _forecast().epochs_to_margin(5.0, horizon_epochs=-1),
    "baseline-epoch-zero": lambda _: _baseline().predict([0.0]),
    "margin-nan": lambda _: spectral_margin(torch.tensor([1.0, nan, 1.0])),
    "margin-inf": lambda _: spectral_margin(torch.tensor([1.0, math.inf, 1.0])),
    "margin-bool": lambda _: spectral_margin(torch.tensor([True, True, True])),
    "margin-complex": lambda _: spectral_margin(torch.ones(3, dtype=torch.complex128)),
    "margin-0d": lambda _: spectral_margin(torch.tensor(1.0)),
    "slope-inf-epoch": lambda _: log_epoch_slope([1.0, 2.0, math.inf], [1.0, 2.0, 3.0]),
    "slope-lengths": lambda _: log_epoch_slope([1.0, 2.0, 3.0], [1.0, 2.0]),
    "evaluate-fit-until": lambda _: evaluate_forecast(*_series(), fit_until=-1.0),
    "unbalanced-zero": lambda _: unbalanced_lyapunov([0.0, 1.0, 0.0, 2.0], [0.0, 1.0, 1.0, 1.0]),
    "unbalanced-shape": lambda _: unbalanced_lyapunov([0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0]),
    "unbalanced-overflow": lambda _: unbalanced_lyapunov_derivative([0.0] + [1e200] * 3, [0.0] + [1e200] * 3),
    "orders-type": lambda _: constructible_orders(4.0),
    "constructible-type": lambda _: is_constructible(True),
    "constructible-bound": lambda _: is_constructible(2**64 + 4),
    "orders-limit": lambda _: constructible_orders(10**9),
    "hadamard-device": lambda _: hadamard_matrix(4, device="nope"),
    "hadamard-device-type": lambda _: hadamard_matrix(4, device=3.5),
    "hadamard-huge": lambda _: hadamard_matrix(2**40),
    "metric-dims": lambda _: NeuralCollapse(5, 8).update(torch.randn(4, 2, 4), labels4),
    "metric-feature-dim": lambda _: NeuralCollapse(5, 8).update(torch.randn(4, 7), labels4),
    "metric-labels-range": lambda _: NeuralCollapse(5, 8).update(torch.randn(4, 8), torch.tensor([0, 1, 2, 5])),
    "metric-labels-float": lambda _: NeuralCollapse(5, 8).update(torch.randn(4, 8), labels4.float()),
    "metric-nan": lambda _: NeuralCollapse(5, 8).update(torch.full((4, 8), nan), labels4),
    "metric-degenerate": lambda _: neural_collapse(torch.ones(20, 6), torch.arange(20) % 4),
    "metric-zero-row": lambda _: neural_collapse(torch.randn(20, 6), torch.arange(20) % 4, _zero_row_weight()),
    "metric-empty": lambda _: neural_collapse(torch.empty(0, 6), torch.empty(0, dtype=torch.int64)),
    "metric-bias-nan": lambda _: neural_collapse(torch.randn(20, 6), torch.arange(20) % 4, torch.randn(4, 6),
                                                 torch.tensor([0.0, nan, 0.0, 0.0])),
    "metric-classifier-type": lambda _: NeuralCollapse(5, 8).set_classifier("fc"),
    "metric-rtol": lambda _: NeuralCollapse(5, 8, rtol=2.0),
    "metric-precision": lambda _: NeuralCollapse(5, 8, precision="float16"),
    "metric-riesz": lambda _: neural_collapse(torch.randn(20, 6), torch.arange(20) % 4, riesz_s=0.0),
    "metric-merge": lambda _: NeuralCollapse(5, 8).merge_state(dict(NeuralCollapse(5, 8).metric_state)),
    "metric-seen": lambda _: NearestMeanMismatch(5, 8).set_means(torch.zeros(5, 8), torch.zeros(5, dtype=torch.bool)),
    "callback-path": lambda _: _fit(NeuralCollapseMonitor(classifier="head")),
    "callback-not-linear": lambda _: _fit(SpectralMonitor(classifier="body")),
    "callback-no-linear": lambda _: _fit(NeuralCollapseMonitor(), _NoLinear()),
    "callback-ambiguous": lambda _: _fit(SpectralMonitor(), _TwoHeads()),
    "callback-unknown-k": lambda _: _fit(NeuralCollapseMonitor(), _Unnamed()),
    "callback-same-name": lambda _: trainer(
        [NeuralCollapseMonitor(classifier="fc"), NeuralCollapseMonitor(classifier="head")], max_epochs=1).fit(
        _TwoHeads(), loader()),
    "callback-eval-no-forward": lambda _: _fit(NeuralCollapseMonitor(mode="eval"), _NoForward()),
    "callback-labels": lambda _: trainer([NeuralCollapseMonitor()], max_epochs=1).fit(
        TinyModule(), DataLoader(TensorDataset(torch.randn(4, 8), torch.tensor([0, 1, 7, 2])), batch_size=4)),
    "callback-capture": lambda _: NeuralCollapseMonitor(capture="always"),
    "callback-metrics": lambda _: SpectralMonitor(metrics=["drift", "leakage"]),
    "callback-init-basis": lambda _: SpectralMonitor(init_basis="dct"),
    "callback-wrong-basis": lambda _: _fit(SpectralMonitor(init_basis="fourier"), TinyModule(init="default")),
    "callback-state": lambda _: SpectralMonitor().load_state_dict({"version": 2, "history": []}),
    "callback-manual": lambda _: NeuralCollapseMonitor().update(torch.randn(4, 16), labels4),
    "drift-zero": lambda _: drift(torch.zeros(4, 8), _basis()),
    "drift-basis-type": lambda _: drift(torch.randn(4, 8), (_basis().left, _basis().right)),
    "drift-basis-state": lambda _: InitialBasis.from_state_dict({"kind": "walsh"}),
    "drift-not-orthonormal": lambda _: InitialBasis("custom", 2 * _basis().left, _basis().right),
    "logits-shape": lambda _: LogitSpectrum(5).update(torch.randn(4, 3), labels4),
    "logits-k": lambda _: LogitSpectrum(2),
    "logits-unseen": lambda _: _fed(LogitSpectrum(5), torch.randn(4, 5), labels4).compute(),
    "callback-mode": lambda _: NeuralCollapseMonitor(mode="test"),
    "callback-every": lambda _: SpectralMonitor(every_n_epochs=0),
    "dataset-name": lambda tmp: data.cifar("mnist", tmp, train=True, augment=False),
    "dataset-missing": lambda tmp: data.cifar("cifar10", tmp, train=True, augment=False),
}

EXCEPTIONS = {"ValueError": ValueError, "TypeError": TypeError, "FileNotFoundError": FileNotFoundError,
              "RuntimeError": RuntimeError, "IndexError": IndexError}


def _rows():
    rows = {}
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[a-z]+(-[a-z0-9]+)+", cells[0]):
            rows[cells[0]] = (cells[2], cells[3].strip("`"))
    return rows


ROWS = _rows()


def test_table_and_cases_cover_each_other():
    assert len(ROWS) >= 40
    assert set(ROWS) == set(CASES)


@pytest.mark.parametrize("row_id", sorted(ROWS))
def test_row(row_id, tmp_path):
    exc_name, message = ROWS[row_id]
    with pytest.raises(EXCEPTIONS[exc_name]) as info:
        CASES[row_id](tmp_path)
    assert type(info.value) is EXCEPTIONS[exc_name]
    assert message in str(info.value), (message, str(info.value))
