"""How fast MD runs on CPU: the compiled fast path against its baselines, and batched replicas.

Everything is measured side by side in one process, for one rMD17 frame (naphthalene by default):
each repeat times every method once, in the same order, so a change in machine load hits all of
them; the reported number per method is the median over repeats of the per-call median.

* ``fast_md_step``: one whole ASE ``VelocityVerlet`` step with :class:`TTTCalculator` on the
  compiled dense kernel (integrator + ASE calculator plumbing + model), timed step by step;
  and, in a separate phase after the others, alternately with 1 and 2 torch threads.
* ``fast_evaluator`` (and ``fast_evaluator_python_wrapper``): the bare compiled kernel call
  (forward + autograd forces) that the calculator wraps, B = 1.
* ``eager_torchmdnet``: torchmd-net's own TensorNet forward (``net(z, pos, batch)``: its neighbour
  list and Warp kernels) + the energy head + autograd forces, per call.
* ``tblite_gfn2``: ``XTBPrior(backend="tblite")``, GFN2-xTB energy and forces, per call.
* ``sgdml``: ``SGDMLPrior.from_frames`` on 50 rMD17 ``train_01`` frames, per call.
* ``batched``: ``FastEvaluator(replicas=B)`` + :class:`md_protocols.batched.BatchedVelocityVerlet`
  (the integrator of :func:`run_batched_md`), throughput in atom-steps/s for B = 1, 4, 16.

Positions change on every call (an MD step, or a 0.01 Å random displacement of the frame), so no
method can return a cached result. The model is the trained checkpoint
``benchmarks/md17_unseen/results/md17-abu-xtb.pt`` if present, otherwise an untrained
``MultiHeadPotential(ModelConfig())`` (64 channels, 2 layers): timing does not depend on training.
MD restarts from the rMD17 frame every ``RESTART`` steps (untimed), so an untrained model cannot
drift far.

Run: ``python benchmarks/md_speed.py [--steps 40 --repeats 5]``; writes
``benchmarks/results/md_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from ase import Atoms, units
from ase.md.verlet import VelocityVerlet

HERE = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = HERE / "md17_unseen" / "results" / "md17-abu-xtb.pt"
RESULTS = HERE / "results"
#: MD timings restart from the rMD17 frame every this many steps: an untrained model would
#: otherwise pull atoms together within ~50 steps (the calculator rejects overlapping atoms)
RESTART = 10

log = logging.getLogger("md_speed")


@dataclass
class SpeedConfig:
    """What to time and how often."""

    model: str | None = None  # checkpoint path; None: DEFAULT_CHECKPOINT if present, else untrained
    molecule: str = "naphthalene"
    steps: int = 40  # timed calls (MD steps) per method per repeat
    slow_calls: int = 10  # timed calls per repeat for the slow baselines (xTB, eager)
    repeats: int = 5
    replicas: tuple[int, ...] = (1, 4, 16)
    threads: int = 1  # torch intra-op threads for everything but the 2-thread comparison
    temperature_K: float = 500.0
    timestep_fs: float = 0.5
    sgdml_frames: int = 50
    skip_baselines: bool = False
    out: str = str(RESULTS / "md_speed.json")


# --- shared with calculator_overhead.py ---------------------------------------------------------
def load_benchmark_model(path: str | None):
    """(model, description): a checkpoint, or an untrained default TensorNet (seeded)."""
    from ttcalc import load_model
    from ttcalc.model.potential import ModelConfig, MultiHeadPotential

    if path is None and DEFAULT_CHECKPOINT.exists():
        path = str(DEFAULT_CHECKPOINT)
    if path is not None:
        return load_model(path, dtype="float32"), str(Path(path).resolve())
    torch.manual_seed(0)
    model = MultiHeadPotential(ModelConfig(), dtype="float32")
    rep = model.config.representation
    return model, f"untrained MultiHeadPotential(ModelConfig()): {rep.hidden_channels} channels, {rep.num_layers} layers"


def benchmark_frame(molecule: str) -> Atoms:
    """The first rMD17 ``test_01`` frame (seeded draw) of ``molecule``, without its labels."""
    from ttcalc.data import load_rmd17

    atoms = load_rmd17(molecule, "test_01", n=1, seed=0)[0]
    atoms.calc = None
    return atoms


def median_ms(fn: Callable[[], object], n: int) -> float:
    """Median wall time of ``n`` calls of ``fn`` (ms)."""
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e3)


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


# --- the methods --------------------------------------------------------------------------------
class Displacer:
    """Fresh positions on every call: the frame plus a seeded 0.01 Å Gaussian displacement."""

    def __init__(self, atoms: Atoms, seed: int = 0):
        self.base = atoms.positions.copy()
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        return self.base + 0.01 * self.rng.standard_normal(self.base.shape)


class AseMD:
    """An ASE VelocityVerlet trajectory with TTTCalculator, reset to the frame at every repeat."""

    def __init__(self, atoms: Atoms, calc, cfg: SpeedConfig):
        self.frame, self.calc, self.cfg = atoms, calc, cfg
        self.repeat = 0

    def reset(self) -> VelocityVerlet:
        from md_protocols.simulate import _initial_velocities

        atoms = self.frame.copy()
        atoms.calc = self.calc
        _initial_velocities(atoms, self.cfg.temperature_K, np.random.default_rng(self.repeat))
        self.repeat += 1
        dyn = VelocityVerlet(atoms, timestep=self.cfg.timestep_fs * units.fs)
        dyn.step()  # forces at the start (and the compile on the first repeat)
        return dyn

    def step_ms(self, n: int) -> float:
        """Median time of ``n`` steps, restarted from the frame every ``RESTART`` steps (untimed)."""
        times = []
        while len(times) < n:
            dyn = self.reset()
            for _ in range(min(RESTART, n - len(times))):
                t0 = time.perf_counter()
                dyn.step()
                times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3)


def eager_torchmdnet(model, atoms: Atoms) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """torchmd-net's native TensorNet forward (own neighbour list, Warp kernels) + head + forces."""
    net = model.representation.net
    head = model.heads["main"]
    z = torch.as_tensor(atoms.numbers, dtype=torch.long)
    batch = torch.zeros_like(z)

    def call(positions: np.ndarray) -> tuple[float, np.ndarray]:
        pos = torch.tensor(positions, dtype=model.dtype, requires_grad=True)
        x, *_ = net(z, pos, batch)
        energy = head(x, z).sum()
        (grad,) = torch.autograd.grad(energy, pos)
        return float(energy.detach()), -grad.numpy()

    return call


class BatchedMD:
    """B replicas: one compiled FastEvaluator call per step + the batched velocity-Verlet step."""

    def __init__(self, model, atoms: Atoms, replicas: int, cfg: SpeedConfig):
        from md_protocols.batched import BatchedVelocityVerlet
        from ttcalc.model.compiled import FastEvaluator

        self.model, self.frame, self.replicas, self.cfg = model, atoms, replicas, cfg
        self.repeat = 0
        self.evaluator = FastEvaluator(model, atoms.numbers, replicas=replicas, compile=True)
        t0 = time.perf_counter()
        self.force_error = self.evaluator.check(self._start()[0].to(model.dtype))
        self.setup_seconds = time.perf_counter() - t0
        self.integrator = BatchedVelocityVerlet(atoms.get_masses(), cfg.timestep_fs * units.fs)
        self.active = torch.ones(replicas, dtype=torch.bool)

    def _start(self) -> tuple[torch.Tensor, torch.Tensor]:
        from md_protocols.simulate import _initial_velocities

        momenta = []
        for k in range(self.replicas):
            a = self.frame.copy()
            _initial_velocities(a, self.cfg.temperature_K, np.random.default_rng([self.repeat, k]))
            momenta.append(a.get_momenta())
        pos = torch.as_tensor(np.stack([self.frame.positions] * self.replicas), dtype=torch.float64)
        return pos, torch.as_tensor(np.stack(momenta), dtype=torch.float64)

    def forces(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energy, _, forces = self.evaluator(pos.to(self.model.dtype))
        return energy.double(), forces.double()

    def step_ms(self, n: int) -> float:
        """Mean wall time of one batched step over ``n`` steps, restarted every ``RESTART`` (untimed)."""
        elapsed, done = 0.0, 0
        while done < n:
            pos, mom = self._start()
            self.repeat += 1
            _, forces = self.forces(pos)
            chunk = min(RESTART, n - done)
            t0 = time.perf_counter()
            for _ in range(chunk):
                pos, mom, forces, _ = self.integrator.step(pos, mom, forces, self.forces, self.active)
            elapsed += time.perf_counter() - t0
            done += chunk
        return elapsed / n * 1e3


# --- driver -------------------------------------------------------------------------------------
def run(cfg: SpeedConfig) -> dict:
    from ttcalc import TTTCalculator
    from ttcalc.model.compiled import FastEvaluator

    torch.set_num_threads(cfg.threads)
    info_start = machine_info()
    model, model_desc = load_benchmark_model(cfg.model)
    model.requires_grad_(False)
    atoms = benchmark_frame(cfg.molecule)
    n_atoms = len(atoms)
    log.info("model: %s; %s, %d atoms", model_desc, cfg.molecule, n_atoms)

    # single trajectory through the ASE calculator (compiles on the first step)
    calc = TTTCalculator(model, compile=True, disagreement_every=0)
    md = AseMD(atoms, calc, cfg)
    t0 = time.perf_counter()
    md.reset()
    first_step_s = time.perf_counter() - t0
    ev_calc = next(iter(calc._evaluators.values()))  # the evaluator the calculator calls
    pos1 = torch.as_tensor(atoms.positions, dtype=model.dtype)[None]
    # the same kernel with inductor's Python wrapper (the calculator's evaluator uses the C++ one)
    ev_py = FastEvaluator(calc.model, atoms.numbers, compile=True, cpp_wrapper=False)
    t0 = time.perf_counter()
    py_error = ev_py.check(pos1)
    py_compile_s = time.perf_counter() - t0

    baselines: dict[str, Callable[[], object]] = {}
    extra: dict = {}
    if not cfg.skip_baselines:
        from ttcalc.data import load_rmd17
        from ttcalc.priors import SGDMLPrior, XTBPrior

        eager = eager_torchmdnet(model, atoms)
        disp = Displacer(atoms)
        e_fast, _, f_fast = ev_calc(pos1)
        e_eager, f_eager = eager(atoms.positions)
        # sanity: both paths compute the same model
        extra["eager_vs_fast_energy_diff_eV"] = abs(e_eager - float(e_fast[0]))
        extra["eager_vs_fast_force_rel_diff"] = float(np.abs(f_fast[0].numpy() - f_eager).max() / np.abs(f_eager).max())
        xtb = XTBPrior(backend="tblite")
        t0 = time.perf_counter()
        sgdml = SGDMLPrior.from_frames(load_rmd17(cfg.molecule, "train_01", n=cfg.sgdml_frames, seed=0),
                                       n_train=cfg.sgdml_frames)
        extra["sgdml_fit_or_load_s"] = time.perf_counter() - t0
        probe = atoms.copy()

        def prior_call(prior):
            def call():
                probe.positions = disp()
                prior.energy_forces(probe)
            return call

        baselines = {"eager_torchmdnet": lambda: eager(disp()),
                     "tblite_gfn2": prior_call(xtb), "sgdml": prior_call(sgdml)}
        for fn in baselines.values():  # warm-up: first calls set up backends
            fn()

    batched = {}
    for b in cfg.replicas:
        t0 = time.perf_counter()
        batched[b] = BatchedMD(model, atoms, b, cfg)
        log.info("batched B=%d ready in %.1f s (force rel. err %.1e, compiled=%s)", b,
                 time.perf_counter() - t0, batched[b].force_error, batched[b].evaluator.compiled)

    timings: dict[str, list[float]] = {k: [] for k in
                                       ["fast_md_step", "fast_evaluator", "fast_evaluator_python_wrapper",
                                        *baselines, "fast_md_step_1thread_vs_2", "fast_md_step_2threads"]}
    batched_ms: dict[int, list[float]] = {b: [] for b in cfg.replicas}
    disp_fast = Displacer(atoms, seed=1)

    def evaluator_call(ev):
        def call():
            ev(torch.as_tensor(disp_fast(), dtype=model.dtype)[None])
        return call

    # every method once per repeat; the order rotates so that no method always follows another
    methods: list[tuple[str, Callable[[], float]]] = [
        ("fast_md_step", lambda: md.step_ms(cfg.steps)),
        ("fast_evaluator", lambda: median_ms(evaluator_call(ev_calc), cfg.steps)),
        ("fast_evaluator_python_wrapper", lambda: median_ms(evaluator_call(ev_py), cfg.steps)),
        *[(name, lambda fn=fn, n=(cfg.steps if name == "sgdml" else cfg.slow_calls): median_ms(fn, n))
          for name, fn in baselines.items()],
        *[(f"batched_{b}", lambda bm=bm, b=b: bm.step_ms(max(RESTART, cfg.steps // b)))
          for b, bm in batched.items()],
    ]
    for r in range(cfg.repeats):
        k = r % len(methods)
        for name, timer in methods[k:] + methods[:k]:
            ms = timer()
            if name.startswith("batched_"):
                batched_ms[int(name.split("_")[1])].append(ms)
            else:
                timings[name].append(ms)
        log.info("repeat %d/%d: %s", r + 1, cfg.repeats,
                 ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in timings.items() if v))
    # 1 vs 2 torch threads for the single trajectory, alternating, after the rest: on a loaded
    # machine a second OpenMP thread can stall for a long time and would disturb what follows
    for r in range(cfg.repeats):
        timings["fast_md_step_1thread_vs_2"].append(md.step_ms(max(RESTART, cfg.steps // 4)))
        torch.set_num_threads(2)
        try:
            timings["fast_md_step_2threads"].append(md.step_ms(max(RESTART, cfg.steps // 4)))
        finally:
            torch.set_num_threads(cfg.threads)
        log.info("threads %d/%d: 1 thread %.2f ms, 2 threads %.2f ms", r + 1, cfg.repeats,
                 timings["fast_md_step_1thread_vs_2"][-1], timings["fast_md_step_2threads"][-1])

    med = {k: float(np.median(v)) for k, v in timings.items()}
    throughput = {b: b * n_atoms / (float(np.median(v)) / 1e3) for b, v in batched_ms.items()}
    b_max, b_min = max(cfg.replicas), min(cfg.replicas)
    ratios = {}
    if "eager_torchmdnet" in med:
        ratios["eager_torchmdnet_over_fast_md_step"] = med["eager_torchmdnet"] / med["fast_md_step"]
        ratios["tblite_over_fast_md_step"] = med["tblite_gfn2"] / med["fast_md_step"]
        ratios["sgdml_over_fast_md_step"] = med["sgdml"] / med["fast_md_step"]
    ratios["fast_md_step_2threads_over_1thread"] = med["fast_md_step_2threads"] / med["fast_md_step_1thread_vs_2"]
    ratios["python_wrapper_over_default_evaluator"] = med["fast_evaluator_python_wrapper"] / med["fast_evaluator"]
    ratios[f"throughput_{b_max}_over_{b_min}_replicas"] = throughput[b_max] / throughput[b_min]
    ratios[f"throughput_{b_max}_replicas_over_ase_single"] = throughput[b_max] / (n_atoms / (med["fast_md_step"] / 1e3))
    goals = {
        "fast_step_5x_faster_than_eager_torchmdnet": ratios.get("eager_torchmdnet_over_fast_md_step", 0) >= 5,
        "fast_step_4x_faster_than_tblite": ratios.get("tblite_over_fast_md_step", 0) >= 4,
        "fast_step_at_most_4ms": med["fast_md_step"] <= 4.0,
        f"{b_max}_replicas_5x_single_replica_throughput": ratios[f"throughput_{b_max}_over_{b_min}_replicas"] >= 5,
    }
    return {
        "benchmark": "md_speed",
        "config": asdict(cfg),
        "model": model_desc,
        "molecule": cfg.molecule,
        "n_atoms": n_atoms,
        "machine": {"start": info_start, "end": machine_info()},
        "note": ("2 shared CPU cores, loaded by a background training job and other engineers' "
                 "processes: absolute times are inflated and noisy; the ratios of methods timed "
                 "side by side in the same repeats are what matter."),
        "median_ms": med,
        "per_repeat_ms": timings,
        "batched": {
            str(b): {"ms_per_step": float(np.median(batched_ms[b])), "per_repeat_ms": batched_ms[b],
                     "atom_steps_per_s": throughput[b], "compile_and_check_s": batched[b].setup_seconds,
                     "force_rel_err_vs_eager": batched[b].force_error,
                     "compiled": batched[b].evaluator.compiled}
            for b in cfg.replicas
        },
        "ratios": ratios,
        "goals_met": goals,
        "compile": {"first_md_step_s": first_step_s, "n_compiles_calculator": ev_calc.n_compiles,
                    "python_wrapper_compile_and_check_s": py_compile_s,
                    "python_wrapper_force_rel_err_vs_eager": py_error, "python_wrapper_compiled": ev_py.compiled},
        "extra": extra,
    }


def print_table(res: dict) -> None:
    med, n = res["median_ms"], res["n_atoms"]
    print(f"\nMD speed, {res['molecule']} ({n} atoms), model: {res['model']}")
    print(f"torch threads {res['config']['threads']}; load average at start "
          f"{res['machine']['start']['load_average'][0]:.1f}, end {res['machine']['end']['load_average'][0]:.1f}")
    print(f"{'method':38s} {'ms/call':>9s} {'x fast step':>12s}")
    for k, v in med.items():
        print(f"{k:38s} {v:9.2f} {v / med['fast_md_step']:12.2f}")
    print(f"\n{'replicas':>8s} {'ms/step':>9s} {'atom-steps/s':>13s}")
    for b, d in res["batched"].items():
        print(f"{b:>8s} {d['ms_per_step']:9.2f} {d['atom_steps_per_s']:13.0f}")
    print("\nratios:", json.dumps({k: round(v, 2) for k, v in res["ratios"].items()}, indent=1))
    print("goals met:", json.dumps(res["goals_met"], indent=1))


def parse_args(argv=None) -> SpeedConfig:
    d = SpeedConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=d.model, help="checkpoint (default: md17-abu-xtb.pt if present, else untrained)")
    p.add_argument("--molecule", default=d.molecule)
    p.add_argument("--steps", type=int, default=d.steps, help="timed calls per method per repeat")
    p.add_argument("--slow-calls", type=int, default=d.slow_calls, help="timed calls per repeat of xTB and eager")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--replicas", type=int, nargs="+", default=list(d.replicas))
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    return SpeedConfig(model=a.model, molecule=a.molecule, steps=a.steps, slow_calls=a.slow_calls,
                       repeats=a.repeats, replicas=tuple(a.replicas), threads=a.threads,
                       skip_baselines=a.skip_baselines, out=a.out)


def write_result(res: dict, out: str) -> Path:
    from md_protocols.report import write_json_atomic

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, res)
    return path


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    res = run(cfg)
    print_table(res)
    print(f"\nwrote {write_result(res, cfg.out)}")


if __name__ == "__main__":
    main()
