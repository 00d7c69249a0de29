"""Extra reference relaxation steps (Kreiman & Krishnapriyan 2025, App. A.3.1) for the MD17 variants.

For each unseen molecule, each variant (the prior alone, the MLIP before TTT, the MLIP after TTT, from a
``run.py`` results folder) relaxes the benchmark's starting frame (BFGS, fmax 0.01 eV/Å); the reference
then continues from that minimum and the reference optimizer steps it still needs are counted
(:func:`md_protocols.relax_extra_steps`). A variant that finds the reference's minimum needs zero.

References: GFN2-xTB (cheap, every variant), and optionally PBE/def2-SVP with PySCF (the rMD17 level of
theory, ~100 s per gradient on one core here): ``--dft-single-points`` gives the DFT max force at each
variant's minimum (one gradient each); ``--dft-extra-steps VARIANT`` runs the full DFT relaxation
from that variant's minimum.

    python benchmarks/md17_unseen/extra_steps.py --results benchmarks/md17_unseen/results/sgdml50 \
        --model benchmarks/md17_unseen/results/md17-abu-sgdml.pt --prior-npz
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from md_protocols import relax, relax_extra_steps
from md_protocols.relax import kabsch_rmsd, max_force
from ttcalc.priors import pyscf_calculator, xtb_reference
from md_protocols.report import write_json_atomic
from ttcalc import TTTCalculator
from ttcalc.app.benchmark import load_prior
from ttcalc.data import load_rmd17

log = logging.getLogger("extra_steps")


def variant_calculators(results: Path, model: str, molecule: str, prior: str) -> dict:
    """name -> ASE calculator for the prior, the MLIP and the TTT-adapted MLIP of ``results``."""
    calcs = {}
    if prior == "npz":
        npz = sorted((results / "models").glob(f"sgdml-{molecule}-*.npz"))
        if not npz:
            raise FileNotFoundError(f"no sGDML model of {molecule} in {results / 'models'}")
        calcs["prior"] = load_prior(f"sgdml-file:{npz[0]}").as_calculator()
    elif prior != "none":
        calcs["prior"] = load_prior(prior).as_calculator()
    calcs["mlip"] = TTTCalculator(model, dtype="float64", compile=False, disagreement_every=0)
    adapted = results / "models" / f"{molecule}-mlip+ttt.pt"
    if adapted.exists():
        calcs["mlip+ttt"] = TTTCalculator(str(adapted), dtype="float64", compile=False, disagreement_every=0)
    return calcs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="a run.py output folder (its models/ are used)")
    p.add_argument("--model", required=True, help="the MLIP before TTT")
    p.add_argument("--prior", default="npz", help="'npz' (the folder's sGDML models), a prior spec, or 'none'")
    p.add_argument("--molecules", nargs="+", default=["naphthalene", "toluene"])
    p.add_argument("--fmax", type=float, default=0.01)
    p.add_argument("--dft-single-points", action="store_true", help="PBE/def2-SVP max force at each minimum")
    p.add_argument("--dft-extra-steps", nargs="*", default=[], help="variants to relax further with PBE")
    p.add_argument("--dft-molecule", default="naphthalene", help="the one molecule DFT is run for")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = Path(args.results)
    out = results / "extra_steps.json"
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("config", {})
    report["config"].update({"model": args.model, "prior": args.prior, "fmax": args.fmax,
                             "optimizer": "BFGS", "reference": "GFN2-xTB (xtb-python)"})
    xtb = xtb_reference()
    for mol in args.molecules:
        start = load_rmd17(mol, "test_01", n=1, seed=0)[0]  # the benchmark's starting frame
        start.calc = None
        entry = report.setdefault(mol, {})
        for name, calc in variant_calculators(results, args.model, mol, args.prior).items():
            t0 = time.perf_counter()
            res = relax_extra_steps(start, calc, xtb, fmax=args.fmax, steps=1000)
            entry[name] = {"own_steps": res.mlip_steps, "own_converged": res.mlip.converged,
                           "xtb_extra_steps": res.extra_steps, "xtb_converged": res.reference.converged,
                           "xtb_energy_above_xtb_minimum_meV": 1e3 * (res.reference_energy_at_mlip_minimum
                                                                      - res.reference_energy),
                           "rmsd_to_xtb_minimum_A": res.rmsd, "seconds": time.perf_counter() - t0,
                           **{k: v for k, v in entry.get(name, {}).items() if k.startswith(("dft_", "rmsd_to_dft"))}}
            minimum = res.mlip.atoms.copy()
            minimum.calc = None
            if mol == args.dft_molecule and (args.dft_single_points or name in args.dft_extra_steps):
                dft = pyscf_calculator()
                t0 = time.perf_counter()
                entry[name]["dft_max_force_at_minimum_eV_per_A"] = max_force(minimum, dft)
                if name in args.dft_extra_steps:
                    ref = relax(minimum, dft, fmax=args.fmax, steps=200)
                    entry[name].update({"dft_extra_steps": ref.n_steps, "dft_converged": ref.converged,
                                        "rmsd_to_dft_minimum_A": kabsch_rmsd(minimum.positions, ref.atoms.positions)})
                entry[name]["dft_seconds"] = time.perf_counter() - t0
            log.info("%s %s: %s", mol, name, entry[name])
            write_json_atomic(out, report)  # after every variant: a stopped run keeps what it did
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
