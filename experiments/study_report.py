"""``report.md`` of ``hadainit validate`` / ``hadainit real``: every sentence computed from ``report.json``'s numbers."""

from __future__ import annotations

import math


def _g(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def _fmt(s: dict | None, digits: int = 3, missing: str = "–") -> str:
    """mean ± std; ``missing`` names runs without a value ("never" for the epochs-to columns)."""
    if not s or s.get("mean") is None:
        return missing if s and s.get("missing") else "–"
    text = f"{s['mean']:.{digits}g}"
    if s.get("std") is not None:
        text += f" ± {s['std']:.2g}"
    if s.get("missing"):
        text += f" ({s['missing']} {missing if missing != '–' else 'missing'})"
    return text


def _table(report: dict, keys: list[tuple[str, str]], setups=None) -> list[str]:
    lines = ["| setup | init | wd | " + " | ".join(h for _, h in keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for group, values in sorted(report["groups"].items()):
        setup, init, wd = group.split("|")
        if setups is not None and setup not in setups:
            continue
        lines.append(f"| {setup} | {init} | {wd} | " + " | ".join(
            _fmt(values[k], missing="never" if k.startswith("epochs_to") else "–") for k, _ in keys) + " |")
    return lines


def _effect(c: dict) -> str:
    """A paired difference as text: log-loss endpoints as relative changes, the rest as differences."""
    if c["mean"] is None or c["low"] is None:
        return "–"
    if c["endpoint"].startswith("log_loss"):
        return (f"{100 * math.expm1(c['mean']):+.1f}% [{100 * math.expm1(c['low']):+.1f}, "
                f"{100 * math.expm1(c['high']):+.1f}]")
    return f"{c['mean']:+.3g} [{c['low']:+.3g}, {c['high']:+.3g}]"


def _variant_table(r: dict) -> list[str]:
    """The forecaster variants against the naive baseline over every scored run (median errors, wins)."""
    f = r["forecast"]
    variants = f.get("variants") or {}
    if not f["runs"] or not variants:
        return []
    lines = ["| forecaster fit | runs | beats baseline (spectrum) | beats baseline (margin) | median spectrum err | "
             "median margin err | median fitted power (runs at a bound of -1..2) |", "|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        lines.append(f"| {name} | {v['runs']} | {v['wins_spectrum']} | {v['wins_margin']} | "
                     f"{_g(v['median_spectrum_error'])} | {_g(v['median_margin_error'])} | "
                     + (f"{_g(v['median_power'])} ({v.get('power_at_bound', '–')})" if name.startswith("power")
                        else "1 (fixed)") + " |")
    lines.append(f"| naive baseline | {f['runs']} | – | – | {_g(f['median_spectrum_error']['baseline'])} | "
                 f"{_g(f['median_margin_error']['baseline'])} | – |")
    return lines


def best_variant(f: dict) -> tuple[str, dict] | None:
    """The forecaster variant with the smallest median held-out spectrum error (None when none scored)."""
    scored = [(n, v) for n, v in (f.get("variants") or {}).items() if v["median_spectrum_error"] is not None]
    return min(scored, key=lambda nv: nv[1]["median_spectrum_error"]) if scored else None


def _determinism_sentence(r: dict) -> str:
    d = r.get("determinism")
    cfg = r["config"]
    where = (f"{cfg.get('machine', '?')}, torch CPU capability {cfg.get('cpu_capability', '?')}, torch {cfg['torch']}, "
             f"1 thread")
    if not d:
        return "Measured: no rerun in this study (the check did not run)."
    if d["differ"] == 0:
        return (f"Measured: `{d['run']}` trained a second time in the same study ({where}) reproduced all "
                f"{d['values']} logged values bit for bit.")
    return (f"Measured: `{d['run']}` trained a second time in the same study ({where}): {d['differ']} of "
            f"{d['values']} logged values differ (largest relative difference {d['max_relative']:.2g}): the promise "
            "does not hold here.")


def _mde(c: dict) -> str:
    if c["mde"] is None:
        return "–"
    return f"{100 * math.expm1(c['mde']):.1f}%" if c["endpoint"].startswith("log_loss") else f"{c['mde']:.3g}"


def conclusions(r: dict) -> list[str]:
    """Plain statements, each computed from (and conditioned on) the numbers of the sections below."""
    out = []
    cfg = r["config"]
    ex = r["excluded"]
    out.append(f"- **Runs.** {cfg['runs'] - len(ex)} of {cfg['runs']} training runs are healthy; "
               + (f"{len(ex)} excluded from every summary ({'; '.join(_excluded(e) for e in ex)})." if ex else
                  "none diverged or stopped short of its planned epochs."))
    paired = [c for c in r["paired"] if c["p"] is not None]
    sig = [c for c in paired if c["significant"]]
    if not paired:
        out.append("- **Initialization.** fewer than two paired seeds: no init effect can be judged.")
    else:
        n_seeds = max(c["n"] for c in paired)
        text = (f"- **Initialization (paired by seed, {n_seeds} seeds, Holm over {len(paired)} comparisons at "
                f"{int(100 * 0.05)}% family-wise).** ")
        if sig:
            text += f"{len(sig)} differ from the default init: " + "; ".join(
                f"{c['arm']} on {c['setup']} (wd {c['weight_decay']:g}) {c['endpoint']} {_effect(c)}" for c in sig) + "."
        else:
            text += "none differs from the default init after the adjustment."
        unadj = sum(c["p"] < 0.05 for c in paired)
        text += f" Unadjusted, {unadj} of {len(paired)} have p < 0.05 (about {0.05 * len(paired):.1f} expected by chance)."
        from .measures import mde_range

        span = mde_range(paired, "log_loss@10")
        if span:
            lo, hi = span
            text += (f" The design detects (80% power, per comparison at 5%; complete comparisons, {lo['n']} seeds) a "
                     f"change of the epoch-10 training loss of {_mde(lo)} to {_mde(hi)}; the orthogonal and ETF heads "
                     "do not see Q (V is random), so these are effects of an orthogonal/ETF head, not of the paper's "
                     "spectral dynamics.")
        out.append(text)
    tl = r["twolayer"]
    if tl:
        out.append("- **Arms that see Q (two-layer linear head on real digits).** " + _twolayer_sentence(tl))
    fb = r["fullbatch"]
    if fb:
        out.append("- **Slowdown (full-batch GD, the loss-driving margins).** " + _fullbatch_sentence(next(iter(fb.values()))))
    mt = r["margins"]
    if mt:
        parts = []
        for key, per in sorted(mt.items()):
            nl = per.get("-log(train loss)", [])
            sp = per.get("spectral margin", [])
            if nl and sp:
                parts.append(f"{key.replace('|', ', wd ')}: -log(loss) {' / '.join(_g(x, 2) for x in nl)}, spectral "
                             f"margin {' / '.join(_g(x, 2) for x in sp)}")
        if parts:
            out.append("- **Slowdown (SGD runs, median slope per e-fold of epochs in successive one-e-fold windows of the "
                       "terminal phase).** " + "; ".join(parts) + ". The spectral margin is not the margin that drives "
                       "the loss: compare the loss-driving ones against the UFM law's ~1, and mind the windows' count.")
    v = r["V"]
    if v["runs"]:
        out.append(f"- **V.** V rose somewhere in {v['runs_with_a_rise']} of {v['runs']} healthy runs; its maximum is at "
                   f"median epoch {_g(v['median_peak_epoch'])}, before the terminal phase (median start epoch "
                   f"{_g(v['median_terminal_from'])}). In the terminal phase it rose in {v['runs_with_a_terminal_rise']} "
                   f"runs, by more than 1% in {v['runs_with_a_terminal_rise_above_1pct']} (largest terminal rise "
                   f"{_g(v['largest_terminal_rise'])} relative; largest early rise {_g(v['largest_early_rise'])}).")
        d = r["distances"]
        out.append(f"- **Natural distances.** From the first all-positive spectrum, etf_angle rose first in "
                   f"{d['etf_angle_rises_first']} of {d['runs_measured']} runs, the ETF gap of the means in "
                   f"{d['etf_gap_means_rises_first']}; within the terminal phase etf_angle rose more than 1% above its "
                   f"value at the phase's start in {d['etf_angle_terminal_rise_above_1pct']} runs (the ETF gap in "
                   f"{d['etf_gap_terminal_rise_above_1pct']}) and ended below it in {d['etf_angle_terminal_fell']}.")
    lk = r["leakage"]
    if lk["relabel_max"] is not None:
        out.append(f"- **Leakage.** Final logit_leakage spans {_g(lk['final_range'][0])}-{_g(lk['final_range'][1])} "
                   f"across runs, but 200 random relabellings of one final run move it over a median width of "
                   f"{_g(lk['relabel_width_median'])} (median min {_g(lk['relabel_min'])}, max {_g(lk['relabel_max'])}): "
                   "differences of final leakage between configurations are not interpretable. The label-order-free "
                   f"distance to collapse ends at a median {_g(lk['label_free_final'][0])} (0 at collapse).")
    f = r["forecast"]
    if f["runs"]:
        lost = f["runs"] - f["forecast_wins_spectrum"]
        verdict = ("loses to" if lost > f["runs"] / 2 else "beats")
        out.append(f"- **Forecast (started in the terminal phase).** The reduced flow with one fitted time scale "
                   f"{verdict} the naive baseline on the held-out spectrum in {max(lost, f['forecast_wins_spectrum'])} of "
                   f"{f['runs']} runs (median error {_g(f['median_spectrum_error']['forecast'])} vs "
                   f"{_g(f['median_spectrum_error']['baseline'])}) and on the margin in "
                   f"{f['runs'] - f['forecast_wins_margin'] if lost > f['runs'] / 2 else f['forecast_wins_margin']}"
                   + (": the real spectra keep their shape over the horizon while the flow pulls them toward the "
                      "collapsed (equal-mode) shape, so the exact dynamics do not forecast these runs." if lost >
                      f["runs"] / 2 else "."))
        best = best_variant(f)
        if best is not None:
            name, v = best
            base = f["median_spectrum_error"]["baseline"]
            wins = v["wins_spectrum"] > v["runs"] / 2
            out.append(f"- **Forecaster variants.** Of the four fits (time map linear or power law, shared or per-mode "
                       f"rates), {name} has the smallest median held-out spectrum error, {_g(v['median_spectrum_error'])} "
                       f"against the baseline's {_g(base)}; it beats the baseline in {v['wins_spectrum']} of {v['runs']} "
                       f"runs, so {'the forecaster, fitted this way, is the better forecast here' if wins else 'even the best fit loses to holding the shape'}"
                       + (f" (the measured normalized spectrum moves a median {_g(f['median_shape_change'])} over the "
                          "held-out window)." if f.get("median_shape_change") is not None else "."))
            power = [(n, v) for n, v in f["variants"].items() if n.startswith("power") and v["runs"]]
            if power and any(v.get("power_at_bound") for _, v in power):
                out.append("- **The power-law time map is not determined by these runs:** its fitted exponent sits at "
                           "an end of the allowed range -1..2 in " + " and ".join(
                               f"{v['power_at_bound']} of {v['runs']} runs ({n})" for n, v in power
                               if v.get("power_at_bound") is not None)
                           + ", so its gain over the linear map is a better-fitting curve, not a measured exponent.")
    nr = r["narrow"]
    narrow_groups = {g.split("|")[1]: v for g, v in r["groups"].items() if g.startswith("digits-narrow|")}
    if nr["available"] and narrow_groups:
        ts = nr.get("t_star", {})
        parts = []
        for init in ("auto", "first", "default"):
            v = narrow_groups.get(init)
            if v:
                star = ts.get(init, {}).get("value")
                parts.append(f"{init}: test acc {_fmt(v['val_acc'])}, normalized margin {_fmt(v['normalized_margin'])}"
                             + (f" (t* of its mode set {_g(star, 3)})" if star else ""))
        out.append(f"- **Narrow head (K = 10 > d = 5, {nr['healthy']} healthy runs).** " + "; ".join(parts)
                   + f". The simplex ETF's value 1/(K-1) = {1 / 9:.3g} is out of reach at d = 5; the paired rows of "
                   "section 2 say whether either mode set changes the loss or the accuracy.")
    if not nr["available"]:
        out.append("- **Narrow head (K = 10 > d = 5).** Skipped: the installed `hadamard_` has no `modes=` option "
                   "(the K > d initializer).")
    return out


def _excluded(e: dict) -> str:
    if "diverged" in e:
        return f"{e['name']}: diverged at epoch {e['diverged']['epoch']:g} ({e['diverged']['reason']})"
    t = e["truncated"]
    if not t["last_epoch"]:
        return f"{e['name']}: no epoch logged (not run, or stopped before its first epoch)"
    return f"{e['name']}: stopped after {t['last_epoch']:g} of {t['planned']} epochs"


def _twolayer_sentence(tl: dict) -> str:
    parts = []
    for k in sorted({v["K"] for v in tl.values()}):
        rows = {n: v for n, v in tl.items() if v["K"] == k and v["alpha_in"] + v["alpha_out"] >= 0 and "pixels" in
                v.get("source", "pixels")}
        zero = [v for v in rows.values() if v["alpha_in"] == 0 and v["alpha_out"] == 0]
        if not zero:
            continue
        z = zero[0]
        text = (f"K = {k} ({z['basis']}): at alpha = 0 the frozen vectors hold (max leakage "
                f"{_g(z['summary']['leakage_W_max'], 2)}; the spectrum equals the reduced dynamics to "
                f"{_g(z.get('reduced_max_rel_diff'), 2)} relative) and etf_angle rises "
                f"{_g(100 * (z['summary']['etf_angle']['relative_rise'] or 0), 2)}%")
        spread = []
        for v in sorted(rows.values(), key=lambda v: (v["alpha_in"], v["alpha_out"])):
            if v is z:
                continue
            s = v["summary"]
            spread.append(f"in {v['alpha_in']:g}/out {v['alpha_out']:g}: leakage {_g(s['leakage_W_max'], 2)}, "
                          f"etf_angle rise {_g(100 * (s['etf_angle']['relative_rise'] or 0), 2)}%")
        parts.append(text + ("; with spread " + ", ".join(spread) if spread else ""))
    pen = [v for v in tl.values() if v.get("source") == "penultimate"]
    text = ". ".join(parts)
    if pen:
        s = pen[0]["summary"]
        text += (f". On a trained MLP's penultimate features (the data-dependent spectral head) the leakage reaches "
                 f"{_g(s['leakage_W_max'], 2)}")
    out_only = [v for v in tl.values() if v["alpha_in"] == 0 and v["alpha_out"] > 0]
    if out_only:
        worst = max(v["summary"]["leakage_W_max"] for v in out_only)
        text += (f". Spread outside the span of the class means alone leaves the dynamics exact (max leakage "
                 f"{_g(worst, 2)}): its class-mean-zero inputs give the out-of-span weights zero gradient at a "
                 "spectral start; the spread inside the span is what breaks the frozen vectors")
    return text + "."


def _fullbatch_sentence(fb: dict) -> str:
    s = fb["summary"]
    if not s["terminal_from"]:
        return "the run never reached 100% training accuracy."
    parts = [f"{name}: {' / '.join(_g(w['slope'], 2) for w in ws)}" for name, ws in s["slopes"].items() if ws]
    return (f"{fb['steps']} steps (lr {fb['lr']:g}) give {s['efolds']:.2f} e-folds of time after 100% training "
            f"accuracy (t = {_g(s['terminal_from'])}); slope per e-fold in successive one-e-fold windows: "
            + "; ".join(parts) + ". The UFM law is about 1 per e-fold for the margin that drives the loss.")


def markdown(r: dict) -> str:
    cfg = r["config"]
    command = cfg.get("command", "validate")
    lines = [
        f"# hadainit {command}: the theory on real networks",
        "",
        f"{'Quick profile (`--quick`): small, for the tests; not the study. ' if cfg['quick'] and command == 'validate' else ''}"
        f"{'**Partial: the study was stopped before every run finished; the runs that did not are listed in section 1.** ' if not cfg.get('finished', True) else ''}"
        f"{cfg['runs']} training runs ({cfg['seeds']} seed{'s' if cfg['seeds'] != 1 else ''} per configuration, paired "
        f"across inits), {cfg['epochs']} epochs each, SGD momentum 0.9 at a constant learning rate, batch 128, measured "
        f"at {cfg['measured_epochs']} distinct log-spaced epochs and at initialization; one CPU thread per run, "
        f"{cfg.get('jobs') or '?'} at a time: {r['seconds']:.0f} s wall time ({r['run_seconds']:.0f} s of training runs, "
        f"{r['extra_seconds']:.0f} s of other experiments). Every number below is computed from `runs/*/*/metrics.csv` "
        "and `extra/*.json` by `hadainit.experiments.study`.",
        "",
        "Arms: `orthogonal` is `hadamard_` (rows Q V^T with V random; a random body cannot tell it from any orthogonal "
        "head), `etf` the same without the constant mode, `default` PyTorch's init. The arms that can see Q are the "
        "two-layer linear head (section 4) and the narrow head (section 8).",
        "",
        "## What carries over to real networks, and what does not",
        "",
        *conclusions(r),
        "",
        "## 1. Runs excluded from the summaries",
        "",
        ("None: every run reached its planned epochs without a divergence (training loss above 10x its running minimum "
         "or training accuracy 0.1 below its running maximum once that maximum reached 0.9)." if not r["excluded"] else
         "A divergence is the training loss above 10x its running minimum, a non-finite loss, or the training accuracy "
         "0.1 below its running maximum once that maximum reached 0.9 (not in the noisy early phase); a truncated run "
         "stopped before its planned epochs.\n\n"
         + "\n".join(f"- {_excluded(e)}" for e in r["excluded"])),
        "",
        "## 2. Paired init effects",
        "",
        "Per setup and weight decay, each init minus the default, paired by seed: log training loss (the probe's "
        "whole-training-set loss) at two epochs (shown as a relative change), `loss_area` (mean log loss over log "
        "epoch), final test accuracy. Mean [95% t interval], the minimal detectable effect (80% power, 5% two-sided, "
        "at the observed spread), p and the Holm-adjusted p over every row. Figure: `accuracy_nc1.png`.",
        "",
        "| setup | wd | arm | endpoint | n | difference [95% CI] | MDE | p | Holm p |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {c['setup']} | {c['weight_decay']:g} | {c['arm']} | {c['endpoint']} | {c['n']} | {_effect(c)} | {_mde(c)} | "
          f"{_g(c['p'], 2)} | {_g(c['p_holm'], 2)}{' *' if c['significant'] else ''} |" for c in r["paired"]],
        "",
        *_table(r, [("train_acc", "train acc"), ("val_acc", "test acc"), ("epochs_to_train_acc_1", "epochs to 100%"),
                    ("epochs_to_nc1", f"epochs to NC1 < {cfg['nc1_threshold']}"), ("nc1", "final NC1")]),
        "",
        "## 3. How far from the tractable regime? Leakage and a label-order-free distance",
        "",
        "`drift`: the residual of W from its initial singular structure (out of span(V0) in its own column); "
        "`logit_leakage`: the centred class-mean logits off-diagonal in the softmax basis, which in the fourier basis "
        "depends on the class order (min and max over 200 random relabellings of each run's final logits); "
        "`label-free`: `||Z_c/||Z_c|| - P/||P|| ||_F`, 0 at collapse and the same for every class order. "
        "Figure: `drift.png`.",
        "",
        *_table(r, [("drift", "drift"), ("drift_out_of_span", "out of span"), ("logit_leakage", "final leakage"),
                    ("leak_relabel.min", "relabelled min"), ("leak_relabel.max", "relabelled max"),
                    ("label_free_distance_init", "label-free at init"), ("label_free_distance", "final label-free")]),
        "",
        *_twolayer_section(r),
        *_slowdown_section(r),
        "## 6. V and the natural distances: early transient vs terminal phase",
        "",
        "The terminal phase starts at 100% training accuracy (at least a tenth of the run; else the second half). "
        "Largest relative rise of V between measurements before and within it, and the largest rise of etf_angle "
        "and of the ETF gap of the means above their value at the phase's start. Figures: `lyapunov.png`, "
        "`distances.png`.",
        "",
        *_table(r, [("V_early.largest_relative", "V: largest early rise"), ("V_terminal.count", "V: terminal rises"),
                    ("V_terminal.largest_relative", "V: largest terminal rise"),
                    ("etf_angle_terminal.max_rise", "etf_angle: terminal rise"),
                    ("etf_gap_terminal.max_rise", "ETF gap: terminal rise"), ("terminal_efolds", "terminal e-folds")]),
        "",
        "## 7. The forecaster, started in the terminal phase, against the naive baseline",
        "",
        "The reduced flow (balanced start at the first terminal-phase spectrum, one fitted time scale) fitted up to "
        "the geometric middle of the terminal phase, scored on the rest; the baseline holds the spectrum's shape and "
        "extrapolates the margin linearly in log(epoch). Four fits of the forecaster are scored on the same runs: "
        "time map linear in epochs or a fitted power law (`time_map=\"power\"`), one shared rate or one per mode "
        "(`rates=\"per_mode\"`) (docs/theory.md §7). The per-setup table is the linear/shared fit; the variant table "
        "below it counts, over all scored runs, where each variant beats the baseline. Figure: `forecast.png`.",
        "",
        *_table(r, [("forecast.forecast.spectrum", "forecast spectrum err"), ("forecast.baseline.spectrum",
                                                                              "baseline spectrum err"),
                    ("forecast.forecast.margin", "forecast margin err"), ("forecast.baseline.margin",
                                                                          "baseline margin err")]),
        "",
        *_variant_table(r),
        "",
        *_narrow_section(r),
        "## 9. Determinism",
        "",
        "What the study promises: every run uses one thread and seeds its body, head and batch order from its seed, "
        "so on one machine (the same CPU instruction set, one thread per run, the same torch and library versions) a "
        "rerun reproduces every `metrics.csv` bit for bit. " + _determinism_sentence(r) + " Across CPUs it "
        "does not: PyTorch and MKL pick different float32 kernels by instruction set (AVX-512 vs AVX2; "
        "`ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2` on an AVX-512 machine changes every setup's values in "
        "the last digits), and training amplifies the difference; the digits MLP keeps the printed digits, the CNN "
        "and mnist1d runs (longer, noisier trajectories) do not. The data are fixed (digits ship with scikit-learn; "
        "mnist1d is generated from its package's fixed seed).",
        "",
    ]
    return "\n".join(lines)


def _twolayer_section(r: dict) -> list[str]:
    tl = r["twolayer"]
    if not tl:
        return []
    lines = ["## 4. Arms that see Q: a two-layer linear head on real digits, time map known",
             "",
             "`logits = W2 W1 x`, balanced spectral start (W2 = Q diag(a) V^T, W1 = V diag(b) Q^T on the class codes), "
             "full-batch GD on the mean cross-entropy in float64, time = lr x steps, nothing fitted. Inputs: the class "
             "code plus alpha_in x each sample's real deviation inside the span of the class means and alpha_out x the "
             "part outside it (scaled by the RMS norm of the means); `spread` is the RMS size of each part at alpha = 1 "
             "(the codes have norm 1). alpha = 0 is the UFM with one sample per class, exactly. Slopes: per e-fold of "
             "time over the last three e-folds. Figure: `twolayer.png`.",
             "",
             "| configuration | samples | spread in / out | max leakage W2 | final logit_leakage | etf_angle start -> peak (time) -> end | -log(loss) per e-fold | soft-min margin per e-fold | spectral margin per e-fold | reduced-dynamics match |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in sorted(tl.items(), key=lambda p: (p[1]["K"], p[0])):
        s = v["summary"]
        a = s["etf_angle"]
        slopes = {k: " / ".join(_g(w["slope"], 2) for w in ws) or "–" for k, ws in s["slopes"].items()}
        lines.append(f"| {name} | {v['samples']} | {_g(v['spread']['in_span'], 2)} / {_g(v['spread']['out_of_span'], 2)} | "
                     f"{_g(s['leakage_W_max'], 2)} | {_g(s['logit_leakage_final'], 2)} | {_g(a.get('start'))} -> "
                     f"{_g((a.get('start') or 0) * (1 + (a.get('relative_rise') or 0)))} ({_g(a.get('peak_time'), 2)}) -> "
                     f"{_g(a.get('end'))} | {slopes['neg_log_loss']} | {slopes['margin_softmin']} | "
                     f"{slopes['spectral_margin']} | {_g(v.get('reduced_max_rel_diff'), 2)} |"
                     + (" diverged |" if s["diverged"] else ""))
    return lines + [""]


def _slowdown_section(r: dict) -> list[str]:
    lines = ["## 5. The slowdown on the margins that drive the loss", ""]
    for name, fb in r["fullbatch"].items():
        s = fb["summary"]
        lines += [f"Full-batch GD on the digits MLP (`{name}`: {fb['steps']} steps, lr {fb['lr']:g}, no momentum, no "
                  f"weight decay, {fb['seconds']:.0f} s): 100% training accuracy at t = {_g(s['terminal_from'])}, then "
                  f"{_g(s['efolds'])} e-folds of time. Slope per e-fold of time in successive one-e-fold windows from "
                  "there (the UFM law: gamma/(gamma - 1), about 1, for the margin that drives the loss). Figure: "
                  "`slowdown.png`.", "",
                  "| margin | " + " | ".join(f"window {k + 1}" for k in range(max((len(w) for w in s["slopes"].values()),
                                                                                    default=0))) + " |",
                  "|---|" + "---|" * max((len(w) for w in s["slopes"].values()), default=0)]
        for key, ws in s["slopes"].items():
            lines.append(f"| {key} | " + " | ".join(_g(w["slope"], 3) for w in ws) + " |")
        lines.append("")
    if r["margins"]:
        lines += ["SGD runs: median over healthy runs (all inits) of the slope per e-fold of epochs in successive "
                  "one-e-fold windows of the terminal phase (the terminal phases are short: count the windows). "
                  "Figure: `margins.png`.", "",
                  "| setup, wd | margin | windows |", "|---|---|---|"]
        for key, per in sorted(r["margins"].items()):
            for name, ws in per.items():
                lines.append(f"| {key.replace('|', ', wd ')} | {name} | {' / '.join(_g(x, 3) for x in ws)} |")
        lines.append("")
    return lines


def _narrow_section(r: dict) -> list[str]:
    nr = r["narrow"]
    lines = ["## 8. Narrow head: K = 10 classes on a 5-wide penultimate layer", ""]
    if not nr["available"]:
        return lines + ["Skipped: the installed `hadainit.hadamard_` has no `modes=` option (the K > d initializer, "
                        "docs/theory.md §8); `hadainit.experiments.narrow` holds the setup, and the study runs it where "
                        "the option exists.", ""]
    ts = nr.get("t_star", {})
    stars = "; ".join(f"`{k}`: t* = {_g(v.get('value'), 4)}" + (f" (modes {v['modes']})" if v.get("modes") else "")
                      + (f" ({v['error']})" if v.get("error") else "") for k, v in ts.items())
    return lines + ["The digits MLP with hidden widths (128, 5), last layer `hadamard_(w, modes=\"auto\")`, "
                    "`modes=\"first\"` (the Hoffer truncation) or the default init, weight decay 5e-4, the seeds of the "
                    "study. `normalized margin`: the smallest class-mean margin over trace(P Z P), which the spectral "
                    f"flow from a mode set S takes to t*(S) (docs/theory.md §8). Max-margin values: {stars}.", "",
                    *_table(r, [("train_acc", "train acc"), ("val_acc", "test acc"), ("normalized_margin",
                                                                                     "final normalized margin"),
                                ("drift", "drift"), ("logit_leakage", "final leakage"),
                                ("label_free_distance", "final label-free")], setups={"digits-narrow"}), ""]


def readme_section(r: dict) -> str:
    """The README's table and conclusions, from the same numbers as ``report.md`` (pasted by hand after a rerun)."""
    paired = {(c["setup"], f"{c['weight_decay']:g}", c["arm"], c["endpoint"]): c for c in r["paired"]}
    lines = ["| setup | wd | init | test acc | epochs to 100% train | train loss at epoch 10 vs default [95% CI] | "
             "final logit_leakage | final label-free distance | V: largest terminal rise |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group, v in sorted(r["groups"].items()):
        setup, init, wd = group.split("|")
        c = paired.get((setup, wd, init, "log_loss@10"))
        lines.append(f"| {setup} | {wd} | {init} | {_fmt(v['val_acc'])} | {_fmt(v['epochs_to_train_acc_1'], missing='never')} | "
                     f"{_effect(c) + (' *' if c['significant'] else '') if c else '(reference)'} | {_fmt(v['logit_leakage'])} | "
                     f"{_fmt(v['label_free_distance'])} | {_fmt(v['V_terminal.largest_relative'])} |")
    return "\n".join(lines + ["", "What carries over, and what does not (from `report.md`):", "", *conclusions(r)])
