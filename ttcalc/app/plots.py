"""Figures of adaptation (TTT loss curves), the demo and property fine-tuning (t-SNE of atomic
representations, ID/OOD errors); MD figures live in md_protocols.plots."""
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


def plot_tsne_panels(panels: dict, path: str | os.PathLike, max_classes: int = 12) -> Figure:
    """One t-SNE scatter per model, coloured by atom class (Peng et al. 2026, Fig. 2 style).

    ``panels``: ``{title: (Y (n, 2), labels (n,))}``; the ``max_classes`` most frequent classes get
    colours, the rest are grey."""
    names, counts = np.unique(np.concatenate([lab for _, lab in panels.values()]), return_counts=True)
    top = list(names[np.argsort(-counts)][:max_classes])
    fig = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
    for k, (title, (Y, labels)) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        other = ~np.isin(labels, top)
        ax.scatter(Y[other, 0], Y[other, 1], s=2, color="lightgray")
        for c, cls in enumerate(top):
            sel = labels == cls
            ax.scatter(Y[sel, 0], Y[sel, 1], s=2, color=f"C{c % 10}" if c < 10 else "black",
                       marker="o" if c < 10 else "x", label=cls)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.axes[-1].legend(frameon=False, fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(fig, path)


def plot_error_bars(table: dict, path: str | os.PathLike, ylabel: str = "RMSE") -> Figure:
    """Grouped bars ``table[group][series] = (mean, std)``, e.g. groups = regimes, series = ID/OOD."""
    groups = list(table)
    series = list(next(iter(table.values())))
    fig = Figure(figsize=(1.3 * len(groups) + 2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, s in enumerate(series):
        means = [table[g][s][0] for g in groups]
        stds = [table[g][s][1] for g in groups]
        ax.bar(np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width, means, width, yerr=stds,
               capsize=3, label=s)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False)
    return _save(fig, path)


def read_training_log(log: str | os.PathLike, epoch_offset: int = 0) -> tuple[np.ndarray, list[dict]]:
    """The rows of a training CSV log and their epochs plus ``epoch_offset`` (a warm restart's
    epoch 1 continues the run it started from at that run's last epoch + 1)."""
    import csv

    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([int(r["epoch"]) + epoch_offset for r in rows], dtype=int), rows


def _label_marks(ax, marks: list[tuple[float, str, str]]) -> None:
    """Write each mark's text beside its vertical line, on the side with room (a line in the right
    half of the axis gets its text on its left, so it stays inside the panel), one row per mark so
    that close lines do not overprint."""
    lo, hi = ax.get_xlim()
    for row, (x, text, colour) in enumerate(marks):
        right_half = x > (lo + hi) / 2
        ax.annotate(text, (x, 0.02), xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                    xytext=(-2 if right_half else 2, 10 * row), color=colour, fontsize=7, va="bottom",
                    ha="right" if right_half else "left")


def plot_learning_curves(logs: dict[str, str | os.PathLike], path: str | os.PathLike,
                         epoch_offsets: dict[str, int] | None = None) -> str:
    """Validation force MAE (meV/Å) per epoch, one line per (run, head), from training CSV logs;
    a second panel shows the validation loss, in total and per head (dashed), which covers the
    epochs logged before the MAE columns existed. A dotted line marks the first epoch of each run
    whose learning rate is below its first. ``epoch_offsets[label]`` shifts a run's epochs
    (:func:`read_training_log`)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_mae, ax_loss = fig.subplots(1, 2)
    colours: dict[str, str] = {}  # one colour per (run, head) on both panels

    def colour(key: str) -> str:
        return colours.setdefault(key, f"C{len(colours) % 10}")

    marks = []  # (epoch, text, colour) of each run's first lowered learning rate
    for label, log in logs.items():
        epochs, rows = read_training_log(log, (epoch_offsets or {}).get(label, 0))
        ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], lw=1.3, label=label, color=colour(label))
        for col in [c for c in (rows[0] if rows else {}) if c.startswith("val_") and c != "val_loss"
                    and not c.endswith("_force_mae_meV")]:
            head = f"{label}: {col.removeprefix('val_')} head"
            ax_loss.plot(epochs, [float(r[col]) if r.get(col) else np.nan for r in rows], "--", lw=0.9,
                         label=head, color=colour(head))
        for col in [c for c in (rows[0] if rows else {}) if c.endswith("_force_mae_meV")]:
            vals = np.array([float(r[col]) if r.get(col) else np.nan for r in rows])
            head = col.removeprefix("val_").removesuffix("_force_mae_meV")
            ax_mae.plot(epochs, vals, "o-", ms=2, lw=1.2, label=f"{label}: {head} head",
                        color=colour(f"{label}: {head} head"))
        decayed = [int(e) for e, r in zip(epochs, rows) if float(r["lr"]) < float(rows[0]["lr"])]
        if decayed:  # where the schedule first lowers the rate (a plateau step or an anneal)
            for ax in (ax_mae, ax_loss):
                ax.axvline(decayed[0], ls=":", lw=1, color=colour(label))
            marks.append((decayed[0], f"lr < {float(rows[0]['lr']):.0e}", colour(label)))
    _label_marks(ax_loss, marks)
    ax_mae.set_xlabel("epoch")
    ax_mae.set_ylabel("validation force MAE (meV/Å)")
    if ax_mae.lines:
        ax_mae.set_yscale("log")
    else:
        ax_mae.text(0.5, 0.5, "no force-MAE columns in these logs", ha="center", va="center",
                    transform=ax_mae.transAxes)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("validation loss")  # of the EMA weights where the stage keeps them
    ax_loss.set_yscale("log")
    for ax in (ax_mae, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=8)
    _save(fig, path)
    return str(path)
