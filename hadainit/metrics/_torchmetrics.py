"""Every use of a torchmetrics (or ``torch.nn.Module``) private by hadainit's metrics, in one place.

The metrics override only what torchmetrics documents for subclasses (``update``, ``compute``, ``reset``,
``forward``, ``merge_state``, ``sync``, ``plot``) and the ``nn.Module`` hooks in the table; everything else
they need from the ``Metric`` internals goes through the functions below, each checked against the pinned
torchmetrics by ``tests/test_metric_api.py``. A torchmetrics release that renames one breaks those tests,
not a user's run.

========================  ==========================================  ===============================================
function / hook           private used                                why
========================  ==========================================  ===============================================
:func:`drop_cached`       ``Metric._computed``                        ``compute()`` is cached until the next
                                                                      ``update``; the values also depend on the
                                                                      classifier (``set_classifier``), a loaded
                                                                      reference and merged sums
:func:`add_update_count`  ``Metric._update_count``                    ``merge_state`` of a metric object adds its
                                                                      update count (compute() warns at 0)
:func:`is_synced`         ``Metric._is_synced``                       ``forward``/``sync`` refuse or skip a synced
                                                                      metric, as torchmetrics' own do
:func:`synced`            ``Metric._to_sync``, ``._should_unsync``    ``per_class()`` reads the synced states as
                                                                      ``compute()`` does (torchmetrics' own flags)
:func:`set_forward_cache` ``Metric._forward_cache``                   ``forward`` returns the batch values and keeps
                                                                      them where Lightning's ``self.log(metric)``
                                                                      reads a step value
``_apply`` (override)     ``nn.Module._apply`` (torchmetrics          :class:`~.base.Float64Metric`: ``.to(dtype)``
                          overrides it too)                           and precision plugins move the float64 sums
                                                                      between devices only
``_load_from_state_dict`` ``nn.Module._load_from_state_dict``         ``NeuralCollapse``: a loaded ``reference``
(override)                (documented hook)                           moves the sums held to it
========================  ==========================================  ===============================================
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torchmetrics import Metric

__all__ = ["add_update_count", "drop_cached", "is_synced", "set_forward_cache", "synced"]


def drop_cached(metric: Metric) -> None:
    """Make the next ``compute()`` recompute (torchmetrics caches it until the next ``update``)."""
    metric._computed = None


def add_update_count(metric: Metric, count: int) -> None:
    """Add ``count`` to the number of ``update`` calls the state holds (``update_count`` is read-only)."""
    metric._update_count += int(count)


def is_synced(metric: Metric) -> bool:
    """Whether the states are currently the synced (all-rank) ones."""
    return bool(metric._is_synced)


def synced(metric: Metric) -> AbstractContextManager:
    """The synced states for the ``with`` block, with the flags ``compute()`` itself uses."""
    return metric.sync_context(dist_sync_fn=metric.dist_sync_fn, should_sync=metric._to_sync,
                               should_unsync=metric._should_unsync)


def set_forward_cache(metric: Metric, value) -> None:
    """What ``forward`` returned, where torchmetrics (and Lightning's logging of a metric) keeps it."""
    metric._forward_cache = value
