"""The ``ttcalc`` command line on real data: eval, diagnose and md print what they measured."""
from __future__ import annotations

import json

import pytest
from ase.io import write

from ttcalc.app.cli import main
from ttcalc.data import load_rmd17


def test_eval_prints_errors_against_rmd17_labels(tiny_model_path, capsys):
    assert main(["eval", "--model", str(tiny_model_path), "--data", "benzene", "--n", "4"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_frames"] == 4 and 0 < metrics["force_mae_meV_A"] < 5000
    assert metrics["energy_mae_offset_meV"] <= metrics["energy_mae_meV"] + 1e-9


def test_diagnose_flags_unseen_elements(tiny_model_path, tmp_path, capsys):
    path = tmp_path / "uracil.xyz"
    write(path, load_rmd17("uracil", "test_01", n=1)[0])
    assert main(["diagnose", str(path), "--model", str(tiny_model_path)]) == 0
    out = capsys.readouterr().out
    elements = next(line for line in out.splitlines() if line.startswith("atomic features: elements"))
    assert "N" in elements and "O" in elements and elements.rstrip().endswith("YES")


def test_md_runs_and_reports_status(tiny_model_path, tmp_path, capsys):
    path = tmp_path / "benzene.xyz"
    write(path, load_rmd17("benzene", "test_01", n=1)[0])
    traj = tmp_path / "md.traj"
    code = main(["md", str(path), "--model", str(tiny_model_path), "--time-ps", "0.01", "--quiet",
                 "--trajectory", str(traj)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["status"] == "finished" and summary["steps"] == 20
    assert traj.stat().st_size > 0


def test_bad_arguments_exit_with_usage():
    with pytest.raises(SystemExit):
        main(["md", "x.xyz", "--ensemble", "npt"])
