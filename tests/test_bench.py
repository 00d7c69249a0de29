"""The MD benchmark runner end to end on a tiny budget: variants, metrics, tables and plots."""
from __future__ import annotations

import json

import numpy as np

from ttcalc.app.benchmark import BenchConfig, run_benchmark


def test_benchmark_runner_reports_every_variant(tiny_model_path, tmp_path):
    cfg = BenchConfig(model=str(tiny_model_path), molecules=["benzene"], seeds=1, time_ps=0.01,
                      ttt=True, rr=False, prior="xtb", ensembles=["nvt", "nve"], processes=1,
                      output=str(tmp_path), n_test=4, log_interval=5,
                      ttt_overrides={"n_frames": 8, "max_steps": 3, "md_interval": 2, "eval_every": 1,
                                     "stop_at_id_loss": False, "patience": 10})
    run_benchmark(cfg, progress=False)
    res = json.loads((tmp_path / "results.json").read_text())
    variants = res["molecules"]["benzene"]["variants"]
    assert set(variants) == {"prior", "mlip", "mlip+ttt"}
    for name, v in variants.items():
        assert v["errors"]["n_frames"] == 4 and np.isfinite(v["errors"]["force_mae_meV_A"])
        for ens in ("nvt", "nve"):
            run = v[ens]["runs"][0]
            assert run["status"] == "finished", run
            assert 0.01 <= run["stable_ps"] <= 0.01 + 0.0025 + 1e-9  # the full run (+ the t=0 frame)
        assert "drift" in v["nve"]["runs"][0]
    # the prior evaluated against the very labels it produced would be exact; against PBE it is not
    assert variants["prior"]["errors"]["force_mae_meV_A"] > 1.0
    assert res["molecules"]["benzene"]["ttt"]["steps"] == 3
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in variants)
    for png in ("benzene_hr.png", "benzene_bonds.png", "benzene_pes_mlip.png", "benzene_pes_mlip+ttt.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_markdown_marks_runs_that_stopped_short():
    from ttcalc.app.benchmark import markdown

    stab = {"mean": 70.0, "std": 0.0, "n": 2, "n_stable_full": 0}
    res = {"molecules": {"naphthalene": {"variants": {
        "full": {"errors": {"force_mae_meV_A": 49.4, "energy_mae_offset_meV": 15.6},
                 "nvt": {"stability": {**stab, "mean": 100.0}, "hr_mae": 0.13, "simulated_ps": 100, "target_ps": 100}},
        "short": {"errors": {"force_mae_meV_A": 49.4, "energy_mae_offset_meV": 15.6},
                  "nve": {"stability": stab, "simulated_ps": 70, "target_ps": 100,
                          "runs": [{"drift": {"slope_meV_per_atom_per_ps": d}} for d in (1.2e-4, -3.4e-4)]}}}}}}
    table = markdown(res)
    full_row = next(line for line in table.splitlines() if line.startswith("| full |"))
    short_row = next(line for line in table.splitlines() if line.startswith("| short |"))
    assert "100.0 ± 0.0 (2)" in full_row and "stopped" not in full_row
    assert "70.0 ± 0.0 (2), run stopped at 70 of 100 ps" in short_row
    # the drift cell is the worst seed's slope, not a mean that rounds to zero
    assert short_row.endswith("| -0.00034 |") and full_row.endswith("| – |")


def test_long_md_prior_runs_chunked_and_resumed_equal_one_run(tmp_path):
    """``long_md.py --prior``: chunks, and a job stopped and resumed, reproduce one uninterrupted run."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "md17_unseen" / "long_md.py"

    def run(label, time_ps, chunk_ps, *extra):
        cmd = [sys.executable, str(script), "--prior", "xtb", "--label", label, "--molecule", "toluene",
               "--ensemble", "nve", "--seeds", "2", "--log-interval", "4", "--time-ps", str(time_ps),
               "--chunk-ps", str(chunk_ps), "--out", str(tmp_path), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((tmp_path / f"toluene-{label}-nve.json").read_text())

    one = run("one", 0.04, 0.04)
    partial = run("cut", 0.02, 0.01)  # a job stopped at 0.02 ps ...
    assert partial["simulated_ps"] == 0.02 and all(r["status"] == "finished" for r in partial["runs"])
    resumed = run("cut", 0.04, 0.01, "--resume")  # ... continued to 0.04 ps
    assert resumed["simulated_ps"] == one["simulated_ps"] == 0.04
    for a, b in zip(one["runs"], resumed["runs"]):
        assert a["status"] == b["status"] == "finished"
        assert a["hr"] == b["hr"] and a["drift"] == b["drift"]
    # without --resume a new job starts over: its result is that of 0.02 ps again, not 0.04
    again = run("cut", 0.02, 0.01)
    assert again["runs"][0]["drift"] == partial["runs"][0]["drift"]
