"""The BOOM out-of-distribution split (Antoniuk et al. 2025) for a scalar property.

1. Fit a one-dimensional Gaussian KDE (Scott's bandwidth, h = σ̂ · n^(-1/5)) to the property values.
2. OOD = the ``n_ood`` molecules of lowest density (both tails of the distribution).
3. ID test = ``id_test_fraction`` of the rest, drawn with a fixed seed.
4. Train = what remains; validation is carved from train.

The density is evaluated by linear binning on a fine grid and an FFT-free direct convolution
(:func:`kde_density`): exact KDE on 130k points costs 1.7·10¹⁰ kernel evaluations, the binned
estimate agrees with ``scipy.stats.gaussian_kde`` to ~1e-5 relative and orders the tails the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def scott_bandwidth(values: np.ndarray) -> float:
    """h = σ̂ · n^(-1/5) (scipy's ``gaussian_kde`` with ``bw_method="scott"`` in 1-D)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.std(v, ddof=1) * len(v) ** (-1.0 / 5.0))


def kde_density(values: np.ndarray, bins: int = 8192, exact_below: int = 5000) -> np.ndarray:
    """Gaussian-KDE density (Scott bandwidth) at each of ``values``.

    For up to ``exact_below`` points the sum over all pairs is done exactly; above that the values
    are linearly binned on ``bins`` grid points, convolved with the Gaussian kernel on the grid,
    and interpolated back.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) < 2 or not np.all(np.isfinite(v)):
        raise ValueError("kde_density needs at least two finite values")
    h = scott_bandwidth(v)
    if h == 0:
        raise ValueError("all values are equal; the density is undefined")
    norm = 1.0 / (len(v) * h * np.sqrt(2 * np.pi))
    if len(v) <= exact_below:
        return norm * np.exp(-0.5 * ((v[:, None] - v[None, :]) / h) ** 2).sum(axis=1)
    lo, hi = v.min() - 4 * h, v.max() + 4 * h
    grid = np.linspace(lo, hi, bins)
    dx = grid[1] - grid[0]
    pos = (v - lo) / dx
    left = np.clip(np.floor(pos).astype(int), 0, bins - 2)
    frac = pos - left
    weights = np.bincount(left, 1 - frac, bins) + np.bincount(left + 1, frac, bins)
    half = int(np.ceil(8 * h / dx))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / h) ** 2)
    dens = norm * np.convolve(weights, kernel, mode="same")
    return np.interp(v, grid, dens)


@dataclass(frozen=True)
class BoomSplit:
    """Index arrays into the values the split was made from."""

    train: np.ndarray
    val: np.ndarray
    id_test: np.ndarray
    ood: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {k: int(len(getattr(self, k))) for k in ("train", "val", "id_test", "ood")}


def boom_split(values: np.ndarray, n_ood: int = 10_000, id_test_fraction: float = 0.05,
               val_fraction: float = 0.1, seed: int = 0, n_train: int | None = None) -> BoomSplit:
    """BOOM split of ``values`` (see module docstring).

    ``n_train`` subsamples the train pool (seeded) for CPU budgets; validation is
    ``val_fraction`` of the (subsampled) train pool. The split rule is otherwise unchanged.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < n_ood < len(v):
        raise ValueError(f"n_ood must be in (0, {len(v)}), got {n_ood}")
    if not 0 <= id_test_fraction < 1 or not 0 <= val_fraction < 1:
        raise ValueError("id_test_fraction and val_fraction must be in [0, 1)")
    density = kde_density(v)
    order = np.lexsort((np.arange(len(v)), density))  # ties broken by index: deterministic
    ood = np.sort(order[:n_ood])
    rest = np.sort(order[n_ood:])
    rng = np.random.default_rng(seed)
    rest = rng.permutation(rest)
    n_test = int(round(id_test_fraction * len(rest)))
    id_test, pool = np.sort(rest[:n_test]), rest[n_test:]
    if n_train is not None:
        if n_train < 2 or n_train > len(pool):
            raise ValueError(f"n_train must be in [2, {len(pool)}], got {n_train}")
        pool = pool[:n_train]
    n_val = int(round(val_fraction * len(pool)))
    return BoomSplit(train=np.sort(pool[n_val:]), val=np.sort(pool[:n_val]), id_test=id_test, ood=ood)
