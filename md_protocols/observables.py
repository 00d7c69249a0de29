"""Distribution of interatomic distances h(r) (Fu et al., "Forces are not enough", TMLR 2023, eq. 13-14).

    h(r) = 1/T Σ_t  1/P_t Σ_{i<j} δ(r - ||x_i(t) - x_j(t)||)                      (eq. 13)
    MAE_h = ∫ |h_a(r) - h_b(r)| dr                                                (eq. 14)

The δ is a histogram bin of width Δr = r_max / bins on [0, r_max]. Each frame is normalised to
∫ h dr = 1 over [0, r_max] (P_t = number of pairs of frame t inside the range, like
``np.histogram(density=True)``), then frames are averaged. Pairs farther than r_max are ignored;
a frame with no pair in range contributes zeros. Distances are plain Euclidean (molecules, no PBC).
"""
from __future__ import annotations

import numpy as np

from md_protocols.stability import as_positions

__all__ = ["hr", "hr_mae", "hr_reference_from_dataset"]

#: pairs × frames handled at once: each temporary (chunk, P, 3) array stays below ~25 MB
_MAX_PAIR_ROWS = 1_000_000


def hr(positions, bins: int = 500, r_max: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """``(r, h)``: bin centres (Å) and the frame-averaged, density-normalised h(r) (1/Å), eq. 13.

    ``positions``: ``(T, N, 3)`` or ``(N, 3)`` in Å (or a list of Atoms / a trajectory path).
    """
    if bins < 1 or not r_max > 0:
        raise ValueError(f"hr: need bins >= 1 and r_max > 0, got bins={bins}, r_max={r_max}")
    pos, _ = as_positions(positions)
    n_frames, n_atoms = pos.shape[:2]
    if n_atoms < 2:
        raise ValueError(f"hr: need at least 2 atoms, got {n_atoms}")
    edges = np.linspace(0.0, r_max, bins + 1)
    width = r_max / bins
    i, j = np.triu_indices(n_atoms, k=1)
    n_pairs = i.size
    total = np.zeros(bins)
    chunk = max(1, _MAX_PAIR_ROWS // n_pairs)
    for start in range(0, n_frames, chunk):
        block = pos[start : start + chunk]
        dist = np.linalg.norm(block[:, i] - block[:, j], axis=-1)  # (c, P)
        # the same binning as np.histogram: [e_k, e_k+1) and the last bin closed at r_max
        idx = np.searchsorted(edges, dist, side="right") - 1
        idx[dist == r_max] = bins - 1
        inside = (idx >= 0) & (idx < bins) & np.isfinite(dist)
        counts = inside.sum(axis=1)  # P_t
        weights = np.where(inside, 1.0 / np.maximum(counts, 1)[:, None], 0.0)
        total += np.bincount(np.where(inside, idx, 0).ravel(), weights=weights.ravel(), minlength=bins)
    h = total / (n_frames * width)
    return 0.5 * (edges[:-1] + edges[1:]), h


def hr_mae(h_a: np.ndarray, h_b: np.ndarray, r: np.ndarray) -> float:
    """``∫ |h_a - h_b| dr`` = Δr Σ |h_a - h_b| on the uniform grid ``r`` (eq. 14); in [0, 2] for densities."""
    h_a, h_b, r = (np.asarray(x, dtype=np.float64) for x in (h_a, h_b, r))
    if not (h_a.shape == h_b.shape == r.shape) or r.ndim != 1:
        raise ValueError(f"hr_mae: shapes differ: h_a {h_a.shape}, h_b {h_b.shape}, r {r.shape}")
    if r.size < 2:
        raise ValueError("hr_mae: need at least two bins")
    steps = np.diff(r)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        raise ValueError("hr_mae: r must be a uniform grid of bin centres")
    return float(steps[0] * np.abs(h_a - h_b).sum())


def hr_reference_from_dataset(positions, bins: int = 500, r_max: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """h(r) of reference frames (e.g. rMD17 DFT-MD frames): :func:`hr` on them, same binning."""
    return hr(positions, bins=bins, r_max=r_max)
