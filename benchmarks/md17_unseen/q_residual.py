"""Q-residual uncertainty (Wong & Yang 2026) of a shipped model's features on rMD17.

PCA (99 % of the variance) is fitted to the per-atom features of 300 ``train_01`` frames of each
training molecule (aspirin, benzene, uracil). On 200 ``test_01`` frames of those molecules (in
distribution) and of naphthalene and toluene (unseen) it reports: the AUROC of the structure Q
separating the two groups, the fraction of each group above the structure limit (the training
structures' α-quantile, α = 0.95) and above the atom limit (Jackson–Mudholkar) for any atom, and the
Spearman correlation of Q with the frame's force MAE of the main head.

    python benchmarks/md17_unseen/q_residual.py [--model md17-abu-sgdml]

writes ``results/q_residual/<model>.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ttcalc import load_model, load_pretrained
from ttcalc.model import PRETRAINED
from ttcalc.model.batch import collate
from ttcalc.data import load_rmd17
from md_protocols.files import atomic_write
from ttcalc.diagnostics.uncertainty import fit_q_residual

HERE = Path(__file__).resolve().parent
TRAINING, UNSEEN = ("aspirin", "benzene", "uracil"), ("naphthalene", "toluene")


def features_and_errors(model, frames, batch_size: int = 50):
    """Per-atom features (n, F), structure index (n,), and per-frame force MAE (meV/Å)."""
    feats, index, errors = [], [], []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        batch = collate(chunk, model.cutoff, dtype=model.dtype)
        with torch.no_grad():
            feats.append(model.features(batch, batch.pos).numpy())
        index.append(batch.batch.numpy() + start)
        forces = model(batch)["main"]["forces"].detach().numpy()
        ref = np.concatenate([a.get_forces() for a in chunk])
        per_atom = np.abs(forces - ref).mean(axis=1)
        errors += [1000 * per_atom[batch.batch.numpy() == b].mean() for b in range(len(chunk))]
    return np.concatenate(feats), np.concatenate(index), np.array(errors)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="md17-abu-sgdml", help="shipped model name or checkpoint path")
    p.add_argument("--name", default=None, help="name of the result file (default: the model's name or file stem)")
    p.add_argument("--n-test", type=int, default=200, help="test_01 frames per molecule")
    args = p.parse_args(argv)
    model = load_pretrained(args.model) if args.model in PRETRAINED else load_model(args.model)
    train = [a for m in TRAINING for a in load_rmd17(m, "train_01", n=300, seed=0)]
    x, s, _ = features_and_errors(model, train)
    q_model = fit_q_residual(x, s, variance=0.99, alpha=0.95)
    groups = {}
    for mol in TRAINING + UNSEEN:
        fx, fs, err = features_and_errors(model, load_rmd17(mol, "test_01", n=args.n_test, seed=0))
        groups[mol] = {"q": q_model.structure_q(fx, fs), "err": err,
                       "atom_flag": q_model.structure_q(fx, fs) > q_model.atom_limit}
    q_id = np.concatenate([groups[m]["q"] for m in TRAINING])
    q_new = np.concatenate([groups[m]["q"] for m in UNSEEN])
    q_all = np.concatenate([groups[m]["q"] for m in TRAINING + UNSEEN])
    err_all = np.concatenate([groups[m]["err"] for m in TRAINING + UNSEEN])
    result = {
        "model": args.model, "k": q_model.k, "n_features": int(x.shape[1]),
        "atom_limit": q_model.atom_limit, "structure_limit": q_model.structure_limit,
        "auroc_id_vs_unseen": float(roc_auc_score(np.r_[np.zeros(len(q_id)), np.ones(len(q_new))], np.r_[q_id, q_new])),
        "flagged_structure_limit": {"in_distribution": float(np.mean(q_id > q_model.structure_limit)),
                                    "unseen": float(np.mean(q_new > q_model.structure_limit))},
        "flagged_any_atom_over_atom_limit": {"in_distribution": float(np.mean(q_id > q_model.atom_limit)),
                                             "unseen": float(np.mean(q_new > q_model.atom_limit))},
        "spearman_q_vs_force_mae": float(spearmanr(q_all, err_all).statistic),
        "per_molecule_median_q": {m: float(np.median(g["q"])) for m, g in groups.items()},
    }
    out = HERE / "results" / "q_residual" / f"{args.name or Path(args.model).stem}.json"
    with atomic_write(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
