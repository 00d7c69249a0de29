"""Q-residual uncertainty (Wong & Yang 2026) of a shipped model on rMD17, beside the prior
disagreement.

Q uses the PCA stored in the checkpoint (``TrainingStats.q_residual``: 99 % of the variance of the
per-atom features of training frames, the structure limit the training structures' 95 % quantile),
exactly what ``TTTCalculator`` reports; a checkpoint without one gets a PCA fitted here on 300
``train_01`` frames of each training molecule. The prior disagreement is the calculator's other
signal, the mean over atoms of |F_main − F_prior| with GFN2-xTB as the prior (for both models: the
one prior that exists for any molecule); its limit is the 95 % quantile over the same 900
``train_01`` frames.

On 200 ``test_01`` frames of the training molecules (in distribution) and of naphthalene and
toluene (unseen), for each signal: the AUROC separating the two groups, the fraction of each group
above the limit, and the Spearman correlation with the frame's main-head force MAE against DFT.
The same AUROC and flag rate for 200 frames of acac (``test_MD_300K``, PBE-D3), the validation
molecule, are reported as ``acac`` (Q only).

    python benchmarks/md17_unseen/q_residual.py [--model md17-abu-sgdml]

writes ``results/q_residual/<model>.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from md_protocols.files import atomic_write
from ttcalc import load_model, load_pretrained
from ttcalc.data import load_rmd17, read_frames
from ttcalc.data.labels import label_with_prior
from ttcalc.diagnostics.collapse import atomic_representations
from ttcalc.diagnostics.evaluation import predict_frames
from ttcalc.diagnostics.uncertainty import QResidual, fit_q_residual
from ttcalc.model import PRETRAINED
from ttcalc.paths import dataset_path
from ttcalc.priors import XTBPrior

HERE = Path(__file__).resolve().parent
TRAINING, UNSEEN = ("aspirin", "benzene", "uracil"), ("naphthalene", "toluene")


def structure_index(frames) -> np.ndarray:
    return np.repeat(np.arange(len(frames)), [len(a) for a in frames])


def per_frame_mean(per_atom: np.ndarray, frames) -> np.ndarray:
    return np.array([v.mean() for v in np.split(per_atom, np.cumsum([len(a) for a in frames])[:-1])])


def signals(model, q_model: QResidual, prior, frames) -> dict:
    """Per frame: Q, the prior disagreement (eV/Å) and the main head's force MAE against DFT (meV/Å)."""
    _, forces = predict_frames(model, frames)
    f_main = np.concatenate(forces)
    f_prior = np.concatenate([a.get_forces() for a in label_with_prior(frames, prior)])
    f_dft = np.concatenate([a.get_forces() for a in frames])
    return {"q": q_model.structure_q(atomic_representations(model, frames), structure_index(frames)),
            "disagreement": per_frame_mean(np.linalg.norm(f_main - f_prior, axis=1), frames),
            "err": 1000 * per_frame_mean(np.abs(f_main - f_dft).mean(axis=1), frames)}


def scores(values: dict, limit: float, key: str) -> dict:
    """AUROC (in distribution vs unseen), flagged fractions and Spearman with the force MAE."""
    ind = np.concatenate([values[m][key] for m in TRAINING])
    new = np.concatenate([values[m][key] for m in UNSEEN])
    every = np.concatenate([values[m][key] for m in TRAINING + UNSEEN])
    err = np.concatenate([values[m]["err"] for m in TRAINING + UNSEEN])
    return {"limit": float(limit),
            "auroc_id_vs_unseen": float(roc_auc_score(np.r_[np.zeros(len(ind)), np.ones(len(new))], np.r_[ind, new])),
            "flagged": {"in_distribution": float(np.mean(ind > limit)), "unseen": float(np.mean(new > limit))},
            "spearman_vs_force_mae": float(spearmanr(every, err).statistic),
            "per_molecule_median": {m: float(np.median(v[key])) for m, v in values.items()}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="md17-abu-sgdml", help="shipped model name or checkpoint path")
    p.add_argument("--name", default=None, help="name of the result file (default: the model's name or file stem)")
    p.add_argument("--n-test", type=int, default=200, help="test_01 frames per molecule")
    args = p.parse_args(argv)
    model = load_pretrained(args.model) if args.model in PRETRAINED else load_model(args.model)
    train = [a for m in TRAINING for a in load_rmd17(m, "train_01", n=300, seed=0)]
    stored = model.stats.q_residual
    q_model = QResidual.from_dict(stored) if stored else fit_q_residual(
        atomic_representations(model, train), structure_index(train), variance=0.99, alpha=0.95)
    prior = XTBPrior()
    values = {m: signals(model, q_model, prior, load_rmd17(m, "test_01", n=args.n_test, seed=0))
              for m in TRAINING + UNSEEN}
    train_disagreement = signals(model, q_model, prior, train)["disagreement"]
    acac = read_frames(dataset_path("acac", "test_MD_300K.xyz"))
    acac = [acac[i] for i in sorted(np.random.default_rng(0).choice(len(acac), 200, replace=False))]
    q_acac = q_model.structure_q(atomic_representations(model, acac), structure_index(acac))
    q_id = np.concatenate([values[m]["q"] for m in TRAINING])
    result = {"model": args.model, "pca": "stored in the checkpoint" if stored else "fitted on 900 train_01 frames",
              "k": q_model.k, "atom_limit": q_model.atom_limit,
              "q_residual": scores(values, q_model.structure_limit, "q"),
              "prior_disagreement_xtb": scores(values, float(np.quantile(train_disagreement, 0.95)), "disagreement"),
              "acac": {"auroc_id_vs_acac": float(roc_auc_score(np.r_[np.zeros(len(q_id)), np.ones(len(q_acac))],
                                                               np.r_[q_id, q_acac])),
                       "flagged": float(np.mean(q_acac > q_model.structure_limit))}}
    out = HERE / "results" / "q_residual" / f"{args.name or Path(args.model).stem}.json"
    with atomic_write(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
