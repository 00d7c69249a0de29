"""MD17 unseen-molecule benchmark (Kreiman & Krishnapriyan 2025, sec. 5.2).

A model trained on rMD17 aspirin, benzene and uracil is evaluated on naphthalene and toluene, which it
never saw: the prior alone, the model before TTT and after TTT (optionally with radius refinement),
on force/energy errors (official test_01 frames), MD stability (Fu et al. 2023 bond criterion),
h(r) against the rMD17 frames, and NVE drift. In-distribution errors on the training molecules'
test_01 frames are reported too.

Regenerate (writes results/<tag>/results.json, results.md and plots):

    python benchmarks/md17_unseen/run.py --model benchmarks/md17_unseen/results/md17-abu-xtb.pt \
        --prior xtb --time-ps 100 --seeds 3 --tag xtb
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


from md_protocols.plots import plot_stability_bars
from ttcalc import load_model
from ttcalc.app.benchmark import BenchConfig, markdown, run_benchmark
from ttcalc.data import load_rmd17
from ttcalc.diagnostics.evaluation import evaluate_frames

HERE = Path(__file__).resolve().parent


def parse_overrides(items: list[str]) -> dict:
    """``["max_steps=500", "parameters=representation"]`` -> TTTConfig overrides, values typed by the field."""
    from dataclasses import fields

    from ttcalc.adapt import TTTConfig

    types = {f.name: type(getattr(TTTConfig(), f.name)) for f in fields(TTTConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--ttt {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
        typ = types[key]
        out[key] = value.lower() in ("1", "true", "yes") if typ is bool else typ(value)
    TTTConfig().updated(**out)  # fail now on a bad value, not after the in-distribution evaluation
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prior", default="xtb", help="xtb, tblite or sgdml:N (N labelled train_01 frames)")
    p.add_argument("--molecules", nargs="+", default=["naphthalene", "toluene"])
    p.add_argument("--time-ps", type=float, default=100.0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ensembles", nargs="*", default=["nvt", "nve"], help="none: errors and TTT only")
    p.add_argument("--no-pes", action="store_true", help="skip the PES scans along Hessian modes")
    p.add_argument("--rr", action="store_true")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--tag", default=None)
    p.add_argument("--ttt", action="append", default=[], metavar="KEY=VALUE",
                   help="a TTTConfig override, e.g. --ttt parameters=representation (repeatable)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = HERE / "results" / (args.tag or args.prior.replace(":", "-"))
    out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.model)
    in_dist = {mol: evaluate_frames(model, load_rmd17(mol, "test_01", n=args.n_test, seed=0))
               for mol in model.stats.molecules}
    (out / "in_distribution.json").write_text(json.dumps(in_dist, indent=2))

    cfg = BenchConfig(model=args.model, molecules=args.molecules, seeds=args.seeds, time_ps=args.time_ps,
                      ttt=True, rr=args.rr, prior=args.prior, ensembles=args.ensembles,
                      processes=args.processes, output=str(out), n_test=args.n_test, pes=not args.no_pes,
                      ttt_overrides=parse_overrides(args.ttt))
    results = run_benchmark(cfg)
    results["in_distribution"] = in_dist
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    lines = ["## In-distribution (test_01 frames of the training molecules)", "",
             "| molecule | force MAE (meV/Å) | energy MAE (meV) |", "|---|---|---|"]
    lines += [f"| {m} | {e['force_mae_meV_A']:.1f} | {e['energy_mae_meV']:.1f} |" for m, e in in_dist.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n\n## Unseen molecules\n\n" + markdown(results))
    for mol, m in results["molecules"].items():
        bars = {name: (v["nvt"]["stability"]["mean"], v["nvt"]["stability"]["std"])
                for name, v in m["variants"].items() if "nvt" in v}
        if bars:
            plot_stability_bars(bars, out / f"{mol}_stability_nvt.png", max_time_ps=args.time_ps)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
