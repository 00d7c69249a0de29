"""Property fine-tuning regimes (Scratch / FT / LP / MFT) on real QM9 molecules."""
import numpy as np
import pytest
import torch

from ttcalc.data import label_with_prior
from ttcalc.data.qm9 import displaced_molecules, load_qm9
from ttcalc.model.heads import PropertyHeadConfig
from ttcalc.model.potential import ModelConfig, MultiHeadPotential
from ttcalc.model.representation import RepresentationConfig
from ttcalc.train import FinetuneConfig, PrefactorSchedule, StageConfig, finetune_property, property_task
from ttcalc.train.finetune import build_model, finetune_tasks, install_property_statistics
from ttcalc.train.regimes import install_head_statistics


@pytest.fixture(scope="module")
def qm9_data(prior):
    qm9 = load_qm9()
    idx = np.arange(100, 220)  # molecules of the QM9 fixture (600 in all)
    frames = qm9.molecules(idx)
    gap = qm9.property("gap")[idx]
    ff = label_with_prior(displaced_molecules(qm9, np.arange(300, 340), sigma=0.05), prior)
    return frames, gap, ff


@pytest.fixture(scope="module")
def backbone(qm9_data):
    torch.manual_seed(0)
    cfg = ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=1, num_rbf=8, cutoff=4.0),
                      head_hidden=8, heads=("gfn2", "other"))
    model = MultiHeadPotential(cfg)
    install_head_statistics(model, "gfn2", qm9_data[2])
    return model


def stage(epochs=2):
    return StageConfig(lr=3e-3, batch_size=16, max_epochs=epochs, patience=50, lr_patience=50)


def params(model, prefix):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def changed(before, model):
    now = dict(model.named_parameters())
    return {n for n, t in before.items() if not torch.equal(t, now[n])}


HEAD = PropertyHeadConfig("gap", hidden=(32, 32))


def run(backbone, qm9_data, regime, epochs=2, **kw):
    frames, gap, ff = qm9_data
    cfg = FinetuneConfig(regime=regime, stage=stage(epochs), ff_head="gfn2", **kw)
    return finetune_property(backbone, HEAD, frames[:100], gap[:100], frames[100:], gap[100:], cfg,
                             ff_frames=ff, progress=False)


def test_lp_leaves_backbone_bit_identical(backbone, qm9_data):
    model, result = run(backbone, qm9_data, "lp")
    rep = params(backbone, "representation.")
    assert not changed(rep, model)
    assert not changed(params(backbone, "heads."), model)
    assert result.epochs == 2
    assert not any(p.requires_grad for p in model.parameters())  # frozen for inference afterwards


@pytest.mark.parametrize("regime,moves", [
    ("mft", {"representation.", "heads.gfn2.", "property_heads.gap."}),
    ("ft", {"representation.", "property_heads.gap."}),
    ("scratch", {"representation.", "property_heads.gap."}),
    ("lp", {"property_heads.gap."}),
])
def test_one_step_updates_exactly_the_regime_groups(backbone, qm9_data, regime, moves):
    frames, gap, ff = qm9_data
    model = build_model(backbone, regime, HEAD, seed=0)
    cfg = FinetuneConfig(regime=regime, stage=stage(), ff_head="gfn2")
    tasks, groups = finetune_tasks(model, HEAD, frames[:100], gap[:100], cfg, ff)
    assert [t.name for t in tasks] == (["gap", "force_field"] if regime == "mft" else ["gap"])
    before = params(model, "")
    model.set_trainable(*groups)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = sum(t.weight * t.loss(model, list(range(16))) for t in tasks)
    loss.backward()
    opt.step()
    moved = {prefix for n in changed(before, model)
             for prefix in ("representation.", "heads.gfn2.", "heads.other.", "property_heads.gap.")
             if n.startswith(prefix)}
    assert moved == moves


def test_force_field_head_gets_gradient_only_from_the_auxiliary_loss(backbone, qm9_data):
    frames, gap, ff = qm9_data
    model = build_model(backbone, "mft", HEAD, seed=0)
    tasks, groups = finetune_tasks(model, HEAD, frames[:100], gap[:100],
                                   FinetuneConfig(regime="mft", ff_head="gfn2"), ff)
    model.set_trainable(*groups)
    tasks[0].loss(model, list(range(16))).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("heads.gfn2."))
    tasks[1].loss(model, list(range(16))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n.startswith("heads.gfn2.mlp"))


def test_scratch_starts_from_a_random_backbone(backbone):
    model = build_model(backbone, "scratch", HEAD, seed=1)
    assert changed(params(backbone, "representation."), model)


def test_ft_property_loss_drops(backbone, qm9_data):
    # selection on the training molecules themselves: this tests the optimizer, not generalisation
    frames, gap, ff = qm9_data
    train, y = frames[:40], gap[:40]
    start = build_model(backbone, "ft", HEAD, seed=0)
    install_property_statistics(start, "gap", train, y)
    task = property_task("gap", train, y, "gap", scale=np.std(y))
    initial = task.mean_loss(start)
    cfg = FinetuneConfig(regime="ft", stage=stage(40))
    model, result = finetune_property(backbone, HEAD, train, y, train, y, cfg, progress=False)
    assert task.mean_loss(model) == pytest.approx(result.best_val_loss, rel=1e-5)
    assert result.best_val_loss < 0.5 * initial


def test_mft_objective_drops(backbone, qm9_data):
    """L_task + λ_reg L_reg falls; the force-field term is what the backbone is anchored to."""
    frames, gap, ff = qm9_data
    train, y = frames[:40], gap[:40]
    cfg = FinetuneConfig(regime="mft", stage=stage(30), ff_head="gfn2", lambda_reg=1.0)
    start = build_model(backbone, "mft", HEAD, seed=0)
    tasks, _ = finetune_tasks(start, HEAD, train, y, cfg, ff)

    def objective(model):
        return sum(t.weight * t.mean_loss(model) for t in tasks)

    initial = objective(start)
    model, result = finetune_property(backbone, HEAD, train, y, train, y, cfg, ff_frames=ff, progress=False)
    assert objective(model) < 0.7 * initial
    assert result.history[-1]["train_loss"] < 0.7 * result.history[0]["train_loss"]


def test_prefactor_schedule_follows_the_learning_rate():
    s = PrefactorSchedule()
    assert (s.weights(1.0).energy, s.weights(1.0).forces) == pytest.approx((0.2, 100.0))
    assert (s.weights(0.0).energy, s.weights(0.0).forces) == pytest.approx((20.0, 60.0))
    assert s.weights(0.5).forces == pytest.approx(80.0)


def test_mft_with_prefactor_schedule_runs_and_selects_on_validation(backbone, qm9_data):
    model, result = run(backbone, qm9_data, "mft", epochs=2, prefactor_schedule=True)
    losses = [h["val_loss"] for h in result.history]
    assert result.best_val_loss == pytest.approx(min([result.best_val_loss] + losses))


def test_bad_regime_and_missing_force_field_frames(backbone, qm9_data):
    frames, gap, _ = qm9_data
    with pytest.raises(ValueError, match="unknown fine-tuning regime"):
        FinetuneConfig(regime="full")
    with pytest.raises(ValueError, match="force-field frames"):
        finetune_property(backbone, HEAD, frames[:10], gap[:10], frames[10:20], gap[10:20],
                          FinetuneConfig(regime="mft", ff_head="gfn2"))
    with pytest.raises(ValueError, match="auxiliary head"):
        finetune_property(backbone, HEAD, frames[:10], gap[:10], frames[10:20], gap[10:20],
                          FinetuneConfig(regime="mft", ff_head="main"), ff_frames=qm9_data[2])
