"""Distribution-shift diagnostics of one structure against a model's training set.

Kreiman & Krishnapriyan, "Understanding and mitigating distribution shifts for universal MLIPs",
Digital Discovery 2025, sec. 3.2 names three shifts; each is measured here against the
:class:`~ttcalc.model.potential.TrainingStats` stored in the checkpoint:

* **atomic features**: elements absent from training (OOD if any), and the system size N compared
  with the training sizes ``stats.n_atoms``: ``z = (N − mean) / std`` (a single training size has
  std = 0, so every other size is OOD);
* **force norm**: the prior's mean per-atom force norm ``F̄ = (1/N) Σ_i |F_i^prior|`` of this
  structure, as ``z = (F̄ − μ) / σ`` against the per-frame mean |F| of the training prior labels
  (``stats.prior_frame_force_norm``), and as a percentile of the per-atom |F| distribution
  (``stats.prior_force_norm`` quantiles); needs a prior;
* **connectivity**: the eq. 5 spectral distance ``d = Σ_i (λ_i − λ̄_i)²`` of the normalised-Laplacian
  spectrum of the radius graph at the training cutoff to the mean training spectrum
  (:class:`~ttcalc.diagnostics.spectral.TrainingSpectrum`), against the training structures' own distances.

A shift is flagged (OOD) when the structure lies more than ``n_std`` (default 1, as in the paper)
standard deviations from the training mean: two-sided for size and force norm, one-sided
(larger only) for the spectral distance, which is ≥ 0 and smaller means closer to training.
A 1σ rule is a loose screen: it also flags a sizeable fraction of in-distribution structures.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ttcalc.model.potential import MultiHeadPotential, TrainingStats
from ttcalc.priors.base import Prior, PriorError

log = logging.getLogger(__name__)

#: item names, in report order
ELEMENTS = "atomic features: elements"
SIZE = "atomic features: size"
FORCE_NORM = "force norm"
CONNECTIVITY = "connectivity"
Q_RESIDUAL = "Q-residual"


@dataclass
class ShiftItem:
    """One measured shift.

    ``value`` is the structure's quantity (unseen element symbols, atom count, mean prior |F| in
    eV/Å, or spectral distance), ``training`` the reference it is compared with (a JSON-able dict),
    ``z_score``/``percentile`` where they are defined, and ``ood`` True/False, or None when the
    shift could not be computed (e.g. no prior).
    """

    name: str
    value: Any
    training: dict
    z_score: float | None
    percentile: float | None
    ood: bool | None
    detail: str


@dataclass
class ShiftReport:
    """The shifts of one structure (:func:`diagnose`)."""

    items: list[ShiftItem]
    structure: str = ""
    n_std: float = 1.0

    @property
    def any_ood(self) -> bool:
        """True if any computed shift is flagged."""
        return any(item.ood is True for item in self.items)

    def __getitem__(self, name: str) -> ShiftItem:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(f"no shift {name!r}; shifts: {[i.name for i in self.items]}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (no NaN or infinity)."""
        return {"structure": self.structure, "n_std": self.n_std, "any_ood": self.any_ood,
                "items": [asdict(item) for item in self.items]}

    @classmethod
    def from_dict(cls, data: dict) -> "ShiftReport":
        """Inverse of :meth:`to_dict`."""
        return cls(items=[ShiftItem(**item) for item in data["items"]], structure=data.get("structure", ""),
                   n_std=float(data.get("n_std", 1.0)))


# --- inputs ----------------------------------------------------------------------------------------
def _training_stats(model: MultiHeadPotential | str | Path) -> tuple[TrainingStats, str]:
    """The training statistics and a name for error messages, from a model or a checkpoint path."""
    if isinstance(model, MultiHeadPotential):
        return model.stats, "the model"
    if isinstance(model, (str, Path)):
        from ttcalc.model.checkpoint import read_checkpoint
        from ttcalc.model.pretrained import PRETRAINED, pretrained_path

        path = pretrained_path(str(model)) if str(model) in PRETRAINED else Path(model)
        # only the statistics are needed: no model is built
        return TrainingStats.from_dict(read_checkpoint(path)["stats"]), str(path)
    raise TypeError(f"model must be a MultiHeadPotential or a checkpoint path, not {type(model).__name__}")


def _model_for_q(model: MultiHeadPotential | str | Path, stats: TrainingStats) -> MultiHeadPotential | None:
    """The model whose features the Q-residual needs (built from a path only when the stats hold a PCA)."""
    if isinstance(model, MultiHeadPotential) or not stats.q_residual:
        return model if isinstance(model, MultiHeadPotential) else None
    from ttcalc.model.potential import load_model
    from ttcalc.model.pretrained import PRETRAINED, load_pretrained

    return load_pretrained(str(model)) if str(model) in PRETRAINED else load_model(model)


def _check_stats(stats: TrainingStats, source: str, need_forces: bool) -> None:
    missing = [name for name, ok in [
        ("elements", bool(stats.elements)),
        ("n_atoms", bool(stats.n_atoms)),
        ("spectrum", bool(stats.spectrum)),
        ("prior_frame_force_norm", not need_forces or bool(stats.prior_frame_force_norm)),
        ("prior_force_norm", not need_forces or bool(stats.prior_force_norm)),
    ] if not ok]
    if missing:
        raise ValueError(f"{source} lacks the training statistics needed for shift diagnostics: "
                         f"{missing} (checkpoints written by ttcalc.train store them)")


# --- pure helpers ----------------------------------------------------------------------------------
def _z_flag(value: float, mean: float, std: float, n_std: float, two_sided: bool) -> tuple[float | None, bool]:
    """``z = (value − mean) / std`` and whether it is beyond ``n_std``; with std = 0, z is None and
    any value other than the mean (above it, if one-sided) is flagged."""
    if std > 0:
        z = (value - mean) / std
        return float(z), bool(abs(z) > n_std if two_sided else z > n_std)
    tol = 1e-12 * max(1.0, abs(mean))
    return None, bool(abs(value - mean) > tol if two_sided else value > mean + tol)


def _quantile_percentile(value: float, quantiles: dict) -> tuple[float, str]:
    """Percentile of ``value`` interpolated in stored quantiles ``{"0.01": q, ...}``; beyond the
    stored range it is clipped to the outermost level and the second item says so ("" otherwise)."""
    levels = np.array(sorted(float(k) for k in quantiles))
    values = np.array([quantiles[k] for k in sorted(quantiles, key=float)], dtype=float)
    pct = float(np.interp(value, values, 100 * levels))
    bound = f"above the {100 * levels[-1]:g} % quantile" if value > values[-1] else (
        f"below the {100 * levels[0]:g} % quantile" if value < values[0] else "")
    return pct, bound


def _symbols(numbers: Sequence[int]) -> list[str]:
    return [chemical_symbols[int(z)] for z in sorted(numbers)]


# --- the three shifts ------------------------------------------------------------------------------
def element_shift(atoms: Atoms, stats: TrainingStats) -> ShiftItem:
    """Atomic features: elements absent from the training set (OOD if any)."""
    unseen = _symbols(set(int(z) for z in atoms.numbers) - set(stats.elements))
    detail = (f"elements {unseen} were never seen in training" if unseen
              else "every element was seen in training")
    return ShiftItem(ELEMENTS, unseen, {"elements": _symbols(stats.elements)}, None, None,
                     bool(unseen), detail)


def size_shift(atoms: Atoms, stats: TrainingStats, n_std: float = 1.0) -> ShiftItem:
    """Atomic features: atom count against the training sizes (z-score, two-sided)."""
    n, sizes = len(atoms), np.asarray(stats.n_atoms, dtype=float)
    mean, std = float(sizes.mean()), float(sizes.std())
    z, ood = _z_flag(n, mean, std, n_std, two_sided=True)
    if z is None:
        detail = (f"the training set has a single size ({int(mean)} atoms), so std = 0 and any other "
                  f"size is out of distribution; this structure has {n}")
    else:
        detail = f"{n} atoms vs training sizes {sorted(int(s) for s in sizes)}"
    return ShiftItem(SIZE, n, {"sizes": [int(s) for s in stats.n_atoms], "mean": mean, "std": std},
                     z, None, ood, detail)


def force_norm_shift(atoms: Atoms, stats: TrainingStats, prior: Prior | None, n_std: float = 1.0) -> ShiftItem:
    """Force norm: the prior's mean per-atom |F| vs the training per-frame mean |F| (z, two-sided),
    with its percentile among training per-atom |F|."""
    frame, atom = stats.prior_frame_force_norm, stats.prior_force_norm
    training = {"mean": frame.get("mean"), "std": frame.get("std"), "per_atom_quantiles": atom.get("quantiles"),
                "prior": stats.prior}
    if prior is None:
        return ShiftItem(FORCE_NORM, None, training, None, None, None, "not computed: needs a prior")
    try:
        _, forces = prior.energy_forces(atoms)
    except PriorError as exc:
        log.warning("force-norm shift not computed: %s", exc)
        return ShiftItem(FORCE_NORM, None, training, None, None, None, f"not computed: the prior failed ({exc})")
    norms = np.linalg.norm(forces, axis=1)
    mean_norm = float(norms.mean())
    z, ood = _z_flag(mean_norm, float(frame["mean"]), float(frame["std"]), n_std, two_sided=True)
    pct, bound = _quantile_percentile(mean_norm, atom["quantiles"])
    max_pct, max_bound = _quantile_percentile(float(norms.max()), atom["quantiles"])
    detail = (f"mean |F| of {prior.name} = {mean_norm:.3g} eV/Å vs training per-frame mean "
              f"{frame['mean']:.3g} ± {frame['std']:.3g} eV/Å (training prior: {stats.prior}); among training "
              f"per-atom |F| it is at percentile {pct:.0f}{f' ({bound})' if bound else ''}; largest atomic "
              f"|F| = {norms.max():.3g} eV/Å (percentile {max_pct:.0f}{f', {max_bound}' if max_bound else ''})")
    return ShiftItem(FORCE_NORM, mean_norm, training, z, pct, ood, detail)


def connectivity_shift(atoms: Atoms, stats: TrainingStats, n_std: float = 1.0) -> ShiftItem:
    """Connectivity: spectral distance at the training cutoff vs the training distances (z one-sided,
    percentile among the training distances); the detail adds how many atom pairs are edges and the
    radius that radius refinement (sec. 4) would choose. The metric is the training spectrum's
    default (:mod:`ttcalc.diagnostics.spectral`: the size-independent "distribution" one when stored, else eq. 5)."""
    from scipy.stats import percentileofscore

    from ttcalc.diagnostics.spectral import TrainingSpectrum, adjacency, refine_radius

    spectrum = TrainingSpectrum.from_dict(stats.spectrum)
    summary = spectrum.summary()
    d = spectrum.distance(atoms)
    z, ood = _z_flag(d, summary["mean"], summary["std"], n_std, two_sided=False)
    pct = float(percentileofscore(spectrum.training_distances(), d, kind="mean"))
    n = len(atoms)
    n_edges = int(adjacency(atoms, spectrum.radius).sum()) // 2
    n_pairs = n * (n - 1) // 2
    graph = "complete graph" if n_edges == n_pairs else f"{n_edges} of {n_pairs} atom pairs are edges"
    r_star, _ = refine_radius(atoms, spectrum)
    detail = (f"spectral distance ({spectrum.metric}) {d:.4g} to the training spectra at r = {spectrum.radius:g} Å "
              f"({graph}); "
              f"training distances {summary['mean']:.3g} ± {summary['std']:.3g} (q90 {summary['q90']:.3g}, "
              f"q99 {summary['q99']:.3g}); radius refinement would use r* = {r_star:.3g} Å")
    return ShiftItem(CONNECTIVITY, float(d), summary, z, pct, ood, detail)


def q_residual_shift(atoms: Atoms, model: MultiHeadPotential | None, stats: TrainingStats) -> ShiftItem:
    """Q-residual of the representation (Wong & Yang 2026, :mod:`ttcalc.diagnostics.uncertainty`): the
    structure's Q (its largest atom's) against the α-quantile of the training structures' Q."""
    from scipy.stats import percentileofscore

    from ttcalc.diagnostics.collapse import atomic_representations
    from ttcalc.diagnostics.uncertainty import QResidual

    if not stats.q_residual or model is None:
        return ShiftItem(Q_RESIDUAL, None, {}, None, None, None,
                         "not computed: the checkpoint stores no Q-residual PCA (trained before it was stored)")
    q = QResidual.from_dict(stats.q_residual)
    atom_q = q.atom_q(atoms_features := atomic_representations(model, [atoms]))
    value, worst = float(atom_q.max()), int(atom_q.argmax())
    limit = q.structure_limit
    pct = float(percentileofscore(q.train_structure_q, value, kind="mean"))
    detail = (f"Q = {value:.3g} (atom {worst}, {atoms[worst].symbol}), structure limit {limit:.3g} (the training "
              f"structures' {q.alpha:g} quantile); {int((atom_q > q.atom_limit).sum())} of {len(atoms)} atoms above "
              f"the Jackson-Mudholkar atom limit {q.atom_limit:.3g}; PCA keeps {q.k} of {atoms_features.shape[1]} "
              f"feature directions")
    return ShiftItem(Q_RESIDUAL, value, {"limit": limit, "k": q.k, "alpha": q.alpha}, None, pct, value > limit, detail)


def diagnose(atoms: Atoms, model: MultiHeadPotential | str | Path, prior: Prior | str | None = None,
             n_std: float = 1.0) -> ShiftReport:
    """The three distribution shifts of paper sec. 3.2 for ``atoms`` against ``model``'s training set,
    and the Q-residual of its features where the checkpoint stores the training PCA.

    Args:
        atoms: the structure.
        model: a :class:`~ttcalc.model.potential.MultiHeadPotential`, a checkpoint path or a pretrained name.
        prior: a :class:`~ttcalc.priors.Prior` or prior name for the force-norm shift (None: that
            item says "not computed: needs a prior").
        n_std: flag a shift beyond this many training standard deviations (paper: 1).

    Raises:
        ValueError: empty structure, or a checkpoint without the needed training statistics.
    """
    from ttcalc.priors import make_prior

    if len(atoms) == 0:
        raise ValueError("diagnose needs a non-empty structure")
    if not (n_std > 0 and math.isfinite(n_std)):
        raise ValueError(f"n_std must be positive and finite, got {n_std}")
    prior = make_prior(prior)
    stats, source = _training_stats(model)
    _check_stats(stats, source, need_forces=prior is not None)
    items = [element_shift(atoms, stats), size_shift(atoms, stats, n_std),
             force_norm_shift(atoms, stats, prior, n_std), connectivity_shift(atoms, stats, n_std),
             q_residual_shift(atoms, _model_for_q(model, stats), stats)]
    return ShiftReport(items=items, structure=atoms.get_chemical_formula(), n_std=float(n_std))


# --- presentation ----------------------------------------------------------------------------------
def _fmt_value(item: ShiftItem) -> str:
    if item.value is None:
        return "-"
    if isinstance(item.value, list):
        return ", ".join(item.value) if item.value else "none unseen"
    if isinstance(item.value, float):
        return f"{item.value:.4g}" + (" eV/Å" if item.name == FORCE_NORM else "")
    return str(item.value)


def _fmt_training(item: ShiftItem) -> str:
    t = item.training
    if "elements" in t:
        return ", ".join(t["elements"])
    if "sizes" in t:
        return ", ".join(str(s) for s in t["sizes"]) + (f" ({t['mean']:.3g} ± {t['std']:.3g})" if len(t["sizes"]) > 1 else "")
    if "limit" in t:
        return f"limit {t['limit']:.3g}"
    if t.get("mean") is None:
        return "-"
    return f"{t['mean']:.3g} ± {t['std']:.3g}"


def _fmt_score(item: ShiftItem) -> str:
    parts = []
    if item.z_score is not None:
        parts.append(f"z={item.z_score:+.2f}")
    if item.percentile is not None:
        parts.append(f"p={item.percentile:.0f}")
    return ", ".join(parts) or "-"


def format_table(report: ShiftReport) -> str:
    """Plain-text table (shift, value, training, z/percentile, OOD) followed by each item's detail."""
    header = ("shift", "value", "training", "z / percentile", "OOD")
    rows = [(i.name, _fmt_value(i), _fmt_training(i), _fmt_score(i),
             "n/a" if i.ood is None else ("YES" if i.ood else "no")) for i in report.items]
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [f"distribution shifts of {report.structure or 'the structure'} "
           f"(OOD: beyond {report.n_std:g} training std)", line(header), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    out.append(f"any OOD: {'YES' if report.any_ood else 'no'}")
    out += [f"- {i.name}: {i.detail}" for i in report.items]
    return "\n".join(out)
