"""Frames to adapt on: short prior MD, rattled copies, harmonic normal-mode samples, or the user's.

Kreiman & Krishnapriyan 2025, sec. 5 and A.4.3: TTT labels frames near the new structure with the
prior (MD at 500 K by default).
"""
from __future__ import annotations

import numpy as np
from ase import Atoms, units

from md_protocols.pes import finite_difference_hessian
from ttcalc.adapt.settings import TTTConfig


def prior_md_frames(atoms: Atoms, prior, n_frames: int, temperature_K: float = 500.0,
                    timestep_fs: float = 0.5, interval: int = 10, friction_per_fs: float = 0.01,
                    seed: int = 0) -> list[Atoms]:
    """Frames from Langevin MD with the prior, one every ``interval`` steps."""
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    a = atoms.copy()
    a.set_constraint(FixCom())  # ASE's replacement for Langevin(fixcm=True), deprecated since 3.28
    a.calc = prior.as_calculator()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(a, temperature_K=temperature_K, rng=rng)
    Stationary(a)
    dyn = Langevin(a, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval)
        f = a.copy()
        f.calc = None
        f.set_constraint(atoms.constraints)  # hand back the caller's constraints, not our FixCom
        frames.append(f)
    return frames


def rattled_frames(atoms: Atoms, n_frames: int, stdev: float = 0.05, seed: int = 0) -> list[Atoms]:
    """Copies with Gaussian displacements of ``stdev`` Å per coordinate."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_frames):
        f = atoms.copy()
        f.calc = None
        f.positions = f.positions + rng.normal(scale=stdev, size=f.positions.shape)
        out.append(f)
    return out


def normal_mode_frames(atoms: Atoms, prior, n_frames: int, temperature_K: float = 500.0,
                       seed: int = 0, delta: float = 0.005) -> list[Atoms]:
    """Classical harmonic samples at ``temperature_K`` from the prior's Hessian.

    Each mode k with mass-weighted eigenvalue ω_k² > 0 gets a Gaussian amplitude of variance
    k_B T / ω_k² (equipartition); translations, rotations and unstable modes are skipped.
    """
    n = len(atoms)
    x0 = atoms.positions.copy()
    hess = finite_difference_hessian(atoms, prior.as_calculator(), delta=delta)
    m = np.repeat(atoms.get_masses(), 3)
    w2, modes = np.linalg.eigh(hess / np.sqrt(np.outer(m, m)))
    keep = w2 > 1e-3 * w2.max()
    rng = np.random.default_rng(seed)
    kT = units.kB * temperature_K
    out = []
    for _ in range(n_frames):
        q = rng.normal(size=keep.sum()) * np.sqrt(kT / w2[keep])
        disp = (modes[:, keep] @ q) / np.sqrt(m)
        f = atoms.copy()
        f.calc = None
        f.positions = x0 + disp.reshape(n, 3)
        out.append(f)
    return out


def make_frames(atoms_or_frames, prior, cfg: TTTConfig) -> tuple[list[Atoms], str]:
    """Unlabelled TTT frames and a description of where they came from."""
    if isinstance(atoms_or_frames, Atoms):
        atoms = atoms_or_frames
        if cfg.frames == "md":
            return prior_md_frames(atoms, prior, cfg.n_frames, cfg.temperature_K, cfg.md_timestep_fs,
                                   cfg.md_interval, cfg.md_friction_per_fs, cfg.seed), "prior-md"
        if cfg.frames == "rattle":
            return rattled_frames(atoms, cfg.n_frames, cfg.rattle_stdev, cfg.seed), "rattle"
        return normal_mode_frames(atoms, prior, cfg.n_frames, cfg.temperature_K, cfg.seed), "normal-modes"
    frames = list(atoms_or_frames)
    if len(frames) < 2:
        raise ValueError("give one Atoms (frames are generated) or at least two frames")
    check_one_system(frames, "TTT")
    return frames, "user"


def check_one_system(frames: list[Atoms], what: str) -> None:
    numbers = frames[0].numbers
    if any(len(f) != len(numbers) or np.any(f.numbers != numbers) for f in frames):
        raise ValueError(f"all {what} frames must be the same system (same atoms in the same order)")
