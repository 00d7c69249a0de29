"""Pretrain the MFT backbone: TensorNet with one energy head per level of theory (see corpus.py).

Every step takes one batch from each head's corpus (``ttcalc.train.train_multitask``); an epoch is
one pass over the GFN2-xTB part. Writes results/backbone.pt (+ .csv log, .json report).

The run is resumable at any batch: the whole training state (weights, Adam moments, schedule,
RNG, batch position of every head's stream) is written atomically to ``<output>.state.pt`` every
``--checkpoint-minutes`` and on SIGTERM/SIGINT. It stops when the validation loss has not improved
for ``--patience`` epochs (plateau schedule: lr × 0.5 after 2 such epochs), or at ``--minutes``.

    # the first backbone (results/backbone.pt): 3 epochs in 46 minutes, sharing the machine
    python benchmarks/mft_qm9/pretrain.py --minutes 35
    # backbone v2: warm start from it, trained until validation stops improving
    python benchmarks/mft_qm9/pretrain.py --init benchmarks/mft_qm9/results/backbone.pt \
        --output benchmarks/mft_qm9/results/backbone_v2.pt [--resume | --release]

``--release`` writes the best weights an unfinished run has reached to ``--output`` (with the
report) and leaves the state for a later ``--resume``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from corpus import CorpusConfig, build_corpus
from md_protocols.files import atomic_write
from ttcalc.train.losses import LossWeights
from ttcalc.model.potential import ModelConfig, MultiHeadPotential, TrainingStats
from ttcalc.model.representation import RepresentationConfig
from ttcalc.train import StageConfig, force_field_task, train_multitask
from ttcalc.train.regimes import install_head_statistics
from ttcalc.train.trainer import TrainingInterrupted
from ttcalc.app.plots import plot_learning_curves

HERE = Path(__file__).resolve().parent
HEADS = ("gfn2", "pbe", "pbe_d3", "wb97x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1e9, help="wall-clock budget, checked after each epoch")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=8, help="epochs without a better validation loss")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--resume", action="store_true", help="continue from <output>.state.pt")
    p.add_argument("--release", action="store_true", help="write the best weights so far; train nothing")
    p.add_argument("--n-qm9", type=int, default=6000)
    p.add_argument("--output", default=str(HERE / "results" / "backbone.pt"))
    p.add_argument("--init", default=None, help="continue from this checkpoint (same heads)")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    corpus_cfg = CorpusConfig(n_qm9=args.n_qm9)
    corpus = build_corpus(corpus_cfg)
    t_corpus = time.perf_counter() - t0
    config = ModelConfig(RepresentationConfig(hidden_channels=64, num_layers=2, num_rbf=32, cutoff=5.0),
                         head_hidden=32, heads=HEADS)
    if args.init:
        model = MultiHeadPotential.load(args.init)
        previous = dict(getattr(model, "metadata", {}).get("report", {}))
    else:
        model, previous = MultiHeadPotential(config), None
        for head, (train, _) in corpus.items():
            install_head_statistics(model, head, train)
    w = LossWeights(energy=1.0, forces=10.0)
    tasks = [force_field_task(h, corpus[h][0], h, w, batch_size=16) for h in HEADS]
    val = [force_field_task(h, corpus[h][1], h, w) for h in HEADS]
    stage = StageConfig(lr=args.lr, batch_size=16, max_epochs=args.epochs, max_minutes=args.minutes,
                        patience=args.patience, lr_patience=2, lr_factor=0.5,
                        checkpoint_minutes=args.checkpoint_minutes)
    out = Path(args.output)
    try:
        res = train_multitask(model, tasks, val, ["representation", *HEADS], stage, name="pretrain",
                              log_path=None if args.release else out.with_suffix(".csv"),
                              checkpoint_path=None, state_path=out.with_suffix(".state.pt"),
                              resume=args.resume, release=args.release)
    except TrainingInterrupted as exc:
        raise SystemExit(str(exc)) from None
    all_train = [a for h in HEADS for a in corpus[h][0]]
    model.stats = TrainingStats(elements=sorted({int(z) for a in all_train for z in a.numbers}),
                                n_atoms=sorted({len(a) for a in all_train}), cutoff=model.cutoff,
                                molecules=["qm9-displaced-xtb", "rmd17 (5)", "acac", "3bpa"])
    report = {"corpus": asdict(corpus_cfg),
              "sizes": {h: {"train": len(t), "val": len(v)} for h, (t, v) in corpus.items()},
              "val_loss_per_head": {t.name: t.mean_loss(model) for t in val},
              "val_force_mae_meV_A_per_head": {t.name: t.metrics(model)["force_mae_meV"] for t in val},
              "best_val_loss": res.best_val_loss, "epochs": res.epochs, "stop_reason": res.stop_reason,
              "corpus_seconds": t_corpus, "train_seconds": res.seconds, "lr": args.lr,
              "previous_stage": previous}
    model.save(out, metadata={"report": report})
    with atomic_write(out.with_suffix(".json"), "w") as fh:
        json.dump(report, fh, indent=2)
    if out.with_suffix(".csv").exists():  # the learning curve: validation loss (and force MAE per head)
        plot_learning_curves({out.stem: out.with_suffix(".csv")}, out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
