"""The analysis of ``hadainit validate``: every number from the runs' ``metrics.csv``, then report and figures.

Per run (a table of per-epoch rows, :func:`hadainit.experiments.runs.read_metrics`), the
functions below compute one quantity each; :func:`analyze` aggregates them over seeds
(mean, sample std, n) and decides "beyond seed noise" as a difference of means larger
than twice its standard error.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from hadainit.callbacks.plotting import epoch_axis, label, new_figure, save
from hadainit.ufm.forecast import evaluate_forecast

from .runs import read_metrics, series, write_atomic

NC = "nc_eval/"
SP = "spectral_eval/"
NC1_THRESHOLD = 1.0  # digits networks get below it within the runs; mnist1d ones do not
RISE_TOL = 1e-9  # relative: rises smaller than round-off are not rises
RISE_MIN = 0.01  # relative: an initial rise of a distance counts from 1% above its start


# ------------------------------------------------------------ per-run values
def final(table: list[dict], key: str) -> float | None:
    _, values = series(table, key)
    return values[-1] if values else None


def first_epoch(table: list[dict], key: str, test) -> float | None:
    """The first epochs-completed at which ``test(value)`` holds (None if never)."""
    for epoch, value in zip(*series(table, key)):
        if epoch > 0 and test(value):
            return epoch
    return None


def rises(table: list[dict], key: str, start: float = 0.0) -> dict:
    """Increases of ``key`` between consecutive measurements from ``start`` on: how many, the first
    one's epoch, the largest relative rise and where it happened."""
    epochs, values = series(table, key)
    pairs = [(e, v) for e, v in zip(epochs, values) if e >= start]
    steps = [(pairs[i][0], (pairs[i][1] - pairs[i - 1][1]) / abs(pairs[i - 1][1]))
             for i in range(1, len(pairs)) if pairs[i - 1][1] != 0]
    up = [(e, r) for e, r in steps if r > RISE_TOL]
    biggest = max(up, key=lambda p: p[1]) if up else (None, 0.0)
    return {"count": len(up), "steps": len(steps), "first_epoch": up[0][0] if up else None,
            "largest_relative": biggest[1], "largest_at": biggest[0]}


def first_positive_epoch(table: list[dict]) -> float | None:
    """The first measurement whose logit modes are all positive (the spectral picture applies from there)."""
    return first_epoch(table, SP + "lam_min", lambda v: v > 0)


def initial_rise(table: list[dict], key: str) -> dict:
    """Does ``key`` first rise, from the first all-positive measurement on, before it falls?

    "Rises first": the first step goes up (by more than round-off), the series later peaks at least
    ``RISE_MIN`` (relative) above its start, and it ends below that peak. A series that first falls
    and rises later does not count.
    """
    start = first_positive_epoch(table)
    epochs, values = series(table, key)
    pairs = [(e, v) for e, v in zip(epochs, values) if start is not None and e >= start]
    if len(pairs) < 3 or pairs[0][1] == 0:
        return {"rises_first": None, "relative_rise": None, "peak_epoch": None}
    v0 = pairs[0][1]
    peak_epoch, peak = max(pairs[1:], key=lambda p: p[1])
    rose = (pairs[1][1] > v0 * (1 + RISE_TOL) and (peak - v0) / abs(v0) > RISE_MIN and pairs[-1][1] < peak)
    return {"rises_first": rose, "relative_rise": (peak - v0) / abs(v0) if rose else None,
            "peak_epoch": peak_epoch if rose else None}


def slowdown(table: list[dict], epochs: int) -> dict:
    """``hadainit slowdown``'s slope of the spectral margin over the terminal phase (:func:`terminal_start`)."""
    from .slowdown import slowdown as fit_slope, terminal_start

    start = terminal_start(table, epochs)
    try:
        fitted = fit_slope(table, SP + "spectral_margin", min_epoch=start)
    except ValueError:
        return {"slope": None, "ufm_slope": None, "from_epoch": start}
    return {"slope": fitted["slope_per_efold"], "ufm_slope": fitted["ufm_slope_per_efold"], "from_epoch": start}


def spectra(table: list[dict]) -> tuple[list[float], list[list[float]]]:
    """The logged modes ``lam_1 .. lam_(K-1)`` per measurement."""
    names = sorted({k for row in table for k in row if k.startswith(SP + "lam_") and k[len(SP) + 4:].isdigit()},
                   key=lambda k: int(k[len(SP) + 4:]))
    rows = [r for r in table if all(n in r for n in names)]
    return [r["epochs_done"] for r in rows], [[r[n] for n in names] for r in rows]


def forecast(table: list[dict], epochs: int) -> dict:
    """Fit on the first third of the run, score on the rest (forecast and naive baseline)."""
    e, lam = spectra(table)
    try:
        result = evaluate_forecast(e, lam, fit_until=epochs / 3)
    except (ValueError, RuntimeError) as err:
        return {"error": str(err)}
    return {k: result[k] for k in ("time_scale", "epoch0", "fit_error", "forecast", "baseline")}


def run_values(table: list[dict], epochs: int) -> dict:
    """Everything the report needs from one run."""
    init = table[0] if table and table[0]["epoch"] == -1 else {}
    return {
        "train_acc": final(table, "train/acc"),
        "val_acc": final(table, "val/acc"),
        "epochs_to_train_acc_1": first_epoch(table, "train/acc", lambda v: v >= 1.0),
        "epochs_to_nc1": first_epoch(table, NC + "nc1", lambda v: v < NC1_THRESHOLD),
        "nc1": final(table, NC + "nc1"),
        "drift": final(table, SP + "drift"),
        "drift_offdiag": final(table, SP + "drift_offdiag"),
        "drift_out_of_span": final(table, SP + "drift_out_of_span"),
        "logit_leakage_init": init.get(SP + "logit_leakage"),
        "logit_leakage": final(table, SP + "logit_leakage"),
        "V_rises": rises(table, SP + "kl_lyapunov"),
        "V_modes_rises": rises(table, SP + "kl_lyapunov_modes", start=first_positive_epoch(table) or 0.0),
        "etf_angle": initial_rise(table, SP + "etf_angle"),
        "etf_gap_means": initial_rise(table, NC + "etf_gap_means"),
        "slowdown": slowdown(table, epochs),
        "forecast": forecast(table, epochs),
    }


# -------------------------------------------------------------- aggregation
def summary(values: list) -> dict:
    """mean, sample std and n of the numbers among ``values`` (None counts as missing)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs), "missing": len(values) - len(xs)}


#: The level of each init-vs-default comparison (two-sided Welch t-test over the seeds).
ALPHA = 0.05


def beyond_noise(a: dict, b: dict) -> dict:
    """Difference of means a - b, its standard error from the seed spread, and whether it is significant at
    :data:`ALPHA` by Welch's t-test (Welch-Satterthwaite degrees of freedom: with 2-3 seeds the threshold is
    3-4 standard errors, not the normal 2)."""
    from scipy.stats import t as student_t

    if a["mean"] is None or b["mean"] is None or a["std"] is None or b["std"] is None:
        return {"diff": None, "se": None, "threshold": None, "df": None, "beyond_noise": None}
    diff = a["mean"] - b["mean"]
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    se = math.sqrt(va + vb)
    if se == 0:  # no spread on either side (ties on the measurement grid): the test is undefined, not counted
        return {"diff": diff, "se": 0.0, "threshold": None, "df": None, "beyond_noise": None}
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    threshold = float(student_t.ppf(1 - ALPHA / 2, df)) * se
    return {"diff": diff, "se": se, "threshold": threshold, "df": df, "beyond_noise": abs(diff) > threshold}


def _get(values: dict, path: str):
    for part in path.split("."):
        values = None if values is None else values.get(part)
    return values


GROUP_KEYS = ("train_acc", "val_acc", "epochs_to_train_acc_1", "epochs_to_nc1", "nc1", "drift", "drift_offdiag",
              "drift_out_of_span", "logit_leakage_init", "logit_leakage", "V_rises.count", "slowdown.slope",
              "slowdown.ufm_slope", "forecast.forecast.spectrum", "forecast.baseline.spectrum",
              "forecast.forecast.margin", "forecast.baseline.margin")


def analyze(out: Path, specs: list[dict], *, quick: bool, seconds: float, command: str = "validate") -> dict:
    out = Path(out)
    runs = []
    for spec in specs:
        table = read_metrics(out / "runs" / spec["name"] / "metrics.csv")
        runs.append({**spec, "values": run_values(table, spec["epochs"]), "table": table})
    groups: dict[str, dict] = {}
    for run in runs:
        key = f"{run['setup']}|{run['init']}|{run['weight_decay']:g}"
        groups.setdefault(key, []).append(run)
    aggregated = {key: {k: summary([_get(r["values"], k) for r in members]) for k in GROUP_KEYS}
                  for key, members in groups.items()}
    comparisons = {}
    for key in aggregated:
        setup, init, wd = key.split("|")
        if init != "default" and f"{setup}|default|{wd}" in aggregated:
            ref = aggregated[f"{setup}|default|{wd}"]
            comparisons[key] = {k: beyond_noise(aggregated[key][k], ref[k])
                                for k in ("train_acc", "val_acc", "epochs_to_train_acc_1", "epochs_to_nc1")}
    v_runs = [r["values"]["V_rises"] for r in runs]
    angle = [r["values"]["etf_angle"] for r in runs]
    gap = [r["values"]["etf_gap_means"] for r in runs]
    fc = [r["values"]["forecast"] for r in runs if "forecast" in r["values"]["forecast"]]
    report = {
        "config": {"command": command, "quick": quick, "runs": len(runs), "epochs": runs[0]["epochs"] if runs else None,
                   "seeds": len({r["seed"] for r in runs}), "nc1_threshold": NC1_THRESHOLD,
                   "torch": torch.__version__, "threads_per_run": 1},
        "seconds": seconds,
        "run_seconds": sum(r["seconds"] for r in runs),
        "groups": aggregated,
        "comparisons_to_default": comparisons,
        "V": {"runs_with_a_rise": sum(v["count"] > 0 for v in v_runs), "runs": len(v_runs),
              "largest_relative_rise": max((v["largest_relative"] for v in v_runs), default=None),
              "median_fraction_of_steps_rising": statistics.median([v["count"] / v["steps"] for v in v_runs
                                                                   if v["steps"]]) if v_runs else None,
              "median_first_rise_epoch": statistics.median([v["first_epoch"] for v in v_runs
                                                            if v["first_epoch"] is not None] or [math.nan])},
        "distances": {
            "etf_angle_rises_first": sum(a["rises_first"] is True for a in angle),
            "etf_gap_means_rises_first": sum(g["rises_first"] is True for g in gap),
            "runs_measured": sum(a["rises_first"] is not None for a in angle),
            "etf_angle_median_rise": statistics.median([a["relative_rise"] for a in angle if a["rises_first"]]
                                                       or [math.nan]),
        },
        "forecast": {
            "runs": len(fc),
            "forecast_wins_spectrum": sum(f["forecast"]["spectrum"] < f["baseline"]["spectrum"] for f in fc),
            "forecast_wins_margin": sum(f["forecast"]["margin"] < f["baseline"]["margin"] for f in fc),
            "median_spectrum_error": {n: statistics.median([f[n]["spectrum"] for f in fc]) if fc else None
                                      for n in ("forecast", "baseline")},
            "median_margin_error": {n: statistics.median([f[n]["margin"] for f in fc]) if fc else None
                                    for n in ("forecast", "baseline")},
        },
        "runs": [{k: v for k, v in r.items() if k != "table"} for r in runs],
    }
    figures = _figures(out, runs)
    report["figures"] = figures
    write_atomic(out / "report.json", json.dumps(report, indent=2, default=lambda x: None))
    write_atomic(out / "report.md", _markdown(report))
    return report


# ------------------------------------------------------------------ figures
COLOURS = {"hadamard": "tab:blue", "etf": "tab:green", "default": "tab:red"}


def _band(ax, runs: list[dict], key: str) -> list[float]:
    """Mean over seeds per init, with a min-max band; returns the x values drawn."""
    drawn = []
    for init in COLOURS:
        members = [r for r in runs if r["init"] == init]
        curves = [dict(zip(*series(r["table"], key))) for r in members]
        xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not xs:
            continue
        mean = [statistics.fmean(c[x] for c in curves) for x in xs]
        ax.plot(xs, mean, "-", color=COLOURS[init], lw=1.2, label=init)
        ax.fill_between(xs, [min(c[x] for c in curves) for x in xs], [max(c[x] for c in curves) for x in xs],
                        color=COLOURS[init], alpha=0.2)
        drawn += xs
    return drawn


def _slowdown_overlay(ax, members: list[dict], key: str) -> None:
    """On the spectral-margin panels: each init's least-squares line over the terminal window (fitted to its
    mean curve) and the UFM law's slope through the end of the last one (dashed)."""
    from hadainit.ufm.forecast import log_epoch_slope

    if key != SP + "spectral_margin":
        return
    end = None
    ufm = [r["values"]["slowdown"]["ufm_slope"] for r in members if r["values"]["slowdown"]["ufm_slope"]]
    for init in COLOURS:
        curves = [dict(zip(*series(r["table"], key))) for r in members if r["init"] == init]
        starts = [r["values"]["slowdown"]["from_epoch"] for r in members if r["init"] == init]
        xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        xs = [x for x in xs if starts and x >= statistics.median(starts) and x > 0]
        if len(xs) < 2:
            continue
        mean = [statistics.fmean(c[x] for c in curves) for x in xs]
        slope, intercept = log_epoch_slope(xs, mean)
        ax.plot(xs, [slope * math.log(x) + intercept for x in xs], ":", color=COLOURS[init], lw=1.5,
                label=f"{init} fit: {slope:.2g} per e-fold")
        end = (xs, mean[-1])
    if end is not None:
        xs, last = end
        law = statistics.median(ufm) if ufm else 1.0
        ax.plot(xs, [last + law * math.log(x / xs[-1]) for x in xs], "k--", lw=1,
                label=f"UFM law: {law:.2g} per e-fold")


def _grid(out: Path, runs: list[dict], rows: list[tuple[str, str, bool]], name: str, title: str, wd: float,
          overlay=None) -> str:
    setups = sorted({r["setup"] for r in runs})
    fig, axes = new_figure(len(setups), 4.2, 3.0, nrows=len(rows))
    for j, setup in enumerate(setups):
        members = [r for r in runs if r["setup"] == setup and r["weight_decay"] == wd]
        for i, (key, ylabel, logy) in enumerate(rows):
            ax = axes[i * len(setups) + j]
            xs = _band(ax, members, key)
            if overlay is not None:
                overlay(ax, members, key)
            epoch_axis(ax, xs)
            label(ax, ax.get_xlabel(), ylabel, logy=logy, legend=(i == 0 and j == 0) or overlay is not None)
            if i == 0:
                ax.set_title(setup, fontsize=9)
    return save(fig, out / name, f"{title} (weight decay {wd:g}; mean over seeds, band: min-max)")


def _figures(out: Path, runs: list[dict]) -> list[str]:
    wd = max(r["weight_decay"] for r in runs)
    names = [
        _grid(out, runs, [("train/acc", "train accuracy", False), ("val/acc", "test accuracy", False),
                          (NC + "nc1", "NC1", True)], "accuracy_nc1.png", "Accuracy and NC1 by last-layer init", wd),
        _grid(out, runs, [(SP + "drift", "drift of W", False), (SP + "drift_out_of_span", "drift out of span(V0)", False),
                          (SP + "logit_leakage", "logit_leakage", False)], "drift.png",
              "Distance from the tractable regime", wd),
        _grid(out, runs, [(SP + "kl_lyapunov", "V (singular values of Z_c)", True),
                          (SP + "kl_lyapunov_modes", "V(lam)", True)], "lyapunov.png", "The KL Lyapunov value", wd),
        _grid(out, runs, [(SP + "etf_angle", "etf_angle(lam)", True), (NC + "etf_gap_means", "ETF gap of the means", True)],
              "distances.png", "Natural distances to neural collapse", wd),
        _grid(out, runs, [(SP + "spectral_margin", "spectral margin", False), (SP + "margin_mean", "mean sample margin",
                                                                               False)],
              "slowdown.png", "Margin against log(epoch), terminal-phase fits", min(r["weight_decay"] for r in runs),
              overlay=_slowdown_overlay),
    ]
    fig, (ax,) = new_figure(1, 5.5, 4.5)
    markers = dict(zip(sorted({r["setup"] for r in runs}), "o^sDv"))
    shown = set()
    for r in runs:
        f = r["values"]["forecast"]
        if "forecast" in f:
            tag = f"{r['init']}, {r['setup']}"
            ax.scatter(f["baseline"]["spectrum"], f["forecast"]["spectrum"], s=14, color=COLOURS[r["init"]],
                       marker=markers[r["setup"]], label=None if tag in shown else tag)
            shown.add(tag)
    lo, hi = ax.get_xlim()
    lo2, hi2 = ax.get_ylim()
    lim = (min(lo, lo2), max(hi, hi2))
    ax.plot(lim, lim, "k--", lw=0.8, label="equal error (above: the baseline wins)")
    label(ax, "naive baseline: held-out spectrum error", "forecaster: held-out spectrum error", logx=True, logy=True)
    ax.legend(fontsize=6, loc="best")
    names.append(save(fig, out / "forecast.png", "Held-out forecast error per run (colour: init; marker: setup)"))
    return names


# ----------------------------------------------------------------- markdown
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


def _table(report: dict, keys: list[tuple[str, str]]) -> list[str]:
    lines = ["| setup | init | wd | " + " | ".join(h for _, h in keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for group, values in sorted(report["groups"].items()):
        setup, init, wd = group.split("|")
        lines.append(f"| {setup} | {init} | {wd} | " + " | ".join(
            _fmt(values[k], missing="never" if k.startswith("epochs_to") else "–") for k, _ in keys) + " |")
    return lines


def _range(r: dict, key: str, wd: str | None = None) -> tuple[float, float]:
    means = [v[key]["mean"] for g, v in r["groups"].items() if v[key]["mean"] is not None
             and (wd is None or g.split("|")[2] == wd)]
    return (min(means), max(means)) if means else (math.nan, math.nan)


def _conclusions(r: dict) -> list[str]:
    """Plain statements, each computed from (and conditioned on) the numbers of the sections below."""
    cmp = [c for group in r["comparisons_to_default"].values() for c in group.values() if c["beyond_noise"] is not None]
    beyond = sum(c["beyond_noise"] for c in cmp)
    if not cmp:
        init = "one seed per configuration: differences cannot be judged against seed noise (run `hadainit validate`)."
    else:
        # under no effect each comparison is significant with probability ALPHA; the comparisons share the
        # default runs, so they are not independent: the binomial tail is a guide, not a test
        n = len(cmp)
        tail = sum(math.comb(n, j) * ALPHA**j * (1 - ALPHA) ** (n - j) for j in range(beyond, n + 1))
        caveat = "binomial; the comparisons share the default runs, so this is a guide, not a test"
        chance = (f"about {n * ALPHA:.1f} would be expected by chance alone ({caveat})" if beyond == 0 else
                  f"about {n * ALPHA:.1f} are expected by chance alone (probability of {beyond} or more: {tail:.2f}, "
                  f"{caveat})")
        if tail > 0.05:
            init = (f"{beyond} of {n} init-vs-default comparisons of accuracy and speed of collapse are significant "
                    f"at the 5% level (Welch t-test over the seeds); {chance}: the Hadamard and ETF last-layer inits "
                    "neither help nor hurt these networks measurably.")
        else:
            init = (f"{beyond} of {n} init-vs-default comparisons are significant at the 5% level (Welch t-test over "
                    f"the seeds), more than chance gives; {chance}. See section 1 for which and in which direction.")
    drift, out = _range(r, "drift"), _range(r, "drift_out_of_span")
    leak0, leak = _range(r, "logit_leakage_init"), _range(r, "logit_leakage")
    if leak[0] > 0.1 and drift[0] > 0.1:
        regime = ("W leaves its initial singular structure in every configuration (final drift "
                  f"{drift[0]:.2f}-{drift[1]:.2f}; out of span(V0) {out[0]:.2f}-{out[1]:.2f}) and the class-mean logits "
                  f"stay far from diagonal in the softmax basis (logit_leakage {leak0[0]:.2f}-{leak0[1]:.2f} at init, "
                  f"{leak[0]:.2f}-{leak[1]:.2f} at the end) for every init: the networks never enter the regime where the "
                  "exact dynamics hold, and the Hadamard init does not put them there.")
    else:
        regime = (f"final drift {drift[0]:.2f}-{drift[1]:.2f}, final logit_leakage {leak[0]:.2f}-{leak[1]:.2f} "
                  "(section 2).")
    v, d, f = r["V"], r["distances"], r["forecast"]
    rise = (f"V rose in {v['runs_with_a_rise']} of {v['runs']} runs (median first rise after epoch "
            f"{v['median_first_rise_epoch']:.3g}, largest single rise {v['largest_relative_rise']:.3g} relative)"
            + (": on these networks it is a diagnostic, not a Lyapunov function." if v["runs_with_a_rise"] else
               ": it decreased monotonically here."))
    n, a = d["runs_measured"], d["etf_angle_rises_first"]
    seen = "in every run" if a == n else "in none" if a == 0 else "in some runs only"
    distances = (f"etf_angle rose first in {a} of {n} runs and the ETF gap of the class means in "
                 f"{d['etf_gap_means_rises_first']}: the initial rise of a natural distance is seen {seen}.")
    slopes = []
    for wd in sorted({g.split("|")[2] for g in r["groups"]}, key=float):
        lo, hi = _range(r, "slowdown.slope", wd)
        if math.isnan(lo):
            continue
        text = f"weight decay {wd}: {lo:.2g} to {hi:.2g} per e-fold of epochs"
        if float(wd) == 0 and lo > 2:
            text += " (several times the UFM law's ~1: these networks slow down less than the two-layer model)"
        elif float(wd) > 0 and abs(lo) < 1 and abs(hi) < 1:
            text += " (the margin saturates under weight decay)"
        elif float(wd) > 0 and hi < 0:
            text += " (under weight decay the margin shrinks over the terminal phase: no slowdown law applies)"
        slopes.append(text)
    wins = f["forecast_wins_spectrum"]
    if not f["runs"]:
        forecast = "no run had enough positive spectra to fit."
    elif wins < f["runs"] / 2:
        lost = f["runs"] - wins
        forecast = (f"the exact reduced flow with one fitted time scale loses to the naive baseline on the held-out "
                    f"spectrum in {'all ' if wins == 0 else ''}{lost} of {f['runs']} runs (and on the margin in "
                    f"{f['runs'] - f['forecast_wins_margin']}): the real spectra change shape less than the flow "
                    "predicts (the baseline, which holds the shape, has the lower error), so the exact dynamics do "
                    "not forecast these runs.")
    else:
        forecast = (f"the reduced flow beats the naive baseline on the held-out spectrum in {wins} of {f['runs']} runs "
                    f"and on the margin in {f['forecast_wins_margin']}.")
    return [f"- **Initialization.** {init}", f"- **The tractable regime.** {regime}", f"- **V.** {rise}",
            f"- **Natural distances.** {distances}",
            "- **Slowdown (spectral margin against log-epoch).** " + ("; ".join(slopes) + "." if slopes else
                                                                      "no run reached a terminal phase to fit."),
            f"- **Forecast.** {forecast}"]


def _markdown(r: dict) -> str:
    cfg = r["config"]
    noise = []
    for group, cmp in sorted(r["comparisons_to_default"].items()):
        setup, init, wd = group.split("|")
        for key, c in cmp.items():
            if c["beyond_noise"]:
                noise.append(f"{init} vs default on {setup} (wd {wd}): {key} differs by {c['diff']:.3g} "
                             f"(5% threshold {c['threshold']:.2g} = t x SE, SE {c['se']:.2g})")
    judged = any(c["beyond_noise"] is not None for g in r["comparisons_to_default"].values() for c in g.values())
    v, d, f = r["V"], r["distances"], r["forecast"]
    fm, fb = f["median_spectrum_error"], f["median_margin_error"]
    lines = [
        f"# hadainit {cfg.get('command', 'validate')}: the theory on real networks",
        "",
        f"{'Quick run (`--quick`). ' if cfg['quick'] and cfg.get('command', 'validate') == 'validate' else ''}"
        f"{cfg['runs']} runs ({cfg['seeds']} seed{'s' if cfg['seeds'] != 1 else ''} per configuration), "
        f"{cfg['epochs']} epochs each, SGD momentum 0.9 at a constant learning rate, batch 128, one CPU thread per run; "
        f"{r['seconds']:.0f} s wall time ({r['run_seconds']:.0f} s of runs). Mean ± sample std over seeds; "
        "every number below is computed from the runs' `runs/*/*/metrics.csv` by `hadainit.experiments.study`.",
        "",
        "## What carries over to real networks, and what does not",
        "",
        *_conclusions(r),
        "",
        "## 1. Does the Hadamard init change accuracy or the speed of collapse?",
        "",
        f"Epochs to 100% training accuracy and to NC1 < {cfg['nc1_threshold']} (\"never\": not within the run). "
        "Figure: `accuracy_nc1.png`.",
        "",
        *_table(r, [("train_acc", "train acc"), ("val_acc", "test acc"), ("epochs_to_train_acc_1", "epochs to 100%"),
                    ("epochs_to_nc1", f"epochs to NC1 < {cfg['nc1_threshold']}"), ("nc1", "final NC1")]),
        "",
        ("One seed per configuration: differences from the default init cannot be judged against seed noise."
         if not judged else
         ("Differences from the default init significant at the 5% level (Welch t-test over the seeds): "
          + "; ".join(noise) + ".") if noise else
         "No difference from the default init in accuracy or in speed of collapse is significant at the 5% level "
         "(Welch t-test over the seeds)."),
        "",
        "## 2. How far do W and the class-mean logits move from the tractable regime?",
        "",
        "`drift` is the full residual of W from its initial singular structure, split into the in-span off-diagonal "
        "part and the part out of span(V0); `logit_leakage` is how far the centred class-mean logits are from "
        "diagonal in the softmax basis (0 in the spectral UFM and at exact collapse). Figure: `drift.png`.",
        "",
        *_table(r, [("drift", "drift"), ("drift_offdiag", "in-span offdiag"), ("drift_out_of_span", "out of span"),
                    ("logit_leakage_init", "logit_leakage at init"), ("logit_leakage", "final logit_leakage")]),
        "",
        "## 3. Is V monotone on real networks?",
        "",
        f"V (KL of the singular values of the centred class-mean logits) rose between consecutive epochs in "
        f"**{v['runs_with_a_rise']} of {v['runs']} runs**; median fraction of epochs with a rise "
        f"{v['median_fraction_of_steps_rising']:.3g}, median epoch of the first rise {v['median_first_rise_epoch']:.3g}, "
        f"largest single rise {v['largest_relative_rise']:.3g} (relative). In the spectral UFM V never rises along "
        "balanced flows; on these networks it is a diagnostic, not a Lyapunov function. Figure: `lyapunov.png`.",
        "",
        "## 4. Do the natural distances to NC first rise (K = 10)?",
        "",
        f"From the first measurement with every logit mode positive, a distance \"rises first\" when its first step "
        f"goes up, it peaks at least 1% above its start and ends below the peak: `etf_angle` did in "
        f"**{d['etf_angle_rises_first']} of {d['runs_measured']} runs** (median rise {d['etf_angle_median_rise']:.3g}, "
        f"relative), the ETF gap of the class means in {d['etf_gap_means_rises_first']}. Figure: `distances.png`.",
        "",
        "## 5. The slowdown: margin against log(epoch)",
        "",
        "Least-squares slope of the spectral margin against log(epochs) over the terminal phase (from 100% training "
        "accuracy, at least a tenth of the run; else the second half), against the UFM law "
        "`t(gamma) ~ e^gamma / (2 gamma)`: gamma/(gamma - 1), about 1 per e-fold of time (the law is for gradient "
        "flow without weight decay). Figure: `slowdown.png` (the smallest weight decay).",
        "",
        *_table(r, [("slowdown.slope", "slope per e-fold"), ("slowdown.ufm_slope", "UFM law at the final margin")]),
        "",
        "## 6. The forecaster against the naive baseline",
        "",
        "The reduced flow fitted (one time scale) on the first third of each run's spectra, scored on the rest; the "
        "baseline holds the spectrum's shape and extrapolates the margin linearly in log(epoch). Figure: `forecast.png`.",
        "",
        f"Runs scored: {f['runs']}. Median held-out spectrum error: forecast {fm['forecast']:.3g}, baseline "
        f"{fm['baseline']:.3g}; median margin error: forecast {fb['forecast']:.3g}, baseline {fb['baseline']:.3g}. "
        f"The forecast beats the baseline on the spectrum in {f['forecast_wins_spectrum']} runs and on the margin in "
        f"{f['forecast_wins_margin']}." if f["runs"] else "No run had enough positive spectra to fit.",
        "",
        *_table(r, [("forecast.forecast.spectrum", "forecast spectrum err"), ("forecast.baseline.spectrum",
                                                                              "baseline spectrum err"),
                    ("forecast.forecast.margin", "forecast margin err"), ("forecast.baseline.margin",
                                                                          "baseline margin err")]),
        "",
    ]
    return "\n".join(lines)
