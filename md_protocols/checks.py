"""Online early-stop checks for :func:`md_protocols.run_md`.

A check is a callable ``check(atoms, energy) -> CheckFailure | None`` evaluated every
``check_interval`` MD steps on the current structure and potential energy (eV). Returning a
:class:`CheckFailure` stops the run with that failure's ``status``. Plain callables may also return
``True``/``None`` (pass) or ``False`` (fail, status ``getattr(check, "status", "stopped")``).

Statuses: ``"collapsed"`` (Fu et al.'s bond criterion), ``"exploded"`` (atoms flying apart),
``"nonfinite"`` (NaN/inf energy, forces or positions). :func:`run_md` always evaluates
:class:`FiniteCheck` after every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
from ase import Atoms

from md_protocols.stability import bond_lengths, bonds_from_atoms

__all__ = ["CheckFailure", "Check", "BondCollapseCheck", "ExplosionCheck", "FiniteCheck", "evaluate_check"]


@dataclass(frozen=True)
class CheckFailure:
    """Why a run must stop: a status word for :class:`MDResult` and a human-readable message."""

    status: str
    message: str


Check = Callable[[Atoms, float], Union[CheckFailure, bool, None]]


class BondCollapseCheck:
    """Fu et al. (TMLR 2023) collapse: some bond deviates > ``threshold`` Å from its reference mean.

    ``reference_positions``: ``(T, N, 3)`` or ``(N, 3)`` reference frames (e.g. DFT MD); the
    reference mean bond lengths are averaged over them. Bonds are found with ``natural_cutoffs`` on the
    first reference frame, using ``numbers`` or, if None, the atomic numbers of the first structure
    checked.
    """

    status = "collapsed"

    def __init__(
        self,
        reference_positions: np.ndarray,
        bonds: np.ndarray | None = None,
        threshold: float = 0.5,
        numbers: np.ndarray | None = None,
    ):
        ref = np.asarray(reference_positions, dtype=np.float64)
        self.reference = ref[None] if ref.ndim == 2 else ref
        if self.reference.ndim != 3 or self.reference.shape[-1] != 3:
            raise ValueError(f"BondCollapseCheck: reference positions must be (T, N, 3), got {ref.shape}")
        if threshold <= 0:
            raise ValueError(f"BondCollapseCheck: threshold must be > 0 Å, got {threshold}")
        self.threshold = float(threshold)
        self.bonds: np.ndarray | None = None
        self.ref_mean: np.ndarray | None = None
        if bonds is not None:
            self._set_bonds(np.asarray(bonds, dtype=np.int64).reshape(-1, 2))
        elif numbers is not None:
            self._set_bonds(bonds_from_atoms(Atoms(numbers=numbers, positions=self.reference[0])))

    def _set_bonds(self, bonds: np.ndarray) -> None:
        self.bonds = bonds
        self.ref_mean = bond_lengths(self.reference, bonds).mean(axis=0)

    def __call__(self, atoms: Atoms, energy: float) -> CheckFailure | None:
        if len(atoms) != self.reference.shape[1]:
            raise ValueError(f"BondCollapseCheck: {len(atoms)} atoms but reference has {self.reference.shape[1]}")
        if self.bonds is None:
            self._set_bonds(bonds_from_atoms(Atoms(numbers=atoms.numbers, positions=self.reference[0])))
        if self.bonds.shape[0] == 0:
            return None
        dev = np.abs(bond_lengths(atoms.positions, self.bonds)[0] - self.ref_mean)
        worst = int(np.argmax(np.nan_to_num(dev, nan=np.inf)))
        if not dev[worst] <= self.threshold:
            i, j = self.bonds[worst]
            return CheckFailure(
                self.status,
                f"bond {i}-{j} deviates {dev[worst]:.3f} Å from its reference mean "
                f"{self.ref_mean[worst]:.3f} Å (threshold {self.threshold} Å)",
            )
        return None


class ExplosionCheck:
    """Atoms flying apart: an atom farther than ``max_distance`` Å from the centroid, or (optionally)
    an atom whose nearest neighbour is farther than ``max_neighbor_distance`` Å.

    Intended for molecules and clusters (plain Euclidean distances, no periodic images).
    """

    status = "exploded"

    def __init__(self, max_distance: float = 20.0, max_neighbor_distance: float | None = None):
        if not max_distance > 0:
            raise ValueError(f"ExplosionCheck: max_distance must be > 0 Å, got {max_distance}")
        self.max_distance = float(max_distance)
        self.max_neighbor_distance = None if max_neighbor_distance is None else float(max_neighbor_distance)

    def __call__(self, atoms: Atoms, energy: float) -> CheckFailure | None:
        pos = atoms.positions
        radius = np.linalg.norm(pos - pos.mean(axis=0), axis=1)
        far = int(np.argmax(radius))
        if radius[far] > self.max_distance:
            return CheckFailure(
                self.status, f"atom {far} is {radius[far]:.2f} Å from the centroid (> {self.max_distance} Å)"
            )
        if self.max_neighbor_distance is not None and len(atoms) > 1:
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
            np.fill_diagonal(d, np.inf)
            nearest = d.min(axis=1)
            lone = int(np.argmax(nearest))
            if nearest[lone] > self.max_neighbor_distance:
                return CheckFailure(
                    self.status,
                    f"atom {lone}'s nearest neighbour is {nearest[lone]:.2f} Å away "
                    f"(> {self.max_neighbor_distance} Å)",
                )
        return None


class FiniteCheck:
    """Non-finite potential energy, forces or positions (status ``"nonfinite"``).

    Reads the forces already computed by the MD step (no extra calculator call).
    """

    status = "nonfinite"

    def __call__(self, atoms: Atoms, energy: float) -> CheckFailure | None:
        if not np.all(np.isfinite(atoms.positions)):
            return CheckFailure(self.status, "non-finite positions")
        if not np.isfinite(energy):
            return CheckFailure(self.status, f"non-finite potential energy ({energy})")
        if not np.all(np.isfinite(atoms.get_forces())):
            return CheckFailure(self.status, "non-finite forces")
        return None


def evaluate_check(check: Check, atoms: Atoms, energy: float) -> CheckFailure | None:
    """Run one check and normalise its answer to ``CheckFailure | None``."""
    outcome = check(atoms, energy)
    if outcome is None or outcome is True:
        return None
    if isinstance(outcome, CheckFailure):
        return outcome
    if outcome is False:
        name = getattr(check, "__name__", type(check).__name__)
        return CheckFailure(getattr(check, "status", "stopped"), f"check {name} failed")
    raise TypeError(f"check {check!r} returned {outcome!r}; expected CheckFailure, bool or None")
