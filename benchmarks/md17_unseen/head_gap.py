"""Where the force error after sGDML-50 TTT comes from: the prior head's fit, the prior, or the main head.

After TTT the representation has moved so that the prior head θP fits the test molecule's sGDML-50
forces; the main head θM reads the same features. Per molecule, on the benchmark's 200 test_01 frames,
this measures force MAE (meV/Å) between pairs of

- ``main``: θM, the reported prediction, and ``prior_head``: θP (before and after TTT);
- ``prior``: the prior the model was adapted to (sGDML-50 for test molecules), and ``dft``: rMD17 PBE.

For the training molecules (no TTT) it gives θM and θP against PBE and against each other. If
|main − dft| after TTT is close to |prior_head − dft| + |main − prior_head|, and |prior_head − prior|
is small, the limit is the prior head's fit plus the main head's correction, not the adaptation.

    python benchmarks/md17_unseen/head_gap.py --model benchmarks/md17_unseen/results/md17-abu-sgdml.pt \
        --out benchmarks/md17_unseen/results/sgdml50/head_gap.json
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from md_protocols.report import write_json_atomic
from ttcalc import TTTCalculator, load_model
from ttcalc.app.benchmark import build_prior
from ttcalc.data import load_rmd17
from ttcalc.diagnostics.evaluation import force_component_errors, predict_frames


def force_mae(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Mean |component difference| between two force sets, in meV/Å."""
    return float(np.abs(force_component_errors(a, b)).mean() * 1e3)


def head_forces(model, frames) -> dict[str, list[np.ndarray]]:
    return {head: predict_frames(model, frames, head)[1] for head in ("main", "prior")}


def pairwise(forces: dict[str, list[np.ndarray]]) -> dict[str, float]:
    names = list(forces)
    return {f"{a}-{b}": force_mae(forces[a], forces[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prior", default="sgdml:50", help="prior spec for the test molecules")
    p.add_argument("--test", nargs="+", default=["naphthalene", "toluene"])
    p.add_argument("--train", nargs="+", default=["aspirin", "benzene", "uracil"])
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report: dict = {"model": args.model, "prior": args.prior, "unit": "force MAE, meV/Å", "test": {}, "train": {}}
    model = load_model(args.model)  # the training molecules see the model as trained (no TTT)
    for mol in args.train:
        frames = load_rmd17(mol, "test_01", n=args.n_test, seed=0)
        f = head_forces(model, frames)
        report["train"][mol] = pairwise({"main": f["main"], "prior_head": f["prior"],
                                         "dft": [a.get_forces() for a in frames]})
    models = Path(args.out).parent / "models"  # where build_prior saves the fitted sGDML models (untracked)
    models.mkdir(parents=True, exist_ok=True)
    for mol in args.test:
        frames = load_rmd17(mol, "test_01", n=args.n_test, seed=0)
        start = frames[0].copy()
        start.calc = None
        _, prior = build_prior(args.prior, mol, models)
        calc = TTTCalculator(args.model, prior=prior, disagreement_every=0)
        dft = [a.get_forces() for a in frames]
        prior_f = prior.energy_forces_batch(frames)[1]
        def gaps() -> dict[str, float]:
            f = head_forces(calc.model, frames)
            return pairwise({"main": f["main"], "prior_head": f["prior"], "prior": prior_f, "dft": dft})

        entry = {"before_ttt": gaps(), "ttt": calc.adapt(start).summary()}
        entry["after_ttt"] = gaps()
        report["test"][mol] = entry
        logging.info("%s: %s", mol, entry["after_ttt"])
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
