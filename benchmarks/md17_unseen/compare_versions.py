"""The ship rule for a new version of a shipped model: it replaces the shipped one only if its force
MAE is lower on the ``test_01`` frames of *every* training molecule (200 frames each, seed 0, the
frames every earlier version was judged on). Test molecules play no part.

Prints one JSON object (per molecule: force and energy MAE of both, and the verdict) and writes it to
``--out``; the last line says ``ship`` or ``keep``.

    python benchmarks/md17_unseen/compare_versions.py --candidate benchmarks/md17_unseen/results/md17-abu-sgdml-v4.pt \
        --shipped md17-abu-sgdml --out benchmarks/md17_unseen/results/versions/md17-abu-sgdml-v4.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from md_protocols.report import write_json_atomic
from ttcalc import load_model, load_pretrained
from ttcalc.data import load_rmd17
from ttcalc.diagnostics.evaluation import evaluate_frames
from ttcalc.model import PRETRAINED


def compare(candidate, shipped, n_test: int = 200) -> dict:
    """Per training molecule, the errors of both models and whether the candidate's force MAE is lower."""
    out = {}
    for mol in shipped.stats.molecules:
        frames = load_rmd17(mol, "test_01", n=n_test, seed=0)
        new, old = evaluate_frames(candidate, frames), evaluate_frames(shipped, frames)
        out[mol] = {"candidate": {k: new[k] for k in ("force_mae_meV_A", "energy_mae_offset_meV")},
                    "shipped": {k: old[k] for k in ("force_mae_meV_A", "energy_mae_offset_meV")},
                    "lower": new["force_mae_meV_A"] < old["force_mae_meV_A"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidate", required=True, help="checkpoint of the new version")
    p.add_argument("--shipped", required=True, choices=sorted(PRETRAINED), help="the shipped model it would replace")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    shipped = load_pretrained(args.shipped)
    result = {"candidate": args.candidate, "shipped": args.shipped, "n_test": args.n_test,
              "molecules": compare(load_model(args.candidate), shipped, args.n_test)}
    result["verdict"] = "ship" if all(m["lower"] for m in result["molecules"].values()) else "keep"
    print(json.dumps(result, indent=1))
    if args.out:
        write_json_atomic(Path(args.out), result)
    print(f"{args.candidate} against {args.shipped}: {result['verdict']}")


if __name__ == "__main__":
    main()
