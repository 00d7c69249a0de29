"""The prior interface: a cheap reference model that labels structures with energies and forces.

Every prior returns ASE units (eV, eV/Å). Priors label training frames for the prior head θP, label
test-time-training frames, and drive the short MD that generates those frames.
"""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ttcalc.data.labels import label_with_prior


class PriorError(RuntimeError):
    """A prior could not label a structure (unsupported element, SCF failure, wrong atom order)."""


class Prior(abc.ABC):
    """Energy (eV) and forces (eV/Å) of a cheap model.

    Subclasses implement :meth:`_energy_forces`; the public methods validate input and output so
    that a prior never hands back silent NaNs.
    """

    #: short name used in logs, reports and cache keys
    name: str = "prior"

    @abc.abstractmethod
    def _energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Energy in eV and forces (N, 3) in eV/Å for one structure."""

    def fingerprint(self) -> str:
        """A string that changes whenever the prior's labels would change (used as a cache key)."""
        return self.name

    def energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (N, 3, eV/Å) of one structure; raises :class:`PriorError` on failure."""
        if len(atoms) == 0:
            raise PriorError(f"{self.name}: cannot label an empty structure")
        energy, forces = self._energy_forces(atoms)
        forces = np.asarray(forces, dtype=np.float64).reshape(len(atoms), 3)
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise PriorError(f"{self.name}: non-finite energy or forces for {atoms.get_chemical_formula()}")
        return float(energy), forces

    def energy_forces_batch(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (M,) and a list of force arrays for a list of structures."""
        results = [self.energy_forces(a) for a in frames]
        return np.array([e for e, _ in results]), [f for _, f in results]

    def as_calculator(self, *, cache: bool = False) -> "PriorCalculator":
        """An ASE calculator that evaluates this prior (for MD with the prior, e.g. in TTT, or as the
        label source of learning during MD). ``cache=True`` sends each structure through the on-disk
        label cache (:func:`ttcalc.data.labels.label_with_prior`), so a rerun after a crash pays
        for no expensive label (DFT) twice."""
        return PriorCalculator(self, cache=cache)


class PriorCalculator(Calculator):
    """ASE calculator view of a :class:`Prior`."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, prior: Prior, *, cache: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.prior, self.cache = prior, cache

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.cache:
            labelled = label_with_prior([self.atoms], self.prior)[0]
            energy, forces = labelled.get_potential_energy(), labelled.get_forces()
        else:
            energy, forces = self.prior.energy_forces(self.atoms)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
