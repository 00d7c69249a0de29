"""Molecular dynamics with any ASE calculator: NVT (Langevin) or NVE (velocity Verlet).

Conventions
-----------
* Friction. ASE's ``Langevin`` takes the friction in inverse ASE time units; one ASE time unit is
  ``1 / ase.units.fs`` = 10.18 fs. :func:`run_md` takes ``friction_per_fs`` and passes
  ``friction_per_fs / units.fs``. The bare ``friction=0.01`` found in published MD scripts therefore
  means 0.01 per 10.18 fs = 9.8e-4 fs⁻¹ (0.98 ps⁻¹), about 10.2× weaker coupling than the intended
  0.01 fs⁻¹ (10 ps⁻¹, ASE value 0.1018).
* Initial velocities: Maxwell–Boltzmann at ``initial_temperature_K`` (default: the target), drawn from
  a seeded generator. For non-periodic systems the centre-of-mass momentum and the rigid rotation are
  then removed (``Stationary`` + ``ZeroRotation``, temperature preserved), so a molecule neither drifts
  nor spins. The Langevin thermostat gets its own generator: both are children of
  ``np.random.SeedSequence(seed)``. ``fixcm=False`` (ASE deprecates ``fixcm=True``, which biases small
  systems); all observables here are translation-invariant, so the centre of mass may diffuse.
* Frames are logged every ``log_interval`` steps, starting at step 0: frame k is at
  ``k * log_interval * timestep_fs``. The trajectory file is ASE's ``.traj``; ASE's writer flushes the
  file after every frame, so a crash loses at most the current interval.
* Observers (e.g. :class:`~md_protocols.online.PeriodicLearning`) are called at every logged
  frame, after it is written and before the sidecar is; one that returns True has changed the
  calculator (new weights), which is then reset so the next step's forces are recomputed. Their
  ``state_dict()`` is kept in the sidecar and put back on resume.
* Resume. Next to ``trajectory`` a sidecar ``<trajectory>.state.json`` (written atomically after each
  frame) holds the step count, the thermostat generator's ``bit_generator.state`` and the run settings.
  ``resume=True`` restarts from the last frame's positions + momenta and that generator state, so an
  interrupted + resumed run reproduces the uninterrupted one exactly (for a deterministic calculator).
  Resuming with other settings than the stored ones raises ``ValueError``; a longer ``time_ps``
  extends a finished run. A run that ended "collapsed", "exploded" or "nonfinite" is not continued.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.io.trajectory import TrajectoryReader, TrajectoryWriter
from ase.md.langevin import Langevin
from ase.md.logger import MDLogger
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from tqdm.auto import tqdm

from md_protocols.checks import Check, CheckFailure, FiniteCheck, evaluate_check
from md_protocols.files import atomic_path
from md_protocols.protocol import MDProtocol, resolve_protocol
from md_protocols.report import to_jsonable, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["MDResult", "run_md", "state_path", "saved_time_ps", "STATUSES"]

#: every status an :class:`MDResult` can have ("stopped": a plain user check returned False)
STATUSES = ("finished", "collapsed", "exploded", "nonfinite", "error", "stopped")
_TERMINAL = ("collapsed", "exploded", "nonfinite", "stopped")
_STATE_VERSION = 1


@dataclass
class MDResult:
    """What an MD run did. Arrays are per logged frame (every ``log_interval`` steps, from step 0).

    ``time_ps`` is the simulated time reached: for a failing check, the time of the first failing
    check; for a calculator error, the last completed step. ``energies`` has ``"potential"``,
    ``"kinetic"`` and ``"total"`` (eV); ``temperatures`` in K (3N degrees of freedom, ASE's
    ``get_temperature``); ``frames`` ``(T, N, 3)`` in Å (None if not kept).
    """

    status: str
    time_ps: float
    steps: int
    n_atoms: int
    trajectory: str | None
    times_ps: np.ndarray
    energies: dict[str, np.ndarray]
    temperatures: np.ndarray
    frames: np.ndarray | None = None
    message: str = ""
    seconds: float = 0.0
    ensemble: str = "nvt"
    temperature_K: float = 0.0
    timestep_fs: float = 0.0
    seed: int = 0
    log_interval: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def frame_interval_fs(self) -> float:
        """Time between logged frames (fs)."""
        return self.log_interval * self.timestep_fs

    def to_dict(self, include_frames: bool = False) -> dict:
        """JSON-able dict (frames only with ``include_frames``; non-finite numbers become None)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "frames"}
        if include_frames:
            out["frames"] = self.frames
        return to_jsonable(out)


def state_path(trajectory: str | os.PathLike) -> Path:
    """The resume sidecar of a trajectory: ``<trajectory>.state.json``."""
    return Path(os.fspath(trajectory) + ".state.json")


def saved_time_ps(trajectory: str | os.PathLike) -> float:
    """Simulated time (ps) of the last frame a resumable run saved to ``trajectory`` (0 if none):
    the ``time_ps`` from which ``run_md(..., resume=True)`` continues it."""
    side = state_path(trajectory)
    if not side.exists():
        return 0.0
    state = json.loads(side.read_text())
    return state["step"] * state["settings"]["timestep_fs"] / 1000.0


class _Recorder:
    """Per-frame arrays of one run kept in memory, and the :class:`MDResult` made from them."""

    def __init__(self, keep_frames: bool):
        self.keep_frames = keep_frames
        self.steps: list[int] = []
        self.epot: list[float] = []
        self.ekin: list[float] = []
        self.temp: list[float] = []
        self.frames: list[np.ndarray] = []

    def add(self, step: int, atoms: Atoms, epot: float) -> None:
        self.append(step, epot, atoms.get_kinetic_energy(), atoms.get_temperature(), atoms.positions)

    def append(self, step: int, epot: float, ekin: float, temp: float, positions: np.ndarray) -> None:
        self.steps.append(step)
        self.epot.append(float(epot))
        self.ekin.append(float(ekin))
        self.temp.append(float(temp))
        if self.keep_frames:
            self.frames.append(np.array(positions, copy=True))

    def result(self, protocol: MDProtocol, status: str, stop_step: int, n_atoms: int, seed: int,
               trajectory: str | None, message: str, seconds: float, extra: dict | None = None) -> MDResult:
        epot, ekin = np.asarray(self.epot), np.asarray(self.ekin)
        return MDResult(
            status=status, time_ps=stop_step * protocol.timestep_fs / 1000.0, steps=stop_step, n_atoms=n_atoms,
            trajectory=trajectory,
            times_ps=np.asarray(self.steps, dtype=np.float64) * protocol.timestep_fs / 1000.0,
            energies={"potential": epot, "kinetic": ekin, "total": epot + ekin},
            temperatures=np.asarray(self.temp),
            frames=np.stack(self.frames) if self.keep_frames and self.frames else None,
            message=message, seconds=seconds, ensemble=protocol.ensemble,
            temperature_K=float(protocol.temperature_K), timestep_fs=float(protocol.timestep_fs),
            seed=int(seed), log_interval=int(protocol.log_interval), extra=extra or {})


def _settings(protocol: MDProtocol, seed: int, atoms: Atoms) -> dict:
    return {
        "ensemble": protocol.ensemble,
        "temperature_K": float(protocol.temperature_K),
        "timestep_fs": float(protocol.timestep_fs),
        "friction_per_fs": float(protocol.friction_per_fs) if protocol.ensemble == "nvt" else None,
        "seed": int(seed),
        "log_interval": int(protocol.log_interval),
        "numbers": [int(z) for z in atoms.numbers],
    }


def _initial_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    if temperature_K <= 0:
        atoms.set_momenta(np.zeros((len(atoms), 3)))
        return
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    if not atoms.pbc.any() and len(atoms) > 1:
        Stationary(atoms)
        if len(atoms) > 2:
            ZeroRotation(atoms)


def _load_resume(path: Path, atoms: Atoms, settings: dict, recorder: _Recorder) -> dict:
    """Restore positions/momenta from the trajectory and return the sidecar state."""
    state = json.loads(state_path(path).read_text())
    if state.get("version") != _STATE_VERSION:
        raise ValueError(f"run_md: {state_path(path)} has an unknown state version {state.get('version')}")
    stored = state["settings"]
    diff = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
    if diff:
        raise ValueError(f"run_md(resume=True): settings differ from the stored run (stored, given): {diff}")
    n_frames = int(state["n_frames"])
    reader = TrajectoryReader(str(path))
    try:
        n_file = len(reader)
        if n_file < n_frames:
            raise ValueError(f"run_md: {path} has {n_file} frames but its state says {n_frames}")
        frames = [reader[i] for i in range(n_frames)]
    finally:
        reader.close()
    if n_file > n_frames:
        # a crash between the frame and the sidecar write: drop the frame the sidecar does not know
        logger.warning("run_md: %s has %d frames, state has %d; truncating", path, n_file, n_frames)
        with atomic_path(path) as tmp, TrajectoryWriter(tmp, "w") as writer:
            for frame in frames:
                writer.write(frame)
    interval = settings["log_interval"]
    for k, frame in enumerate(frames):
        epot = frame.calc.results.get("energy", np.nan) if frame.calc is not None else np.nan
        recorder.add(k * interval, frame, epot)
    last = frames[-1]
    atoms.set_cell(last.cell)
    atoms.set_positions(last.positions)
    atoms.set_momenta(last.get_momenta())
    return state


def run_md(
    atoms: Atoms,
    calc: Calculator,
    protocol: MDProtocol | None = None,
    *,
    seed: int = 0,
    trajectory: str | os.PathLike | None = None,
    checks: Sequence[Check] = (),
    progress: bool = True,
    logfile: str | os.PathLike | None = None,
    resume: bool = False,
    keep_frames: bool = True,
    observers: Sequence = (),
    **settings,
) -> MDResult:
    """Run NVT Langevin or NVE velocity-Verlet MD on a copy of ``atoms`` with ``calc``.

    ``protocol`` (default :class:`~md_protocols.protocol.MDProtocol`) sets the ensemble, temperature,
    time step, length, friction and logging; its fields may also be given as keywords
    (``run_md(atoms, calc, ensemble="nve", time_ps=10)``), which override it.
    ``checks`` are evaluated every ``check_interval`` steps (default ``log_interval``) after
    :class:`FiniteCheck`, which runs after every step; the first failure stops the run (see
    :mod:`md_protocols.checks`). A calculator exception stops it with status ``"error"`` and the
    message. ``observers`` are called at each logged frame (module docstring); their
    ``events`` go to ``result.extra["observers"]``. See the module docstring for friction units,
    seeding, trajectory and resume.
    """
    protocol = resolve_protocol("run_md", protocol, settings)
    if calc is None:
        raise ValueError("run_md: a calculator is required")
    if resume and trajectory is None:
        raise ValueError("run_md: resume=True needs a trajectory path")
    started = time.perf_counter()
    atoms = atoms.copy()
    atoms.calc = calc
    path = None if trajectory is None else Path(trajectory)
    stored = _settings(protocol, seed, atoms)
    recorder = _Recorder(keep_frames)
    for obs in observers:
        obs.bind(path)
    start = _start(atoms, path, resume, stored, recorder, protocol, seed)
    for obs, saved in zip(observers, start.observer_states):
        obs.load_state_dict(saved)
    run = _SingleRun(atoms, protocol, start, path, stored, recorder, [FiniteCheck(), *checks], logfile, progress,
                     list(observers))
    try:
        failure, stop_step = run.integrate()
    finally:
        run.close()
    if failure is not None:
        logger.info("run_md stopped at step %d (%.4f ps): %s: %s", stop_step,
                    stop_step * protocol.timestep_fs / 1000, failure.status, failure.message)
    extra = {"observers": [getattr(o, "events", []) for o in observers]} if observers else None
    return recorder.result(protocol, "finished" if failure is None else failure.status, stop_step, len(atoms), seed,
                           None if path is None else str(path), "" if failure is None else failure.message,
                           time.perf_counter() - started, extra)


@dataclass
class _Start:
    """Where a run starts: the step, the thermostat generator, whether it resumes a saved run, and
    the failure a resumed run had already ended with (with its step)."""

    step: int
    rng: np.random.Generator
    resuming: bool
    stored_failure: tuple[CheckFailure, int] | None = None
    observer_states: list = field(default_factory=list)


def _start(atoms: Atoms, path: Path | None, resume: bool, settings: dict, recorder: _Recorder, protocol: MDProtocol,
           seed: int) -> _Start:
    """Resume from ``path`` (positions, momenta, generator state, logged frames) or draw fresh velocities."""
    velocity_seed, thermostat_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(thermostat_seed)
    # an empty file is what a run that failed before its first frame leaves: nothing to resume
    resuming = resume and path.exists() and path.stat().st_size > 0
    if resuming and not state_path(path).exists():
        raise ValueError(f"run_md(resume=True): {path} exists but has no {state_path(path).name}; cannot resume")
    if resume and not resuming:
        logger.info("run_md: nothing to resume at %s; starting a new run", path)
    if not resuming:
        if path is not None:
            state_path(path).unlink(missing_ok=True)  # a stale sidecar must not describe the new file
        _initial_velocities(atoms, protocol.initial_K, np.random.default_rng(velocity_seed))
        return _Start(0, rng, resuming=False)
    state = _load_resume(path, atoms, settings, recorder)
    step = int(state["step"])
    if step > protocol.n_steps:
        raise ValueError(f"run_md(resume=True): {path} is already at {step * protocol.timestep_fs / 1000:g} ps "
                         f"> time_ps={protocol.time_ps:g}")
    if state["rng_state"] is not None:
        rng = np.random.Generator(getattr(np.random, state["rng_state"]["bit_generator"])())
        rng.bit_generator.state = state["rng_state"]
    stored = None
    if state["status"] in _TERMINAL:
        stored = (CheckFailure(state["status"], state["message"]), int(state["stop_step"]))
    return _Start(step, rng, resuming=True, stored_failure=stored,
                  observer_states=list(state.get("observers", [])))


class _SingleRun:
    """One ASE integrator on one structure, with its trajectory, sidecar, log file, checks and progress bar."""

    def __init__(self, atoms: Atoms, protocol: MDProtocol, start: _Start, path: Path | None, settings: dict,
                 recorder: _Recorder, checks: list[Check], logfile, progress: bool, observers: list):
        self.atoms, self.protocol, self.start, self.path = atoms, protocol, start, path
        self.observers = observers
        self.settings, self.recorder, self.checks = settings, recorder, checks
        dt = protocol.timestep_fs * units.fs
        if protocol.ensemble == "nvt":
            self.dyn = Langevin(atoms, timestep=dt, temperature_K=protocol.temperature_K,
                                friction=protocol.friction_per_fs / units.fs, fixcm=False, rng=start.rng)
        else:
            self.dyn = VelocityVerlet(atoms, timestep=dt)
        self.dyn.nsteps = start.step
        mode = "a" if start.resuming else "w"
        self.writer = TrajectoryWriter(str(path), mode) if path is not None else None
        self.md_log = None
        if logfile is not None:
            self.md_log = MDLogger(self.dyn, atoms, os.fspath(logfile), header=not start.resuming, mode=mode)
        self.bar = tqdm(total=protocol.n_steps, initial=min(start.step, protocol.n_steps), disable=not progress,
                        file=sys.stderr, unit="step", desc=f"MD {protocol.ensemble} {protocol.temperature_K:g} K",
                        leave=False)

    def save_state(self, status: str, message: str = "", stop_step: int | None = None) -> None:
        if self.path is None:
            return
        rec = self.recorder
        write_json_atomic(state_path(self.path), {
            "version": _STATE_VERSION, "settings": self.settings, "status": status, "message": message,
            "step": rec.steps[-1], "n_frames": len(rec.steps), "stop_step": stop_step,
            "rng_state": self.start.rng.bit_generator.state if self.protocol.ensemble == "nvt" else None,
            "observers": [obs.state_dict() for obs in self.observers],
        })

    def log_frame(self, step: int, epot: float) -> None:
        self.recorder.add(step, self.atoms, epot)
        if self.writer is not None:
            self.writer.write(self.atoms)
        if self.md_log is not None:
            self.md_log()
        if any([obs(step, self.atoms) for obs in self.observers]):  # every observer sees the frame
            self.atoms.calc.reset()  # new weights: the next step recomputes the forces
        self.save_state("running")
        self.bar.set_postfix(T=f"{self.recorder.temp[-1]:.0f} K", refresh=False)

    def evaluate(self, step: int, epot: float) -> CheckFailure | None:
        for i, check in enumerate(self.checks):
            if i > 0 and step % self.protocol.every_check:
                break  # the finite check (first) runs every step, the others every check interval
            failure = evaluate_check(check, self.atoms, epot)
            if failure is not None:
                return failure
        return None

    def _energy(self) -> tuple[float | None, CheckFailure | None]:
        try:
            return self.atoms.get_potential_energy(), None
        except Exception as exc:  # any calculator failure ends the run, with its message
            return None, CheckFailure("error", f"{type(exc).__name__}: {exc}")

    def integrate(self) -> tuple[CheckFailure | None, int]:
        """Run to ``protocol.n_steps``; the failure that stopped it (None) and the last step reached."""
        start = self.start
        if start.stored_failure is not None:
            logger.info("run_md: %s already ended with status %r; not continuing", self.path,
                        start.stored_failure[0].status)
            return start.stored_failure
        failure, stop_step = None, start.step
        if not start.resuming:
            epot, failure = self._energy()
            if failure is None:
                self.log_frame(0, epot)
                failure = self.evaluate(0, epot)
        for step in range(start.step + 1, self.protocol.n_steps + 1):
            if failure is not None:
                break
            try:
                self.dyn.step()
            except Exception as exc:
                failure = CheckFailure("error", f"{type(exc).__name__}: {exc}")
                break
            self.dyn.nsteps = step
            epot, failure = self._energy()
            if failure is not None:
                break
            stop_step = step
            self.bar.update(1)
            if step % self.protocol.log_interval == 0:
                self.log_frame(step, epot)
            failure = self.evaluate(step, epot)
        if failure is None:
            stop_step = self.protocol.n_steps
        if self.recorder.steps:
            self.save_state("finished" if failure is None else failure.status,
                            "" if failure is None else failure.message, stop_step)
        return failure, stop_step

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.md_log is not None:
            self.md_log.close()
