"""The narrow-head setup of the study: more classes than features (K = 10 > d), docs/theory.md §8.

The study's digits MLP with a ``width``-wide penultimate layer (hidden (128, width), width 4 or 5), its last
layer initialized by ``hadainit.hadamard_(w, modes="auto")`` (a spanning mode set chosen for a large
max-margin value t*), ``modes="first"`` (the Hoffer-style truncation) or left at PyTorch's default: a
:class:`~hadainit.experiments.module.ClassifierModule` with ``width`` and ``modes`` (:func:`module_args`), so
a narrow run is a ``hadainit train`` config like any other. The K > d initializer is recent; where the
installed ``hadamard_`` has no ``modes`` option, :func:`kd_available` is False and the study skips these
runs, saying so.
"""

from __future__ import annotations

import inspect

NARROW_INITS = ("auto", "first", "default")
#: the study setup of a digits MLP with a 5-wide penultimate layer: K = 10 > d = 5
NARROW = "digits-narrow"
NARROW_WIDTH = 5


def kd_available() -> bool:
    """Whether ``hadainit.hadamard_`` takes ``modes=`` (the K > d initializer)."""
    import hadainit

    return "modes" in inspect.signature(hadainit.hadamard_).parameters


def module_args(init: str, width: int = NARROW_WIDTH) -> dict:
    """The :class:`~hadainit.experiments.module.ClassifierModule` options of a narrow-head arm ``init`` (one of
    :data:`NARROW_INITS`): ``auto`` / ``first`` are ``init="hadamard"`` with that mode set (a zero bias),
    ``default`` is PyTorch's init."""
    if init not in NARROW_INITS:
        raise ValueError(f"unknown narrow-head init {init!r}; expected one of {NARROW_INITS}")
    if init != "default" and not kd_available():
        raise RuntimeError("hadainit.hadamard_ has no modes= option (the K > d initializer): narrow-head runs skipped")
    head = {"init": "default"} if init == "default" else {"init": "hadamard", "modes": init}
    return {"arch": "mlp", "width": width, **head}
