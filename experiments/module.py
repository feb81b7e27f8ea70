"""The LightningModule of the runs: a classifier trained with cross-entropy and SGD, its last layer initialized
by hadainit (``hadamard``, ``etf``) or left at PyTorch's default."""

from __future__ import annotations

import math
from typing import Literal, Optional

import lightning as L
import torch
from torch import nn

import hadainit

from .models import MLP, build_model

INITS = ("hadamard", "etf", "default")


#: ``hadamard_``'s mode sets for a K > d layer (docs/theory.md §8): ``auto`` (its default) or ``first``
MODES = ("auto", "first")


def apply_init(fc: nn.Linear, init: str, seed: int, modes: str = "auto") -> None:
    """``hadamard``: rows ``Q V^T / sqrt(3)`` (nn.Linear's row norm); ``etf``: the same without the constant
    mode (a simplex ETF); both zero the bias. ``default``: nn.Linear's own init, untouched. ``modes``: the
    mode set of a K > d layer (passed to ``hadamard_`` unless ``auto``, its default)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    if modes not in MODES:
        raise ValueError(f"unknown modes {modes!r}; expected one of {MODES}")
    if init == "default":
        return
    extra = {} if modes == "auto" else {"modes": modes}
    hadainit.hadamard_(fc.weight, zero_mean=init == "etf", generator=torch.Generator().manual_seed(seed), **extra)
    if fc.bias is not None:
        nn.init.zeros_(fc.bias)


def _number(value, name: str, *, low: float = 0.0, low_open: bool = False, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value < high
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if math.isfinite(high) else "")
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return float(value)


class ClassifierModule(L.LightningModule):
    """Cross-entropy training with SGD (momentum, weight decay) and a constant, cosine or one-cycle schedule.

    Args:
        arch: ``"mlp"``, ``"cnn"`` (small CNN, 1-D or 2-D inputs), ``"resnet18"`` (CIFAR) or ``"tiny"``.
        init: the last layer's initialization: ``"hadamard"``, ``"etf"`` or ``"default"`` (PyTorch's).
        num_classes: K (linked from the data module by ``hadainit train``).
        input_shape: one sample's shape (linked from the data module).
        lr: learning rate; momentum: SGD momentum (Nesterov when > 0); weight_decay: L2 on all parameters.
        schedule: ``"constant"`` (epochs proportional to flow time: what the slowdown law speaks of),
            ``"cosine"`` or ``"onecycle"`` (per step).
        seed: seeds the hadamard_ basis of the last layer.
        width: the MLP's last hidden width (hidden layers (128, width)); None: (128, 64). Below K it is the
            narrow head of the study (K > d, :mod:`hadainit.experiments.narrow`).
        modes: the mode set ``hadamard_`` gives a K > d last layer: ``"auto"`` or ``"first"``.
    """

    def __init__(
        self,
        arch: Literal["mlp", "cnn", "resnet18", "tiny"] = "mlp",
        init: Literal["hadamard", "etf", "default"] = "hadamard",
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 8, 8),
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: Literal["constant", "cosine", "onecycle"] = "constant",
        seed: int = 0,
        width: Optional[int] = None,
        modes: Literal["auto", "first"] = "auto",
    ) -> None:
        super().__init__()
        _number(lr, "lr", low_open=True)
        _number(momentum, "momentum", high=1.0)
        _number(weight_decay, "weight_decay")
        if schedule not in ("constant", "cosine", "onecycle"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'onecycle', got {schedule!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
        if modes not in MODES:
            raise ValueError(f"unknown modes {modes!r}; expected one of {MODES}")
        if width is not None:
            if isinstance(width, bool) or not isinstance(width, int):
                raise TypeError(f"width must be an int (or None), got {type(width).__name__}")
            if width < 1:
                raise ValueError(f"width must be >= 1, got {width}")
            if arch != "mlp":
                raise ValueError(f"width sets the MLP's last hidden width: it needs arch 'mlp', got arch {arch!r}")
        self.save_hyperparameters()
        self.num_classes = num_classes  # how the monitors find the classifier
        self.model = build_model(arch, num_classes, tuple(input_shape))
        if width is not None:  # built after the (128, 64) MLP, whose draws it follows (the study's narrow runs)
            self.model = MLP(num_classes, tuple(input_shape), hidden=(128, width))
        apply_init(self.model.fc, init, seed, modes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=hp.momentum > 0)
        if hp.schedule == "constant":
            return opt
        total = self.trainer.estimated_stepping_batches
        if hp.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
