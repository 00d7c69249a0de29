"""Learning during MD, Wong & Yang (arXiv 2603.10159, 2026) with this project's models: does one
trajectory fine-tuned at set points ("periodic") beat labelling frames of many trajectories of the
unadapted model ("naive"), on the same label budget?

For one rMD17 molecule the potential is ``md17-abu`` (v4, GFN2-xTB prior head) and the reference
labels come from a stand-in for DFT: sGDML fitted on ``--ref-frames`` ``train_01`` frames (its own
force MAE against the DFT labels of ``test_01`` is measured and reported with every result). Each
method has a learning phase of ``--learn-ps`` (the same number of MD steps for all) and the same
label budget:

* ``none``: no learning (the unadapted model);
* ``naive``: ``--replicas`` independent trajectories of the unadapted model, ``learn_ps /
  replicas`` each; ``budget`` frames drawn from them, labelled, one ``calc.finetune``;
* ``periodic``: one trajectory; every ``learn_ps / (budget / n_label)`` it labels ``n_label``
  frames of its recent past and fine-tunes on all labels so far, then continues with the new weights;
* ``periodic-q``: the same, but it updates when the Q-residual of the current frame exceeds the
  training limit (at most every ``interval / 4`` steps), on the most uncertain recent frames;
* ``periodic-ttt``: as ``periodic`` without reference labels: test-time training on the model's own
  GFN2-xTB prior (label-free; it uses no budget of reference labels).

Then every learned model runs an evaluation trajectory of ``--eval-ps`` from the same start and seed.
Reported per method: force MAE (meV/Å) against DFT on 200 ``test_01`` frames; force MAE against the
reference on 20 frames of the model's own evaluation trajectory; Fu et al.'s stability time (bonds
within 0.5 Å of the reference MD's mean lengths); h(r) MAE against the reference potential's own MD
at the same temperature; reference labels used; wall time.

``--reference pyscf`` labels with real DFT instead: PBE/def2-SVP (the rMD17 level) from PySCF with
density fitting of the Coulomb term, cached on disk per frame so an interrupted run pays for no label
twice. Its force MAE against rMD17's own labels is measured on ``--ref-check`` test_01 frames. The
h(r) and bond references still come from the sGDML stand-in's MD (DFT MD is out of reach here), and
the own-trajectory error uses ``--own-frames`` frames. Results go to ``results/pyscf/``.

    python benchmarks/online/online_md.py --reference pyscf --molecules naphthalene --temperatures 500 \
        --methods naive periodic --own-frames 6

Each (molecule, temperature, method) writes its JSON as it finishes (``results/<mol>_<T>K_<method>.json``);
a rerun skips the finished ones. ``summary.md`` is rebuilt from all of them.

    python benchmarks/online/online_md.py --molecules naphthalene --temperatures 500 800
    python benchmarks/online/online_md.py --quick      # toluene, 500 K, short runs: a smoke test
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from md_protocols import (OnlineSettings, PeriodicLearning, bonds_stability, hr, hr_mae, label_frames,
                          naive_update, run_md)
from md_protocols.files import atomic_write
from ttcalc import MDLearner, TTTCalculator
from ttcalc.data import load_rmd17
from ttcalc.diagnostics.evaluation import evaluate_calculator
from ttcalc.priors import CalculatorPrior, SGDMLPrior, XTBPrior, pyscf_calculator
from ttcalc.priors.base import PriorCalculator

HERE = Path(__file__).resolve().parent
METHODS = ("none", "naive", "periodic", "periodic-q", "periodic-ttt")
log = logging.getLogger("online_md")


def reference(molecule: str, n_frames: int) -> tuple[SGDMLPrior, float]:
    """The DFT stand-in and its force MAE (meV/Å) on 200 DFT-labelled test_01 frames."""
    ref = SGDMLPrior.from_frames(load_rmd17(molecule, "train_01", n=n_frames, seed=0), n_train=n_frames)
    return ref, evaluate_calculator(ref.as_calculator(), load_rmd17(molecule, "test_01", n=200, seed=0))["force_mae_meV_A"]


def dft_labels(molecule: str, n_check: int) -> tuple[PriorCalculator, float]:
    """PBE/def2-SVP from PySCF (RI-J) and its force MAE (meV/Å) against rMD17's labels of
    ``n_check`` test_01 frames."""
    # through the on-disk label cache: a rerun after a crash pays for no DFT label twice
    prior = CalculatorPrior(pyscf_calculator(density_fit=True), name="pyscf-pbe-def2svp-rij")
    source = prior.as_calculator(cache=True)
    return source, evaluate_calculator(source, load_rmd17(molecule, "test_01", n=n_check, seed=1))["force_mae_meV_A"]


def make_calc(prior=None) -> TTTCalculator:
    return TTTCalculator(model="md17-abu", prior=prior, compile=True, disagreement_every=0)


def md(atoms, calc, args, temperature: float, time_ps: float, seed: int, observers=()):
    return run_md(atoms, calc, ensemble="nvt", temperature_K=temperature, timestep_fs=0.5, time_ps=time_ps,
                  log_interval=args.log_interval, seed=seed, progress=False, observers=observers)


def learn(method: str, start, args, temperature: float, ref_calc) -> tuple[TTTCalculator, dict]:
    """The learning phase of ``method``; the calculator with its final weights and what happened."""
    n_updates = args.budget // args.n_label
    interval = int(round(args.learn_ps * 1000 / 0.5 / n_updates))
    fit = {"max_steps": args.fit_steps}
    if method == "none":
        return make_calc(), {"labels_used": 0}
    if method == "naive":
        calc = make_calc()
        trajs = []
        for k in range(args.replicas):
            res = md(start, calc, args, temperature, args.learn_ps / args.replicas, seed=100 + k)
            trajs.append([start.__class__(numbers=start.numbers, positions=p) for p in res.frames])
        out = naive_update(MDLearner(calc, "finetune", **fit), trajs, ref_calc, args.budget, seed=0)
        return calc, {"labels_used": len(out["frames"]), "updates": [out["report"]]}
    ttt = method == "periodic-ttt"
    calc = make_calc(XTBPrior() if ttt else None)
    settings = OnlineSettings(trigger="q_residual" if method == "periodic-q" else "interval",
                              interval=interval // 4 if method == "periodic-q" else interval,
                              n_label=args.n_label, window=interval, label_budget=args.budget)
    online = PeriodicLearning(MDLearner(calc, "adapt" if ttt else "finetune", **fit), None if ttt else ref_calc,
                              settings)
    res = md(start, calc, args, temperature, args.learn_ps, seed=1, observers=[online])
    return calc, {"labels_used": 0 if ttt else online.labels_used, "updates": online.events,
                  "learning_status": res.status, "learning_stable_ps": res.time_ps}


def score(calc, start, args, temperature: float, ref_calc, ref_hr, test) -> dict:
    """Evaluation trajectory of the learned model and the metrics of the module docstring."""
    res = md(start, calc, args, temperature, args.eval_ps, seed=7)
    frames = [start.__class__(numbers=start.numbers, positions=p) for p in res.frames]
    own = frames[:: max(1, len(frames) // args.own_frames)][: args.own_frames]
    own_mae = evaluate_calculator(calc, label_frames(own, ref_calc))["force_mae_meV_A"]
    r, h = hr(np.stack([f.positions for f in frames]))
    return {"test_force_mae_meV_A": evaluate_calculator(calc, test)["force_mae_meV_A"],
            "own_trajectory_force_mae_meV_A": own_mae, "eval_status": res.status,
            "stable_ps": bonds_stability(frames, ref_hr[2], frame_interval_fs=0.5 * args.log_interval),
            "hr_mae": hr_mae(h, ref_hr[1], r)}


def run_cell(molecule: str, temperature: float, method: str, args, labels, ref_name: str, ref_mae: float,
             ref_hr, test) -> dict:
    start = load_rmd17(molecule, "test_01", n=1, seed=0)[0]
    start.calc = None
    t0 = time.perf_counter()
    calc, learned = learn(method, start, args, temperature, labels)
    learn_s = time.perf_counter() - t0
    scores = score(calc, start, args, temperature, labels, ref_hr, test)
    return {"molecule": molecule, "temperature_K": temperature, "method": method, **scores, **learned,
            "learn_seconds": learn_s, "reference": ref_name, "reference_force_mae_meV_A": ref_mae,
            "settings": vars(args)}


def reference_hr(start, ref, args, temperature: float):
    """h(r) of the reference potential's own MD at ``temperature`` (and its frames, for the bonds)."""
    res = md(start, ref.as_calculator(), args, temperature, args.eval_ps, seed=7)
    r, h = hr(res.frames)
    return r, h, res.frames


def summary_table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*_*K_*.json"))]
    lines = ["| molecule | T (K) | method | labels | test_01 force MAE | own-trajectory MAE | stable (ps) | h(r) MAE |",
             "|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (r["molecule"], r["temperature_K"], order[r["method"]])):
        lines.append(f"| {r['molecule']} | {r['temperature_K']:g} | {r['method']} | {r['labels_used']} | "
                     f"{r['test_force_mae_meV_A']:.1f} | {r['own_trajectory_force_mae_meV_A']:.1f} | "
                     f"{r['stable_ps']:.1f} | {r['hr_mae']:.3f} |")
    refs = sorted({(r["molecule"], r["reference"], round(r["reference_force_mae_meV_A"], 1)) for r in rows})
    lines += [""] + [f"Reference for {m}: {name}, force MAE {mae} meV/Å against rMD17's DFT labels of test_01 "
                     f"frames." for m, name, mae in refs]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecules", nargs="+", default=["naphthalene", "toluene"], help="rMD17 molecules")
    p.add_argument("--temperatures", type=float, nargs="+", default=[500.0, 800.0], help="NVT temperatures (K)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="which to run")
    p.add_argument("--learn-ps", type=float, default=6.0, help="MD time of the learning phase")
    p.add_argument("--eval-ps", type=float, default=5.0, help="MD time of the evaluation trajectory")
    p.add_argument("--budget", type=int, default=24, help="reference labels per method")
    p.add_argument("--n-label", type=int, default=4, help="frames labelled per periodic update")
    p.add_argument("--replicas", type=int, default=4, help="trajectories of the naive baseline")
    p.add_argument("--fit-steps", type=int, default=300, help="fine-tuning steps per update at most")
    p.add_argument("--ref-frames", type=int, default=300, help="train_01 frames of the sGDML reference")
    p.add_argument("--reference", choices=("sgdml", "pyscf"), default="sgdml",
                   help="label source: the sGDML stand-in or PBE/def2-SVP from PySCF (module docstring)")
    p.add_argument("--ref-check", type=int, default=3, help="test_01 frames that check the PySCF labels")
    p.add_argument("--own-frames", type=int, default=20, help="frames of the own trajectory scored")
    p.add_argument("--log-interval", type=int, default=20, help="MD steps between logged frames")
    p.add_argument("--quick", action="store_true", help="toluene, 500 K, 0.3 ps phases, budget 4")
    p.add_argument("--out", default=str(HERE / "results"), help="folder of the result files")
    args = p.parse_args(argv)
    if args.quick:
        args.molecules, args.temperatures, args.learn_ps, args.eval_ps = ["toluene"], [500.0], 0.3, 0.3
        args.budget, args.n_label, args.fit_steps, args.ref_frames, args.replicas = 4, 2, 10, 50, 2
        args.out = str(HERE / "results" / "quick")
    if args.reference == "pyscf" and args.out in (p.get_default("out"), str(HERE / "results" / "quick")):
        args.out = str(Path(args.out) / "pyscf")  # results of one reference never stand for the other's
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for molecule in args.molecules:
        ref, ref_mae = reference(molecule, args.ref_frames)
        labels, ref_name = ref.as_calculator(), f"sGDML-{args.ref_frames} (train_01)"
        if args.reference == "pyscf":
            labels, ref_mae = dft_labels(molecule, args.ref_check)
            ref_name = f"PySCF PBE/def2-SVP, RI-J ({args.ref_check} frames checked)"
        test = load_rmd17(molecule, "test_01", n=200, seed=0)
        start = load_rmd17(molecule, "test_01", n=1, seed=0)[0]
        for temperature in args.temperatures:
            ref_hr = None
            for method in args.methods:
                path = out / f"{molecule}_{temperature:g}K_{method}.json"
                if path.exists():
                    continue
                ref_hr = ref_hr or reference_hr(start, ref, args, temperature)
                row = run_cell(molecule, temperature, method, args, labels, ref_name, ref_mae, ref_hr, test)
                with atomic_write(path, "w") as fh:
                    json.dump(row, fh, indent=2, default=float)
                log.info("%s", {k: row[k] for k in ("molecule", "temperature_K", "method", "test_force_mae_meV_A",
                                                    "stable_ps", "hr_mae", "labels_used")})
                (out / "summary.md").write_text(summary_table(out))


if __name__ == "__main__":
    main()
