"""Relaxation, the extra-steps protocol (Kreiman & Krishnapriyan 2025, A.3.1) and PES slices."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron
from ase.io import read
from scipy.spatial.transform import Rotation
from threadpoolctl import threadpool_limits

from md_protocols import kabsch_rmsd, pes_along_hessian, relax, relax_extra_steps
from md_protocols.pes import _rigid_basis, finite_difference_hessian, vibrational_modes
from md_protocols.plots import plot_pes
from md_protocols.relax import max_force
from ttcalc.priors import pyscf_calculator
from ttcalc.paths import dataset_path

HAS_PYSCF = importlib.util.find_spec("pyscf") is not None


@pytest.fixture(autouse=True)
def _one_thread():
    # xtb and PySCF are several times faster with one OpenMP thread on 2 shared cores
    with threadpool_limits(1):
        yield


@pytest.fixture
def rattled_cu13():
    atoms = Icosahedron("Cu", 2)
    atoms.rattle(0.05, seed=1)
    return atoms


class _CountingEMT(EMT):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        super().calculate(atoms, properties, system_changes)


@pytest.mark.parametrize("optimizer", ["BFGS", "FIRE", "LBFGS"])
def test_relax_reports_the_steps_it_took(rattled_cu13, optimizer, tmp_path):
    calc = _CountingEMT()
    start = rattled_cu13.positions.copy()
    res = relax(rattled_cu13, calc, fmax=0.01, optimizer=optimizer, trajectory=tmp_path / "opt.traj")
    assert res.converged and res.n_steps > 5
    # one force evaluation for the start and one per step; the trajectory holds the same frames
    assert calc.calls == res.n_steps + 1
    assert len(read(tmp_path / "opt.traj", ":")) == res.n_steps + 1
    assert res.fmax_final < 0.01
    assert res.fmax_final == pytest.approx(np.linalg.norm(res.atoms.get_forces(), axis=1).max())
    assert res.energy < EMT().get_potential_energy(rattled_cu13)
    np.testing.assert_array_equal(rattled_cu13.positions, start)  # relax works on a copy
    again = relax(res.atoms, EMT(), fmax=0.01, optimizer=optimizer)
    assert again.n_steps == 0 and again.converged


def test_max_force_uses_the_given_calculator_on_a_copy(rattled_cu13):
    own = rattled_cu13.copy()
    own.calc = EMT()
    expected = np.linalg.norm(own.get_forces(), axis=1).max()
    assert max_force(own) == pytest.approx(expected)
    assert max_force(rattled_cu13, EMT()) == pytest.approx(expected)
    assert max_force(rattled_cu13, LennardJones()) != pytest.approx(expected)
    assert rattled_cu13.calc is None  # the given calculator went onto a copy


def test_relax_rejects_unknown_optimizer(rattled_cu13):
    with pytest.raises(ValueError, match="optimizer must be one of"):
        relax(rattled_cu13, EMT(), optimizer="GD")


def test_extra_steps_same_calculator_needs_none(benzene_frame):
    xtb = pytest.importorskip("xtb.ase.calculator")
    res = relax_extra_steps(benzene_frame, xtb.XTB(method="GFN2-xTB"), xtb.XTB(method="GFN2-xTB"), fmax=0.01)
    assert res.mlip.converged and res.mlip_steps > 3
    assert res.extra_steps == 0 and res.reference.converged
    assert res.rmsd == pytest.approx(0.0, abs=1e-12)
    assert res.reference_energy == pytest.approx(res.mlip_energy, abs=1e-8)


def test_extra_steps_emt_to_lennard_jones(rattled_cu13):
    # Lennard-Jones Cu (σ = 2.3 Å, ε = 0.4 eV) has its minimum elsewhere than EMT
    res = relax_extra_steps(rattled_cu13, EMT(), LennardJones(sigma=2.3, epsilon=0.4, rc=6.0), fmax=0.01)
    assert res.converged
    assert res.extra_steps > 0 and res.rmsd > 0.01
    assert res.mlip_steps == res.mlip.n_steps and res.extra_steps == res.reference.n_steps
    assert res.mlip_energy == pytest.approx(EMT().get_potential_energy(res.mlip.atoms))
    assert res.reference_energy < res.reference_energy_at_mlip_minimum
    assert res.rmsd == pytest.approx(kabsch_rmsd(res.mlip.atoms.positions, res.reference.atoms.positions))


def test_kabsch_rmsd_ignores_rigid_motion_and_measures_the_rest():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 3))
    b = Rotation.from_euler("zyx", [40, -70, 15], degrees=True).apply(a) + [1.0, -2.0, 3.0]
    assert kabsch_rmsd(a, b) == pytest.approx(0.0, abs=1e-12)
    shifted = a.copy()
    shifted[:5, 0] += 0.3
    shifted[5:, 0] -= 0.3  # zero net translation: no rotation can undo a pure shear of this kind
    assert 0 < kabsch_rmsd(a, shifted) <= 0.3 + 1e-12
    mirrored = a * [1, 1, -1]  # reflections are not allowed
    assert kabsch_rmsd(a, mirrored) > 0.1
    with pytest.raises(ValueError, match="equal shape"):
        kabsch_rmsd(a, a[:-1])


@pytest.mark.skipif(not HAS_PYSCF, reason="pyscf (optional extra ttcalc[dft]) is not installed")
def test_pyscf_calculator_forces_are_energy_gradients():
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]])
    calc = pyscf_calculator(xc="PBE", basis="def2-SVP")
    energy = calc.get_potential_energy(h2)
    forces = calc.get_forces(h2)
    assert -32.0 < energy < -31.0  # PBE H2 ≈ -1.16 Hartree = -31.6 eV
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-6)
    step = 1e-3
    plus, minus = h2.copy(), h2.copy()
    plus.positions[1, 2] += step
    minus.positions[1, 2] -= step
    numerical = -(calc.get_potential_energy(plus) - calc.get_potential_energy(minus)) / (2 * step)
    assert forces[1, 2] == pytest.approx(numerical, abs=1e-3)  # eV/Å
    assert forces[1, 2] < 0  # 0.8 Å is stretched: the bond pulls back


@pytest.mark.skipif(not HAS_PYSCF, reason="pyscf (optional extra ttcalc[dft]) is not installed")
def test_pyscf_density_fitting_keeps_the_forces_and_changes_the_fingerprint():
    from ttcalc.priors import CalculatorPrior

    water = Atoms("OH2", positions=[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.45]])
    exact, fitted = pyscf_calculator(), pyscf_calculator(density_fit=True)
    np.testing.assert_allclose(fitted.get_forces(water), exact.get_forces(water), atol=5e-3)  # eV/Å
    assert CalculatorPrior(exact).fingerprint() != CalculatorPrior(fitted).fingerprint()


@pytest.mark.skipif(not HAS_PYSCF, reason="pyscf (optional extra ttcalc[dft]) is not installed")
def test_pyscf_settings_live_in_parameters_and_a_change_recomputes():
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    calc = pyscf_calculator(basis="sto-3g")
    small = calc.get_potential_energy(h2)
    assert calc.parameters["basis"] == "sto-3g" and calc.parameters["xc"] == "PBE"
    calc.set(basis="def2-SVP")  # ASE's contract: a changed setting clears the results
    assert calc.results == {}
    assert calc.get_potential_energy(h2) < small - 0.05  # the larger basis lowers the energy (variational)


def test_pyscf_calculator_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyscf", None)
    with pytest.raises(ImportError, match=r"pip install ttcalc\[dft\]"):
        pyscf_calculator()


# ---------------------------------------------------------------- PES along Hessian directions


@pytest.fixture
def benzene_frame():
    data = np.load(dataset_path("rmd17", "rmd17_benzene.npz"))
    return Atoms(numbers=data["z"], positions=data["R"][0])


def test_rigid_modes_are_projected_out(rattled_cu13):
    hessian = finite_difference_hessian(rattled_cu13, EMT(), delta=0.005)
    assert np.allclose(hessian, hessian.T)
    values, vectors = vibrational_modes(hessian, rattled_cu13.positions)
    assert values.shape == (3 * 13 - 6,)
    rigid = _rigid_basis(rattled_cu13.positions)
    assert rigid.shape[1] == 6
    assert np.abs(rigid.T @ vectors).max() < 1e-10
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(33), atol=1e-10)
    linear = _rigid_basis(np.array([[0, 0, 0], [0, 0, 1.1], [0, 0, 2.2]]))
    assert linear.shape[1] == 5  # a linear molecule has only two rotations


def test_pes_along_softest_hessian_directions_of_water(tmp_path):
    xtb = pytest.importorskip("xtb.ase.calculator")
    water = relax(molecule("H2O"), xtb.XTB(method="GFN2-xTB"), fmax=0.001).atoms
    grid = pes_along_hessian(water, xtb.XTB(method="GFN2-xTB"), n_grid=11, extent=0.1,
                             reference_calc=xtb.XTB(method="GFN1-xTB"))
    assert grid.energies.shape == grid.reference_energies.shape == (11, 11)
    # the centre is the relaxed geometry (xtb restarts its SCF from the last density: ~1e-11 eV noise)
    assert grid.energies[5, 5] == pytest.approx(0.0, abs=1e-8)
    assert grid.reference_energies[5, 5] == pytest.approx(0.0, abs=1e-8)
    assert grid.modes == "softest" and 0 < grid.curvatures[0] < grid.curvatures[1]
    # a minimum: every displaced energy is higher, and along each axis E ≈ k a² / 2 near the centre
    assert np.delete(grid.energies.ravel(), 60).min() > 0
    h = grid.displacements[1] - grid.displacements[0]
    for axis, k in enumerate(grid.curvatures):
        line = grid.energies[:, 5] if axis == 0 else grid.energies[5, :]
        assert (line[4] + line[6] - 2 * line[5]) / h**2 == pytest.approx(k, rel=0.05)
    d = grid.directions.reshape(2, -1)
    np.testing.assert_allclose(d @ d.T, np.eye(2), atol=1e-10)
    # the softest water mode is the bend: it moves the H atoms most and changes the angle
    bend = water.copy()
    bend.positions += 0.1 * grid.directions[0]
    assert abs(bend.get_angle(1, 0, 2) - water.get_angle(1, 0, 2)) > 3.0
    fig = plot_pes(grid, tmp_path / "pes.png")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["model", "reference"]
    assert "(Å)" in fig.axes[0].get_xlabel() and "(eV)" in fig.axes[-1].get_ylabel()
    with pytest.raises(ValueError, match="softest"):
        pes_along_hessian(water, xtb.XTB(method="GFN2-xTB"), modes="random")
