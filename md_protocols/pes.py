"""2-D potential-energy slices along principal Hessian directions (Kreiman & Krishnapriyan 2025, Fig. 4b, 16).

At a (relaxed) geometry x0 the Cartesian Hessian H (eV/Å²) is built by central differences of the
forces, H[:, k] = -(F(x0 + δ e_k) - F(x0 - δ e_k)) / 2δ, and symmetrised. Rigid translations and
rotations (6 modes, 5 for a linear molecule) are projected out exactly: H is diagonalised in the
orthogonal complement of their span, so they never count as "soft" directions even where the
geometry is not exactly stationary. The energy is then evaluated on the grid

    E(a, b) = E(x0 + a u1 + b u2) - E(x0),   a, b ∈ [-extent, extent] Å,

with u1, u2 unit (Cartesian, not mass-weighted) eigenvectors. ``modes="softest"`` (default) takes the
two lowest-curvature vibrational directions: for a fixed displacement they reach the furthest into
anharmonic, weakly-sampled regions, where an MLIP's surface most often departs from the reference
(spurious minima, wrong curvature); stiff stretches at 0.3 Å would mostly show a steep, well-learned
parabola. ``modes="stiffest"`` takes the two largest curvatures instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

logger = logging.getLogger(__name__)

__all__ = ["PESGrid", "finite_difference_hessian", "vibrational_modes", "pes_along_hessian"]


@dataclass
class PESGrid:
    """Energies (eV, relative to the centre) on a grid of displacements (Å) along two Hessian directions.

    ``energies[i, j]`` is at ``displacements[i] * directions[0] + displacements[j] * directions[1]``;
    ``curvatures`` are the two Hessian eigenvalues (eV/Å²). ``reference_energies`` is the same grid
    evaluated with the reference calculator (None if none was given).
    """

    displacements: np.ndarray
    energies: np.ndarray
    directions: np.ndarray
    curvatures: np.ndarray
    modes: str
    reference_energies: np.ndarray | None = None
    label: str = "model"
    reference_label: str = "reference"


def finite_difference_hessian(atoms: Atoms, calc: Calculator, delta: float = 0.01) -> np.ndarray:
    """Cartesian Hessian ``(3N, 3N)`` in eV/Å² by central differences of the forces (6N force calls)."""
    if not delta > 0:
        raise ValueError(f"finite_difference_hessian: delta must be > 0 Å, got {delta}")
    work = atoms.copy()
    work.calc = calc
    x0 = atoms.positions.ravel().copy()
    n = x0.size
    hessian = np.empty((n, n))
    for k in range(n):
        columns = []
        for sign in (1.0, -1.0):
            x = x0.copy()
            x[k] += sign * delta
            work.positions = x.reshape(-1, 3)
            columns.append(work.get_forces().ravel())
        hessian[:, k] = -(columns[0] - columns[1]) / (2.0 * delta)
    return 0.5 * (hessian + hessian.T)


def _rigid_basis(positions: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3N, k) of rigid translations and rotations (k = 6, or 5 if linear)."""
    centred = positions - positions.mean(axis=0)
    vectors = []
    for axis in np.eye(3):
        vectors.append(np.tile(axis, (len(positions), 1)).ravel())
        vectors.append(np.cross(axis, centred).ravel())
    u, s, _ = np.linalg.svd(np.stack(vectors, axis=1), full_matrices=False)
    return u[:, s > 1e-8 * s.max()]


def vibrational_modes(hessian: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending, eV/Å²) and unit eigenvectors ``(3N, M)`` of H without the rigid modes."""
    rigid = _rigid_basis(np.asarray(positions, dtype=np.float64))
    # complement of the rigid subspace: the trailing left-singular vectors of the rigid basis
    u, _, _ = np.linalg.svd(rigid, full_matrices=True)
    complement = u[:, rigid.shape[1]:]
    values, vectors = np.linalg.eigh(complement.T @ hessian @ complement)
    return values, complement @ vectors


def pes_along_hessian(
    atoms: Atoms,
    calc: Calculator,
    n_grid: int = 21,
    extent: float = 0.3,
    reference_calc: Calculator | None = None,
    modes: str = "softest",
    delta: float = 0.01,
    hessian_calc: Calculator | None = None,
) -> PESGrid:
    """Energy of ``calc`` (and ``reference_calc``) on an ``n_grid × n_grid`` grid of displacements.

    The Hessian is taken with ``hessian_calc`` (default: ``calc``) at ``atoms``' geometry, which should
    be a minimum of that calculator (relax it first, e.g. with :func:`md_protocols.relax.relax`).
    """
    if modes not in ("softest", "stiffest"):
        raise ValueError(f"pes_along_hessian: modes must be 'softest' or 'stiffest', got {modes!r}")
    if n_grid < 2 or not extent > 0:
        raise ValueError(f"pes_along_hessian: need n_grid >= 2 and extent > 0, got {n_grid}, {extent}")
    if len(atoms) < 3:
        raise ValueError("pes_along_hessian: need at least 3 atoms (two vibrational directions)")
    hessian = finite_difference_hessian(atoms, calc if hessian_calc is None else hessian_calc, delta)
    values, vectors = vibrational_modes(hessian, atoms.positions)
    if values[0] < -1e-2:
        logger.warning("pes_along_hessian: negative curvature %.3g eV/Å²; the geometry is not a minimum", values[0])
    pick = [0, 1] if modes == "softest" else [-1, -2]
    directions = vectors[:, pick].T.reshape(2, len(atoms), 3)
    grid = np.linspace(-extent, extent, n_grid)

    def energies_of(calculator: Calculator) -> np.ndarray:
        work = atoms.copy()
        work.calc = calculator
        e0 = work.get_potential_energy()
        out = np.empty((n_grid, n_grid))
        for i, a in enumerate(grid):
            for j, b in enumerate(grid):
                work.positions = atoms.positions + a * directions[0] + b * directions[1]
                out[i, j] = work.get_potential_energy()
        return out - e0

    return PESGrid(
        displacements=grid,
        energies=energies_of(calc),
        directions=directions,
        curvatures=values[pick],
        modes=modes,
        reference_energies=None if reference_calc is None else energies_of(reference_calc),
    )
