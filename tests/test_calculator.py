"""TTTCalculator: the ASE contract, physics through ASE, the fast path, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import InputError, PropertyNotImplementedError
from ase.calculators.mixing import SumCalculator
from ase.calculators.lj import LennardJones
from ase.io import read, write
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from ttcalc import TTTCalculator, load_model
from ttcalc.data import load_rmd17


@pytest.fixture(scope="module")
def calc64(tiny_model_path):
    return TTTCalculator(tiny_model_path, dtype="float64", compile=False, disagreement_every=0)


def test_properties_are_float64_numpy_and_exact(calc64, benzene):
    atoms = benzene.copy()
    atoms.calc = calc64
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    energies = atoms.get_potential_energies()
    assert isinstance(e, float) and f.dtype == np.float64 and f.shape == (12, 3)
    assert energies.sum() == pytest.approx(e, rel=1e-12)
    assert calc64.results["free_energy"] == e
    assert set(calc64.implemented_properties) == {"energy", "free_energy", "forces", "energies", "stress"}
    with pytest.raises(PropertyNotImplementedError, match="3-D periodic"):
        atoms.get_stress()


def test_forces_match_finite_differences_through_ase(calc64, benzene):
    atoms = benzene.copy()
    atoms.calc = calc64
    f = atoms.get_forces()
    h = 1e-5
    for i, k in [(0, 0), (7, 2)]:
        p = atoms.positions.copy()
        p[i, k] += h
        atoms.positions = p
        ep = atoms.get_potential_energy()
        p[i, k] -= 2 * h
        atoms.positions = p
        em = atoms.get_potential_energy()
        p[i, k] += h
        atoms.positions = p
        assert -(ep - em) / (2 * h) == pytest.approx(f[i, k], abs=1e-6)


def test_nve_conserves_energy(calc64, benzene):
    atoms = benzene.copy()
    atoms.calc = calc64
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    e0 = atoms.get_total_energy()
    dyn = VelocityVerlet(atoms, 0.25 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    dyn.run(400)  # 100 fs
    dev = np.max(np.abs(np.array(energies) - e0))
    ekin_scale = 1.5 * len(atoms) * units.kB * 300
    assert dev < 0.02 * ekin_scale, f"total energy deviates by {dev:.2e} eV"


def test_langevin_and_bfgs_run_on_a_real_molecule(calc64, benzene):
    atoms = benzene.copy()
    atoms.calc = calc64
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False,
                   rng=np.random.default_rng(0))
    dyn.run(40)
    assert np.isfinite(atoms.get_potential_energy())
    opt = BFGS(atoms, logfile=None)
    converged = opt.run(fmax=0.05, steps=300)
    assert converged and np.abs(atoms.get_forces()).max() < 0.05


def test_works_in_sumcalculator_and_trajectory(calc64, benzene, tmp_path):
    atoms = benzene.copy()
    atoms.calc = calc64
    e_model = atoms.get_potential_energy()
    lj = LennardJones(sigma=1.0, epsilon=0.001, rc=3.0)
    a2 = benzene.copy()
    a2.calc = lj
    e_lj = a2.get_potential_energy()
    atoms.calc = SumCalculator([calc64, lj])
    assert atoms.get_potential_energy() == pytest.approx(e_model + e_lj, rel=1e-10)
    atoms.calc = calc64
    atoms.get_forces()
    json.dumps(calc64.todict())
    with Trajectory(tmp_path / "t.traj", "w") as traj:
        traj.write(atoms)
    back = read(tmp_path / "t.traj")
    assert back.get_potential_energy() == pytest.approx(e_model)


def test_prior_disagreement_survives_extxyz(tiny_model_path, benzene, tmp_path):
    calc = TTTCalculator(tiny_model_path, prior="xtb", compile=False)
    atoms = benzene.copy()
    atoms.calc = calc
    atoms.get_forces()
    d = calc.results["prior_force_disagreement"]
    assert 0 < d < 5
    write(tmp_path / "x.extxyz", atoms)
    assert read(tmp_path / "x.extxyz").info["prior_force_disagreement"] == pytest.approx(d)


def test_model_object_is_copied_not_mutated(tiny_model_path, benzene):
    model = load_model(tiny_model_path)
    calc = TTTCalculator(model, compile=False, disagreement_every=0)
    calc.set_cutoff(4.0)
    assert model.cutoff != 4.0 and calc.cutoff == 4.0


@pytest.mark.parametrize("make, message", [
    (lambda a: Atoms(), "empty"),
    (lambda a: Atoms(a.numbers, positions=np.where(np.arange(36).reshape(12, 3) == 4, np.nan, a.positions)), "NaN"),
    (lambda a: Atoms(a.numbers, positions=np.vstack([a.positions[:11], a.positions[:1] + 0.1])), "overlap"),
    (lambda a: Atoms(a.numbers, positions=a.positions, pbc=True), "zero cell"),
])
def test_bad_input_raises_clear_errors(calc64, benzene, make, message):
    atoms = make(benzene)
    atoms.calc = calc64
    with pytest.raises(InputError, match=message):
        atoms.get_potential_energy()


def test_unseen_elements_warn_or_raise(tiny_model_path, benzene):
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    warn = TTTCalculator(tiny_model_path, compile=False, disagreement_every=0)
    water.calc = warn
    with pytest.warns(UserWarning, match=r"elements \['O'\] were not in the training set"):
        water.get_potential_energy()
    strict = TTTCalculator(tiny_model_path, compile=False, unseen_elements="raise", disagreement_every=0)
    water.calc = strict
    with pytest.raises(InputError, match="not in the training set"):
        water.get_potential_energy()
    with pytest.raises(ValueError, match="unseen_elements"):
        TTTCalculator(tiny_model_path, unseen_elements="ignore")
    with pytest.raises(ValueError, match="ttt must be"):
        TTTCalculator(tiny_model_path, ttt="sometimes")
    with pytest.raises(ValueError, match="needs a prior"):
        TTTCalculator(tiny_model_path, ttt="auto")


def test_compiled_path_matches_eager_and_compiles_once_per_system(tiny_model_path, benzene):
    fast = TTTCalculator(tiny_model_path, compile=True, disagreement_every=0)
    eager = TTTCalculator(tiny_model_path, compile=False, disagreement_every=0)
    frames = load_rmd17("benzene", "test_01", n=4, seed=5)
    for a in frames:
        f_fast = fast.get_forces(a)
        f_eager = eager.get_forces(a)
        assert np.abs(f_fast - f_eager).max() <= 1e-4 * np.abs(f_eager).max()
    ev = next(iter(fast._evaluators.values()))
    assert ev.compiled and ev.n_compiles == 1  # positions changed 4 times, no recompile
    # weights changed in place (as TTT does): the compiled path must see them
    with torch.no_grad():
        for p in fast.model.parameters_of("adaptable"):
            p.mul_(1.01)
        for p in eager.model.parameters_of("adaptable"):
            p.mul_(1.01)
    fast.reset(), eager.reset()
    f_fast, f_eager = fast.get_forces(frames[0]), eager.get_forces(frames[0])
    assert np.abs(f_fast - f_eager).max() <= 1e-4 * np.abs(f_eager).max()
    assert ev.n_compiles == 1
    # a cutoff change (radius refinement) recompiles once and stays correct
    fast.set_cutoff(4.5), eager.set_cutoff(4.5)
    f_fast, f_eager = fast.get_forces(frames[1]), eager.get_forces(frames[1])
    assert np.abs(f_fast - f_eager).max() <= 1e-4 * np.abs(f_eager).max()
    assert ev.n_compiles == 2


def test_stress_for_periodic_cells_matches_ase_numerical_stress(tmp_path):
    from ase.build import bulk

    from ttcalc.model.potential import ModelConfig, MultiHeadPotential
    from ttcalc.model.representation import RepresentationConfig

    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1, num_rbf=8,
                                                                cutoff=4.0)), dtype="float64")
    calc = TTTCalculator(model, dtype="float64", disagreement_every=0)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=2)
    atoms.calc = calc
    stress = atoms.get_stress()
    from ase.calculators.fd import calculate_numerical_stress

    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numeric, atol=1e-7)
