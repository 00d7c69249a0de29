"""``ttcalc demo``: adapt the embedded model to a molecule it never saw, then run MD with it.

Steps: load the model -> build naphthalene (or read the user's molecule) -> shift diagnostics ->
radius refinement and test-time training with GFN2-xTB (no labels) -> short NVT MD -> report and a
PNG with h(r) and the TTT loss curve. Runs offline: it needs neither the network nor ../shared.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from ase import Atoms

log = logging.getLogger(__name__)


def naphthalene() -> Atoms:
    """Naphthalene C10H8 from ideal geometry (C–C 1.40 Å, C–H 1.09 Å, planar, D2h)."""
    cc, ch = 1.40, 1.09
    h = cc * np.sqrt(3) / 2
    carbons = np.array([
        [0.0, cc / 2, 0], [0.0, -cc / 2, 0],                        # shared bond
        [h, cc, 0], [2 * h, cc / 2, 0], [2 * h, -cc / 2, 0], [h, -cc, 0],
        [-h, cc, 0], [-2 * h, cc / 2, 0], [-2 * h, -cc / 2, 0], [-h, -cc, 0],
    ])
    hydrogens = []
    for i in range(2, 10):  # every carbon except the two shared ones carries an H
        direction = carbons[i] - (np.array([h, 0, 0]) if carbons[i, 0] > 0 else np.array([-h, 0, 0]))
        hydrogens.append(carbons[i] + ch * direction / np.linalg.norm(direction))
    return Atoms("C10H8", positions=np.vstack([carbons, hydrogens]))


def _model_or_fallback(progress: bool):
    from ttcalc.model.pretrained import load_pretrained

    try:
        return load_pretrained("md17-abu"), "md17-abu (embedded)"
    except FileNotFoundError:
        # before the embedded model ships: train a small one on rMD17 benzene for about a minute
        from ttcalc.model.potential import ModelConfig
        from ttcalc.model.representation import RepresentationConfig
        from ttcalc.train import DataConfig, StageConfig, TrainConfig, train_model

        log.warning("embedded model missing: training a small benzene model for about a minute")
        cfg = TrainConfig(model=ModelConfig(RepresentationConfig(hidden_channels=32, num_layers=2)),
                          data=DataConfig(molecules=["benzene"], n_train=200, n_val=20),
                          pretrain=StageConfig(max_minutes=0.6, max_epochs=50, lr=2e-3),
                          finetune=StageConfig(max_minutes=0.4, max_epochs=50, lr=2e-3),
                          output="ttcalc_demo/benzene-small.pt", spectrum_frames=200)
        model, _ = train_model(cfg, progress=progress)
        return model, "small benzene model trained just now (embedded model not installed)"


def run_demo(molecule: str | None = None, output: str = "ttcalc_demo", time_ps: float = 2.0,
             progress: bool = True, seed: int = 0) -> int:
    """Run the demo; prints a report and writes ``report.json`` and ``demo.png`` to ``output``."""
    from ase.io import read

    from md_protocols import bonds_stability, hr, hr_mae, run_md, BondCollapseCheck

    from ttcalc.adapt import prior_md_frames
    from ttcalc.calculator import TTTCalculator
    from ttcalc.app.plots import plot_demo
    from ttcalc.priors import XTBPrior
    from ttcalc.diagnostics.shifts import diagnose, format_table

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model, model_name = _model_or_fallback(progress)
    atoms = read(molecule) if molecule else naphthalene()
    name = Path(molecule).stem if molecule else "naphthalene"
    prior = XTBPrior()
    print(f"ttcalc demo: {name} ({atoms.get_chemical_formula()}, {len(atoms)} atoms) with {model_name}\n")

    # a relaxed start keeps the 500 K dynamics physical for any user geometry
    from md_protocols import relax

    # diagnose the geometry as given: a relaxed one has near-zero forces by construction
    report = diagnose(atoms, model, prior=prior)
    relaxed = relax(atoms, prior.as_calculator(), fmax=0.05, steps=200).atoms
    print("Distribution-shift diagnostics (Kreiman & Krishnapriyan 2025, sec. 3.2):")
    print(format_table(report) + "\n")

    calc = TTTCalculator(model, prior=prior, disagreement_every=0)
    training_cutoff = calc.cutoff
    radius = calc.refine_radius(relaxed) if model.stats.spectrum else calc.cutoff
    adaptation = calc.adapt(relaxed)
    print(f"Radius refinement: cutoff {training_cutoff:.2f} -> {radius:.2f} Å")
    print(f"Test-time training: {adaptation.steps} steps in {adaptation.seconds:.1f} s, prior loss "
          f"{adaptation.prior_loss_start:.4g} -> {adaptation.prior_loss_end:.4g} ({adaptation.stop_reason})")
    print(f"Force disagreement with GFN2-xTB: {adaptation.force_disagreement_before:.3f} -> "
          f"{adaptation.force_disagreement_after:.3f} eV/Å\n")

    # reference bond lengths and h(r) from a short GFN2-xTB MD at the same temperature
    ref_frames = prior_md_frames(relaxed, prior, n_frames=40, interval=10, seed=seed + 1)
    ref_pos = np.stack([f.positions for f in ref_frames])
    md_atoms = relaxed.copy()
    md_atoms.calc = calc
    # the first MD force call compiles the kernel: say so, instead of a progress bar frozen at 0 %
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default inductor cache")
    print(f"Compiling the MD kernel for {len(md_atoms)} atoms (one-time; cached in {cache}) ...", flush=True)
    t_compile = time.perf_counter()
    md_atoms.get_forces()
    print(f"Kernel ready in {time.perf_counter() - t_compile:.1f} s\n")
    result = run_md(md_atoms, calc, ensemble="nvt", temperature_K=500, timestep_fs=0.5, time_ps=time_ps,
                    seed=seed, trajectory=str(out / "md.traj"), log_interval=20, progress=progress,
                    checks=[BondCollapseCheck(ref_pos, numbers=relaxed.numbers)])
    positions = np.asarray(result.frames)
    r, h_model = hr(positions)
    _, h_ref = hr(ref_pos)
    mae = hr_mae(h_model, h_ref, r)
    stable_ps = bonds_stability(positions, ref_pos, numbers=relaxed.numbers,
                                frame_interval_fs=result.frame_interval_fs)
    png = plot_demo(r, h_model, h_ref, adaptation, out / "demo.png", title=f"{name}: TTT + NVT 500 K")
    summary = {
        "molecule": name, "model": model_name, "n_atoms": len(atoms),
        "shifts": report.to_dict(),
        "cutoff_training": training_cutoff, "cutoff_chosen": radius,
        "ttt": adaptation.summary(),
        "md": {"status": result.status, "time_ps": result.time_ps, "stable_ps": stable_ps,
               "hr_mae_vs_xtb": mae, "seconds": result.seconds},
        "seconds_total": time.perf_counter() - t_start,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"MD (NVT 500 K, 0.5 fs): {result.status} after {result.time_ps:.2f} ps "
          f"({result.seconds:.1f} s wall); bonds stable for {stable_ps:.2f} ps")
    print(f"h(r) MAE against GFN2-xTB MD: {mae:.4f}")
    print(f"Wrote {out / 'report.json'} and {png} ({summary['seconds_total']:.0f} s total)")
    return 0 if result.status == "finished" else 1
