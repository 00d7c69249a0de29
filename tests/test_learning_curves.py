"""Training logs carry each head's validation force MAE, and the learning-curve figure reads logs
from before and after that column existed."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from ttcalc.model.potential import ModelConfig, MultiHeadPotential
from ttcalc.app.plots import plot_learning_curves, read_training_log
from ttcalc.model.representation import RepresentationConfig
from ttcalc.train import StageConfig, Targets, train_stage
from ttcalc.train.trainer import evaluate_loss
from ttcalc.train.losses import LossWeights


def test_validation_force_mae_is_the_mean_absolute_force_error(benzene_frames):
    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1, num_rbf=8)))
    frames = benzene_frames[:10]
    out = evaluate_loss(model, frames, {"main": Targets.from_frames(frames)}, {"main": 1.0}, LossWeights(), batch_size=4)
    from ttcalc.model.batch import collate

    pred = model(collate(frames, model.cutoff))["main"]["forces"].detach().numpy()
    ref = np.concatenate([a.get_forces() for a in frames])
    assert out["main_force_mae_meV"] == pytest.approx(1000 * np.abs(pred - ref).mean(), rel=1e-5)


def test_log_gains_mae_columns_and_the_plot_reads_old_and_new_rows(benzene_frames, tmp_path):
    log = tmp_path / "run.csv"
    log.write_text("stage,epoch,lr,train_loss,val_loss,seconds,val_main\nold,1,0.001,1.0,0.9,1.0,0.9\n")
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1, num_rbf=8)))
    train, val = benzene_frames[:16], benzene_frames[16:24]
    train_stage(model, train, {"main": Targets.from_frames(train)}, val, {"main": Targets.from_frames(val)},
                ["main"], StageConfig(max_epochs=2, batch_size=8, compile=False), name="new", log_path=log,
                progress=False)
    rows = list(csv.reader(log.open()))
    assert rows[0][-1] == "val_main" and len(rows[-1]) == 8  # a new column after an old header: appended
    png = plot_learning_curves({"run": log}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and png.endswith("curves.png")


def test_plot_marks_a_run_whose_learning_rate_decays(tmp_path):
    log = tmp_path / "annealed.csv"
    rows = [f"joint,{e},{lr},1.0,{1 / e},1.0,{1 / e},{10 / e}" for e, lr in
            [(1, 5e-4), (2, 5e-4), (3, 2e-4), (4, 1e-6)]]
    log.write_text("stage,epoch,lr,train_loss,val_loss,seconds,val_main,val_main_force_mae_meV\n" + "\n".join(rows))
    plot_learning_curves({"run": log}, tmp_path / "annealed.png")
    assert (tmp_path / "annealed.png").stat().st_size > 10_000


def test_a_warm_restart_is_plotted_after_the_run_it_continues(tmp_path):
    log = tmp_path / "restart.csv"
    log.write_text("stage,epoch,lr,train_loss,val_loss,seconds,val_main_force_mae_meV\n"
                   "joint,1,2e-4,1.0,0.5,1.0,9.7\njoint,2,1e-4,1.0,0.4,2.0,9.6\n")
    epochs, rows = read_training_log(log, epoch_offset=479)
    assert epochs.tolist() == [480, 481] and rows[1]["val_main_force_mae_meV"] == "9.6"
    assert read_training_log(log)[0].tolist() == [1, 2]
    plot_learning_curves({"restart": log}, tmp_path / "r.png", epoch_offsets={"restart": 479})
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_learning_rate_labels_stay_inside_the_panel_and_do_not_overprint():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ttcalc.app.plots import _label_marks

    fig = Figure(figsize=(5, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 570], [1, 2])
    _label_marks(ax, [(410, "lr < 5e-04", "C0"), (480, "lr < 2e-04", "C1"), (20, "lr < 1e-03", "C2")])
    renderer = fig.canvas.get_renderer()
    panel = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert all(panel.x0 <= b.x0 and b.x1 <= panel.x1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
