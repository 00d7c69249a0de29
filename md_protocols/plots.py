"""Figures for MD benchmarks, drawn on ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot
state, no display). Every function writes a PNG at ``DPI`` and returns the Figure, whose axes carry
the labels (with units) and legends.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_hr", "plot_bond_deviation", "plot_stability_bars", "plot_pes", "plot_energy_drift", "DPI"]

DPI = 150


def _save(fig: Figure, path: str | os.PathLike) -> Figure:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return fig


def plot_hr(r: np.ndarray, curves: Mapping[str, np.ndarray], reference: np.ndarray | None,
            path: str | os.PathLike, title: str | None = None) -> Figure:
    """h(r) of each model against the reference (Fu et al. 2023, Fig. 3 style)."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    if reference is not None:
        ax.plot(r, reference, color="black", lw=2.2, label="reference")
    for label, h in curves.items():
        ax.plot(r, h, lw=1.3, label=label)
    ax.set_xlabel("interatomic distance r (Å)")
    ax.set_ylabel("h(r) (1/Å)")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return _save(fig, path)


def plot_bond_deviation(times_ps: np.ndarray | Mapping[str, np.ndarray], series: Mapping[str, np.ndarray],
                        threshold: float, path: str | os.PathLike) -> Figure:
    """Max bond-length deviation vs. time, with the collapse threshold (Fu et al. 2023).

    ``times_ps`` is one array shared by all series or a dict with one array per label.
    """
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for label, values in series.items():
        t = times_ps[label] if isinstance(times_ps, Mapping) else times_ps
        ax.plot(t, values, lw=1.2, label=label)
    ax.axhline(threshold, color="red", ls="--", lw=1.2, label=f"threshold {threshold:g} Å")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("max |bond length − reference mean| (Å)")
    ax.legend(frameon=False)
    return _save(fig, path)


def plot_stability_bars(summary: Mapping[str, Sequence[float] | Mapping[str, float]], path: str | os.PathLike,
                        max_time_ps: float | None = None) -> Figure:
    """Stability (ps) per model as bars with ± std; ``summary`` values are ``(mean, std)`` or
    :func:`~md_protocols.stability.stability_summary` dicts."""
    labels = list(summary)
    stats = [(v["mean"], v["std"]) if isinstance(v, Mapping) else tuple(v) for v in summary.values()]
    means = np.array([m for m, _ in stats])
    stds = np.array([s for _, s in stats])
    fig = Figure(figsize=(max(4.0, 1.2 * len(labels) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.85, label="mean ± std over seeds")
    if max_time_ps is not None:
        ax.axhline(max_time_ps, color="gray", ls="--", label=f"simulated length {max_time_ps:g} ps")
    ax.set_xticks(x, labels, rotation=20 if len(labels) > 4 else 0)
    ax.set_ylabel("stability: time before collapse (ps)")
    ax.set_xlabel("model")
    ax.set_ylim(bottom=0)
    fig.legend(frameon=False, loc="outside upper center", ncols=2)  # above the axes: never hides a bar
    return _save(fig, path)


def plot_pes(grid, path: str | os.PathLike, levels: int = 20) -> Figure:
    """Contours of a :class:`~md_protocols.pes.PESGrid` (model, and reference side by side if present).

    Both panels share the colour levels so that their surfaces can be compared directly.
    """
    panels = [(grid.label, grid.energies)]
    if grid.reference_energies is not None:
        panels.append((grid.reference_label, grid.reference_energies))
    stacked = np.concatenate([e.ravel() for _, e in panels])
    bounds = MaxNLocator(nbins=levels).tick_values(np.nanmin(stacked), np.nanmax(stacked))
    fig = Figure(figsize=(4.6 * len(panels) + 0.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    d = grid.displacements
    for ax, (label, energies) in zip(axes, panels):
        filled = ax.contourf(d, d, energies.T, levels=bounds, cmap="viridis")
        ax.contour(d, d, energies.T, levels=bounds, colors="white", linewidths=0.4)
        ax.plot([0], [0], marker="x", color="red", ls="none", label="relaxed geometry")
        ax.set_title(label)
        ax.set_xlabel(f"mode 1 displacement (Å), k = {grid.curvatures[0]:.3g} eV/Å²")
        ax.set_ylabel(f"mode 2 displacement (Å), k = {grid.curvatures[1]:.3g} eV/Å²")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    fig.colorbar(filled, ax=list(axes), label="E − E(relaxed geometry) (eV)")
    return _save(fig, path)


def plot_energy_drift(series: Mapping[str, object], path: str | os.PathLike) -> Figure:
    """Total-energy change (E(t) − E(0)) / N in meV/atom vs. time for NVE runs.

    ``series`` maps a label to an ``MDResult`` or a tuple ``(times_ps, total_energies_eV, n_atoms)``.
    """
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for label, item in series.items():
        if hasattr(item, "energies"):
            t, e, n = item.times_ps, item.energies["total"], item.n_atoms
        else:
            t, e, n = item
        e = np.asarray(e, dtype=np.float64)
        ax.plot(t, 1000.0 * (e - e[0]) / n, lw=1.2, label=label)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("total energy change (meV/atom)")
    ax.legend(frameon=False)
    return _save(fig, path)
