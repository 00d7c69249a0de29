"""Read labelled frames (energy in eV, forces in eV/Å) from extended XYZ, other ASE formats and ASE databases.

Datasets store their labels under different names: ASE's extxyz reader turns ``energy=``/``forces``
into a calculator, while files written by MACE/NequIP tooling keep ``REF_energy``, ``DFT_energy``,
``dft_forces`` ... in ``atoms.info``/``atoms.arrays``. :func:`read_frames` finds these common names
(or the ones you pass) and normalises every frame to a SinglePointCalculator, so downstream code
only ever calls ``get_potential_energy()``/``get_forces()``. Units are taken as stored (eV, Å).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.io.formats import string2index

from ttcalc.data.frames import with_labels

logger = logging.getLogger(__name__)

#: info keys tried, in order, for the energy when no calculator holds one
ENERGY_KEYS: tuple[str, ...] = (
    "energy", "REF_energy", "DFT_energy", "dft_energy", "ref_energy", "Energy", "total_energy",
    "energy_eV",
)
#: arrays keys tried, in order, for the forces when no calculator holds them
FORCES_KEYS: tuple[str, ...] = (
    "forces", "REF_forces", "DFT_forces", "dft_forces", "ref_forces", "force", "Forces", "forces_eV_A",
)


def _db_frames(path: Path, index: Any) -> list[Atoms]:
    """Rows of an ASE database as Atoms; key-value pairs go to ``info``, (N, 3) data to ``arrays``."""
    with ase.db.connect(str(path)) as db:
        rows = list(db.select())
    selected = rows[string2index(index) if isinstance(index, str) else index]
    frames = []
    for row in selected if isinstance(selected, list) else [selected]:
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        for key, value in row.data.items():
            value = np.asarray(value)
            if value.shape == (len(atoms), 3):
                atoms.arrays[key] = value.astype(np.float64)
            else:
                atoms.info[key] = value
        frames.append(atoms)
    return frames


def _find_label(
    atoms: Atoms, key: str | None, result_name: str, store: dict, candidates: tuple[str, ...]
) -> tuple[Any, str | None]:
    """(value, store key it came from) of one label; the key is None for a calculator result."""
    results = atoms.calc.results if atoms.calc is not None else {}
    if key is not None:
        if key in store:
            return store[key], key
        return results.get(key), None
    if result_name in results:
        return results[result_name], None
    for name in candidates:
        if name in store:
            return store[name], name
    return None, None


def read_frames(
    path: str | Path,
    index: int | slice | str = ":",
    energy_key: str | None = None,
    forces_key: str | None = None,
    require_labels: bool = True,
) -> list[Atoms]:
    """Frames of a file with their energies [eV] and forces [eV/Å] in a SinglePointCalculator.

    Args:
        path: extended XYZ or any file ``ase.io.read`` understands; ``.db`` files are opened with
            ``ase.db`` (key-value pairs become ``info``, per-atom (N, 3) data become ``arrays``).
        index: which frames, as in ``ase.io.read`` (``":"``, ``"-1"``, ``"0:100:10"``, an int or slice).
        energy_key: ``info`` key of the energy; None: the calculator's energy, else the first of
            :data:`ENERGY_KEYS` present.
        forces_key: ``arrays`` key of the forces; None: the calculator's forces, else the first of
            :data:`FORCES_KEYS` present.
        require_labels: raise ValueError when a frame lacks an energy or forces; with False such
            frames keep whatever labels they have (possibly none).

    The label key that was used is removed from ``info``/``arrays`` so a frame holds one copy of its
    labels, the one ASE invalidates when positions change.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path.resolve()}")
    if path.suffix == ".db":
        raw = _db_frames(path, index)
    else:
        raw = ase.io.read(str(path), index=index)
        raw = raw if isinstance(raw, list) else [raw]

    frames = []
    for k, atoms in enumerate(raw):
        energy, energy_from = _find_label(atoms, energy_key, "energy", atoms.info, ENERGY_KEYS)
        forces, forces_from = _find_label(atoms, forces_key, "forces", atoms.arrays, FORCES_KEYS)
        energy = None if energy is None else float(energy)
        forces = None if forces is None else np.asarray(forces, dtype=np.float64)
        if require_labels and (energy is None or forces is None):
            missing = " and ".join(n for n, v in (("energy", energy), ("forces", forces)) if v is None)
            results = sorted(atoms.calc.results) if atoms.calc is not None else []
            raise ValueError(
                f"{path}: frame {k} has no {missing} (energy_key={energy_key!r}, forces_key={forces_key!r}); "
                f"info keys {sorted(atoms.info)}, arrays keys {sorted(atoms.arrays)}, calculator results "
                f"{results}. Pass energy_key=/forces_key=, or require_labels=False."
            )
        if forces is not None and forces.shape != (len(atoms), 3):
            raise ValueError(f"{path}: frame {k} forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
        if energy_from is not None:
            del atoms.info[energy_from]
        if forces_from is not None and forces_from not in ("numbers", "positions"):
            del atoms.arrays[forces_from]
        # keep any other results the reader attached (stress, free_energy, ...) next to the labels
        extra = {k: v for k, v in (atoms.calc.results.items() if atoms.calc is not None else ())
                 if k not in ("energy", "forces")}
        atoms = with_labels(atoms, energy, forces, copy=False)
        if atoms.calc is not None:
            atoms.calc.results.update(extra)
        frames.append(atoms)
    logger.debug("read %d frames from %s", len(frames), path)
    return frames
