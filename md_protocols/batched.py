"""Batched replicas: B independent copies of one molecule integrated together, one model call per step.

The replicas share one :class:`ttcalc.fast.FastEvaluator` built for ``replicas=B``, so every MD step
is a single (B, N, 3) forward+backward. Positions and momenta are float64 torch tensors; positions are
cast to the model dtype only for the call. The physics is that of the ASE integrators used by
:func:`md_protocols.run_md`, written for a leading replica axis:

* NVE: ASE's ``VelocityVerlet``:  p ← p + ½Δt F(r);  r ← r + Δt p/m;  p ← p + ½Δt F(r).
* NVT: ASE 3.29's ``Langevin`` with ``fixcm=False``, the Vanden-Eijnden–Ciccotti propagator
  (Chem. Phys. Lett. 429, 310 (2006), eq. 23). With friction γ (ASE units, = friction_per_fs / fs),
  temperature kT, σ = √(2 kT γ / m) and per-step draws ξ, η ~ N(0, 1):

      c1 = Δt/2 − Δt²γ/8,   c2 = Δtγ/2 − Δt²γ²/8,   c3 = √Δt σ/2 − Δt^{3/2} γ σ/8,
      c5 = Δt^{3/2} σ / (2√3),   c4 = γ c5 / 2,
      v ← v + c1 F/m − c2 v + (c3 ξ − c4 η);   r ← r + Δt v + c5 η;
      v ← v + c1 F(r)/m − c2 v + (c3 ξ − c4 η).

Seeding follows :func:`run_md` exactly: replica k with seed s draws its Maxwell–Boltzmann velocities
(then ``Stationary`` + ``ZeroRotation``) and its thermostat noise from the two children of
``np.random.SeedSequence(s)``, and draws ξ then η per step as ASE's ``Langevin`` does. A single
replica therefore follows the same trajectory as ``run_md`` with a ``TTTCalculator`` on the same
model (up to floating-point summation order of the compiled kernel).

A replica whose energy, forces or positions turn non-finite, or that fails a check (by default Fu et
al.'s bond-collapse criterion against the starting structure, :class:`BondCollapseCheck`), is frozen:
its status and stop time are recorded, it is parked at its starting positions with zero momenta,
forces and noise, and it no longer contributes; the others continue.
"""
from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from torch import Tensor
from tqdm.auto import tqdm

from md_protocols.checks import BondCollapseCheck, Check, CheckFailure, evaluate_check
from md_protocols.simulate import MDResult, _initial_velocities

logger = logging.getLogger(__name__)

__all__ = ["run_batched_md", "BatchedVelocityVerlet", "BatchedLangevin", "ForceFn"]

#: positions (B, N, 3) float64 -> (energy (B,), forces (B, N, 3)), both float64
ForceFn = Callable[[Tensor], tuple[Tensor, Tensor]]


class BatchedVelocityVerlet:
    """ASE ``VelocityVerlet`` for B replicas (same operations in the same order as ASE 3.29)."""

    def __init__(self, masses: np.ndarray, timestep: float):
        """``masses`` (N,) in amu; ``timestep`` in ASE time units."""
        self.dt = float(timestep)
        self.masses = torch.as_tensor(np.asarray(masses, dtype=np.float64)[:, None])

    def step(self, pos: Tensor, mom: Tensor, forces: Tensor, force_fn: ForceFn,
             active: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step; returns (positions, momenta, forces, energy) at the new time."""
        p = mom + 0.5 * self.dt * forces
        r = pos + self.dt * p / self.masses
        energy, forces = force_fn(r)
        p = p + 0.5 * self.dt * forces
        return r, p, forces, energy


class BatchedLangevin:
    """ASE 3.29 ``Langevin`` (``fixcm=False``) for B replicas, each with its own noise generator.

    ``friction`` is in inverse ASE time units (ASE's convention). Replica k draws ``xi`` then ``eta``,
    each ``(N, 3)`` standard normal, from ``rngs[k]``: the draws ASE's ``Langevin(rng=rngs[k])`` makes.
    Inactive replicas draw nothing and get zero noise.
    """

    def __init__(self, masses: np.ndarray, timestep: float, temperature_K: float, friction: float,
                 rngs: Sequence[np.random.Generator]):
        m = np.asarray(masses, dtype=np.float64)[:, None]
        dt, fr, kT = float(timestep), float(friction), units.kB * float(temperature_K)
        sigma = np.sqrt(2 * kT * fr / m)
        # coefficients exactly as ase.md.langevin.Langevin.updatevars
        self.dt = dt
        self.c1 = dt / 2.0 - dt * dt * fr / 8.0
        self.c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
        self.c3 = torch.as_tensor(np.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0)
        c5 = dt**1.5 * sigma / (2 * np.sqrt(3))
        self.c5 = torch.as_tensor(c5)
        self.c4 = torch.as_tensor(fr / 2.0 * c5)
        self.masses = torch.as_tensor(m)
        self.rngs = list(rngs)

    def _noise(self, shape: tuple[int, ...], active: Tensor) -> tuple[Tensor, Tensor]:
        xi = np.zeros(shape)
        eta = np.zeros(shape)
        for k in np.flatnonzero(active.cpu().numpy()):
            xi[k] = self.rngs[k].standard_normal(size=shape[1:])
            eta[k] = self.rngs[k].standard_normal(size=shape[1:])
        return torch.from_numpy(xi), torch.from_numpy(eta)

    def step(self, pos: Tensor, mom: Tensor, forces: Tensor, force_fn: ForceFn,
             active: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step; returns (positions, momenta, forces, energy) at the new time."""
        m = self.masses
        v = mom / m
        xi, eta = self._noise(tuple(pos.shape), active)
        rnd_pos = self.c5 * eta
        rnd_vel = self.c3 * xi - self.c4 * eta
        v = v + (self.c1 * forces / m - self.c2 * v + rnd_vel)
        r = pos + self.dt * v + rnd_pos
        # ASE recomputes v from the positions (the RATTLE hook); kept for identical rounding
        v = (r - pos - rnd_pos) / self.dt
        energy, forces = force_fn(r)
        v = v + (self.c1 * forces / m - self.c2 * v + rnd_vel)
        return r, v * m, forces, energy


@dataclass
class _Log:
    """Per-replica logged frames."""

    steps: list
    epot: list
    ekin: list
    temp: list
    frames: list


def run_batched_md(
    atoms: Atoms | Sequence[Atoms],
    model,
    n_replicas: int,
    ensemble: str = "nvt",
    temperature_K: float = 500.0,
    timestep_fs: float = 0.5,
    time_ps: float = 100.0,
    friction_per_fs: float = 0.01,
    seeds: Sequence[int] | None = None,
    log_interval: int = 10,
    checks: Sequence[Check] | None = None,
    check_interval: int | None = None,
    progress: bool = True,
    compile: bool = True,
    head: str = "main",
    keep_frames: bool = True,
    initial_temperature_K: float | None = None,
    momenta: np.ndarray | None = None,
    thermostat_rngs: Sequence[np.random.Generator] | None = None,
    trajectories: Sequence[str | Path] | None = None,
    append: bool = False,
) -> list[MDResult]:
    """Integrate ``n_replicas`` independent replicas of one molecule with one model call per step.

    ``atoms``: the starting structure (shared by all replicas) or one structure per replica, all with
    the same atomic numbers, non-periodic. ``model``: a ``MultiHeadPotential`` with the TensorNet
    representation or a checkpoint path (a private copy is used, in the model's dtype).
    ``seeds`` (default ``0..n_replicas-1``) seed each replica as :func:`run_md`'s ``seed`` does.
    ``checks``: per-replica early-stop checks as in :func:`run_md`, evaluated every
    ``check_interval`` steps (default ``log_interval``); None means a :class:`BondCollapseCheck`
    against the starting structure (threshold 0.5 Å); ``()`` disables them. The finite check runs
    on every step. Returns one :class:`MDResult` per replica (``extra`` holds ``replica``,
    ``n_replicas``, ``model_calls``, the ``final_positions``/``final_momenta`` and the replica's
    ``thermostat_rng``; ``seconds`` is the wall time of the whole batch).

    Continuation: pass one structure per replica (the last positions), ``momenta`` (B, N, 3) and the
    ``thermostat_rng`` generators the previous call returned, and a chunked run follows the single
    long run exactly (tested); long benchmarks use this to save results chunk by chunk.
    ``trajectories``: one ASE ``.traj`` path per replica; every logged frame (positions, momenta,
    energy, forces) is written as it happens and ASE flushes each frame, so a crash keeps what was
    simulated. ``append=True`` continues existing files (a chunked run then writes each chunk's first
    frame, the previous chunk's last, only once).
    See the module docstring for the integrators and the freezing of failed replicas.
    """
    from ttcalc.fast import FastEvaluator

    if ensemble not in ("nvt", "nve"):
        raise ValueError(f"run_batched_md: ensemble must be 'nvt' or 'nve', got {ensemble!r}")
    if int(n_replicas) < 1:
        raise ValueError(f"run_batched_md: n_replicas must be >= 1, got {n_replicas}")
    n_replicas = int(n_replicas)
    if not timestep_fs > 0 or not time_ps >= 0:
        raise ValueError(f"run_batched_md: need timestep_fs > 0 and time_ps >= 0, got {timestep_fs}, {time_ps}")
    if log_interval < 1 or (check_interval is not None and check_interval < 1):
        raise ValueError("run_batched_md: log_interval and check_interval must be >= 1")
    if ensemble == "nvt" and not friction_per_fs > 0:
        raise ValueError(f"run_batched_md: NVT needs friction_per_fs > 0, got {friction_per_fs}")
    seeds = list(range(n_replicas)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n_replicas:
        raise ValueError(f"run_batched_md: {len(seeds)} seeds for {n_replicas} replicas")
    starts = _starting_structures(atoms, n_replicas)
    check_interval = log_interval if check_interval is None else check_interval
    if checks is None:
        checks = [BondCollapseCheck(starts[0].positions, numbers=starts[0].numbers)]
    checks = list(checks)
    if trajectories is not None and len(trajectories) != n_replicas:
        raise ValueError(f"run_batched_md: {len(trajectories)} trajectory paths for {n_replicas} replicas")
    model = _private_model(model)

    started = time.perf_counter()
    n_total = int(round(time_ps * 1000.0 / timestep_fs))
    dt = timestep_fs * units.fs
    numbers = starts[0].numbers.copy()
    masses = starts[0].get_masses()
    n_atoms = len(numbers)

    # per-replica initial velocities and thermostat generators, as run_md draws them
    drawn_momenta, drawn_rngs = [], []
    initial = temperature_K if initial_temperature_K is None else initial_temperature_K
    for start, seed in zip(starts, seeds):
        velocity_seed, thermostat_seed = np.random.SeedSequence(seed).spawn(2)
        if momenta is None:
            _initial_velocities(start, initial, np.random.default_rng(velocity_seed))
            drawn_momenta.append(start.get_momenta())
        drawn_rngs.append(np.random.default_rng(thermostat_seed))
    if momenta is not None:
        momenta = np.asarray(momenta, dtype=np.float64)
        if momenta.shape != (n_replicas, len(starts[0]), 3):
            raise ValueError(f"run_batched_md: momenta must have shape {(n_replicas, len(starts[0]), 3)}, "
                             f"got {momenta.shape}")
    else:
        momenta = np.stack(drawn_momenta)
    if thermostat_rngs is None:
        thermostat_rngs = drawn_rngs
    elif len(thermostat_rngs) != n_replicas:
        raise ValueError(f"run_batched_md: {len(thermostat_rngs)} thermostat generators for {n_replicas} replicas")
    pos = torch.as_tensor(np.stack([a.positions for a in starts]), dtype=torch.float64)
    mom = torch.as_tensor(momenta, dtype=torch.float64)
    parked = pos.clone()  # where frozen replicas wait: finite, valid input for the shared call

    if ensemble == "nvt":
        integrator = BatchedLangevin(masses, dt, temperature_K, friction_per_fs / units.fs, thermostat_rngs)
    else:
        integrator = BatchedVelocityVerlet(masses, dt)

    evaluator = FastEvaluator(model, numbers, head=head, replicas=n_replicas, compile=compile)
    if compile:
        evaluator.check(pos.to(model.dtype))  # the correctness guard (falls back to eager)
    active = torch.ones(n_replicas, dtype=torch.bool)
    calls = 0

    def force_fn(r: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        energy, _, forces = evaluator(r.to(model.dtype))
        forces = forces.to(torch.float64)
        # frozen replicas feel nothing: with zero momenta and noise they stay parked
        return energy.to(torch.float64), torch.where(active[:, None, None], forces, 0.0)

    logs = [_Log([], [], [], [], []) for _ in range(n_replicas)]
    status = ["finished"] * n_replicas
    message = [""] * n_replicas
    stop_step = [n_total] * n_replicas
    masses_t = integrator.masses  # (N, 1), float64

    # a continued file already holds this chunk's first frame (the previous chunk's last)
    continued = [append and Path(p).exists() for p in (trajectories or [])]
    writers = [_trajectory_writer(p, c) for p, c in zip(trajectories or [], continued)]

    def log_frames(step: int, energy: Tensor, forces: Tensor) -> None:
        ekin = 0.5 * (mom * (mom / masses_t)).sum((1, 2))  # ASE: ½ p·v
        dof = 3 * n_atoms  # ASE's get_temperature without constraints
        e_np, k_np, p_np = energy.numpy(), ekin.numpy(), pos.numpy()
        for k in np.flatnonzero(active.numpy()):
            rec = logs[k]
            rec.steps.append(step)
            rec.epot.append(float(e_np[k]))
            rec.ekin.append(float(k_np[k]))
            rec.temp.append(2 * float(k_np[k]) / (dof * units.kB))
            if keep_frames:
                rec.frames.append(p_np[k].copy())
            if writers and not (continued[k] and step == 0):
                frame = Atoms(numbers=numbers, positions=p_np[k], momenta=mom[k].numpy())
                frame.calc = SinglePointCalculator(frame, energy=float(e_np[k]), forces=forces[k].numpy())
                writers[k].write(frame)

    def freeze(k: int, step: int, failure: CheckFailure) -> None:
        active[k] = False
        status[k], message[k], stop_step[k] = failure.status, failure.message, step
        logger.info("run_batched_md: replica %d (seed %d) stopped at step %d: %s: %s",
                    k, seeds[k], step, failure.status, failure.message)

    def evaluate(step: int, energy: Tensor, forces: Tensor) -> None:
        finite = (torch.isfinite(energy) & torch.isfinite(forces).all(-1).all(-1)
                  & torch.isfinite(pos).all(-1).all(-1))
        for k in np.flatnonzero((active & ~finite).numpy()):
            what = "positions" if not bool(torch.isfinite(pos[k]).all()) else "energy or forces"
            freeze(k, step, CheckFailure("nonfinite", f"non-finite {what}"))
        if checks and step % check_interval == 0:
            for k in np.flatnonzero(active.numpy()):
                view = Atoms(numbers=numbers, positions=pos[k].numpy())
                view.calc = SinglePointCalculator(view, energy=float(energy[k]), forces=forces[k].numpy())
                for check in checks:
                    failure = evaluate_check(check, view, float(energy[k]))
                    if failure is not None:
                        freeze(k, step, failure)
                        break

    def park() -> None:
        frozen = ~active
        if bool(frozen.any()):
            pos[frozen] = parked[frozen]
            mom[frozen] = 0.0
            forces[frozen] = 0.0

    bar = tqdm(total=n_total, disable=not progress, file=sys.stderr, unit="step", leave=False,
               desc=f"batched MD {ensemble} {temperature_K:g} K x{n_replicas}")
    try:
        try:
            energy, forces = force_fn(pos)
        except Exception as exc:  # a model failure ends every replica, with its message
            _fail_all(active, status, message, stop_step, 0, exc)
        else:
            log_frames(0, energy, forces)
            evaluate(0, energy, forces)
            park()
            for step in range(1, n_total + 1):
                if not bool(active.any()):
                    break
                try:
                    pos, mom, forces, energy = integrator.step(pos, mom, forces, force_fn, active)
                except Exception as exc:
                    _fail_all(active, status, message, stop_step, step - 1, exc)
                    break
                bar.update(1)
                if step % log_interval == 0:
                    log_frames(step, energy, forces)
                evaluate(step, energy, forces)
                park()
    finally:
        bar.close()
        for writer in writers:
            writer.close()

    seconds = time.perf_counter() - started
    results = []
    for k in range(n_replicas):
        rec = logs[k]
        epot, ekin = np.asarray(rec.epot), np.asarray(rec.ekin)
        results.append(MDResult(
            status=status[k],
            time_ps=stop_step[k] * timestep_fs / 1000.0,
            steps=stop_step[k],
            n_atoms=n_atoms,
            trajectory=None if trajectories is None else str(trajectories[k]),
            times_ps=np.asarray(rec.steps, dtype=np.float64) * timestep_fs / 1000.0,
            energies={"potential": epot, "kinetic": ekin, "total": epot + ekin},
            temperatures=np.asarray(rec.temp),
            frames=np.stack(rec.frames) if keep_frames and rec.frames else None,
            message=message[k],
            seconds=seconds,
            ensemble=ensemble,
            temperature_K=float(temperature_K),
            timestep_fs=float(timestep_fs),
            seed=seeds[k],
            log_interval=int(log_interval),
            extra={"replica": k, "n_replicas": n_replicas, "model_calls": calls,
                   "compiled": bool(evaluator.compiled), "final_positions": pos[k].numpy().copy(),
                   "final_momenta": mom[k].numpy().copy(), "thermostat_rng": thermostat_rngs[k]},
        ))
    return results


def _trajectory_writer(path: str | Path, append: bool):
    from ase.io.trajectory import TrajectoryWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return TrajectoryWriter(str(path), "a" if append else "w")


def _starting_structures(atoms: Atoms | Sequence[Atoms], n_replicas: int) -> list[Atoms]:
    """One private copy per replica (without calculator); validates a shared, non-periodic molecule."""
    if isinstance(atoms, Atoms):
        starts = [atoms.copy() for _ in range(n_replicas)]
    else:
        starts = [a.copy() for a in atoms]
        if len(starts) != n_replicas:
            raise ValueError(f"run_batched_md: {len(starts)} structures for {n_replicas} replicas")
    if len(starts[0]) == 0:
        raise ValueError("run_batched_md: empty structure")
    for a in starts:
        if not np.array_equal(a.numbers, starts[0].numbers):
            raise ValueError("run_batched_md: all replicas must have the same atomic numbers in the same order")
        if a.pbc.any():
            raise ValueError("run_batched_md: batched replicas use the dense molecular kernel; "
                             "periodic structures are not supported")
        if not np.all(np.isfinite(a.positions)):
            # frozen replicas are parked at their start: it must be a valid model input
            raise ValueError("run_batched_md: starting positions contain NaN or infinite values")
    return starts


def _private_model(model):
    """A frozen private copy (the caller's model keeps its requires_grad flags), or a loaded path."""
    if isinstance(model, (str, Path)):
        from ttcalc.checkpoint import load_checkpoint

        model = load_checkpoint(model)
    else:
        model = copy.deepcopy(model)
    # weight gradients are never needed: without them the backward is only d/dr
    return model.eval().requires_grad_(False)


def _fail_all(active: Tensor, status: list, message: list, stop_step: list, step: int, exc: Exception) -> None:
    logger.warning("run_batched_md: model call failed at step %d: %s", step, exc)
    for k in np.flatnonzero(active.numpy()):
        status[k], message[k], stop_step[k] = "error", f"{type(exc).__name__}: {exc}", step
    active[:] = False
