"""QM9 (Ramakrishnan et al. 2014) from ``$TTCALC_DATA/qm9/qm9.npz``: geometries and properties.

The npz is ragged (molecule i is rows ``offsets[i]:offsets[i+1]`` of ``Z``/``R``). Properties are
converted to ASE units at this boundary: orbital energies and gaps from Hartree to eV, ⟨R²⟩ stays
in bohr² and the dipole in Debye (their usual units; the heads convert, see
:data:`ttcalc.model.heads.UNIT_FACTORS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.units import Hartree

from ttcalc.paths import dataset_path

#: property name -> (npz key, factor to the returned unit, unit)
QM9_PROPERTIES = {
    "homo": ("HOMO_au", Hartree, "eV"),
    "lumo": ("LUMO_au", Hartree, "eV"),
    "gap": ("HOMO_LUMO_gap_au", Hartree, "eV"),
    "dipole": ("Dipole_debye", 1.0, "Debye"),
    "r2": ("R2_bohr2", 1.0, "bohr^2"),
    "alpha": ("Polarizability_bohr3", 1.0, "bohr^3"),
    "zpve": ("ZPVE_au", Hartree, "eV"),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/mol/K"),
}


@dataclass(frozen=True)
class QM9:
    """All QM9 molecules as read-only arrays (see module docstring)."""

    Z: np.ndarray
    R: np.ndarray
    offsets: np.ndarray
    arrays: dict
    path: Path

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def n_atoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    def atoms(self, i: int) -> Atoms:
        """Molecule ``i`` as ASE Atoms (Å), with its QM9 index in ``info``."""
        if not 0 <= i < len(self):
            raise IndexError(f"QM9 has {len(self)} molecules; index {i} is out of range")
        a, b = self.offsets[i], self.offsets[i + 1]
        atoms = Atoms(numbers=self.Z[a:b].astype(int), positions=self.R[a:b].astype(np.float64))
        atoms.info["qm9_index"] = int(i)
        return atoms

    def molecules(self, indices: Sequence[int]) -> list[Atoms]:
        return [self.atoms(int(i)) for i in indices]

    def property(self, name: str) -> np.ndarray:
        """Values of one property for every molecule, in the unit of :data:`QM9_PROPERTIES`."""
        if name not in QM9_PROPERTIES:
            raise KeyError(f"unknown QM9 property {name!r}; choose from {sorted(QM9_PROPERTIES)}")
        key, factor, _ = QM9_PROPERTIES[name]
        return np.asarray(self.arrays[key], dtype=np.float64) * factor


@lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int) -> QM9:
    with np.load(path, allow_pickle=False) as d:
        missing = [k for k in ("Z", "R", "offsets") if k not in d.files]
        if missing:
            raise ValueError(f"{path} is not a QM9 npz in the expected layout: missing {missing}")
        arrays = {k: d[k] for k in d.files}
    for v in arrays.values():
        v.setflags(write=False)
    return QM9(arrays["Z"], arrays["R"], arrays["offsets"].astype(np.int64), arrays, Path(path))


def load_qm9(path: str | Path | None = None) -> QM9:
    """Read (once per file version) ``qm9.npz`` from ``path`` or ``$TTCALC_DATA/qm9``."""
    p = dataset_path("qm9", "qm9.npz") if path is None else Path(path).expanduser()
    if p.is_dir():
        p = p / "qm9.npz"
    if not p.is_file():
        raise FileNotFoundError(f"no QM9 file at {p.resolve()}")
    return _load(str(p.resolve()), p.stat().st_mtime_ns)


def displaced_molecules(qm9: QM9, indices: Sequence[int], sigma: float = 0.05, copies: int = 1,
                        seed: int = 0) -> list[Atoms]:
    """Non-equilibrium geometries of QM9 molecules: ``copies`` Gaussian displacements (σ in Å per
    Cartesian component, seeded) of each equilibrium geometry, for force-field labels (QM9 itself
    has none: its geometries are minima where forces vanish)."""
    if sigma <= 0 or copies < 1:
        raise ValueError(f"need sigma > 0 and copies >= 1, got sigma={sigma}, copies={copies}")
    rng = np.random.default_rng(seed)
    out = []
    for i in indices:
        base = qm9.atoms(int(i))
        for c in range(copies):
            atoms = base.copy()
            atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
            atoms.info["displacement"] = c
            out.append(atoms)
    return out
