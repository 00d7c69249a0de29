"""Train a small multi-head model, stop it part-way, and resume it exactly.

Shows: a typed ``TrainConfig`` (pretrain θR + θP on GFN2-xTB labels, then θM on rMD17 DFT), the
resumable stage state (weights, Adam, schedule, EMA, RNG, batch position) that ``ttcalc train
--resume`` continues, and that the resumed model equals an uninterrupted one bit for bit.
Takes: under a minute with ``--quick``; a few minutes otherwise (more frames and epochs).

    python examples/train_and_resume.py [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ttcalc.model import ModelConfig, MultiHeadPotential
from ttcalc.model.representation import RepresentationConfig
from ttcalc.train import DataConfig, StageConfig, TrainConfig, train_model
from ttcalc.train.trainer import StopSignal, TrainingInterrupted


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="24 frames, 3 epochs per stage")
    p.add_argument("--out", default=None, help="folder for the checkpoints (default: a temporary one)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one thread: bit-for-bit reproducible sums
    out = Path(args.out or tempfile.mkdtemp(prefix="ttcalc-train-"))
    n, epochs = (24, 3) if args.quick else (200, 20)
    stage = StageConfig(max_epochs=epochs, batch_size=8, lr=3e-3, ema_decay=0.9, compile=False)

    def config(name: str) -> TrainConfig:
        return TrainConfig(model=ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=1, num_rbf=8)),
                           data=DataConfig(molecules=["benzene"], n_train=n, n_val=8), pretrain=stage,
                           finetune=stage, output=str(out / f"{name}.pt"), spectrum_frames=16)

    reference, _ = train_model(config("uninterrupted"), progress=False)
    try:
        train_model(config("resumed"), progress=False, stop=StopSignal(after_batches=4))
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}")
    resumed, report = train_model(config("resumed"), progress=False, resume=True)
    same = all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
    print(f"resumed run: {report['stages']['finetune']['epochs']} fine-tune epochs; "
          f"identical to the uninterrupted run: {same}")
    MultiHeadPotential.load(out / "resumed.pt")  # the written checkpoint loads


if __name__ == "__main__":
    main()
