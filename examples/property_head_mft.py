"""Fine-tune a property head with multi-task fine-tuning (MFT, Peng et al. 2026, eq. 1).

Shows: a HOMO-LUMO gap head on the embedded backbone, trained on QM9 molecules with the
force-field loss on GFN2-xTB-labelled displaced QM9 geometries kept as the auxiliary term
(λ_reg = 1), and its validation RMSE against the spread of the labels.
Takes: about a minute with ``--quick`` (100 molecules, 2 epochs); some minutes otherwise.

    python examples/property_head_mft.py [--quick]
"""
from __future__ import annotations

import argparse

import numpy as np

from ttcalc import load_pretrained
from ttcalc.model.batch import collate
from ttcalc.data import label_with_prior
from ttcalc.data.qm9 import displaced_molecules, load_qm9
from ttcalc.model.heads import PropertyHeadConfig
from ttcalc.priors import XTBPrior
from ttcalc.train import FinetuneConfig, StageConfig, finetune_property


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 molecules, 2 epochs")
    args = p.parse_args(argv)
    n, epochs = (100, 2) if args.quick else (500, 20)
    qm9 = load_qm9()
    idx = np.random.default_rng(0).permutation(len(qm9.offsets) - 1)[:n]
    frames, gap = qm9.molecules(idx), qm9.property("gap")[idx]
    n_val = n // 5
    ff = label_with_prior(displaced_molecules(qm9, idx[: n // 2], sigma=0.05), XTBPrior(), progress=False)
    cfg = FinetuneConfig(regime="mft", stage=StageConfig(lr=5e-4, batch_size=16, max_epochs=epochs, patience=5),
                         lambda_reg=1.0, ff_head="prior")
    model, result = finetune_property(load_pretrained(), PropertyHeadConfig(name="gap"), frames[n_val:],
                                      gap[n_val:], frames[:n_val], gap[:n_val], cfg, ff_frames=ff,
                                      progress=not args.quick)
    pred = model.predict_properties(collate(frames[:n_val], model.cutoff), ["gap"])["gap"]
    rmse = float(np.sqrt(np.mean((pred.detach().numpy().ravel() - gap[:n_val]) ** 2)))
    print(f"MFT gap head: {result.epochs} epochs, validation RMSE {rmse:.3f} eV "
          f"(label spread {gap[n_val:].std():.3f} eV)")


if __name__ == "__main__":
    main()
