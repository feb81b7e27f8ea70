"""Shared plumbing of the monitors: find the classifier, capture its calls (one hook per classifier, shared by
its monitors), pass over data, checkpoint metrics."""

from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from . import _lightning as lightning_internals


def default_labels(batch: Any) -> Tensor:
    """Labels of a batch: ``batch[1]`` for tuples/lists, ``batch["label"|"labels"|"y"|"target"]`` for dicts."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, dict):
        for key in ("label", "labels", "y", "target", "targets"):
            if key in batch:
                return batch[key]
    raise ValueError("cannot find labels in the batch: pass labels_from_batch=... to the callback")


def default_inputs(batch: Any) -> Any:
    """Inputs of a batch: ``batch[0]`` for tuples/lists, ``batch["input"|"inputs"|"x"|"image"]`` for dicts."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("input", "inputs", "x", "image", "images"):
            if key in batch:
                return batch[key]
    raise ValueError("cannot find inputs in the batch: pass inputs_from_batch=... to the callback")


def _describe(linears: list[tuple[str, nn.Linear]]) -> str:
    return ", ".join(f"{name or '<root>'} ({m.in_features}->{m.out_features})" for name, m in linears) or "none"


def find_classifier(module: nn.Module, path: str | None, num_classes: int | None) -> tuple[str, nn.Linear]:
    """The classifier ``(path, layer)``: the ``nn.Linear`` at attribute ``path`` (e.g. ``"fc"``,
    ``"model.head"``), else the one whose ``out_features`` equals ``num_classes``.

    Raises ``ValueError`` rather than guess: no match, several matches, or several
    ``nn.Linear`` layers and no known number of classes.
    """
    if path is not None:
        target: Any = module
        for part in path.split("."):
            if not hasattr(target, part):
                raise ValueError(f"classifier path {path!r} does not exist on {type(module).__name__} (no {part!r})")
            target = getattr(target, part)
        if not isinstance(target, nn.Linear):
            raise ValueError(f"classifier {path!r} is a {type(target).__name__}, not an nn.Linear")
        if num_classes is not None and target.out_features != num_classes:
            raise ValueError(f"classifier {path!r} has {target.out_features} outputs, but num_classes={num_classes}")
        return _shaped(path, target)
    linears = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if num_classes is None:
        if len(linears) == 1:
            return _shaped(*linears[0])
        raise ValueError(
            f"{type(module).__name__} has {len(linears)} nn.Linear layers [{_describe(linears)}] and the number of "
            "classes is unknown: pass num_classes=K (the layer with K outputs is the classifier) or classifier='path'"
        )
    matches = [(name, m) for name, m in linears if m.out_features == num_classes]
    if len(matches) != 1:
        what = "no nn.Linear layer" if not matches else f"{len(matches)} nn.Linear layers"
        raise ValueError(
            f"{what} of {type(module).__name__} with out_features == num_classes = {num_classes} "
            f"(layers: {_describe(linears)}); pass classifier='attribute.path'"
        )
    return _shaped(*matches[0])


def known_num_classes(given: int | None, trainer: Any, pl_module: nn.Module) -> int | None:
    """``given``, else the module's or the datamodule's ``num_classes`` (hyperparameter or attribute)."""
    hparams = getattr(pl_module, "hparams", None)
    for value in (
        given,
        hparams.get("num_classes") if isinstance(hparams, dict) else None,
        getattr(pl_module, "num_classes", None),
        getattr(trainer.datamodule, "num_classes", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
            return value
    return None


def _shaped(name: str, layer: nn.Linear) -> tuple[str, nn.Linear]:
    """A lazy classifier (``nn.LazyLinear`` before its first call) has no shape yet: refused with the fix."""
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"the classifier {name or '<root>'!r} is an nn.LazyLinear that has not been called yet (its "
                         "input size is unknown when the fit starts): run the model once on a batch in the module's "
                         "setup() or configure_model() (which also lets the optimizer see its weights), or use nn.Linear")
    return name, layer


def has_forward(module: nn.Module) -> bool:
    """Whether the module defines ``forward`` (the defaults of nn.Module and LightningModule raise)."""
    from lightning.pytorch import LightningModule

    return type(module).forward not in (nn.Module.forward, LightningModule.forward)


class FeatureCapture:
    """One source's share of a classifier's calls: every call made while it is ``active`` is kept, as
    (input features, logits), detached, until :meth:`take`.

    A training step may call the classifier several times (two augmented views,
    chunks, an auxiliary call): every call is kept. ``owner``: whose share it is (its source).
    """

    def __init__(self, owner: Any = None) -> None:
        self.owner = owner
        self.active = False
        self.calls: list[tuple[Tensor, Tensor]] = []

    def take(self) -> list[tuple[Tensor, Tensor]]:
        calls, self.calls = self.calls, []
        return calls


class ClassifierHub:
    """The one forward hook on a classifier, shared by every capture subscribed to it (see :func:`hub_of`).

    A call goes to each active capture; while :meth:`only` holds (an eval pass), to the pass's captures
    alone, so one monitor's pass never leaks into another monitor's training-batch sums. The hook is
    removed when the last capture leaves (:meth:`leave`).
    """

    def __init__(self, classifier: nn.Linear) -> None:
        self.captures: list[FeatureCapture] = []
        self._only: list[FeatureCapture] | None = None
        self._classifier = weakref.ref(classifier)  # the registry's key; the hub must not keep the model alive
        self._handle = classifier.register_forward_hook(self._hook)

    def __getstate__(self) -> dict:
        """A copy of the model (``deepcopy``, pickle) carries a hook that feeds no capture."""
        return {"captures": [], "_only": None, "_classifier": None, "_handle": None}

    def _hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        call = None
        for capture in self.captures if self._only is None else self._only:
            if capture.active:
                call = call or (inputs[0].detach(), output.detach())
                capture.calls.append(call)

    def leave(self, capture: FeatureCapture) -> None:
        """Unsubscribe ``capture`` (its kept calls are dropped); the last one to leave removes the hook."""
        capture.calls = []
        if capture in self.captures:
            self.captures.remove(capture)
        if not self.captures:
            if self._handle is not None:
                self._handle.remove()
            classifier = None if self._classifier is None else self._classifier()
            if classifier is not None and _HUBS.get(classifier) is self:
                del _HUBS[classifier]

    @contextmanager
    def only(self, captures: list[FeatureCapture]):
        """Within this block the classifier's calls go to ``captures`` only (those active)."""
        if self._only is not None:
            raise RuntimeError("an eval pass is already running on this classifier")
        self._only = list(captures)
        try:
            yield
        finally:
            self._only = None


#: The hub of each classifier with subscribed captures (weak keys: a dropped model takes its entry along).
_HUBS: "weakref.WeakKeyDictionary[nn.Linear, ClassifierHub]" = weakref.WeakKeyDictionary()


def hub_of(classifier: nn.Linear) -> ClassifierHub | None:
    """The hub on ``classifier``, or None when no capture is subscribed to it."""
    return _HUBS.get(classifier)


def subscribe(classifier: nn.Linear, capture: FeatureCapture) -> ClassifierHub:
    """Add ``capture`` to the classifier's hub (made, with its hook, for the first capture); it leaves
    with :meth:`ClassifierHub.leave`."""
    hub = _HUBS.get(classifier)
    if hub is None:
        hub = _HUBS[classifier] = ClassifierHub(classifier)
    if capture not in hub.captures:
        hub.captures.append(capture)
    return hub


def eval_pass(
    trainer,
    pl_module,
    loader,
    max_batches: int | float | None,
    forward: Callable[[Any, Any], Any],
    consume: Callable[[Any], None],
) -> None:
    """One pass in eval mode and ``no_grad`` over ``loader`` (at most ``max_batches`` batches).

    ``forward(pl_module, batch)`` runs the model (the classifier's hook captures);
    ``consume(batch)`` takes the captured calls. The global RNG state is restored
    afterwards, so the pass does not change the training run (e.g. its shuffling).
    """
    was_training = pl_module.training
    devices = [pl_module.device] if pl_module.device.type == "cuda" else []
    pl_module.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), trainer.precision_plugin.forward_context():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                # as Lightning prepares its own batches: the precision's input dtype (e.g. "64-true"), the
                # module's batch-transfer hooks, the device
                batch = trainer.precision_plugin.convert_input(batch)
                batch = lightning_internals.before_transfer(pl_module, batch)
                batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
                forward(pl_module, batch)
                consume(batch)
    finally:
        pl_module.train(was_training)


def quiet_compute(metric: Metric):
    """``metric.compute()`` without torchmetrics' "compute before update" warning: a pass that fed a metric
    nothing is a state the monitors handle (every rank calls this alike, so the DDP sync stays collective)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
        return metric.compute()


class RunningMean(Metric):
    """The sample-weighted mean of a tensor over a pass (float64 sums, DDP-exact): the classifier
    averaged over the training steps that produced the features of a ``mode="train"`` epoch."""

    full_state_update = False

    def __init__(self, shape: tuple[int, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: int) -> None:  # type: ignore[override]
        self.total.add_(value.detach().to(self.total), alpha=float(weight))
        self.weight += weight

    def compute(self) -> Tensor | None:
        """The mean (synced across ranks), or None when nothing was added on any rank."""
        return self.total / self.weight if self.weight > 0 else None


class SampleCount(Metric):
    """Samples fed to a monitor and samples it excluded (labels equal to the ignore index)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("samples", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ignored", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: Tensor, ignored: Tensor) -> None:  # type: ignore[override]
        self.samples += samples
        self.ignored += ignored

    def compute(self) -> dict[str, float]:
        return {"num_samples": self.samples.item(), "num_ignored": self.ignored.item()}


def log_spaced_epochs(max_epochs: int, count: int) -> list[int]:
    """About ``count`` epoch counts spread evenly on a log scale from 1 to ``max_epochs`` (both included):
    ``at_epochs`` for a long run whose figures have logarithmic epoch axes."""
    for value, name in ((max_epochs, "max_epochs"), (count, "count")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if count == 1 or max_epochs == 1:
        return [max_epochs]
    ratio = max_epochs ** (1.0 / (count - 1))
    return sorted({max(1, min(max_epochs, round(ratio**i))) for i in range(count)} | {1, max_epochs})


def metric_checkpoint(metric: Metric) -> dict:
    """A metric's partial sums over every rank (and their reference point, if it has one), for a callback's
    ``state_dict``: a run resumed mid-epoch from a checkpoint continues the epoch's accumulation exactly.

    The sums are synced (a collective under DDP: Lightning calls ``state_dict`` on every rank when it
    saves a checkpoint) and marked ``"scope": "global"``; :func:`restore_metric` loads them on one
    rank only, so the next sync counts them once, for any number of ranks on resume.
    """
    with metric.sync_context(should_sync=True, should_unsync=True):  # also flushes a float32 fast path
        reference = getattr(metric, "reference", None)
        return {
            "states": {name: value.detach().cpu().clone() for name, value in metric.metric_state.items()},
            "update_count": metric.update_count,
            "reference": None if reference is None else reference.detach().cpu().clone(),
            "scope": "global",
        }


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def restore_metric(metric: Metric, saved: dict, name: str) -> None:
    """Load :func:`metric_checkpoint` output, raising ``ValueError`` naming a missing or misshapen state."""
    if not isinstance(saved, dict) or "states" not in saved or "update_count" not in saved:
        raise ValueError(f"checkpoint state {name!r} must be a dict with 'states' and 'update_count'")
    current = metric.metric_state
    states = saved["states"]
    for key, value in current.items():
        if key not in states:
            raise ValueError(f"checkpoint state {name}.{key} is missing")
        if not isinstance(states[key], Tensor) or states[key].shape != value.shape:
            got = tuple(states[key].shape) if isinstance(states[key], Tensor) else type(states[key]).__name__
            raise ValueError(f"checkpoint state {name}.{key} has shape {got}, expected {tuple(value.shape)}")
    if saved.get("scope") == "global" and _rank() != 0:  # the sums of every rank, loaded once (on rank 0)
        metric.reset()
        return
    device = next(iter(current.values())).device
    for key in current:  # copies: updates must not write into the checkpoint's tensors
        setattr(metric, key, states[key].to(device=device, dtype=current[key].dtype, copy=True))
    if saved.get("reference") is not None:
        metric.reference = saved["reference"].to(device, copy=True)
    lightning_internals.set_update_count(metric, saved["update_count"])  # read-only in torchmetrics; compute() warns at 0
