"""Learning during MD (Wong & Yang 2026): fine-tune the model at set points of one trajectory.

Shows: Q-residual uncertainty from the calculator's own forward pass (``calc.results["q_residual"]``
against its training limit), and ``md_protocols.PeriodicLearning``: every ``interval`` steps it
labels a few recent frames with a reference calculator, fine-tunes the model on all labels so far
(``ttcalc.MDLearner`` → ``calc.finetune``) and continues the same trajectory with the new weights,
within a label budget. GFN2-xTB stands in for the reference here so that it runs in seconds; pass
any ASE calculator (e.g. PySCF DFT, ``ttcalc.priors.references``) for real labels.
Takes: about a minute with ``--quick`` (0.05 ps, eager kernel, 2 updates of 5 steps); some minutes
otherwise (2 ps, 4 updates).

    python examples/learning_during_md.py [--molecule toluene] [--quick]
"""
from __future__ import annotations

import argparse

from md_protocols import OnlineSettings, PeriodicLearning, run_md
from ttcalc import MDLearner, TTTCalculator
from ttcalc.data import load_rmd17
from ttcalc.priors import XTBPrior


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", default="toluene", help="rMD17 molecule (never seen in training)")
    p.add_argument("--quick", action="store_true", help="0.05 ps, eager kernel, 2 updates of 5 steps")
    args = p.parse_args(argv)
    start = load_rmd17(args.molecule, "test_01", n=1, seed=0)[0]
    start.calc = None
    calc = TTTCalculator(model="md17-abu", compile=not args.quick, disagreement_every=0)
    probe = start.copy()
    probe.calc = calc
    probe.get_forces()
    print(f"Q-residual of the start frame {calc.results['q_residual']:.3f} "
          f"(training limit {calc.results['q_residual_limit']:.3f})")
    steps, time_ps = (40, 0.05) if args.quick else (1000, 2.0)
    learner = MDLearner(calc, "finetune", **({"max_steps": 5} if args.quick else {}))
    online = PeriodicLearning(learner, XTBPrior().as_calculator(),
                              OnlineSettings(interval=steps, n_label=4, window=steps, label_budget=16))
    result = run_md(start, calc, temperature_K=500, timestep_fs=0.5, time_ps=time_ps, log_interval=10,
                    progress=not args.quick, observers=[online])
    print(f"MD: {result.status} after {result.time_ps:.3f} ps, {online.labels_used} reference labels")
    for e in online.events:
        report = e.get("report", {})
        print(f"  update at step {e['step']}: {'ok' if e['ok'] else 'rolled back'}, "
              f"{report.get('steps', 0)} steps, loss {report.get('prior_loss_start', float('nan')):.4g} -> "
              f"{report.get('prior_loss_end', float('nan')):.4g}")


if __name__ == "__main__":
    main()
