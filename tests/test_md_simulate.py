"""run_md / run_md_parallel: thermostat, energy conservation, resume, early stops, process pool."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron
from ase.io import read
from ase.io.trajectory import TrajectoryWriter
from threadpoolctl import threadpool_limits

from md_protocols import (
    BondCollapseCheck,
    ExplosionCheck,
    MDJob,
    bond_lengths,
    bonds_from_atoms,
    nve_drift,
    run_md,
    run_md_parallel,
)
from md_protocols.simulate import saved_time_ps, state_path
from ttcalc.paths import dataset_path


@pytest.fixture(scope="module")
def benzene():
    data = np.load(dataset_path("rmd17", "rmd17_benzene.npz"))
    return {"z": data["z"].astype(int), "R": data["R"].astype(np.float64), "train": data["train_01"]}


@pytest.fixture
def cu13():
    atoms = Icosahedron("Cu", 2)  # 13-atom icosahedral cluster, an EMT element
    atoms.center()
    return atoms


class _InterruptAfter(EMT):
    """EMT that raises KeyboardInterrupt on its n-th calculation: a Ctrl-C in the middle of a run."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        super().calculate(atoms, properties, system_changes)


class _NaNAfter(EMT):
    """EMT whose energy and forces turn NaN from the n-th calculation on (a model that blew up)."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        super().calculate(atoms, properties, system_changes)
        if self.calls >= self.n:
            self.results["energy"] = np.nan
            self.results["forces"] = np.full((len(self.atoms), 3), np.nan)


class _RaisesAfter(EMT):
    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)


def broken_factory() -> Calculator:
    """A calculator factory that fails in the worker (module level so that spawn can pickle it)."""
    raise RuntimeError("no such model checkpoint")


# ---------------------------------------------------------------- thermostat and integrator


def test_langevin_xtb_benzene_heats_to_target_temperature(benzene):
    xtb = pytest.importorskip("xtb.ase.calculator")
    atoms = Atoms(numbers=benzene["z"], positions=benzene["R"][0])
    target, gamma = 500.0, 0.1  # friction 0.1 / fs
    # xtb's default OpenMP threads are several times slower on 2 shared cores than one thread
    with threadpool_limits(1):
        res = run_md(atoms, xtb.XTB(method="GFN2-xTB"), temperature_K=target, timestep_fs=0.5, time_ps=1.0,
                     friction_per_fs=gamma, seed=1, log_interval=1, progress=False, initial_temperature_K=100.0)
    assert res.status == "finished" and res.steps == 2000
    assert res.temperatures[0] < 160.0  # it starts cold: the thermostat has to heat it
    second_half = res.temperatures[1000:]
    # Canonical T of 3N = 36 momenta fluctuates with relative std sqrt(2 / 3N) = 0.236. The kinetic
    # energy under Langevin friction γ decorrelates within ~1/(2γ) = 5 fs; with the conservative
    # τ_int = 1/γ = 10 fs, 500 fs hold n_eff = 500 / (2 τ_int) = 25 independent samples, so the mean
    # has std 0.236 · 500 K / 5 = 24 K. Tolerance 3σ = 71 K (10 seeds of this setup: spread 40 K
    # for 250 fs windows at γ = 0.05 / fs, matching the estimate).
    sigma_mean = np.sqrt(2 / (3 * len(atoms))) * target / np.sqrt(500.0 / (2 * (1 / gamma)))
    assert abs(second_half.mean() - target) < 3 * sigma_mean
    assert second_half.std() == pytest.approx(np.sqrt(2 / 36) * target, rel=0.3)


def test_friction_is_per_femtosecond(tmp_path):
    # free particles (a dilute gas: Lennard-Jones with a 0.1 Å cutoff on a 3 Å grid never interacts)
    # under Langevin friction γ: <v(t)·v(0)> / <v(0)²> = exp(-γ t). γ = 0.01 / fs over 100 fs gives
    # e^-1 = 0.37; the bare ASE value 0.01 (per 10.18 fs) would give exp(-0.098) = 0.91.
    grid = np.stack(np.meshgrid(*[np.arange(8) * 3.0] * 3, indexing="ij"), -1).reshape(-1, 3)
    gas = Atoms(f"Ar{len(grid)}", positions=grid)
    traj = tmp_path / "gas.traj"
    run_md(gas, LennardJones(sigma=0.05, epsilon=0.01, rc=0.1), temperature_K=300.0, timestep_fs=1.0,
           time_ps=0.1, friction_per_fs=0.01, log_interval=100, trajectory=traj, progress=False)
    first, last = read(traj, 0), read(traj, -1)
    assert np.abs(first.get_forces()).max() == 0.0
    v0, v1 = first.get_velocities(), last.get_velocities()
    correlation = (v0 * v1).sum() / (v0 * v0).sum()
    # estimator std ≈ sqrt((1 - C²) / 3N) = 0.024 for 512 atoms: 4σ ≈ 0.1
    assert correlation == pytest.approx(np.exp(-1.0), abs=0.1)


def test_nve_emt_cu_cluster_conserves_energy(cu13, tmp_path):
    res = run_md(cu13, EMT(), ensemble="nve", temperature_K=300.0, timestep_fs=1.0, time_ps=1.0,
                 log_interval=10, progress=False, logfile=tmp_path / "md.log")
    assert res.status == "finished" and res.steps == 1000 and res.time_ps == pytest.approx(1.0)
    assert res.frames.shape == (101, 13, 3)
    np.testing.assert_allclose(res.times_ps, np.arange(101) * 0.01)
    drift = nve_drift(res)
    assert drift["max_abs_dev_meV_per_atom"] < 1.0
    assert abs(drift["slope_meV_per_atom_per_ps"]) < 0.5
    # the energy does flow between kinetic and potential: the test is not on a frozen system
    assert np.ptp(res.energies["kinetic"]) > 50 * drift["max_abs_dev_eV"]
    lines = (tmp_path / "md.log").read_text().splitlines()
    assert lines[0].split()[0] == "Time[ps]" and len(lines) == 102
    assert float(lines[-1].split()[1]) == pytest.approx(res.energies["total"][-1], abs=1e-4)
    with pytest.raises(ValueError, match="NVE only"):
        nve_drift(run_md(cu13, EMT(), time_ps=0.01, timestep_fs=1.0, progress=False))


def test_seeds_are_reproducible_and_distinct(cu13):
    kw = dict(temperature_K=400.0, timestep_fs=2.0, time_ps=0.02, log_interval=5, progress=False)
    a, b, c = (run_md(cu13, EMT(), seed=s, **kw) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.frames, b.frames)
    assert np.abs(a.frames[-1] - c.frames[-1]).max() > 1e-3


# ---------------------------------------------------------------- resume


def test_resume_extends_a_run_exactly(cu13, tmp_path):
    kw = dict(temperature_K=500.0, timestep_fs=2.0, friction_per_fs=0.02, seed=7, log_interval=5, progress=False)
    full = run_md(cu13, EMT(), time_ps=0.08, trajectory=tmp_path / "full.traj", **kw)  # 40 steps
    first = run_md(cu13, EMT(), time_ps=0.04, trajectory=tmp_path / "part.traj", **kw)  # 20 steps
    assert first.status == "finished" and first.steps == 20
    assert saved_time_ps(tmp_path / "part.traj") == pytest.approx(0.04) and saved_time_ps(tmp_path / "x.traj") == 0.0
    rest = run_md(cu13, EMT(), time_ps=0.08, trajectory=tmp_path / "part.traj", resume=True, **kw)
    assert rest.status == "finished" and rest.steps == 40
    assert rest.frames.shape == full.frames.shape == (9, 13, 3)
    np.testing.assert_allclose(rest.frames, full.frames, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rest.energies["total"], full.energies["total"], rtol=0, atol=1e-10)
    on_disk = np.stack([a.positions for a in read(tmp_path / "part.traj", ":")])
    np.testing.assert_allclose(on_disk, full.frames, rtol=0, atol=1e-10)
    velocities = read(tmp_path / "part.traj", -1).get_velocities()
    np.testing.assert_allclose(velocities, read(tmp_path / "full.traj", -1).get_velocities(), atol=1e-10)


def test_resume_after_a_crash_mid_interval_loses_at_most_that_interval(cu13, tmp_path):
    kw = dict(temperature_K=500.0, timestep_fs=2.0, time_ps=0.08, seed=11, log_interval=5, progress=False)
    full = run_md(cu13, EMT(), **kw)
    traj = tmp_path / "md.traj"
    # calculation 1 is step 0, calculation k+1 is step k: die inside step 23
    with pytest.raises(KeyboardInterrupt):
        run_md(cu13, _InterruptAfter(24), trajectory=traj, **kw)
    state = json.loads(state_path(traj).read_text())
    assert state["status"] == "running" and state["step"] == 20 and len(read(traj, ":")) == 5
    resumed = run_md(cu13, EMT(), trajectory=traj, resume=True, **kw)
    assert resumed.status == "finished"
    np.testing.assert_allclose(resumed.frames, full.frames, rtol=0, atol=1e-10)


def test_resume_drops_a_frame_written_after_the_last_state(cu13, tmp_path):
    # a crash between writing a frame and writing the sidecar leaves one frame the state does not know
    kw = dict(temperature_K=500.0, timestep_fs=2.0, seed=5, log_interval=5, progress=False)
    full = run_md(cu13, EMT(), time_ps=0.06, **kw)
    traj = tmp_path / "md.traj"
    run_md(cu13, EMT(), time_ps=0.03, trajectory=traj, **kw)
    with TrajectoryWriter(str(traj), "a") as writer:
        writer.write(Atoms("Cu13", positions=np.zeros((13, 3))))
    assert len(read(traj, ":")) == 5
    resumed = run_md(cu13, EMT(), time_ps=0.06, trajectory=traj, resume=True, **kw)
    np.testing.assert_allclose(resumed.frames, full.frames, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.stack([a.positions for a in read(traj, ":")]), full.frames, rtol=0, atol=1e-10)


def test_resume_refuses_other_settings_and_foreign_files(cu13, tmp_path):
    traj = tmp_path / "md.traj"
    run_md(cu13, EMT(), time_ps=0.01, timestep_fs=1.0, trajectory=traj, progress=False)
    with pytest.raises(ValueError, match="settings differ.*temperature_K"):
        run_md(cu13, EMT(), time_ps=0.02, timestep_fs=1.0, temperature_K=300.0, trajectory=traj,
               resume=True, progress=False)
    with pytest.raises(ValueError, match="already at 0.01 ps > time_ps=0.005"):
        run_md(cu13, EMT(), time_ps=0.005, timestep_fs=1.0, trajectory=traj, resume=True, progress=False)
    state_path(traj).unlink()
    with pytest.raises(ValueError, match="no md.traj.state.json"):
        run_md(cu13, EMT(), time_ps=0.02, timestep_fs=1.0, trajectory=traj, resume=True, progress=False)
    with pytest.raises(ValueError, match="needs a trajectory"):
        run_md(cu13, EMT(), resume=True, progress=False)


# ---------------------------------------------------------------- early stops


def test_bond_collapse_stops_at_the_first_failing_check(benzene, tmp_path):
    atoms = Atoms(numbers=benzene["z"], positions=benzene["R"][0])
    ref = benzene["R"][benzene["train"]]
    # EMT is not a model of benzene: its ring breaks within ~0.1 ps at 500 K
    res = run_md(atoms, EMT(), temperature_K=500.0, timestep_fs=0.5, time_ps=2.0, log_interval=10,
                 checks=[BondCollapseCheck(ref)], trajectory=tmp_path / "c.traj", progress=False)
    assert res.status == "collapsed" and "deviates" in res.message
    assert 0 < res.time_ps < 2.0 and res.steps % 10 == 0
    # the frames logged at every check: all before the failing one are within 0.5 Å, that one is not
    bonds = bonds_from_atoms(Atoms(numbers=benzene["z"], positions=ref[0]))
    dev = np.abs(bond_lengths(res.frames, bonds) - bond_lengths(ref, bonds).mean(axis=0)).max(axis=1)
    assert res.times_ps[-1] == pytest.approx(res.time_ps)
    assert dev[:-1].max() <= 0.5 < dev[-1]
    assert json.loads(state_path(tmp_path / "c.traj").read_text())["status"] == "collapsed"
    again = run_md(atoms, EMT(), temperature_K=500.0, timestep_fs=0.5, time_ps=2.0, log_interval=10,
                   checks=[BondCollapseCheck(ref)], trajectory=tmp_path / "c.traj", resume=True, progress=False)
    assert again.status == "collapsed" and again.time_ps == res.time_ps  # a collapsed run is not continued


def test_nonfinite_calculator_output_stops_the_run(cu13):
    res = run_md(cu13, _NaNAfter(8), temperature_K=300.0, timestep_fs=1.0, time_ps=0.05, log_interval=5,
                 progress=False)
    assert res.status == "nonfinite" and "energy" in res.message
    assert res.steps == 7 and res.time_ps == pytest.approx(0.007)  # calculation 8 is step 7


def test_exploding_dimer_is_detected():
    # two Ar atoms at 1.2 Å under Lennard-Jones (σ = 3.4 Å) repel violently and fly apart
    dimer = Atoms("Ar2", positions=[[0, 0, 0], [1.2, 0, 0]])
    res = run_md(dimer, LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0), ensemble="nve", temperature_K=0.0,
                 timestep_fs=1.0, time_ps=5.0, log_interval=10, checks=[ExplosionCheck(max_distance=10.0)],
                 progress=False)
    assert res.status == "exploded" and "centroid" in res.message
    assert res.time_ps < 5.0
    assert np.isfinite(res.energies["total"]).all()


def test_calculator_exception_is_an_error_with_its_message(cu13):
    res = run_md(cu13, _RaisesAfter(4), temperature_K=300.0, timestep_fs=1.0, time_ps=0.05, progress=False)
    assert res.status == "error" and "RuntimeError: SCF did not converge" in res.message
    assert res.steps == 2  # calculation 4 would have finished step 3
    assert json.loads(json.dumps(res.to_dict()))["status"] == "error"


def test_plain_callable_checks_and_check_interval(cu13):
    seen = []

    def never_hot(atoms, energy):
        seen.append(len(seen))
        return atoms.get_temperature() < 1e5 and len(seen) < 3

    res = run_md(cu13, EMT(), temperature_K=300.0, timestep_fs=1.0, time_ps=0.1, log_interval=10,
                 check_interval=4, checks=[never_hot], progress=False)
    assert res.status == "stopped" and "never_hot" in res.message
    assert res.steps == 8  # checks at steps 0, 4, 8: the third one fails


# ---------------------------------------------------------------- process pool


def test_run_md_parallel_seeds_and_a_failing_job(cu13, tmp_path):
    kw = dict(temperature_K=500.0, timestep_fs=2.0, time_ps=0.02, log_interval=5)
    jobs = [
        MDJob(cu13, EMT, {**kw, "seed": 0, "trajectory": str(tmp_path / "s0.traj")}),
        MDJob(cu13, broken_factory, {**kw, "seed": 1}),
        MDJob(cu13, EMT, {**kw, "seed": 1, "trajectory": str(tmp_path / "s1.traj")}),
    ]
    results = run_md_parallel(jobs, processes=2)
    assert [r.status for r in results] == ["finished", "error", "finished"]
    assert "no such model checkpoint" in results[1].message
    assert results[0].steps == results[2].steps == 10
    assert np.abs(results[0].frames[-1] - results[2].frames[-1]).max() > 1e-3
    np.testing.assert_allclose(read(tmp_path / "s1.traj", -1).positions, results[2].frames[-1])
    # the worker's seed-0 run is the same as one in this process
    local = run_md(cu13, EMT(), seed=0, progress=False, **kw)
    np.testing.assert_allclose(results[0].frames, local.frames, atol=1e-12)
