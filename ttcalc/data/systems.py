"""What counts as "the same system" for per-system adaptation caches.

A system is identified by its composition and its bonding graph (bonds from ASE's covalent
``natural_cutoffs`` scaled by 1.2 on the given geometry), so thermal conformers of one molecule share
a key (with 1.0, stretched rMD17 C–H bonds split benzene into 45 keys over 1000 frames; with 1.2,
each rMD17 molecule has one), while a different molecule, a reordered one, or a broken/formed bond
gives a new key.
"""
from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms
from ase.neighborlist import natural_cutoffs, neighbor_list


def bond_pairs(atoms: Atoms, mult: float = 1.2) -> np.ndarray:
    """Sorted (B, 2) array of bonded atom pairs i < j from covalent radii."""
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=mult))
    keep = i < j
    pairs = np.stack([i[keep], j[keep]], axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs.reshape(0, 2)


def system_key(atoms: Atoms) -> str:
    """A short hash of (atomic numbers in order, periodicity, bonding graph)."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    h.update(bond_pairs(atoms).astype(np.int64).tobytes())
    return h.hexdigest()[:16]
