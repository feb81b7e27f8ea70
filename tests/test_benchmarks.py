"""The benchmark suite runs end to end (tiny sizes) and writes its JSON; no timing is asserted here."""

import json

from benchmarks.__main__ import main


def test_quick_suite_runs_and_checks_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    names = {row["benchmark"] for row in data["results"]}
    assert names == {
        "import cost",
        "compiled CPU kernels",
        "fwht vs copy and peers",
        "reduced vs dense GD step",
        "reduced GD at scale",
        "spectral_flow to t=1e12",
        "NC metric update vs CNN step",
        "NC metric compute()",
        "initializers",
    }
    for row in data["results"]:
        assert all(v > 0 for v in row["seconds"].values())
        if "max_rel_err" in row:  # fwht, the peers and x @ H compute the same transform
            assert all(err < 1e-5 for err in row["max_rel_err"].values()), row["max_rel_err"]
        if row["benchmark"] in ("fwht vs copy and peers", "reduced GD at scale", "compiled CPU kernels"):
            assert row["isa"] in {r["isa"] for r in data["results"] if "isa" in r}
        if "max_rel_diff_after_3_steps" in row:
            assert row["max_rel_diff_after_3_steps"] < 1e-12
    assert "benchmark" in capsys.readouterr().out
