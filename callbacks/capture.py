"""Capturing the classifier's calls: one forward hook per classifier, shared by its monitors (the hub), and the
monitors' own eval-mode pass over data."""

from __future__ import annotations

import contextlib
import weakref
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import _lightning as lightning_internals
from .classifier import default_inputs, default_labels  # noqa: F401  (saved configs name them by this path)


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


@contextmanager
def model_pass(model: nn.Module, hub: ClassifierHub, captures: list[FeatureCapture]):
    """Within this block (a monitor's eval pass over ``model``) ``hub``'s calls go to ``captures`` only, and the
    hub of every other classifier inside ``model`` feeds none of its captures: a monitor on another head of the
    model, still holding its training batch's calls, never takes the pass's calls as that batch's."""
    hubs = [hub] + [h for m in model.modules() if (h := _HUBS.get(m)) is not None and h is not hub]
    with contextlib.ExitStack() as stack:
        for h in hubs:
            stack.enter_context(h.only(captures if h is hub else []))
        yield


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


