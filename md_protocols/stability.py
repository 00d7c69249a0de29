"""Bond-length stability of MD trajectories (Fu et al., "Forces are not enough", TMLR 2023, Sec. 4).

Fu et al. call a molecular simulation *collapsed* at the first frame where any bond length deviates
by more than ``threshold`` (0.5 Å) from that bond's mean length over the reference (DFT) trajectory:

    collapse at the first t with  max_b | d_b(t) - <d_b>_ref | > threshold,

and report the time simulated before that frame ("stability", ps). Bonds are the pairs closer than the
sum of the covalent radii (``ase.neighborlist.natural_cutoffs``) plus ASE's default 0.3 Å neighbour-list
skin in the first reference frame.

Everything here is for non-periodic molecules: bond lengths are plain Euclidean distances.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import NeighborList, natural_cutoffs

logger = logging.getLogger(__name__)

__all__ = [
    "bonds_from_atoms",
    "bond_lengths",
    "max_bond_deviation",
    "bonds_stability",
    "stability_summary",
    "as_positions",
]


def bonds_from_atoms(atoms: Atoms, mult: float = 1.0, skin: float = 0.3) -> np.ndarray:
    """Bonded pairs ``(B, 2)`` (``i < j``): ``d_ij < mult (r_i + r_j) + skin`` with covalent radii r.

    Uses ``natural_cutoffs`` + ``NeighborList`` on this one structure, keeping ASE's default skin of
    0.3 Å (the usual ``NeighborList(natural_cutoffs(atoms), self_interaction=False)``). Without it,
    thermal frames lose bonds: rMD17 benzene has C–H at 1.07–1.11 Å while r_C + r_H = 1.07 Å.
    Raises ``ValueError`` for an empty structure or a bond that crosses a periodic boundary.
    """
    if len(atoms) == 0:
        raise ValueError("bonds_from_atoms: empty structure")
    nl = NeighborList(natural_cutoffs(atoms, mult=mult), skin=skin, self_interaction=False, bothways=False)
    nl.update(atoms)
    pairs = []
    for i in range(len(atoms)):
        neighbors, offsets = nl.get_neighbors(i)
        if np.any(offsets != 0):
            raise ValueError("bonds_from_atoms: a bond crosses a periodic boundary; stability is for molecules")
        pairs.extend((min(i, j), max(i, j)) for j in neighbors)
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.asarray(pairs, dtype=np.int64), axis=0)


def bond_lengths(positions: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Bond lengths ``(T, B)`` in Å for positions ``(T, N, 3)`` or ``(N, 3)`` (then ``T = 1``)."""
    pos = _as_frames(positions)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    return np.linalg.norm(pos[:, bonds[:, 0]] - pos[:, bonds[:, 1]], axis=-1)


def max_bond_deviation(positions: np.ndarray, bonds: np.ndarray, ref_mean: np.ndarray) -> np.ndarray:
    """``max_b |d_b(t) - ref_mean_b|`` per frame, shape ``(T,)`` (Å): the quantity thresholded by Fu et al."""
    ref_mean = np.asarray(ref_mean, dtype=np.float64)
    lengths = bond_lengths(positions, bonds)
    if lengths.shape[1] != ref_mean.shape[0]:
        raise ValueError(f"max_bond_deviation: {lengths.shape[1]} bonds but {ref_mean.shape[0]} reference means")
    if lengths.shape[1] == 0:
        return np.zeros(lengths.shape[0])
    return np.abs(lengths - ref_mean).max(axis=1)


def as_positions(frames) -> tuple[np.ndarray, np.ndarray | None]:
    """``(positions (T, N, 3), numbers or None)`` from an array, an Atoms, a list of Atoms or a .traj path."""
    if isinstance(frames, (str, os.PathLike)):
        from ase.io import read

        frames = read(os.fspath(frames), index=":")
    if isinstance(frames, Atoms):
        frames = [frames]
    if isinstance(frames, Sequence) and len(frames) > 0 and isinstance(frames[0], Atoms):
        numbers = frames[0].numbers.copy()
        return np.stack([a.positions for a in frames]).astype(np.float64), numbers
    return _as_frames(frames), None


def bonds_stability(
    frames_or_positions,
    reference_positions,
    threshold: float = 0.5,
    frame_interval_fs: float | None = None,
    bonds: np.ndarray | None = None,
    numbers: np.ndarray | None = None,
) -> float:
    """Fu et al.'s stability: simulated time (ps) before the first collapsed frame.

    Frame ``k`` of the trajectory stands for the time ``k * frame_interval_fs``. The result is
    ``k_c * frame_interval_fs / 1000`` for the first frame ``k_c`` with
    ``max_b |d_b - <d_b>_ref| > threshold``, and the time the frames span, ``(T - 1) *
    frame_interval_fs / 1000``, if all ``T`` frames are stable.

    ``frames_or_positions`` and ``reference_positions``: arrays ``(T, N, 3)``, lists of Atoms or ASE
    trajectory paths. Bonds come from ``natural_cutoffs`` on the first reference frame unless given;
    ``numbers`` is needed when both inputs are arrays and ``bonds`` is None.
    """
    if frame_interval_fs is None or not frame_interval_fs > 0:
        raise ValueError("bonds_stability: frame_interval_fs (> 0, in fs) is required")
    if threshold <= 0:
        raise ValueError(f"bonds_stability: threshold must be > 0 Å, got {threshold}")
    pos, traj_numbers = as_positions(frames_or_positions)
    ref, ref_numbers = as_positions(reference_positions)
    if pos.shape[1:] != ref.shape[1:]:
        raise ValueError(f"bonds_stability: trajectory has shape {pos.shape[1:]} but reference {ref.shape[1:]}")
    if bonds is None:
        numbers = _first_not_none(numbers, ref_numbers, traj_numbers)
        if numbers is None:
            raise ValueError("bonds_stability: pass numbers= (or Atoms frames) so that bonds can be found")
        bonds = bonds_from_atoms(Atoms(numbers=numbers, positions=ref[0]))
    ref_mean = bond_lengths(ref, bonds).mean(axis=0)
    deviation = max_bond_deviation(pos, bonds, ref_mean)
    # a NaN deviation (non-finite positions) counts as collapsed
    failed = np.flatnonzero(~(deviation <= threshold))
    # a fully stable run lasted as long as its last frame's time, not one interval more
    k = int(failed[0]) if failed.size else pos.shape[0] - 1
    return k * frame_interval_fs / 1000.0


def stability_summary(times_ps, full_time_ps: float | None = None) -> dict:
    """Mean, std (ddof=1 when ``n > 1``), ``n`` and ``n_stable_full`` of stability times over seeds.

    ``times_ps`` holds floats (ps) or ``MDResult`` objects. ``n_stable_full`` counts runs that reached
    ``full_time_ps`` (for ``MDResult``: status ``"finished"``); it is None for bare floats without
    ``full_time_ps``.
    """
    values, finished = [], []
    for t in times_ps:
        if hasattr(t, "status") and hasattr(t, "time_ps"):
            values.append(float(t.time_ps))
            finished.append(t.status == "finished")
        else:
            values.append(float(t))
            finished.append(None if full_time_ps is None else float(t) >= full_time_ps * (1 - 1e-9))
    if not values:
        raise ValueError("stability_summary: no stability times given")
    arr = np.asarray(values)
    n_full = None if any(f is None for f in finished) else int(sum(finished))
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "n": int(arr.size),
        "n_stable_full": n_full,
    }


def _as_frames(positions) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"expected positions of shape (T, N, 3) or (N, 3), got {pos.shape}")
    return pos


def _first_not_none(*values):
    return next((v for v in values if v is not None), None)
