"""``ttcalc bench md``: stability, h(r), NVE drift and force errors on rMD17 molecules.

For each molecule it compares the prior alone, the MLIP before TTT, and the MLIP after TTT
(optionally also with radius refinement): force/energy errors on official test frames, then MD
runs (NVT and/or NVE, several seeds, in a process pool) scored with the bond-length stability
criterion and h(r) of Fu et al. (TMLR 2023) against the rMD17 frames, and NVE drift.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from md_protocols import (BondCollapseCheck, MDJob, bond_lengths, bonds_from_atoms, bonds_stability, hr, hr_mae,
                          max_bond_deviation, nve_drift, pes_along_hessian, relax, run_md_parallel, stability_summary)
from md_protocols.plots import plot_bond_deviation, plot_hr, plot_pes
from md_protocols.report import write_json_atomic
from ttcalc.calculator import TTTCalculator
from ttcalc.data import load_rmd17, rmd17_arrays
from ttcalc.diagnostics.evaluation import evaluate_calculator
from ttcalc.priors import SGDMLPrior, make_prior

log = logging.getLogger(__name__)


@dataclass
class CalcSpec:
    """A picklable recipe for a calculator in a worker process."""

    kind: str  # "mlip" or "prior"
    model: str | None = None
    prior: str | None = None
    cutoff: float | None = None
    compile: bool = True

    def __call__(self):
        if self.kind == "prior":
            return load_prior(self.prior).as_calculator()
        calc = TTTCalculator(self.model, compile=self.compile, disagreement_every=0)
        if self.cutoff is not None:
            calc.set_cutoff(self.cutoff)
        return calc


def load_prior(spec: str):
    """``"xtb"``-style names, or ``"sgdml-file:PATH"`` for a saved sGDML model."""
    if spec.startswith("sgdml-file:"):
        return SGDMLPrior.load(spec.split(":", 1)[1])
    return make_prior(spec)


@dataclass
class BenchConfig:
    model: str | None = None
    molecules: list[str] = field(default_factory=lambda: ["naphthalene", "toluene"])
    seeds: int = 3
    time_ps: float = 100.0
    ttt: bool = True
    rr: bool = False
    prior: str = "xtb"  # or "sgdml:50"
    ensembles: list[str] = field(default_factory=lambda: ["nvt", "nve"])
    processes: int = 2
    output: str = "bench_md"
    n_test: int = 200
    log_interval: int = 20
    pes: bool = True
    ttt_overrides: dict = field(default_factory=dict)


def build_prior(spec: str, molecule: str, folder: Path) -> tuple[str, object]:
    """The prior for ``molecule`` and a spec string workers can load it from."""
    if spec.startswith("sgdml"):
        n = int(spec.split(":")[1]) if ":" in spec else 50
        # the paper's setting: n labelled frames of the test molecule, from train_01 (never test_01)
        prior = SGDMLPrior.from_frames(load_rmd17(molecule, "train_01", n=n, seed=0), n_train=n)
        path = folder / f"sgdml-{molecule}-{n}.npz"
        prior.save(path)
        return f"sgdml-file:{path}", prior
    return spec, load_prior(spec)


def run_benchmark(cfg: BenchConfig, progress: bool = True) -> dict:
    """Run the benchmark; writes ``results.json``, ``results.md`` and plots to ``cfg.output``."""
    out = Path(cfg.output)
    (out / "models").mkdir(parents=True, exist_ok=True)
    results: dict = {"config": asdict(cfg), "molecules": {}}
    for mol in cfg.molecules:
        t_mol = time.perf_counter()
        mol_res = _benchmark_molecule(cfg, mol, out)
        mol_res["seconds"] = time.perf_counter() - t_mol
        results["molecules"][mol] = mol_res
        _write(out, results)
        log.info("%s done in %.0f s", mol, mol_res["seconds"])
    _write(out, results)
    return results


@dataclass
class _Reference:
    """One molecule's reference data: the rMD17 trajectory, its h(r), the test frames and the MD start."""

    positions: np.ndarray
    r: np.ndarray
    h: np.ndarray
    test: list
    start: object


def _reference(cfg: BenchConfig, mol: str) -> _Reference:
    ref_pos = np.asarray(rmd17_arrays(mol).R)
    r, h_ref = hr(ref_pos)
    test = load_rmd17(mol, "test_01", n=cfg.n_test, seed=0)
    start = test[0].copy()
    start.calc = None
    return _Reference(ref_pos, r, h_ref, test, start)


def _benchmark_molecule(cfg: BenchConfig, mol: str, out: Path) -> dict:
    """Errors, PES slices, MD and their scores for one molecule."""
    ref = _reference(cfg, mol)
    variants, mol_res = _variants(cfg, mol, ref, out)
    jobs, labels = _md_jobs(cfg, mol, ref, variants, out)
    _score_runs(cfg, mol, ref, mol_res, labels, run_md_parallel(jobs, processes=cfg.processes), out)
    return mol_res


def _variants(cfg: BenchConfig, mol: str, ref: _Reference, out: Path) -> tuple[dict[str, CalcSpec], dict]:
    """The calculators to compare (prior, MLIP, MLIP+RR, MLIP+TTT), their errors on the test frames
    and their PES along the prior's two softest Hessian modes at the prior's minimum (paper Fig. 4b)."""
    model_name = cfg.model or "md17-abu"
    prior_spec, prior = build_prior(cfg.prior, mol, out / "models")
    variants: dict[str, CalcSpec] = {"prior": CalcSpec("prior", prior=prior_spec),
                                     "mlip": CalcSpec("mlip", model=model_name)}
    calc = TTTCalculator(model_name, prior=prior, disagreement_every=0)
    mol_res: dict = {"ttt": None, "variants": {
        "mlip": {"errors": evaluate_calculator(calc, ref.test)},
        "prior": {"errors": evaluate_calculator(prior.as_calculator(), ref.test)}}}
    if cfg.rr:
        radius = calc.refine_radius(ref.start)
        variants["mlip+rr"] = CalcSpec("mlip", model=model_name, cutoff=radius)
        mol_res["variants"]["mlip+rr"] = {"errors": evaluate_calculator(calc, ref.test), "cutoff": radius}
    relaxed = relax(ref.start, prior.as_calculator(), fmax=0.01, steps=500).atoms
    pes = {"mlip": _pes(relaxed, calc, prior)} if cfg.pes else {}
    if cfg.ttt:
        report = calc.adapt(ref.start, **cfg.ttt_overrides)
        mol_res["ttt"] = report.summary()
        key = "mlip+ttt+rr" if cfg.rr else "mlip+ttt"
        path = out / "models" / f"{mol}-{key}.pt"
        calc.model.save(path, metadata={"adapted_for": mol, "ttt": report.summary()})
        variants[key] = CalcSpec("mlip", model=str(path), cutoff=calc.cutoff if cfg.rr else None)
        mol_res["variants"][key] = {"errors": evaluate_calculator(calc, ref.test)}
        if cfg.pes:
            pes[key] = _pes(relaxed, calc, prior)
    for name, grid in pes.items():
        grid.label, grid.reference_label = name, "prior"
        plot_pes(grid, out / f"{mol}_pes_{name}.png")
        mol_res["variants"][name]["pes_rmse_vs_prior_eV"] = float(
            np.sqrt(np.mean((grid.energies - grid.reference_energies) ** 2)))
    return variants, mol_res


def _pes(relaxed, calc, prior):
    return pes_along_hessian(relaxed, calc, n_grid=15, reference_calc=prior.as_calculator(),
                             hessian_calc=prior.as_calculator())


def _md_jobs(cfg: BenchConfig, mol: str, ref: _Reference, variants: dict[str, CalcSpec], out: Path):
    """One MD job per (variant, ensemble, seed), with Fu et al.'s bond-collapse check."""
    jobs, labels = [], []
    for name, spec in variants.items():
        for ensemble in cfg.ensembles:
            for seed in range(cfg.seeds):
                traj = out / "trajectories" / f"{mol}-{name}-{ensemble}-{seed}.traj"
                traj.parent.mkdir(parents=True, exist_ok=True)
                kwargs = dict(ensemble=ensemble, temperature_K=500.0, timestep_fs=0.5,
                              time_ps=cfg.time_ps, seed=seed, trajectory=str(traj),
                              log_interval=cfg.log_interval, progress=False,
                              checks=[BondCollapseCheck(ref.positions, numbers=ref.start.numbers)])
                jobs.append(MDJob(ref.start, spec, kwargs))
                labels.append((name, ensemble, seed))
    return jobs, labels


def _score_run(res, ensemble: str, seed: int, ref: _Reference) -> tuple[dict, np.ndarray | None]:
    """Stability, h(r) MAE and (NVE) drift of one run; the run's h(r) (None without frames)."""
    entry = {"seed": seed, "status": res.status, "time_ps": res.time_ps, "message": res.message,
             "seconds": res.seconds, "stable_ps": 0.0}
    if res.frames is None or len(res.frames) < 2:
        return entry, None
    frames = np.asarray(res.frames)
    entry["stable_ps"] = bonds_stability(frames, ref.positions, numbers=ref.start.numbers,
                                         frame_interval_fs=res.frame_interval_fs)
    h = hr(frames)[1]
    entry["hr_mae"] = hr_mae(h, ref.h, ref.r)
    if ensemble == "nve":
        entry["drift"] = nve_drift(res)
    return entry, h


def _score_runs(cfg: BenchConfig, mol: str, ref: _Reference, mol_res: dict, labels, md_results, out: Path) -> None:
    """Per-run scores, per-variant summaries (stability over seeds, mean h(r) MAE) and the figures."""
    curves: dict[str, list[np.ndarray]] = {}
    deviations: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bonds = bonds_from_atoms(ref.start)
    ref_mean = bond_lengths(ref.positions, bonds).mean(axis=0)
    for (name, ensemble, seed), res in zip(labels, md_results):
        entry, h = _score_run(res, ensemble, seed, ref)
        mol_res["variants"].setdefault(name, {}).setdefault(ensemble, {"runs": []})["runs"].append(entry)
        if h is not None and ensemble == "nvt":
            curves.setdefault(name, []).append(h)
            if seed == 0:
                frames = np.asarray(res.frames)
                times = np.arange(len(frames)) * res.frame_interval_fs / 1000.0
                deviations[name] = (times, max_bond_deviation(frames, bonds, ref_mean))
    for v in mol_res["variants"].values():
        for ensemble in cfg.ensembles:
            if ensemble in v:
                runs = v[ensemble]["runs"]
                v[ensemble]["stability"] = stability_summary([e["stable_ps"] for e in runs], full_time_ps=cfg.time_ps)
                maes = [e["hr_mae"] for e in runs if "hr_mae" in e]
                v[ensemble]["hr_mae"] = float(np.mean(maes)) if maes else None
    if curves:
        plot_hr(ref.r, {k: np.mean(v, axis=0) for k, v in curves.items()}, ref.h, out / f"{mol}_hr.png",
                title=f"{mol}: h(r), NVT 500 K, against rMD17")
    if deviations:
        plot_bond_deviation({k: t for k, (t, _) in deviations.items()},
                            {k: d for k, (_, d) in deviations.items()}, 0.5, out / f"{mol}_bonds.png")


def _write(out: Path, results: dict) -> None:
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    """One table per molecule: errors, stability (mean ± std ps over seeds), h(r) MAE, NVE drift."""
    lines = []
    for mol, m in results["molecules"].items():
        lines += [f"### {mol}", "",
                  "| variant | force MAE (meV/Å) | energy MAE (meV, offset removed) | NVT stable (ps) | "
                  "NVE stable (ps) | h(r) MAE NVT | NVE drift, largest absolute slope (meV/atom/ps) |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in m["variants"].items():
            err = v.get("errors", {})
            cells = [name, f"{err.get('force_mae_meV_A', float('nan')):.1f}",
                     f"{err.get('energy_mae_offset_meV', float('nan')):.1f}"]
            for ens in ("nvt", "nve"):
                md = v.get(ens, {})
                s = md.get("stability")
                cell = f"{s['mean']:.1f} ± {s['std']:.1f} ({s['n']})" if s else "–"
                if s and md.get("simulated_ps", 0) < md.get("target_ps", 0):  # a run still going or stopped
                    cell += f", run stopped at {md['simulated_ps']:g} of {md['target_ps']:g} ps"
                cells.append(cell)
            h = v.get("nvt", {}).get("hr_mae")
            cells.append(f"{h:.3f}" if h is not None else "–")
            drifts = [e["drift"]["slope_meV_per_atom_per_ps"] for e in v.get("nve", {}).get("runs", [])
                      if "drift" in e and "slope_meV_per_atom_per_ps" in e["drift"]]
            # the worst seed, to two significant figures: a mean can hide one drifting seed
            cells.append(f"{max(drifts, key=abs):.2g}" if drifts else "–")
            lines.append("| " + " | ".join(cells) + " |")
        if m.get("ttt"):
            t = m["ttt"]
            lines += ["", f"TTT: {t['steps']} steps, {t['seconds']:.1f} s, prior loss "
                          f"{t['prior_loss_start']:.4g} → {t['prior_loss_end']:.4g} ({t['stop_reason']})"]
        lines.append("")
    return "\n".join(lines)


def run_md_benchmark(args) -> int:
    """CLI entry point for ``ttcalc bench md``."""
    cfg = BenchConfig(model=args.model, molecules=args.molecules, seeds=args.seeds, time_ps=args.time_ps,
                      ttt=args.ttt, rr=args.rr, prior=args.prior, ensembles=args.ensembles,
                      processes=args.processes, output=args.output)
    results = run_benchmark(cfg)
    print(markdown(results))
    print(f"wrote {Path(cfg.output) / 'results.json'} and results.md")
    return 0
