import subprocess
import sys

import pytest

from hadainit.experiments.cli import main as cli_main
from hadainit.experiments.demo import run_demo


def test_demo_separates_spectral_from_other_inits():
    rows = {row["init"].split()[0]: row for row in run_demo(steps=300)}
    assert rows["walsh"]["max_leakage_W"] < 1e-13
    assert rows["fourier"]["max_leakage_W"] < 1e-13
    assert rows["Paley-12"]["leakage_W"] > 1e-2
    assert rows["small"]["leakage_W"] > 1e-2
    assert all(row["final_loss"] < 0.1 for row in rows.values())


def test_console_command_runs_the_demo():
    out = subprocess.run(
        [sys.executable, "-m", "hadainit.experiments.cli", "demo", "--steps", "20"],
        capture_output=True, text=True, check=True,
    )
    assert "walsh spectral" in out.stdout and "Paley-12" in out.stdout
    assert cli_main(["nonsense"]) == 2


@pytest.mark.slow  # tests/test_validation_run.py's quick run executes this section too; this checks its numbers
def test_more_classes_than_features_panel(tmp_path):
    import torch

    from hadainit.experiments.ufm_demo import _kd_report, etf_angle_example, more_classes_than_features

    r = more_classes_than_features(tmp_path, torch.Generator().manual_seed(0), quick=True)
    data = (tmp_path / r["figure"]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    for name, row in r["frozen"].items():
        assert row["max_rel_diff_dense_vs_reduced"] < 1e-12 and row["max_leakage_W"] < 1e-13, name
        assert row["max_abs_off_set"] == 0.0, name  # the modes off S stay exactly 0
    auto, first = r["approach"]["walsh K=16 d=5 auto"], r["approach"]["walsh K=16 d=5 first"]
    assert first["t_star"] == 0.0  # the truncation's modes 1..4 span only 3 bits: classes j and j ^ 8 merge
    # auto = {1, 2, 4, 8, 15}: every shift has 2 or more odd modes, t* = (2/16)(2/5), 3/4 of the ETF's 1/15
    assert abs(auto["etf_fraction_t_star"] - 0.75) < 1e-9
    assert 0.99 < auto["reached_fraction_of_t_star"] <= 1 + 1e-9
    fourier = r["approach"]["fourier K=12 d=5 auto"]
    assert fourier["t_star"] > r["approach"]["fourier K=12 d=5 first"]["t_star"] > 0
    assert r["spec_example_max_rel_error_at_1e15"] < 0.02
    row = r["choice_table"][0]
    assert row["auto_t_star"] > row["first_t_star"] and row["auto_t_star"] >= row["random_t_star_median"]
    assert all(v["of"] == r["lyapunov"]["pairs"] for v in r["lyapunov"].values() if isinstance(v, dict))
    md = _kd_report({"more_classes_than_features": r, "frozen_vectors": {"walsh": {"steps": 100}}})
    assert "## 7. More classes than features" in md and f"`{r['figure']}`" in md
    etf = etf_angle_example(tmp_path, torch.Generator().manual_seed(0), quick=True)  # issue 22 item 8: K = 4 panel
    assert (tmp_path / etf["figure"]).stat().st_size > 10_000 and etf["k4_max_angle_increase"] <= 0
