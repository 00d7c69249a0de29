"""``torchrun --nproc_per_node 2 -m ttcalc.app.cli train`` (gloo on CPU) makes the parameter update of
one process on the same global batches: each rank takes a shard, gradients are summed with shard
weights. float64, so the only difference is the order of floating-point sums."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ttcalc.model.potential import MultiHeadPotential

TOML = """regime = "supervised"
output = "{out}"
dtype = "float64"
spectrum_frames = 8
[model.representation]
hidden_channels = 8
num_layers = 1
num_rbf = 8
[data]
molecules = ["benzene"]
n_train = 24
n_val = 8
[pretrain]
max_epochs = 3
batch_size = 8
lr = 3e-3
compile = false
"""


def _train(tmp_path, name: str, nproc: int) -> MultiHeadPotential:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(TOML.format(out=tmp_path / f"{name}.pt"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + ["-m", "ttcalc", "train", "--quiet", "--threads", "1",
                                                           "--config", str(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return MultiHeadPotential.load(tmp_path / f"{name}.pt")


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_update(tmp_path):
    one = _train(tmp_path, "one", 1)
    two = _train(tmp_path, "two", 2)
    from ttcalc.model.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / "two.pt")["metadata"]["report"]["world_size"] == 2  # really sharded
    assert read_checkpoint(tmp_path / "one.pt")["metadata"]["report"]["world_size"] == 1
    moved = 0
    for (n, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=n)
        moved += int(a.dtype.is_floating_point and a.numel() > 1)
    assert moved > 0
    # both runs trained: the weights are not the initial ones
    from ttcalc.model.potential import ModelConfig
    from ttcalc.model.representation import RepresentationConfig

    torch.manual_seed(0)
    init = MultiHeadPotential(ModelConfig(RepresentationConfig(hidden_channels=8, num_layers=1, num_rbf=8),
                                          heads=("main",)), dtype="float64")
    assert any(not torch.equal(p, q) for p, q in zip(init.parameters(), one.parameters()))
