"""`hadainit validate --quick` end to end on the real embedded data, and its numbers recomputed from the CSVs."""

import csv
import json
import math
import os
import statistics
import sys

import numpy as np
import pytest

from hadainit.experiments import study_run as validate
from hadainit.experiments.study import NC1_THRESHOLD, RISE_TOL


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "validate"
    assert validate.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text())


def _csv(out, name):
    with open(out / "runs" / name / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _column(rows, key):
    """(epochs completed, value) of one column, read straight from the CSV rows."""
    return [(float(r["epoch"]) + 1, float(r[key])) for r in rows if r.get(key)]


def test_files_and_questions(study):
    out, report = study
    for name in ("report.md", "report.json", "runs.json", "accuracy_nc1.png", "drift.png", "lyapunov.png",
                 "distances.png", "slowdown.png", "forecast.png", "margins.png", "twolayer.png"):
        assert (out / name).is_file(), name
    from hadainit.experiments.narrow import kd_available

    assert report["config"]["runs"] == 6 + (6 if kd_available() else 0) and report["config"]["seeds"] == 2
    text = (out / "report.md").read_text()
    for heading in ("Paired init effects", "tractable regime", "Arms that see Q", "margins that drive the loss",
                    "early transient vs terminal phase", "forecaster, started in the terminal phase", "Determinism"):
        assert heading in text, heading
    # arms named for what they are (the narrow head's: its mode sets)
    assert {r["init"] for r in report["runs"] if r["setup"] != "digits-narrow"} == {"orthogonal", "etf", "default"}


def test_group_means_are_recomputable_from_the_csvs(study):
    out, report = study
    group = report["groups"]["digits-mlp|orthogonal|0.0005"]
    names = [r["name"] for r in report["runs"] if r["setup"] == "digits-mlp" and r["init"] == "orthogonal"]
    finals = [_column(_csv(out, n), "train/acc")[-1][1] for n in names]
    assert math.isclose(group["train_acc"]["mean"], statistics.fmean(finals), rel_tol=1e-12)
    assert math.isclose(group["train_acc"]["std"], statistics.stdev(finals), rel_tol=1e-9)
    drift = [_column(_csv(out, n), "spectral_eval/drift")[-1][1] for n in names]
    assert math.isclose(group["drift"]["mean"], statistics.fmean(drift), rel_tol=1e-12)
    to_nc1 = [next((e for e, v in _column(_csv(out, n), "nc_eval/nc1") if e > 0 and v < NC1_THRESHOLD), None)
              for n in names]
    assert group["epochs_to_nc1"]["missing"] == sum(v is None for v in to_nc1)
    assert f"{group['train_acc']['mean']:.3g} ± {group['train_acc']['std']:.2g}" in (out / "report.md").read_text()


def test_v_rises_and_slopes_are_recomputable(study):
    out, report = study
    run = report["runs"][0]
    values = [v for _, v in _column(_csv(out, run["name"]), "spectral_eval/kl_lyapunov")]
    rises = sum((b - a) / abs(a) > RISE_TOL for a, b in zip(values, values[1:]))
    assert run["values"]["V_rises"]["count"] == rises
    assert report["V"]["runs_with_a_rise"] == sum(r["values"]["V_rises"]["count"] > 0 for r in report["runs"])
    for run in report["runs"]:
        slow = run["values"]["slowdown"]
        if slow["slope"] is None:
            continue
        points = [(e, v) for e, v in _column(_csv(out, run["name"]), "spectral_eval/spectral_margin")
                  if e >= slow["from_epoch"]]
        slope = np.polyfit(np.log([e for e, _ in points]), [v for _, v in points], 1)[0]
        assert math.isclose(slow["slope"], slope, rel_tol=1e-8), run["name"]
        break
    else:
        pytest.fail("no run with a slowdown slope")


def test_forecast_scores_are_counted_from_the_runs(study):
    out, report = study
    scored = [r["values"]["forecast"] for r in report["runs"] if "forecast" in r["values"]["forecast"]]
    assert report["forecast"]["runs"] == len(scored) > 0
    assert report["forecast"]["forecast_wins_margin"] == sum(f["forecast"]["margin"] < f["baseline"]["margin"]
                                                            for f in scored)
    assert math.isclose(report["forecast"]["median_spectrum_error"]["baseline"],
                        statistics.median(f["baseline"]["spectrum"] for f in scored), rel_tol=1e-12)


def test_analyze_only_and_refusals(study, tmp_path, capsys):
    out, report = study
    assert validate.main(["--out", str(out), "--analyze-only", "--no-figures"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["groups"] == report["groups"]
    assert validate.main(["--quick", "--out", str(out)]) == 2
    assert "not empty: pass --overwrite" in capsys.readouterr().err
    assert validate.main(["--quick", "--out", str(tmp_path / "x"), "--seeds", "1"]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "runs.json").write_text("[{")
    assert validate.main(["--out", str(tmp_path / "bad"), "--analyze-only", "--no-figures"]) == 2


def test_a_forecast_score_recomputed_from_the_csv(study):
    from hadainit.ufm.forecast import evaluate_forecast

    out, report = study
    run = next(r for r in report["runs"] if "forecast" in r["values"]["forecast"])
    rows = _csv(out, run["name"])
    modes = sorted((k for k in rows[0] if k.startswith("spectral_eval/lam_") and k[18:].isdigit()),
                   key=lambda k: int(k[18:]))
    start = run["values"]["terminal_from"]
    points = [(float(r["epochs_done"]), [float(r[m]) for m in modes]) for r in rows if r.get(modes[0])
              and float(r["epochs_done"]) >= start]
    fit_until = math.sqrt(points[0][0] * points[-1][0])  # the geometric middle of the terminal phase
    assert math.isclose(run["values"]["forecast"]["fit_until"], fit_until, rel_tol=1e-12)
    result = evaluate_forecast([e for e, _ in points], [lam for _, lam in points], fit_until=fit_until)
    for name in ("forecast", "baseline"):
        for key in ("spectrum", "margin"):
            assert math.isclose(result[name][key], run["values"]["forecast"][name][key], rel_tol=1e-9), (name, key)


def test_forecast_variants_recomputed_from_the_csv_and_counted(study):
    from hadainit.experiments.study import FORECAST_VARIANTS
    from hadainit.ufm.forecast import evaluate_forecast

    out, report = study
    scored = [r for r in report["runs"] if "forecast" in r["values"]["forecast"]]
    run = scored[0]
    rows = _csv(out, run["name"])
    modes = sorted((k for k in rows[0] if k.startswith("spectral_eval/lam_") and k[18:].isdigit()),
                   key=lambda k: int(k[18:]))
    start = run["values"]["terminal_from"]
    points = [(float(r["epochs_done"]), [float(r[m]) for m in modes]) for r in rows if r.get(modes[0])
              and float(r["epochs_done"]) >= start]
    f = run["values"]["forecast"]
    assert set(f["variants"]) == {f"{t}/{r}" for t, r in FORECAST_VARIANTS}
    for time_map, rates in FORECAST_VARIANTS:
        got = f["variants"][f"{time_map}/{rates}"]
        want = evaluate_forecast([e for e, _ in points], [lam for _, lam in points], fit_until=f["fit_until"],
                                 time_map=time_map, rates=rates)
        for key in ("spectrum", "margin"):
            assert math.isclose(got[key], want["forecast"][key], rel_tol=1e-9), (time_map, rates, key)
        assert got["power"] == want["power"]
    # the default fit is the linear/shared variant; the summary counts each variant's wins from the runs
    assert f["variants"]["linear/shared"]["spectrum"] == f["forecast"]["spectrum"]
    for name, v in report["forecast"]["variants"].items():
        fits = [(r["values"]["forecast"]["variants"][name], r["values"]["forecast"]["baseline"]) for r in scored
                if "spectrum" in r["values"]["forecast"]["variants"][name]]
        assert v["runs"] == len(fits)
        assert v["wins_spectrum"] == sum(a["spectrum"] < b["spectrum"] for a, b in fits)
        assert v["wins_margin"] == sum(a["margin"] < b["margin"] for a, b in fits)
        assert math.isclose(v["median_spectrum_error"], statistics.median(a["spectrum"] for a, _ in fits),
                            rel_tol=1e-12)
        assert v["power_at_bound"] == sum(a["power"] is not None and min(abs(a["power"] + 1), abs(a["power"] - 2))
                                          < 1e-6 for a, _ in fits)
    # the shape change: the normalized measured spectrum's move from the last fitted to the last epoch
    fitted = [lam for e, lam in points if e <= f["fit_until"]]
    a, b = np.array(fitted[-1]), np.array(points[-1][1])
    assert math.isclose(f["shape_change"], float(np.linalg.norm(b / np.linalg.norm(b) - a / np.linalg.norm(a))),
                        rel_tol=1e-12)
    assert "| forecaster fit |" in (out / "report.md").read_text()


def test_the_variant_sentence_follows_the_numbers(study):
    import copy

    from hadainit.experiments.study_report import best_variant, conclusions

    _, report = study
    r = copy.deepcopy(report)
    f = r["forecast"]
    f["runs"] = 4
    f["median_spectrum_error"]["baseline"] = 0.1
    f["median_shape_change"] = 0.05
    f["variants"] = {name: {"runs": 4, "wins_spectrum": 0, "wins_margin": 0, "median_spectrum_error": 0.5,
                            "median_margin_error": 1.0, "median_power": 1.5} for name in f["variants"]}
    f["variants"]["power/per_mode"].update(median_spectrum_error=0.2)
    assert best_variant(f)[0] == "power/per_mode"
    text = next(line for line in conclusions(r) if "Forecaster variants" in line)
    assert "power/per_mode" in text and "even the best fit loses" in text and "0.05" in text
    f["variants"]["linear/per_mode"].update(median_spectrum_error=0.05, wins_spectrum=3)
    text = next(line for line in conclusions(r) if "Forecaster variants" in line)
    assert "linear/per_mode" in text and "is the better forecast here" in text and "3 of 4" in text
    assert not any("not determined" in line for line in conclusions(r))  # no exponent at a bound: no such claim
    f["variants"]["power/shared"]["power_at_bound"] = 3
    assert any("3 of 4 runs (power/shared)" in line for line in conclusions(r))


# ---------------------------------------------------- the report's statistics
def test_paired_comparisons_recomputed_from_the_csvs(study):
    """The loss-at-epoch-10 comparison: per seed, log(probe loss) of the arm minus the default's, read straight
    from the CSVs; scipy's paired t-test gives the same p; Holm over all rows by hand."""
    from scipy.stats import ttest_rel

    from hadainit.experiments.measures import holm

    out, report = study
    row = next(c for c in report["paired"] if c["endpoint"] == "log_loss@10" and c["arm"] == "etf"
               and c["setup"] == "digits-mlp")

    def loss10(init, seed):
        rows = _csv(out, f"digits-mlp/{init}-wd0.0005-s{seed}")
        return math.log(next(float(r["probe/loss"]) for r in rows if r.get("probe/loss") and float(r["epochs_done"]) == 10))

    a = [loss10("etf", s) for s in (0, 1)]
    b = [loss10("default", s) for s in (0, 1)]
    assert math.isclose(row["mean"], statistics.fmean(x - y for x, y in zip(a, b)), rel_tol=1e-9)
    assert math.isclose(row["p"], float(ttest_rel(a, b).pvalue), rel_tol=1e-6)
    assert [c["p_holm"] for c in report["paired"]] == holm([c["p"] for c in report["paired"]])
    assert f"{100 * math.expm1(row['mean']):+.1f}%" in (out / "report.md").read_text()


def test_never_is_printed_as_never():
    from hadainit.experiments.study_report import _fmt

    assert _fmt({"mean": None, "std": None, "n": 0, "missing": 3}, missing="never") == "never"
    assert _fmt({"mean": 12.0, "std": None, "n": 1, "missing": 2}, missing="never") == "12 (2 never)"
    assert _fmt(None) == "–"


def test_real_reports_as_real_and_says_one_seed_cannot_be_judged(study, tmp_path):
    """The same runs analyzed as `hadainit real` (one seed each): its own title, no quick-run note, and no
    claim about seed noise it cannot make."""
    import shutil

    from hadainit.experiments.study import analyze

    out, report = study
    copy = tmp_path / "real"
    shutil.copytree(out / "runs", copy / "runs")
    one_seed = [r for r in report["runs"] if r["seed"] == report["runs"][0]["seed"]]
    again = analyze(copy, one_seed, quick=True, seconds=1.0, command="real")
    text = (copy / "report.md").read_text()
    assert text.startswith("# hadainit real:") and "Quick profile" not in text
    assert "no init effect can be judged" in text and "differ from the default init:" not in text
    assert again["config"]["command"] == "real" and again["config"]["seeds"] == 1


def test_slowdown_command_fits_the_window_validate_fits(study, tmp_path, capsys):
    """`hadainit slowdown RUN` defaults to the terminal phase, so it prints the slope the study reports."""
    from hadainit.experiments import slowdown

    out, report = study
    run = next(r for r in report["runs"] if r["values"]["slowdown"]["slope"] is not None)
    assert slowdown.main([str(out / "runs" / run["name"]), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "slowdown.json").read_text())
    assert math.isclose(result["slope_per_efold"], run["values"]["slowdown"]["slope"], rel_tol=1e-12)
    assert result["min_epoch"] == run["values"]["slowdown"]["from_epoch"]
    assert 0 <= result["r2"] <= 1 and f"R^2 {result['r2']:.3f}" in capsys.readouterr().out
    assert result["points"] == len(result["epochs"]) >= 3


def test_slowdown_window_from_epoch_zero(study, tmp_path):
    from hadainit.experiments import slowdown

    out, report = study
    run = report["runs"][0]["name"]
    assert slowdown.main([str(out / "runs" / run), "--out", str(tmp_path), "--min-epoch", "0"]) == 0
    result = json.loads((tmp_path / "slowdown.json").read_text())
    assert min(result["epochs"]) > 0 and 0 <= result["r2"] <= 1


# ------------------------------------------- health: truncated, diverged, unfinished runs (issue 22.11b, 25.4)
def _copy(out, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


def _rewrite_csv(path, keep=None, change=None):
    with open(path) as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rows = [change(r) if change else r for r in rows if keep is None or keep(r)]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_analyze_only_excludes_a_truncated_run(study, tmp_path):
    """A run killed half way is flagged and left out of the final columns (not averaged in)."""
    out, report = study
    copy = _copy(out, tmp_path)
    name = "digits-mlp/default-wd0.0005-s1"
    _rewrite_csv(copy / "runs" / name / "metrics.csv", keep=lambda r: float(r["epoch"] or 0) < validate.QUICK_EPOCHS // 2)
    assert validate.main(["--out", str(copy), "--analyze-only", "--no-figures"]) == 0
    again = json.loads((copy / "report.json").read_text())
    assert [e["name"] for e in again["excluded"]] == [name]
    assert again["excluded"][0]["truncated"]["planned"] == validate.QUICK_EPOCHS
    group = again["groups"]["digits-mlp|default|0.0005"]
    other = _column(_csv(out, "digits-mlp/default-wd0.0005-s0"), "spectral_eval/drift")[-1][1]
    assert group["drift"]["n"] == 1 and math.isclose(group["drift"]["mean"], other, rel_tol=1e-12)
    assert f"{name}: stopped after" in (copy / "report.md").read_text()
    assert all(c["n"] == 1 for c in again["paired"] if c["setup"] == "digits-mlp")  # its pairs are gone too


def test_a_diverged_run_is_flagged_and_excluded(study, tmp_path):
    out, report = study
    copy = _copy(out, tmp_path)
    name = "digits-mlp/etf-wd0.0005-s0"

    def spike(r):
        if r.get("train/loss") and float(r["epoch"]) >= 8:
            r["train/loss"] = str(float(r["train/loss"]) * 1000)
        return r

    _rewrite_csv(copy / "runs" / name / "metrics.csv", change=spike)
    assert validate.main(["--out", str(copy), "--analyze-only", "--no-figures"]) == 0
    again = json.loads((copy / "report.json").read_text())
    assert [e["name"] for e in again["excluded"]] == [name]
    assert again["excluded"][0]["diverged"]["epoch"] == 9.0  # Lightning's epoch 8 closes 9 epochs
    assert again["groups"]["digits-mlp|etf|0.0005"]["train_acc"]["n"] == 1
    assert "diverged at epoch 9" in (copy / "report.md").read_text()


def test_a_study_stopped_early_is_analyzed_with_its_unfinished_runs_named(study, tmp_path):
    import shutil

    out, report = study
    copy = _copy(out, tmp_path)
    saved = json.loads((copy / "runs.json").read_text())
    last = saved["runs"][-1]
    shutil.rmtree(copy / "runs" / last["name"])
    last.update(seconds=0.0, not_finished=True)
    saved["finished"] = False
    (copy / "runs.json").write_text(json.dumps(saved))
    assert validate.main(["--out", str(copy), "--analyze-only", "--no-figures"]) == 0
    text = (copy / "report.md").read_text()
    assert "**Partial" in text and f"{last['name']}: no epoch logged" in text


# ---------------------------------------------------------------- issue 22.7
def test_slowdown_on_two_points_reports_no_r2_and_warns(tmp_path, capsys):
    from hadainit.experiments import slowdown

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,epochs_done,spectral/spectral_margin,train/acc\n"
                    "0,10,1,1.0,1.0\n1,20,2,2.0,1.0\n")
    assert slowdown.main([str(path), "--min-epoch", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "slowdown.json").read_text())
    assert result["r2"] is None and result["points"] == 2
    assert math.isclose(result["slope_per_efold"], 1.0 / math.log(2.0), rel_tol=1e-12)
    captured = capsys.readouterr()
    assert "only 2 epochs" in captured.err and "R^2 1.000" not in captured.out


# ---------------------------------------------------------------- issue 22.3
def test_readme_states_the_measured_epoch_counts_that_run():
    import re
    from pathlib import Path

    from hadainit.callbacks import log_spaced_epochs
    from hadainit.experiments.study_run import MEASURED

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    real = re.search(r"hadainit real --out out/real`[^.]*?(\d+) distinct log-spaced epochs", readme, re.S)
    study = re.search(r"Empirical validation.*?(\d+) distinct log-spaced epochs", readme, re.S)
    assert real and int(real.group(1)) == len(log_spaced_epochs(60, MEASURED)) == 31
    assert study and int(study.group(1)) == len(log_spaced_epochs(200, MEASURED)) == 38


# ---------------------------------------------------------------- issue 22.8
def test_a_long_title_is_wrapped_inside_the_figure_above_the_panels(tmp_path):
    from hadainit.experiments.figures import new_figure, save

    fig, axes = new_figure(1, 4.2, 3.0, nrows=2)
    for ax in axes:
        ax.plot([1, 10, 100], [1, 2, 3])
        ax.set_title("digits-mlp", fontsize=9)
    save(fig, tmp_path / "f.png", "Accuracy and NC1 by last-layer init (weight decay 0.0005; mean over seeds, band: "
         "min-max over seeds; healthy runs)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # the layout as it was saved
    renderer = canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    frame = fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1  # not clipped
    assert all(box.y0 >= ax.get_tightbbox(renderer).y1 - 1 for ax in axes)  # above every panel and its title


def test_one_seed_figures_do_not_claim_a_mean_over_seeds(study, tmp_path, monkeypatch):
    from hadainit.experiments import study as st

    out, report = study
    titles = []
    real = st.save
    monkeypatch.setattr(st, "save", lambda fig, path, title=None: titles.append(title) or real(fig, path, title))
    runs = [{**r, "table": st.read_metrics(out / "runs" / r["name"] / "metrics.csv")} for r in report["runs"]
            if r["seed"] == 0]
    st._figures(tmp_path, runs, {})
    grids = [t for t in titles if "weight decay" in t]
    assert grids and all("one seed per init" in t and "mean over seeds" not in t for t in grids)


def test_every_epoch_axis_of_the_grids_is_log(study, tmp_path, monkeypatch):
    from hadainit.experiments import study as st

    out, report = study
    scales = []
    real = st.save
    monkeypatch.setattr(st, "save", lambda fig, path, title=None: scales.extend(
        a.get_xscale() for a in fig.axes if "weight decay" in (title or "")) or real(fig, path, title))
    runs = [{**r, "table": st.read_metrics(out / "runs" / r["name"] / "metrics.csv")} for r in report["runs"]]
    st._figures(tmp_path, runs, {})
    assert len(scales) >= 10 and set(scales) == {"log"}  # no symlog panel beside log ones


# ---------------------------------------------------------------- issue 22.2
@pytest.mark.slow  # ~10 s: a second (real) study with its figures; the study's paths are covered by the fixture
def test_real_prints_progress_and_a_short_summary(tmp_path, capsys):
    from hadainit.experiments import real

    assert real.main(["--epochs", "4", "--out", str(tmp_path / "real")]) == 0
    text = capsys.readouterr().out
    assert "hadainit real: [1/2]" in text and "hadainit real: [2/2]" in text
    assert "orthogonal" in text and "default" in text and f"wrote {tmp_path / 'real'}/report.md" in text
    assert "## 2." not in text  # the report is in the file, not dumped on the terminal


# ---------------------------------------------------------------- issue 25: figures
def _overlaps(labels, renderer):
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def test_slowdown_figure_tick_labels_do_not_collide(tmp_path):
    """Four decades of time on a one-column (3.4 in) panel: the labelled ticks (drawn at the saved size) do not
    overlap (1, 2, 5 x 10^k over four decades did: '50100200500')."""
    from hadainit.experiments.study import _slowdown_figure

    times = [0.5 * 1.2 ** i for i in range(60)]  # 0.5 .. ~24000
    rows = [{"time": t, "neg_log_loss": math.log1p(t), "margin_min": math.log1p(t) - 1, "margin_softmin": math.log1p(t),
             "spectral_margin": 2 * math.log1p(t)} for t in times]
    slopes = [{"from": 200.0 * math.e ** k, "to": 200.0 * math.e ** (k + 1), "slope": 1.0} for k in range(3)]
    res = {"rows": rows, "steps": 12000, "lr": 0.5,
           "summary": {"terminal_from": 200.0, "slopes": {k: slopes for k in ("neg_log_loss", "margin_min",
                                                                               "margin_softmin", "spectral_margin")}}}
    import matplotlib

    matplotlib.use("Agg")
    from hadainit.experiments import study as st

    captured = {}
    real_save = st.save

    def keep(fig, path, title=None):
        captured["fig"] = fig
        return real_save(fig, path, title)

    st.save = keep
    try:
        _slowdown_figure(tmp_path, res)
    finally:
        st.save = real_save
    fig = captured["fig"]
    assert fig.get_size_inches()[0] <= 3.5  # one printed column
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        assert sum(bool(t.get_text()) for t in labels) >= 2
        assert not _overlaps(labels, renderer)


def test_grid_legend_names_every_init_outside_the_panels(study, tmp_path, monkeypatch):
    """drift.png: one figure legend with every init drawn (the narrow head's mode sets too), no legend inside a
    panel (it hid curves)."""
    from hadainit.experiments import study as st

    out, report = study
    figs = []
    real_save = st.save
    monkeypatch.setattr(st, "save", lambda fig, path, title=None: figs.append(fig) or real_save(fig, path, title))
    from hadainit.experiments.runs import read_metrics

    full = []
    for r in json.loads((out / "runs.json").read_text())["runs"]:
        table = read_metrics(out / "runs" / r["name"] / "metrics.csv")
        full.append({**r, "table": table, "healthy": True})
    st._grid(tmp_path, full, [(st.SP + "drift", "drift of W", False)], "drift.png", "t", 5e-4)
    fig = figs[-1]
    assert all(ax.get_legend() is None for ax in fig.axes)
    names = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    drawn = {r["init"] for r in full if any(st.SP + "drift" in row for row in r["table"])}
    assert names == {st._INIT_LABEL.get(n, n) for n in drawn}


# ---------------------------------------------------------------- issue 25 item 6: determinism
def test_the_rerun_reproduces_the_run_bit_for_bit_and_the_report_says_so(study):
    """The study trains its first run twice (same machine, one thread, same torch): every logged value equal."""
    out, report = study
    d = report["determinism"]
    first = validate.plan(True, seeds=1, narrow=False)[0].name
    assert d["run"] == first and d["values"] > 0 and d["differ"] == 0
    assert (out / "rerun" / "runs" / first / "metrics.csv").is_file()
    assert f"reproduced all {d['values']} logged values bit for bit" in (out / "report.md").read_text()


def test_rerun_identity_counts_a_changed_value(tmp_path):
    from hadainit.experiments.study import rerun_identity

    header = "epoch,step,train/loss,train/acc\n"
    (tmp_path / "a.csv").write_text(header + "0,10,0.5,0.8\n1,20,0.25,0.9\n")
    (tmp_path / "b.csv").write_text(header + "0,10,0.5,0.8\n1,20,0.2500001,0.9\n")
    same = rerun_identity(tmp_path / "a.csv", tmp_path / "a.csv")
    assert same == {"values": 4, "differ": 0, "max_relative": 0.0}
    got = rerun_identity(tmp_path / "a.csv", tmp_path / "b.csv")
    assert got["values"] == 4 and got["differ"] == 1
    assert math.isclose(got["max_relative"], 1e-7 / 0.2500001, rel_tol=1e-6)


def test_the_forecast_memo_returns_the_fit_itself_and_a_copy(study):
    """Re-analysis reuses the fits of unchanged runs: the memoized value is what a fresh fit gives, and a
    caller mutating it cannot change what the next analysis reads."""
    from hadainit.experiments import study as analysis
    from hadainit.experiments.runs import read_metrics

    out, report = study
    table = read_metrics(out / "runs" / report["runs"][0]["name"] / "metrics.csv")
    start = analysis.terminal_start(table, validate.QUICK_EPOCHS)
    got = analysis.forecast(table, validate.QUICK_EPOCHS, start)
    e, lam = analysis.spectra(table)
    keep = [i for i, x in enumerate(e) if x >= start and x > 0]
    fresh = analysis._forecast_window.__wrapped__(tuple(e[i] for i in keep), tuple(tuple(lam[i]) for i in keep), start)
    assert "variants" in fresh and json.dumps(got, sort_keys=True) == json.dumps(fresh, sort_keys=True)
    got["variants"].clear()
    again = analysis.forecast(table, validate.QUICK_EPOCHS, start)
    assert json.dumps(again, sort_keys=True) == json.dumps(fresh, sort_keys=True)


# ---------------------------------------------------------------- issue 23: every study run is a hadainit train config
def test_every_run_folder_holds_its_config_and_no_checkpoints_or_curves(study):
    """Each run folder: the config.yaml LightningCLI wrote (with the study's trainer and seed) beside metrics.csv
    and the run report; no checkpoints/ or curves.png (off for study runs)."""
    import yaml

    out, report = study
    for run in report["runs"]:
        folder = out / "runs" / run["name"]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["seed_everything"] == run["seed"] and config["trainer"]["max_epochs"] == run["epochs"]
        assert config["trainer"]["enable_checkpointing"] is False and config["curves"] is False
        assert config["out"] == str(folder) and config["model"]["weight_decay"] == run["weight_decay"]
        assert (folder / "report.json").is_file() and (folder / "metrics.csv").is_file()
        assert not (folder / "checkpoints").exists() and not (folder / "curves.png").exists(), run["name"]


def test_a_run_config_reruns_through_hadainit_train_to_the_same_metrics(study, tmp_path, capsys):
    """`hadainit train --config <study>/runs/<setup>/<name>/config.yaml --out NEW` trains the run again: the same
    metrics.csv columns and values (one thread, same machine: equal to round-off)."""
    from hadainit.experiments import train
    from hadainit.experiments.runs import read_metrics

    out, report = study
    name = report["runs"][0]["name"]
    new = tmp_path / "again"
    assert train.main(["--config", str(out / "runs" / name / "config.yaml"), "--out", str(new)]) == 0
    assert f"in {new}" in capsys.readouterr().out
    with open(out / "runs" / name / "metrics.csv") as a, open(new / "metrics.csv") as b:
        assert set(next(csv.reader(a))) == set(next(csv.reader(b)))
    first, second = read_metrics(out / "runs" / name / "metrics.csv"), read_metrics(new / "metrics.csv")
    assert [r["epochs_done"] for r in first] == [r["epochs_done"] for r in second]
    assert len(first) > validate.QUICK_EPOCHS
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            x, y = a[key], b[key]
            assert math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15) or math.isnan(x) and math.isnan(y), (key, x, y)


def test_run_config_of_each_kind_of_run():
    """The config of an arm: the module's init (the narrow head: width and mode set), the spectral monitor's
    initial basis (svd for PyTorch's init), the probe and both monitors at the measured epochs."""
    spec = validate.RunSpec("digits-mlp", "etf", 0.0, 3, 20, 64)
    config = validate.run_config(spec, "somewhere")
    when = validate.measured_epochs(20)
    assert config["model"] == {"arch": "mlp", "init": "etf", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
                               "schedule": "constant", "seed": 3}
    assert config["data"] == {"class_path": "hadainit.experiments.data.Digits", "init_args": {"batch_size": 64}}
    assert config["seed_everything"] == 3 and config["out"] == "somewhere"
    assert config["trainer"]["callbacks"] == [{"class_path": "hadainit.experiments.probe.MarginProbe",
                                               "init_args": {"at_epochs": when}}]
    assert config["nc_monitor"]["at_epochs"] == config["spectral_monitor"]["at_epochs"] == when
    assert config["spectral_monitor"]["init_basis"] == "auto" and config["spectral_monitor"]["log_modes"] is True
    assert validate.run_config(validate.RunSpec("digits-cnn", "default", 5e-4, 0, 5, 128), "x")["spectral_monitor"][
        "init_basis"] == "svd"
    assert validate.run_config(validate.RunSpec("mnist1d-mlp", "orthogonal", 5e-4, 0, 5, 128), "x")["data"][
        "class_path"].endswith(".MNIST1D")
    narrow = {i: validate.run_config(validate.RunSpec(validate.NARROW, i, 5e-4, 0, 5, 128), "x")["model"]
              for i in ("auto", "first", "default")}
    assert {i: (m["arch"], m["width"], m["init"], m.get("modes")) for i, m in narrow.items()} == {
        "auto": ("mlp", 5, "hadamard", "auto"), "first": ("mlp", 5, "hadamard", "first"),
        "default": ("mlp", 5, "default", None)}
    with pytest.raises(ValueError, match="unknown setup"):
        validate.run_config(validate.RunSpec("cifar", "etf", 0.0, 0, 5, 128), "x")
    with pytest.raises(ValueError, match="unknown narrow-head init"):
        validate.run_config(validate.RunSpec(validate.NARROW, "etf", 0.0, 0, 5, 128), "x")
    with pytest.raises(ValueError, match="unknown init 'xavier' for digits-mlp"):  # was: a bare KeyError
        validate.run_config(validate.RunSpec("digits-mlp", "xavier", 0.0, 0, 5, 128), "x")


def test_the_narrow_head_option_draws_what_the_narrow_module_drew():
    """ClassifierModule(width=5): the body and head of the study's former NarrowModule, draw for draw (the (128, 64)
    MLP built first, then the (128, 5) one), its last layer filled by hadamard_ with the mode set."""
    import torch

    import hadainit
    from hadainit.experiments.models import MLP
    from hadainit.experiments.module import ClassifierModule

    for modes in ("auto", "first"):
        torch.manual_seed(7)
        module = ClassifierModule(arch="mlp", init="hadamard", modes=modes, width=5, seed=2)
        torch.manual_seed(7)
        MLP(10, (1, 8, 8))
        want = MLP(10, (1, 8, 8), hidden=(128, 5))
        hadainit.hadamard_(want.fc.weight, modes=modes, generator=torch.Generator().manual_seed(2))
        torch.nn.init.zeros_(want.fc.bias)
        got = module.model.state_dict()
        assert got.keys() == want.state_dict().keys() and module.model.fc.weight.shape == (10, 5)
        assert all(torch.equal(got[k], v) for k, v in want.state_dict().items()), modes
    first = ClassifierModule(init="hadamard", modes="first", width=5, seed=2).model.fc.weight
    auto = ClassifierModule(init="hadamard", width=5, seed=2).model.fc.weight
    assert not torch.allclose(first, auto)  # the mode set is passed on
    for kwargs, error, message in (({"width": 0}, ValueError, "width must be >= 1"),
                                   ({"width": 5.0}, TypeError, "width must be an int"),
                                   ({"width": True}, TypeError, "width must be an int"),
                                   ({"arch": "cnn", "width": 5}, ValueError, "needs arch 'mlp'"),
                                   ({"modes": "all"}, ValueError, "unknown modes")):
        with pytest.raises(error, match=message):
            ClassifierModule(**kwargs)


def test_train_one_hands_its_config_to_hadainit_train_with_one_thread(tmp_path, monkeypatch):
    """train_one calls `hadainit train`'s entry point with --config (its run_config), never with the user's
    HADAINIT_THREADS (the study's runs use one thread each; restored after); a failed run raises with the reason."""
    import yaml

    from hadainit.experiments import train

    calls = []

    def fake(argv):
        assert argv[0] == "--config" and len(argv) == 2
        calls.append((yaml.safe_load(open(argv[1]).read()), os.environ.get("HADAINIT_THREADS")))
        print("hadainit train: wrote ...")
        return 0

    spec = validate.RunSpec("digits-mlp", "default", 5e-4, 1, 3, 128)
    monkeypatch.setenv("HADAINIT_THREADS", "4")
    monkeypatch.setattr(train, "main", fake)
    result = validate.train_one(spec, str(tmp_path))
    assert calls == [(validate.run_config(spec, tmp_path / "runs" / spec.name), None)]
    assert result["name"] == spec.name and os.environ["HADAINIT_THREADS"] == "4"

    def failing(argv):
        print("hadainit train: --data.batch_size: batch size must be positive", file=sys.stderr)
        return 2

    monkeypatch.setattr(train, "main", failing)
    with pytest.raises(RuntimeError, match=r"default-wd0.0005-s1: hadainit train failed \(exit 2\).*batch size"):
        validate.train_one(spec, str(tmp_path))
    assert os.environ["HADAINIT_THREADS"] == "4"
