"""The few-shot workflow: 50 DFT-labelled frames of a new molecule, TTT on their sGDML model, then
fine-tuning on the frames themselves.

Shows: ``SGDMLPrior.from_frames`` (the molecule's own cheap prior), ``calc.adapt`` (TTT on it),
``calc.finetune`` (θM + θR on the frames' reference labels, a fifth held out) and the force error on
rMD17 test frames after each step; ``calc.reset_adaptation`` returns the shipped weights.
Takes: about a minute with ``--quick`` (20 frames, 20 steps); a few minutes otherwise.

    python examples/few_shot_finetune.py [--molecule naphthalene] [--quick]
"""
from __future__ import annotations

import argparse

from ttcalc import TTTCalculator, load_pretrained
from ttcalc.data import load_rmd17
from ttcalc.diagnostics.evaluation import evaluate_calculator
from ttcalc.priors import SGDMLPrior


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", default="naphthalene", help="rMD17 molecule (never seen in training)")
    p.add_argument("--quick", action="store_true", help="20 labelled frames, 20 steps each, 20 test frames")
    args = p.parse_args(argv)
    n, steps, n_test = (20, 20, 20) if args.quick else (50, None, 200)
    frames = load_rmd17(args.molecule, "train_01", n=n, seed=0)
    test = load_rmd17(args.molecule, "test_01", n=n_test, seed=0)
    calc = TTTCalculator(model=load_pretrained("md17-abu-sgdml"), prior=SGDMLPrior.from_frames(frames, n_train=n),
                         compile=False, disagreement_every=0)
    limit = {} if steps is None else {"max_steps": steps}

    def mae() -> float:
        return evaluate_calculator(calc, test)["force_mae_meV_A"]

    print(f"{args.molecule}, {n} labelled frames; force MAE on {n_test} test frames (meV/Å):")
    print(f"  shipped model      {mae():7.1f}")
    calc.adapt(frames[0], **limit)
    print(f"  after TTT          {mae():7.1f}")
    report = calc.finetune(frames, **limit)
    print(f"  then fine-tuned    {mae():7.1f}   ({report.steps} steps, ran {report.ran})")


if __name__ == "__main__":
    main()
