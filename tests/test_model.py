"""MultiHeadPotential: physics (forces, stress, invariances), parameter groups, checkpoints."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial.transform import Rotation

from ttcalc.model.batch import collate
from ttcalc.model.checkpoint import CheckpointError, read_checkpoint
from ttcalc.data import load_rmd17
from ttcalc.model.potential import ModelConfig, MultiHeadPotential
from ttcalc.model.representation import RepresentationConfig


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(1)
    m = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=2, num_rbf=16)),
                           dtype="float64")
    m.heads["main"].set_statistics({1: -13.6, 6: -1030.0, 7: -1480.0, 8: -2040.0, 29: -100.0}, 1.0)
    return m


def _energy_forces(model, atoms, dense=None):
    out = model(collate([atoms], model.cutoff, dtype=model.dtype, dense=dense))["main"]
    return float(out["energy"][0].detach()), out["forces"].detach().numpy()


@pytest.mark.parametrize("dense", [True, False])
def test_forces_match_finite_differences(model64, dense):
    atoms = load_rmd17("uracil", "test_01", n=1)[0]
    _, f = _energy_forces(model64, atoms, dense)
    h = 1e-5
    for i, k in [(0, 0), (5, 1), (11, 2)]:
        a = atoms.copy()
        a.positions[i, k] += h
        ep, _ = _energy_forces(model64, a, dense)
        a.positions[i, k] -= 2 * h
        em, _ = _energy_forces(model64, a, dense)
        assert -(ep - em) / (2 * h) == pytest.approx(f[i, k], abs=1e-6)


def test_rotation_translation_permutation_invariance(model64):
    atoms = load_rmd17("aspirin", "test_01", n=1)[0]
    e0, f0 = _energy_forces(model64, atoms)
    R = Rotation.random(random_state=3).as_matrix()
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T + np.array([3.0, -1.0, 7.5])
    e1, f1 = _energy_forces(model64, rot)
    assert e1 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(f1, f0 @ R.T, atol=1e-9)
    perm = np.random.default_rng(0).permutation(len(atoms))
    e2, f2 = _energy_forces(model64, atoms[perm])
    assert e2 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(f2, f0[perm], atol=1e-9)


def test_stress_matches_numerical_stress():
    torch.manual_seed(0)
    m = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1, num_rbf=8, cutoff=4.0)),
                           dtype="float64")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    out = m(collate([atoms], m.cutoff, dtype=torch.float64), stress=True)["main"]
    stress = out["stress"][0].detach().numpy()
    eps = 1e-5
    numeric = np.zeros((3, 3))
    cell0 = atoms.cell.array.copy()
    for i in range(3):
        for j in range(3):
            es = []
            for s in (+1, -1):
                strain = np.eye(3)
                strain[i, j] += s * eps
                a = atoms.copy()
                a.set_cell(cell0 @ strain, scale_atoms=True)
                es.append(float(m(collate([a], m.cutoff, dtype=torch.float64), forces=False)["main"]["energy"][0]))
            numeric[i, j] = (es[0] - es[1]) / (2 * eps) / atoms.get_volume()
    np.testing.assert_allclose(0.5 * (stress + stress.T), 0.5 * (numeric + numeric.T), atol=1e-8)


def test_parameter_groups_and_freezing(model64):
    groups = model64.parameter_groups()
    assert set(groups) == {"representation", "main", "prior", "adaptable", "properties"}
    assert groups["properties"] == []  # no property heads on a force-field model
    assert set(groups["adaptable"]) < set(groups["representation"])
    assert all(n.startswith(("representation.net.tensor_embedding.", "representation.net.layers.0."))
               for n in groups["adaptable"])
    model64.set_trainable("main")
    assert {n for n, p in model64.named_parameters() if p.requires_grad} == set(groups["main"])
    with pytest.raises(KeyError, match="unknown parameter group"):
        model64.set_trainable("decoder")
    model64.requires_grad_(False)


def test_default_dtype_is_never_touched():
    before = torch.get_default_dtype()
    MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1)), dtype="float64")
    assert torch.get_default_dtype() == before
    with pytest.raises(ValueError, match="unsupported dtype"):
        MultiHeadPotential(dtype="float16")


def test_save_load_roundtrip_is_exact(model64, tmp_path):
    atoms = load_rmd17("benzene", "test_01", n=1)[0]
    path = model64.save(tmp_path / "m.pt")
    loaded = MultiHeadPotential.load(path)
    assert loaded.dtype == torch.float64
    e0, f0 = _energy_forces(model64, atoms)
    e1, f1 = _energy_forces(loaded, atoms)
    assert e0 == e1
    np.testing.assert_array_equal(f0, f1)


def test_a_refined_cutoff_survives_save_and_load(model64, tmp_path):
    atoms = load_rmd17("benzene", "test_01", n=1)[0]
    model = copy.deepcopy(model64)
    model.set_cutoff(3.5)
    loaded = MultiHeadPotential.load(model.save(tmp_path / "rr.pt"))
    assert loaded.cutoff == 3.5
    e0, f0 = _energy_forces(model, atoms)
    e1, f1 = _energy_forces(loaded, atoms)
    assert e0 == e1 and e1 != _energy_forces(model64, atoms)[0]
    np.testing.assert_array_equal(f0, f1)


def test_bad_checkpoints_give_clear_errors(model64, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(tmp_path / "junk.pt")
    path = model64.save(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    for field, value, message in [("stats", None, "lacks required"), ("version", 99, "format version 99"),
                                  ("units", {"energy": "kcal/mol", "length": "Angstrom"}, "uses units")]:
        bad = dict(ckpt)
        if value is None:
            bad.pop(field)
        else:
            bad[field] = value
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=message):
            MultiHeadPotential.load(tmp_path / "bad.pt")
    bad = dict(ckpt)
    bad["config"] = {**ckpt["config"], "head_hidden": 7}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights do not match"):
        MultiHeadPotential.load(tmp_path / "bad.pt")


def test_equivariant_transformer_option_is_conservative_and_invariant(tmp_path):
    torch.manual_seed(0)
    m = MultiHeadPotential(ModelConfig(RepresentationConfig(model="equivariant-transformer", hidden_channels=16,
                                                            num_layers=1, num_rbf=8, num_heads=2)),
                           dtype="float64")
    atoms = load_rmd17("benzene", "test_01", n=1)[0]
    e0, f0 = _energy_forces(m, atoms)
    h = 1e-5
    a = atoms.copy()
    a.positions[2, 1] += h
    ep, _ = _energy_forces(m, a)
    a.positions[2, 1] -= 2 * h
    em, _ = _energy_forces(m, a)
    assert -(ep - em) / (2 * h) == pytest.approx(f0[2, 1], abs=1e-6)
    R = Rotation.random(random_state=1).as_matrix()
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T
    e1, f1 = _energy_forces(m, rot)
    assert e1 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(f1, f0 @ R.T, atol=1e-8)
    loaded = MultiHeadPotential.load(m.save(tmp_path / "et.pt"))
    assert _energy_forces(loaded, atoms)[0] == e0


@pytest.mark.parametrize("name,prior", [("md17-abu", "xtb"), ("md17-abu-sgdml", "sgdml")])
def test_shipped_models_load_with_their_training_statistics(name, prior):
    from ttcalc import load_pretrained

    model = load_pretrained(name)
    assert isinstance(model, MultiHeadPotential)
    assert set(model.heads) == {"main", "prior"}
    assert model.stats.molecules == ["aspirin", "benzene", "uracil"] and model.stats.prior == prior
    assert model.stats.spectrum is not None and model.stats.prior_loss is not None
    with pytest.raises(KeyError, match="available"):
        load_pretrained("md17-everything")


@pytest.mark.parametrize("name", ["md17-abu", "md17-abu-sgdml"])
def test_the_rebuild_chain_ends_in_the_shipped_models_config(name, monkeypatch):
    """The last config of ``CONFIGS[name]`` is the run that wrote the shipped weights (its warm
    start aside: the file it read was renamed once a later version replaced it)."""
    from pathlib import Path

    from ttcalc.model import pretrained
    from ttcalc.train.config import load_config

    root = Path(__file__).resolve().parents[1]
    assert all((root / c).is_file() for c in pretrained.CONFIGS[name])
    shipped = read_checkpoint(pretrained.pretrained_path(name))["metadata"]["train_config"]
    last = load_config(root / pretrained.CONFIGS[name][-1]).to_dict()
    assert {**shipped, "init_checkpoint": None} == {**last, "init_checkpoint": None}
    monkeypatch.setitem(pretrained.PRETRAINED, name, "not-installed.pt")
    with pytest.raises(FileNotFoundError, match="then `ttcalc train --config " + pretrained.CONFIGS[name][-1]):
        pretrained.pretrained_path(name)
