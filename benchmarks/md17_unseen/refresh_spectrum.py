"""Add the size-independent spectral reference (``ttcalc.diagnostics.spectral``, metric "distribution") to trained
checkpoints that predate it, without touching their weights.

The training frames are rebuilt from the ``train_config`` stored in each checkpoint, with the same
subset and seed as at training time; the rebuilt eq. 5 mean spectrum must equal the stored one (so the
frames are the same) before anything is written. The file is replaced atomically.

    python benchmarks/md17_unseen/refresh_spectrum.py ttcalc/model/pretrained/md17-abu.pt ...
"""
from __future__ import annotations

import argparse

import numpy as np

from ttcalc.model.checkpoint import atomic_torch_save, read_checkpoint
from ttcalc.diagnostics.spectral import build_training_spectrum
from ttcalc.train import TrainConfig
from ttcalc.train.regimes import load_training_frames


def refresh(path: str) -> dict:
    ckpt = read_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["metadata"]["train_config"])
    train, _, _ = load_training_frames(cfg)
    old = ckpt["stats"]["spectrum"]
    new = build_training_spectrum(train, radius=float(old["radius"]), max_frames=cfg.spectrum_frames, seed=cfg.seed)
    if not np.allclose(new.mean, old["mean"], rtol=0, atol=1e-12):
        raise RuntimeError(f"{path}: the rebuilt training frames do not reproduce the stored spectrum")
    ckpt["stats"]["spectrum"] = new.to_dict()
    atomic_torch_save(ckpt, path)
    return new.summary()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    for path in p.parse_args().checkpoints:
        print(path, refresh(path))


if __name__ == "__main__":
    main()
