"""Pretrain the MFT backbone: TensorNet with one energy head per level of theory (see corpus.py).

Every step takes one batch from each head's corpus (``ttcalc.train.train_multitask``); an epoch is
one pass over the GFN2-xTB part. Writes results/backbone.pt (+ .csv log, .json report).

Regenerate the committed backbone (3 epochs in 50 minutes on one CPU thread, sharing the machine
with another training job; the budget is checked after each epoch):

    python benchmarks/mft_qm9/pretrain.py --minutes 35

``--init CHECKPOINT --lr 5e-4`` continues training from an earlier backbone.
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
from ttcalc.train.losses import LossWeights
from ttcalc.model.potential import ModelConfig, MultiHeadPotential, TrainingStats
from ttcalc.model.representation import RepresentationConfig
from ttcalc.train import StageConfig, force_field_task, train_multitask
from ttcalc.train.regimes import install_head_statistics

HERE = Path(__file__).resolve().parent
HEADS = ("gfn2", "pbe", "pbe_d3", "wb97x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-qm9", type=int, default=6000)
    p.add_argument("--output", default=str(HERE / "results" / "backbone.pt"))
    p.add_argument("--init", default=None, help="continue from this checkpoint (same heads)")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
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
    stage = StageConfig(lr=args.lr, batch_size=16, max_epochs=args.epochs, max_minutes=args.minutes, patience=6,
                        lr_patience=1, lr_factor=0.5)
    out = Path(args.output)
    res = train_multitask(model, tasks, val, ["representation", *HEADS], stage, name="pretrain",
                          log_path=out.with_suffix(".csv"), checkpoint_path=out.with_suffix(".partial.pt"))
    all_train = [a for h in HEADS for a in corpus[h][0]]
    model.stats = TrainingStats(elements=sorted({int(z) for a in all_train for z in a.numbers}),
                                n_atoms=sorted({len(a) for a in all_train}), cutoff=model.cutoff,
                                molecules=["qm9-displaced-xtb", "rmd17 (5)", "acac", "3bpa"])
    report = {"corpus": asdict(corpus_cfg),
              "sizes": {h: {"train": len(t), "val": len(v)} for h, (t, v) in corpus.items()},
              "val_loss_per_head": {t.name: t.mean_loss(model) for t in val},
              "best_val_loss": res.best_val_loss, "epochs": res.epochs, "stop_reason": res.stop_reason,
              "corpus_seconds": t_corpus, "train_seconds": res.seconds, "lr": args.lr,
              "previous_stage": previous}
    model.save(out, metadata={"report": report})
    out.with_suffix(".partial.pt").unlink(missing_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
