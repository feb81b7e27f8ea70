"""The feature source: one hook per classifier (its hub), and one eval pass shared by the monitors that would
each make the same pass, with results equal to separate passes and no call reaching a monitor with other data."""

import copy
import math
import pickle

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hadainit.callbacks import NeuralCollapseMonitor, SpectralMonitor
from hadainit.callbacks.capture import FeatureCapture, hub_of, model_pass, subscribe
from hadainit.metrics.functional import neural_collapse
from tests.lightning_helpers import (
    D,
    K,
    TinyModule,
    assert_same_history,
    batched_features,
    body_features,
    dataset,
    loader,
    trainer,
)

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


def test_a_model_pass_holds_back_the_other_heads_of_the_model():
    model = nn.ModuleDict({"fc": nn.Linear(D, K), "fc2": nn.Linear(D, K)})
    mine, other_head, outside = FeatureCapture(), FeatureCapture(), FeatureCapture()
    hub = subscribe(model["fc"], mine)
    subscribe(model["fc2"], other_head)
    lone = nn.Linear(D, K)
    subscribe(lone, outside)
    for capture in (mine, other_head, outside):
        capture.active = True
    with model_pass(model, hub, [mine]):
        x = torch.randn(2, D)
        model["fc"](x), model["fc2"](x), lone(x)  # another model's classifier is not this pass's business
    model["fc2"](x)  # after the pass, the other head captures again
    assert (len(mine.calls), len(other_head.calls), len(outside.calls)) == (1, 1, 1)
    for fc, capture in ((model["fc"], mine), (model["fc2"], other_head), (lone, outside)):
        hub_of(fc).leave(capture)


class BothHeads(TinyModule):
    """A forward that calls two heads: an eval pass over it calls both."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc2 = nn.Linear(D, K)

    def forward(self, x):
        h = self.body(x)
        return self.fc(h) + self.fc2(h)


def test_an_eval_pass_on_one_head_never_reaches_a_train_monitor_on_another():
    """Was: the eval-mode monitor of ``fc`` made its pass while the train-mode monitor of ``fc2`` (later in the
    callbacks) still held its last training batch: it took the pass's fc2 calls as that batch's (400 samples)."""
    def run(monitors):
        torch.manual_seed(0)
        trainer(monitors, max_epochs=2).fit(BothHeads(lr=0.1), loader())
        return monitors[-1].history

    beside = run([NeuralCollapseMonitor(classifier="fc", mode="eval"), NeuralCollapseMonitor(classifier="fc2", name="head2")])
    alone = run([NeuralCollapseMonitor(classifier="fc2", name="head2")])
    assert [row["num_samples"] for row in beside] == [200.0, 200.0, 200.0]
    assert_same_history(beside, alone, rel=0.0, abs_=0.0)


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


# ----------------------------------------- the calls a training step makes
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
    feats = torch.cat((batched_features(module, x), batched_features(module, 0.5 * x)))
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
    ref = neural_collapse(batched_features(module, x, chunks=2), y, module.fc.weight.detach())
    assert module.monitor.history[-1]["num_samples"] == 200
    assert math.isclose(module.monitor.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)
    with pytest.raises(RuntimeError, match="capture='manual'"):
        NeuralCollapseMonitor().update(x, y)


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


def test_gradient_accumulation_and_torch_compile():
    x, y = dataset().tensors
    for module, kwargs in [(TinyModule(lr=0.0), {"accumulate_grad_batches": 3}),
                           (torch.compile(TinyModule(lr=0.0), backend="aot_eager"), {})]:
        nc, sp = NeuralCollapseMonitor(), SpectralMonitor()
        trainer([nc, sp], max_epochs=1, **kwargs).fit(module, loader())
        inner = getattr(module, "_orig_mod", module)
        ref = neural_collapse(batched_features(inner, x), y, inner.fc.weight.detach())
        assert nc.history[-1]["num_samples"] == 200 and sp.history[-1]["num_samples"] == 200
        assert math.isclose(nc.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)


# ------------------------------------------------------------------ labels
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
    ref = neural_collapse(batched_features(module, x)[keep], labels[keep].long(), module.fc.weight.detach())
    assert nc.history[-1]["num_ignored"] == (~keep).sum().item() == sp.history[-1]["num_ignored"]
    assert nc.history[-1]["num_samples"] == keep.sum().item()
    assert math.isclose(nc.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)


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


# -------------------------------------------------- finding the classifier
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
    ref = neural_collapse(body_features(module, x), y, w)
    assert math.isclose(nc.history[-1]["nc1"], ref["nc1"], rel_tol=1e-9)


def test_a_lazy_classifier_is_refused_in_one_line():
    class Lazy(TinyModule):
        def __init__(self):
            super().__init__()
            self.fc = nn.LazyLinear(K)

    with pytest.raises(ValueError, match="nn.LazyLinear that has not been called yet"):
        trainer([NeuralCollapseMonitor(plot=False)], max_epochs=1).fit(Lazy(), loader())


# ------------------------------------------ the eval and validation passes
def test_true_double_precision_eval_pass_and_values():
    """The monitor's own eval pass converts its batches like Lightning's steps do (was: Float vs Double)."""
    module = TinyModule(lr=0.0)
    nc_eval, nc_train, spectral = NeuralCollapseMonitor(mode="eval", name="nce"), NeuralCollapseMonitor(), SpectralMonitor()
    trainer([nc_eval, nc_train, spectral], max_epochs=1, precision="64-true").fit(module, loader())
    assert module.fc.weight.dtype == torch.float64
    x, y = dataset().tensors
    ref = neural_collapse(body_features(module, x), y, module.fc.weight.detach())
    for monitor in (nc_eval, nc_train):
        assert [h["epoch"] for h in monitor.history] == [-1, 0]
        assert math.isclose(monitor.history[-1]["nc1"], ref["nc1"], rel_tol=1e-12)
    assert all(math.isfinite(h["drift"]) for h in spectral.history)


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
    ref = neural_collapse(batched_features(module, x, batch_size=30), y, module.fc.weight.detach())
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


def test_mode_val_without_validation_batches_names_the_option():
    with pytest.raises(ValueError, match="mode='val'\\) measures the validation batches, but this fit has no valid"):
        trainer([NeuralCollapseMonitor(mode="val")], max_epochs=1).fit(TinyModule(), loader())
