"""How fast one training step runs: the default (compiled) step against the eager one.

A training step is the forward pass, forces F = −∂E/∂r with a graph to the parameters, and the
parameter gradient of the energy+force loss (``ttcalc.train.losses``, weights 1 and 10): exactly what
``train_stage`` and TTT do per batch. Both paths are :class:`ttcalc.train.force_step.ForceStep`,
``compile=True`` (make_fx trace + inductor, the trainer's default for long stages) and
``compile=False`` (eager PyTorch on the same dense kernel, the trainer before the trace). Each
repeat times every method once, in the same order, on size-bucketed batches of real rMD17
``train_01`` frames of aspirin (21 atoms), benzene and uracil (12); the number per method is the
median over repeats, per frame. Compile time is reported apart, once per batch shape.

Levers, each measured here rather than assumed:

* ``eager_flat``: the eager step on the flat radius graph (torchmd-net's layout), against the
  dense complete-graph kernel for molecules;
* batch size (``--batch-sizes``);
* threads (``--threads``: every method at each count);
* processes (``--gloo``): the eager step in 2 gloo processes of 1 thread, each on half of every
  batch, with the gradient average of ``torchrun`` training (``ttcalc.train.trainer.average_gradients``),
  against 1 process with 2 threads on the whole batch.

The compiled gradients are compared with the eager ones on the first batch of each shape
(relative norm of the difference, largest over parameters).

Run: ``python benchmarks/train_speed.py [--quick]``; JSON on stdout and in
``benchmarks/results/train_speed.json``; the last line ends with the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ttcalc.model.batch import collate
from ttcalc.data import load_rmd17
from md_protocols.files import atomic_write
from ttcalc.train.losses import LossWeights, energy_force_loss
from ttcalc.model.potential import ModelConfig, MultiHeadPotential
from ttcalc.train.force_step import ForceStep
from ttcalc.train.trainer import average_gradients

RESULTS = Path(__file__).resolve().parent / "results"
MOLECULES = ("aspirin", "benzene", "uracil")


def batches(batch_size: int, seed: int = 0) -> list[list]:
    """One batch of ``batch_size`` labelled train_01 frames per molecule."""
    return [load_rmd17(m, "train_01", n=batch_size, seed=seed) for m in MOLECULES]


def step_fn(model: MultiHeadPotential, step: ForceStep, frames, dense: bool = True):
    batch = collate(frames, model.cutoff, dtype=model.dtype, dense=dense)
    e = torch.tensor([a.get_potential_energy() for a in frames], dtype=model.dtype)
    f = torch.tensor(np.concatenate([a.get_forces() for a in frames]), dtype=model.dtype)

    def run() -> dict[str, torch.Tensor]:
        out = step(batch)["prior"]
        loss, _ = energy_force_loss(out, e, f, batch.n_atoms, LossWeights(1.0, 10.0))
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    return run


def max_rel_grad_error(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-30)) for n in b)


def measure(batch_size: int, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig())
    model.set_trainable("representation", "prior")  # the pretraining stage's groups
    eager, compiled = ForceStep(model, ("prior",), compile=False), ForceStep(model, ("prior",), compile=True)
    methods = {"eager": [], "compiled": [], "eager_flat": []}
    runs, grad_err = [], 0.0
    for frames in batches(batch_size):
        run = {"eager": step_fn(model, eager, frames), "compiled": step_fn(model, compiled, frames),
               "eager_flat": step_fn(model, eager, frames, dense=False)}
        ref = {n: g.clone() for n, g in run["eager"]().items()}
        grad_err = max(grad_err, max_rel_grad_error(run["compiled"](), ref))  # compiles the shape
        runs.append(run)
    for _ in range(repeats):
        for name in methods:
            t = time.perf_counter()
            for run in runs:
                run[name]()
            methods[name].append((time.perf_counter() - t) / (len(runs) * batch_size))
    ms = {k: 1000 * statistics.median(v) for k, v in methods.items()}
    return {"batch_size": batch_size, "threads": threads, "ms_per_frame": ms,
            "speedup_compiled_vs_eager": ms["eager"] / ms["compiled"],
            "speedup_dense_vs_flat_eager": ms["eager_flat"] / ms["eager"],
            "compile_seconds": compiled.compile_seconds, "max_rel_grad_error_float32": grad_err}


def _eager_model(threads: int) -> tuple[MultiHeadPotential, ForceStep]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig())
    model.set_trainable("representation", "prior")  # the pretraining stage's groups
    return model, ForceStep(model, ("prior",), compile=False)


def _median_ms_per_frame(one_step, n_frames: int, repeats: int, before=lambda: None) -> float:
    one_step()  # warm-up
    times = []
    for _ in range(repeats):
        before()
        t = time.perf_counter()
        one_step()
        times.append((time.perf_counter() - t) / n_frames)
    return 1000 * statistics.median(times)


def _gloo_rank(rank: int, world: int, port: int, batch_size: int, repeats: int, out: dict) -> None:
    """One rank of the process measurement: its shard of every batch, then the gradient average."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, step = _eager_model(1)
        params = [p for p in model.parameters() if p.requires_grad]
        runs = [step_fn(model, step, frames[rank::world]) for frames in batches(batch_size)]

        def one_step():
            for run in runs:
                run()
                average_gradients(params, world)

        ms = _median_ms_per_frame(one_step, len(runs) * batch_size, repeats, torch.distributed.barrier)
        if rank == 0:
            out["ms_per_frame"] = ms
    finally:
        torch.distributed.destroy_process_group()


def measure_processes(batch_size: int, repeats: int, world: int = 2) -> dict:
    """The eager step: ``world`` gloo processes of 1 thread against 1 process of ``world`` threads."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with torch.multiprocessing.Manager() as manager:
        out = manager.dict()
        torch.multiprocessing.spawn(_gloo_rank, args=(world, port, batch_size, repeats, out), nprocs=world)
        processes = out["ms_per_frame"]
    model, step = _eager_model(world)
    runs = [step_fn(model, step, frames) for frames in batches(batch_size)]
    threads = _median_ms_per_frame(lambda: [run() for run in runs], len(runs) * batch_size, repeats)
    return {"batch_size": batch_size, "world": world, "method": "eager",
            "ms_per_frame": {"threads": threads, "gloo_processes": processes},
            "speedup_processes_vs_threads": threads / processes}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 16, 2 threads, 3 repeats (under 5 min)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gloo", action="store_true", help="also 2 gloo processes against 2 threads (eager step)")
    p.add_argument("--out", default=str(RESULTS / "train_speed.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.threads, args.repeats = [16], [2], 3
    rows = [measure(b, t, args.repeats) for t in args.threads for b in args.batch_sizes]
    result = {"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__},
              "molecules": list(MOLECULES), "model": "TensorNet 64 channels, 2 layers (ModelConfig())",
              "rows": rows}
    if args.gloo:
        result["processes"] = [measure_processes(b, args.repeats) for b in args.batch_sizes]
    with atomic_write(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    head = max((r for r in rows if r["threads"] == max(args.threads)), key=lambda r: r["speedup_compiled_vs_eager"])
    print(f"train step, compiled vs eager, {head['threads']} threads, batch {head['batch_size']}: "
          f"{head['ms_per_frame']['compiled']:.2f} vs {head['ms_per_frame']['eager']:.2f} ms/frame, "
          f"{head['speedup_compiled_vs_eager']:.1f}x")
    return result


if __name__ == "__main__":
    main()
