"""Geometry relaxation and the "extra reference steps" protocol.

Extra steps (Kreiman & Krishnapriyan 2025, App. A.3.1): relax a structure with the MLIP, then continue
from the MLIP minimum with the reference method and count the reference optimizer steps still needed to
converge. A perfect MLIP needs zero extra steps. Reported: both step counts, each method's own energy at
its own minimum, the reference energy at the MLIP minimum, and the RMSD between the two minima after
optimal superposition (Kabsch).

Any ASE calculator can be the reference; ttcalc ships GFN2-xTB and PySCF DFT ones in
:mod:`ttcalc.priors.references`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.optimize import BFGS, FIRE, LBFGS

logger = logging.getLogger(__name__)

__all__ = [
    "RelaxResult",
    "ExtraStepsResult",
    "relax",
    "relax_extra_steps",
    "kabsch_rmsd",
]

OPTIMIZERS = {"BFGS": BFGS, "FIRE": FIRE, "LBFGS": LBFGS}


@dataclass
class RelaxResult:
    """A relaxation: final structure (calculator attached), optimizer steps taken, convergence,
    final energy (eV), final max atomic force norm (eV/Å) and the trajectory path (or None)."""

    atoms: Atoms
    n_steps: int
    converged: bool
    energy: float
    fmax_final: float
    trajectory: str | None = None


@dataclass
class ExtraStepsResult:
    """Kreiman & Krishnapriyan A.3.1: MLIP relaxation followed by a reference relaxation from its minimum.

    ``extra_steps`` is the number of reference optimizer steps after the MLIP minimum. ``mlip_energy``
    and ``reference_energy`` are each calculator's own energy at its own minimum (eV);
    ``reference_energy_at_mlip_minimum`` is the reference energy where the MLIP relaxation ended;
    ``rmsd`` (Å) compares the two minima after Kabsch superposition.
    """

    mlip: RelaxResult
    reference: RelaxResult
    mlip_steps: int
    extra_steps: int
    mlip_energy: float
    reference_energy: float
    reference_energy_at_mlip_minimum: float
    rmsd: float

    @property
    def converged(self) -> bool:
        return self.mlip.converged and self.reference.converged


def max_force(atoms: Atoms, calc: Calculator | None = None) -> float:
    """max_i |F_i| (eV/Å): with ``atoms``' own calculator, or on a copy with ``calc`` attached."""
    if calc is not None:
        atoms = atoms.copy()
        atoms.calc = calc
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def relax(
    atoms: Atoms,
    calc: Calculator,
    fmax: float = 0.01,
    optimizer: str = "BFGS",
    steps: int = 1000,
    trajectory: str | os.PathLike | None = None,
) -> RelaxResult:
    """Relax a copy of ``atoms`` with ``calc`` until every atomic force is below ``fmax`` eV/Å.

    ``n_steps`` is the optimizer's step count (``get_number_of_steps()``): 0 when the input is already
    converged. ``optimizer``: "BFGS", "FIRE" or "LBFGS" (ASE defaults otherwise).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"relax: optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if not fmax > 0 or steps < 0:
        raise ValueError(f"relax: need fmax > 0 and steps >= 0, got fmax={fmax}, steps={steps}")
    atoms = atoms.copy()
    atoms.calc = calc
    traj = None if trajectory is None else os.fspath(trajectory)
    with OPTIMIZERS[optimizer](atoms, trajectory=traj, logfile=None) as opt:
        converged = bool(opt.run(fmax=fmax, steps=steps))
        n_steps = int(opt.get_number_of_steps())
    return RelaxResult(
        atoms=atoms,
        n_steps=n_steps,
        converged=converged,
        energy=float(atoms.get_potential_energy()),
        fmax_final=max_force(atoms),
        trajectory=traj,
    )


def kabsch_rmsd(positions_a: np.ndarray, positions_b: np.ndarray) -> float:
    """RMSD (Å) between two conformations of the same atoms after optimal rotation + translation.

    Kabsch: centre both, H = Aᵀ B, H = U S Vᵀ, R = V diag(1, 1, d) Uᵀ with d = sign det(V Uᵀ)
    (no reflections); RMSD = sqrt(mean_i |R a_i - b_i|²).
    """
    a = np.asarray(positions_a, dtype=np.float64)
    b = np.asarray(positions_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"kabsch_rmsd: need two (N, 3) arrays of equal shape, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    diff = a @ rot.T - b
    return float(np.sqrt((diff**2).sum(axis=1).mean()))


def relax_extra_steps(
    atoms: Atoms,
    calc: Calculator,
    reference_calc: Calculator,
    fmax: float = 0.01,
    optimizer: str = "BFGS",
    steps: int = 1000,
) -> ExtraStepsResult:
    """Relax with ``calc`` (the MLIP), then with ``reference_calc`` from its minimum; count the extra steps."""
    mlip = relax(atoms, calc, fmax=fmax, optimizer=optimizer, steps=steps)
    if not mlip.converged:
        logger.warning("relax_extra_steps: the MLIP relaxation did not converge in %d steps", steps)
    reference = relax(mlip.atoms, reference_calc, fmax=fmax, optimizer=optimizer, steps=steps)
    start = mlip.atoms.copy()
    start.calc = reference_calc
    return ExtraStepsResult(
        mlip=mlip,
        reference=reference,
        mlip_steps=mlip.n_steps,
        extra_steps=reference.n_steps,
        mlip_energy=mlip.energy,
        reference_energy=reference.energy,
        reference_energy_at_mlip_minimum=float(start.get_potential_energy()),
        rmsd=kabsch_rmsd(mlip.atoms.positions, reference.atoms.positions),
    )
