"""Batched replicas (md_protocols.batched): ASE-identical integrators, one model call per step,
independent replicas, freezing of failed replicas, and the Langevin thermostat's temperature."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.io import read

from md_protocols import BondCollapseCheck, bond_lengths, bonds_from_atoms, max_bond_deviation, run_md
from md_protocols.batched import run_batched_md
from ttcalc import TTTCalculator, load_model
from ttcalc.data import load_rmd17
from ttcalc.model.compiled import FastEvaluator


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # 2 shared cores with a background job: a second intra-op thread makes small kernels far slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model64(tiny_model_path):
    return load_model(tiny_model_path, dtype="float64")


@pytest.fixture(scope="module")
def benzene():
    atoms = load_rmd17("benzene", "test_01", n=1, seed=3)[0]
    atoms.calc = None
    return atoms


@pytest.fixture(scope="module")
def nve4(model64, benzene):
    """4 NVE replicas, 400 steps of 0.5 fs, no early-stop checks."""
    return run_batched_md(benzene, model64, 4, ensemble="nve", temperature_K=500, time_ps=0.2,
                          seeds=[0, 1, 2, 3], log_interval=5, checks=(), compile=False, progress=False)


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_single_replica_follows_run_md_with_the_calculator(model64, benzene, ensemble):
    calc = TTTCalculator(model64, dtype="float64", compile=False, disagreement_every=0)
    ref = run_md(benzene, calc, ensemble=ensemble, temperature_K=500, timestep_fs=0.5, time_ps=0.05,
                 seed=11, log_interval=10, progress=False)
    (res,) = run_batched_md(benzene, model64, 1, ensemble=ensemble, temperature_K=500, timestep_fs=0.5,
                            time_ps=0.05, seeds=[11], log_interval=10, checks=(), compile=False,
                            progress=False)
    assert ref.status == res.status == "finished" and res.steps == ref.steps == 100
    np.testing.assert_array_equal(res.times_ps, ref.times_ps)
    # same seed convention, same update equations, same kernel: the same trajectory
    assert np.abs(res.frames - ref.frames).max() < 1e-8
    np.testing.assert_allclose(res.energies["potential"], ref.energies["potential"], atol=1e-8)
    np.testing.assert_allclose(res.temperatures, ref.temperatures, rtol=1e-8)
    # and it moved: 100 steps at 500 K displace atoms by a sizeable fraction of an Å
    assert np.abs(res.frames[-1] - res.frames[0]).max() > 0.05


def test_nve_replicas_conserve_energy(nve4):
    assert [r.status for r in nve4] == ["finished"] * 4
    for r in nve4:
        e_tot, e_pot = r.energies["total"], r.energies["potential"]
        assert len(e_tot) == 81
        # velocity Verlet at 0.5 fs: total-energy jitter is ~1e-3 of the potential-energy swings,
        # which here are large (this toy model releases several eV and heats the molecule)
        assert e_tot.std() < 0.01 * e_pot.std()
        assert np.abs(e_tot - e_tot[0]).max() < 0.05
        assert e_pot.std() > 0.1


def test_replicas_with_different_seeds_differ_and_equal_seeds_agree(model64, benzene):
    res = run_batched_md(benzene, model64, 3, ensemble="nvt", time_ps=0.02, seeds=[7, 8, 7],
                         log_interval=10, checks=(), compile=False, progress=False)
    assert [r.seed for r in res] == [7, 8, 7]
    np.testing.assert_array_equal(res[0].frames, res[2].frames)
    assert np.abs(res[0].frames[-1] - res[1].frames[-1]).max() > 1e-2
    assert res[0].temperatures[0] != pytest.approx(res[1].temperatures[0], rel=1e-3)


def test_one_model_call_per_step_for_all_replicas(model64, benzene, monkeypatch):
    shapes = []
    original = FastEvaluator.__call__

    def spy(self, positions):
        shapes.append(tuple(positions.shape))
        return original(self, positions)

    monkeypatch.setattr(FastEvaluator, "__call__", spy)
    res = run_batched_md(benzene, model64, 3, ensemble="nvt", time_ps=0.01, log_interval=5,
                         checks=(), compile=False, progress=False)
    assert res[0].steps == 20
    assert shapes == [(3, 12, 3)] * 21  # the initial forces, then one call per step
    assert all(r.extra["model_calls"] == 21 for r in res)


def test_collapsed_replica_is_frozen_and_the_others_continue(model64, benzene, nve4):
    threshold = 0.12
    check = BondCollapseCheck(benzene.positions, numbers=benzene.numbers, threshold=threshold)
    res = run_batched_md(benzene, model64, 4, ensemble="nve", temperature_K=500, time_ps=0.2,
                         seeds=[0, 1, 2, 3], log_interval=5, checks=[check], compile=False, progress=False)
    bonds = bonds_from_atoms(benzene)
    ref_mean = bond_lengths(benzene.positions, bonds)[0]
    stops = []
    for free, checked in zip(nve4, res):
        # the first logged frame of the unchecked run that breaks the bond criterion
        failed = np.flatnonzero(max_bond_deviation(free.frames, bonds, ref_mean) > threshold)
        expected = int(failed[0]) * 5 if failed.size else free.steps
        assert checked.steps == expected
        assert checked.status == ("collapsed" if failed.size else "finished")
        n = checked.frames.shape[0]
        assert n == expected // 5 + 1
        # freezing one replica does not perturb the others: identical frames up to the stop
        np.testing.assert_allclose(checked.frames, free.frames[:n], atol=1e-10, rtol=0)
        stops.append(expected)
    assert min(stops) < max(stops), "the test needs replicas that stop at different times"
    assert any(r.status == "collapsed" for r in res)


def test_langevin_replicas_reach_the_target_temperature(model64, benzene):
    target = 500.0
    res = run_batched_md(benzene, model64, 8, ensemble="nvt", temperature_K=target, time_ps=0.25,
                         friction_per_fs=0.1, log_interval=10, checks=(), compile=False, progress=False)
    assert [r.status for r in res] == ["finished"] * 8
    temps = np.stack([r.temperatures for r in res])  # (8, 51)
    second_half = temps[:, temps.shape[1] // 2:]
    # Instantaneous T of 12 atoms fluctuates by sqrt(2 / 3N) = 24 % (118 K). With friction 0.1/fs
    # the kinetic energy decorrelates within ~10 fs, so the 8 x 26 frames (5 fs apart) of the
    # second half hold >= 80 independent samples: standard error <= 13 K. 50 K is ~4 standard
    # errors plus room for the O(dt^2) bias of the integrator on this stiff toy potential.
    assert abs(second_half.mean() - target) < 50.0
    # not vacuous: the toy model releases several eV (NVE from this start heats past 2000 K); the
    # thermostat must have taken out more than the whole thermal kinetic energy, 3/2 N kT = 0.78 eV
    removed = np.mean([r.energies["total"][0] - r.energies["total"][-1] for r in res])
    assert removed > 1.5 * 12 * units.kB * target


def test_bad_input_is_rejected(model64, benzene):
    with pytest.raises(ValueError, match="ensemble must be one of 'nvt', 'nve'"):
        run_batched_md(benzene, model64, 2, ensemble="npt", progress=False)
    with pytest.raises(ValueError, match="3 seeds for 2 replicas"):
        run_batched_md(benzene, model64, 2, seeds=[1, 2, 3], progress=False)
    other = benzene.copy()
    other.numbers = other.numbers[::-1]
    with pytest.raises(ValueError, match="same atomic numbers"):
        run_batched_md([benzene, other], model64, 2, progress=False)
    periodic = benzene.copy()
    periodic.set_cell([20, 20, 20])
    periodic.pbc = True
    with pytest.raises(ValueError, match="periodic structures are not supported"):
        run_batched_md(periodic, model64, 1, progress=False)
    with pytest.raises(ValueError, match="n_replicas must be >= 1"):
        run_batched_md(benzene, model64, 0, progress=False)
    bad = Atoms(numbers=benzene.numbers, positions=np.full((12, 3), np.nan))
    with pytest.raises(ValueError, match="NaN or infinite"):
        run_batched_md(bad, model64, 1, progress=False)


@pytest.mark.slow
def test_compiled_replicas_follow_the_eager_kernel(tiny_model_path, benzene):
    model32 = load_model(tiny_model_path)  # float32, as in production
    kw = dict(ensemble="nve", time_ps=0.01, seeds=[0, 1], log_interval=5, checks=(), progress=False)
    fast = run_batched_md(benzene, model32, 2, compile=True, **kw)
    eager = run_batched_md(benzene, model32, 2, compile=False, **kw)
    assert all(r.extra["compiled"] for r in fast) and not any(r.extra["compiled"] for r in eager)
    for f, e in zip(fast, eager):
        # float32 kernels that differ in summation order: 20 steps stay within 1e-5 Å
        assert np.abs(f.frames - e.frames).max() < 1e-5
        assert np.abs(f.frames[-1] - f.frames[0]).max() > 1e-2


@pytest.mark.slow
def test_cpp_wrapper_option_is_exact(tiny_model_path, benzene):
    model32 = load_model(tiny_model_path).requires_grad_(False)
    pos = torch.as_tensor(np.stack([benzene.positions] * 2), dtype=torch.float32)
    ev = FastEvaluator(model32, benzene.numbers, replicas=2, cpp_wrapper=True)
    assert ev.check(pos) <= 1e-4
    assert ev.compiled and ev.n_compiles == 1  # compiled with the C++ wrapper, no fallback
    moved = pos + 0.02 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(0))
    e_fast, _, f_fast = ev(moved)
    e_ref, _, f_ref = FastEvaluator(model32, benzene.numbers, replicas=2, compile=False)(moved)
    assert float((f_fast - f_ref).abs().max()) <= 1e-4 * float(f_ref.abs().max())
    assert ev.n_compiles == 1


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_chunked_continuation_equals_one_long_run(model64, benzene, ensemble, tmp_path):
    kw = dict(ensemble=ensemble, temperature_K=500, timestep_fs=0.5, log_interval=10, checks=(),
              compile=False, progress=False, seeds=[3, 4])
    whole_traj = [tmp_path / f"whole-{k}.traj" for k in range(2)]
    chunk_traj = [tmp_path / "chunks" / f"{k}.traj" for k in range(2)]
    whole = run_batched_md(benzene, model64, 2, time_ps=0.04, trajectories=whole_traj, **kw)
    # the same two replicas in two chunks of 40 steps: positions, momenta and thermostat streams carried
    first = run_batched_md(benzene, model64, 2, time_ps=0.02, trajectories=chunk_traj, append=True, **kw)
    rngs = [r.extra["thermostat_rng"] for r in first]
    starts = []
    for r in first:
        a = benzene.copy()
        a.positions = r.extra["final_positions"]
        starts.append(a)
    momenta = np.stack([r.extra["final_momenta"] for r in first])
    second = run_batched_md(starts, model64, 2, time_ps=0.02, momenta=momenta, thermostat_rngs=rngs,
                            trajectories=chunk_traj, append=True, **kw)
    for w, s in zip(whole, second):
        np.testing.assert_allclose(s.extra["final_positions"], w.extra["final_positions"], atol=1e-10)
        np.testing.assert_allclose(s.frames[-1], w.frames[-1], atol=1e-10)
    # the files hold every logged frame once, with the energies and forces of the run
    for k, w in enumerate(whole):
        a, b = read(whole_traj[k], ":"), read(chunk_traj[k], ":")
        assert len(a) == len(b) == len(w.frames) == 9
        np.testing.assert_allclose(np.stack([x.positions for x in b]), w.frames, atol=1e-10)
        np.testing.assert_array_equal(np.stack([x.positions for x in a]), w.frames)
        np.testing.assert_array_equal([x.get_potential_energy() for x in a], w.energies["potential"])
        again = Atoms(numbers=a[-1].numbers, positions=a[-1].positions)
        again.calc = TTTCalculator(model64, dtype="float64", compile=False, disagreement_every=0)
        assert again.get_potential_energy() == pytest.approx(a[-1].get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(again.get_forces(), a[-1].get_forces(), atol=1e-8)
        assert np.abs(a[-1].get_momenta()).sum() > 0
    assert whole[0].trajectory == str(whole_traj[0])
    with pytest.raises(ValueError, match="1 trajectory paths for 2 replicas"):
        run_batched_md(benzene, model64, 2, time_ps=0.001, trajectories=whole_traj[:1], **kw)
    with pytest.raises(ValueError, match="momenta must have shape"):
        run_batched_md(benzene, model64, 2, time_ps=0.001, momenta=np.zeros((1, 12, 3)), **kw)


def test_a_plain_force_function_drives_the_replicas(benzene):
    """run_batched_md needs no model: in a harmonic well about the start, F = -k (r - r0), energy
    ½ k |r - r0|², velocity Verlet keeps E_pot + E_kin to second order in the time step (half the
    step, a quarter of the energy fluctuation) without drift."""
    r0 = torch.as_tensor(benzene.positions, dtype=torch.float64)
    k = 5.0  # eV/Å²

    def harmonic(r):
        d = r - r0
        return 0.5 * k * (d * d).sum((1, 2)), -k * d

    spread = {}
    for dt in (0.5, 0.25):
        (res,) = run_batched_md(benzene, harmonic, 1, ensemble="nve", temperature_K=300, timestep_fs=dt,
                                time_ps=0.5, log_interval=int(2.5 / dt), checks=(), progress=False)
        assert res.status == "finished" and res.extra["compiled"] is False
        total = res.energies["total"]
        spread[dt] = np.ptp(total) / res.energies["kinetic"].mean()
        assert abs(total[-1] - total[0]) <= np.ptp(total)
    assert spread[0.5] < 1e-2 and 3.0 < spread[0.5] / spread[0.25] < 5.0
    with pytest.raises(TypeError, match=r"function of \(B, N, 3\) positions"):
        run_batched_md(benzene, object(), 1, time_ps=0.001, progress=False)
