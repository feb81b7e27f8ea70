"""Streaming, DDP-exact neural-collapse metrics (``torchmetrics.Metric``).

Every state is a float64 sum (``dist_reduce_fx="sum"``). ``update`` adds
shifted sums (:mod:`.statistics`), ``compute`` does the linear algebra
(:mod:`.formulas`).

The reference. The sums of class k are taken about a point ``reference[k]``
(a persistent K x d float64 buffer, always present): a sample of class k from
the first batch in which it appears after a ``reset()`` (so it is fresh every
pass, even when the features drift far between passes), or the point given by
:meth:`NeuralCollapse.set_reference` for the next pass. Sums about different
references are never added as they are: ``merge_state`` and the DDP sync first
move them to a common reference (:meth:`~.statistics.ClassStatistics.rebased`;
under DDP the ranks agree on it by one ``all_reduce`` and one ``broadcast``
when syncing). A checkpoint of the partial sums must hold the states and
``reference`` together. ``load_state_dict`` of a module dict (the states are not
persistent, so it carries ``reference`` alone) moves the sums held to the loaded
reference, so the values do not change by loading.

The scale. The state ``scale`` is the power of two the shifted features are
multiplied by before they are summed (1 for ordinary data; chosen on the first
batch of a pass when the features are below ~1e-60 or above ~1e60, see
:func:`~.statistics.choose_scale`): the scale-free values are exact at any finite
scale of the features.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from .. import _checks
from ..drift import InitialBasis
from ._torchmetrics import add_update_count, drop_cached, is_synced, set_forward_cache, synced
from .base import Float64Metric, as_tensors, check_finite_state, check_state_size, distributed
from .formulas import GLOBAL_MEAN_KINDS, check_rtol, collapse_metrics, etf_impossible_message, per_class_metrics
from .functional import check_batch, check_classifier, check_precision, neural_collapse
from .statistics import ClassStatistics, Float32Accumulator, Workspace, accumulate, choose_scale, pick_references

__all__ = ["NeuralCollapse"]

F64 = torch.float64


class NeuralCollapse(Float64Metric):
    """NC1-NC3, GNC2, UNC3, CDNV and the KL Lyapunov value from one streaming pass.

    Args:
        num_classes: K.
        feature_dim: d (the state holds a d x d float64 matrix; compute works in R^d when K > d).
        global_mean: ``"unweighted"`` (mean of class means, default) or ``"weighted"``.
        reference: optional K x d shift for the first pass (e.g. last epoch's means); see the module docstring.
        rtol: relative eigenvalue cutoff for the rank of the between-class scatter, in (0, 1).
        riesz_s: exponent of the GNC2 Riesz energy.
        precision: ``"float64"`` (default): every product in float64, exact to round-off; ``"float32"``:
            shifts and products in float32, summed in float64 (faster; README section 3 states the accuracy).
        validate_args: check label range and finiteness in every ``update`` (one device sync per
            batch). Without it, non-finite features are still caught, at ``compute()``.

    Call :meth:`set_classifier` before ``compute()`` for the classifier keys
    (see :func:`hadainit.metrics.functional.neural_collapse` for the key list).
    After ``compute()``, :attr:`class_means` holds the synced class means and
    :attr:`seen` which classes had samples (for :class:`NearestMeanMismatch`).
    ``forward`` (``metric(x, y)``) adds the batch and returns that batch's values, or ``{}`` with a
    warning when they are undefined for it (e.g. a batch of one class).

    >>> metric = NeuralCollapse(num_classes=3, feature_dim=8)
    >>> metric.update(torch.randn(30, 8), torch.arange(30) % 3)
    >>> metric.compute()["num_classes_seen"]
    tensor(3., dtype=torch.float64)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        *,
        global_mean: str = "unweighted",
        reference: Tensor | None = None,
        rtol: float = 1e-12,
        riesz_s: float = 1.0,
        precision: str = "float64",
        validate_args: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = _checks.positive_int(num_classes, "num_classes", minimum=2)
        self.feature_dim = _checks.positive_int(feature_dim, "feature_dim")
        self.validate_args = bool(validate_args)
        if global_mean not in GLOBAL_MEAN_KINDS:
            raise ValueError(f"global_mean must be one of {GLOBAL_MEAN_KINDS}, got {global_mean!r}")
        self.global_mean = global_mean
        self.rtol = check_rtol(rtol)
        self.riesz_s = _checks.positive_float(riesz_s, "riesz_s")
        self.precision = check_precision(precision)
        k, d = num_classes, feature_dim
        check_state_size("NeuralCollapse", 8 * (k * (2 * d + 2) + d * d + 1),
                         f"num_classes={k} x feature_dim={d}: K x d float64 sums and reference, a d x d sum")
        self.add_state("counts", torch.zeros(k, dtype=F64), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(k, d, dtype=F64), dist_reduce_fx="sum")
        self.add_state("sq_norms", torch.zeros(k, dtype=F64), dist_reduce_fx="sum")
        self.add_state("second", torch.zeros(d, d, dtype=F64), dist_reduce_fx="sum")
        # every rank holds the same power of two once synced (the sync agrees on it first): "max" keeps it
        self.add_state("scale", torch.ones((), dtype=F64), dist_reduce_fx="max")
        self.register_buffer("reference", torch.zeros(k, d, dtype=F64))
        self._open_scale = True  # the next non-empty batch chooses ``scale`` (the first of a pass)
        self._pinned = False  # a reference given by set_reference: kept until reset()
        self._workspace = Workspace()
        self._fast = Float32Accumulator()  # precision="float32": one batch's float32 sums, flushed by update()
        self._warned_matmul = False
        self._warned_etf = False
        self._weight: Tensor | None = None
        self._bias: Tensor | None = None
        self._basis: InitialBasis | None = None
        self.class_means: Tensor | None = None
        self.seen: Tensor | None = None
        if reference is not None:
            self.set_reference(reference)

    # ------------------------------------------------------------------ setup
    def set_reference(self, reference: Tensor | None) -> None:
        """Fix the shift (K x d) for the next pass (until ``reset()``); only on an empty metric.
        None: pick one per class from the data (the default)."""
        if self.counts.sum() > 0:
            raise ValueError("set_reference needs an empty metric (call reset() first): the sums use the old one")
        if reference is None:
            self._pinned = False
            return
        if (not isinstance(reference, Tensor) or reference.shape != (self.num_classes, self.feature_dim)
                or not torch.isfinite(reference).all()):
            shape = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__
            raise ValueError(f"reference must be a finite ({self.num_classes}, {self.feature_dim}) tensor, got {shape}")
        self.reference = reference.detach().to(device=self.counts.device, dtype=F64).clone()
        self._fast.discard()  # the float32 copy of the old reference is stale
        self._pinned = True

    def set_classifier(
        self, weight: Tensor | nn.Linear | None, *, bias: Tensor | None = None, basis: InitialBasis | None = None
    ) -> None:
        """The classifier used by the next ``compute()``: a weight W (K x d) or an ``nn.Linear`` (weight and bias);
        None: no classifier keys. ``basis`` (:func:`hadainit.drift.initial_basis`) adds the drift keys; the
        bias only enters the batch values of ``forward`` (NC4 of a pass needs a second pass: see
        :class:`NearestMeanMismatch`). The next ``compute()`` is fresh: values cached for another classifier
        are dropped."""
        weight, bias = check_classifier(weight, bias, self.num_classes, self.feature_dim)
        if basis is not None and not isinstance(basis, InitialBasis):
            raise TypeError(f"basis must be an InitialBasis (hadainit.drift.initial_basis), got {type(basis).__name__}")
        self._weight, self._bias, self._basis = weight, bias, basis
        drop_cached(self)  # torchmetrics caches compute(); it depends on the classifier too

    # ---------------------------------------------------------------- metric
    def update(self, features: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        """Add a batch: features (B, d) of any float dtype, integer labels (B,)."""
        check_batch(features, labels, self.num_classes, self.feature_dim, values=self.validate_args)
        x = features.detach().to(device=self.counts.device)
        labels = labels.to(device=self.counts.device, dtype=torch.int64)  # any integer dtype indexes
        if x.shape[0] == 0:
            return
        if self.precision == "float64":
            if not self._pinned:
                pick_references(self.reference, self.counts, x, labels)
            if self._open_scale:
                self.scale, self._open_scale = choose_scale(x, labels, self.reference), False
            accumulate(self._view(), x, labels, self._workspace)
            return
        if torch.get_float32_matmul_precision() != "highest" and not self._warned_matmul:
            self._warned_matmul = True
            warnings.warn("NeuralCollapse(precision='float32') under torch.set_float32_matmul_precision("
                          f"{torch.get_float32_matmul_precision()!r}): the float32 products may run at reduced "
                          "precision (e.g. TF32); use 'highest' or precision='float64'", stacklevel=2)
        if self._fast.mirror is not None and self._fast.mirror.device != self.reference.device:
            self._fast.discard()  # the metric moved devices: the float32 copy is rebuilt there
        if self._fast.mirror is None:  # the float32 shifts need a reference float32 holds exactly
            stats = Float32Accumulator.exact_reference(self._view())
            if stats.reference is not self.reference:
                self._set_statistics(stats)
            self._fast.start(self._view())
        if not self._pinned:
            pick_references(self.reference, self.counts, x, labels, mirror=self._fast.mirror)
        if self._open_scale:
            self.scale, self._open_scale = choose_scale(x, labels, self.reference), False
        self._fast.add(self._view(), x, labels)
        # the batch's float32 sums go into the float64 states now: between updates the states are complete,
        # so torchmetrics may read, sync, save, move or reset them with no hook of ours (a flush is one d x d pass)
        self._fast.flush(self._view(), keep_mirror=True)

    def _view(self) -> ClassStatistics:
        return ClassStatistics(self.counts, self.sums, self.sq_norms, self.second, self.reference, self.scale)

    def statistics(self) -> ClassStatistics:
        """The states as :class:`~.statistics.ClassStatistics` (the same tensors, not copies)."""
        return self._view()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Load ``reference`` (and the states, if they were saved as persistent). A dict without the states
        (the default: torchmetrics states are not persistent) leaves the sums held here, moved exactly to
        the loaded reference: the sums are always about ``reference``, and loading does not change the values."""
        self._fast.discard()  # the reference may change: the float32 copy is rebuilt by the next update
        held = self._view()
        held = ClassStatistics(held.counts, held.sums, held.sq_norms, held.second, held.reference.clone(), held.scale)
        with_states = all(prefix + name in state_dict for name in ("counts", "sums", "sq_norms", "second"))
        with_reference = prefix + "reference" in state_dict
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # pops the states it loads
        if with_states:
            self._open_scale = not bool(self.counts.sum() > 0)
        elif with_reference and bool(held.counts.sum() > 0) and not torch.equal(
                held.reference, self.reference):
            self._set_statistics(held.rebased(self.reference.clone()))
        drop_cached(self)

    def _set_statistics(self, stats: ClassStatistics) -> None:
        self.counts, self.sums, self.sq_norms, self.second = stats.counts, stats.sums, stats.sq_norms, stats.second
        self.reference, self.scale = stats.reference, stats.scale
        self._fast.discard()  # a new reference: the float32 copy is rebuilt by the next update

    def compute(self) -> dict[str, Tensor]:
        """The scalar values of the (synced) pass as 0-d float64 tensors, keyed as
        :func:`hadainit.metrics.functional.neural_collapse` (per-class values: :meth:`per_class`)."""
        stats = self.statistics()
        check_finite_state(stats.sums, stats.second)
        self.class_means, self.seen = stats.means().clone(), stats.counts > 0
        seen = int(self.seen.sum())
        if seen - 1 > self.feature_dim and not self._warned_etf:
            self._warned_etf = True
            warnings.warn(f"NeuralCollapse: {etf_impossible_message(seen, self.feature_dim)} (said once)", stacklevel=2)
        return as_tensors(collapse_metrics(stats, self._weight, global_mean=self.global_mean, basis=self._basis,
                                           rtol=self.rtol, riesz_s=self.riesz_s), self.counts.device)

    def plot(self, val=None, ax=None, *, keys=None):
        """torchmetrics' ``plot()``: ``val`` (default ``compute()``) or a list of such dicts (one line per key over
        the steps), one panel per group of keys (NC1, the means' and the classifier's geometry, duality, GNC2,
        drift); ``keys`` selects keys. Returns ``(fig, axes)``; see :func:`hadainit.metrics.plotting.plot_values`.

        >>> import matplotlib; matplotlib.use("Agg")
        >>> metric = NeuralCollapse(3, 4)
        >>> metric.update(torch.randn(30, 4), torch.arange(30) % 3)
        >>> fig, axes = metric.plot(keys=["nc1", "cdnv"])
        >>> [a.get_title() for a in axes]
        ['NC1: within-class variability']
        """
        from .plotting import plot_values

        return plot_values(self, val, ax, keys=keys)

    def per_class(self) -> dict[str, Tensor]:
        """Per-class CDNV and (after :meth:`set_classifier`) duality distances of the synced state:
        see :func:`hadainit.metrics.formulas.per_class_metrics`."""
        with synced(self):
            check_finite_state(self.sums, self.second)
            return {key: value.clone() for key, value in
                    per_class_metrics(self.statistics(), self._weight, global_mean=self.global_mean).items()}

    def reset(self) -> None:
        """Zero the sums; the next pass picks its references afresh (an explicit one is dropped)."""
        self._fast.discard()
        super().reset()
        self._pinned = False
        self._open_scale = True

    def forward(self, features: Tensor, labels: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """Add the batch to the accumulated state and return the metrics of this batch alone.

        A batch whose values are undefined (one class, coinciding means, ...) returns ``{}`` with a
        warning, so ``self.log_dict(metric(x, y))`` works on every batch; invalid input raises before
        anything is added. The accumulated state is never replaced by the batch's.
        """
        if is_synced(self):
            raise TorchMetricsUserError("The Metric shouldn't be synced when performing ``forward``.")
        self.update(features, labels)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="classes never seen")  # a batch rarely has every class
                value = neural_collapse(features, labels, self._weight, self._bias, num_classes=self.num_classes,
                                        global_mean=self.global_mean, basis=self._basis, rtol=self.rtol,
                                        riesz_s=self.riesz_s, precision=self.precision)
        except ValueError as err:
            warnings.warn(f"NeuralCollapse: no values for this batch ({err}); the batch was still accumulated",
                          stacklevel=2)
            value = {}
        value = as_tensors(value, self.counts.device)
        set_forward_cache(self, value)
        return value

    # ------------------------------------------------------- merge and sync
    def merge_state(self, incoming_state: dict[str, Any] | NeuralCollapse) -> None:
        """Add another metric's (or a state dict's) sums, moved to this metric's reference first.

        A dict needs the four states and ``"reference"``, the point its sums were taken about.
        """
        if isinstance(incoming_state, NeuralCollapse):
            other = incoming_state.statistics()
            add_update_count(self, incoming_state.update_count)
        elif isinstance(incoming_state, dict):
            missing = {"counts", "sums", "sq_norms", "second", "reference"} - set(incoming_state)
            if missing:
                raise ValueError(f"merging NeuralCollapse sums needs the states and the reference they were "
                                 f"taken about; missing {sorted(missing)}")
            other = ClassStatistics(*(incoming_state[key].to(device=self.counts.device, dtype=F64) for key in
                                      ("counts", "sums", "sq_norms", "second", "reference")),
                                    incoming_state.get("scale"))  # a dict without it: sums of scale 1
        else:
            raise ValueError(f"Expected incoming state to be a dict or a NeuralCollapse, got {type(incoming_state)}")
        self._set_statistics(self.statistics().merged(other))
        self._open_scale = not bool(self.counts.sum() > 0)
        drop_cached(self)

    def sync(
        self,
        dist_sync_fn: Callable | None = None,
        process_group: Any = None,
        should_sync: bool = True,
        distributed_available: Callable | None = None,
    ) -> None:
        """Before torchmetrics sums the states over the ranks, move every rank's sums to one agreed reference."""
        available = distributed_available if distributed_available is not None else self.distributed_available_fn
        group = process_group or self.process_group
        if should_sync and not is_synced(self) and callable(available) and available() and distributed(group):
            self._agree_on_reference(group)
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)

    def _agree_on_reference(self, group) -> None:
        # the pooled class means (an all_reduce of raw sums: accurate enough for a shift point), made
        # bit-identical on every rank by a broadcast; classes no rank has seen keep their own point
        stats = self.statistics()
        # one power of two for all: the largest among the ranks that hold samples (empty ranks take it as it is)
        exponent = torch.where(stats.counts.sum() > 0, torch.log2(stats.scale), torch.full_like(stats.scale, -math.inf))
        dist.all_reduce(exponent, op=dist.ReduceOp.MAX, group=group)
        stats = stats.with_scale(torch.where(torch.isfinite(exponent), torch.exp2(exponent), stats.scale))
        packed = torch.cat((stats.counts.unsqueeze(1) * stats.reference + stats.sums / stats.scale,
                            stats.counts.unsqueeze(1)), 1)
        dist.all_reduce(packed, group=group)
        counts = packed[:, -1]
        pooled = packed[:, :-1] / counts.clamp_min(1).unsqueeze(1)
        dist.broadcast(pooled, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        target = torch.where((counts > 0).unsqueeze(1), pooled, stats.reference)
        self._set_statistics(stats.rebased(target))
