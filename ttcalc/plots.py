"""Figures of adaptation (TTT loss curves) and the demo; MD figures live in md_protocols.plots."""
from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from md_protocols.plots import _save


def draw_adaptation(ax, report) -> None:
    """TTT prior loss per step (training mini-batches) and on held-out frames."""
    if report.loss_curve:
        ax.plot(np.arange(1, len(report.loss_curve) + 1), report.loss_curve, lw=1, alpha=0.6,
                label="mini-batch prior loss")
    if report.val_curve:
        steps, vals = zip(*report.val_curve)
        ax.plot(steps, vals, "o-", lw=1.5, label="held-out prior loss")
    if report.id_prior_loss is not None:
        ax.axhline(report.id_prior_loss, color="gray", ls="--", label="in-distribution prior loss")
    ax.set_yscale("log")
    ax.set_xlabel("TTT step")
    ax.set_ylabel("prior loss L_P (eV²/atom², eV²/Å²)")
    ax.set_title(f"TTT: {report.stop_reason}", fontsize=9)
    ax.legend(frameon=False, fontsize=8)


def plot_demo(r: np.ndarray, h_model: np.ndarray, h_ref: np.ndarray, report, path: str | os.PathLike,
              title: str = "") -> str:
    """Two panels: h(r) of the adapted MLIP's MD against the prior's, and the TTT loss curve."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(r, h_ref, color="black", lw=2, label="GFN2-xTB MD (reference)")
    ax1.plot(r, h_model, lw=1.3, label="TTT-adapted MLIP MD")
    upper = r[np.nonzero(np.maximum(h_model, h_ref) > 1e-4)[0].max()] + 0.5 if np.any(h_ref > 0) else r[-1]
    ax1.set_xlim(0, min(r[-1], upper))
    ax1.set_xlabel("interatomic distance r (Å)")
    ax1.set_ylabel("h(r) (1/Å)")
    ax1.legend(frameon=False)
    draw_adaptation(ax2, report)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return str(path)
