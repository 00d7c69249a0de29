"""Converters from public originals to the layouts ttcalc's readers expect (used by
:func:`ttcalc.data.catalog.download`).

* mlearn (Zuo et al. 2020): a JSON list of pymatgen ``Structure.as_dict()`` records with VASP
  ``outputs`` (energy in eV, forces in eV/Å, ``virial_stress`` in kbar, order xx yy zz xy yz zx)
  → extended XYZ with periodic cells, ``energy``/``forces`` and ``info['group']``,
  ``info['virial_stress_kbar']`` (raw, unconverted).
* QM9 (Ramakrishnan et al. 2014) as packed by ``qm9pack`` 1.0.3: CSV parts inside its wheel, one
  molecule per row (``Elements``, ``XYZ_Ang`` as Python-literal strings, properties in atomic units)
  → the ragged ``qm9.npz`` of :mod:`ttcalc.data.qm9` (``Z``, ``R``, ``n_atoms``, ``offsets``,
  ``qm9_index``, ``smiles`` and one array per property, in the original units).
"""
from __future__ import annotations

import ast
import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers
from ase.io import write

from md_protocols.files import atomic_path

#: the qm9.npz property arrays (float64, original units), as the qm9pack CSV columns name them
QM9PACK_PROPERTIES = ("Dipole_debye", "Polarizability_bohr3", "HOMO_au", "LUMO_au", "HOMO_LUMO_gap_au",
                      "R2_bohr2", "ZPVE_au", "InternalEnergy_0K_au", "InternalEnergy_298K_au",
                      "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au", "Heatcapacity_Cv_cal_mol_K")


def mlearn_record_to_atoms(record: dict) -> Atoms:
    """One mlearn record as periodic Atoms with its DFT energy and forces attached."""
    structure, outputs = record["structure"], record["outputs"]
    symbols = [site["species"][0]["element"] for site in structure["sites"]]
    atoms = Atoms(symbols=symbols, positions=[site["xyz"] for site in structure["sites"]],
                  cell=structure["lattice"]["matrix"], pbc=True)
    atoms.info["group"] = record.get("group", "")
    if outputs.get("virial_stress") is not None:
        atoms.info["virial_stress_kbar"] = np.asarray(outputs["virial_stress"], dtype=float)
    atoms.calc = SinglePointCalculator(atoms, energy=float(outputs["energy"]),
                                       forces=np.asarray(outputs["forces"], dtype=float))
    return atoms


def mlearn_json_to_extxyz(source: str | Path, target: str | Path) -> int:
    """Convert one mlearn JSON file to extended XYZ (written atomically); returns the frame count."""
    records = json.loads(Path(source).read_text())
    if not isinstance(records, list) or not records or "structure" not in records[0]:
        raise ValueError(f"{source} is not an mlearn data file (a JSON list of structure records)")
    frames = [mlearn_record_to_atoms(r) for r in records]
    with atomic_path(target) as tmp:
        write(tmp, frames, format="extxyz")
    return len(frames)


def _qm9pack_rows(wheel: zipfile.ZipFile):
    parts = sorted(n for n in wheel.namelist() if Path(n).name.startswith("qm9_part") and n.endswith(".csv"))
    if not parts:
        raise ValueError("no qm9pack/data/qm9_part*.csv in the wheel: not a qm9pack 1.0.x wheel")
    for name in parts:
        with wheel.open(name) as fh:
            yield from csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8"))


def qm9pack_wheel_to_npz(wheel_path: str | Path, target: str | Path) -> int:
    """Convert the qm9pack wheel's CSV parts to ``qm9.npz`` (written atomically), molecules in QM9
    index order; returns the molecule count."""
    rows = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for row in _qm9pack_rows(wheel):
            z = [atomic_numbers[s] for s in ast.literal_eval(row["Elements"])]
            r = np.asarray(ast.literal_eval(row["XYZ_Ang"]), dtype=np.float32).reshape(len(z), 3)
            rows.append((int(row["Index"]), z, r, row["SMILES"], [float(row[k]) for k in QM9PACK_PROPERTIES]))
    rows.sort(key=lambda t: t[0])
    n_atoms = np.array([len(t[1]) for t in rows], dtype=np.int16)
    arrays = {"Z": np.concatenate([t[1] for t in rows]).astype(np.uint8),
              "R": np.concatenate([t[2] for t in rows]).astype(np.float32),
              "n_atoms": n_atoms, "offsets": np.concatenate([[0], np.cumsum(n_atoms, dtype=np.int64)]),
              "qm9_index": np.array([t[0] for t in rows], dtype=np.int32),
              "smiles": np.array([t[3].encode() for t in rows])}
    props = np.array([t[4] for t in rows], dtype=np.float64)
    arrays.update({k: props[:, i] for i, k in enumerate(QM9PACK_PROPERTIES)})
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return len(rows)
