"""``report.md`` for the UFM validation run: each claim, the figure that shows it, the number that backs it."""

from __future__ import annotations

from pathlib import Path

from .runs import write_atomic


def _e(x: float) -> str:
    return f"{x:.3g}"


def write_report(r: dict, path: Path) -> None:
    fv, lk, ly, ea, sd, ri, cm = (
        r["frozen_vectors"], r["leakage"], r["lyapunov"], r["etf_angle"], r["slowdown"], r["random_init"], r["ce_vs_mse"]
    )
    bf = r["lyapunov_beyond_flow"]
    gd_rows = "\n".join(
        f"| {g['lr_over_K']:g} K | {g['runs_where_U_rose']} / {g['runs']} | {_e(g['max_rel_step_U'])} | {g['diverged']} |"
        for g in bf["gd"]
    )
    wd_rows = "\n".join(
        f"| ({_e(w['weight_decay'][0])}, {_e(w['weight_decay'][1])}) | {w['start']} | {w['U_rose_in']} / {w['runs']} | "
        f"{_e(w['U_max_increase'])} | {w['V_rose_in']} / {w['runs']} | {_e(w['V_max_increase'])} |"
        for w in bf["weight_decay"]
    )
    leak_rows = "\n".join(
        f"| {name} | {_e(v['final'])} | {_e(v['max'])} |" for name, v in lk.items() if name != "figure"
    )
    text = f"""# hadainit: UFM validation run

{"Quick run (`--quick`): fewer steps and spectra. " if r["config"]["quick"] else ""}torch {r["config"]["torch"]}, \
{r["config"]["threads"]} threads, seed {r["config"]["seed"]}, {r["seconds"]:.1f} s.

## 1. Spectral init diagonalizes the softmax: singular vectors stay frozen (SPEC 2-3)

Dense full-matrix GD on the UFM (d = 32, lr = 1, {fv["walsh"]["steps"]} steps, float64) from a spectral init,
against the exact reduced map on the singular values alone. Figure: `{fv["figure"]}`.

| basis | K | max rel. diff of singular values | max leakage W | max leakage H |
|---|---|---|---|---|
| walsh | {fv["walsh"]["K"]} | {_e(fv["walsh"]["max_rel_diff_singular_values"])} | {_e(fv["walsh"]["max_leakage_W"])} | {_e(fv["walsh"]["max_leakage_H"])} |
| fourier | {fv["fourier"]["K"]} | {_e(fv["fourier"]["max_rel_diff_singular_values"])} | {_e(fv["fourier"]["max_leakage_W"])} | {_e(fv["fourier"]["max_leakage_H"])} |

Leakage `||offdiag(Q^T W V)||_F / ||W||_F` over training, by initialization (figure `{lk["figure"]}`):
round-off for walsh and fourier, order 0.1 for a Paley Hadamard basis (not softmax-diagonalizing)
and for a small random init (basis: SVD of W(0)).

| init | final leakage | max leakage |
|---|---|---|
{leak_rows}

## 2. The KL Lyapunov function decreases along balanced flows (SPEC 5)

{ly["trajectories"]} balanced gradient flows from random spectra spanning 3 decades
({", ".join(ly["cases"])}), t from 1e-2 to 1e10. Figure: `{ly["figure"]}`.

- largest increase of V between consecutive samples: **{_e(ly["max_increase_V_balanced"])}** (<= 0: monotone);
- largest value of the closed-form dV/dt of the proof: **{_e(ly["max_dV_dt_closed_form"])}** (<= 0);
- not claimed off balance: the kept unbalanced example (K = 4, a_3 = 10, b_3 = 0.2) takes V from
  {_e(ly["unbalanced_V_start"])} up to **{_e(ly["unbalanced_V_max"])}** (rise {_e(ly["unbalanced_V_rise"])}).

## 2b. U: a Lyapunov function for every spectral start (SPEC 5b)

`U(a, b) = log mean (a_i^2 + b'_i^2)/2 - mean log ((a_i + b'_i)/2)^2` (`b' = sqrt(n) b`) equals V on balanced
starts and is proven never to increase along the gradient flow without weight decay, from any positive start
(`hadainit.ufm.unbalanced_lyapunov`; the proof is in `hadainit.ufm.lyapunov`). Figure: `{ly["figure"]}` (middle and right).

- the kept counterexample: while V rises, U falls from {_e(ly["unbalanced_U_start"])} to
  **{_e(ly["unbalanced_U_end"])}** (largest step {_e(ly["unbalanced_U_max_step"])});
- {ly["random_unbalanced_flows"]} flows from unbalanced starts (a and b independent, log-uniform over 1e-2 .. 1e1;
  {", ".join(ly["random_unbalanced_cases"])}; n in {{1, 3}}): largest relative step of U **{_e(ly["random_max_rel_step_U"])}**,
  largest closed-form dU/dt {_e(ly["random_max_dU_dt_closed_form"])}; V rose in {ly["random_V_rose_in"]} of them
  (its largest rise: {_e(ly["random_V_max_rel_rise"])} times its start value).

Measured, not claimed. Gradient descent with step `lr` ({bf["gd"][0]["steps"]} steps, {", ".join(bf["cases"])},
n in {{1, 3}}, the same kind of unbalanced starts):

| lr | runs where U rose | largest relative step of U | diverged |
|---|---|---|---|
{gd_rows}

Weight decay `(wd_W, wd_H)` on the flow (t up to 1e5, by which it has converged). For equal decays the decay terms cancel in dU/dt and the
proof carries over (module docs); for unequal ones nothing is claimed. A rise counts above 1e-9 of the start value
(U and V fall to the solver's noise, ~1e-20, as the flow converges; that noise is clamped at 1e-12):

| (wd_W, wd_H) | start | U rose in | largest U increase / U(0) | V rose in | largest V increase / V(0) |
|---|---|---|---|---|---|
{wd_rows}

## 3. Natural distances to NC need not be monotone for K >= 8 (SPEC 5)

Balanced K = 8, lam = {ea["k8_initial_lam"]}: `etf_angle` rises from {_e(ea["k8_angle_start"])} to
**{_e(ea["k8_angle_peak"])}** (rise {_e(ea["k8_angle_rise"])}, peak at t = {_e(ea["k8_peak_time"])}), then falls to
{_e(ea["k8_angle_end"])} by t = 1e12, while V never increases (largest step {_e(ea["k8_max_increase_V"])}).
For K = 4, {ea["k4_trajectories"]} balanced spectra over 6 decades: largest increase of `etf_angle`
**{_e(ea["k4_max_angle_increase"])}** (no rise). Figure: `{ea["figure"]}`.

## 4. Exponential slowdown (SPEC 5)

`time_to_margin` (event detection on the reduced flow, K = {sd["K"]}, lam0 = {sd["lam0"]}) against
`exp(gamma) / (2 gamma)`: the ratio is {sd["ratio_at_gamma_25"]:.4f} at gamma = 25 and
{sd["ratio_at_gamma_30"]:.4f} at gamma = 30, tending to 1 like 1 + 1/gamma; a least-squares fit of log t
against gamma - log(2 gamma) for gamma >= 10 has slope **{sd["fit_slope_gamma_ge_10"]:.4f}**. Figure: `{sd["figure"]}`.

## 5. A small random init behaves like the spectral dynamics (SPEC 5)

Dense UFM, K = {ri["K"]}, d = {ri["d"]}, Gaussian init std {ri["init_std"]}, {ri["steps"]} GD steps: the singular values
of the double-centred class-mean logits against the spectral dynamics started from the singular values
of W(0) and H(0) paired in order (as if the init were aligned). Coefficient of variation of those singular values: {_e(ri["initial_cv"])} at the start,
{_e(ri["final_cv_dense"])} (dense) vs {_e(ri["final_cv_spectral"])} (spectral) at the end. Figure: `{ri["figure"]}`.

## 6. CE vs MSE from the same spectral init (SPEC 3)

MSE modes decouple and settle at lam = 1 (max |lam - 1| at t = 1e12: {_e(cm["mse_max_abs_lam_minus_1_at_end"])});
CE modes grow without bound (smallest mode {_e(cm["ce_min_lam_at_t_1e6"])} at t = 1e6,
{_e(cm["ce_min_lam_at_end"])} at t = 1e12). Figure: `{cm["figure"]}`.
"""
    write_atomic(path, text)
