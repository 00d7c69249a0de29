"""The ``ttcalc`` command line: train, eval, md, diagnose, bench and demo."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("ttcalc.app.cli")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("ttcalc").setLevel(logging.INFO if verbose else logging.WARNING)


def cmd_train(args) -> int:
    import torch

    from ttcalc.train import load_config, train_model
    from ttcalc.train.trainer import TrainingInterrupted, init_distributed_from_env

    cfg = load_config(args.config)
    if args.output:
        cfg.output = args.output
    if args.init_checkpoint:
        cfg.init_checkpoint = args.init_checkpoint
    if args.threads:
        torch.set_num_threads(args.threads)
    joined = init_distributed_from_env()
    try:
        _, report = train_model(cfg, progress=not args.quiet, resume=args.resume, release=args.release)
    except TrainingInterrupted as exc:
        print(f"{exc}\nresume with: ttcalc train --config {args.config} --resume", file=sys.stderr)
        return 143
    finally:
        if joined:
            torch.distributed.destroy_process_group()
    print(json.dumps({k: report[k] for k in ("n_train", "n_val", "molecules", "stages", "timings")}, indent=2))
    print(f"model written to {cfg.output}")
    return 0


def cmd_eval(args) -> int:
    from ttcalc.diagnostics.evaluation import evaluate_frames, load_eval_frames

    from ttcalc import load_model

    model = load_model(args.model, dtype=args.dtype)
    frames = load_eval_frames(args.data, split=args.split, n=args.n, seed=args.seed)
    metrics = evaluate_frames(model, frames, head=args.head)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_md(args) -> int:
    from ase.io import read

    from md_protocols import run_md

    from ttcalc.calculator import TTTCalculator

    atoms = read(args.structure)
    calc = TTTCalculator(args.model, prior=args.prior, ttt=args.ttt, radius_refinement=args.rr,
                         disagreement_every=0)
    atoms.calc = calc
    result = run_md(atoms, calc, ensemble=args.ensemble, temperature_K=args.temperature,
                    timestep_fs=args.timestep, time_ps=args.time_ps, seed=args.seed,
                    trajectory=args.trajectory, progress=not args.quiet)
    summary = {k: getattr(result, k) for k in ("status", "time_ps", "steps", "n_atoms", "seconds", "message")}
    summary["trajectory"] = args.trajectory
    if calc.last_adaptation is not None:
        summary["ttt"] = calc.last_adaptation.summary()
    summary["cutoff"] = calc.cutoff
    print(json.dumps(summary, indent=2, default=str))
    return 0 if result.status == "finished" else 1


def cmd_diagnose(args) -> int:
    from ase.io import read

    from ttcalc import load_model, load_pretrained
    from ttcalc.priors import make_prior
    from ttcalc.diagnostics.shifts import diagnose, format_table

    atoms = read(args.structure)
    model = load_model(args.model) if args.model else load_pretrained()
    report = diagnose(atoms, model, prior=make_prior(args.prior))
    print(format_table(report))
    return 0


def cmd_demo(args) -> int:
    from ttcalc.app.demo import run_demo

    return run_demo(molecule=args.molecule, output=args.output, time_ps=args.time_ps,
                    progress=not args.quiet)


def cmd_finetune(args) -> int:
    from ttcalc.calculator import TTTCalculator
    from ttcalc.data import read_frames

    frames = read_frames(args.frames)
    calc = TTTCalculator(args.model, prior=args.prior, compile=False, disagreement_every=0)
    if args.ttt:
        print(json.dumps({"ttt": calc.adapt(frames[0]).summary()}, indent=2))
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("lr", args.lr)) if v is not None}
    report = calc.finetune(frames, **overrides)
    calc.model.save(args.out, metadata={"finetune": report.summary(), "frames": str(args.frames)})
    print(json.dumps({"finetune": report.summary(), "model": args.out}, indent=2))
    return 0


def cmd_data(args) -> int:
    from ttcalc.data.catalog import dataset_status, download

    if args.data_command == "list":
        rows = dataset_status()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            where = f"{r['where']} ({r['size_mb']} MB, via {r['found_via']})" if r["present"] else \
                "missing; looked in " + ", ".join(r["looked_in"])
            print(f"{r['name']:7s} {'present' if r['present'] else 'MISSING':8s} {where}\n"
                  f"        licence {r['licence']}; source {r['source']}")
        return 0
    try:
        path = download(args.name, dest=args.dest, url=args.url, sha256=args.sha256, progress=not args.quiet)
    except (ValueError, ConnectionError) as exc:
        print(f"ttcalc data download: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name} installed in {path}")
    return 0


def cmd_bench(args) -> int:
    from ttcalc.app.benchmark import run_md_benchmark

    return run_md_benchmark(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttcalc", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a multi-head potential from a TOML/YAML config")
    t.add_argument("--config", required=True, help="training config (.toml/.yaml)")
    t.add_argument("--output", help="override the output checkpoint path")
    t.add_argument("--init-checkpoint", help="pretrain-freeze-finetune: take the representation and prior "
                   "head from this checkpoint and skip pretraining; joint: start from all its weights")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--resume", action="store_true", help="continue a stopped run from its state files "
                   "(<output>.<stage>.state.pt): weights, optimizer, schedule, EMA, RNG and epoch")
    t.add_argument("--release", action="store_true", help="train nothing: write <output> from the best weights "
                   "a stopped run has reached, with its training statistics, and keep its state files, so "
                   "that --resume continues it")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("finetune", help="fine-tune a model on labelled frames of one system")
    f.add_argument("model", help="checkpoint path or shipped model name")
    f.add_argument("frames", help="labelled frames (extended XYZ or ASE db with energies and forces)")
    f.add_argument("--out", required=True, help="where to write the fine-tuned checkpoint")
    f.add_argument("--ttt", action="store_true", help="test-time train on the prior first (needs --prior)")
    f.add_argument("--prior", default=None, help="prior for --ttt: xtb, tblite, emt, lj")
    f.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default 1000)")
    f.add_argument("--lr", type=float, default=None, help="learning rate (default 5e-4, Adam)")
    f.set_defaults(func=cmd_finetune)

    d = sub.add_parser("data", help="reference data sets: list where they are, download public originals")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("list", help="each data set, where it is looked for, whether present, size, "
                         "source and licence")
    dl.add_argument("--json", action="store_true", help="print the table as JSON")
    dd = dsub.add_parser("download", help="fetch the public originals, verify their pinned checksums, "
                         "convert them to the readers' layout")
    dd.add_argument("name", help="data set name (see `ttcalc data list`)")
    dd.add_argument("--dest", help="destination folder (default: the user cache's data/ folder)")
    dd.add_argument("--url", help="a single-file data set (rmd17, qm9): download from this address "
                    "instead (a mirror)")
    dd.add_argument("--sha256", help="a single-file data set: expect this SHA-256 instead of the pinned one")
    dd.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_data)

    e = sub.add_parser("eval", help="energy/force errors of a model on labelled frames")
    e.add_argument("--model", required=True, help="checkpoint path or shipped model name")
    e.add_argument("--data", required=True, help="rMD17 molecule name, or an extxyz/db file")
    e.add_argument("--split", default="test_01", help="rMD17 split (default test_01)")
    e.add_argument("--n", type=int, default=None, help="number of frames drawn (default: all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the frame draw")
    e.add_argument("--head", default="main", help="energy head to evaluate (main or prior)")
    e.add_argument("--dtype", default="float32", help="float32 or float64")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("md", help="run MD with TTTCalculator")
    m.add_argument("structure", help="starting structure (any file ASE reads)")
    m.add_argument("--model", default=None, help="checkpoint or shipped name (default: md17-abu)")
    m.add_argument("--prior", default=None, help="prior for TTT: xtb, tblite, emt, lj, sgdml (default: none)")
    m.add_argument("--ttt", default="off", choices=["off", "auto", "always"],
                   help="test-time training: off, auto (once per new system, on its first calculation), always")
    m.add_argument("--rr", action="store_true", help="radius refinement")
    m.add_argument("--ensemble", default="nvt", choices=["nvt", "nve"], help="Langevin NVT or velocity-Verlet NVE")
    m.add_argument("--temperature", type=float, default=500.0, help="K (default 500)")
    m.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    m.add_argument("--time-ps", type=float, default=1.0, help="simulated time in ps (default 1)")
    m.add_argument("--seed", type=int, default=0, help="seed of the initial velocities and thermostat")
    m.add_argument("--trajectory", default=None, help="write the trajectory here (.traj)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_md)

    d = sub.add_parser("diagnose", help="distribution-shift diagnostics of a structure")
    d.add_argument("structure", help="structure to diagnose (any file ASE reads)")
    d.add_argument("--model", default=None, help="checkpoint or shipped name (default: md17-abu)")
    d.add_argument("--prior", default="xtb", help="prior whose force norms are compared (default xtb)")
    d.set_defaults(func=cmd_diagnose)

    demo = sub.add_parser("demo", help="adapt the embedded model to a molecule and run a short MD")
    demo.add_argument("--molecule", default=None, help="an .xyz file (default: naphthalene)")
    demo.add_argument("--output", default="ttcalc_demo", help="folder for the report and plot")
    demo.add_argument("--time-ps", type=float, default=2.0, help="simulated time in ps (default 2)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bm = bsub.add_parser("md", help="MD stability / h(r) / NVE benchmark on rMD17 molecules")
    bm.add_argument("--model", default=None, help="checkpoint or shipped name (default: md17-abu)")
    bm.add_argument("--molecules", nargs="+", default=["naphthalene", "toluene"], help="rMD17 molecules")
    bm.add_argument("--seeds", type=int, default=3, help="independent trajectories per molecule")
    bm.add_argument("--time-ps", type=float, default=100.0, help="simulated time per trajectory in ps")
    bm.add_argument("--ttt", action="store_true", help="test-time train before MD")
    bm.add_argument("--rr", action="store_true", help="radius refinement before MD")
    bm.add_argument("--prior", default="xtb", help="prior for TTT (default xtb)")
    bm.add_argument("--ensembles", nargs="+", default=["nvt", "nve"], help="nvt and/or nve")
    bm.add_argument("--processes", type=int, default=2, help="worker processes")
    bm.add_argument("--output", default="bench_md", help="output folder")
    bm.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # compiled kernels persist in ttcalc's user cache, so a second run reuses them (a user's own
    # TORCHINDUCTOR_CACHE_DIR wins)
    from ttcalc.paths import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir("inductor")))
    _setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
