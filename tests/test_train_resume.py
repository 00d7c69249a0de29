"""Resumable training: a stage stopped at any batch and resumed ends with the weights of an
uninterrupted run, bit for bit (same batches, Adam moments, schedule, EMA and RNG on one thread)."""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ttcalc.model.potential import ModelConfig, MultiHeadPotential
from ttcalc.model.representation import RepresentationConfig
from ttcalc.model.batch import collate
from ttcalc.train import StageConfig, Targets, force_field_task, train_multitask, train_stage
from ttcalc.train.trainer import StopSignal, TrainingInterrupted, read_stage_state

CFG = StageConfig(max_epochs=4, batch_size=8, lr=3e-3, patience=10, lr_patience=1, ema_decay=0.9,
                  epoch_frames=24, compile=False)


def _model() -> MultiHeadPotential:
    torch.manual_seed(0)
    return MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=1, num_rbf=8)))


def _run(frames, state_path=None, resume=False, stop=None, model=None, cfg=CFG):
    model = model or _model()
    train, val = frames[:40], frames[40:56]
    result = train_stage(model, train, {"main": Targets.from_frames(train)}, val,
                         {"main": Targets.from_frames(val)}, ["representation", "main"], cfg,
                         name="s", progress=False, state_path=state_path, resume=resume, stop=stop)
    return model, result


@pytest.mark.parametrize("stop_at", [1, 5, 3])  # first batch, mid-epoch, before a validation (3 per epoch)
def test_stopped_and_resumed_stage_equals_uninterrupted_run(benzene_frames, tmp_path, stop_at):
    torch.set_num_threads(1)
    reference, ref_result = _run(benzene_frames)
    state = tmp_path / "s.state.pt"
    with pytest.raises(TrainingInterrupted, match="continue with --resume"):
        _run(benzene_frames, state, stop=StopSignal(after_batches=stop_at))
    assert read_stage_state(state)["position"]["next_batch"] in (stop_at % 3, 3)
    resumed, result = _run(benzene_frames, state, resume=True)  # a fresh model: all comes from the file
    for (n, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert result.best_val_loss == ref_result.best_val_loss and result.epochs == ref_result.epochs
    assert [h["val_loss"] for h in result.history] == [h["val_loss"] for h in ref_result.history]
    assert read_stage_state(state)["done"]
    again, _ = _run(benzene_frames, state, resume=True)  # a finished stage is not trained again
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), again.parameters()))


ANNEAL = dataclasses.replace(CFG, max_epochs=50, anneal_from=2, anneal_epochs=3, min_lr=1e-5)


def test_cosine_anneal_follows_its_formula_stops_at_its_end_and_resumes_exactly(benzene_frames, tmp_path):
    torch.set_num_threads(1)
    reference, result = _run(benzene_frames, cfg=ANNEAL)
    lrs = [h["lr"] for h in result.history]
    assert result.epochs == 4 and "end of the cosine anneal" in result.stop_reason
    lr0 = lrs[0]  # the plateau's rate after epoch 1 is the rate the anneal starts from
    expected = [1e-5 + (lr0 - 1e-5) * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in (1, 2, 3)]
    assert lrs[1:] == pytest.approx(expected, rel=1e-12) and lrs[-1] == pytest.approx(1e-5)
    state = tmp_path / "a.state.pt"
    with pytest.raises(TrainingInterrupted):  # inside the anneal: batch 2 of epoch 3
        _run(benzene_frames, state, stop=StopSignal(after_batches=8), cfg=ANNEAL)
    resumed, again = _run(benzene_frames, state, resume=True, cfg=ANNEAL)
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters()))
    assert [h["lr"] for h in again.history] == lrs


@pytest.mark.parametrize("bad", [dict(anneal_epochs=-1), dict(anneal_epochs=5, anneal_from=0)])
def test_bad_anneal_settings_are_refused(bad):
    with pytest.raises(ValueError, match="an anneal needs"):
        StageConfig(**bad)


def _run_multitask(frames, state_path=None, resume=False, stop=None):
    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=1, num_rbf=8),
                                           heads=("main", "prior")))
    # two heads on different frames, as multi-level pretraining has them; the second one cycles
    tasks = [force_field_task("main", frames[:24], "main", batch_size=8),
             force_field_task("prior", frames[24:34], "prior", batch_size=4)]
    val = [force_field_task("main", frames[40:48], "main"), force_field_task("prior", frames[48:52], "prior")]
    cfg = StageConfig(max_epochs=3, lr=3e-3, patience=10, lr_patience=1)
    result = train_multitask(model, tasks, val, ["representation", "main", "prior"], cfg, name="m",
                             progress=False, state_path=state_path, resume=resume, stop=stop)
    return model, result


@pytest.mark.parametrize("stop_at", [2, 3])  # mid-epoch, and after an epoch's last batch (3 per epoch)
def test_stopped_and_resumed_multitask_equals_uninterrupted_run(benzene_frames, tmp_path, stop_at):
    torch.set_num_threads(1)
    reference, ref_result = _run_multitask(benzene_frames)
    state = tmp_path / "m.state.pt"
    with pytest.raises(TrainingInterrupted):
        _run_multitask(benzene_frames, state, stop=StopSignal(after_batches=stop_at))
    assert read_stage_state(state)["streams"][0]["next"] > 0
    resumed, result = _run_multitask(benzene_frames, state, resume=True)
    for (n, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert [h["val_loss"] for h in result.history] == [h["val_loss"] for h in ref_result.history]
    assert result.best_val_loss < read_stage_state(state)["monitor"]["initial_val"]  # it learned something


def test_multitask_resume_with_other_tasks_is_refused(benzene_frames, tmp_path):
    state = tmp_path / "m.state.pt"
    with pytest.raises(TrainingInterrupted):
        _run_multitask(benzene_frames, state, stop=StopSignal(after_batches=1))
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=1, num_rbf=8),
                                           heads=("main", "prior")))
    only_main = [force_field_task("main", benzene_frames[:24], "main", batch_size=8)]
    with pytest.raises(ValueError, match="holds 1 auxiliary task streams, this run has 0"):
        train_multitask(model, only_main, only_main, ["representation", "main"], StageConfig(max_epochs=3),
                        name="m", progress=False, state_path=state, resume=True)


def test_multitask_log_has_each_force_field_task_force_mae(benzene_frames, tmp_path):
    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=1, num_rbf=8)))
    val_frames = benzene_frames[40:48]
    task = force_field_task("main", benzene_frames[:16], "main", batch_size=8)
    val = force_field_task("main", val_frames, "main")
    train_multitask(model, [task], [val], ["representation", "main"], StageConfig(max_epochs=2), name="m",
                    progress=False, log_path=tmp_path / "log.csv")
    with open(tmp_path / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and float(rows[-1]["val_main_force_mae_meV"]) > 0
    pred = [model(collate([a], model.cutoff, model.dtype, model.device))["main"]["forces"].detach().numpy()
            for a in val_frames]
    expected = 1000 * np.mean(np.abs(np.concatenate(pred) - np.concatenate([a.get_forces() for a in val_frames])))
    assert val.metrics(model)["force_mae_meV"] == pytest.approx(expected, rel=1e-5)
    # the validation loss comes from the same pass as the MAE, and equals the separate loss pass
    assert val.evaluate(model)["loss"] == pytest.approx(val.mean_loss(model), rel=1e-6)


def test_bad_state_file_and_bad_ema_are_refused(tmp_path, benzene_frames):
    bad = tmp_path / "x.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(ValueError, match="not a ttcalc training-state file"):
        read_stage_state(bad)
    from ttcalc.train.trainer import ParameterEMA

    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        ParameterEMA({}, 1.5)


TOML = """regime = "pretrain-freeze-finetune"
output = "{out}"
spectrum_frames = 16
[model.representation]
hidden_channels = 16
num_layers = 1
num_rbf = 8
[data]
molecules = ["benzene"]
n_train = 32
n_val = 8
[pretrain]
max_epochs = 40
batch_size = 8
ema_decay = 0.9
compile = false
[finetune]
max_epochs = 10
batch_size = 8
compile = false
"""


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ttcalc", "train", "--quiet", "--threads", "1", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_cli_sigterm_then_resume_gives_the_uninterrupted_model(tmp_path):
    """``ttcalc train`` stopped by SIGTERM in the middle of pretraining, then ``--resume``."""
    ref_cfg, cfg = tmp_path / "ref.toml", tmp_path / "run.toml"
    ref_cfg.write_text(TOML.format(out=tmp_path / "ref.pt"))
    cfg.write_text(TOML.format(out=tmp_path / "run.pt"))
    assert _cli(["--config", str(ref_cfg)]).wait(timeout=600) == 0
    proc = _cli(["--config", str(cfg)])
    log = tmp_path / "run.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + 2 pretrain epochs
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "--resume" in err and (tmp_path / "run.pretrain.state.pt").exists()
    done = _cli(["--config", str(cfg), "--resume"])
    assert done.wait(timeout=600) == 0, done.stderr.read()
    a = MultiHeadPotential.load(tmp_path / "ref.pt").state_dict()
    b = MultiHeadPotential.load(tmp_path / "run.pt").state_dict()
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert not (tmp_path / "run.pretrain.state.pt").exists()  # state files go once the model is saved
    rows = [r.split(",")[:2] for r in log.read_text().splitlines()[1:]]
    assert len(rows) == len(set(map(tuple, rows)))  # no epoch logged twice


def test_release_gives_the_best_weights_so_far_and_keeps_the_run_resumable(benzene_frames, tmp_path):
    torch.set_num_threads(1)
    reference, _ = _run(benzene_frames)
    state = tmp_path / "s.state.pt"
    with pytest.raises(ValueError, match="nothing to release"):
        train_stage(_model(), benzene_frames[:8], {"main": Targets.from_frames(benzene_frames[:8])},
                    benzene_frames[8:12], {"main": Targets.from_frames(benzene_frames[8:12])}, ["main"], CFG,
                    name="s", progress=False, state_path=state, release=True)
    with pytest.raises(TrainingInterrupted):
        _run(benzene_frames, state, stop=StopSignal(after_batches=7))  # into the 3rd epoch
    before = state.read_bytes()
    saved = read_stage_state(state)["monitor"]
    released = _model()
    train, val = benzene_frames[:40], benzene_frames[40:56]
    result = train_stage(released, train, {"main": Targets.from_frames(train)}, val,
                         {"main": Targets.from_frames(val)}, ["representation", "main"], CFG, name="s",
                         progress=False, state_path=state, release=True)
    params = dict(released.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in saved["best_state"].items())
    assert result.best_val_loss == saved["best"] and "released" in result.stop_reason
    assert state.read_bytes() == before  # untouched: the run goes on from where it stopped
    resumed, _ = _run(benzene_frames, state, resume=True)
    for (n, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
