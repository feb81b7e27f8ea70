"""The UFM validation run (`hadainit ufm --quick`) end to end: files, and the numbers that back each claim."""

import contextlib
import io
import json

import pytest

from hadainit.experiments import ufm_demo
from hadainit.experiments.cli import main as cli_main
from hadainit.experiments.ufm_demo import run

FIGURES = [
    "dense_vs_reduced.png",
    "leakage.png",
    "lyapunov.png",
    "etf_angle_k8_vs_k4.png",
    "slowdown.png",
    "random_vs_spectral.png",
    "ce_vs_mse.png",
]


@pytest.fixture(scope="module")
def console_run(tmp_path_factory):
    """``hadainit ufm --out OUT --quick`` through the console command's entry, in this process: its folder, the
    report ``run`` returned to the command, and what the command printed (stdout, stderr)."""
    out = tmp_path_factory.mktemp("ufm")
    returned = {}

    def spy(*args, **kwargs):
        returned["report"] = run(*args, **kwargs)
        return returned["report"]

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        mp.setattr(ufm_demo, "run", spy)
        code = cli_main(["ufm", "--out", str(out), "--quick"])
    assert code == 0, stderr.getvalue()
    return out, returned["report"], stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def quick_run(console_run):
    return console_run[:2]


def test_files_written(quick_run):
    out, report = quick_run
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"`{name}`" in md  # every figure is cited next to its claim


def test_headline_numbers_back_the_claims(quick_run):
    _, r = quick_run
    for basis in ("walsh", "fourier"):
        assert r["frozen_vectors"][basis]["max_rel_diff_singular_values"] < 1e-10
        assert r["frozen_vectors"][basis]["max_leakage_W"] < 1e-12
    assert r["leakage"]["walsh (K=16)"]["max"] < 1e-12 and r["leakage"]["fourier (K=10)"]["max"] < 1e-12
    assert r["leakage"]["Paley (K=12)"]["final"] > 1e-2 and r["leakage"]["random (K=16)"]["final"] > 1e-2
    assert r["lyapunov"]["max_increase_V_balanced"] <= 0 and r["lyapunov"]["max_dV_dt_closed_form"] <= 0
    assert r["lyapunov"]["unbalanced_V_rise"] > 0.1
    # U (SPEC 5b): falls on the counterexample and on every random unbalanced flow, while V rose on some
    assert r["lyapunov"]["unbalanced_U_max_step"] < 0 and r["lyapunov"]["unbalanced_U_end"] < r["lyapunov"]["unbalanced_U_start"]
    assert r["lyapunov"]["random_max_rel_step_U"] <= 1e-13 and r["lyapunov"]["random_max_dU_dt_closed_form"] <= 0
    assert r["lyapunov"]["random_V_rose_in"] > 0
    bf = r["lyapunov_beyond_flow"]
    assert [g["lr_over_K"] for g in bf["gd"]] == [0.1, 1.0, 10.0, 100.0]
    assert all(g["runs"] > 0 and g["max_rel_step_U"] == g["max_rel_step_U"] for g in bf["gd"])  # measured, no NaN
    equal = [w for w in bf["weight_decay"] if w["weight_decay"][0] == w["weight_decay"][1]]
    assert equal and all(w["U_rose_in"] == 0 for w in equal)  # the proof covers equal decays
    assert r["etf_angle"]["k8_angle_rise"] > 0.015 and r["etf_angle"]["k8_max_increase_V"] <= 0
    assert r["etf_angle"]["k4_max_angle_increase"] <= 0
    assert 1 < r["slowdown"]["ratio_at_gamma_30"] < r["slowdown"]["ratio_at_gamma_25"] < 1.05
    assert abs(r["slowdown"]["fit_slope_gamma_ge_10"] - 1) < 0.01
    assert r["random_init"]["final_cv_dense"] < r["random_init"]["initial_cv"]
    assert r["ce_vs_mse"]["mse_max_abs_lam_minus_1_at_end"] < 1e-6
    assert r["ce_vs_mse"]["ce_min_lam_at_end"] > r["ce_vs_mse"]["ce_min_lam_at_t_1e6"] > 5


def test_console_command(console_run):
    out, _, stdout, stderr = console_run
    assert "# hadainit: UFM validation run" in stdout
    assert "hadainit ufm" in stderr  # the progress bar goes to stderr
    assert (out / "report.json").exists()
