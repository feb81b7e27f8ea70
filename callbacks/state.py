"""What a monitor keeps between measurements and across a resume: its history, the initial basis, the
partial sums of the measurement going on (fed through :meth:`MonitorState.take`, turned into values by
:meth:`MonitorState.measure`), and the checkpoint format (``state_dict`` version 2).

The checkpoint is ``{"version": 2, "history": [row, ...], "basis": InitialBasis.state_dict() | None}``,
plus ``"metrics"`` (each metric's partial sums over every rank, :func:`~.sums.metric_checkpoint`)
when there are metrics, so a run resumed mid-epoch continues the epoch's sums exactly.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from hadainit.drift import InitialBasis

from .sums import SampleCount, metric_checkpoint, quiet_compute, restore_metric

STATE_VERSION = 2


def plain(value):
    """A metric's value as the history keeps it: a 0-d tensor as a float, a 1-d one as a list."""
    if isinstance(value, Tensor):
        return float(value) if value.dim() == 0 else value.detach().cpu().tolist()
    return value


class MonitorState:
    """History, basis and partial sums of one monitor (``owner``: its class name, for messages).

    ``restored`` says that this state was loaded from the checkpoint of the stage going on (cleared when
    the stage ends); ``follows`` which classifier weight the history belongs to.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.history: list[dict] = []
        self.basis: InitialBasis | None = None
        self.metrics: dict[str, Metric] = {}
        self.pending: dict | None = None  # saved partial sums loaded before the metrics were built
        self.restored = False
        self._followed: weakref.ref | None = None

    # ---------------------------------------------------------------- the model followed
    def follows(self, weight: Tensor) -> bool:
        """Whether ``weight`` is the classifier weight this state was last bound to (the same object)."""
        return self._followed is not None and self._followed() is weight

    def follow(self, weight: Tensor) -> None:
        self._followed = weakref.ref(weight)

    # ---------------------------------------------------------------- life cycle
    def reset(self) -> None:
        """Start afresh: no history, no basis, no saved sums (the metrics are rebuilt at binding)."""
        self.history = []
        self.basis = None
        self.pending = None

    def bind(self, classifier: nn.Linear, build: Callable[[int, int], dict[str, Metric]], device) -> None:
        """The classifier found at binding: a restored state must fit it; ``build(K, d)``'s metrics and the sample
        count, on ``device`` (so a sync, e.g. NCCL, works before the first batch), gather the next measurement;
        the classifier's weight is followed."""
        shape = (classifier.out_features, classifier.in_features)
        self.check(shape)
        metrics = {**build(*shape), "count": SampleCount()}
        for metric in metrics.values():
            metric.to(device)
        self.set_metrics(metrics)
        self.follow(classifier.weight)

    def take(self, consume: Callable[[Tensor, Tensor, Tensor], None], features: Tensor, labels: Tensor,
             logits: Tensor, ignored: int) -> None:
        """A source's sink (with the monitor's ``consume`` bound first): count the rows, and measure the kept ones."""
        if self.metrics["count"].device != features.device:
            for metric in self.metrics.values():
                metric.to(features.device)
        self.metrics["count"].update(torch.tensor(float(features.shape[0])), torch.tensor(float(ignored)))
        if features.shape[0]:
            consume(features, labels, logits)

    def measure(self, trainer, done: float, compute: Callable, extensions: Iterable = ()) -> dict:
        """The values of the measurement after ``done`` epochs, as plain numbers and lists: ``compute(trainer, done,
        samples)``, each extension's ``extend(trainer, done, values)``, the sample counts. The counts are synced
        first (every rank takes the same branches); the metrics are reset for the next measurement, also when
        this raises (``ValueError``: undefined)."""
        try:
            counts = quiet_compute(self.metrics["count"])
            values = {k: plain(v) for k, v in compute(trainer, done, counts["num_samples"]).items()}
            for extension in extensions:
                values.update({k: plain(v) for k, v in extension.extend(trainer, done, values).items()})
            return {**values, **{k: plain(v) for k, v in counts.items()}}
        finally:
            for metric in self.metrics.values():
                metric.reset()

    def set_metrics(self, metrics: dict[str, Metric]) -> None:
        """The metrics of the classifier bound now; partial sums loaded before they existed are restored."""
        self.metrics = metrics
        if self.pending is not None:
            self._restore_metrics(self.pending)
            self.pending = None

    def check(self, shape: tuple[int, int]) -> None:
        """A restored state must fit the classifier found (its shape was unknown when it was loaded)."""
        if self.basis is not None:
            self.basis = InitialBasis.from_state_dict(self.basis.state_dict(), name="state 'basis'", shape=shape)

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        state = {"version": STATE_VERSION, "history": self.history,
                 "basis": None if self.basis is None else self.basis.state_dict()}
        if self.metrics:  # mid-epoch checkpoints carry the epoch's partial sums
            state["metrics"] = {name: metric_checkpoint(m) for name, m in self.metrics.items()}
        return state

    def load_state_dict(self, state_dict: dict, shape: tuple[int, int] | None = None) -> None:
        """Load and validate a :meth:`state_dict` (``shape``: the classifier's ``(K, d)`` if it is known)."""
        if not isinstance(state_dict, dict):
            raise ValueError(f"{self.owner} state must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"{self.owner} state has version {state_dict.get('version')!r}, "
                             f"expected {STATE_VERSION} (a checkpoint of another hadainit version)")
        for key in ("history", "basis"):
            if key not in state_dict:
                raise ValueError(f"{self.owner} state is missing the key {key!r}")
        history = state_dict["history"]
        if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
            raise ValueError(f"{self.owner} state 'history' must be a list of dicts")
        basis = state_dict["basis"]
        self.basis = None if basis is None else InitialBasis.from_state_dict(basis, shape=shape, name="state 'basis'")
        self.history = [dict(row) for row in history]
        saved = state_dict.get("metrics")
        if saved is not None:
            if self.metrics:
                self._restore_metrics(saved)
            else:
                self.pending = saved
        self.restored = True

    def _restore_metrics(self, saved: dict) -> None:
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint state 'metrics' must be a dict, got {type(saved).__name__}")
        for name, metric in self.metrics.items():
            if name not in saved:
                raise ValueError(f"checkpoint state metrics.{name} is missing")
            restore_metric(metric, saved[name], f"metrics.{name}")


class CollapseState(MonitorState):
    """:class:`MonitorState` plus the class means of the last measurement (``means``, ``seen``), which the
    next one's NC4 compares with; checkpointed as ``"means"`` and ``"seen"``."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.means: Tensor | None = None
        self.seen: Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.means = self.seen = None

    def check(self, shape: tuple[int, int]) -> None:
        super().check(shape)
        if self.means is not None and self.means.shape != shape:
            raise ValueError(f"{self.owner} state 'means' has shape {tuple(self.means.shape)}, the classifier is {shape}")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "means": self.means, "seen": self.seen}

    def load_state_dict(self, state_dict: dict, shape: tuple[int, int] | None = None) -> None:
        super().load_state_dict(state_dict, shape)
        means, seen = state_dict.get("means"), state_dict.get("seen")
        if (means is None) != (seen is None):
            raise ValueError(f"{self.owner} state: 'means' and 'seen' must both be given or both None")
        if means is not None and (not isinstance(means, Tensor) or means.dim() != 2 or not torch.isfinite(means).all()):
            raise ValueError(f"{self.owner} state 'means' must be a finite 2-D tensor")
        self.means, self.seen = means, seen
        if shape is not None:  # else checked when the classifier is found
            self.check(shape)
        if means is not None and self.metrics:
            self.metrics["nc4"].set_means(means, seen)
