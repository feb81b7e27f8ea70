"""The feature source: one hook per classifier (its hub), and one eval pass shared by the monitors that would
each make the same pass, with results equal to separate passes and no call reaching a monitor with other data."""

import copy
import pickle

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.callbacks.capture import FeatureCapture, hub_of, subscribe
from tests.lightning_helpers import D, K, TinyModule, assert_same_history, dataset, trainer

BATCHES = 10  # dataset() has 200 rows, loaders below take 20 per batch


# ----------------------------------------------------------------- the hub
def test_one_hook_per_classifier_removed_with_the_last_capture():
    fc = nn.Linear(D, K)
    a, b = FeatureCapture(), FeatureCapture()
    hub = subscribe(fc, a)
    assert subscribe(fc, b) is hub and hub_of(fc) is hub and len(fc._forward_hooks) == 1
    a.active = b.active = True
    fc(torch.randn(3, D))
    assert len(a.calls) == len(b.calls) == 1
    hub.leave(a)
    assert a.calls == [] and len(fc._forward_hooks) == 1
    hub.leave(b)
    assert not fc._forward_hooks and hub_of(fc) is None


def test_a_pass_restricts_its_own_classifier_only():
    fc, other = nn.Linear(D, K), nn.Linear(D, K)
    inside, outside, elsewhere = FeatureCapture(), FeatureCapture(), FeatureCapture()
    hub = subscribe(fc, inside)
    subscribe(fc, outside)
    subscribe(other, elsewhere)
    for capture in (inside, outside, elsewhere):
        capture.active = True
    with hub.only([inside]):
        fc(torch.randn(2, D))
        other(torch.randn(2, D))  # no global: another classifier's captures are not held back
        with pytest.raises(RuntimeError, match="already running"):
            with hub.only([outside]):
                pass
    fc(torch.randn(2, D))
    assert (len(inside.calls), len(outside.calls), len(elsewhere.calls)) == (2, 1, 1)
    for capture in (inside, outside):
        hub.leave(capture)
    hub_of(other).leave(elsewhere)


def test_a_copy_of_a_hooked_model_feeds_no_capture():
    module = TinyModule()
    capture = FeatureCapture(owner=object())
    capture.active = True
    subscribe(module.fc, capture)
    for twin in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        twin(torch.randn(4, 8))
    assert capture.calls == []
    module(torch.randn(4, 8))
    assert len(capture.calls) == 1
    hub_of(module.fc).leave(capture)
    assert not module.fc._forward_hooks


# ----------------------------------------------------------------- shared passes in real runs
class Counted(TinyModule):
    """Counts the body's eval-mode calls (one per batch of an eval pass; training steps run in train mode)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eval_calls = 0
        self.body.register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        self.eval_calls += not module.training


def _fit(monitors, epochs=3, **loaders):
    L.seed_everything(3, verbose=False)
    module = Counted(lr=0.1)
    train = DataLoader(dataset(), batch_size=20, shuffle=True)  # the pass forks the RNG: passes see equal batches
    trainer(monitors, max_epochs=epochs).fit(module, train, **loaders)
    return module


def _alone(monitor_type, epochs=3, **kwargs):
    monitor = monitor_type(**kwargs)
    _fit([monitor], epochs)
    return monitor.history


def _exactly_equal(a, b, what):
    assert_same_history(a, b, rel=0.0, abs_=0.0, what=what)


def test_two_eval_monitors_share_one_pass_with_the_values_of_separate_passes():
    nc, sp = NeuralCollapseMonitor(mode="eval"), SpectralMonitor(mode="eval")
    module = _fit([nc, sp])
    assert module.eval_calls == (1 + 3) * BATCHES  # one pass at init and per epoch (was two each)
    assert [h["epoch"] for h in nc.history] == [h["epoch"] for h in sp.history] == [-1, 0, 1, 2]
    assert all(h["num_samples"] == 200 for h in nc.history + sp.history)
    _exactly_equal(nc.history, _alone(NeuralCollapseMonitor, mode="eval"), "nc")
    _exactly_equal(sp.history, _alone(SpectralMonitor, mode="eval"), "spectral")


def test_schedules_decide_who_shares_a_pass():
    # the spectral monitor measures every epoch, NC every second, the third not at initialization
    nc = NeuralCollapseMonitor(mode="eval", every_n_epochs=2)
    sp = SpectralMonitor(mode="eval")
    late = NeuralCollapseMonitor(mode="eval", log_at_init=False, at_epochs=[3], name="late")
    module = _fit([nc, sp, late], epochs=4)
    assert module.eval_calls == (1 + 4) * BATCHES
    assert [h["epoch"] for h in nc.history] == [-1, 1, 3] and [h["epoch"] for h in late.history] == [2]
    _exactly_equal(nc.history, _alone(NeuralCollapseMonitor, 4, mode="eval", every_n_epochs=2), "nc")
    _exactly_equal(sp.history, _alone(SpectralMonitor, 4, mode="eval"), "spectral")
    _exactly_equal(late.history, _alone(NeuralCollapseMonitor, 4, mode="eval", log_at_init=False, at_epochs=[3],
                                        name="late"), "late")


def test_monitors_with_other_data_keep_their_own_passes():
    small = DataLoader(dataset(60), batch_size=30)
    own_loader = NeuralCollapseMonitor(mode="eval", eval_loader=small, name="own_loader")
    fewer = NeuralCollapseMonitor(mode="eval", eval_batches=3, name="fewer")
    default = SpectralMonitor(mode="eval")
    module = _fit([own_loader, fewer, default])
    assert module.eval_calls == (1 + 3) * (2 + 3 + BATCHES)  # three passes at every point, each its own data
    assert all(h["num_samples"] == 60 for h in own_loader.history + fewer.history)
    assert all(h["num_samples"] == 200 for h in default.history)
    _exactly_equal(own_loader.history, _alone(NeuralCollapseMonitor, mode="eval", eval_loader=small,
                                              name="own_loader"), "own loader")
    _exactly_equal(fewer.history, _alone(NeuralCollapseMonitor, mode="eval", eval_batches=3, name="fewer"), "fewer")
    _exactly_equal(default.history, _alone(SpectralMonitor, mode="eval"), "default")


def test_a_train_mode_monitor_never_sees_the_shared_pass():
    nc, train_mode, sp = NeuralCollapseMonitor(mode="eval"), NeuralCollapseMonitor(), SpectralMonitor(mode="eval")
    module = _fit([nc, train_mode, sp])  # the pass runs while the train monitor's batch is still open
    assert module.eval_calls == (1 + 1 + 3) * BATCHES  # the train monitor's own init pass, then shared ones
    assert all(h["num_samples"] == 200 for h in train_mode.history)
    _exactly_equal(train_mode.history, _alone(NeuralCollapseMonitor), "train mode")
    _exactly_equal(nc.history, _alone(NeuralCollapseMonitor, mode="eval"), "nc")


class UndefinedAtInit(NeuralCollapseMonitor):
    """Its measurement at initialization is undefined (warned, no row); records the samples of each one."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.samples = []

    def _compute(self, trainer, epochs_done, samples):
        self.samples.append(samples)
        if epochs_done == 0.0:
            raise ValueError("undefined here")
        return super()._compute(trainer, epochs_done, samples)


class DecidesAtItsStart(SpectralMonitor):
    """Wants the pass at initialization only from its own ``on_train_start`` on (a subclass may decide late)."""

    started = False

    def _wants_pass(self, kind, trainer):
        return (kind != "init" or self.started) and super()._wants_pass(kind, trainer)

    def on_train_start(self, trainer, pl_module):
        self.started = True
        super().on_train_start(trainer, pl_module)


def test_a_monitor_is_fed_once_per_point_even_when_its_value_was_undefined():
    first, second = UndefinedAtInit(mode="eval", name="first"), DecidesAtItsStart(mode="eval")
    with pytest.warns(UserWarning, match="undefined here"):
        module = _fit([first, second], epochs=1)
    # the first made its initial pass alone (its row undefined: history still empty, so it still "wants" one);
    # the second's own pass at the same point must not feed it again, or its first epoch would count 400 samples
    assert first.samples == [200.0, 200.0] and [h["epoch"] for h in first.history] == [0]
    assert [h["epoch"] for h in second.history] == [-1, 0]
    assert module.eval_calls == 3 * BATCHES  # two initial passes, one shared at the epoch's end
