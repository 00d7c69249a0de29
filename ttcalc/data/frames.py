"""Small helpers for lists of labelled frames (ASE Atoms with energy and forces)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator


def with_labels(atoms: Atoms, energy: float | None, forces: np.ndarray | None, copy: bool = True) -> Atoms:
    """``atoms`` (a copy unless ``copy=False``) carrying ``energy`` [eV] and ``forces`` [eV/Å].

    The labels live in a :class:`~ase.calculators.singlepoint.SinglePointCalculator`, which ASE
    invalidates as soon as the positions change, so stale labels are never read back.
    """
    out = atoms.copy() if copy else atoms
    results = {}
    if energy is not None:
        results["energy"] = float(energy)
    if forces is not None:
        results["forces"] = np.asarray(forces, dtype=np.float64).reshape(len(out), 3)
    out.calc = SinglePointCalculator(out, **results) if results else None
    return out


def frame_energies(frames: Sequence[Atoms]) -> np.ndarray:
    """Energies (M,) in eV of labelled frames; a clear error names the first unlabelled frame."""
    energies = np.empty(len(frames))
    for k, atoms in enumerate(frames):
        results = atoms.calc.results if atoms.calc is not None else {}
        if "energy" not in results:
            raise ValueError(
                f"frame {k} ({atoms.get_chemical_formula()}) has no energy label; read it with "
                f"ttcalc.data.read_frames or label it with ttcalc.data.label_with_prior"
            )
        energies[k] = atoms.get_potential_energy()
    return energies


def split_frames(
    frames: Sequence[Atoms], fractions: Sequence[float] = (0.9, 0.1), seed: int = 0
) -> tuple[list[Atoms], ...]:
    """Randomly partition ``frames`` into ``len(fractions)`` disjoint lists (e.g. train/validation).

    Part ``k`` receives the frames between ``round(M * c_{k-1})`` and ``round(M * c_k)`` of a
    ``np.random.default_rng(seed)`` permutation, where ``c_k`` is the cumulative sum of the
    fractions; the fractions must be positive and sum to 1, and no part may come out empty.
    Within each part the frames keep their original order (MD frames stay time-ordered).
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size == 0 or np.any(fractions <= 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions.tolist()}")
    n = len(frames)
    bounds = np.round(np.concatenate([[0.0], np.cumsum(fractions)]) * n).astype(int)
    bounds[-1] = n
    sizes = np.diff(bounds)
    if np.any(sizes == 0):
        raise ValueError(f"splitting {n} frames with fractions {fractions.tolist()} leaves an empty part {sizes.tolist()}")
    order = np.random.default_rng(seed).permutation(n)
    return tuple([frames[i] for i in np.sort(order[lo:hi])] for lo, hi in zip(bounds[:-1], bounds[1:]))
