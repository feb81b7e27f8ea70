"""The study's own measurements: margins that drive the loss, divergence and truncation flags, paired statistics,
a label-order-free distance to collapse and the spread of ``logit_leakage`` over relabellings.

Pure functions on tensors or per-epoch tables (:func:`hadainit.experiments.runs.read_metrics`); each is
pinned by a test against an independent computation (``tests/test_study_measures.py``).
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor

from .keys import TRAIN_ACC, TRAIN_LOSS

__all__ = ["sample_margins", "margin_summary", "label_free_distance", "leakage_over_relabellings", "divergence", "mde_range",
           "truncation", "paired_difference", "holm", "efold_slopes", "class_mean_logits", "normalized_margin"]


# ----------------------------------------------------------------- margins
def sample_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Per sample ``z_y - max_{j != y} z_j`` (float64).

    >>> sample_margins(torch.tensor([[2.0, 0.5], [0.0, 1.0]]), torch.tensor([0, 0])).tolist()
    [1.5, -1.0]
    """
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0] or logits.shape[1] < 2:
        raise ValueError(f"need logits (N, K >= 2) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    z = logits.to(torch.float64)
    true = z.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = z.scatter(1, labels.unsqueeze(1), -math.inf)
    return true - others.max(1).values


def margin_summary(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """The margins that drive the cross-entropy: ``loss`` (mean CE), ``neg_log_loss`` = -log(loss), the smallest
    sample margin ``margin_min`` and the soft-min ``margin_softmin = -log mean_i exp(-m_i)`` (between the smallest
    and the mean margin; -log(loss) tends to it, up to log of the number of close competitors, as the loss vanishes).
    Computed stably in float64."""
    z = logits.to(torch.float64)
    loss = torch.nn.functional.cross_entropy(z, labels).item()
    m = sample_margins(z, labels)
    softmin = -(torch.logsumexp(-m, 0) - math.log(m.numel())).item()
    return {"loss": loss, "neg_log_loss": -math.log(loss) if loss > 0 else math.inf, "margin_min": m.min().item(),
            "margin_softmin": softmin, "margin_mean": m.mean().item()}


def class_mean_logits(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``Z`` (K x K, float64): column k holds the mean logits of the samples of class k."""
    z = logits.to(torch.float64)
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    if (counts == 0).any():
        raise ValueError(f"class(es) {torch.nonzero(counts == 0).flatten().tolist()} have no sample")
    return (sums / counts.unsqueeze(1)).T


def _centred(z: Tensor) -> Tensor:
    return z - z.mean(0, keepdim=True) - z.mean(1, keepdim=True) + z.mean()


def label_free_distance(z: Tensor) -> float:
    """``|| Z_c/||Z_c|| - P/||P|| ||_F`` for the class-mean logits ``Z`` (K x K), ``Z_c = P Z P``, ``P = I - 11^T/K``:
    0 exactly at collapse (``Z_c = c P``, c > 0), in [0, 2], and unchanged by any relabelling of the classes
    (``Z -> Pi Z Pi^T`` leaves P fixed), unlike ``logit_leakage`` in the fourier basis.

    >>> label_free_distance(3 * torch.eye(4) + 1.0)
    0.0
    """
    z = torch.as_tensor(z, dtype=torch.float64)
    k = z.shape[0]
    if z.dim() != 2 or z.shape != (k, k) or k < 2:
        raise ValueError(f"Z must be K x K with K >= 2, got shape {tuple(z.shape)}")
    zc = _centred(z)
    norm = torch.linalg.matrix_norm(zc)
    if not norm > 0:
        raise ValueError("the centred class-mean logits are zero: the distance is undefined")
    p = torch.eye(k, dtype=torch.float64) - 1.0 / k
    return torch.linalg.matrix_norm(zc / norm - p / math.sqrt(k - 1)).item()


def normalized_margin(z: Tensor) -> float:
    """The smallest class-mean margin ``min_k (Z_kk - max_{j != k} Z_jk)`` over ``trace(P Z P)`` (= sum(lam) for a
    spectral Z): what tends to t*(S) of docs/theory.md §8 along the flow from a mode set S (1/(K-1) for the
    simplex ETF); scale-free.

    >>> round(normalized_margin(torch.eye(5)), 12)  # the ETF: 1 / (K - 1)
    0.25
    """
    z = torch.as_tensor(z, dtype=torch.float64)
    k = z.shape[0]
    if z.dim() != 2 or z.shape != (k, k) or k < 2:
        raise ValueError(f"Z must be K x K with K >= 2, got shape {tuple(z.shape)}")
    trace = torch.trace(_centred(z))
    if not trace > 0:
        raise ValueError(f"trace(P Z P) = {trace.item():.3g} <= 0: the normalized margin is undefined")
    others = z.masked_fill(torch.eye(k, dtype=torch.bool), -math.inf).max(0).values
    return ((torch.diagonal(z) - others).min() / trace).item()


def leakage_over_relabellings(z: Tensor, count: int = 200, seed: int = 0, basis: str = "auto") -> dict[str, float]:
    """``logit_leakage`` of ``Pi Z Pi^T`` for ``count`` random relabellings ``Pi`` (and the given order):
    min, median, max; the leakage in the fourier basis depends on the class order, this shows by how much."""
    from hadainit.metrics.logits import spectrum_of_class_mean_logits

    z = torch.as_tensor(z, dtype=torch.float64)
    k = z.shape[0]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(count):
        perm = torch.randperm(k, generator=gen)
        values.append(spectrum_of_class_mean_logits(z[perm][:, perm], basis)["logit_leakage"])
    given = spectrum_of_class_mean_logits(z, basis)["logit_leakage"]
    return {"given": given, "min": min(values), "median": statistics.median(values), "max": max(values),
            "count": count}


# ---------------------------------------------------- run health: flags
DIVERGENCE_FACTOR = 10.0  # training loss up this much over its running minimum
ACC_DROP = 0.1  # or training accuracy down this much below its running maximum ...
ACC_ARMED = 0.9  # ... once that running maximum has reached this (not in the noisy early phase)


def divergence(table: list[dict], loss_key: str = TRAIN_LOSS, acc_key: str = TRAIN_ACC,
               factor: float = DIVERGENCE_FACTOR, acc_drop: float = ACC_DROP,
               acc_armed: float = ACC_ARMED) -> dict | None:
    """The first epoch at which a run diverged, or None: the loss rose above ``factor`` times its running
    minimum, the accuracy fell ``acc_drop`` below its running maximum once that maximum has reached
    ``acc_armed`` (the noisy early phase, where the accuracy swings while the network learns, is not a
    divergence), or a loss is not finite.

    >>> divergence([{"epochs_done": 1.0, "train/loss": 1.0}, {"epochs_done": 2.0, "train/loss": 11.0}])["epoch"]
    2.0
    """
    low, high = math.inf, -math.inf
    for row in table:
        loss, acc = row.get(loss_key), row.get(acc_key)
        if loss is not None:
            if not math.isfinite(loss):
                return {"epoch": row["epochs_done"], "reason": f"{loss_key} = {loss}"}
            if loss > factor * low:
                return {"epoch": row["epochs_done"], "reason": f"{loss_key} {loss:.3g} > {factor:g} x its running "
                        f"minimum {low:.3g}"}
            low = min(low, loss)
        if acc is not None:
            if high >= acc_armed and acc < high - acc_drop:
                return {"epoch": row["epochs_done"], "reason": f"{acc_key} {acc:.3g} fell more than {acc_drop:g} "
                        f"below its running maximum {high:.3g}"}
            high = max(high, acc)
    return None


def truncation(table: list[dict], planned_epochs: int, key: str = TRAIN_LOSS) -> dict | None:
    """None if the run logged ``key`` through its planned last epoch; else the last epoch it reached (a killed or
    crashed run, whose final values are not the final values of the plan)."""
    done = [r["epochs_done"] for r in table if key in r]
    last = max(done, default=0.0)
    if last >= planned_epochs:
        return None
    return {"last_epoch": last, "planned": planned_epochs}


# --------------------------------------------------------- paired statistics
def paired_difference(a: list[float], b: list[float], alpha: float = 0.05, power: float = 0.8) -> dict:
    """Paired (by seed) difference ``a - b``: mean, sample std of the differences, n, the two-sided t confidence
    interval at level ``1 - alpha``, its p-value, and the minimal detectable effect of the design: the true mean
    difference a two-sided level-``alpha`` paired t-test detects with probability ``power``, in the units of the
    data, at the observed spread (``(t_{1-alpha/2} + t_{power}) sd / sqrt(n)``, the usual approximation)."""
    from scipy.stats import t as student_t

    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    n = len(d)
    out = {"n": n, "mean": statistics.fmean(d) if d else None, "sd": None, "low": None, "high": None, "p": None,
           "mde": None}
    if n < 2:
        return out
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    q = float(student_t.ppf(1 - alpha / 2, n - 1))
    out.update(sd=sd, low=out["mean"] - q * se, high=out["mean"] + q * se,
               mde=(q + float(student_t.ppf(power, n - 1))) * se)
    if se == 0:
        out["p"] = 1.0 if out["mean"] == 0 else 0.0
    else:
        out["p"] = float(2 * student_t.sf(abs(out["mean"]) / se, n - 1))
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None): reject where the adjusted value is below the level;
    controls the family-wise error rate over all the comparisons given."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


# ----------------------------------------------------------- e-fold slopes
def efold_slopes(times: list[float], values: list[float], start: float, width: float = 1.0) -> list[dict]:
    """Least-squares slope of ``values`` against log(time) in successive windows ``[start e^(k w), start
    e^((k+1) w))`` of ``width`` e-folds (windows with fewer than 3 points are skipped): how the growth per
    e-fold of time changes over the run."""
    if not start > 0:
        raise ValueError(f"start must be > 0, got {start}")
    pts = [(math.log(t / start), v) for t, v in zip(times, values) if t >= start and math.isfinite(v)]
    if not pts:
        return []
    out = []
    k = 0
    top = max(x for x, _ in pts)
    while k * width <= top:
        win = [(x, v) for x, v in pts if k * width <= x < (k + 1) * width]
        if len(win) >= 3 and max(x for x, _ in win) > min(x for x, _ in win):
            mx = statistics.fmean(x for x, _ in win)
            my = statistics.fmean(v for _, v in win)
            sxx = sum((x - mx) ** 2 for x, _ in win)
            slope = sum((x - mx) * (v - my) for x, v in win) / sxx
            out.append({"from": start * math.exp(k * width), "to": start * math.exp((k + 1) * width),
                        "points": len(win), "slope": slope})
        k += 1
    return out


def mde_range(paired: list[dict], endpoint_prefix: str) -> tuple[dict, dict] | None:
    """The comparisons with the smallest and the largest minimal detectable effect among the *complete* ones
    (both arms healthy at every seed: a comparison that lost a seed has a larger MDE that is not the design's)
    whose endpoint starts with ``endpoint_prefix``; None if there is none.

    >>> c = lambda mde, complete: {"endpoint": "x", "mde": mde, "complete": complete}
    >>> [d["mde"] for d in mde_range([c(0.1, True), c(0.3, True), c(9.0, False)], "x")]
    [0.1, 0.3]
    """
    pool = [c for c in paired if c["endpoint"].startswith(endpoint_prefix) and c.get("complete")
            and c.get("mde") is not None and math.isfinite(c["mde"])]
    if not pool:
        return None
    return min(pool, key=lambda c: c["mde"]), max(pool, key=lambda c: c["mde"])
