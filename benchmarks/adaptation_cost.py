"""Cost and effect of adaptation on naphthalene (2 CPU cores).

Prints and writes ``benchmarks/results/adaptation_cost.json``:
- wall time of ``calc.adapt`` with default settings and the GFN2-xTB prior (goal ≤ 15 s), and with
  ``compile=True`` (the traced, compiled force step of training): its first call, which traces and
  compiles (or loads inductor's on-disk cache), and a second one, which reuses the graph;
- time of ``refine_radius`` per structure over rMD17 test frames (goal ≤ 0.2 s);
- force and energy MAE against rMD17 test_01 frames before and after TTT.

    python benchmarks/adaptation_cost.py [--model PATH] [--n-test 200]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from md_protocols.files import atomic_write
from ttcalc import TTTCalculator
from ttcalc.data import load_rmd17
from ttcalc.diagnostics.evaluation import evaluate_calculator
from ttcalc.diagnostics.spectral import TrainingSpectrum, refine_radius


def timed_adapt(calc: TTTCalculator, atoms, **overrides) -> tuple[float, float, int]:
    """(seconds, seconds spent tracing and compiling the forward graph, steps) of a TTT run from the
    shipped weights (the backward graph compiles inside the first ``backward()``, uncounted)."""
    calc.reset_adaptation()
    t = time.perf_counter()
    report = calc.adapt(atoms, force=True, **overrides)
    seconds = time.perf_counter() - t
    step = calc.adaptation.force_step("prior", compile=overrides.get("compile", False))
    compile_s, step.compile_seconds = step.compile_seconds, 0.0
    return seconds, compile_s, report.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="md17-abu")
    p.add_argument("--molecule", default="naphthalene")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--output", default=str(Path(__file__).parent / "results" / "adaptation_cost.json"))
    args = p.parse_args()

    test = load_rmd17(args.molecule, "test_01", n=args.n_test, seed=0)
    start = test[0].copy()
    calc = TTTCalculator(args.model, prior="xtb", disagreement_every=0)
    before = evaluate_calculator(calc, test)

    spectrum = TrainingSpectrum.from_dict(calc.model.stats.spectrum)
    times = []
    for a in test[:100]:
        t = time.perf_counter()
        refine_radius(a, spectrum)
        times.append(time.perf_counter() - t)

    t = time.perf_counter()
    report = calc.adapt(start)
    adapt_s = time.perf_counter() - t
    after = evaluate_calculator(calc, test)
    compiled = [timed_adapt(calc, start, compile=True) for _ in range(2)]
    after_compiled = evaluate_calculator(calc, test)
    result = {
        "molecule": args.molecule, "model": args.model,
        "adapt_seconds": adapt_s, "adapt_steps": report.steps, "adapt_stop_reason": report.stop_reason,
        "prior_loss": [report.prior_loss_start, report.prior_loss_end],
        "refine_radius_seconds_median": float(np.median(times)),
        "refine_radius_seconds_max": float(np.max(times)),
        "force_mae_meV_A": {"before_ttt": before["force_mae_meV_A"], "after_ttt": after["force_mae_meV_A"]},
        "energy_mae_offset_meV": {"before_ttt": before["energy_mae_offset_meV"],
                                  "after_ttt": after["energy_mae_offset_meV"]},
        "threads": torch.get_num_threads(),
        "compiled": {"first_seconds": compiled[0][0], "forward_compile_seconds": compiled[0][1],
                     "again_seconds": compiled[1][0], "steps": compiled[1][2],
                     "force_mae_meV_A_after_ttt": after_compiled["force_mae_meV_A"]},
        "goals": {"adapt_seconds<=15": adapt_s <= 15, "refine_radius_seconds<=0.2": float(np.max(times)) <= 0.2},
    }
    with atomic_write(args.output, "w") as fh:  # a stopped run leaves the last complete file
        json.dump(result, fh, indent=2)
    print(f"calc.adapt (GFN2-xTB prior, defaults): {adapt_s:.1f} s, {report.steps} steps "
          f"({report.stop_reason}); prior loss {report.prior_loss_start:.4g} -> {report.prior_loss_end:.4g}")
    print(f"with compile=True: first call {compiled[0][0]:.1f} s (tracing and compiling the "
          f"forward graph: {compiled[0][1]:.1f} s), again {compiled[1][0]:.1f} s; force MAE after TTT "
          f"{after_compiled['force_mae_meV_A']:.1f} meV/Å")
    print(f"refine_radius per structure: median {np.median(times) * 1e3:.2f} ms, max {np.max(times) * 1e3:.2f} ms")
    print(f"force MAE vs rMD17 {args.molecule} test_01 ({len(test)} frames): "
          f"{before['force_mae_meV_A']:.1f} -> {after['force_mae_meV_A']:.1f} meV/Å (before -> after TTT)")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
