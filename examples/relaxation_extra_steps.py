"""A relaxation workflow with extra steps against a reference (Kreiman & Krishnapriyan 2025, A.3.1).

Shows: relax a distorted molecule with the MLIP, continue from its minimum with GFN2-xTB, and
count the reference's extra optimizer steps, the RMSD between the two minima and the reference
energy gained; the fewer the extra steps, the closer the MLIP's minimum is to the reference's.
Takes: under a minute (``--quick``: looser fmax, fewer steps).

    python examples/relaxation_extra_steps.py [--quick]
"""
from __future__ import annotations

import argparse

import numpy as np

from md_protocols import relax_extra_steps
from ttcalc.priors import xtb_reference
from ttcalc import TTTCalculator
from ttcalc.app.demo import naphthalene


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fmax 0.1 eV/Å, at most 50 steps")
    args = p.parse_args(argv)
    atoms = naphthalene()
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    fmax, steps = (0.1, 50) if args.quick else (0.01, 1000)
    res = relax_extra_steps(atoms, TTTCalculator(compile=False), xtb_reference(), fmax=fmax, steps=steps)
    print(f"MLIP relaxation: {res.mlip_steps} steps; GFN2-xTB from there: {res.extra_steps} extra steps")
    print(f"RMSD between the minima: {res.rmsd:.3f} Å; xTB energy gained: "
          f"{res.reference_energy_at_mlip_minimum - res.reference_energy:.4f} eV")


if __name__ == "__main__":
    main()
