"""Label frames with a prior's energies and forces, with a content-addressed disk cache.

Priors (xTB, EMT, ...) are cheap next to DFT but not free, and the same training frames are labelled
again by every run. Each frame's labels are stored in one ``.npy`` file under
``cache_dir("labels", <prior fingerprint hash>)`` named by

    key = sha256(version, prior.fingerprint(), Z, round(positions, 8 decimals), cell, pbc),

so a label is reused exactly when the prior and the structure are the same, and any change of
positions, elements, cell, periodicity or prior settings (via ``fingerprint()``) misses the cache.
Files are written atomically (temporary file + ``os.replace``), so concurrent runs and interrupted
runs never leave a half-written label behind.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from ase import Atoms
from tqdm import tqdm

from ttcalc.data.frames import with_labels
from md_protocols.files import atomic_write
from ttcalc.paths import cache_dir

if TYPE_CHECKING:  # labels come from any prior; data sits below priors
    from ttcalc.priors.base import Prior

logger = logging.getLogger(__name__)

#: bump when the cache file format or the key changes
_CACHE_VERSION = b"ttcalc-labels-v1"
#: positions are rounded to this many decimals (Å) before hashing: float noise below 1e-8 Å is the same frame
_POSITION_DECIMALS = 8
#: misses are labelled and written in chunks so an interrupted run keeps its finished labels
_CHUNK = 32


def _array_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    return str(array.shape).encode() + str(array.dtype).encode() + array.tobytes()


def frame_key(atoms: Atoms, fingerprint: str) -> str:
    """sha256 hex digest identifying (prior fingerprint, Z, positions, cell, pbc) of one frame."""
    positions = np.round(np.asarray(atoms.positions, dtype=np.float64), _POSITION_DECIMALS) + 0.0  # -0.0 -> 0.0
    cell = np.round(np.asarray(atoms.cell[:], dtype=np.float64), _POSITION_DECIMALS) + 0.0
    digest = hashlib.sha256(_CACHE_VERSION)
    for part in (
        fingerprint.encode(),
        _array_bytes(np.asarray(atoms.numbers, dtype=np.int64)),
        _array_bytes(positions),
        _array_bytes(cell),
        _array_bytes(np.asarray(atoms.pbc, dtype=bool)),
    ):
        digest.update(len(part).to_bytes(8, "little"))  # length prefix: no two inputs share a byte stream
        digest.update(part)
    return digest.hexdigest()


def _read_label(path: Path, n_atoms: int) -> tuple[float, np.ndarray] | None:
    try:
        flat = np.load(path)
    except (OSError, ValueError):
        return None
    if flat.shape != (1 + 3 * n_atoms,):
        logger.warning("ignoring malformed label cache file %s", path)
        return None
    return float(flat[0]), flat[1:].reshape(n_atoms, 3)


def _write_label(path: Path, energy: float, forces: np.ndarray) -> None:
    flat = np.concatenate([[energy], np.asarray(forces, dtype=np.float64).reshape(-1)])
    with atomic_write(path, "wb") as handle:
        np.save(handle, flat)


def label_with_prior(
    frames: Sequence[Atoms], prior: Prior, cache: bool = True, progress: bool = False
) -> list[Atoms]:
    """Copies of ``frames`` carrying the prior's energy [eV] and forces [eV/Å] (SinglePointCalculator).

    Args:
        frames: structures to label (their own calculators and labels are ignored).
        prior: any :class:`ttcalc.priors.base.Prior`; labelled with ``prior.energy_forces_batch``.
        cache: read and write the per-frame label cache (see module docstring); False always calls
            the prior and touches no files.
        progress: show a tqdm progress bar (stderr) over the frames the prior has to label.
    """
    fingerprint = prior.fingerprint()
    folder = cache_dir("labels", hashlib.sha256(fingerprint.encode()).hexdigest()[:16]) if cache else None
    energies: list[float | None] = [None] * len(frames)
    forces: list[np.ndarray | None] = [None] * len(frames)
    paths: list[Path | None] = [None] * len(frames)
    if folder is not None:
        for k, atoms in enumerate(frames):
            paths[k] = folder / f"{frame_key(atoms, fingerprint)}.npy"
            hit = _read_label(paths[k], len(atoms)) if paths[k].is_file() else None
            if hit is not None:
                energies[k], forces[k] = hit
    missing = [k for k in range(len(frames)) if energies[k] is None]
    logger.info("labelling %d frames with %s (%d from cache)", len(frames), fingerprint, len(frames) - len(missing))

    with tqdm(total=len(missing), desc=f"labels ({prior.name})", disable=not progress, leave=False) as bar:
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start:start + _CHUNK]
            chunk_energies, chunk_forces = prior.energy_forces_batch([frames[k] for k in chunk])
            for k, energy, force in zip(chunk, chunk_energies, chunk_forces):
                energies[k], forces[k] = float(energy), np.asarray(force, dtype=np.float64).reshape(len(frames[k]), 3)
                if paths[k] is not None:
                    _write_label(paths[k], energies[k], forces[k])
            bar.update(len(chunk))
    return [with_labels(atoms, energies[k], forces[k]) for k, atoms in enumerate(frames)]
