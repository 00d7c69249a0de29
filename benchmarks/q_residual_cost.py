"""What Q-residual uncertainty costs per calculator call.

``TTTCalculator(q_residual=True)`` reads the per-atom features that the energy pass already
computed (an extra output of the same compiled graph) and projects them on the checkpoint's PCA:
Q = ‖(x − μ)(I − P_k P_kᵀ)‖² per atom. This times ``atoms.get_forces()`` with the shipped
``md17-abu`` on one rMD17 frame, with Q on and off, alternating call by call on fresh positions
(0.01 Å displacements) so machine load hits both alike; the result is the median per call of each
and their ratio. ``--eager`` uses the eager dense kernel instead of the compiled one (no compile).

Run: ``python benchmarks/q_residual_cost.py [--molecule naphthalene] [--calls 400] [--eager]``;
writes ``benchmarks/results/q_residual_cost.json`` and prints it.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from md_speed import RESULTS, Displacer, benchmark_frame, machine_info, write_result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", default="naphthalene", help="rMD17 molecule")
    p.add_argument("--calls", type=int, default=400, help="timed calls of each setting")
    p.add_argument("--eager", action="store_true", help="eager dense kernel (no compile)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(RESULTS / "q_residual_cost.json"), help="JSON output")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ttcalc import TTTCalculator

    frame = benchmark_frame(args.molecule)
    calcs = {on: TTTCalculator(model="md17-abu", compile=not args.eager, disagreement_every=0, q_residual=on)
             for on in (True, False)}
    atoms = {on: frame.copy() for on in calcs}
    move = Displacer(frame)
    for on, calc in calcs.items():  # compile and warm up, untimed
        atoms[on].calc = calc
        for _ in range(5):
            atoms[on].positions = move()
            atoms[on].get_forces()
    times = {True: [], False: []}
    for _ in range(args.calls):
        pos = move()
        for on in (True, False):
            atoms[on].positions = pos
            t0 = time.perf_counter()
            atoms[on].get_forces()
            times[on].append(time.perf_counter() - t0)
    med = {on: float(np.median(t) * 1e3) for on, t in times.items()}
    res = {"molecule": args.molecule, "n_atoms": len(frame), "compiled": not args.eager,
           "threads": args.threads, "calls": args.calls, "median_ms_with_q": med[True],
           "median_ms_without_q": med[False], "ratio": med[True] / med[False],
           "q_last": calcs[True].results["q_residual"], "machine": machine_info()}
    write_result(res, args.out)
    print(json.dumps(res, indent=2))
    print(f"Q-residual cost: {med[True]:.3f} vs {med[False]:.3f} ms per call, ratio {res['ratio']:.3f}x")
    return res


if __name__ == "__main__":
    main()
