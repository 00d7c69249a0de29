"""ttcalc.priors on real rMD17 / mlearn data with the real backends (xtb-python, tblite, sgdml, ASE)."""
from __future__ import annotations

import pickle
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from ase.constraints import FixAtoms
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

import ttcalc.priors.sgdml as sgdml_module
from ttcalc.paths import dataset_path
from ttcalc.priors import (
    CalculatorPrior,
    EMTPrior,
    LJPrior,
    Prior,
    PriorCalculator,
    PriorError,
    SGDMLPrior,
    XTBPrior,
    make_prior,
)
from ttcalc.priors.sgdml_compat import ensure_numpy_compat, gdml_trainer, make_dataset

KCAL_MOL_IN_EV = units.kcal / units.mol
HARTREE, BOHR = units.Hartree, units.Bohr
BACKENDS = ("xtb", "tblite")


# ----------------------------------------------------------------------------- rMD17 fixture
def _rmd17(name: str) -> dict[str, np.ndarray]:
    """The rMD17 arrays: z, R [Å], E [kcal/mol], F [kcal/mol/Å] and the official splits."""
    with np.load(dataset_path("rmd17", f"rmd17_{name}.npz")) as data:
        return {key: data[key] for key in data.files}


def _frames(data: dict[str, np.ndarray], indices) -> list[Atoms]:
    """Atoms with SinglePointCalculator labels in eV and eV/Å."""
    frames = []
    for i in indices:
        atoms = Atoms(numbers=data["z"].astype(int), positions=data["R"][i].astype(np.float64))
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=float(data["E"][i]) * KCAL_MOL_IN_EV,
            forces=data["F"][i].astype(np.float64) * KCAL_MOL_IN_EV,
        )
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def naphthalene() -> dict[str, np.ndarray]:
    return _rmd17("naphthalene")


@pytest.fixture(scope="module")
def benzene() -> dict[str, np.ndarray]:
    return _rmd17("benzene")


def _central_difference_forces(prior: Prior, atoms: Atoms, h: float, coords) -> np.ndarray:
    """-dE/dx_(i,k) by central differences for the listed (atom, axis) pairs."""
    out = []
    for i, k in coords:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        out.append(-(prior.energy_forces(plus)[0] - prior.energy_forces(minus)[0]) / (2 * h))
    return np.array(out)


# ----------------------------------------------------------------------------- xTB
def _direct_xtb(backend: str, atoms: Atoms) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (eV) and forces (eV/Å) straight from the backend library."""
    numbers, positions = atoms.numbers, atoms.positions / BOHR
    if backend == "xtb":
        from xtb.interface import Calculator
        from xtb.libxtb import VERBOSITY_MUTED
        from xtb.utils import get_method

        calc = Calculator(get_method("GFN2-xTB"), numbers, positions)
        calc.set_verbosity(VERBOSITY_MUTED)
        res = calc.singlepoint()
        energy, gradient = res.get_energy(), res.get_gradient()
    else:
        from tblite.interface import Calculator

        calc = Calculator("GFN2-xTB", numbers, positions, logger=lambda message: None)
        calc.set("verbosity", 0)
        res = calc.singlepoint()
        energy, gradient = res.get("energy"), res.get("gradient")
    return energy * HARTREE, -gradient * HARTREE / BOHR


@pytest.mark.parametrize("backend", BACKENDS)
def test_xtb_prior_matches_direct_backend_call(backend, naphthalene):
    first, second = _frames(naphthalene, naphthalene["train_01"][:2])
    prior = XTBPrior(backend=backend)
    prior.energy_forces(first)
    backend_calc = prior._calc
    # second geometry, same species: the backend calculator is updated in place, not rebuilt
    energy, forces = prior.energy_forces(second)
    assert prior._calc is backend_calc
    ref_energy, ref_forces = _direct_xtb(backend, second)
    assert energy == pytest.approx(ref_energy, rel=1e-8)
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=1e-6)
    # GFN2-xTB is a different level of theory than rMD17's PBE: forces correlate but are not equal
    dft_forces = second.get_forces()
    assert np.corrcoef(forces.ravel(), dft_forces.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("backend", BACKENDS)
def test_xtb_prior_rebuilds_backend_when_species_change(backend, naphthalene, benzene):
    prior = XTBPrior(backend=backend)
    prior.energy_forces(_frames(naphthalene, [0])[0])
    benz = _frames(benzene, [benzene["test_01"][0]])[0]
    energy, forces = prior.energy_forces(benz)
    ref_energy, ref_forces = _direct_xtb(backend, benz)
    assert energy == pytest.approx(ref_energy, rel=1e-8)
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_xtb_forces_are_minus_energy_gradient(backend, benzene):
    atoms = _frames(benzene, [benzene["train_01"][3]])[0]
    prior = XTBPrior(backend=backend)
    _, forces = prior.energy_forces(atoms)
    coords = [(i, k) for i in range(len(atoms)) for k in range(3)]
    fd = _central_difference_forces(prior, atoms, h=1e-3, coords=coords)
    assert np.abs(forces).max() > 0.1  # a non-equilibrium MD frame: the comparison is not trivially 0 = 0
    np.testing.assert_allclose(forces.ravel(), fd, rtol=0, atol=1e-3)


def test_xtb_and_tblite_agree_on_gfn2(naphthalene):
    """Two implementations of GFN2-xTB: energies within 1e-4 eV, forces within 5e-4 eV/Å.

    (Measured on this frame: |ΔE| ~ 5e-7 eV, max |ΔF| ~ 7e-5 eV/Å.)
    """
    atoms = _frames(naphthalene, [naphthalene["test_01"][0]])[0]
    e_xtb, f_xtb = XTBPrior(backend="xtb").energy_forces(atoms)
    e_tbl, f_tbl = XTBPrior(backend="tblite").energy_forces(atoms)
    assert abs(e_xtb - e_tbl) < 1e-4
    np.testing.assert_allclose(f_xtb, f_tbl, rtol=0, atol=5e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_xtb_scf_failure_raises_prior_error(backend, naphthalene):
    atoms = _frames(naphthalene, [0])[0]
    squashed = atoms.copy()
    squashed.positions *= 0.01  # all 18 atoms within ~0.04 Å: the SCF cannot converge
    prior = XTBPrior(backend=backend)
    with pytest.raises(PriorError, match=r"C10H8.*(converge|eigenvalue|[Dd]iagonali)"):
        prior.energy_forces(squashed)
    # the prior recovers on a sane geometry afterwards
    energy, _ = prior.energy_forces(atoms)
    assert energy == pytest.approx(_direct_xtb(backend, atoms)[0], rel=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_xtb_iteration_limit_raises_prior_error(backend, naphthalene):
    atoms = _frames(naphthalene, [0])[0]
    with pytest.raises(PriorError, match=r"C10H8.*converge"):
        XTBPrior(backend=backend, max_iterations=1).energy_forces(atoms)


def _in_periodic_box(atoms: Atoms, length: float) -> Atoms:
    boxed = Atoms(atoms.numbers, atoms.positions, cell=[length] * 3, pbc=True)
    boxed.center()
    return boxed


def test_xtb_periodic_cell_with_tblite(benzene):
    """A periodic cell reaches tblite as lattice + periodicity.

    Benzene in a cubic box: the energy matches tblite's own ASE calculator, tends to the isolated
    molecule's as the box grows (measured ΔE: -29 meV at 8 Å, 0.04 meV at 20 Å), and a changed
    cell is applied to the reused backend calculator.
    """
    from tblite.ase import TBLite

    molecule_ = _frames(benzene, [benzene["train_01"][0]])[0]
    isolated = XTBPrior(backend="tblite").energy_forces(molecule_)[0]
    prior = XTBPrior(backend="tblite")
    big = _in_periodic_box(molecule_, 20.0)
    energy, forces = prior.energy_forces(big)
    reference = big.copy()
    reference.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert energy == pytest.approx(reference.get_potential_energy(), rel=1e-8)
    np.testing.assert_allclose(forces, reference.get_forces(), rtol=0, atol=1e-6)
    assert abs(energy - isolated) < 1e-3
    small = big.copy()
    small.set_cell([8.0] * 3)  # same atoms, smaller box: only the lattice changes
    small.center()
    backend_calc = prior._calc
    energy_small, _ = prior.energy_forces(small)
    assert prior._calc is backend_calc
    assert energy_small == pytest.approx(XTBPrior(backend="tblite").energy_forces(small)[0], rel=1e-8)
    assert abs(energy_small - isolated) > 5e-3  # periodic images interact in an 8 Å box


def test_xtb_python_gfn2_refuses_periodic_cells(benzene):
    boxed = _in_periodic_box(_frames(benzene, [0])[0], 20.0)
    with pytest.raises(PriorError, match=r"C6H6.*PBC"):
        XTBPrior(backend="xtb").energy_forces(boxed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_xtb_backends_print_nothing(backend, benzene, capfd):
    prior = XTBPrior(backend=backend)
    for atoms in _frames(benzene, benzene["train_01"][:2]):
        prior.energy_forces(atoms)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_xtb_fingerprint_and_validation():
    base = XTBPrior()
    variants = [
        XTBPrior(method="GFN1-xTB"),
        XTBPrior(backend="tblite"),
        XTBPrior(accuracy=0.1),
        XTBPrior(electronic_temperature=500.0),
        XTBPrior(charge=1),
        XTBPrior(uhf=1),
    ]
    prints = {base.fingerprint(), *(v.fingerprint() for v in variants)}
    assert len(prints) == 1 + len(variants)
    assert base.fingerprint() == XTBPrior().fingerprint()
    assert "GFN2-xTB" in base.fingerprint() and "xtb" in base.fingerprint()
    with pytest.raises(ValueError, match="backend"):
        XTBPrior(backend="dftb+")
    with pytest.raises(ValueError, match="method"):
        XTBPrior(method="GFN3-xTB", backend="tblite")
    with pytest.raises(ValueError, match="method"):
        XTBPrior(method="GFN3-xTB")


def test_xtb_prior_pickles_without_backend_state(benzene):
    atoms = _frames(benzene, [0])[0]
    prior = XTBPrior(backend="tblite")
    energy, _ = prior.energy_forces(atoms)
    clone = pickle.loads(pickle.dumps(prior))
    assert clone._calc is None
    assert clone.energy_forces(atoms)[0] == pytest.approx(energy, rel=1e-10)


def test_xtb_as_calculator_conserves_energy_in_velocity_verlet(benzene):
    """NVE with GFN2-xTB forces: 20 steps of 0.5 fs keep E_kin + E_pot within 5 meV."""
    atoms = _frames(benzene, [benzene["train_01"][0]])[0]
    atoms.calc = XTBPrior(backend="xtb").as_calculator()
    assert isinstance(atoms.calc, PriorCalculator)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    start = atoms.positions.copy()
    potential, total = [], []

    def record():
        potential.append(atoms.get_potential_energy())
        total.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())

    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(20)
    potential, total = np.array(potential), np.array(total)
    assert len(total) == 21
    assert np.ptp(potential) > 0.01  # the molecule moved on the xTB surface
    assert np.abs(atoms.positions - start).max() > 1e-3
    assert np.abs(total - total[0]).max() < 5e-3


# ----------------------------------------------------------------------------- sGDML
N_TRAIN = 50


@pytest.fixture(scope="module")
def sgdml_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("ttcalc_cache")
        mp.setenv("TTCALC_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def naphthalene_train(naphthalene) -> list[Atoms]:
    # 100 frames of the official training split: 50 train, 50 validate the σ search
    return _frames(naphthalene, naphthalene["train_01"][:100])


@pytest.fixture(scope="module")
def sgdml_prior(sgdml_cache, naphthalene_train) -> SGDMLPrior:
    return SGDMLPrior.from_frames(naphthalene_train, n_train=N_TRAIN)


@pytest.fixture(scope="module")
def naphthalene_test(naphthalene) -> list[Atoms]:
    return _frames(naphthalene, naphthalene["test_01"][:200])


def test_sgdml_accuracy_on_rmd17_test_frames(sgdml_prior, naphthalene_test):
    """sGDML with 50 frames: ~35 meV/Å force MAE on naphthalene in the literature; assert < 60."""
    energies, forces = sgdml_prior.energy_forces_batch(naphthalene_test)
    ref_energies = np.array([a.get_potential_energy() for a in naphthalene_test])
    ref_forces = np.array([a.get_forces() for a in naphthalene_test])
    force_mae = np.abs(np.array(forces) - ref_forces).mean()
    energy_mae = np.abs(energies - ref_energies).mean()
    print(
        f"sGDML-50 naphthalene, 200 test_01 frames: force MAE {1e3 * force_mae:.1f} meV/Å, "
        f"energy MAE {1e3 * energy_mae:.1f} meV; sigma={sgdml_prior.sigma:g}, search={sgdml_prior.search}"
    )
    assert force_mae < 0.060
    # energies come back in eV on rMD17's absolute scale (-10 400 eV): a unit slip would be off by
    # hundreds of eV; 50 meV is ~2 kcal/mol, far above sGDML's ~0.2 kcal/mol
    assert energy_mae < 0.05
    search = sgdml_prior.search
    assert search.n_train == N_TRAIN and search.n_valid == 50
    assert sgdml_prior.sigma == search.best_sigma == search.sigmas[int(np.argmin(search.valid_force_mae))]
    assert len(set(search.valid_force_mae)) == len(search.sigmas)  # every σ really was fitted


def test_sgdml_second_construction_comes_from_cache(
    sgdml_prior, sgdml_cache, naphthalene_train, naphthalene_test, monkeypatch
):
    cached_files = list((sgdml_cache / "sgdml").glob("*.npz"))
    assert len(cached_files) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been loaded, not refitted")

    monkeypatch.setattr(sgdml_module, "_fit", no_training)
    again = SGDMLPrior.from_frames(naphthalene_train, n_train=N_TRAIN)
    assert again.fingerprint() == sgdml_prior.fingerprint()
    for atoms in naphthalene_test[:5]:
        e1, f1 = sgdml_prior.energy_forces(atoms)
        e2, f2 = again.energy_forces(atoms)
        assert e1 == e2
        np.testing.assert_array_equal(f1, f2)
    # a different setting is a different cache entry: it must train
    with pytest.raises(AssertionError, match="refitted"):
        SGDMLPrior.from_frames(naphthalene_train, n_train=N_TRAIN, seed=1)


def test_sgdml_rejects_reordered_or_missing_atoms(sgdml_prior, naphthalene_test):
    atoms = naphthalene_test[0]
    order = np.arange(len(atoms))
    order[[0, 10]] = order[[10, 0]]  # swap a carbon and a hydrogen
    with pytest.raises(PriorError, match=r"atom order.*trained on \[6, 6, 6"):
        sgdml_prior.energy_forces(atoms[order])
    with pytest.raises(PriorError, match="atom order"):
        sgdml_prior.energy_forces(atoms[:-1])


def test_sgdml_save_load_roundtrip(sgdml_prior, naphthalene_test, tmp_path):
    path = sgdml_prior.save(tmp_path / "naphthalene_sgdml.npz")
    loaded = SGDMLPrior.load(path)
    assert loaded.fingerprint() == sgdml_prior.fingerprint()
    assert loaded.sigma == sgdml_prior.sigma and loaded.search == sgdml_prior.search
    np.testing.assert_array_equal(loaded.numbers, sgdml_prior.numbers)
    for atoms in naphthalene_test[:5]:
        e1, f1 = sgdml_prior.energy_forces(atoms)
        e2, f2 = loaded.energy_forces(atoms)
        assert e1 == e2
        np.testing.assert_array_equal(f1, f2)


def test_sgdml_saved_model_is_a_kcal_mol_sgdml_model(sgdml_prior, naphthalene_test, tmp_path):
    """sgdml's own predictor reads the saved file and gives kcal/mol = our eV / KCAL_MOL_TO_EV."""
    from sgdml.predict import GDMLPredict

    path = sgdml_prior.save(tmp_path / "model.npz")
    with np.load(path) as data:
        model = dict(data)
    assert str(model["e_unit"]) == "kcal/mol" and str(model["r_unit"]) == "Ang"
    atoms = naphthalene_test[0]
    energy_kcal, forces_kcal = GDMLPredict(model, max_processes=1).predict(atoms.positions.reshape(1, -1))
    energy, forces = sgdml_prior.energy_forces(atoms)
    assert energy == pytest.approx(energy_kcal[0] * KCAL_MOL_IN_EV, rel=1e-12)
    np.testing.assert_allclose(forces, forces_kcal.reshape(-1, 3) * KCAL_MOL_IN_EV, rtol=1e-12, atol=1e-12)


def test_sgdml_holds_out_frames_when_given_exactly_n_train(benzene):
    frames = _frames(benzene, benzene["train_01"][:20])
    prior = SGDMLPrior.from_frames(frames, n_train=20, sigma_grid=(10, 40), cache=False)
    search = prior.search
    assert search.n_train == 20 and search.n_valid == 4  # a fifth held out for the σ search
    assert prior.sigma == search.best_sigma
    # the final model is refitted on all 20 frames
    assert prior._model["R_desc"].shape[1] == 20
    # the kernel model nearly interpolates its training data: far closer than on frames it never saw
    unseen = _frames(benzene, benzene["train_01"][20:40])

    def force_mae(fs):
        return np.abs(np.array(prior.energy_forces_batch(fs)[1]) - np.array([a.get_forces() for a in fs])).mean()

    assert force_mae(frames) < 0.5 * force_mae(unseen)


def test_sgdml_from_frames_input_errors(benzene):
    frames = _frames(benzene, benzene["train_01"][:10])
    with pytest.raises(ValueError, match="n_train"):
        SGDMLPrior.from_frames(frames, n_train=11, cache=False)
    with pytest.raises(ValueError, match="n_valid"):
        SGDMLPrior.from_frames(frames, n_train=5, n_valid=6, cache=False)
    unlabelled = [Atoms(a.numbers, a.positions) for a in frames]
    with pytest.raises(ValueError, match="no energy/forces labels"):
        SGDMLPrior.from_frames(unlabelled, n_train=5, cache=False)
    mixed = frames[:5] + [frames[5][::-1]]
    mixed[-1].calc = SinglePointCalculator(mixed[-1], energy=0.0, forces=np.zeros((12, 3)))
    with pytest.raises(ValueError, match="frame 5 has atomic numbers"):
        SGDMLPrior.from_frames(mixed, n_train=5, cache=False)


# ----------------------------------------------------------------------------- sgdml compat shim
def test_ensure_numpy_compat_installs_alias_only_when_missing(monkeypatch):
    monkeypatch.delattr(np, "in1d", raising=False)  # NumPy >= 2.4 as shipped (restored afterwards)
    assert ensure_numpy_compat() is True
    assert np.in1d is np.isin
    np.testing.assert_array_equal(np.in1d([1, 2, 5], [5, 1]), [True, False, True])
    assert ensure_numpy_compat() is False  # idempotent
    assert np.in1d is np.isin

    def original(*args, **kwargs):  # an older NumPy's real in1d is never replaced
        return "original"

    monkeypatch.setattr(np, "in1d", original)
    assert ensure_numpy_compat() is False
    assert np.in1d is original


def test_sgdml_import_leaves_logging_as_it_was():
    """sgdml's import makes every later logger DEBUG-level with its own handler (torch's inductor
    loggers then flood stderr); ttcalc's import of sgdml must undo that, in a fresh interpreter."""
    code = """
import logging, sys
from ttcalc.priors.sgdml_compat import import_sgdml
import_sgdml()
later = logging.getLogger("created.after.sgdml")
sg = logging.getLogger("sgdml.train")
assert logging.getLoggerClass() is logging.Logger, logging.getLoggerClass()
assert type(later) is logging.Logger and later.level == logging.NOTSET and not later.handlers
assert not sg.handlers and sg.level == logging.NOTSET and sg.propagate
import sgdml  # a second import changes nothing
assert logging.getLoggerClass() is logging.Logger
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_shim_makes_sgdml_stratified_sampling_work(naphthalene, monkeypatch):
    """GDMLTrain.draw_strat_sample calls np.in1d when trimming a subset; it fails without the shim."""
    energies = naphthalene["E"][naphthalene["train_01"]]
    rng_state = np.random.get_state()  # sgdml samples with the global RNG: leave it as we found it
    try:
        with gdml_trainer() as trainer:
            monkeypatch.delattr(np, "in1d", raising=False)
            with pytest.raises(AttributeError, match="in1d"):
                trainer.draw_strat_sample(energies, 50)
            ensure_numpy_compat()
            idxs = trainer.draw_strat_sample(energies, 50)
    finally:
        np.random.set_state(rng_state)
    assert len(idxs) == 50 and len(np.unique(idxs)) == 50
    assert idxs.min() >= 0 and idxs.max() < len(energies)


def test_gdml_trainer_releases_sgdml_singleton_even_on_error():
    with gdml_trainer():
        with pytest.raises(RuntimeError, match="another GDMLTrain"):
            with gdml_trainer():
                pass
    with pytest.raises(ZeroDivisionError):
        with gdml_trainer() as trainer:
            kept = trainer  # a reference that outlives the block must not block the next trainer
            1 / 0
    with gdml_trainer() as trainer:
        assert trainer is not kept


def test_make_dataset_has_sgdml_metadata(benzene):
    from sgdml.utils.io import dataset_md5

    idx = benzene["train_01"][:3]
    data = make_dataset(benzene["z"], benzene["R"][idx], benzene["E"][idx], benzene["F"][idx], name="benzene")
    assert data["name"].astype(str) == "benzene"  # what GDMLTrain.create_task does with it
    assert str(data["e_unit"]) == "kcal/mol" and str(data["r_unit"]) == "Ang"
    assert data["md5"].item() == dataset_md5(data)
    assert data["R"].dtype == np.float64 and data["R"].shape == (3, 12, 3)
    with pytest.raises(ValueError, match="inconsistent dataset shapes"):
        make_dataset(benzene["z"][:11], benzene["R"][idx], benzene["E"][idx], benzene["F"][idx], name="x")


# ----------------------------------------------------------------------------- EMT, LJ, wrapped
def _rattled(atoms: Atoms, stdev: float = 0.05, seed: int = 0) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(stdev=stdev, seed=seed)
    return atoms


def test_emt_prior_matches_ase_emt_on_cu_cluster():
    cluster = _rattled(Icosahedron("Cu", noshells=3))
    energy, forces = EMTPrior().energy_forces(cluster)
    reference = cluster.copy()
    reference.calc = EMT()
    assert energy == pytest.approx(reference.get_potential_energy(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(forces, reference.get_forces(), rtol=0, atol=1e-12)
    assert np.abs(forces).max() > 0.05


def test_emt_prior_on_periodic_cu_dft_frame():
    """mlearn Cu vacancy frame (PBE, periodic): EMT forces track the DFT forces closely."""
    atoms = ase.io.read(dataset_path("mlearn", "Cu_test.xyz"), index=0)
    assert atoms.pbc.all()
    prior = EMTPrior()
    energy, forces = prior.energy_forces(atoms)
    reference = atoms.copy()
    reference.calc = EMT()
    assert energy == pytest.approx(reference.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(forces, reference.get_forces(), rtol=0, atol=1e-12)
    assert np.corrcoef(forces.ravel(), atoms.get_forces().ravel())[0, 1] > 0.95  # measured 0.997
    # the same prior then labels a structure of another size and element correctly
    gold = _rattled(Icosahedron("Au", noshells=2))
    gold_ref = gold.copy()
    gold_ref.calc = EMT()
    assert prior.energy_forces(gold)[0] == pytest.approx(gold_ref.get_potential_energy(), rel=1e-12)


@pytest.mark.parametrize(("name", "element"), [("H2CCHF", "F"), ("CH3SH", "S"), ("SiH4", "Si")])
def test_emt_prior_names_unsupported_elements(name, element):
    with pytest.raises(PriorError, match=rf"no EMT parameters for {element}\b"):
        EMTPrior().energy_forces(molecule(name))


def test_lj_forces_match_finite_differences():
    argon = _rattled(Icosahedron("Ar", noshells=2, latticeconstant=5.26), stdev=0.1)
    prior = LJPrior(sigma=3.4, epsilon=0.0104)
    _, forces = prior.energy_forces(argon)
    coords = [(i, k) for i in range(len(argon)) for k in range(3)]
    fd = _central_difference_forces(prior, argon, h=1e-3, coords=coords)
    assert np.abs(forces).max() > 1e-3
    np.testing.assert_allclose(forces.ravel(), fd, rtol=1e-4, atol=1e-7)


def test_lj_dimer_minimum_and_smooth_cutoff():
    sigma, epsilon = 3.4, 0.0104
    prior = LJPrior(sigma=sigma, epsilon=epsilon)  # rc = 3σ, smooth
    r_min = 2 ** (1 / 6) * sigma
    energy, forces = prior.energy_forces(Atoms("Ar2", positions=[[0, 0, 0], [0, 0, r_min]]))
    assert energy == pytest.approx(-epsilon, rel=1e-12)
    np.testing.assert_allclose(forces, 0.0, atol=1e-12)
    rc = 3 * sigma
    inside = prior.energy_forces(Atoms("Ar2", positions=[[0, 0, 0], [0, 0, rc - 1e-4]]))
    assert abs(inside[0]) < 1e-9 and np.abs(inside[1]).max() < 1e-6  # energy and force reach 0 at rc


def test_calculator_prior_wraps_emt_and_leaves_input_alone():
    cluster = _rattled(Icosahedron("Cu", noshells=2))
    cluster.set_constraint(FixAtoms(indices=[0, 1, 2]))
    prior = CalculatorPrior(EMT())
    assert prior.name == "emt"
    energy, forces = prior.energy_forces(cluster)
    assert cluster.calc is None
    reference = cluster.copy()
    reference.calc = EMT()
    assert energy == pytest.approx(reference.get_potential_energy(), rel=1e-12)
    # raw forces: the constraint does not zero the fixed atoms' forces
    np.testing.assert_allclose(forces, reference.get_forces(apply_constraint=False), rtol=0, atol=1e-12)
    assert np.abs(forces[:3]).max() > 1e-3
    assert EMTPrior().energy_forces(cluster)[0] == pytest.approx(energy, rel=1e-12)


def test_calculator_prior_turns_calculator_refusal_into_prior_error():
    with pytest.raises(PriorError, match=r"mine: calculation failed for C2H3F.*EMT"):
        CalculatorPrior(EMT(), name="mine").energy_forces(molecule("H2CCHF"))


def test_classical_fingerprints_follow_parameters():
    assert LJPrior(sigma=3.4).fingerprint() != LJPrior(sigma=3.0).fingerprint()
    assert LJPrior(sigma=3.4).fingerprint() == LJPrior(sigma=3.4).fingerprint()
    assert EMTPrior().fingerprint() != LJPrior().fingerprint()
    with pytest.raises(ValueError, match="sigma"):
        LJPrior(sigma=-1.0)


# ----------------------------------------------------------------------------- make_prior
@pytest.mark.parametrize(
    ("spec", "cls", "backend"),
    [
        ("xtb", XTBPrior, "xtb"),
        ("gfn2", XTBPrior, "xtb"),
        ("GFN2-xTB", XTBPrior, "xtb"),
        ("tblite", XTBPrior, "tblite"),
        (" EMT ", EMTPrior, None),
        ("lj", LJPrior, None),
    ],
)
def test_make_prior_names(spec, cls, backend):
    prior = make_prior(spec)
    assert type(prior) is cls
    if backend is not None:
        assert prior.backend == backend and prior.method == "GFN2-xTB"


def test_make_prior_none_passthrough_and_errors():
    assert make_prior(None) is None
    assert make_prior("none") is None
    assert make_prior("None") is None
    prior = LJPrior(sigma=2.0)
    assert make_prior(prior) is prior
    valid = r"unknown prior 'dftb'.*'xtb'.*'gfn2'.*'gfn2-xtb'.*'tblite'.*'emt'.*'lj'.*'none'"
    with pytest.raises(ValueError, match=valid):
        make_prior("dftb")
    with pytest.raises(TypeError, match="name"):
        make_prior(3)


def test_cached_prior_calculator_labels_each_structure_once(monkeypatch, tmp_path):
    """``as_calculator(cache=True)`` goes through the on-disk label cache: a second calculator (a
    rerun after a crash) gets the same labels without calling the prior again."""
    monkeypatch.setenv("TTCALC_CACHE", str(tmp_path))
    prior = EMTPrior()
    calls = []
    original = prior.energy_forces_batch
    monkeypatch.setattr(prior, "energy_forces_batch", lambda frames: calls.append(len(frames)) or original(frames))
    atoms = Icosahedron("Cu", 2)
    atoms.rattle(0.05, seed=3)
    first = atoms.copy()
    first.calc = prior.as_calculator(cache=True)
    e1, f1 = first.get_potential_energy(), first.get_forces()
    again = atoms.copy()
    again.calc = prior.as_calculator(cache=True)
    assert again.get_potential_energy() == e1 and np.array_equal(again.get_forces(), f1)
    assert calls == [1]
    plain = atoms.copy()
    plain.calc = prior.as_calculator()
    assert np.isclose(plain.get_potential_energy(), e1) and np.allclose(plain.get_forces(), f1)
    moved = atoms.copy()
    moved.positions[0, 0] += 0.1
    moved.calc = prior.as_calculator(cache=True)
    assert moved.get_potential_energy() != e1 and calls == [1, 1]
