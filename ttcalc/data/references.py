"""Per-element reference energies ("atomic energies", E0s) fitted by linear least squares.

A total energy is dominated by a sum of per-atom constants; removing it leaves the small,
learnable interaction energy. With ``n_Z(m)`` the number of atoms of element Z in frame m:

    E_m ≈ Σ_Z n_Z(m) e_Z,      e = argmin_e  ‖X e − E‖² + ridge ‖e‖²,      X_mZ = n_Z(m).

Frames of one molecule all share one composition, so X has rank 1 and many ``e`` fit equally well;
``ridge=0`` then returns numpy's ``lstsq`` minimum-norm solution (e_Z ∝ n_Z, proportional to the
composition). The molecule's total reference Σ n_Z e_Z is still the least-squares one, but the
individual e_Z are not physical atomic energies. Several molecules with independent compositions
(rank = number of elements) determine every e_Z uniquely.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import numpy as np
from ase import Atoms

from ttcalc.data.frames import frame_energies

logger = logging.getLogger(__name__)


def _numbers(item: Atoms | Iterable[int]) -> np.ndarray:
    return np.asarray(item.numbers if isinstance(item, Atoms) else item, dtype=np.int64).reshape(-1)


def composition_matrix(structures: Sequence[Atoms | Iterable[int]], elements: Sequence[int]) -> np.ndarray:
    """Counts ``X[m, k]`` of element ``elements[k]`` in structure m (Atoms or atomic numbers)."""
    elements = np.asarray(elements, dtype=np.int64)
    X = np.zeros((len(structures), len(elements)))
    for m, structure in enumerate(structures):
        numbers = _numbers(structure)
        unknown = np.setdiff1d(numbers, elements)
        if unknown.size:
            raise ValueError(f"structure {m} has elements {unknown.tolist()} outside elements={elements.tolist()}")
        X[m] = (numbers[:, None] == elements[None, :]).sum(axis=0)
    return X


def fit_element_references(
    frames: Sequence[Atoms | Iterable[int]],
    elements: Sequence[int] | None = None,
    ridge: float = 0.0,
    energies: Sequence[float] | None = None,
) -> dict[int, float]:
    """Per-element reference energies e_Z [eV] with E_m ≈ Σ_Z n_Z(m) e_Z (see module docstring).

    Args:
        frames: labelled Atoms, or atomic-number arrays when ``energies`` is given (vectorised use
            with :func:`ttcalc.data.rmd17_arrays`).
        elements: atomic numbers to fit (default: all that occur); frames with other elements raise.
        ridge: Tikhonov weight λ ≥ 0: solves (XᵀX + λI) e = XᵀE. With λ = 0, rank-deficient
            problems (e.g. a single molecule) get numpy ``lstsq``'s minimum-norm solution.
        energies: energies [eV] of ``frames``; default: read from the frames' calculators.

    Returns:
        ``{Z: e_Z}`` with int keys and float values.
    """
    if len(frames) == 0:
        raise ValueError("fit_element_references needs at least one frame")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    y = frame_energies(frames) if energies is None else np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(y) != len(frames):
        raise ValueError(f"{len(y)} energies for {len(frames)} frames")
    if elements is None:
        elements = np.unique(np.concatenate([_numbers(f) for f in frames]))
    elements = np.asarray(sorted(set(int(z) for z in elements)), dtype=np.int64)
    X = composition_matrix(frames, elements)

    if ridge > 0:
        e = np.linalg.solve(X.T @ X + ridge * np.eye(len(elements)), X.T @ y)
    else:
        e, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
        if rank < len(elements):
            logger.info(
                "element references: compositions have rank %d < %d elements; using the minimum-norm "
                "solution (per-element values are not unique, their sums per composition are)",
                rank, len(elements),
            )
    return {int(z): float(v) for z, v in zip(elements, e)}


def reference_energy(atoms_or_numbers: Atoms | Iterable[int], refs: Mapping[int, float]) -> float:
    """Σ_Z n_Z e_Z [eV] of one structure; ValueError names elements without a reference."""
    numbers = _numbers(atoms_or_numbers)
    refs = {int(z): float(e) for z, e in refs.items()}  # JSON round trips turn int keys into str
    missing = sorted(set(numbers.tolist()) - set(refs))
    if missing:
        raise ValueError(f"no reference energy for element(s) {missing}; references exist for {sorted(refs)}")
    return float(sum(refs[z] for z in numbers.tolist()))


def fit_element_constants(
    structures: Sequence[Atoms | Iterable[int]],
    values: np.ndarray,
    intensive: bool = False,
    elements: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-element constants p(Z) of a molecular property by least squares (property-head bias).

    Extensive:  y_m ≈ Σ_Z n_Z(m) p(Z);    intensive:  y_m ≈ Σ_Z (n_Z(m) / N_m) p(Z),

    i.e. the bias that a sum (or mean) over atoms of p(Z_i) produces. ``values`` is (M,) or (M, d).
    Returns ``(elements, p)`` with p of shape (len(elements), d) (minimum-norm if rank-deficient).
    """
    y = np.asarray(values, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if len(structures) == 0 or len(y) != len(structures):
        raise ValueError(f"need one value per structure, got {len(y)} values for {len(structures)} structures")
    if elements is None:
        elements = np.unique(np.concatenate([_numbers(s) for s in structures]))
    elements = np.asarray(sorted(set(int(z) for z in elements)), dtype=np.int64)
    p, *_ = np.linalg.lstsq(element_constant_design(structures, elements, intensive), y, rcond=None)
    return elements, p


def element_constant_design(structures: Sequence[Atoms | Iterable[int]], elements: Sequence[int],
                            intensive: bool) -> np.ndarray:
    """The matrix X of y ≈ X p(Z): element counts (extensive) or composition fractions (intensive)."""
    X = composition_matrix(structures, elements)
    return X / X.sum(axis=1, keepdims=True) if intensive else X
