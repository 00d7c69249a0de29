"""``calc.finetune``: fine-tuning on labelled frames of a new system (rMD17 naphthalene, DFT labels),
with the safety of ``adapt``: roll-back, exact reset, reset() after weight changes, per-system
cache with save/load, and combination with TTT in either order."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from ttcalc import TTTCalculator
from ttcalc.data import load_rmd17
from ttcalc.model.potential import snapshot


@pytest.fixture(scope="module")
def frames():
    return load_rmd17("naphthalene", "train_01", n=48, seed=0)


def _calc(tiny_model_path, prior=None):
    return TTTCalculator(tiny_model_path, prior=prior, compile=False, disagreement_every=0)


def _force_mae(calc, frames) -> float:
    errs = []
    for a in frames:
        b = a.copy()
        b.calc = calc
        errs.append(np.abs(b.get_forces() - a.get_forces()).mean())
    return float(np.mean(errs))


def test_finetune_lowers_the_error_on_frames_it_never_saw_and_resets_exactly(tiny_model_path, frames):
    calc = _calc(tiny_model_path)
    train, held_out = frames[:32], frames[32:]
    before = _force_mae(calc, held_out)
    base = snapshot(calc.model, calc.adaptation.names)
    report = calc.finetune(train, max_steps=60, eval_every=5)
    assert report.kind == "finetune" and report.ran == ["finetune"] and report.steps > 0
    assert report.prior_loss_end < report.prior_loss_start  # the main loss on its validation frames
    assert report.force_disagreement_after < report.force_disagreement_before
    assert any(n.startswith("heads.main.") for n in report.parameters)
    assert any(n.startswith("representation.") for n in report.parameters)
    assert not calc.results  # reset() after the weights changed
    after = _force_mae(calc, held_out)
    assert after < 0.8 * before, (before, after)
    calc.reset_adaptation()
    for k, v in snapshot(calc.model, calc.adaptation.names).items():
        assert np.array_equal(v.numpy(), base[k].numpy()), k
    assert _force_mae(calc, held_out) == pytest.approx(before, rel=1e-12)


def test_main_only_finetune_leaves_the_representation(tiny_model_path, frames):
    calc = _calc(tiny_model_path)
    base = snapshot(calc.model)
    calc.finetune(frames[:16], parameters="main", max_steps=10)
    changed = {n for n, v in snapshot(calc.model).items() if not np.array_equal(v.numpy(), base[n].numpy())}
    assert changed and all(n.startswith("heads.main.") for n in changed)


def test_ttt_and_finetune_combine_in_either_order(tiny_model_path, prior, frames):
    calc = _calc(tiny_model_path, prior)
    ttt = calc.adapt(frames[0], frames="rattle", n_frames=8, max_steps=5, stop_at_id_loss=False)
    adapted = snapshot(calc.model, calc.adaptation.names)
    ft = calc.finetune(frames[:16], max_steps=10)
    assert ttt.ran == ["ttt"] and ft.ran == ["ttt", "finetune"]
    assert any(not np.array_equal(v.numpy(), adapted[k].numpy())
               for k, v in snapshot(calc.model, calc.adaptation.names).items())
    # calculate() with ttt="auto" would now reuse these weights, not train again
    again = calc.adapt(frames[0])
    assert again.cached
    other = _calc(tiny_model_path, prior)
    other.finetune(frames[:16], max_steps=10)
    back = other.adapt(frames[0], frames="rattle", n_frames=8, max_steps=5, stop_at_id_loss=False)
    assert back.ran == ["finetune", "ttt"]


def test_divergence_rolls_back_to_the_weights_the_call_started_from(tiny_model_path, prior, frames):
    calc = _calc(tiny_model_path, prior)
    calc.adapt(frames[0], frames="rattle", n_frames=8, max_steps=5, stop_at_id_loss=False)
    adapted = snapshot(calc.model, calc.adaptation.names)
    r = calc.finetune(frames[:16], lr=1e3, grad_clip=1e9, max_steps=10, eval_every=1)
    assert "diverged" in r.stop_reason or "non-finite" in r.stop_reason
    for k, v in snapshot(calc.model, calc.adaptation.names).items():
        assert np.array_equal(v.numpy(), adapted[k].numpy()), k


def test_the_cache_saves_and_reloads_fine_tuned_weights(tiny_model_path, frames, tmp_path):
    calc = _calc(tiny_model_path)
    calc.finetune(frames[:16], max_steps=10)
    tuned = snapshot(calc.model, calc.adaptation.names)
    calc.adaptation.save(tmp_path / "cache.pt")
    fresh = _calc(tiny_model_path)
    fresh.adaptation.load(tmp_path / "cache.pt")
    key = next(iter(fresh.adaptation.cache))
    fresh.adaptation.apply(key)
    assert fresh.adaptation.ran[key] == ["finetune"]
    for k, v in snapshot(fresh.model, fresh.adaptation.names).items():
        assert np.array_equal(v.numpy(), tuned[k].numpy()), k


def test_bad_fine_tuning_input_is_refused(tiny_model_path, frames):
    calc = _calc(tiny_model_path)
    with pytest.raises(ValueError, match="carry no reference energy and forces"):
        calc.finetune([Atoms(a.numbers, a.positions) for a in frames[:4]])
    with pytest.raises(ValueError, match="at least two frames"):
        calc.finetune(frames[:1])
    with pytest.raises(ValueError, match="not one structure"):
        calc.finetune(frames[0])
    with pytest.raises(ValueError, match="same system"):
        calc.finetune(frames[:3] + load_rmd17("benzene", "test_01", n=2))
    with pytest.raises(TypeError, match="unknown fine-tuning settings"):
        calc.finetune(frames[:4], learning_rate=1e-3)
    with pytest.raises(ValueError, match="parameters must be one of .main.,"):
        calc.finetune(frames[:4], parameters="everything")


def test_cli_finetune_writes_a_checkpoint_that_loads(tiny_model_path, frames, tmp_path):
    from ase.io import write

    from ttcalc.app.cli import main
    from ttcalc.model.potential import MultiHeadPotential

    write(tmp_path / "frames.extxyz", frames[:12])
    out = tmp_path / "adapted.pt"
    assert main(["finetune", str(tiny_model_path), str(tmp_path / "frames.extxyz"), "--out", str(out),
                 "--max-steps", "5"]) == 0
    model = MultiHeadPotential.load(out)
    base = MultiHeadPotential.load(tiny_model_path)
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(model.state_dict().values(), base.state_dict().values()))
