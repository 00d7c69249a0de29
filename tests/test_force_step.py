"""The compiled training step (make_fx trace of E and F = −∂E/∂r, then inductor) gives the eager
parameter gradients of an energy+force loss: some torch versions return silently detached
gradients through compiled double backward, so parameter gradients are compared, not only E, F."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ttcalc.model.batch import collate
from ttcalc.train.losses import LossWeights, energy_force_loss
from ttcalc.model.potential import ModelConfig, MultiHeadPotential
from ttcalc.model.representation import RepresentationConfig
from ttcalc.train.force_step import ForceStep


def _loss_and_grads(model, step, frames):
    batch = collate(frames, model.cutoff, dtype=model.dtype)
    e = torch.tensor([a.get_potential_energy() for a in frames], dtype=model.dtype)
    f = torch.tensor(np.concatenate([a.get_forces() for a in frames]), dtype=model.dtype)
    out = step(batch)
    loss = sum(energy_force_loss(out[h], e, f, batch.n_atoms, LossWeights(1.0, 10.0))[0] for h in out)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_compiled_step_parameter_gradients_equal_eager_in_float64(benzene_frames):
    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1, num_rbf=8)),
                               dtype="float64")
    model.set_trainable("representation", "main", "prior")
    frames = benzene_frames[:4]
    ref_out, ref = _loss_and_grads(model, ForceStep(model, ("main", "prior"), compile=False), frames)
    step = ForceStep(model, ("main", "prior"), compile=True)
    out, got = _loss_and_grads(model, step, frames)
    assert step.compile_seconds > 0  # the compiled path ran, not the eager fallback
    assert set(got) == set(ref) and len(ref) == len(list(model.parameters()))
    for n in ref:
        assert torch.count_nonzero(ref[n]) > 0, n  # every parameter gets a gradient at all
        rel = float((got[n] - ref[n]).norm() / ref[n].norm())
        assert rel < 1e-6, f"{n}: relative gradient error {rel:.2e}"
    for h in ("main", "prior"):
        torch.testing.assert_close(out[h]["forces"], ref_out[h]["forces"], rtol=1e-10, atol=1e-12)
    # weights are graph inputs, not constants: a changed frozen weight reaches the compiled graph
    with torch.no_grad():
        model.heads["main"].mlp[0].weight.mul_(1.5)
    ref_out, _ = _loss_and_grads(model, ForceStep(model, ("main", "prior"), compile=False), frames)
    out, _ = _loss_and_grads(model, step, frames)
    torch.testing.assert_close(out["main"]["forces"], ref_out["main"]["forces"], rtol=1e-10, atol=1e-12)


def test_flat_batches_take_the_eager_model(benzene_frames):
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1, num_rbf=8)))
    batch = collate(benzene_frames[:2], model.cutoff, dense=False)
    step = ForceStep(model, ("main",), compile=True)
    out = step(batch)
    assert out["main"]["forces"].shape == (24, 3) and step.compile_seconds == 0.0
