"""Spectral graph distances and test-time radius refinement.

Kreiman & Krishnapriyan, "Understanding and mitigating distribution shifts for universal machine
learning interatomic potentials", Digital Discovery (2026), doi:10.1039/D5DD00260E (arXiv:2503.08674,
2025), sec. 4 (radius refinement) and eq. 5 (spectral distance): a model trained with radius
graphs of cutoff r sees connectivity, not just geometry. A test structure whose radius graph looks
unlike the training graphs (e.g. a compressed or expanded molecule) is re-graphed with the radius
whose graph best matches the training connectivity, measured by the normalised-Laplacian spectrum.

Definitions used throughout (all functions are pure):

* Radius graph: ``A_ij = 1`` if ``i != j`` and ``|r_i − r_j| < r`` (for periodic cells: the shortest
  distance between i and any periodic image of j; an atom's own images are not edges, so there are
  no self loops and A is a 0/1 matrix).
* Normalised Laplacian: ``L = I − D^{-1/2} A D^{-1/2}`` with ``D = diag(Σ_j A_ij)``. Isolated atoms
  (degree 0) get ``D^{-1/2} = 0`` *and* ``L_ii = 0``: their row and column of L are zero, so each
  contributes one eigenvalue 0, like any other connected component. Hence the number of zero
  eigenvalues equals the number of connected components (isolated atoms included), and the
  spectrum of a disconnected graph is the union of its components' spectra. All eigenvalues lie in
  [0, 2]; round-off outside that range is clipped.
* Spectrum: the eigenvalues of L sorted ascending (``np.linalg.eigvalsh``).
* Padding (one convention for training and test): a spectrum of N < n_pad atoms gets n_pad − N
  zeros at the *front* (low end), i.e. it is treated as the graph plus n_pad − N isolated atoms; the
  result stays sorted ascending.
* Spectral distance (eq. 5): ``d(λ^a, λ^b) = Σ_i (λ^a_i − λ^b_i)²`` after padding both spectra to
  the same length.
* Radius refinement: ``r* = argmin_{r ∈ grid} d(λ(G_r(x)), λ̄_train)``, where ``λ̄_train`` is the
  mean padded spectrum of the training structures at the training radius.

Two metrics (``metric=``):

* ``"padded"``: eq. 5 as above. When training structures differ in size, padding turns every smaller
  molecule into "the same graph plus isolated atoms", so the mean training spectrum carries extra
  zeros and radius refinement rewards graphs that fall apart. Measured on rMD17 (60 ``train_01``
  frames each, training radius 5 Å): with benzene + uracil as the training set, held-out aspirin
  gets r* = 3.0 Å, the bottom of the grid, and so does aspirin itself with all three molecules in
  the training set.
* ``"distribution"`` (default when the training spectrum stores it): the squared 2-Wasserstein
  distance between the two empirical eigenvalue distributions, ``W₂² = ∫₀¹ (Q_a(p) − Q_b(p))² dp``
  with Q the quantile function of a spectrum, evaluated at ``N_QUANTILES`` midpoints. It does not
  depend on the number of atoms (a graph and two disjoint copies of it are at distance 0), and the
  training reference is the mean quantile function, the 1-D Wasserstein barycentre of the training
  spectra. In the same test the training molecules get r* = 4.5–5.75 Å (mean 4.7–5.1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

logger = logging.getLogger(__name__)

#: distances within this relative tolerance of the minimum count as ties in :func:`refine_radius`
_TIE_RTOL = 1e-9
#: quantile levels (midpoints) at which the "distribution" metric compares spectra
N_QUANTILES = 64
METRICS = ("distribution", "padded")


def _geometry(structure: Atoms | np.ndarray, cell: Any = None, pbc: Any = None):
    """(positions (N, 3), cell (3, 3) or None, pbc (3,) bool) from Atoms or a positions array."""
    if isinstance(structure, Atoms):
        positions = structure.positions
        cell = structure.cell[:] if cell is None else cell
        pbc = structure.pbc if pbc is None else pbc
    else:
        positions = structure
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    pbc = np.zeros(3, dtype=bool) if pbc is None else np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if pbc.any():
        if cell is None:
            raise ValueError("periodic boundary conditions need a cell")
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    else:
        cell = None  # a cell without periodicity changes nothing
    return positions, cell, pbc


def pair_distances(
    structure: Atoms | np.ndarray, cell: Any = None, pbc: Any = None, cutoff: float | None = None
) -> np.ndarray:
    """(N, N) distances between atoms, ``inf`` on the diagonal.

    Non-periodic: plain Euclidean distances. Periodic: the shortest distance from i to any image of
    j (minimum image, also valid for cells smaller than the cutoff), found with ASE's neighbour list
    up to ``cutoff``; pairs farther apart than ``cutoff`` are ``inf``.
    """
    positions, cell, pbc = _geometry(structure, cell, pbc)
    n = len(positions)
    if cell is None:
        dist = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    else:
        if cutoff is None:
            raise ValueError("periodic pair distances need a cutoff")
        dist = np.full((n, n), np.inf)
        i, j, d = neighbor_list("ijd", Atoms(positions=positions, cell=cell, pbc=pbc), float(cutoff))
        np.minimum.at(dist, (i, j), d)
    dist[np.diag_indices(n)] = np.inf  # no self loops, also not to a periodic image of oneself
    return dist


def adjacency(positions: Atoms | np.ndarray, radius: float, cell: Any = None, pbc: Any = None) -> np.ndarray:
    """Radius-graph adjacency (N, N) of 0.0/1.0: ``A_ij = 1`` iff ``i != j`` and ``d_ij < radius``."""
    _check_radius(radius)
    return (pair_distances(positions, cell, pbc, cutoff=radius) < radius).astype(np.float64)


def normalized_laplacian(adjacency_matrix: np.ndarray) -> np.ndarray:
    """``L = I − D^{-1/2} A D^{-1/2}`` of one (N, N) or a stack (K, N, N) of adjacency matrices.

    Isolated nodes: ``D^{-1/2} = 0`` and ``L_ii = 0`` (see module docstring).
    """
    A = np.asarray(adjacency_matrix, dtype=np.float64)
    degree = A.sum(axis=-1)
    connected = degree > 0
    d_inv_sqrt = np.where(connected, 1.0 / np.sqrt(np.where(connected, degree, 1.0)), 0.0)
    L = -d_inv_sqrt[..., :, None] * A * d_inv_sqrt[..., None, :]
    diagonal = np.einsum("...ii->...i", L)  # writable view of the diagonal(s)
    diagonal += connected
    return L


def pad_spectrum(spectrum: np.ndarray, n_pad: int) -> np.ndarray:
    """Prepend ``n_pad − N`` zeros (isolated atoms) to ascending spectra (..., N); ValueError if n_pad < N."""
    spectrum = np.asarray(spectrum, dtype=np.float64)
    n = spectrum.shape[-1]
    if n_pad < n:
        raise ValueError(f"n_pad={n_pad} is smaller than the spectrum length {n}")
    zeros = np.zeros(spectrum.shape[:-1] + (n_pad - n,))
    return np.concatenate([zeros, spectrum], axis=-1)


def _spectra(dist: np.ndarray, radii: np.ndarray, n_pad: int | None = None) -> np.ndarray:
    """Padded spectra (K, n_pad) of the radius graphs at all ``radii`` at once (one batched eigvalsh)."""
    A = (dist[None, :, :] < radii[:, None, None]).astype(np.float64)
    eigenvalues = np.clip(np.linalg.eigvalsh(normalized_laplacian(A)), 0.0, 2.0)
    return pad_spectrum(eigenvalues, dist.shape[0] if n_pad is None else n_pad)


def _check_radius(radius: float) -> None:
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be positive and finite, got {radius}")


def laplacian_spectrum(
    positions: Atoms | np.ndarray,
    radius: float,
    cell: Any = None,
    pbc: Any = None,
    n_pad: int | None = None,
) -> np.ndarray:
    """Ascending eigenvalues of the normalised Laplacian of the radius graph, zero-padded at the front.

    ``L = I − D^{-1/2} A D^{-1/2}``, ``A_ij = [i != j and d_ij < radius]``; isolated atoms contribute
    eigenvalue 0. With ``n_pad`` the spectrum is prefixed with ``n_pad − N`` zeros (extra isolated
    atoms); ``n_pad < N`` raises ValueError.
    """
    _check_radius(radius)
    dist = pair_distances(positions, cell, pbc, cutoff=radius)
    return _spectra(dist, np.array([float(radius)]), n_pad)[0]


def spectral_quantiles(spectra: np.ndarray, n: int = N_QUANTILES) -> np.ndarray:
    """Quantile function of ascending spectra (..., N) at the levels p_k = (k + ½)/n: (..., n).

    ``Q(p) = λ_⌊pN⌋``, the empirical quantile of the eigenvalue distribution (each eigenvalue has
    weight 1/N), so a spectrum and the spectrum of two disjoint copies of its graph give the same Q.
    """
    spectra = np.asarray(spectra, dtype=np.float64)
    size = spectra.shape[-1]
    if size == 0:
        raise ValueError("an empty spectrum has no quantiles")
    levels = (np.arange(n) + 0.5) / n
    return spectra[..., np.minimum((levels * size).astype(int), size - 1)]


def _w2_squared(quantiles_a: np.ndarray, quantiles_b: np.ndarray) -> np.ndarray:
    """``(1/n) Σ_k (Q_a(p_k) − Q_b(p_k))²`` over the last axis (broadcasting)."""
    return np.mean((quantiles_a - quantiles_b) ** 2, axis=-1)


def _padded_squared(spectra: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Eq. 5 over the last axis (broadcasting), both sides zero-padded at the front to the longer."""
    n = max(spectra.shape[-1], reference.shape[-1])
    return np.sum((pad_spectrum(spectra, n) - pad_spectrum(reference, n)) ** 2, axis=-1)


def distribution_distance(quantiles_a: np.ndarray, quantiles_b: np.ndarray) -> float:
    """``W₂² ≈ (1/n) Σ_k (Q_a(p_k) − Q_b(p_k))²`` between two quantile functions of equal length."""
    a = np.asarray(quantiles_a, dtype=np.float64)
    b = np.asarray(quantiles_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"quantile functions must be 1-D and of equal length, got {a.shape} and {b.shape}")
    return float(_w2_squared(a, b))


def spectral_distance(spectrum_a: np.ndarray, spectrum_b: np.ndarray) -> float:
    """Eq. 5: ``Σ_i (λ^a_i − λ^b_i)²`` of two ascending spectra, the shorter zero-padded at the front."""
    a = np.asarray(spectrum_a, dtype=np.float64)
    b = np.asarray(spectrum_b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"spectra must be 1-D, got shapes {a.shape} and {b.shape}")
    return float(_padded_squared(a, b))


@dataclass
class TrainingSpectrum:
    """Mean normalised-Laplacian spectrum of the training structures (the reference of eq. 5).

    Attributes:
        mean: mean of the training spectra, each zero-padded at the front to ``n_pad`` (n_pad,).
        n_pad: padded length (default: the largest training structure).
        radius: the training cutoff radius [Å] at which the spectra were computed.
        distances: spectral distance of every training structure to ``mean`` (diagnostics: how far
            an in-distribution structure typically is; see :meth:`summary`).
        quantiles: mean quantile function of the training spectra (``N_QUANTILES``,), the reference
            of the "distribution" metric; None in checkpoints written before it existed.
        quantile_distances: W₂² of every training structure to ``quantiles``.
    """

    mean: np.ndarray
    n_pad: int
    radius: float
    distances: np.ndarray
    quantiles: np.ndarray | None = None
    quantile_distances: np.ndarray | None = None

    @property
    def metric(self) -> str:
        """The default metric: "distribution" when this spectrum stores quantiles, else "padded"."""
        return "padded" if self.quantiles is None else "distribution"

    def _metric(self, metric: str | None) -> str:
        metric = self.metric if metric is None else metric
        if metric not in METRICS:
            raise ValueError(f"unknown spectral metric {metric!r}; use one of {METRICS}")
        if metric == "distribution" and self.quantiles is None:
            raise ValueError("this training spectrum stores no quantiles (an older checkpoint): use "
                             "metric='padded' or rebuild it with build_training_spectrum")
        return metric

    def training_distances(self, metric: str | None = None) -> np.ndarray:
        """Every training structure's distance to the reference under ``metric``."""
        metric = self._metric(metric)
        return np.asarray(self.distances if metric == "padded" else self.quantile_distances, dtype=np.float64)

    def summary(self, metric: str | None = None) -> dict[str, float]:
        """Mean, standard deviation and 50/90/99 % quantiles of the training distances."""
        d = self.training_distances(metric)
        q50, q90, q99 = np.quantile(d, [0.5, 0.9, 0.99])
        return {"n": int(d.size), "mean": float(d.mean()), "std": float(d.std()),
                "q50": float(q50), "q90": float(q90), "q99": float(q99)}

    def distance(self, structure: Atoms | np.ndarray, radius: float | None = None,
                 metric: str | None = None) -> float:
        """Distance of ``structure``'s spectrum at ``radius`` (default: training radius) to the reference.

        "padded" (eq. 5): a structure with more than ``n_pad`` atoms is compared with the mean padded
        at the front to its size. "distribution": W₂² to the mean quantile function.
        """
        spectrum = laplacian_spectrum(structure, self.radius if radius is None else radius)
        return float(self.distances_to_reference(spectrum[None], metric)[0])

    def distances_to_reference(self, spectra: np.ndarray, metric: str | None = None) -> np.ndarray:
        """Distances of unpadded ascending spectra (K, N) of one structure to the reference: (K,).

        "padded": eq. 5 with both sides padded at the front to ``max(N, n_pad)``; "distribution":
        W₂² between quantile functions.
        """
        if self._metric(metric) == "padded":
            return _padded_squared(spectra, self.mean)
        return _w2_squared(spectral_quantiles(spectra, len(self.quantiles)), self.quantiles)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists and floats), e.g. to store inside a model checkpoint."""
        out = {"mean": [float(x) for x in self.mean], "n_pad": int(self.n_pad), "radius": float(self.radius),
               "distances": [float(x) for x in self.distances]}
        if self.quantiles is not None:
            out["quantiles"] = [float(x) for x in self.quantiles]
            out["quantile_distances"] = [float(x) for x in self.quantile_distances]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingSpectrum":
        """Inverse of :meth:`to_dict`."""
        mean = np.asarray(data["mean"], dtype=np.float64)
        if mean.shape != (int(data["n_pad"]),):
            raise ValueError(f"mean has shape {mean.shape}, expected ({int(data['n_pad'])},)")
        quantiles = data.get("quantiles")
        return cls(mean=mean, n_pad=int(data["n_pad"]), radius=float(data["radius"]),
                   distances=np.asarray(data["distances"], dtype=np.float64),
                   quantiles=None if quantiles is None else np.asarray(quantiles, dtype=np.float64),
                   quantile_distances=None if quantiles is None else
                   np.asarray(data["quantile_distances"], dtype=np.float64))


def build_training_spectrum(
    frames_or_positions_list: Sequence[Atoms | np.ndarray],
    radius: float,
    n_pad: int | None = None,
    max_frames: int | None = None,
    seed: int = 0,
) -> TrainingSpectrum:
    """Mean padded spectrum ``λ̄ = (1/M) Σ_m pad(λ(G_radius(x_m)), n_pad)`` of training structures.

    Args:
        frames_or_positions_list: Atoms (periodic ones use their cell) or (N, 3) position arrays.
        radius: training cutoff radius [Å].
        n_pad: padded length; default the largest atom count; smaller than a structure raises.
        max_frames: use a random subset of this many structures (``np.random.default_rng(seed)``).
        seed: seed of that subset.
    """
    _check_radius(radius)
    structures = list(frames_or_positions_list)
    if not structures:
        raise ValueError("build_training_spectrum needs at least one structure")
    if max_frames is not None and max_frames < len(structures):
        chosen = np.sort(np.random.default_rng(seed).choice(len(structures), size=max_frames, replace=False))
        structures = [structures[i] for i in chosen]
    sizes = [len(s) for s in structures]
    n_pad = max(sizes) if n_pad is None else int(n_pad)
    if n_pad < max(sizes):
        raise ValueError(f"n_pad={n_pad} is smaller than the largest training structure ({max(sizes)} atoms)")
    radii = np.array([float(radius)])
    raw = [_spectra(pair_distances(s, cutoff=radius), radii)[0] for s in structures]
    spectra = np.stack([pad_spectrum(x, n_pad) for x in raw])
    mean = spectra.mean(axis=0)
    distances = _padded_squared(spectra, mean)
    quantiles = np.stack([spectral_quantiles(x) for x in raw])
    q_mean = quantiles.mean(axis=0)  # the 1-D Wasserstein barycentre of the training spectra
    return TrainingSpectrum(mean=mean, n_pad=n_pad, radius=float(radius), distances=distances,
                            quantiles=q_mean, quantile_distances=_w2_squared(quantiles, q_mean))


def default_radius_grid(radius: float, low: float = 0.6, high: float = 1.4, n: int = 17) -> np.ndarray:
    """``n`` trial radii from ``low·radius`` to ``high·radius`` (default steps of 0.05·radius),
    ascending, with the grid point nearest ``radius`` replaced by ``radius`` itself so that the
    training radius is always a candidate, bit for bit."""
    _check_radius(radius)
    if not 0 < low <= 1 <= high or n < 1:
        raise ValueError(f"need 0 < low <= 1 <= high and n >= 1, got low={low}, high={high}, n={n}")
    grid = np.round(np.linspace(low, high, n) * radius, 9)  # 5.5, not 5.499999999999999
    grid[np.argmin(np.abs(grid - radius))] = radius
    return np.unique(grid)


def refine_radius(
    atoms_or_positions: Atoms | np.ndarray,
    training_spectrum: TrainingSpectrum,
    radii: Sequence[float] | None = None,
    metric: str | None = None,
) -> tuple[float, dict[float, float]]:
    """Radius whose graph of the structure best matches the training connectivity (sec. 4, eq. 5).

    ``r* = argmin_{r ∈ radii} d(λ(G_r(x)), reference)``. ``metric="padded"``: eq. 5,
    ``Σ_i (λ_i − λ̄_i)²`` with both spectra padded to ``max(N, n_pad)`` at the front;
    ``"distribution"`` (the default when stored): W₂² between quantile functions (module docstring).
    All trial radii share one distance matrix and one batched eigensolve.

    Args:
        atoms_or_positions: the test structure (Atoms with a periodic cell work too).
        training_spectrum: from :func:`build_training_spectrum`.
        radii: trial radii; default :func:`default_radius_grid` (0.6–1.4 × training radius, 17
            points including the training radius exactly).
        metric: "distribution" or "padded"; default ``training_spectrum.metric``.

    Returns:
        ``(r*, {r: distance})``. Ties (within a relative 1e-9) go to the radius closest to the
        training radius, and among those to the smaller one.
    """
    grid = default_radius_grid(training_spectrum.radius) if radii is None else np.asarray(radii, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError(f"radii must be a non-empty list of positive numbers, got {radii}")
    dist = pair_distances(atoms_or_positions, cutoff=float(grid.max()))
    distances = training_spectrum.distances_to_reference(_spectra(dist, grid), metric)
    best = distances.min()
    tied = np.flatnonzero(distances <= best + _TIE_RTOL * max(abs(best), 1e-12))
    # closest to the training radius first, then the smaller radius
    choice = min(tied, key=lambda k: (abs(grid[k] - training_spectrum.radius), grid[k]))
    logger.debug("refine_radius: r* = %.3f Å (training %.3f Å), distance %.4g", grid[choice],
                 training_spectrum.radius, distances[choice])
    return float(grid[choice]), {float(r): float(d) for r, d in zip(grid, distances)}
