"""Adapt the embedded model to your own molecule, then run MD with it.

Shows: ``TTTCalculator`` with the GFN2-xTB prior (label-free test-time training), the shift
diagnostics before and after, and NVT MD at 500 K through ``md_protocols.run_md``.
Takes: about a minute with ``--quick`` (a 0.025 ps run, eager kernel); a few minutes otherwise
(1 ps; the first MD call compiles the kernel once).

    python examples/adapt_and_run_md.py [molecule.xyz] [--quick]
"""
from __future__ import annotations

import argparse

from ase.io import read

from md_protocols import run_md
from ttcalc import TTTCalculator
from ttcalc.app.demo import naphthalene


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("structure", nargs="?", help="an .xyz file (default: naphthalene)")
    p.add_argument("--quick", action="store_true", help="a 0.025 ps run on the eager kernel")
    args = p.parse_args(argv)
    atoms = read(args.structure) if args.structure else naphthalene()
    calc = TTTCalculator(prior="xtb", compile=not args.quick, disagreement_every=0)
    report = calc.adapt(atoms, max_steps=10) if args.quick else calc.adapt(atoms)
    print(f"TTT: {report.steps} steps, prior loss {report.prior_loss_start:.4g} -> {report.prior_loss_end:.4g}, "
          f"force disagreement with xTB {report.force_disagreement_before:.3f} -> "
          f"{report.force_disagreement_after:.3f} eV/Å")
    result = run_md(atoms, calc, ensemble="nvt", temperature_K=500, timestep_fs=0.5,
                    time_ps=0.025 if args.quick else 1.0, progress=not args.quick)
    print(f"MD: {result.status} after {result.time_ps:.3f} ps ({result.steps} steps, {result.seconds:.1f} s)")


if __name__ == "__main__":
    main()
