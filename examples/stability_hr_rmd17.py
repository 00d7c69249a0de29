"""A stability benchmark with h(r) on rMD17 (Fu et al., "Forces are not enough", TMLR 2023).

Shows: NVT MD of an rMD17 molecule from a ``test_01`` frame, the time its bonds stay within
0.5 Å of the reference lengths, and the h(r) MAE against the DFT-MD frames of rMD17
(reads ``$TTCALC_DATA``; see ``ttcalc data list``).
Takes: about a minute with ``--quick`` (0.05 ps, eager kernel), some minutes for 2 ps otherwise.

    python examples/stability_hr_rmd17.py [--molecule naphthalene] [--quick]
"""
from __future__ import annotations

import argparse

import numpy as np

from md_protocols import bonds_stability, hr, hr_mae, run_md
from ttcalc import TTTCalculator
from ttcalc.data import load_rmd17


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", default="naphthalene", help="rMD17 molecule")
    p.add_argument("--quick", action="store_true", help="0.05 ps on the eager kernel")
    args = p.parse_args(argv)
    reference = load_rmd17(args.molecule, "test_01")
    ref_pos = np.stack([a.positions for a in reference])
    calc = TTTCalculator(compile=not args.quick, disagreement_every=0)
    result = run_md(reference[0], calc, ensemble="nvt", temperature_K=500, timestep_fs=0.5,
                    time_ps=0.05 if args.quick else 2.0, log_interval=10, progress=not args.quick)
    positions = np.asarray(result.frames)
    stable = bonds_stability(positions, ref_pos, numbers=reference[0].numbers,
                             frame_interval_fs=result.frame_interval_fs)
    r, h_md = hr(positions)
    _, h_ref = hr(ref_pos)
    print(f"{args.molecule}: {result.status} after {result.time_ps:.2f} ps; bonds stable for {stable:.2f} ps; "
          f"h(r) MAE against rMD17 {hr_mae(h_md, h_ref, r):.4f}")


if __name__ == "__main__":
    main()
