"""The metric-key contract of the experiments layer: every column name a reader (the study, its
report and figures, ``compare``, ``slowdown``, the per-run report) looks up in a run's
``metrics.csv``.

The monitors log under ``<name>_<mode>/<key>`` (``NeuralCollapseMonitor`` in ``mode="eval"``
writes ``nc_eval/nc1``, ``SpectralMonitor`` writes ``spectral_eval/drift``); the training module
logs ``train/...`` and ``val/...``; the study's margin probe logs ``probe/...``. A reader imports
the prefix and the key name from here instead of spelling the string itself, so a renamed key is
changed in one place.

>>> NC_EVAL + "nc1", SPECTRAL_EVAL + "drift", PROBE + "margin_min"
('nc_eval/nc1', 'spectral_eval/drift', 'probe/margin_min')
"""
from __future__ import annotations

#: ``NeuralCollapseMonitor(mode="eval")``'s prefix (the study runs both monitors in eval mode)
NC_EVAL = "nc_eval/"
#: ``SpectralMonitor(mode="eval")``'s prefix
SPECTRAL_EVAL = "spectral_eval/"
#: the study's margin probe (``experiments/probe.py``)
PROBE = "probe/"

#: what the Lightning module logs once per epoch
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"

#: margin key names (without prefix), in the order ``slowdown`` picks a default column
MARGIN_DEFAULT_SUFFIXES = ("spectral_margin", "margin_mean", "class_margin_mean")
#: the margins the full-batch and two-layer runs record, loss-driving first
RUN_MARGINS = ("neg_log_loss", "margin_min", "margin_softmin", "spectral_margin")
#: the columns ``hadainit compare`` tabulates (a leading ``/`` matches any monitor prefix)
COMPARE_SUFFIXES = (VAL_ACC, TRAIN_ACC, "/nc1", "/cdnv", "/etf_gap_means", "/nc3", "/nc4", "/kl_lyapunov",
                    "/drift", "/drift_out_of_span", "/logit_leakage", "/spectral_margin")
#: the (train, val) pairs the per-run report draws
RUN_CURVES = ((TRAIN_ACC, VAL_ACC), (TRAIN_LOSS, VAL_LOSS))
