"""The known-time-map experiment: a two-layer linear head ``logits = W2 W1 x`` on real data, an arm that sees Q.

The inputs are built from real samples so that the class means are exactly the class codes and the
within-class spread is the data's own, scaled by ``alpha``. For the samples ``x_i`` of K classes (balanced:
the first n of each class) with class means ``M = [mu_1 .. mu_K]``, each deviation ``x_i - mu_c`` is split
into its part in span(M), ``M r_i``, and the rest, ``U s_i`` (U an orthonormal basis of the complement);
the input is ``[e_c + alpha_in r_i ; alpha_out s_i / sigma]`` (sigma: the RMS norm of the means, so
``alpha_in = alpha_out = 1`` is the real data up to one fixed linear map). ``W2 W1`` starts spectral and
balanced (``W2 = Q diag(a) V^T``, ``W1 = [V diag(b) Q^T, 0]``, a = b), trained by full-batch GD on the
mean cross-entropy, float64, time = lr x steps, nothing fitted. At ``alpha = 0`` the features ``W1 x`` of a
class coincide and the head is the UFM with one sample per class: ``hadainit.ufm.spectral_gd`` gives its
exact trajectory (``tests/test_twolayer.py`` checks the match to round-off). With ``alpha > 0`` it measures
how real within-class spread breaks the frozen vectors (leakage of W2 in the initial basis), whether the
K = 8 rise of ``etf_angle`` survives, and the growth per e-fold of the loss-driving margins.

``features`` may be any real features: :func:`penultimate_features` gives those of a trained digits MLP
(the data-dependent spectral head: the same map makes its class means spectral at the start).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .measures import class_mean_logits, efold_slopes, label_free_distance, margin_summary
from .keys import RUN_MARGINS

#: the K = 10 fourier start: modes of a few decades (pairs equal, as the exact theory needs)
FOURIER10_LAM = (1.0, 10.0, 10.0, 3.0, 3.0, 1.0, 1.0, 0.3, 0.3, 0.1)


def digits(num_classes: int) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits 0 .. K-1 (all 1,797 images; pixels / 16), float64."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    keep = y < num_classes
    return torch.tensor(x[keep], dtype=torch.float64) / 16.0, torch.tensor(y[keep], dtype=torch.int64)


def balanced(x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The first n samples of each class (n: the smallest class), grouped by class."""
    n = min(int((y == c).sum()) for c in range(num_classes))
    idx = torch.cat([torch.nonzero(y == c).flatten()[:n] for c in range(num_classes)])
    return x[idx], y[idx]


def head_inputs(x: Tensor, y: Tensor, num_classes: int, alpha_in: float, alpha_out: float) -> tuple[Tensor, dict]:
    """The inputs of the module docstring (N x p, p = K + rank of the complement) and the spread's size:
    ``in_span`` and ``out_of_span`` are the RMS norms of ``r_i`` and ``s_i / sigma`` at alpha = 1 (the class
    codes have norm 1)."""
    x = x.to(torch.float64)
    means = torch.stack([x[y == c].mean(0) for c in range(num_classes)], 1)  # D x K
    dev = x - means.T[y]
    r = torch.linalg.lstsq(means, dev.T).solution.T  # N x K
    res = dev - r @ means.T
    u, s, _ = torch.linalg.svd(means, full_matrices=True)
    rank = int((s > s[0] * max(means.shape) * torch.finfo(s.dtype).eps).sum())
    comp = u[:, rank:]  # D x (D - rank)
    sigma = means.pow(2).sum(0).mean().sqrt()
    out = res @ comp / sigma
    code = torch.nn.functional.one_hot(y, num_classes).to(torch.float64)
    inputs = torch.cat((code + alpha_in * r, alpha_out * out), 1)
    return inputs, {"in_span": r.pow(2).sum(1).mean().sqrt().item(), "out_of_span": out.pow(2).sum(1).mean().sqrt().item(),
                    "input_dim": inputs.shape[1]}


def spectral_head(num_classes: int, width: int, lam0, basis: str, input_dim: int, seed: int = 0):
    """``(W2, W1, Q, V)``: the balanced spectral init ``a = b = sqrt(lam0)`` (mode 0 first), W1 zero off the codes."""
    from hadainit.ufm import UFM

    a = torch.as_tensor(lam0, dtype=torch.float64).sqrt()
    ufm = UFM.from_spectrum(num_classes, width, a, a, basis=basis, samples_per_class=1,
                            generator=torch.Generator().manual_seed(seed))
    w1 = torch.zeros(width, input_dim, dtype=torch.float64)
    w1[:, :num_classes] = ufm.H.detach()
    return ufm.W.detach().clone(), w1, ufm.left.clone(), ufm.right.clone()


def record_steps(steps: int, count: int = 60) -> list[int]:
    """About ``count`` log-spaced steps from 1 to ``steps``, and 0."""
    ratio = steps ** (1.0 / (count - 1))
    return sorted({0, steps} | {max(1, min(steps, round(ratio**i))) for i in range(count)})


def train_head(inputs: Tensor, labels: Tensor, num_classes: int, *, lam0, basis: str, width: int = 16, lr: float = 1.0,
               steps: int = 20_000, seed: int = 0, record: list[int] | None = None) -> list[dict]:
    """Full-batch GD on the two-layer head (closed-form gradients); one row per recorded step: time = lr x step,
    the spectrum in the initial basis, leakage and out-of-span drift of W2, the class-mean-logit keys of
    :func:`hadainit.metrics.logits.spectrum_of_class_mean_logits`, the loss-driving margins, the label-free
    distance. A non-finite loss ends the run (its last row has ``diverged``)."""
    from hadainit.drift import leakage
    from hadainit.metrics.logits import spectrum_of_class_mean_logits

    w2, w1, q, v = spectral_head(num_classes, width, lam0, basis, inputs.shape[1], seed)
    n = inputs.shape[0]
    y1 = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64).T  # K x N
    codes = torch.eye(inputs.shape[1], num_classes, dtype=torch.float64)  # the class means of the inputs
    record = set(record_steps(steps) if record is None else record)
    rows = []
    for t in range(steps + 1):
        h = w1 @ inputs.T  # d x N
        z = w2 @ h  # K x N
        if t in record:
            logits = z.T
            row = {"step": t, "time": lr * t}
            if not torch.isfinite(z).all():
                rows.append({**row, "diverged": True})
                break
            row.update(margin_summary(logits, labels))
            zbar = class_mean_logits(logits, labels, num_classes)
            spec = spectrum_of_class_mean_logits(zbar, basis)
            row.update({k: spec[k] for k in ("logit_leakage", "etf_angle", "spectral_margin", "kl_lyapunov_modes")})
            hbar = w1 @ codes  # d x K: the class-mean features
            a, b = torch.diagonal(q.T @ w2 @ v), torch.diagonal(v.T @ hbar @ q)
            row.update({"lam": (a * b)[1:].tolist(), "leakage_W": leakage(w2, q, v).item(),
                        "leakage_H": leakage(hbar.T, q, v).item(),
                        "out_of_span_W": (torch.linalg.matrix_norm(w2 - w2 @ v @ v.T) / torch.linalg.matrix_norm(w2)).item(),
                        "label_free_distance": label_free_distance(zbar)})
            rows.append(row)
            if not math.isfinite(row["loss"]):
                row["diverged"] = True
                break
        if t == steps:
            break
        g = (torch.softmax(z, 0) - y1) / n
        g_w2 = g @ h.T
        g_w1 = w2.T @ g @ inputs
        w2 = w2 - lr * g_w2
        w1 = w1 - lr * g_w1
    return rows


def rise(rows: list[dict], key: str) -> dict:
    """The largest rise of ``key`` above its start before its minimum-after-peak: relative rise, peak time."""
    vals = [(r["time"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    if len(vals) < 3:
        return {"relative_rise": None, "peak_time": None}
    v0 = vals[0][1]
    peak_t, peak = max(vals, key=lambda p: p[1])
    return {"relative_rise": (peak - v0) / abs(v0) if v0 else None, "peak_time": peak_t, "start": v0,
            "end": vals[-1][1]}


MARGINS = RUN_MARGINS


def summarize(rows: list[dict], lr: float) -> dict:
    """The headline numbers of one trajectory: leakage (max, final), etf_angle's rise, and per-e-fold slopes of
    each loss-driving margin over the last three e-folds of time (windows of one e-fold)."""
    ok = [r for r in rows if not r.get("diverged")]
    last_t = ok[-1]["time"] if ok else 0.0
    out = {"diverged": any(r.get("diverged") for r in rows), "final_time": last_t,
           "leakage_W_max": max((r["leakage_W"] for r in ok), default=None),
           "leakage_W_final": ok[-1]["leakage_W"] if ok else None,
           "logit_leakage_final": ok[-1]["logit_leakage"] if ok else None,
           "out_of_span_W_final": ok[-1]["out_of_span_W"] if ok else None,
           "label_free_distance_final": ok[-1]["label_free_distance"] if ok else None,
           "etf_angle": rise(ok, "etf_angle"), "train_acc_margin_positive": ok[-1]["margin_min"] > 0 if ok else None}
    start = last_t / math.e**3
    out["slopes"] = {k: efold_slopes([r["time"] for r in ok], [r[k] for r in ok], start) if start > 0 else []
                     for k in MARGINS}
    return out


def reduced_rows(lam0, basis: str, lr: float, steps: int, record: list[int]) -> dict[int, list[float]]:
    """The exact reduced dynamics (``hadainit.ufm.spectral_gd``, one sample per class) at the recorded steps: lam."""
    from hadainit.ufm import spectral_gd

    a = torch.as_tensor(lam0, dtype=torch.float64).sqrt()
    res = spectral_gd(a, a, lr=lr, steps=steps, basis=basis, samples_per_class=1, record_every=1)
    return {t: res.lam[t, 1:].tolist() for t in record if t <= steps}


def experiment(name: str, x: Tensor, y: Tensor, num_classes: int, basis: str, lam0, alpha_in: float,
               alpha_out: float, *, lr: float, steps: int, width: int = 16, seed: int = 0) -> dict:
    """One configuration: inputs from real samples, the trajectory's rows and its summary."""
    xb, yb = balanced(x, y, num_classes)
    inputs, size = head_inputs(xb, yb, num_classes, alpha_in, alpha_out)
    rows = train_head(inputs, yb, num_classes, lam0=lam0, basis=basis, width=width, lr=lr, steps=steps, seed=seed)
    match = None
    if alpha_in == 0 and alpha_out == 0:  # the UFM exactly: the largest relative difference from the reduced map
        exact = reduced_rows(lam0, basis, lr, steps, [r["step"] for r in rows])
        match = max(abs(p - q) / abs(q) for r in rows if "lam" in r for p, q in zip(r["lam"], exact[r["step"]]))
    return {"reduced_max_rel_diff": match, "source": "pixels", "name": name, "K": num_classes, "basis": basis, "alpha_in": alpha_in, "alpha_out": alpha_out,
            "lr": lr, "steps": steps, "samples": int(yb.numel()), "spread": size, "summary": summarize(rows, lr),
            "rows": rows}


def penultimate_features(epochs: int = 30, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The 64-d penultimate features (float64) of every digit, from the study's digits MLP (default last layer)
    trained ``epochs`` epochs on the training split by SGD (lr 0.05, momentum 0.9, batch 128), in plain torch."""
    from . import data
    from .models import MLP

    torch.manual_seed(seed)
    dm = data.Digits()
    dm.setup()
    model = MLP(10, (1, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    xs, ys = dm.train_set.tensors
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(ys), generator=gen).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    with torch.no_grad():
        feats = model.body(torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0)
    return feats.double(), torch.tensor(y, dtype=torch.int64)


def plan(quick: bool) -> list[dict]:
    """The configurations: K = 8 walsh (digits 0-7, the kept K = 8 rise example) and K = 10 fourier, alpha 0 and
    in-span / out-of-span / both spreads; the data-dependent head on trained penultimate features."""
    from hadainit.ufm.examples import ETF_ANGLE_RISE_K8

    steps = 300 if quick else 10_000
    alphas = (1.0,) if quick else (0.3, 1.0)
    out = []
    for k, basis, lam0 in ((8, "walsh", ETF_ANGLE_RISE_K8.tolist()), (10, "fourier", list(FOURIER10_LAM))):
        out.append({"name": f"K{k}-{basis}-alpha0", "source": "pixels", "K": k, "basis": basis, "lam0": lam0,
                    "alpha_in": 0.0, "alpha_out": 0.0, "steps": steps})
        for alpha in alphas:
            for tag, ai, ao in (("in", alpha, 0.0), ("out", 0.0, alpha), ("both", alpha, alpha)):
                out.append({"name": f"K{k}-{basis}-{tag}{alpha:g}", "source": "pixels", "K": k, "basis": basis,
                            "lam0": lam0, "alpha_in": ai, "alpha_out": ao, "steps": steps})
    out.append({"name": "K10-fourier-penultimate", "source": "penultimate", "K": 10, "basis": "fourier",
                "lam0": list(FOURIER10_LAM), "alpha_in": 1.0, "alpha_out": 1.0, "steps": steps})
    return out


def run_config(cfg: dict, lr: float = 1.0) -> dict:
    """Run one configuration of :func:`plan` (in a worker of the study's pool)."""
    torch.set_num_threads(1)
    if cfg["source"] == "penultimate":
        x, y = penultimate_features()
    else:
        x, y = digits(cfg["K"])
    result = experiment(cfg["name"], x, y, cfg["K"], cfg["basis"], cfg["lam0"], cfg["alpha_in"], cfg["alpha_out"],
                        lr=lr, steps=cfg["steps"])
    result["source"] = cfg["source"]
    return result
