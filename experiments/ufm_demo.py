"""The UFM validation run: SPEC sections 2-5 reproduced, with figures and a report.

``hadainit ufm --out DIR [--quick]`` writes ``report.json`` (headline numbers),
``report.md`` (each claim, its figure, its number) and PNG figures into DIR.
No data needed; about a minute on 2 CPU cores (``--quick``: about 15 s).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hadainit import modes as mode_sets
from hadainit.bases import paired_spectrum
from hadainit.ufm import (
    UFM,
    etf_angle,
    kl_lyapunov,
    lyapunov_derivative,
    margins,
    spectral_flow,
    spectral_gd,
    time_to_margin,
    unbalanced_lyapunov,
    unbalanced_lyapunov_derivative,
)
from hadainit.ufm.examples import ETF_ANGLE_RISE_K8, UNBALANCED_V_RISE_A, UNBALANCED_V_RISE_B

from .figures import label, new_figure, save
from .ufm_report import write_report
from .runs import prepare_out, write_atomic


def _paired_spectrum(k: int, basis: str, gen: torch.Generator, low: float, high: float, batch=()) -> torch.Tensor:
    return paired_spectrum(low + (high - low) * torch.rand(*batch, k, generator=gen, dtype=torch.float64), basis)


def _log_spectrum(k: int, basis: str, gen: torch.Generator, batch: int, decades: float) -> torch.Tensor:
    lam = torch.exp(math.log(10) * decades * (torch.rand(batch, k, generator=gen, dtype=torch.float64) - 0.7))
    return paired_spectrum(lam, basis)


def frozen_vectors(out: Path, gen: torch.Generator, steps: int) -> dict:
    """Dense GD from a spectral init equals the reduced map; the singular vectors never move."""
    results, fig_axes = {}, new_figure(2)
    fig, axes = fig_axes
    for ax, (k, basis) in zip(axes, [(16, "walsh"), (10, "fourier")]):
        a = _paired_spectrum(k, basis, gen, 0.2, 1.5)
        b = _paired_spectrum(k, basis, gen, 0.2, 1.5)
        dense = UFM.from_spectrum(k, 32, a, b, basis=basis, generator=gen)
        every = max(1, steps // 200)
        hist = dense.gradient_descent(1.0, steps, record=("spectrum", "leakage", "singular_values"), record_every=every)
        red = spectral_gd(a, b, lr=1.0, steps=steps, basis=basis, record_every=every)
        rel = ((hist.spectrum_W - red.a).abs() / red.a.abs()).max().item()
        results[basis] = {
            "K": k, "d": 32, "steps": steps,
            "max_rel_diff_singular_values": rel,
            "max_leakage_W": hist.leakage_W.max().item(),
            "max_leakage_H": hist.leakage_H.max().item(),
        }
        steps_axis = hist.step.numpy()
        for i in range(k):
            ax.plot(steps_axis, hist.singular_values[:, i].numpy(), color="0.6", lw=3, label="dense SVD" if i == 0 else None)
        for i in range(k):
            ax.plot(steps_axis, red.a[:, i].abs().numpy(), "--", lw=1, label="reduced |a_i|" if i == 0 else None)
        label(ax, "GD step", "singular values of W", logx=False)
        ax.set_title(f"{basis}, K={k}: max rel. diff {rel:.1e}")
    results["figure"] = save(fig, out / "dense_vs_reduced.png", "Dense UFM GD vs the exact reduced map")
    return results


def leakage_by_init(out: Path, gen: torch.Generator, steps: int) -> dict:
    """Leakage over GD for walsh / fourier / Paley / random inits."""
    models = {
        "walsh (K=16)": UFM.from_spectrum(16, 32, _paired_spectrum(16, "walsh", gen, 0.2, 2.0), basis="walsh", generator=gen),
        "fourier (K=10)": UFM.from_spectrum(
            10, 32, _paired_spectrum(10, "fourier", gen, 0.2, 2.0), basis="fourier", generator=gen
        ),
        "Paley (K=12)": UFM.from_spectrum(
            12, 32, _paired_spectrum(12, "hadamard", gen, 0.2, 2.0), basis="hadamard", generator=gen
        ),
        "random (K=16)": UFM.random(16, 32, std=0.1, generator=gen),
    }
    fig, (ax,) = new_figure()
    results = {}
    for name, model in models.items():
        hist = model.gradient_descent(1.0, steps, record=("leakage",))
        floor = hist.leakage_W.clamp_min(1e-17)  # log axis
        ax.plot(hist.step.numpy()[1:], floor.numpy()[1:], label=name)
        results[name] = {"final": hist.leakage_W[-1].item(), "max": hist.leakage_W.max().item()}
    label(ax, "GD step", "||offdiag(Q^T W V)||_F / ||W||_F", logx=True, logy=True)
    results["figure"] = save(fig, out / "leakage.png", "Singular-vector leakage from the initial basis")
    return results


def _log_uniform_pair(k: int, basis: str, gen: torch.Generator, batch: int, low: float, high: float):
    """a and b drawn independently, log-uniform over 10^low .. 10^high: unbalanced starts."""
    def one():
        return paired_spectrum(10 ** (low + (high - low) * torch.rand(batch, k, generator=gen, dtype=torch.float64)), basis)

    return one(), one()


UNBALANCED_CASES = [(3, "fourier"), (4, "walsh"), (7, "fourier"), (16, "walsh"), (64, "walsh"), (100, "fourier"), (256, "walsh")]
UNBALANCED_QUICK = [(4, "walsh"), (7, "fourier"), (16, "walsh")]


def lyapunov(out: Path, gen: torch.Generator, quick: bool) -> dict:
    """V(t) along balanced flows; U (SPEC 5b) along unbalanced ones, where V can rise."""
    cases = [(4, "walsh"), (16, "walsh"), (64, "walsh"), (10, "fourier"), (100, "fourier")]
    cases += [] if quick else [(256, "walsh"), (1024, "walsh"), (1000, "fourier")]
    batch = 8 if quick else 32
    times = torch.logspace(-2, 10, 121, dtype=torch.float64)
    fig, (ax, ax2, ax3) = new_figure(3, width=5.2)
    max_increase, max_deriv, count = -math.inf, -math.inf, 0
    for k, basis in cases:
        a = _log_spectrum(k, basis, gen, batch, 3.0).sqrt()
        res = spectral_flow(a, a, times, basis=basis)
        v = kl_lyapunov(res.lam)
        max_increase = max(max_increase, v.diff(dim=0).max().item())
        max_deriv = max(max_deriv, lyapunov_derivative(res.lam, basis).max().item())
        count += batch
        ax.plot(times.numpy(), v[:, 0].numpy(), label=f"K={k} {basis}")
    label(ax, "t (gradient flow)", "V = KL(u || lam_hat)", logx=True, logy=True)
    ax.set_title("balanced: V decreases")

    unb = spectral_flow(UNBALANCED_V_RISE_A, UNBALANCED_V_RISE_B, times)
    v_unb, u_unb = kl_lyapunov(unb.lam), unbalanced_lyapunov(unb.a, unb.b)
    lam0 = UNBALANCED_V_RISE_A * UNBALANCED_V_RISE_B
    bal = spectral_flow(lam0.sqrt(), lam0.sqrt(), times)
    ax2.plot(times.numpy(), v_unb.numpy(), color="C3", lw=2, label="V, unbalanced (a_3=10, b_3=0.2): rises")
    ax2.plot(times.numpy(), u_unb.numpy(), color="C0", lw=2, label="U, same run: falls")
    ax2.plot(times.numpy(), kl_lyapunov(bal.lam).numpy(), color="0.5", ls="--", label="V, same lam balanced (= U)")
    label(ax2, "t (gradient flow)", "V, U", logx=True, logy=True)
    ax2.set_title("the kept counterexample")

    # random unbalanced starts: a and b independent over 3 decades
    flows, worst_u, worst_du, v_rose, v_rise, shown = 0, -math.inf, -math.inf, 0, 0.0, []
    for k, basis in UNBALANCED_QUICK if quick else UNBALANCED_CASES:
        for n in (1, 3):
            a, b = _log_uniform_pair(k, basis, gen, 4 if quick else 12, -2.0, 1.0)
            res = spectral_flow(a, b, times, basis=basis, samples_per_class=n)
            u = unbalanced_lyapunov(res.a, res.b, samples_per_class=n)
            v = kl_lyapunov(res.lam)
            worst_u = max(worst_u, (u.diff(dim=0) / u[:-1]).max().item())
            worst_du = max(worst_du, unbalanced_lyapunov_derivative(res.a, res.b, basis, samples_per_class=n).max().item())
            # (K = 3 fourier: the two modes are one pair, V = 0 throughout: no rise to measure)
            rises = torch.where(v[0] > 0, (v.max(dim=0).values - v[0]) / v[0].clamp_min(1e-300), 0.0)
            v_rose += int((rises > 1e-9).sum())
            v_rise = max(v_rise, rises.max().item())
            flows += a.shape[0]
            shown += [(rises[j].item(), f"K={k}", u[:, j] / u[0, j], v[:, j] / v[0, j]) for j in range(a.shape[0])]
    for i, (_, name, u_rel, v_rel) in enumerate(sorted(shown, key=lambda x: -x[0])[:6]):
        ax3.plot(times.numpy(), v_rel.numpy(), color="C3", alpha=0.7, lw=1, label="V / V(0)" if i == 0 else None)
        ax3.plot(times.numpy(), u_rel.numpy(), color="C0", alpha=0.7, lw=1, label="U / U(0), same runs" if i == 0 else None)
    ax3.axhline(1.0, color="k", lw=0.8)
    label(ax3, "t (gradient flow)", "relative to t = 0", logx=True, logy=True)
    ax3.set_title(f"6 of {flows} unbalanced runs (V rose most)")
    return {
        "trajectories": count,
        "cases": [f"K={k} {b}" for k, b in cases],
        "max_increase_V_balanced": max_increase,
        "max_dV_dt_closed_form": max_deriv,
        "unbalanced_V_start": v_unb[0].item(),
        "unbalanced_V_max": v_unb.max().item(),
        "unbalanced_V_rise": (v_unb.max() - v_unb[0]).item(),
        "unbalanced_U_start": u_unb[0].item(),
        "unbalanced_U_end": u_unb[-1].item(),
        "unbalanced_U_max_step": u_unb.diff().max().item(),
        "random_unbalanced_flows": flows,
        "random_unbalanced_cases": [f"K={k} {b}" for k, b in (UNBALANCED_QUICK if quick else UNBALANCED_CASES)],
        "random_max_rel_step_U": worst_u,
        "random_max_dU_dt_closed_form": worst_du,
        "random_V_rose_in": v_rose,
        "random_V_max_rel_rise": v_rise,
        "figure": save(fig, out / "lyapunov.png", "Lyapunov functions along gradient flow: V (balanced), U (any start)"),
    }


def _rises(f: torch.Tensor) -> tuple[int, float]:
    """(runs in which f rose, largest increase between two samples relative to f(0)); f of shape (T, runs)."""
    rise = (f.diff(dim=0).clamp_min(0).max(dim=0).values) / f[0]
    return int((rise > 1e-9).sum()), rise.max().item()


def lyapunov_beyond_flow(gen: torch.Generator, quick: bool) -> dict:
    """Measured, not claimed: U under gradient descent (step sizes lr / K), U and V with weight decay."""
    cases = [(4, "walsh"), (10, "fourier")] if quick else [(4, "walsh"), (16, "walsh"), (10, "fourier")]
    batch, steps = (4, 200) if quick else (12, 1000)
    gd = []
    for lr_k in (0.1, 1.0, 10.0, 100.0):
        worst, rose, runs, diverged = -math.inf, 0, 0, 0
        for k, basis in cases:
            for n in (1, 3):
                a, b = _log_uniform_pair(k, basis, gen, batch, -2.0, 1.0)
                runs += batch
                try:
                    res = spectral_gd(a, b, lr=lr_k * k, steps=steps, basis=basis, samples_per_class=n)
                except ValueError:  # diverged (reported, then counted)
                    diverged += batch
                    continue
                u = unbalanced_lyapunov(res.a, res.b, samples_per_class=n)
                step = u.diff(dim=0) / u[:-1]
                worst = max(worst, step.max().item())
                rose += int((step > 1e-12).any(dim=0).sum())
        gd.append({"lr_over_K": lr_k, "steps": steps, "runs": runs, "runs_where_U_rose": rose,
                   "max_rel_step_U": worst, "diverged": diverged})
    # with weight decay the flow converges (exponentially in t: stiff in log-time) well before t = 1e5
    times = torch.logspace(-2, 5, 50, dtype=torch.float64)
    decays = [(1e-3, 1e-3), (1e-3, 3e-3)] if quick else [(1e-3, 1e-3), (1e-2, 1e-2), (1e-3, 3e-3), (3e-3, 1e-3)]
    decay = []
    for wd in decays:
        rows = {start: {"weight_decay": list(wd), "start": start, "runs": 0, "U_rose_in": 0, "U_max_increase": 0.0,
                        "V_rose_in": 0, "V_max_increase": 0.0} for start in ("unbalanced", "balanced")}
        for k, basis in ((4, "walsh"),) if quick else ((4, "walsh"), (10, "fourier")):
            for n in (1,) if quick else (1, 3):
                # half the GD batch: LSODA's Jacobian costs one RHS call per state component
                a, b = _log_uniform_pair(k, basis, gen, batch // 2, -2.0, 1.0)
                b = torch.cat((b, a / math.sqrt(n)))  # unbalanced starts, then balanced ones (a_i^2 = n b_i^2)
                res = spectral_flow(torch.cat((a, a)), b, times, basis=basis, samples_per_class=n, weight_decay=wd)
                # U and V fall to the solver's noise (~1e-20) as the flow converges: clamped at 1e-12
                u = unbalanced_lyapunov(res.a, res.b, samples_per_class=n).clamp_min(1e-12)
                v = kl_lyapunov(res.lam).clamp_min(1e-12)
                half = a.shape[0]
                for start, part in (("unbalanced", slice(0, half)), ("balanced", slice(half, 2 * half))):
                    row = rows[start]
                    for name, f in (("U", u), ("V", v)):
                        r, m = _rises(f[:, part])
                        row[f"{name}_rose_in"] += r
                        row[f"{name}_max_increase"] = max(row[f"{name}_max_increase"], m)
                    row["runs"] += half
        decay += list(rows.values())
    return {"cases": [f"K={k} {basis}" for k, basis in cases], "gd": gd, "weight_decay": decay}


def etf_angle_example(out: Path, gen: torch.Generator, quick: bool) -> dict:
    """K = 8: etf_angle first rises while V falls; K = 4: a search finds no rise."""
    times = torch.logspace(-2, 12, 141, dtype=torch.float64)
    a8 = ETF_ANGLE_RISE_K8.sqrt()
    r8 = spectral_flow(a8, a8, times)
    ang8, v8 = etf_angle(r8.lam), kl_lyapunov(r8.lam)
    n4 = 100 if quick else 1000
    lam4 = torch.exp(math.log(10) * 6 * (torch.rand(n4, 4, generator=gen, dtype=torch.float64) - 0.8))
    r4 = spectral_flow(lam4.sqrt(), lam4.sqrt(), times)
    ang4 = etf_angle(r4.lam)
    worst = int(ang4.diff(dim=0).max(dim=0).values.argmax())
    fig, (ax, ax2) = new_figure(2)
    ax.plot(times.numpy(), (ang8 / ang8[0]).numpy(), label="etf_angle / start (rises, then falls)")
    ax.plot(times.numpy(), (v8 / v8[0]).numpy(), label="V / start (falls throughout)")
    label(ax, "t", "relative to t=0", logx=True)
    ax.set_title("K=8, modes 5-7 100x smaller: the angle rises, V falls")
    # the K = 4 panel on a log axis (the decay spans decades), a fan of runs, the one closest to rising
    # highlighted; near NC etf_angle and V are both quadratic in the spread, so their relative curves overlap
    rel4 = (ang4 / ang4[0]).clamp_min(1e-12)
    for j in range(min(20, n4)):
        ax2.plot(times.numpy(), rel4[:, j].numpy(), color="0.75", lw=0.8,
                 label=f"etf_angle / start: 20 of {n4} runs" if j == 0 else None)
    ax2.plot(times.numpy(), rel4[:, worst].numpy(), color="C0", lw=2.5, label="etf_angle / start: the run closest to rising")
    v4 = kl_lyapunov(r4.lam[:, worst])
    ax2.plot(times.numpy(), (v4 / v4[0]).clamp_min(1e-12).numpy(), color="C1", ls="--", lw=1.5,
             label="V / start, same run (overlaps: both quadratic near NC)")
    label(ax2, "t", "relative to t=0", logx=True, logy=True)
    ax2.set_title(f"K=4: etf_angle never rises (largest step {ang4.diff(dim=0).max().item():.1e})")
    peak = int(ang8.argmax())
    return {
        "k8_initial_lam": ETF_ANGLE_RISE_K8.tolist(),
        "k8_angle_start": ang8[0].item(),
        "k8_angle_peak": ang8[peak].item(),
        "k8_angle_rise": (ang8[peak] - ang8[0]).item(),
        "k8_peak_time": times[peak].item(),
        "k8_angle_end": ang8[-1].item(),
        "k8_max_increase_V": v8.diff().max().item(),
        "k4_trajectories": n4,
        "k4_max_angle_increase": ang4.diff(dim=0).max().item(),
        "figure": save(fig, out / "etf_angle_k8_vs_k4.png", "Natural distance vs the Lyapunov function"),
    }


def slowdown(out: Path) -> dict:
    """Time to reach margin gamma on the symmetric manifold grows like exp(gamma) / (2 gamma)."""
    gammas = torch.linspace(2.0, 30.0, 57, dtype=torch.float64)
    k, lam0 = 8, 0.5
    times = time_to_margin(gammas, lam0, k)
    law = torch.exp(gammas) / (2 * gammas)
    ratio = times / law
    fit = gammas >= 10
    # least squares of log t against the law's exponent gamma - log(2 gamma)
    x, y = gammas[fit] - torch.log(2 * gammas[fit]), torch.log(times[fit])
    slope = (((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()).item()
    fig, (ax, ax2) = new_figure(2)
    ax.plot(gammas.numpy(), times.numpy(), "o", ms=3, label="time_to_margin (event detection)")
    ax.plot(gammas.numpy(), law.numpy(), label="exp(gamma) / (2 gamma)")
    label(ax, "margin gamma", "gradient-flow time", logy=True)
    ax2.plot(gammas.numpy(), ratio.numpy(), label="ratio")
    ax2.axhline(1.0, color="k", lw=0.8)
    label(ax2, "margin gamma", "time * 2 gamma exp(-gamma)")
    return {
        "K": k, "lam0": lam0,
        "gammas": gammas.tolist(), "times": times.tolist(), "ratio": ratio.tolist(),
        "ratio_at_gamma_25": ratio[gammas == 25.0].item(),
        "ratio_at_gamma_30": ratio[-1].item(),
        "fit_slope_gamma_ge_10": slope,
        "figure": save(fig, out / "slowdown.png", "Exponential slowdown on the symmetric manifold"),
    }


@torch.no_grad()
def _centred_singular_values(model: UFM) -> torch.Tensor:
    k = model.num_classes
    centre = torch.eye(k, dtype=model.W.dtype) - 1.0 / k
    z = centre @ model.W @ model.class_means() @ centre
    return torch.linalg.svdvals(z)[: k - 1]


def random_vs_spectral(out: Path, gen: torch.Generator, steps: int) -> dict:
    """Small random init: the centred logit spectrum follows the spectral dynamics qualitatively."""
    k, d, lr = 8, 32, 1.0
    model = UFM.random(k, d, std=0.05, generator=gen)
    w0, h0 = model.W.detach().clone(), model.H.detach().clone()
    record = set(torch.logspace(0, math.log10(steps), 200).round().long().tolist()) | {0}
    rec_steps, sv = [], []
    for t in tqdm(range(steps + 1), desc="random init", file=sys.stderr, leave=False):
        if t in record:
            rec_steps.append(t)
            sv.append(_centred_singular_values(model))
        if t < steps:
            model.step(lr)
    sv = torch.stack(sv)
    # the spectral dynamics from the same scale: the singular values of W(0) and H(0), paired in
    # order on the non-constant modes, as if the init had been aligned
    a0 = torch.linalg.svdvals(w0).roll(1)
    b0 = torch.linalg.svdvals(h0).roll(1)
    pred = spectral_gd(a0, b0, lr=lr, steps=steps)
    pred_sv = pred.lam[rec_steps, 1:].sort(dim=-1, descending=True).values
    fig, (ax,) = new_figure()
    s = torch.tensor(rec_steps[1:]).numpy()
    for i in range(k - 1):
        ax.plot(s, sv[1:, i].numpy(), color="C0", alpha=0.8, label="dense, random init" if i == 0 else None)
        ax.plot(s, pred_sv[1:, i].numpy(), "--", color="C1", alpha=0.8, label="spectral dynamics" if i == 0 else None)
    label(ax, "GD step", "singular values of the centred logits", logx=True, logy=True)
    cv = lambda x: (x.std(correction=0) / x.mean()).item()  # noqa: E731
    return {
        "K": k, "d": d, "steps": steps, "init_std": 0.05,
        "final_sv_dense": sv[-1].tolist(), "final_sv_spectral": pred_sv[-1].tolist(),
        "final_cv_dense": cv(sv[-1]), "final_cv_spectral": cv(pred_sv[-1]),
        "initial_cv": cv(sv[0]),
        "figure": save(fig, out / "random_vs_spectral.png", "Small random init vs the spectral prediction"),
    }


def ce_vs_mse(out: Path, gen: torch.Generator) -> dict:
    """Same spectral init: MSE modes decouple and settle at 1, CE modes grow without bound."""
    a = _paired_spectrum(8, "walsh", gen, 0.1, 1.2)
    times = torch.logspace(-1, 12, 131, dtype=torch.float64)
    ce = spectral_flow(a, a, times)
    mse = spectral_flow(a, a, times, loss="mse")
    fig, (ax,) = new_figure()
    for i in range(1, 8):
        ax.plot(times.numpy(), ce.lam[:, i].numpy(), color="C0", label="CE" if i == 1 else None)
        ax.plot(times.numpy(), mse.lam[:, i].numpy(), color="C1", label="MSE" if i == 1 else None)
    label(ax, "t (gradient flow)", "lam_i = a_i b_i", logx=True, logy=True)
    return {
        "mse_max_abs_lam_minus_1_at_end": (mse.lam[-1] - 1).abs().max().item(),
        "ce_min_lam_at_end": ce.lam[-1, 1:].min().item(),
        "ce_min_lam_at_t_1e6": ce.lam[int(torch.searchsorted(times, torch.tensor(1e6, dtype=torch.float64))), 1:].min().item(),
        "figure": save(fig, out / "ce_vs_mse.png", "CE vs MSE from the same spectral init"),
    }


def _truncation_t_star(k: int, d: int, basis: str) -> float:
    """t* of the Hoffer truncation's exactly-covered modes (docs/theory.md §8); 0 if they do not separate."""
    try:
        return mode_sets.max_margin(mode_sets.truncation_modes(k, d, basis), k, basis).value
    except ValueError:
        return 0.0


def mode_choice_table(cases, randoms: int = 3, seed: int = 0) -> list[dict]:
    """t*(S) (and its ETF fraction t* (K - 1)) of ``"auto"``, ``"first"`` and random separating S at r = min(d, K-1)."""
    rows = []
    for k, d in cases:
        basis = "walsh" if k & (k - 1) == 0 else "fourier"
        start = time.perf_counter()
        auto = mode_sets.max_margin(mode_sets.auto_modes(k, d, basis), k, basis)
        gen = torch.Generator().manual_seed(seed)
        rand = sorted(mode_sets.max_margin(mode_sets.random_modes(k, d, basis, generator=gen), k, basis).value
                      for _ in range(randoms))
        first = _truncation_t_star(k, d, basis)
        rows.append({
            "K": k, "d": d, "basis": basis, "r": int(auto.modes.numel()), "etf_t": 1.0 / (k - 1),
            "auto_t_star": auto.value, "auto_upper": auto.upper, "first_t_star": first,
            "random_t_star_median": rand[len(rand) // 2], "random_t_star": rand,
            "lp_iterations": auto.iterations, "seconds": time.perf_counter() - start,
        })
    return rows


def _normalized_margin(lam: torch.Tensor, basis: str) -> torch.Tensor:
    """min_g m_g(lam) / sum(lam): the margin per unit of nuclear norm (its limit is t*(S))."""
    return margins(lam, basis).min(-1).values / lam.sum(-1)


def _set_values(modes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """values (..., K) kept on the mode set, zeros elsewhere; fourier pairs read from the cos mode."""
    out = torch.zeros_like(values)
    out[..., modes] = values[..., modes]
    return out


def _over_set(f, modes: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
    """A function of the non-constant modes (V, U) applied to the modes of S alone (a dummy mode 0 in front)."""
    picked = [torch.cat((torch.zeros_like(t[..., :1]), t[..., modes]), dim=-1) for t in tensors]
    return f(*picked)


def more_classes_than_features(out: Path, gen: torch.Generator, quick: bool) -> dict:
    """K > d (docs/theory.md §8): frozen bases on mode sets, the normalized margin approaching t*, auto vs first."""
    steps = 100 if quick else 2000
    cases = [(16, 5, "walsh"), (12, 5, "fourier")]
    fig, (ax_leak, ax_margin, ax_lam) = new_figure(3, width=5.4)
    frozen, approach = {}, {}
    times = torch.logspace(-1, 15, 33 if quick else 97, dtype=torch.float64)
    marks = range(0, times.numel(), (times.numel() - 1) // 4)
    for (k, d, basis), color in zip(cases, ("C0", "C1")):
        for choice, style in (("auto", "-"), ("first", ":")):
            s = mode_sets.resolve_modes(choice, k, d, basis)
            vals = (0.3 + torch.rand(k, generator=gen, dtype=torch.float64))
            if basis == "fourier":
                vals = vals[mode_sets.mode_frequencies(k)]
            a = _set_values(s, vals)
            if choice == "first":
                a[0] = 0.0  # the truncation's constant column carries no margin; start it at 0 (it stays there)
                s = s[s != 0]
            dense = UFM.from_spectrum(k, d, a[s], modes=s, basis=basis, generator=gen)
            hist = dense.gradient_descent(1.0, steps, record_every=max(1, steps // 100))
            red = spectral_gd(a, a, lr=1.0, steps=steps, basis=basis, record_every=max(1, steps // 100))
            name = f"{basis} K={k} d={d} {choice}"
            frozen[name] = {
                "modes": s.tolist(),
                "max_rel_diff_dense_vs_reduced": ((hist.spectrum_W - red.a[:, s]).abs() / red.a[:, s]).max().item(),
                "max_leakage_W": hist.leakage_W.max().item(), "max_leakage_H": hist.leakage_H.max().item(),
                "max_abs_off_set": red.a[:, [i for i in range(k) if i not in s.tolist()]].abs().max().item(),
            }
            ax_leak.plot(hist.step.numpy()[1:], hist.leakage_W.clamp_min(1e-17).numpy()[1:], style, color=color,
                         label=f"{basis} K={k}, d={d}: {choice}")
            # the flow: normalized margin as a fraction of the ETF's 1/(K-1), on a log-time axis
            t_star = _truncation_t_star(k, d, basis) if choice == "first" else mode_sets.max_margin(s, k, basis).value
            if t_star > 0:
                sol = spectral_flow(a.sqrt(), a.sqrt(), times, basis=basis)
                frac = _normalized_margin(sol.lam, basis) * (k - 1)
            else:  # merged classes: margin 0 at all times; the flow's loss never falls below log 2 (not solved)
                frac = torch.zeros_like(times)
            approach[name] = {"t_star": t_star, "etf_fraction_t_star": t_star * (k - 1),
                              "etf_fraction_at_t": {f"{times[i].item():.0e}": frac[i].item() for i in marks},
                              "reached_fraction_of_t_star": (frac[-1] / (t_star * (k - 1))).item() if t_star > 0 else None}
            note = " (t* = 0: does not separate)" if t_star == 0 else ""
            ax_margin.plot(times.numpy(), frac.numpy(), style, color=color, label=f"{basis} K={k}: {choice}{note}")
            ax_margin.axhline(t_star * (k - 1), color=color, ls=style, lw=0.8, alpha=0.6)
    label(ax_leak, "GD step (dense UFM)", "||offdiag(Q_S^T W V)||_F / ||W||_F", logx=True, logy=True)
    ax_leak.set_ylim(1e-17, 1e-12)
    ax_leak.set_title("frozen: leakage stays at round-off")
    label(ax_margin, "t (gradient flow)", "min_g m_g / (sum(lam) / (K-1))", logx=True)
    ax_margin.set_title("normalized margin -> t*(S) (thin lines)")
    # the SPEC example: lam / sum(lam) -> (1, 1, 2, 2, 1)/7
    example = [1, 2, 4, 8, 3]
    target = torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0], dtype=torch.float64) / 7
    a0 = mode_sets.on_modes(torch.tensor([1.0, 0.3, 2.0, 0.5, 3.0], dtype=torch.float64), example, 16).sqrt()
    sol = spectral_flow(a0, a0, times)
    lam_hat = (sol.lam / sol.lam.sum(-1, keepdim=True))[:, example]
    for j, mode in enumerate(example):
        ax_lam.plot(times.numpy(), (lam_hat[:, j] / target[j]).numpy(), label=f"mode {mode}")
    ax_lam.axhline(1.0, color="k", lw=0.8)
    label(ax_lam, "t (gradient flow)", "(lam_i / sum lam) / lam*_i", logx=True)
    ax_lam.set_title("walsh K=16, S={1,2,4,8,3}: -> (1,1,2,2,1)/7")
    figure = save(fig, out / "more_classes_than_features.png", "More classes than features (K > d): mode sets")
    lyap = _lyapunov_on_mode_sets(gen, quick)
    table = mode_choice_table([(16, 5)] if quick else [(16, 5), (64, 20), (1000, 512), (1024, 512)])
    return {"frozen": frozen, "approach": approach, "spec_example_max_rel_error_at_1e15":
            (lam_hat[-1] / target - 1).abs().max().item(), "lyapunov": lyap, "choice_table": table, "figure": figure}


def _lyapunov_on_mode_sets(gen: torch.Generator, quick: bool) -> dict:
    """Measured, not claimed: do V, U (over S) and KL(lam* || lam_hat) decrease along K > d flows?"""
    k, pairs = 32, (8 if quick else 120)
    times = torch.logspace(-2, 12, 29 if quick else 57, dtype=torch.float64)
    sets = [mode_sets.random_modes(k, int(torch.randint(5, 11, (1,), generator=gen)), "walsh", generator=gen)
            for _ in range(pairs)]
    rows = {"V_over_S": [0, 0.0], "U_over_S_unbalanced": [0, 0.0], "KL_lamstar_balanced": [0, 0.0],
            "KL_lamstar_unbalanced": [0, 0.0]}
    for balanced in (True, False):
        a = torch.zeros(pairs, k, dtype=torch.float64)
        b = torch.zeros_like(a)
        stars = torch.zeros_like(a)
        for j, s in enumerate(sets):
            a[j, s] = 10 ** (2 * torch.rand(s.numel(), generator=gen, dtype=torch.float64) - 1)
            b[j, s] = a[j, s] if balanced else 10 ** (2 * torch.rand(s.numel(), generator=gen, dtype=torch.float64) - 1)
            stars[j] = mode_sets.max_margin(s, k, "walsh").lam
        sol = spectral_flow(a, b, times)
        lam_hat = sol.lam / sol.lam.sum(-1, keepdim=True)
        on = stars > 0
        kl = torch.where(on, stars * (stars.clamp_min(1e-300).log() - lam_hat.clamp_min(1e-300).log()), 0.0).sum(-1)
        key = "KL_lamstar_balanced" if balanced else "KL_lamstar_unbalanced"
        rows[key] = list(_rises(kl.clamp_min(1e-15)))
        if balanced:
            v = torch.stack([_over_set(kl_lyapunov, s, sol.lam[:, j]) for j, s in enumerate(sets)], dim=1)
            rows["V_over_S"] = list(_rises(v.clamp_min(1e-15)))
        else:
            u = torch.stack([_over_set(unbalanced_lyapunov, s, sol.a[:, j], sol.b[:, j]) for j, s in enumerate(sets)],
                            dim=1)
            rows["U_over_S_unbalanced"] = list(_rises(u.clamp_min(1e-15)))
    return {"K": k, "pairs": pairs, "t_max": 1e12,
            **{name: {"rose_in": r, "of": pairs, "largest_rise_over_start": m} for name, (r, m) in rows.items()}}


def _kd_report(r: dict) -> str:
    """The K > d section of report.md (appended after the sections of experiments/ufm_report.py)."""
    kd = r["more_classes_than_features"]
    frozen = "\n".join(f"| {n} | {len(v['modes'])} | {v['max_rel_diff_dense_vs_reduced']:.2g} | {v['max_leakage_W']:.2g} | "
                       f"{v['max_abs_off_set']:.2g} |" for n, v in kd["frozen"].items())
    approach = "\n".join(
        f"| {n} | {v['etf_fraction_t_star']:.4f} | {list(v['etf_fraction_at_t'].values())[-1]:.4f} | "
        f"{'-' if v['reached_fraction_of_t_star'] is None else format(v['reached_fraction_of_t_star'], '.4f')} |"
        for n, v in kd["approach"].items())
    table = "\n".join(
        f"| {t['K']} | {t['d']} | {t['basis']} | {t['r']} | {t['auto_t_star'] * (t['K'] - 1):.4f} | "
        f"{t['first_t_star'] * (t['K'] - 1):.4f} | {t['random_t_star_median'] * (t['K'] - 1):.4f} |"
        for t in kd["choice_table"])
    ly = kd["lyapunov"]
    lrows = "\n".join(f"| {name} | {v['rose_in']} / {v['of']} | {v['largest_rise_over_start']:.3g} |"
                       for name, v in ly.items() if isinstance(v, dict))
    return f"""
## 7. More classes than features, K > d (docs/theory.md §8)

A mode set S of r = min(d, K - 1) non-constant modes: W(0) = Q_S diag(a) V^T. Dense GD ({r["frozen_vectors"]["walsh"]["steps"]}
steps, lr = 1) against the reduced map with the modes off S at 0. Figure: `{kd["figure"]}`.

| case | r | max rel. diff dense vs reduced | max leakage W | largest value off S |
|---|---|---|---|---|
{frozen}

Gradient flow to t = 1e15: the normalized margin `min_g m_g / sum(lam)` as a fraction of the ETF's 1/(K-1)
("first" = the Hoffer truncation's modes, its constant column at 0):

| case | t*(S) (K-1) | at t = 1e15 | reached / t* |
|---|---|---|---|
{approach}

The spec example (walsh K = 16, S = {{1, 2, 4, 8, 3}}): lam / sum(lam) is within
{kd["spec_example_max_rel_error_at_1e15"]:.2%} of (1, 1, 2, 2, 1)/7 per mode at t = 1e15.

Choosing S: t*(S) (K - 1) (1 = the ETF's margin) of "auto", of the truncation ("first") and the median of 3 random
separating sets at the same r:

| K | d | basis | r | auto | first | random (median) |
|---|---|---|---|---|---|---|
{table}

Measured, not claimed: rises along {ly["pairs"]} flows per row (K = {ly["K"]} walsh, random separating S of 5-10 modes,
t up to 1e12; a rise counts above 1e-9 of the start value):

| function | rose in | largest rise / start |
|---|---|---|
{lrows}
"""


def run(out: Path, quick: bool = False, seed: int = 0) -> dict:
    """Run every section, write the figures and reports into ``out``, return the report dict."""
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    steps = 300 if quick else 2000
    start = time.perf_counter()
    sections = [
        ("frozen_vectors", lambda: frozen_vectors(out, gen, steps)),
        ("leakage", lambda: leakage_by_init(out, gen, steps)),
        ("lyapunov", lambda: lyapunov(out, gen, quick)),
        ("lyapunov_beyond_flow", lambda: lyapunov_beyond_flow(gen, quick)),
        ("etf_angle", lambda: etf_angle_example(out, gen, quick)),
        ("slowdown", lambda: slowdown(out)),
        ("random_init", lambda: random_vs_spectral(out, gen, 2000 if quick else 20000)),
        ("ce_vs_mse", lambda: ce_vs_mse(out, gen)),
        ("more_classes_than_features", lambda: more_classes_than_features(out, gen, quick)),
    ]
    report: dict = {"config": {"quick": quick, "seed": seed, "torch": torch.__version__, "threads": torch.get_num_threads()}}
    for name, section in tqdm(sections, desc="hadainit ufm", file=sys.stderr):
        report[name] = section()
    report["seconds"] = time.perf_counter() - start
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    write_report(report, out / "report.md")
    write_atomic(out / "report.md", (out / "report.md").read_text() + _kd_report(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hadainit ufm", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="a ~15-second version")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        prepare_out(args.out, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"hadainit ufm: {err}", file=sys.stderr)
        return 2
    report = run(args.out, args.quick, args.seed)
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out}/report.json, report.md and figures in {report['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
