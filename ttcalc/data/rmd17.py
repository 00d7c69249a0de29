"""The revised MD17 dataset (Christensen & von Lilienfeld, 2020, Mach. Learn.: Sci. Technol. 1, 045018).

rMD17 recomputes 100k frames of each MD17 trajectory at PBE/def2-SVP. Two on-disk layouts are read:

* **shared** (``../shared/data/rmd17/rmd17_<mol>.npz``): keys ``z, R, E, F, old_indices`` and the
  official splits ``train_01..train_05``, ``test_01..test_05`` (1000 indices each into R/E/F); only
  the 9633 frames used by the splits are kept.
* **public original** (``rmd17.tar.bz2`` from figshare, ``rmd17/npz_data/rmd17_<mol>.npz``): keys
  ``nuclear_charges, coords, energies, forces, old_indices, old_energies, old_forces`` and no split
  keys; the splits are ``index_{train,test}_0k.csv`` files (one frame index per line) in the npz's
  folder, its ``splits/`` subfolder or the tarball's ``rmd17/splits/`` folder.

Energies are stored in kcal/mol and forces in kcal/mol/Å; both are converted to eV and eV/Å when the
file is read (:data:`ttcalc.units.KCAL_MOL_TO_EV`), so nothing downstream sees kcal/mol.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from ttcalc.data.frames import with_labels
from ttcalc.paths import PUBLIC_SOURCES, dataset_path
from ttcalc.units import KCAL_MOL_TO_EV

logger = logging.getLogger(__name__)

#: the ten molecules of the public rMD17 release
RMD17_MOLECULES: tuple[str, ...] = (
    "aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde",
    "naphthalene", "paracetamol", "salicylic", "toluene", "uracil",
)
#: names of the official splits (1000 frames each; train_0k and test_0k are disjoint)
RMD17_SPLITS: tuple[str, ...] = tuple(f"{kind}_{k:02d}" for kind in ("train", "test") for k in range(1, 6))

_SHARED_KEYS = ("z", "R", "E", "F")
_PUBLIC_KEYS = ("nuclear_charges", "coords", "energies", "forces")


@dataclass(frozen=True)
class Rmd17Arrays:
    """Raw rMD17 arrays in ASE units (read-only views of a cached load).

    Attributes:
        z: atomic numbers (N,).
        R: positions (M, N, 3) in Å.
        E: energies (M,) in eV.
        F: forces (M, N, 3) in eV/Å.
        splits: official split name -> frame indices into R/E/F (empty if the file has none and no
            split csv files were found).
        path: the npz file the arrays came from.
    """

    z: np.ndarray
    R: np.ndarray
    E: np.ndarray
    F: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.E)


def _read_only(array: np.ndarray) -> np.ndarray:
    # The arrays are shared between calls through the lru_cache: freeze them so a caller cannot
    # silently corrupt later loads.
    array.setflags(write=False)
    return array


def _read_split_csv(path: Path) -> np.ndarray:
    """One integer frame index per line (the public rMD17 ``splits/index_*.csv`` format)."""
    values = []
    for line in path.read_text().splitlines():
        token = line.split(",")[0].strip()
        if token and not token.lstrip("-").replace(".", "", 1).isdigit():
            continue  # a header line
        if token:
            values.append(int(float(token)))
    index = np.asarray(values, dtype=np.int64)
    if index.size == 0:
        raise ValueError(f"rMD17 split file {path} holds no indices")
    return index


def _split_csv_dirs(npz: Path) -> list[Path]:
    # the npz's folder, its splits/ subfolder, and the tarball layout rmd17/{npz_data,splits}/
    return [npz.parent, npz.parent / "splits", npz.parent.parent / "splits"]


@functools.lru_cache(maxsize=8)
def _load_npz(resolved: str, mtime_ns: int, size: int) -> Rmd17Arrays:
    """Read one npz (either layout) into eV/Å arrays. ``mtime_ns``/``size`` only key the cache."""
    path = Path(resolved)
    with np.load(path) as data:
        keys = set(data.files)
        if set(_SHARED_KEYS) <= keys:
            z, R, E, F = (data[k] for k in _SHARED_KEYS)
            splits = {name: np.asarray(data[name], dtype=np.int64) for name in RMD17_SPLITS if name in keys}
        elif set(_PUBLIC_KEYS) <= keys:
            z, R, E, F = (data[k] for k in _PUBLIC_KEYS)
            splits = {}
        else:
            raise ValueError(
                f"{path} is not an rMD17 npz: expected keys {_SHARED_KEYS} (shared layout) or "
                f"{_PUBLIC_KEYS} (public layout), found {sorted(keys)}"
            )
    n_frames = len(E)
    if not splits:
        for name in RMD17_SPLITS:
            for folder in _split_csv_dirs(path):
                csv = folder / f"index_{name}.csv"
                if csv.is_file():
                    splits[name] = _read_split_csv(csv)
                    break
    for name, index in splits.items():
        if index.size and (index.min() < 0 or index.max() >= n_frames):
            raise ValueError(f"{path}: split {name} has indices outside the file's {n_frames} frames")
    return Rmd17Arrays(
        z=_read_only(np.asarray(z, dtype=np.int64).reshape(-1)),
        R=_read_only(np.asarray(R, dtype=np.float64)),
        E=_read_only(np.asarray(E, dtype=np.float64).reshape(-1) * KCAL_MOL_TO_EV),
        F=_read_only(np.asarray(F, dtype=np.float64) * KCAL_MOL_TO_EV),
        splits={k: _read_only(v) for k, v in splits.items()},
        path=path,
    )


def _available(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("rmd17_*.npz")) if folder.is_dir() else []


def rmd17_file(molecule: str, path: str | Path | None = None) -> Path:
    """The npz file of ``molecule``.

    ``path`` may be the npz itself, a folder holding ``rmd17_<molecule>.npz`` (or the public
    tarball's ``npz_data/`` folder), or None for ``$TTCALC_DATA/rmd17``.

    Raises:
        FileNotFoundError: the data folder (or, for an official rMD17 molecule, its file) is missing;
            the message says where it looked and where to get the public original.
        ValueError: ``molecule`` is not an rMD17 molecule and no such file exists (lists the files
            that are there).
    """
    name = molecule.strip().lower()
    if path is not None and Path(path).expanduser().is_file():
        return Path(path).expanduser()
    folder = dataset_path("rmd17") if path is None else Path(path).expanduser()
    if path is not None and not folder.exists():
        raise FileNotFoundError(
            f"rMD17 data not found: {folder.resolve()} does not exist. Download the public original: "
            f"{PUBLIC_SOURCES['rmd17']}"
        )
    fname = f"rmd17_{name}.npz"
    for candidate in (folder / fname, folder / "npz_data" / fname):
        if candidate.is_file():
            return candidate
    available = _available(folder) + [f"npz_data/{n}" for n in _available(folder / "npz_data")]
    if name in RMD17_MOLECULES:
        if path is None:
            dataset_path("rmd17", fname)  # raises the project's standard "missing data" error
        raise FileNotFoundError(
            f"rMD17 file for {name!r} not found: looked for {(folder / fname).resolve()}; files there: "
            f"{available}. Download the public original: {PUBLIC_SOURCES['rmd17']}"
        )
    raise ValueError(
        f"unknown rMD17 molecule {molecule!r}: no {fname} in {folder.resolve()}. Available files: "
        f"{available}; official rMD17 molecules: {list(RMD17_MOLECULES)}"
    )


def rmd17_arrays(molecule: str, path: str | Path | None = None) -> Rmd17Arrays:
    """All frames of one rMD17 molecule as read-only arrays in eV and Å (cached per file).

    The npz is read once per (resolved path, modification time, size); later calls return the same
    arrays, so vectorised code (element references, radial distributions) pays nothing to reload.
    (Split csv files of the public layout are read with their npz and cached with it.)
    """
    npz = rmd17_file(molecule, path).resolve()
    stat = npz.stat()
    return _load_npz(str(npz), stat.st_mtime_ns, stat.st_size)


def load_rmd17(
    molecule: str,
    split: str = "train_01",
    n: int | None = None,
    seed: int = 0,
    path: str | Path | None = None,
    exclude: Sequence[str] = (),
) -> list[Atoms]:
    """Frames of an rMD17 molecule as ASE Atoms with energy (eV) and forces (eV/Å).

    Args:
        molecule: e.g. ``"aspirin"`` (file ``rmd17_aspirin.npz``).
        split: ``"train_01"``..``"train_05"``, ``"test_01"``..``"test_05"`` (official splits, 1000
            frames each) or ``"all"`` (every frame in the file: 9633 in the shared layout).
        n: number of frames drawn without replacement from the split with
            ``np.random.default_rng(seed).choice``; None keeps the whole split in file order.
        seed: seed of the draw.
        path: npz file or folder (see :func:`rmd17_file`); None for ``$TTCALC_DATA/rmd17``.
        exclude: official splits whose frames are removed first (``split="all", exclude=["test_01"]``
            is every frame a model may train on when it is tested on ``test_01``).

    Returns:
        Atoms with a SinglePointCalculator and ``info = {"dataset": "rmd17", "molecule": molecule,
        "index": i}``, where ``i`` indexes the frames of the npz.
    """
    arrays = rmd17_arrays(molecule, path)
    if split == "all":
        index = np.arange(len(arrays))
    elif split in arrays.splits:
        index = arrays.splits[split]
    elif split in RMD17_SPLITS:
        raise ValueError(
            f"{arrays.path} has no split {split!r}: the public layout keeps splits in "
            f"index_{split}.csv files; looked in {[str(d) for d in _split_csv_dirs(arrays.path)]}. "
            f"Use split='all' or put the rMD17 splits/ folder next to the npz."
        )
    else:
        raise ValueError(f"unknown rMD17 split {split!r}; choose one of {list(RMD17_SPLITS)} or 'all'")
    for name in exclude:
        if name not in arrays.splits:
            raise ValueError(f"cannot exclude split {name!r}: {arrays.path} has {sorted(arrays.splits)}")
        index = np.setdiff1d(index, arrays.splits[name])
    if n is not None:
        if not 0 <= n <= len(index):
            raise ValueError(f"cannot draw n={n} frames from split {split!r} of {len(index)} frames")
        index = np.random.default_rng(seed).choice(index, size=n, replace=False)

    name = molecule.strip().lower()
    frames = []
    for i in index:
        atoms = with_labels(Atoms(numbers=arrays.z, positions=arrays.R[i]), arrays.E[i], arrays.F[i], copy=False)
        # info after the calculator: SinglePointCalculator copies the atoms, keep that copy small
        atoms.info = {"dataset": "rmd17", "molecule": name, "index": int(i)}
        frames.append(atoms)
    return frames
