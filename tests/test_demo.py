import subprocess
import sys

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
