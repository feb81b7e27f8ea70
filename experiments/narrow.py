"""The narrow-head setup of the study: more classes than features (K = 10 > d), docs/theory.md §8.

The study's digits MLP with a ``width``-wide penultimate layer (hidden (128, width), width 4 or 5), its last
layer initialized by ``hadainit.hadamard_(w, modes="auto")`` (a spanning mode set chosen for a large
max-margin value t*), ``modes="first"`` (the Hoffer-style truncation) or left at PyTorch's default. The
K > d initializer is recent; where the installed ``hadamard_`` has no ``modes`` option,
:func:`kd_available` is False and the study skips these runs, saying so.
"""

from __future__ import annotations

import inspect

import torch

from .models import MLP
from .module import ClassifierModule

NARROW_INITS = ("auto", "first", "default")
#: the study setup of a digits MLP with a 5-wide penultimate layer: K = 10 > d = 5
NARROW = "digits-narrow"
NARROW_WIDTH = 5


def kd_available() -> bool:
    """Whether ``hadainit.hadamard_`` takes ``modes=`` (the K > d initializer)."""
    import hadainit

    return "modes" in inspect.signature(hadainit.hadamard_).parameters


def init_narrow(fc: torch.nn.Linear, init: str, seed: int) -> None:
    """``auto`` / ``first``: ``hadamard_(fc.weight, modes=init)`` and a zero bias; ``default``: untouched."""
    import hadainit

    if init not in NARROW_INITS:
        raise ValueError(f"unknown narrow-head init {init!r}; expected one of {NARROW_INITS}")
    if init == "default":
        return
    if not kd_available():
        raise RuntimeError("hadainit.hadamard_ has no modes= option (the K > d initializer): narrow-head runs skipped")
    hadainit.hadamard_(fc.weight, modes=init, generator=torch.Generator().manual_seed(seed))
    torch.nn.init.zeros_(fc.bias)


class NarrowModule(ClassifierModule):
    """:class:`~hadainit.experiments.module.ClassifierModule` with an MLP of hidden widths (128, ``width``) and the
    narrow-head init ``head_init`` (one of :data:`NARROW_INITS`); the other arguments are the parent's."""

    def __init__(self, width: int = 5, head_init: str = "default", **kwargs) -> None:
        super().__init__(arch="mlp", init="default", **kwargs)
        self.model = MLP(self.num_classes, tuple(self.hparams.input_shape), hidden=(128, width))
        init_narrow(self.model.fc, head_init, self.hparams.seed)
