"""Representation-collapse diagnostics (Peng et al. 2026, sec. 4 and Figs. 2-3).

Fine-tuning for one property can collapse the backbone's atomic representations: atoms in
chemically different environments end up close together. Three measures:

* classes: element × covalent-neighbour count, neighbours being pairs closer than 1.15 × the sum of
  their covalent radii (:func:`atom_classes`);
* the Davies-Bouldin index of those classes (lower = better separated), on the raw features and on
  a 2-D t-SNE, normalised to the pretrained model's value (:func:`davies_bouldin`);
* the 1-Wasserstein distance between the pretrained and the fine-tuned atomic representations,
  W₁ = min_γ Σ γ_ij ‖a_i − b_j‖ with uniform marginals, on at most 5000 atoms (:func:`wasserstein_1`).

TensorNet keeps per-atom tensors only (its edge terms are fixed radial expansions, not learned
edge states), so the edge-class diagnostics of the paper have no counterpart here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ttcalc.data.systems import bond_pairs

#: the paper's neighbour criterion: d_ij < 1.15 (r_i + r_j)
NEIGHBOUR_SCALE = 1.15


def atom_classes(frames: Sequence[Atoms], scale: float = NEIGHBOUR_SCALE) -> np.ndarray:
    """One label per atom (frames concatenated), e.g. ``"C4"`` = carbon with 4 covalent neighbours."""
    labels = []
    for atoms in frames:
        pairs = bond_pairs(atoms, mult=scale)
        degree = np.bincount(pairs.ravel(), minlength=len(atoms)) if len(pairs) else np.zeros(len(atoms), int)
        labels += [f"{chemical_symbols[z]}{d}" for z, d in zip(atoms.numbers, degree)]
    return np.array(labels)


def davies_bouldin(features: np.ndarray, labels: np.ndarray, min_members: int = 2) -> float:
    """Davies-Bouldin index (scikit-learn) of ``labels`` in feature space.

    DB = (1/k) Σ_i max_{j≠i} (s_i + s_j) / d(c_i, c_j), s = mean distance to the class centroid.
    Classes with fewer than ``min_members`` points are dropped (a singleton has s = 0).
    """
    from sklearn.metrics import davies_bouldin_score

    X = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if len(X) != len(labels):
        raise ValueError(f"{len(X)} feature rows but {len(labels)} labels")
    names, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, names[counts >= min_members])
    if len(np.unique(labels[keep])) < 2:
        raise ValueError("Davies-Bouldin needs at least two classes with enough members")
    return float(davies_bouldin_score(X[keep], labels[keep]))


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE embedding (scikit-learn, PCA initialisation, fixed seed)."""
    from sklearn.manifold import TSNE

    X = np.asarray(features, dtype=np.float64)
    perplexity = min(perplexity, max(2.0, (len(X) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X)


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted seeded subset of ``range(n)`` of size min(n, max_points)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def wasserstein_1(a: np.ndarray, b: np.ndarray, max_points: int = 5000, seed: int = 0) -> float:
    """Exact 1-Wasserstein distance between two point clouds with uniform weights (POT, Euclidean cost).

    Each cloud is subsampled to ``max_points`` (seeded) to keep the n² cost matrix tractable; clouds
    of equal size are taken as paired (the same atoms' features from two models) and keep the same
    rows, so identical representations give exactly 0.
    """
    import ot

    A = np.asarray(a, dtype=np.float64)
    B = np.asarray(b, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"need two (n, d) arrays with the same d, got {A.shape} and {B.shape}")
    if len(A) == len(B):  # paired clouds (the same atoms before and after): the same subset of both
        keep = subsample(len(A), max_points, seed)
        A, B = A[keep], B[keep]
    else:
        A = A[subsample(len(A), max_points, seed)]
        B = B[subsample(len(B), max_points, seed + 1)]
    M = ot.dist(A, B, metric="euclidean")
    return float(ot.emd2(ot.unif(len(A)), ot.unif(len(B)), M, numItermax=10_000_000))


def atomic_representations(model, frames: Sequence[Atoms], batch_size: int = 128) -> np.ndarray:
    """Per-atom backbone features x_i (n_atoms, F), frames concatenated in order."""
    import torch

    from ttcalc.model.batch import collate

    out = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            batch = collate(frames[start:start + batch_size], model.cutoff, model.dtype, model.device)
            out.append(model.features(batch, batch.pos).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.representation.hidden_channels))
