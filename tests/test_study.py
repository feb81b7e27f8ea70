"""`hadainit validate --quick` end to end on the real embedded data, and its numbers recomputed from the CSVs."""

import csv
import json
import math
import statistics

import numpy as np
import pytest

from hadainit.experiments import validate
from hadainit.experiments.study import NC1_THRESHOLD, RISE_TOL


@pytest.fixture(scope="module")
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
                 "distances.png", "slowdown.png", "forecast.png"):
        assert (out / name).is_file(), name
    assert report["config"]["runs"] == 12 and report["config"]["seeds"] == 2
    text = (out / "report.md").read_text()
    for heading in ("Does the Hadamard init change", "tractable regime", "Is V monotone", "first rise",
                    "slowdown", "forecaster"):
        assert heading in text, heading


def test_group_means_are_recomputable_from_the_csvs(study):
    out, report = study
    group = report["groups"]["digits-mlp|hadamard|0.0005"]
    names = [r["name"] for r in report["runs"] if r["setup"] == "digits-mlp" and r["init"] == "hadamard"]
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
    assert validate.main(["--out", str(out), "--analyze-only"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["groups"] == report["groups"]
    assert validate.main(["--quick", "--out", str(out)]) == 2
    assert "not empty: pass --overwrite" in capsys.readouterr().err
    assert validate.main(["--quick", "--out", str(tmp_path / "x"), "--seeds", "1"]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "runs.json").write_text("[{")
    assert validate.main(["--out", str(tmp_path / "bad"), "--analyze-only"]) == 2


def test_a_forecast_score_recomputed_from_the_csv(study):
    from hadainit.ufm.forecast import evaluate_forecast

    out, report = study
    run = next(r for r in report["runs"] if "forecast" in r["values"]["forecast"])
    rows = _csv(out, run["name"])
    modes = sorted((k for k in rows[0] if k.startswith("spectral_eval/lam_") and k[18:].isdigit()),
                   key=lambda k: int(k[18:]))
    points = [(float(r["epochs_done"]), [float(r[m]) for m in modes]) for r in rows if r.get(modes[0])]
    result = evaluate_forecast([e for e, _ in points], [lam for _, lam in points], fit_until=run["epochs"] / 3)
    for name in ("forecast", "baseline"):
        for key in ("spectrum", "margin"):
            assert math.isclose(result[name][key], run["values"]["forecast"][name][key], rel_tol=1e-9), (name, key)


# ---------------------------------------------------- the report's statistics
def test_significance_is_welchs_t_test_over_the_seeds():
    """beyond_noise agrees with scipy's Welch t-test (two-sided, 5%) on random seed samples."""
    from scipy.stats import ttest_ind

    from hadainit.experiments.study import beyond_noise, summary

    rng = np.random.default_rng(0)
    for trial in range(200):
        n1, n2 = rng.integers(2, 5, size=2)
        a, b = rng.normal(0, 1, n1), rng.normal(rng.normal(0, 2), rng.uniform(0.2, 2), n2)
        got = beyond_noise(summary(list(a)), summary(list(b)))
        p = ttest_ind(a, b, equal_var=False).pvalue
        assert got["beyond_noise"] == (p < 0.05), (trial, p, got)
    # two seeds each, a difference of 2.5 standard errors: beyond 2 SE, but not significant with so few seeds
    got = beyond_noise({"mean": 2.5, "std": 1.0, "n": 2}, {"mean": 0.0, "std": 1.0, "n": 2})
    assert got["diff"] / got["se"] == 2.5 and not got["beyond_noise"]


def test_never_is_printed_as_never():
    from hadainit.experiments.study import _fmt

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
    assert text.startswith("# hadainit real:") and "Quick run" not in text
    assert "cannot be judged" in text and "exceeds seed noise" not in text and "is significant" not in text
    assert again["config"]["command"] == "real"


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


def test_zero_spread_on_both_sides_is_not_judged():
    from hadainit.experiments.study import beyond_noise, summary

    got = beyond_noise(summary([5.0, 5.0]), summary([6.0, 6.0]))  # ties on the log-spaced measurement grid
    assert got["beyond_noise"] is None and got["diff"] == -1.0


def test_slowdown_window_from_epoch_zero(study, tmp_path):
    from hadainit.experiments import slowdown

    out, report = study
    run = report["runs"][0]["name"]
    assert slowdown.main([str(out / "runs" / run), "--out", str(tmp_path), "--min-epoch", "0"]) == 0
    result = json.loads((tmp_path / "slowdown.json").read_text())
    assert min(result["epochs"]) > 0 and 0 <= result["r2"] <= 1
