"""The slowdown on the margins that drive the loss: full-batch GD on the digits MLP, long into the terminal phase.

The study's SGD runs reach 100% training accuracy at epoch ~45 of 200: 1.5 e-folds of terminal phase, too
short to tell a log law from a power law. Here the study's digits MLP is trained by plain full-batch
gradient descent (no momentum, no weight decay: the setting of the UFM law) at a constant step, so that
time = lr x steps, and measured at log-spaced steps: ``-log(train loss)``, the smallest and the soft-min
sample margin, and the spectral margin of the class-mean logits (:mod:`hadainit.experiments.measures`),
with V and ``etf_angle``. The UFM law: about 1 per e-fold of time for the margin that drives the loss.
"""

from __future__ import annotations

import math
import time

import torch

from .measures import class_mean_logits, efold_slopes, margin_summary
from .keys import RUN_MARGINS, TRAIN_ACC, TRAIN_LOSS
from .twolayer import record_steps

MARGINS = RUN_MARGINS


def run(steps: int = 12_000, lr: float = 0.5, init: str = "default", seed: int = 0, count: int = 80) -> dict:
    """Train and measure; returns ``{"rows": [...], "summary": {...}, "seconds": ...}``."""
    from hadainit.metrics.logits import spectrum_of_class_mean_logits

    from . import data
    from .measures import divergence
    from .models import MLP
    from .module import apply_init

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    dm = data.Digits()
    dm.setup()
    x, y = dm.train_set.tensors
    model = MLP(10, (1, 8, 8))
    apply_init(model.fc, init, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    record = set(record_steps(steps, count))
    rows = []
    start = time.perf_counter()
    for t in range(steps + 1):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if t in record:
            with torch.no_grad():
                z = logits.detach().double()
                row = {"step": t, "time": lr * t, TRAIN_ACC: (z.argmax(1) == y).double().mean().item()}
                row.update(margin_summary(z, y))
                row[TRAIN_LOSS] = row["loss"]
                try:
                    spec = spectrum_of_class_mean_logits(class_mean_logits(z, y, 10))
                    row.update({k: spec[k] for k in ("spectral_margin", "etf_angle", "kl_lyapunov", "logit_leakage")})
                except ValueError:  # non-finite or collapsed-to-equal logits (a diverged step): no spectrum
                    pass
            row["epochs_done"] = float(t)
            rows.append(row)
            if not math.isfinite(row["loss"]):
                break
        if t == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"rows": rows, "summary": summarize(rows), "seconds": seconds, "steps": steps, "lr": lr, "init": init,
            "diverged": divergence(rows)}


def summarize(rows: list[dict]) -> dict:
    """From the first step at 100% training accuracy: the terminal phase's length in e-folds of time and the
    slope of each margin per e-fold in successive one-e-fold windows."""
    reached = next((r["time"] for r in rows if r["time"] > 0 and r.get(TRAIN_ACC, 0) >= 1.0), None)
    if reached is None:
        return {"terminal_from": None, "efolds": 0.0, "slopes": {}}
    end = rows[-1]["time"]
    return {"terminal_from": reached, "efolds": math.log(end / reached),
            "slopes": {k: efold_slopes([r["time"] for r in rows if k in r], [r[k] for r in rows if k in r], reached)
                       for k in MARGINS}}
