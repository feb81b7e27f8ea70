"""The analysis of ``hadainit validate``: every number from the runs' ``metrics.csv`` and ``extra/*.json``.

Per run (a table of per-epoch rows, :func:`hadainit.experiments.runs.read_metrics`), the functions below
compute one quantity each. Runs that were cut short of their planned epochs (killed, crashed) or that
diverged (:func:`hadainit.experiments.measures.divergence`) are flagged, named in the report and left out
of every summary. Init effects are paired by seed (the arms share the body init and the batch order):
the difference per seed of continuous endpoints, a t confidence interval, its p-value, the Holm
adjustment over all comparisons of the study, and the minimal detectable effect of the design.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import platform
import statistics
from pathlib import Path

import torch

from hadainit.ufm.forecast import evaluate_forecast

from .keys import NC_EVAL, PROBE, SPECTRAL_EVAL, TRAIN_ACC, VAL_ACC
from .figures import label, log_epoch_axis, log_ticks, new_figure, positive, save
from .measures import divergence, efold_slopes, holm, mde_range, paired_difference, truncation
from .runs import read_metrics, series, write_atomic

NC, SP, PR = NC_EVAL, SPECTRAL_EVAL, PROBE
NC1_THRESHOLD = 1.0  # digits networks get below it within the runs; mnist1d ones do not
RISE_TOL = 1e-9  # relative: rises smaller than round-off are not rises
RISE_MIN = 0.01  # relative: an initial rise of a distance counts from 1% above its start
ALPHA = 0.05  # family-wise level of the paired comparisons (Holm)
POWER = 0.8  # the power at which the minimal detectable effect is stated
#: the margins whose growth per e-fold the UFM law speaks of (the loss-driving ones first)
MARGIN_KEYS = {"-log(train loss)": PR + "neg_log_loss", "soft-min sample margin": PR + "margin_softmin",
               "smallest sample margin": PR + "margin_min", "spectral margin": SP + "spectral_margin"}


# ------------------------------------------------------------ per-run values
def final(table: list[dict], key: str) -> float | None:
    _, values = series(table, key)
    return values[-1] if values else None


def at_epoch(table: list[dict], key: str, epoch: float) -> tuple[float | None, float | None]:
    """(the measured epoch nearest to ``epoch`` (> 0), the value there)."""
    pts = [(e, v) for e, v in zip(*series(table, key)) if e > 0]
    if not pts:
        return None, None
    return min(pts, key=lambda p: (abs(math.log(p[0] / epoch)), p[0]))


def first_epoch(table: list[dict], key: str, test) -> float | None:
    """The first epochs-completed at which ``test(value)`` holds (None if never)."""
    for epoch, value in zip(*series(table, key)):
        if epoch > 0 and test(value):
            return epoch
    return None


def rises(table: list[dict], key: str, start: float = 0.0, end: float = math.inf) -> dict:
    """Increases of ``key`` between consecutive measurements in [start, end]: how many, the first one's epoch,
    the largest relative rise and where it happened."""
    epochs, values = series(table, key)
    pairs = [(e, v) for e, v in zip(epochs, values) if start <= e <= end]
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
    """Does ``key`` first rise, from the first all-positive measurement on, before it falls? (first step up by
    more than round-off, a peak at least ``RISE_MIN`` above the start, an end below the peak)."""
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


def phase_change(table: list[dict], key: str, start: float, end: float = math.inf) -> dict:
    """``key`` over the epochs in [start, end]: its first and last value, and its largest rise above the first
    (relative): does a distance grow within the phase?"""
    pts = [(e, v) for e, v in zip(*series(table, key)) if start <= e <= end and math.isfinite(v)]
    if len(pts) < 2 or pts[0][1] == 0:
        return {"first": None, "last": None, "max_rise": None, "points": len(pts)}
    v0 = pts[0][1]
    return {"first": v0, "last": pts[-1][1], "max_rise": max(v for _, v in pts) / v0 - 1, "points": len(pts)}


def terminal_start(table: list[dict], epochs: int) -> float:
    from .slowdown import terminal_start as start

    return start(table, epochs)


def slowdown(table: list[dict], epochs: int) -> dict:
    """``hadainit slowdown``'s slope of the spectral margin over the terminal phase (:func:`terminal_start`)."""
    from .slowdown import slowdown as fit_slope

    start = terminal_start(table, epochs)
    try:
        fitted = fit_slope(table, SP + "spectral_margin", min_epoch=start)
    except ValueError:
        return {"slope": None, "ufm_slope": None, "from_epoch": start}
    return {"slope": fitted["slope_per_efold"], "ufm_slope": fitted["ufm_slope_per_efold"], "from_epoch": start}


def margin_slopes(table: list[dict], start: float) -> dict:
    """Per margin of :data:`MARGIN_KEYS`: slopes per e-fold of epochs in successive one-e-fold windows from
    ``start`` (the terminal phase), and the slope over the whole terminal phase."""
    from hadainit.ufm.forecast import log_epoch_slope

    out = {}
    for name, key in MARGIN_KEYS.items():
        e, v = series(table, key)
        pts = [(x, y) for x, y in zip(e, v) if x >= start and x > 0]
        try:
            whole = log_epoch_slope([x for x, _ in pts], [y for _, y in pts])[0] if len(pts) >= 3 else None
        except ValueError:
            whole = None
        out[name] = {"windows": efold_slopes(e, v, start) if start > 0 else [], "terminal": whole}
    return out


def spectra(table: list[dict]) -> tuple[list[float], list[list[float]]]:
    """The logged modes ``lam_1 .. lam_(K-1)`` per measurement."""
    names = sorted({k for row in table for k in row if k.startswith(SP + "lam_") and k[len(SP) + 4:].isdigit()},
                   key=lambda k: int(k[len(SP) + 4:]))
    rows = [r for r in table if all(n in r for n in names)]
    return [r["epochs_done"] for r in rows], [[r[n] for n in names] for r in rows]


def forecast(table: list[dict], epochs: int, start: float = 0.0) -> dict:
    """The reduced flow (one fitted time scale) against the naive baseline on the spectra from ``start`` (the
    terminal phase), fitted up to the geometric middle of the window and scored on the rest."""
    e, lam = spectra(table)
    keep = [i for i, x in enumerate(e) if x >= start and x > 0]
    # the fits are the analysis's whole cost (ODE solves in a least-squares loop): memoized in-process on
    # the window's values, so re-analysing a study (--analyze-only after a change) refits only changed runs
    return copy.deepcopy(_forecast_window(tuple(e[i] for i in keep), tuple(tuple(lam[i]) for i in keep), start))


@functools.lru_cache(maxsize=512)
def _forecast_window(e: tuple, lam: tuple, start: float) -> dict:
    e, lam = list(e), [list(row) for row in lam]
    if len(e) < 5:
        return {"error": f"{len(e)} measured epochs from {start:g}: too few to fit and score"}
    fit_until = math.sqrt(e[0] * e[-1])
    try:
        result = evaluate_forecast(e, lam, fit_until=fit_until)
    except (ValueError, RuntimeError) as err:
        return {"error": str(err)}
    variants = {}
    for time_map, rates in FORECAST_VARIANTS:
        try:
            v = result if (time_map, rates) == ("linear", "shared") else \
                evaluate_forecast(e, lam, fit_until=fit_until, time_map=time_map, rates=rates)
        except (ValueError, RuntimeError) as err:
            variants[f"{time_map}/{rates}"] = {"error": str(err)}
            continue
        variants[f"{time_map}/{rates}"] = {"spectrum": v["forecast"]["spectrum"], "margin": v["forecast"]["margin"],
                                           "power": v["power"], "fit_error": v["fit_error"]}
    return {**{k: result[k] for k in ("time_scale", "epoch0", "fit_error", "forecast", "baseline")},
            "fit_until": fit_until, "from_epoch": e[0], "variants": variants,
            "shape_change": shape_change(e, lam, fit_until)}


#: The forecaster's fits compared in the study (docs/theory.md §7), beside the default linear/shared one.
FORECAST_VARIANTS = (("linear", "shared"), ("linear", "per_mode"), ("power", "shared"), ("power", "per_mode"))


def shape_change(epochs: list[float], lam: list[list[float]], fit_until: float) -> float | None:
    """How far the measured spectrum's shape moves over the held-out window: ``||s_end - s_fit||`` of the
    normalized spectra ``s = lam / ||lam||`` at the last fitted and the last held-out epoch (0: the shape
    is kept, which the naive baseline assumes; the flow moves it toward the equal-mode collapse)."""
    fit = [i for i, x in enumerate(epochs) if x <= fit_until]
    if not fit or fit[-1] == len(epochs) - 1:
        return None
    a, b = lam[fit[-1]], lam[-1]
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return None
    return math.sqrt(sum((x / nb - y / na) ** 2 for x, y in zip(b, a)))


def loss_area(table: list[dict], key: str = PR + "loss") -> float | None:
    """The mean of log(loss) over log(epoch) from the first measured epoch to the last (trapezoid rule): the
    area under the loss curve on the figure's axes, per unit of log-epoch."""
    pts = [(math.log(e), math.log(v)) for e, v in zip(*series(table, key)) if e > 0 and v > 0]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def endpoints(table: list[dict], epochs: int) -> dict:
    """The continuous endpoints of the paired comparisons: log training loss at epoch 10 and at a quarter of the
    run (the probe's whole-set loss), the loss area, the final test accuracy."""
    out = {}
    for target in (10, 50):
        epoch, value = at_epoch(table, PR + "loss", min(target, epochs))
        name = f"log_loss@{epoch:g}" if epoch else f"log_loss@{target}"
        if name not in out:  # a short run: both targets at its last epoch
            out[name] = math.log(value) if value else None
    out["loss_area"] = loss_area(table)
    out["test_acc"] = final(table, VAL_ACC)
    return out


def run_values(table: list[dict], epochs: int) -> dict:
    """Everything the report needs from one run."""
    init = table[0] if table and table[0]["epoch"] == -1 else {}
    start = terminal_start(table, epochs)
    return {
        "train_acc": final(table, TRAIN_ACC),
        "val_acc": final(table, VAL_ACC),
        "epochs_to_train_acc_1": first_epoch(table, TRAIN_ACC, lambda v: v >= 1.0),
        "epochs_to_nc1": first_epoch(table, NC + "nc1", lambda v: v < NC1_THRESHOLD),
        "nc1": final(table, NC + "nc1"),
        "drift": final(table, SP + "drift"),
        "drift_offdiag": final(table, SP + "drift_offdiag"),
        "drift_out_of_span": final(table, SP + "drift_out_of_span"),
        "logit_leakage_init": init.get(SP + "logit_leakage"),
        "logit_leakage": final(table, SP + "logit_leakage"),
        "label_free_distance_init": init.get(PR + "label_free_distance"),
        "label_free_distance": final(table, PR + "label_free_distance"),
        "normalized_margin": final(table, PR + "normalized_margin"),
        "leak_relabel": {k: final(table, PR + f"leak_relabel_{k}") for k in ("min", "median", "max")},
        "V_rises": rises(table, SP + "kl_lyapunov"),
        "V_modes_rises": rises(table, SP + "kl_lyapunov_modes", start=first_positive_epoch(table) or 0.0),
        "terminal_from": start,
        "terminal_efolds": math.log(epochs / start) if start > 0 else None,
        "V_terminal": rises(table, SP + "kl_lyapunov", start=start),
        "V_early": rises(table, SP + "kl_lyapunov", end=start),
        "V_peak_epoch": max(zip(*series(table, SP + "kl_lyapunov")), key=lambda p: p[1], default=(None, None))[0],
        "etf_angle": initial_rise(table, SP + "etf_angle"),
        "etf_gap_means": initial_rise(table, NC + "etf_gap_means"),
        "etf_angle_terminal": phase_change(table, SP + "etf_angle", start),
        "etf_gap_terminal": phase_change(table, NC + "etf_gap_means", start),
        "slowdown": slowdown(table, epochs),
        "margins": margin_slopes(table, start),
        "forecast": forecast(table, epochs, start),
        "endpoints": endpoints(table, epochs),
    }


def health(table: list[dict], epochs: int) -> dict:
    """``truncated`` (short of the planned epochs) and ``diverged`` flags of one run (None: fine)."""
    return {"truncated": truncation(table, epochs), "diverged": divergence(table)}


# -------------------------------------------------------------- aggregation
def summary(values: list) -> dict:
    """mean, sample std and n of the numbers among ``values`` (None counts as missing)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs), "missing": len(values) - len(xs)}


def _get(values: dict, path: str):
    for part in path.split("."):
        values = None if values is None else values.get(part)
    return values


GROUP_KEYS = ("train_acc", "val_acc", "epochs_to_train_acc_1", "epochs_to_nc1", "nc1", "drift", "drift_offdiag",
              "drift_out_of_span", "logit_leakage_init", "logit_leakage", "label_free_distance_init",
              "label_free_distance", "normalized_margin", "leak_relabel.min", "leak_relabel.max", "V_rises.count", "V_terminal.count",
              "V_terminal.largest_relative", "V_early.largest_relative", "etf_angle_terminal.max_rise",
              "etf_gap_terminal.max_rise", "etf_angle_terminal.last", "slowdown.slope", "slowdown.ufm_slope",
              "terminal_efolds", "forecast.forecast.spectrum", "forecast.baseline.spectrum",
              "forecast.forecast.margin", "forecast.baseline.margin")


def forecast_variants(fc: list[dict]) -> dict:
    """Per forecaster variant (``time_map/rates``), over the runs it scored: the runs where it beats the naive
    baseline on the held-out spectrum and margin, its median errors, and the median fitted power."""
    out = {}
    for time_map, rates in FORECAST_VARIANTS:
        name = f"{time_map}/{rates}"
        scored = [(f["variants"][name], f["baseline"]) for f in fc
                  if "spectrum" in f.get("variants", {}).get(name, {})]
        out[name] = {
            "runs": len(scored),
            "wins_spectrum": sum(v["spectrum"] < b["spectrum"] for v, b in scored),
            "wins_margin": sum(v["margin"] < b["margin"] for v, b in scored),
            "median_spectrum_error": _median([v["spectrum"] for v, _ in scored]),
            "median_margin_error": _median([v["margin"] for v, _ in scored]),
            "median_power": _median([v["power"] for v, _ in scored if v["power"] is not None]),
            # a fitted exponent at an end of fit_forecast's default power_range (-1, 2) is not determined by the data
            "power_at_bound": sum(v["power"] is not None and min(abs(v["power"] + 1), abs(v["power"] - 2)) < 1e-6
                                  for v, _ in scored),
        }
    return out


def paired_comparisons(runs: list[dict]) -> list[dict]:
    """Each arm against the reference arm of its setup and weight decay (``default``), paired by seed over the
    healthy runs of both, per endpoint; Holm-adjusted over the whole list. Log-loss endpoints are differences
    of logs (``exp(d) - 1`` is the relative change)."""
    by = {(r["setup"], r["weight_decay"], r["init"], r["seed"]): r for r in runs if r["healthy"]}
    all_seeds = {r["seed"] for r in runs}  # the study's seeds (every setup runs all of them)
    out = []
    for setup, wd in sorted({(r["setup"], r["weight_decay"]) for r in runs}):
        arms = sorted({r["init"] for r in runs if r["setup"] == setup and r["weight_decay"] == wd} - {"default"})
        seeds = sorted({r["seed"] for r in runs if r["setup"] == setup and r["weight_decay"] == wd})
        for arm in arms:
            pairs = [(by[(setup, wd, arm, s)], by[(setup, wd, "default", s)]) for s in seeds
                     if (setup, wd, arm, s) in by and (setup, wd, "default", s) in by]
            if not pairs:
                continue
            for key in pairs[0][0]["values"]["endpoints"]:
                a = [p[0]["values"]["endpoints"].get(key) for p in pairs]
                b = [p[1]["values"]["endpoints"].get(key) for p in pairs]
                diff = paired_difference(a, b, ALPHA, POWER)
                # complete: both arms present, healthy and measured at every seed of the study
                complete = diff["n"] == len(all_seeds)
                out.append({"setup": setup, "weight_decay": wd, "arm": arm, "reference": "default", "endpoint": key,
                            **diff, "complete": complete})
    for c, p in zip(out, holm([c["p"] for c in out])):
        c["p_holm"] = p
        c["significant"] = None if p is None else p < ALPHA
    return out


def _median(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def margin_table(runs: list[dict]) -> dict:
    """Per setup and weight decay: the median (over healthy runs) slope per e-fold of each margin in each
    one-e-fold window of the terminal phase (window k: from e^k to e^(k+1) times the terminal start)."""
    out: dict[str, dict] = {}
    for r in runs:
        if not r["healthy"]:
            continue
        key = f"{r['setup']}|{r['weight_decay']:g}"
        for name, m in r["values"]["margins"].items():
            for k, w in enumerate(m["windows"]):
                out.setdefault(key, {}).setdefault(name, {}).setdefault(k, []).append(w["slope"])
    return {key: {name: [_median(ws[k]) for k in sorted(ws)] for name, ws in per.items()} for key, per in out.items()}


def load_extra(out: Path, extra: list[dict]) -> dict:
    """The extra experiments' results (``extra/NAME.json``), by name; a missing file is reported, not fatal."""
    found = {}
    for e in extra:
        path = out / "extra" / f"{e['name']}.json"
        if path.is_file():
            found[e["name"]] = json.loads(path.read_text())
    return found


def rerun_identity(first: Path, second: Path) -> dict:
    """Compare two ``metrics.csv`` of the same run (the study's determinism check): the values measured, how
    many differ at all (bit for bit, as printed by Lightning's CSV logger) and the largest relative difference.
    Timing columns are not values of the run and are skipped."""
    a, b = read_metrics(first), read_metrics(second)
    skip = ("epoch", "epochs_done")  # the row keys, not values

    def values(table):
        return {(r["epochs_done"], k): v for r in table for k, v in r.items() if "time" not in k and k not in skip}

    va, vb = values(a), values(b)
    keys = sorted(set(va) | set(vb), key=str)
    differ = [k for k in keys if k not in va or k not in vb or not (va[k] == vb[k] or (va[k] != va[k] and vb[k] != vb[k]))]
    rel = max((abs(va[k] - vb[k]) / max(abs(va[k]), abs(vb[k]), 1e-300) for k in differ if k in va and k in vb
               and math.isfinite(va[k]) and math.isfinite(vb[k])), default=0.0)
    return {"values": len(keys), "differ": len(differ), "max_relative": rel}


def analyze(out: Path, specs: list[dict], *, quick: bool, seconds: float, command: str = "validate",
            extra: list[dict] | None = None, jobs: int | None = None, finished: bool = True,
            figures: bool = True) -> dict:
    """Read every run back, flag and exclude the unhealthy ones (short of their planned epochs, diverged, or
    without a ``metrics.csv``), aggregate, compare, write report and figures."""
    if not specs:
        raise ValueError("no runs to analyze (runs.json lists none)")
    out = Path(out)
    runs = []
    for spec in specs:
        path = out / "runs" / spec["name"] / "metrics.csv"
        table = read_metrics(path) if path.is_file() else []
        flags = health(table, spec["epochs"])
        runs.append({**spec, "values": run_values(table, spec["epochs"]) if table else None, "table": table,
                     "health": flags, "healthy": flags["truncated"] is None and flags["diverged"] is None})
    excluded = [{"name": r["name"], **({"truncated": r["health"]["truncated"]} if r["health"]["truncated"] else {}),
                 **({"diverged": r["health"]["diverged"]} if r["health"]["diverged"] else {})}
                for r in runs if not r["healthy"]]
    healthy = [r for r in runs if r["healthy"]]
    if not healthy:
        raise ValueError(f"none of the {len(runs)} runs finished healthy: nothing to summarize")
    groups: dict[str, list] = {}
    for run in healthy:
        groups.setdefault(f"{run['setup']}|{run['init']}|{run['weight_decay']:g}", []).append(run)
    aggregated = {key: {k: summary([_get(r["values"], k) for r in members]) for k in GROUP_KEYS}
                  for key, members in groups.items()}
    comparisons = paired_comparisons(runs)
    results = load_extra(out, extra or [])
    rerun = next((res for res in results.values() if res.get("kind") == "rerun"), None)
    determinism = None
    if rerun is not None:
        first, second = (root / "runs" / rerun["run"] / "metrics.csv" for root in (out, out / "rerun"))
        if first.is_file() and second.is_file():
            determinism = {"run": rerun["run"], **rerun_identity(first, second)}
    v_runs = [r["values"] for r in healthy]
    fc = [r["values"]["forecast"] for r in healthy if "forecast" in r["values"]["forecast"]]
    report = {
        "config": {"command": command, "quick": quick, "runs": len(runs), "epochs": runs[0]["epochs"], "finished": finished,
                   "seeds": len({r["seed"] for r in runs}), "nc1_threshold": NC1_THRESHOLD,
                   "torch": torch.__version__, "threads_per_run": 1, "jobs": jobs,
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
                   "measured_epochs": len({r["epochs_done"] for r in healthy[0]["table"] if r["epochs_done"] > 0
                                           and SP + "drift" in r})},
        "seconds": seconds,
        "run_seconds": sum(r["seconds"] for r in runs),
        "extra_seconds": sum(e["seconds"] for e in (extra or [])),
        "excluded": excluded,
        "groups": aggregated,
        "paired": comparisons,
        "determinism": determinism,
        "margins": margin_table(runs),
        "V": {"runs": len(v_runs), "runs_with_a_rise": sum(v["V_rises"]["count"] > 0 for v in v_runs),
              "runs_with_a_terminal_rise": sum(v["V_terminal"]["count"] > 0 for v in v_runs),
              "runs_with_a_terminal_rise_above_1pct": sum(v["V_terminal"]["largest_relative"] > 0.01 for v in v_runs),
              "largest_terminal_rise": max((v["V_terminal"]["largest_relative"] for v in v_runs), default=None),
              "largest_early_rise": max((v["V_early"]["largest_relative"] for v in v_runs), default=None),
              "median_peak_epoch": _median([v["V_peak_epoch"] for v in v_runs]),
              "median_terminal_from": _median([v["terminal_from"] for v in v_runs])},
        "distances": {
            "runs_measured": sum(v["etf_angle"]["rises_first"] is not None for v in v_runs),
            "etf_angle_rises_first": sum(v["etf_angle"]["rises_first"] is True for v in v_runs),
            "etf_gap_means_rises_first": sum(v["etf_gap_means"]["rises_first"] is True for v in v_runs),
            "etf_angle_terminal_rise_above_1pct": sum((v["etf_angle_terminal"]["max_rise"] or 0) > 0.01 for v in v_runs),
            "etf_gap_terminal_rise_above_1pct": sum((v["etf_gap_terminal"]["max_rise"] or 0) > 0.01 for v in v_runs),
            "etf_angle_terminal_fell": sum(v["etf_angle_terminal"]["last"] is not None and
                                           v["etf_angle_terminal"]["last"] < v["etf_angle_terminal"]["first"]
                                           for v in v_runs),
        },
        "leakage": {
            "label_free_final": [_median([v["label_free_distance"] for v in v_runs])],
            "relabel_min": _median([v["leak_relabel"]["min"] for v in v_runs]),
            "relabel_max": _median([v["leak_relabel"]["max"] for v in v_runs]),
            "relabel_width_median": _median([(v["leak_relabel"]["max"] or math.nan) - (v["leak_relabel"]["min"] or 0)
                                             for v in v_runs if v["leak_relabel"]["max"] is not None]),
            "final_range": [min((v["logit_leakage"] for v in v_runs if v["logit_leakage"] is not None), default=None),
                            max((v["logit_leakage"] for v in v_runs if v["logit_leakage"] is not None), default=None)],
        },
        "forecast": {
            "runs": len(fc),
            "forecast_wins_spectrum": sum(f["forecast"]["spectrum"] < f["baseline"]["spectrum"] for f in fc),
            "forecast_wins_margin": sum(f["forecast"]["margin"] < f["baseline"]["margin"] for f in fc),
            "median_spectrum_error": {n: _median([f[n]["spectrum"] for f in fc]) for n in ("forecast", "baseline")},
            "median_margin_error": {n: _median([f[n]["margin"] for f in fc]) for n in ("forecast", "baseline")},
            "not_scored": len(healthy) - len(fc),
            "variants": forecast_variants(fc),
            "median_shape_change": _median([f.get("shape_change") for f in fc if f.get("shape_change") is not None]),
        },
        "twolayer": {name: {k: v for k, v in res.items() if k != "rows"} for name, res in results.items()
                     if res.get("kind") == "twolayer"},
        "fullbatch": {name: {k: v for k, v in res.items() if k != "rows"} for name, res in results.items()
                      if res.get("kind") == "fullbatch"},
        "narrow": _narrow(runs),
        "runs": [{k: v for k, v in r.items() if k != "table"} for r in runs],
    }
    report["config"]["seeds"] = len({r["seed"] for r in healthy})
    report["figures"] = _figures(out, runs, results) if figures else []  # figures=False: the report only
    write_atomic(out / "report.json", json.dumps(report, indent=2, default=lambda x: None))
    from .study_report import markdown

    write_atomic(out / "report.md", markdown(report))
    return report


def _narrow(runs: list[dict]) -> dict:
    from .narrow import NARROW, kd_available

    members = [r for r in runs if r["setup"] == NARROW]
    out = {"available": kd_available(), "runs": len(members), "healthy": sum(r["healthy"] for r in members),
           "t_star": {}}
    if out["available"]:
        from hadainit.modes import max_margin, resolve_modes

        from .narrow import NARROW_WIDTH

        for choice in ("auto", "first"):  # the max-margin LP value of the mode set hadamard_ uses (K = 10 > d)
            try:
                modes = [int(m) for m in resolve_modes(choice, 10, NARROW_WIDTH, "fourier") if int(m) != 0]
                out["t_star"][choice] = {"modes": modes, "value": max_margin(modes, 10, "fourier").value}
            except ValueError as err:  # e.g. a truncation that cannot separate the classes
                out["t_star"][choice] = {"modes": None, "value": None, "error": str(err)}
        out["t_star"]["etf"] = {"value": 1.0 / 9}
    return out


# ------------------------------------------------------------------ figures
COLOURS = {"orthogonal": "tab:blue", "etf": "tab:green", "default": "tab:red", "auto": "tab:purple",
           "first": "tab:orange", "hadamard": "tab:blue"}


def _band(ax, runs: list[dict], key: str) -> int:
    """Per init: the mean over seeds (epochs > 0, on a log axis), with a min-max band; returns the seed count."""
    seeds = 0
    for init in COLOURS:
        members = [r for r in runs if r["init"] == init]
        curves = [dict(zip(*positive(*series(r["table"], key)))) for r in members]
        xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not xs:
            continue
        seeds = max(seeds, len(curves))
        mean = [statistics.fmean(c[x] for c in curves) for x in xs]
        ax.plot(xs, mean, "-", color=COLOURS[init], lw=1.2, label=init)
        if len(curves) > 1:
            ax.fill_between(xs, [min(c[x] for c in curves) for x in xs], [max(c[x] for c in curves) for x in xs],
                            color=COLOURS[init], alpha=0.2)
    return seeds


def _init_legend(fig, axes) -> None:
    """One legend for the whole grid, below the panels (no panel's curves hidden): every init drawn in any
    panel, in :data:`COLOURS` order (the narrow head's mode sets ``auto`` / ``first`` included)."""
    handles = {}
    for ax in axes:
        for h, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, h)
    names = [n for n in COLOURS if n in handles]
    if names:
        fig.legend([handles[n] for n in names], [_INIT_LABEL.get(n, n) for n in names], loc="outside lower center",
                   ncol=len(names) if fig.get_size_inches()[0] >= 1.8 * len(names) else math.ceil(len(names) / 2),
                   fontsize=8, frameon=False)


_INIT_LABEL = {"auto": "auto (narrow head)", "first": "first (narrow head)"}


def _grid(out: Path, runs: list[dict], rows: list[tuple[str, str, bool]], name: str, title: str, wd: float) -> str:
    setups = sorted({r["setup"] for r in runs})
    fig, axes = new_figure(len(setups), 2.7, 2.2, nrows=len(rows))
    seeds = 0
    for j, setup in enumerate(setups):
        members = [r for r in runs if r["setup"] == setup and r["weight_decay"] == wd]
        for i, (key, ylabel, logy) in enumerate(rows):
            ax = axes[i * len(setups) + j]
            seeds = max(seeds, _band(ax, members, key))
            log_epoch_axis(ax, "epochs (log scale)")
            label(ax, ax.get_xlabel(), ylabel, logy=logy, legend=False)
            if logy:
                log_ticks(ax.yaxis)
            if i == 0:
                ax.set_title(setup, fontsize=9)
    _init_legend(fig, axes)
    what = "mean over seeds, band: min-max over seeds" if seeds > 1 else "one seed per init"
    return save(fig, out / name, f"{title} (weight decay {wd:g}; {what}; healthy runs)")


def _figures(out: Path, runs: list[dict], results: dict) -> list[str]:
    runs = [r for r in runs if r["healthy"]]
    if not runs:
        return []
    wd = max(r["weight_decay"] for r in runs)
    names = [
        _grid(out, runs, [(TRAIN_ACC, "train accuracy", False), (VAL_ACC, "test accuracy", False),
                          (NC + "nc1", "NC1", True)], "accuracy_nc1.png", "Accuracy and NC1 by last-layer init", wd),
        _grid(out, runs, [(SP + "drift", "drift of W", False), (SP + "logit_leakage", "logit_leakage", False),
                          (PR + "label_free_distance", "label-free distance", False)], "drift.png",
              "Distance from the tractable regime", wd),
        _grid(out, runs, [(SP + "kl_lyapunov", "V (singular values of Z_c)", True),
                          (SP + "kl_lyapunov_modes", "V(lam)", True)], "lyapunov.png", "The KL Lyapunov value", wd),
        _grid(out, runs, [(SP + "etf_angle", "etf_angle(lam)", True), (NC + "etf_gap_means", "ETF gap of the means", True)],
              "distances.png", "Natural distances to neural collapse", wd),
        _grid(out, runs, [(PR + "neg_log_loss", "-log(train loss)", False), (PR + "margin_softmin", "soft-min margin",
                                                                              False),
                          (SP + "spectral_margin", "spectral margin", False)], "margins.png",
              "Loss-driving margins against log(epoch)", min(r["weight_decay"] for r in runs)),
    ]
    fb = [res for res in results.values() if res.get("kind") == "fullbatch"]
    if fb:
        names.append(_slowdown_figure(out, fb[0]))
    tl = [res for res in results.values() if res.get("kind") == "twolayer"]
    if tl:
        names.append(_twolayer_figure(out, tl))
    names.append(_forecast_figure(out, runs))
    return names


def _slowdown_figure(out: Path, res: dict) -> str:
    from .fullbatch import MARGINS

    rows = res["rows"]
    fig, axes = new_figure(1, 3.4, 2.4, nrows=2)  # one printed column, the panels stacked
    names = {"neg_log_loss": "-log(train loss)", "margin_min": "smallest sample margin",
             "margin_softmin": "soft-min sample margin", "spectral_margin": "spectral margin"}
    for key, colour in zip(MARGINS, ("tab:blue", "tab:green", "tab:orange", "tab:red")):
        xs, ys = positive([r["time"] for r in rows if key in r], [r[key] for r in rows if key in r])
        axes[0].plot(xs, ys, "-", color=colour, lw=1.2, label=names[key])
    start = res["summary"]["terminal_from"]
    if start:
        end = rows[-1]["time"]
        ref = [r for r in rows if r["time"] >= start and "neg_log_loss" in r]
        if ref:
            y0 = ref[0]["neg_log_loss"]
            axes[0].plot([start, end], [y0, y0 + math.log(end / start)], "k--", lw=1, label="UFM law: 1 per e-fold")
        axes[0].axvline(start, color="0.6", lw=0.8)
        for key, colour in zip(MARGINS, ("tab:blue", "tab:green", "tab:orange", "tab:red")):
            ws = res["summary"]["slopes"].get(key, [])
            axes[1].plot([math.sqrt(w["from"] * w["to"]) for w in ws], [w["slope"] for w in ws], "o-", color=colour,
                         label=names[key])
        axes[1].axhline(1.0, color="k", ls="--", lw=1)
    if not any(res["summary"]["slopes"].get(k) for k in MARGINS):
        axes[1].text(0.5, 0.5, "no whole e-fold of terminal phase", ha="center", va="center",
                     transform=axes[1].transAxes, fontsize=8)
    for ax, ylabel in zip(axes, ("margin", "slope per e-fold")):
        log_epoch_axis(ax, "time = lr x steps (log scale)")
        label(ax, ax.get_xlabel(), ylabel, legend=False)
    axes[0].legend(fontsize=6, loc="upper left")
    return save(fig, out / "slowdown.png", f"Full-batch GD, digits MLP ({res['steps']} steps, lr {res['lr']:g}); grey: "
                "100% train accuracy; below: slope in one-e-fold windows")


def _twolayer_figure(out: Path, results: list[dict]) -> str:
    ks = sorted({r["K"] for r in results})
    fig, axes = new_figure(len(ks), 3.8, 2.8, nrows=2)
    for j, k in enumerate(ks):
        for res in sorted((r for r in results if r["K"] == k), key=lambda r: r["name"]):
            rows = [r for r in res["rows"] if not r.get("diverged")]
            tag = res["name"].split("-", 2)[2]
            xs, ys = positive([r["time"] for r in rows], [max(r["leakage_W"], 1e-17) for r in rows])
            axes[j].plot(xs, ys, "-", lw=1, label=tag)
            xs, ys = positive([r["time"] for r in rows], [r["etf_angle"] for r in rows])
            axes[len(ks) + j].plot(xs, ys, "-", lw=1, label=tag)
        axes[j].set_title(f"K = {k}", fontsize=9)
        for ax, ylabel, logy in ((axes[j], "leakage of W2 (frozen vectors)", True),
                                 (axes[len(ks) + j], "etf_angle(lam)", False)):
            log_epoch_axis(ax, "time = lr x steps (log scale)")
            label(ax, ax.get_xlabel(), ylabel, logy=logy, legend=False)
            if logy:
                ax.set_ylim(1e-17, 2)
    axes[0].legend(fontsize=6, ncol=2)
    return save(fig, out / "twolayer.png", "Two-layer linear head on real digits: spectral start, inputs with alpha x "
                "the real within-class spread (in: in the span of the class means; out: outside it)")


def _forecast_figure(out: Path, runs: list[dict]) -> str:
    fig, (ax,) = new_figure(1, 5.0, 4.2)
    markers = dict(zip(sorted({r["setup"] for r in runs}), "o^sDv"))
    shown = set()
    pts = []
    for r in runs:
        f = r["values"]["forecast"]
        if "forecast" in f:
            tag = f"{r['init']}, {r['setup']}"
            ax.scatter(f["baseline"]["spectrum"], f["forecast"]["spectrum"], s=14, color=COLOURS.get(r["init"], "k"),
                       marker=markers[r["setup"]], label=None if tag in shown else tag)
            shown.add(tag)
            pts += [f["baseline"]["spectrum"], f["forecast"]["spectrum"]]
    pts = [p for p in pts if p > 0]
    if not pts:
        ax.text(0.5, 0.5, "no run had a terminal phase long enough to score", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return save(fig, out / "forecast.png", "Held-out forecast error per run, forecaster started in the terminal phase")
    if pts:
        lim = (min(pts) / 1.5, max(pts) * 1.5)
        ax.plot(lim, lim, "k--", lw=0.8, label="equal error (above: the baseline wins)")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
    label(ax, "naive baseline: held-out spectrum error", "forecaster: held-out spectrum error", logx=True, logy=True,
          legend=False)
    for axis in (ax.xaxis, ax.yaxis):
        log_ticks(axis)
    ax.legend(fontsize=6, loc="best")
    return save(fig, out / "forecast.png", "Held-out forecast error per run, forecaster started in the terminal phase "
                "(colour: init; marker: setup)")
