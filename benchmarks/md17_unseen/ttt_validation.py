"""Choose TTT settings on a validation molecule that is neither a training nor a test molecule.

The MD17 test molecules (naphthalene, toluene) must not tune anything. Acetylacetone (acac, BOTNet
data, PBE-D3/def2-SVP: the rMD17 functional and basis plus a D3 dispersion term) is unseen by the
model too, so it stands in for "a new molecule": a grid of TTT settings, fixed before any acac
result was seen, runs on it with the same protocol as ``run.py`` (an sGDML prior fitted on 50
labelled frames, TTT from one starting frame, force MAE of the main head on 200 held-out frames),
and the setting with the lowest acac force MAE is the one to carry to the test molecules.

    python benchmarks/md17_unseen/ttt_validation.py --model benchmarks/md17_unseen/results/md17-abu-sgdml.pt

writes ``results/ttt_validation/acac.json`` and ``.md`` (``acac-xtb.*`` with ``--prior xtb``, for the
label-free default model ``ttcalc/model/pretrained/md17-abu.pt``).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from md_protocols.report import write_json_atomic
from ttcalc import TTTCalculator
from ttcalc.data import read_frames
from ttcalc.diagnostics.evaluation import evaluate_calculator
from ttcalc.paths import dataset_path
from ttcalc.priors import SGDMLPrior, XTBPrior

HERE = Path(__file__).resolve().parent
_ROUND1_CHOSEN = {"max_steps": 1000, "stop_at_id_loss": False, "parameters": "representation"}
#: the grids, each fixed in advance: (name, TTT overrides)
GRIDS = {
    # round 1: how long and what to adapt
    "steps": [
        ("default (200 steps, stop at the ID prior loss)", {}),
        ("1000 steps, stop at the ID prior loss", {"max_steps": 1000}),
        ("1000 steps, no ID-loss stop", {"max_steps": 1000, "stop_at_id_loss": False}),
        ("1000 steps, no ID-loss stop, all of θR", _ROUND1_CHOSEN),
    ],
    # round 2, from round 1's choice (on both models): which configurations TTT fits. The default
    # frames are 48 prior-MD snapshots 5 fs apart, 0.24 ps in all, while the errors are measured over
    # the thermal ensemble; after TTT the prior head is still 50 meV/Å from the prior there
    # (results/sgdml50/head_gap.json). Longer prior MD tests whether wider coverage closes that gap.
    "frames": [
        ("round 1's choice (48 frames over 0.24 ps)", _ROUND1_CHOSEN),
        ("48 frames over 2.4 ps", {**_ROUND1_CHOSEN, "md_interval": 100}),
        ("96 frames over 4.8 ps", {**_ROUND1_CHOSEN, "md_interval": 100, "n_frames": 96}),
    ],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prior", default="sgdml", choices=["sgdml", "xtb"],
                   help="sgdml: fitted on --prior-frames labelled acac frames; xtb: GFN2-xTB, no labels")
    p.add_argument("--prior-frames", type=int, default=50)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--temperature", default="600K", choices=["300K", "600K"])
    p.add_argument("--out", default=str(HERE / "results" / "ttt_validation"))
    p.add_argument("--grid", default="steps", choices=list(GRIDS), help="which grid of TTT settings to run")
    p.add_argument("--name", default=None,
                   help="output file stem (default: acac, or acac-xtb with --prior xtb, then -GRID for "
                        "grids other than 'steps')")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rng = np.random.default_rng(0)
    train = read_frames(dataset_path("acac", f"train_{args.temperature}.xyz"))
    test = read_frames(dataset_path("acac", f"test_MD_{args.temperature}.xyz"))
    test = [test[i] for i in np.sort(rng.choice(len(test), size=args.n_test, replace=False))]
    prior = (SGDMLPrior.from_frames(train, n_train=args.prior_frames, seed=0) if args.prior == "sgdml"
             else XTBPrior())
    start = test[0].copy()
    start.calc = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default_stem = ("acac" if args.prior == "sgdml" else f"acac-{args.prior}") + (
        "" if args.grid == "steps" else f"-{args.grid}")
    stem = args.name or default_stem
    res = {"config": vars(args), "molecule": "acac", "level_of_theory": "PBE-D3/def2-SVP",
           "prior": evaluate_calculator(prior.as_calculator(), test)}
    res["mlip"] = evaluate_calculator(TTTCalculator(args.model, disagreement_every=0), test)
    res["settings"] = []
    for name, overrides in GRIDS[args.grid]:
        calc = TTTCalculator(args.model, prior=prior, disagreement_every=0)
        t0 = time.perf_counter()
        report = calc.adapt(start, **overrides)
        res["settings"].append({"name": name, "overrides": overrides,
                                "ttt": report.summary(), "seconds": time.perf_counter() - t0,
                                "errors": evaluate_calculator(calc, test)})
        logging.info("%s: force MAE %.1f meV/Å", name, res["settings"][-1]["errors"]["force_mae_meV_A"])
        write_json_atomic(out / f"{stem}.json", res)
    best = min(res["settings"], key=lambda s: s["errors"]["force_mae_meV_A"])
    res["chosen"] = best["name"]
    write_json_atomic(out / f"{stem}.json", res)
    prior_name = f"sGDML-{args.prior_frames}" if args.prior == "sgdml" else "GFN2-xTB"
    lines = [f"acac (PBE-D3/def2-SVP), {prior_name} prior, {args.n_test} test frames "
             f"({args.temperature}); force MAE in meV/Å, energy MAE in meV (offset removed)", "",
             "| variant | force MAE | energy MAE | TTT steps | stop |", "|---|---|---|---|---|",
             f"| prior alone | {res['prior']['force_mae_meV_A']:.1f} | {res['prior']['energy_mae_offset_meV']:.1f} | – | – |",
             f"| MLIP, no TTT | {res['mlip']['force_mae_meV_A']:.1f} | {res['mlip']['energy_mae_offset_meV']:.1f} | – | – |"]
    for s in res["settings"]:
        lines.append(f"| TTT: {s['name']} | {s['errors']['force_mae_meV_A']:.1f} | "
                     f"{s['errors']['energy_mae_offset_meV']:.1f} | {s['ttt']['steps']} | {s['ttt']['stop_reason']} |")
    lines += ["", f"chosen: {res['chosen']}"]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
