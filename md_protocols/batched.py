"""Batched replicas: B independent copies of one molecule integrated together, one model call per step.

The replicas share one force function, ``positions (B, N, 3) -> (energy (B,), forces (B, N, 3))``
(JAX-MD's convention: a simulation takes a force function), so every MD step is a single call. Positions
and momenta are float64 torch tensors. A model can stand in for the function if it makes one: any object
with a ``batched_force_fn(numbers, positions, compile=..., head=...)`` method (ttcalc's
``MultiHeadPotential`` builds its compiled dense kernel for B replicas there). The physics is that of
the ASE integrators used by :func:`md_protocols.run_md`, written for a leading replica axis:

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
replica therefore follows the same trajectory as ``run_md`` with a calculator for the same potential
(up to floating-point summation order).

A replica whose energy, forces or positions turn non-finite, or that fails a check (by default Fu et
al.'s bond-collapse criterion against the starting structure, :class:`BondCollapseCheck`), is frozen:
its status and stop time are recorded, it is parked at its starting positions with zero momenta,
forces and noise, and it no longer contributes; the others continue.
"""
from __future__ import annotations

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
from md_protocols.protocol import MDProtocol, resolve_protocol
from md_protocols.simulate import MDResult, _initial_velocities, _Recorder

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


def run_batched_md(
    atoms: Atoms | Sequence[Atoms],
    force_fn,
    n_replicas: int,
    protocol: MDProtocol | None = None,
    *,
    seeds: Sequence[int] | None = None,
    checks: Sequence[Check] | None = None,
    progress: bool = True,
    compile: bool = True,
    head: str = "main",
    keep_frames: bool = True,
    momenta: np.ndarray | None = None,
    thermostat_rngs: Sequence[np.random.Generator] | None = None,
    trajectories: Sequence[str | Path] | None = None,
    append: bool = False,
    **settings,
) -> list[MDResult]:
    """Integrate ``n_replicas`` independent replicas of one molecule with one force call per step.

    ``protocol`` and the keyword ``settings`` (its fields: ``ensemble``, ``temperature_K``, ...) set the
    integration as in :func:`~md_protocols.run_md`.
    ``atoms``: the starting structure (shared by all replicas) or one structure per replica, all with
    the same atomic numbers, non-periodic. ``force_fn``: a :data:`ForceFn`, or a model with a
    ``batched_force_fn(numbers, positions, compile=compile, head=head)`` method that returns one
    (``compile`` and ``head`` are only passed on to it).
    ``seeds`` (default ``0..n_replicas-1``) seed each replica as :func:`run_md`'s ``seed`` does.
    ``checks``: per-replica early-stop checks as in :func:`run_md`, evaluated every
    ``check_interval`` steps (default ``log_interval``); None means a :class:`BondCollapseCheck`
    against the starting structure (threshold 0.5 Å); ``()`` disables them. The finite check runs
    on every step. Returns one :class:`MDResult` per replica (``extra`` holds ``replica``,
    ``n_replicas``, ``model_calls``, ``compiled`` (the force function's flag, if it has one), the
    ``final_positions``/``final_momenta`` and the replica's ``thermostat_rng``; ``seconds`` is the
    wall time of the whole batch).

    Continuation: pass one structure per replica (the last positions), ``momenta`` (B, N, 3) and the
    ``thermostat_rng`` generators the previous call returned, and a chunked run follows the single
    long run exactly (tested); long benchmarks use this to save results chunk by chunk.
    ``trajectories``: one ASE ``.traj`` path per replica; every logged frame (positions, momenta,
    energy, forces) is written as it happens and ASE flushes each frame, so a crash keeps what was
    simulated. ``append=True`` continues existing files (a chunked run then writes each chunk's first
    frame, the previous chunk's last, only once).
    See the module docstring for the integrators and the freezing of failed replicas.
    """
    protocol = resolve_protocol("run_batched_md", protocol, settings)
    if int(n_replicas) < 1:
        raise ValueError(f"run_batched_md: n_replicas must be >= 1, got {n_replicas}")
    n_replicas = int(n_replicas)
    seeds = list(range(n_replicas)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n_replicas:
        raise ValueError(f"run_batched_md: {len(seeds)} seeds for {n_replicas} replicas")
    starts = _starting_structures(atoms, n_replicas)
    if checks is None:
        checks = [BondCollapseCheck(starts[0].positions, numbers=starts[0].numbers)]
    if trajectories is not None and len(trajectories) != n_replicas:
        raise ValueError(f"run_batched_md: {len(trajectories)} trajectory paths for {n_replicas} replicas")
    momenta, thermostat_rngs = _initial_state(starts, seeds, protocol.initial_K, momenta, thermostat_rngs)

    started = time.perf_counter()
    replicas = _Replicas(starts, momenta, seeds, list(checks), protocol, keep_frames=keep_frames,
                         trajectories=trajectories, append=append)
    forces_of = _as_force_fn(force_fn, starts, compile=compile, head=head)
    dt = protocol.timestep_fs * units.fs
    if protocol.ensemble == "nvt":
        integrator = BatchedLangevin(starts[0].get_masses(), dt, protocol.temperature_K,
                                     protocol.friction_per_fs / units.fs, thermostat_rngs)
    else:
        integrator = BatchedVelocityVerlet(starts[0].get_masses(), dt)
    calls = 0

    def masked_forces(r: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        energy, forces = forces_of(r)
        # frozen replicas feel nothing: with zero momenta and noise they stay parked
        return (energy.to(torch.float64),
                torch.where(replicas.active[:, None, None], forces.to(torch.float64), 0.0))

    n_total = protocol.n_steps
    bar = tqdm(total=n_total, disable=not progress, file=sys.stderr, unit="step", leave=False,
               desc=f"batched MD {protocol.ensemble} {protocol.temperature_K:g} K x{n_replicas}")
    try:
        replicas.integrate(integrator, masked_forces, n_total, bar)
    finally:
        bar.close()
        replicas.close()
    seconds = time.perf_counter() - started
    compiled = bool(getattr(forces_of, "compiled", False))
    return [replicas.result(k, seconds, {"n_replicas": n_replicas, "model_calls": calls, "compiled": compiled,
                                         "thermostat_rng": thermostat_rngs[k]})
            for k in range(n_replicas)]


def _as_force_fn(force_fn, starts: list[Atoms], *, compile: bool, head: str) -> ForceFn:
    """``force_fn`` itself, or the force function a model makes for these replicas."""
    make = getattr(force_fn, "batched_force_fn", None)
    if make is not None:
        positions = torch.as_tensor(np.stack([a.positions for a in starts]), dtype=torch.float64)
        return make(starts[0].numbers, positions, compile=compile, head=head)
    if not callable(force_fn):
        raise TypeError(f"run_batched_md: force_fn must be a function of (B, N, 3) positions or a model with "
                        f"batched_force_fn(), not {type(force_fn).__name__}")
    return force_fn


def _initial_state(starts: list[Atoms], seeds: list[int], temperature_K: float, momenta, thermostat_rngs):
    """(B, N, 3) starting momenta and per-replica thermostat generators, drawn as :func:`run_md` draws
    them from ``np.random.SeedSequence(seed)``, unless given (a continued run)."""
    n_replicas = len(starts)
    drawn_momenta, drawn_rngs = [], []
    for start, seed in zip(starts, seeds):
        velocity_seed, thermostat_seed = np.random.SeedSequence(seed).spawn(2)
        if momenta is None:
            _initial_velocities(start, temperature_K, np.random.default_rng(velocity_seed))
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
    return momenta, list(thermostat_rngs)


class _Replicas:
    """The state of B replicas (positions, momenta, which are still running and why the others stopped),
    their logs and trajectory writers."""

    def __init__(self, starts: list[Atoms], momenta: np.ndarray, seeds: list[int], checks: list[Check],
                 protocol: MDProtocol, *, keep_frames: bool, trajectories, append: bool):
        n = len(starts)
        self.numbers = starts[0].numbers.copy()
        self.n_atoms = len(self.numbers)
        self.seeds, self.checks, self.protocol = seeds, checks, protocol
        self.pos = torch.as_tensor(np.stack([a.positions for a in starts]), dtype=torch.float64)
        self.mom = torch.as_tensor(momenta, dtype=torch.float64)
        self.parked = self.pos.clone()  # where frozen replicas wait: finite, valid input for the shared call
        self.masses = torch.as_tensor(starts[0].get_masses()[:, None])
        self.active = torch.ones(n, dtype=torch.bool)
        self.status, self.message = ["finished"] * n, [""] * n
        self.stop_step = [protocol.n_steps] * n
        self.logs = [_Recorder(keep_frames) for _ in range(n)]
        self.trajectories = trajectories
        # a continued file already holds this chunk's first frame (the previous chunk's last)
        self.continued = [append and Path(p).exists() for p in (trajectories or [])]
        self.writers = [_trajectory_writer(p, append=c) for p, c in zip(trajectories or [], self.continued)]

    def integrate(self, integrator, force_fn: ForceFn, n_total: int, bar) -> None:
        try:
            energy, forces = force_fn(self.pos)
        except Exception as exc:  # a model failure ends every replica, with its message
            self.fail_all(0, exc)
            return
        self.observe(0, energy, forces)
        for step in range(1, n_total + 1):
            if not bool(self.active.any()):
                break
            try:
                self.pos, self.mom, forces, energy = integrator.step(self.pos, self.mom, forces, force_fn,
                                                                     self.active)
            except Exception as exc:
                self.fail_all(step - 1, exc)
                break
            bar.update(1)
            self.observe(step, energy, forces)

    def observe(self, step: int, energy: Tensor, forces: Tensor) -> None:
        if step % self.protocol.log_interval == 0:
            self.log(step, energy, forces)
        self.evaluate(step, energy, forces)
        frozen = ~self.active
        if bool(frozen.any()):
            self.pos[frozen] = self.parked[frozen]
            self.mom[frozen] = 0.0
            forces[frozen] = 0.0

    def log(self, step: int, energy: Tensor, forces: Tensor) -> None:
        ekin = 0.5 * (self.mom * (self.mom / self.masses)).sum((1, 2))  # ASE: ½ p·v
        dof = 3 * self.n_atoms  # ASE's get_temperature without constraints
        e_np, k_np, p_np = energy.numpy(), ekin.numpy(), self.pos.numpy()
        for k in np.flatnonzero(self.active.numpy()):
            self.logs[k].append(step, e_np[k], k_np[k], 2 * float(k_np[k]) / (dof * units.kB), p_np[k])
            if self.writers and not (self.continued[k] and step == 0):
                frame = Atoms(numbers=self.numbers, positions=p_np[k], momenta=self.mom[k].numpy())
                frame.calc = SinglePointCalculator(frame, energy=float(e_np[k]), forces=forces[k].numpy())
                self.writers[k].write(frame)

    def evaluate(self, step: int, energy: Tensor, forces: Tensor) -> None:
        pos = self.pos
        finite = (torch.isfinite(energy) & torch.isfinite(forces).all(-1).all(-1)
                  & torch.isfinite(pos).all(-1).all(-1))
        for k in np.flatnonzero((self.active & ~finite).numpy()):
            what = "positions" if not bool(torch.isfinite(pos[k]).all()) else "energy or forces"
            self.freeze(k, step, CheckFailure("nonfinite", f"non-finite {what}"))
        if not self.checks or step % self.protocol.every_check:
            return
        for k in np.flatnonzero(self.active.numpy()):
            view = Atoms(numbers=self.numbers, positions=pos[k].numpy())
            view.calc = SinglePointCalculator(view, energy=float(energy[k]), forces=forces[k].numpy())
            for check in self.checks:
                failure = evaluate_check(check, view, float(energy[k]))
                if failure is not None:
                    self.freeze(k, step, failure)
                    break

    def freeze(self, k: int, step: int, failure: CheckFailure) -> None:
        self.active[k] = False
        self.status[k], self.message[k], self.stop_step[k] = failure.status, failure.message, step
        logger.info("run_batched_md: replica %d (seed %d) stopped at step %d: %s: %s",
                    k, self.seeds[k], step, failure.status, failure.message)

    def fail_all(self, step: int, exc: Exception) -> None:
        logger.warning("run_batched_md: model call failed at step %d: %s", step, exc)
        for k in np.flatnonzero(self.active.numpy()):
            self.status[k], self.message[k], self.stop_step[k] = "error", f"{type(exc).__name__}: {exc}", step
        self.active[:] = False

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def result(self, k: int, seconds: float, extra: dict) -> MDResult:
        extra = {"replica": k, **extra, "final_positions": self.pos[k].numpy().copy(),
                 "final_momenta": self.mom[k].numpy().copy()}
        return self.logs[k].result(self.protocol, self.status[k], self.stop_step[k], self.n_atoms, self.seeds[k],
                                   None if self.trajectories is None else str(self.trajectories[k]),
                                   self.message[k], seconds, extra)


def _trajectory_writer(path: str | Path, *, append: bool):
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
