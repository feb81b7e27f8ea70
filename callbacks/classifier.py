"""Which layer is the classifier, and how to read a batch: the lookup the monitors share, refusing to guess."""

from __future__ import annotations

from typing import Any

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
