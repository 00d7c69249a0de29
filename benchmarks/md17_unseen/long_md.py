"""Long MD of the MD17 protocol with batched replicas, saved chunk by chunk.

Seeds of one model and molecule are integrated together (``md_protocols.run_batched_md``: one model
call per step for all replicas) in chunks of ``--chunk-ps``; positions, momenta and thermostat
streams carry over exactly between chunks, and after every chunk the results so far (stability time
per seed by the Fu et al. bond criterion, h(r) MAE against all rMD17 frames, NVE drift) are written
atomically, so a stopped run keeps what it simulated. A prior (``--prior``) runs one ASE trajectory
per seed, extended chunk by chunk the same way; ``--resume`` continues a stopped prior job.

    python benchmarks/md17_unseen/long_md.py --model MODEL.pt --molecule naphthalene \
        --ensemble nvt --seeds 3 --time-ps 100 --out benchmarks/md17_unseen/results/TAG/long
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from md_protocols import BondCollapseCheck, bonds_stability, hr, hr_mae, nve_drift, run_md, stability_summary
from md_protocols.simulate import saved_time_ps, state_path
from md_protocols.batched import run_batched_md
from md_protocols.report import write_json_atomic
from ttcalc import load_model
from ttcalc.app.benchmark import load_prior
from ttcalc.data import load_rmd17, rmd17_arrays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="MLIP checkpoint: replicas integrated together, in chunks")
    src.add_argument("--prior", help="a prior spec (e.g. sgdml-file:PATH, xtb): ASE run_md per seed")
    p.add_argument("--label", default=None, help="variant name in the output (default: model file stem)")
    p.add_argument("--molecule", required=True)
    p.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--time-ps", type=float, default=100.0)
    p.add_argument("--chunk-ps", type=float, default=5.0)
    p.add_argument("--log-interval", type=int, default=20)
    p.add_argument("--out", required=True)
    p.add_argument("--cutoff", type=float, default=None,
                   help="run the model at this graph radius (e.g. the one radius refinement chose)")
    p.add_argument("--trajectories", action="store_true",
                   help="MLIP runs: also write one ASE .traj per seed, chunk by chunk (prior runs always do)")
    p.add_argument("--traj-dir", default=None, help="where the per-seed trajectories go (default OUT/trajectories)")
    p.add_argument("--resume", action="store_true",
                   help="prior runs: continue from the trajectories a stopped job left")
    args = p.parse_args()
    if args.resume and not args.prior:
        p.error("--resume continues prior runs only; an MLIP run restarts (it is batched and fast)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    label = args.label or Path(args.model or args.prior.split(":")[-1]).stem
    out = Path(args.out) / f"{args.molecule}-{label}-{args.ensemble}.json"
    ref_pos = np.asarray(rmd17_arrays(args.molecule).R)
    r, h_ref = hr(ref_pos)
    start = load_rmd17(args.molecule, "test_01", n=1, seed=0)[0]  # the bench's starting frame
    start.calc = None
    check = BondCollapseCheck(ref_pos, numbers=start.numbers)
    seeds = list(range(args.seeds))
    run = run_prior if args.prior else run_model
    run(args, label, out, start, check, seeds, ref_pos, r, h_ref)


def run_model(args, label, out, start, check, seeds, ref_pos, r, h_ref) -> None:
    """All seeds as batched replicas of one model, integrated chunk by chunk (``run_batched_md``)."""
    rngs = {}  # thermostat generators, from the first chunk on (run_batched_md seeds them)
    frames = {s: [] for s in seeds}
    energies = {s: ([], []) for s in seeds}  # times, total energies
    status = {s: "running" for s in seeds}
    stop_ps = {s: None for s in seeds}
    alive, structures, momenta = list(seeds), {s: start.copy() for s in seeds}, None
    done_ps, t0 = 0.0, time.perf_counter()
    model = load_model(args.model)
    if args.cutoff is not None:
        model.set_cutoff(args.cutoff)
    traj = {s: trajectory_folder(args) / f"{args.molecule}-{label}-{args.ensemble}-{s}.traj"
            for s in seeds} if args.trajectories else None
    if traj:
        for path in traj.values():
            path.unlink(missing_ok=True)  # a new run; chunks then append
    while done_ps < args.time_ps - 1e-9 and alive:
        chunk = min(args.chunk_ps, args.time_ps - done_ps)
        res = run_batched_md([structures[s] for s in alive], model, len(alive), ensemble=args.ensemble,
                             temperature_K=500.0, timestep_fs=0.5, time_ps=chunk, friction_per_fs=0.01,
                             seeds=alive, log_interval=args.log_interval, checks=[check], progress=False,
                             momenta=momenta, thermostat_rngs=[rngs[s] for s in alive] if rngs else None,
                             trajectories=[traj[s] for s in alive] if traj else None, append=True)
        still = []
        for s, rr in zip(alive, res):
            rngs[s] = rr.extra["thermostat_rng"]
            skip = 1 if frames[s] else 0  # a chunk's first frame is the previous chunk's last
            frames[s] += list(rr.frames[skip:])
            energies[s][0].extend((rr.times_ps[skip:] + done_ps).tolist())
            energies[s][1].extend(rr.energies["total"][skip:].tolist())
            if rr.status == "finished":
                still.append(s)
                a = start.copy()
                a.positions = rr.extra["final_positions"]
                structures[s] = a
            else:
                status[s], stop_ps[s] = rr.status, done_ps + rr.time_ps
        momenta = (np.stack([r_.extra["final_momenta"] for s, r_ in zip(alive, res) if s in still])
                   if still else None)
        alive = still
        done_ps += chunk
        # the cutoff actually used is recorded: a checkpoint may carry a refined one
        save_chunk(out, summarise(args, label, model.cutoff, frames, energies, status, stop_ps, done_ps,
                                  alive, ref_pos, start, r, h_ref, time.perf_counter() - t0))
    print_summary(out)


def run_prior(args, label, out, start, check, seeds, ref_pos, r, h_ref) -> None:
    """One ASE trajectory per seed, extended chunk by chunk (``run_md(resume=True)``).

    Seeds advance together, one ``--chunk-ps`` at a time, and the results are written after every
    chunk. ``run_md``'s resume restores positions, momenta and the thermostat stream exactly, so the
    chunked run equals one uninterrupted run; with ``--resume`` a stopped job continues from its
    trajectories.
    """
    calc = load_prior(args.prior).as_calculator()
    folder = trajectory_folder(args)
    paths = {s: folder / f"{args.molecule}-{label}-{args.ensemble}-{s}.traj" for s in seeds}
    if not args.resume:
        for path in paths.values():
            path.unlink(missing_ok=True)
            state_path(path).unlink(missing_ok=True)
    reached = {s: saved_time_ps(paths[s]) for s in seeds}
    frames, energies, status, stop_ps = {}, {}, {s: "running" for s in seeds}, {s: None for s in seeds}
    alive, t0 = list(seeds), time.perf_counter()
    # continue from the last chunk boundary every seed has reached
    done_ps = args.chunk_ps * np.floor(min(reached.values()) / args.chunk_ps + 1e-9)
    while True:
        target = min(done_ps + args.chunk_ps, args.time_ps) if done_ps < args.time_ps - 1e-9 else done_ps
        for s in seeds:
            if s not in alive and s in frames:
                continue
            # a seed already past the target (a resumed job) is only read back
            rr = run_md(start, calc, ensemble=args.ensemble, temperature_K=500.0, timestep_fs=0.5,
                        time_ps=max(target, reached[s]), friction_per_fs=0.01, seed=s,
                        log_interval=args.log_interval, checks=[check], progress=False,
                        trajectory=paths[s], resume=True)
            reached[s] = rr.time_ps
            frames[s], energies[s] = list(rr.frames), (rr.times_ps.tolist(), rr.energies["total"].tolist())
            if rr.status != "finished" and s in alive:
                alive.remove(s)
                status[s], stop_ps[s] = rr.status, rr.time_ps
        done_ps = target
        save_chunk(out, summarise(args, label, None, frames, energies, status, stop_ps, done_ps, alive,
                                  ref_pos, start, r, h_ref, time.perf_counter() - t0))
        if done_ps >= args.time_ps - 1e-9 or not alive:
            break
    print_summary(out)


def trajectory_folder(args) -> Path:
    """``--traj-dir``, or OUT/trajectories (created)."""
    folder = Path(args.traj_dir) if args.traj_dir else Path(args.out) / "trajectories"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_chunk(out: Path, result: dict) -> None:
    """Write the results so far (atomically) and log the progress they record."""
    write_json_atomic(out, result)
    running = sum(run["status"] in ("running", "finished") for run in result["runs"])  # not stopped
    logging.info("%s %s %s: %.1f ps done, %d/%d seeds running (%.0f s)", result["molecule"], result["label"],
                 result["ensemble"], result["simulated_ps"], running, len(result["runs"]), result["seconds"])


def print_summary(path: Path) -> None:
    """The result file without its h(r) curves."""
    res = json.loads(path.read_text())
    res = {k: v for k, v in res.items() if k not in ("hr_r", "hr_reference")}
    res["runs"] = [{k: v for k, v in run.items() if k != "hr"} for run in res["runs"]]
    print(json.dumps(res, indent=1))


def summarise(args, label, cutoff, frames, energies, status, stop_ps, done_ps, alive, ref_pos, start, r, h_ref,
              seconds) -> dict:
    runs = []
    interval_fs = args.log_interval * 0.5
    for s in frames:
        f = np.asarray(frames[s])
        entry = {"seed": s, "status": "finished" if s in alive and done_ps >= args.time_ps - 1e-9 else
                 ("running" if s in alive else status[s]),
                 "simulated_ps": done_ps if s in alive else stop_ps[s], "stable_ps": 0.0}
        if len(f) > 1:
            # the time of the first collapsed frame, or the time the frames span
            entry["stable_ps"] = bonds_stability(f, ref_pos, numbers=start.numbers, frame_interval_fs=interval_fs)
            h = hr(f)[1]
            entry["hr_mae"] = hr_mae(h, h_ref, r)
            entry["hr"] = [round(float(x), 6) for x in h]  # the curve, for plots (summarise.py)
        if args.ensemble == "nve" and len(energies[s][0]) > 2:
            entry["drift"] = nve_drift(np.asarray(energies[s][0]), np.asarray(energies[s][1]), len(start))
        runs.append(entry)
    stable = [e["stable_ps"] for e in runs]
    maes = [e["hr_mae"] for e in runs if "hr_mae" in e]
    return {"model": args.model or args.prior, "label": label, "molecule": args.molecule, "ensemble": args.ensemble,
            "cutoff": cutoff, "temperature_K": 500.0, "timestep_fs": 0.5, "friction_per_fs": 0.01, "target_ps": args.time_ps,
            "simulated_ps": done_ps, "seconds": seconds, "runs": runs,
            "stability": stability_summary(stable, full_time_ps=args.time_ps),
            "hr_r": [round(float(x), 6) for x in r], "hr_reference": [round(float(x), 6) for x in h_ref],
            "hr_mae_mean": float(np.mean(maes)) if maes else None}


if __name__ == "__main__":
    main()
