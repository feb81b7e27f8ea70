"""Shared plumbing of the monitors: find the classifier, capture its inputs, pass over data, plot."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn


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


def find_classifier(module: nn.Module, path: str | None) -> nn.Linear:
    """The classifier: the ``nn.Linear`` at attribute ``path`` (e.g. ``"fc"``, ``"model.head"``), or the last one."""
    if path is None:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"{type(module).__name__} has no nn.Linear layer to monitor; pass classifier='attribute.path'"
            )
        return linears[-1]
    target: Any = module
    for part in path.split("."):
        if not hasattr(target, part):
            raise ValueError(f"classifier path {path!r} does not exist on {type(module).__name__} (no {part!r})")
        target = getattr(target, part)
    if not isinstance(target, nn.Linear):
        raise ValueError(f"classifier {path!r} is a {type(target).__name__}, not an nn.Linear")
    return target


class FeatureCapture:
    """A forward hook on the classifier keeping the last call's input features and logits (detached)."""

    def __init__(self, classifier: nn.Linear) -> None:
        self.active = False
        self.features: Tensor | None = None
        self.logits: Tensor | None = None
        self._handle = classifier.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self.active:
            self.features = inputs[0].detach().flatten(1)
            self.logits = output.detach()

    def take(self) -> tuple[Tensor | None, Tensor | None]:
        features, logits = self.features, self.logits
        self.features = self.logits = None
        return features, logits

    def remove(self) -> None:
        self._handle.remove()


def eval_pass(
    trainer,
    pl_module,
    capture: FeatureCapture,
    loader,
    max_batches: int | None,
    inputs_from_batch: Callable,
    labels_from_batch: Callable,
    consume: Callable[[Tensor, Tensor, Tensor], None],
) -> None:
    """One pass in eval mode and no_grad over ``loader``, feeding each batch's features to ``consume``."""
    was_training = pl_module.training
    pl_module.eval()
    capture.active = True
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = trainer.strategy.batch_to_device(batch)
                pl_module(inputs_from_batch(batch))
                features, logits = capture.take()
                if features is not None:
                    consume(features, labels_from_batch(batch), logits)
    finally:
        capture.active = False
        pl_module.train(was_training)


def metric_checkpoint(metric) -> dict:
    """A metric's partial sums (and NeuralCollapse's reference), for a callback's ``state_dict``:
    a run resumed mid-epoch from a checkpoint continues the epoch's accumulation exactly."""
    return {
        "states": {name: value.detach().cpu().clone() for name, value in metric.metric_state.items()},
        "update_count": metric.update_count,
        "reference": None if getattr(metric, "reference", None) is None else metric.reference.detach().cpu().clone(),
    }


def restore_metric(metric, saved: dict | None) -> None:
    if not saved:
        return
    device = next(iter(metric.metric_state.values())).device
    for name, value in saved["states"].items():
        setattr(metric, name, value.to(device))
    if saved.get("reference") is not None:
        metric.reference = saved["reference"].to(device)
    metric._update_count = saved["update_count"]  # torchmetrics exposes it read-only; compute() warns at 0
