"""Q-residual uncertainty of a representation (Wong & Yang, arXiv 2603.10159, 2026).

PCA is fitted to per-atom features x of the training frames; the k leading components that explain
a fraction ``variance`` of the variance span the "known" subspace. For an atom,

    Q = ‖(x − μ)(I − P_k P_kᵀ)‖²,

the squared distance of its features from that subspace; a structure's Q is the largest of its
atoms'. The atom limit is Jackson & Mudholkar's Q_α (Technometrics 21, 341, 1979) from the residual
eigenvalues λ_{k+1..F}: with θ_i = Σ λ_j^i, h₀ = 1 − 2θ₁θ₃ / (3θ₂²) and c_α the standard normal
α-quantile,

    Q_α = θ₁ [ c_α √(2θ₂h₀²) / θ₁ + 1 + θ₂h₀(h₀ − 1) / θ₁² ]^(1/h₀).

A maximum over atoms does not follow that distribution, so the structure limit is the empirical
α-quantile of the training structures' Q. Everything but :func:`fit_model_q_residual` (which takes
a model's features of the frames it is given) is NumPy on feature arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.stats import norm


def jackson_mudholkar_limit(residual_eigenvalues: np.ndarray, alpha: float = 0.95) -> float:
    """Q_α for residual (discarded) PCA eigenvalues; see the module docstring."""
    lam = np.asarray(residual_eigenvalues, dtype=float)
    lam = lam[lam > 0]
    if lam.size == 0:
        return 0.0
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t1, t2, t3 = (np.sum(lam ** i) for i in (1, 2, 3))
    h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 ** 2)
    c = norm.ppf(alpha)
    return float(t1 * (c * np.sqrt(2.0 * t2 * h0 ** 2) / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / t1 ** 2) ** (1.0 / h0))


@dataclass
class QResidual:
    """A fitted Q-residual model: PCA mean, loadings P_k (F, k), all eigenvalues (descending), the
    atom limit Q_α and the training structures' Q (for the structure limit)."""

    mean: np.ndarray
    loadings: np.ndarray
    eigenvalues: np.ndarray
    alpha: float
    atom_limit: float
    train_structure_q: np.ndarray

    @property
    def k(self) -> int:
        return int(self.loadings.shape[1])

    @cached_property
    def structure_limit(self) -> float:
        """The empirical α-quantile of the training structures' Q (computed once: it is read on
        every calculator call)."""
        return float(np.quantile(self.train_structure_q, self.alpha))

    def atom_q(self, features: np.ndarray) -> np.ndarray:
        """Per-atom Q for features (n, F)."""
        x = np.asarray(features, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be (n, {self.mean.shape[0]}), got {x.shape}")
        x = x - self.mean
        residual = x - (x @ self.loadings) @ self.loadings.T
        return np.einsum("ij,ij->i", residual, residual)

    def structure_q(self, features: np.ndarray, structure: np.ndarray) -> np.ndarray:
        """Per-structure Q (the largest atom Q) for features (n, F) and structure indices (n,)."""
        return _max_per_structure(self.atom_q(features), structure)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "loadings": self.loadings.tolist(), "eigenvalues": self.eigenvalues.tolist(),
                "alpha": self.alpha, "atom_limit": self.atom_limit,
                "train_structure_q": self.train_structure_q.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "QResidual":
        return cls(np.asarray(d["mean"]), np.asarray(d["loadings"]).reshape(len(d["mean"]), -1),
                   np.asarray(d["eigenvalues"]), float(d["alpha"]), float(d["atom_limit"]),
                   np.asarray(d["train_structure_q"]))


def _max_per_structure(values: np.ndarray, structure: np.ndarray) -> np.ndarray:
    structure = np.asarray(structure)
    if structure.shape != values.shape:
        raise ValueError(f"one structure index per atom: {structure.shape} != {values.shape}")
    out = np.full(int(structure.max()) + 1, -np.inf)
    np.maximum.at(out, structure, values)
    return out


def fit_q_residual(features: np.ndarray, structure: np.ndarray, variance: float = 0.99,
                   alpha: float = 0.95) -> QResidual:
    """PCA of training features (n, F), keeping the fewest components that explain ``variance``."""
    x = np.asarray(features, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features of at least two atoms as (n, F), got {x.shape}")
    if not 0 < variance < 1:
        raise ValueError(f"variance must be in (0, 1), got {variance}")
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    w, v = np.linalg.eigh(np.atleast_2d(cov))
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0.0, None), v[:, order]
    k = int(np.searchsorted(np.cumsum(w) / w.sum(), variance) + 1)
    k = min(k, x.shape[1])
    model = QResidual(mean, v[:, :k], w, alpha, jackson_mudholkar_limit(w[k:], alpha), np.empty(0))
    model.train_structure_q = model.structure_q(x, structure)
    return model


def fit_model_q_residual(model, frames, variance: float = 0.99, alpha: float = 0.95) -> QResidual:
    """:func:`fit_q_residual` on ``model``'s per-atom representation features of ``frames``
    (what training stores in the checkpoint, ``TrainingStats.q_residual``)."""
    from ttcalc.diagnostics.collapse import atomic_representations

    structure = np.repeat(np.arange(len(frames)), [len(a) for a in frames])
    return fit_q_residual(atomic_representations(model, list(frames)), structure, variance=variance, alpha=alpha)
