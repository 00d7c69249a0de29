"""Distribution-shift diagnostics (paper sec. 3.2) on real rMD17 molecules with real GFN2-xTB."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import scaled
from ase import Atoms
from ase.io import write

from ttcalc import load_model
from ttcalc.model.checkpoint import CheckpointError
from ttcalc.data import load_rmd17
from ttcalc.diagnostics.shifts import (CONNECTIVITY, ELEMENTS, FORCE_NORM, Q_RESIDUAL, SIZE, ShiftReport, diagnose,
                           format_table)




def test_in_distribution_benzene_is_not_flagged(tiny_model_path, benzene, prior):
    report = diagnose(benzene, tiny_model_path, prior=prior)
    assert [i.name for i in report.items] == [ELEMENTS, SIZE, FORCE_NORM, CONNECTIVITY, Q_RESIDUAL]
    assert [i.ood for i in report.items] == [False, False, False, False, False] and not report.any_ood
    stats = load_model(tiny_model_path).stats
    # the force-norm item is the prior's mean per-atom |F|, compared with per-frame training statistics
    f = prior.energy_forces(benzene)[1]
    fn = report[FORCE_NORM]
    assert fn.value == pytest.approx(np.linalg.norm(f, axis=1).mean(), rel=1e-12)
    frame = stats.prior_frame_force_norm
    assert fn.z_score == pytest.approx((fn.value - frame["mean"]) / frame["std"], rel=1e-12)
    assert abs(fn.z_score) < 1 and 1 <= fn.percentile <= 99
    # one training size: std = 0, no z-score, and the item says why
    assert report[SIZE].z_score is None and "std = 0" in report[SIZE].detail
    assert report[CONNECTIVITY].z_score < 1 and "r* = 5 Å" in report[CONNECTIVITY].detail


def test_unseen_elements_flag_atomic_features(tiny_model_path, prior):
    uracil = load_rmd17("uracil", "test_01", n=1, seed=0)[0]
    report = diagnose(uracil, tiny_model_path, prior=prior)
    assert report[ELEMENTS].value == ["N", "O"] and report[ELEMENTS].ood is True
    assert report[SIZE].ood is False  # uracil has 12 atoms, like benzene
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    report = diagnose(water, tiny_model_path)  # no prior: the force norm is not computed
    assert report[ELEMENTS].value == ["O"] and report[ELEMENTS].ood is True
    assert report[SIZE].value == 3 and report[SIZE].ood is True
    assert report[FORCE_NORM].ood is None and report[FORCE_NORM].detail == "not computed: needs a prior"
    assert report.any_ood


def test_squeezed_benzene_flags_force_norm(tiny_model_path, benzene, prior):
    report = diagnose(scaled(benzene, 0.85), tiny_model_path, prior=prior)
    fn = report[FORCE_NORM]
    assert fn.ood is True and fn.z_score > 10 and fn.value > 5  # eV/Å; training per-frame mean ~1.2
    assert fn.percentile == 99 and "above the 99 % quantile" in fn.detail
    # Hardly a connectivity shift at the training cutoff: r = 5 Å spans benzene (para H–H ~5.0 Å),
    # so squeezing only closes the last few pairs and the graph is complete, as in a third of the
    # training frames; eq. 5's distance lands at the training q90 (on one side of it or the other,
    # frame by frame), far below the expanded molecule's. Radius refinement still reacts (r* < 5).
    conn = report[CONNECTIVITY]
    assert "complete graph" in conn.detail and "r* = 4.25 Å" in conn.detail
    assert conn.value < 2 * conn.training["q99"]


def test_expanded_benzene_flags_connectivity(tiny_model_path, benzene):
    conn = diagnose(scaled(benzene, 1.3), tiny_model_path)[CONNECTIVITY]
    assert conn.ood is True and conn.z_score > 10 and conn.percentile == 100
    assert "r* = 6.5 Å" in conn.detail


def test_naphthalene_flags_size_and_connectivity(tiny_model_path):
    naphthalene = load_rmd17("naphthalene", "test_01", n=1, seed=0)[0]
    report = diagnose(naphthalene, tiny_model_path)
    assert report[SIZE].value == 18 and report[SIZE].ood is True
    assert report[ELEMENTS].ood is False
    assert report[CONNECTIVITY].ood is True


def test_size_z_score_with_several_training_sizes(tiny_model_path, benzene):
    model = load_model(tiny_model_path)
    model.stats.n_atoms = [12, 18]  # mean 15, std 3
    assert diagnose(benzene, model)[SIZE].z_score == pytest.approx(-1.0)
    assert diagnose(benzene, model)[SIZE].ood is False  # exactly 1 std is not beyond it
    aspirin = load_rmd17("aspirin", "test_01", n=1, seed=0)[0]
    item = diagnose(aspirin, model)[SIZE]
    assert item.z_score == pytest.approx(2.0) and item.ood is True


def test_json_round_trip_and_table(tiny_model_path, benzene, prior):
    report = diagnose(scaled(benzene, 0.85), tiny_model_path, prior=prior)
    text = json.dumps(report.to_dict(), allow_nan=False)
    back = ShiftReport.from_dict(json.loads(text))
    assert back == report and back.to_dict() == report.to_dict() and back.any_ood
    table = format_table(report)
    for name in (ELEMENTS, SIZE, FORCE_NORM, CONNECTIVITY):
        assert name in table
    row = next(line for line in table.splitlines() if line.startswith(FORCE_NORM))
    assert row.rstrip().endswith("YES") and "z=+" in row
    assert "any OOD: YES" in table


def test_cli_diagnose_prints_the_table(tiny_model_path, benzene, tmp_path, capsys):
    from ttcalc.app.cli import main

    path = tmp_path / "benzene.xyz"
    write(path, benzene)
    assert main(["diagnose", str(path), "--model", str(tiny_model_path), "--prior", "none"]) == 0
    out = capsys.readouterr().out
    assert CONNECTIVITY in out and "not computed: needs a prior" in out and "any OOD: no" in out


def test_missing_statistics_and_bad_models_raise(tiny_model_path, benzene, prior, tmp_path):
    model = load_model(tiny_model_path)
    model.stats.spectrum = None
    path = model.save(tmp_path / "nospectrum.pt")
    with pytest.raises(ValueError, match=r"lacks the training statistics .*'spectrum'"):
        diagnose(benzene, path)
    model = load_model(tiny_model_path)
    model.stats.prior_frame_force_norm = {}
    assert diagnose(benzene, model)[FORCE_NORM].ood is None  # without a prior they are not needed
    with pytest.raises(ValueError, match="prior_frame_force_norm"):
        diagnose(benzene, model, prior=prior)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        diagnose(benzene, tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="MultiHeadPotential or a checkpoint path"):
        diagnose(benzene, 42)
    with pytest.raises(ValueError, match="non-empty"):
        diagnose(Atoms(), tiny_model_path)


def test_q_residual_item_flags_an_unseen_molecule(tiny_model_path, benzene, naphthalene):
    """The checkpoint stores the PCA of its training features; benzene sits inside the training
    structures' Q, naphthalene (never seen) far beyond the limit; the table shows the item."""
    stats = load_model(tiny_model_path).stats
    assert stats.q_residual and len(stats.q_residual["train_structure_q"]) == 64  # every training frame
    inside, unseen = diagnose(benzene, tiny_model_path)[Q_RESIDUAL], diagnose(naphthalene, tiny_model_path)[Q_RESIDUAL]
    assert inside.value < inside.training["limit"] < unseen.value and unseen.ood and not inside.ood
    assert "Q-residual" in format_table(diagnose(naphthalene, tiny_model_path))
