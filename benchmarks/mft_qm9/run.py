"""MFT benchmark on QM9 (Peng et al. 2026, Tables 2-3): Scratch, FT, LP and MFT on a BOOM split.

For each property (default: the HOMO-LUMO gap) and each regime × seed:
  * fine-tune the pretrained backbone (results/backbone.pt, see pretrain.py) on a subsample of the
    BOOM train pool, select on the ID validation set;
  * RMSE (eV) on the ID test set and on the OOD set (the 10,000 lowest-density molecules);
  * 1-Wasserstein distance between the pretrained and the fine-tuned atomic representations
    (5000 atoms each from train, ID-test and OOD molecules) and the Davies-Bouldin index of the
    element × neighbour-count classes, normalised to the pretrained model (raw features; t-SNE for
    seed 0), plus t-SNE figures.
The MFT auxiliary task is the GFN2-xTB part of the pretraining corpus (displaced QM9, head gfn2).

Every finished run is written to results/runs/ at once, and a re-run skips it (resumable).

Regenerate:  python benchmarks/mft_qm9/run.py
With λ_reg and the auxiliary batch chosen on ID validation by scan.py:
             python benchmarks/mft_qm9/run.py --settings-from results/v2/scan_gap.json ...
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from corpus import CorpusConfig, qm9_xtb_frames
from md_protocols.files import atomic_write
from ttcalc import load_model
from ttcalc.diagnostics.collapse import atom_classes, atomic_representations, davies_bouldin, tsne_2d, wasserstein_1
from ttcalc.data.boom import boom_split
from ttcalc.data.qm9 import QM9_PROPERTIES, load_qm9
from ttcalc.diagnostics.evaluation import predict_properties
from ttcalc.model.heads import PropertyHeadConfig
from ttcalc.app.plots import plot_error_bars, plot_tsne_panels
from ttcalc.train import FinetuneConfig, StageConfig, finetune_property
from ttcalc.train.regimes import split_frames

HERE = Path(__file__).resolve().parent
log = logging.getLogger("mft_qm9")
REGIMES = ("scratch", "ft", "lp", "mft")


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred.reshape(-1) - y.reshape(-1)) ** 2)))


def diagnostic_atoms(qm9, split, n_molecules: int, seed: int = 0) -> dict:
    """Fixed molecule subsets (train / ID test / OOD) whose atoms the diagnostics compare."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, idx in (("train", split.train), ("id", split.id_test), ("ood", split.ood)):
        chosen = np.sort(rng.choice(idx, min(n_molecules, len(idx)), replace=False))
        frames = qm9.molecules(chosen)
        out[name] = (frames, atom_classes(frames))
    return out


def diagnostics(model, reference: dict, atoms: dict, tsne: bool) -> dict:
    res = {}
    for name, (frames, labels) in atoms.items():
        x = atomic_representations(model, frames)
        entry = {"wasserstein": wasserstein_1(reference[name]["x"], x, max_points=5000),
                 "db_raw": davies_bouldin(x, labels) / reference[name]["db_raw"]}
        if tsne and name == "ood":
            sub = reference[name]["tsne_idx"]
            y2 = tsne_2d(x[sub])
            entry["db_tsne"] = davies_bouldin(y2, labels[sub]) / reference[name]["db_tsne"]
            entry["_tsne"] = y2
        res[name] = entry
    return res


def benchmark_split(values: np.ndarray, n_train: int):
    """The BOOM split every script here uses: 10,000 OOD molecules, 5 % ID test, 10 % of the
    ``n_train`` subsample for validation."""
    return boom_split(values, n_ood=10_000, id_test_fraction=0.05, val_fraction=0.1, seed=0, n_train=n_train)


def task_data(qm9, prop: str, n_train: int, n_eval: int) -> tuple:
    """The BOOM split of ``prop`` and its frames and labels: train and val (from ``n_train``
    molecules of the train pool), and fixed random subsets of ``n_eval`` ID-test and OOD molecules."""
    values = qm9.property(prop)
    split = benchmark_split(values, n_train)
    idx = {k: getattr(split, k) for k in ("train", "val", "id_test", "ood")}
    rng = np.random.default_rng(1)
    for k in ("id_test", "ood"):
        if n_eval and len(idx[k]) > n_eval:
            idx[k] = np.sort(rng.choice(idx[k], n_eval, replace=False))
    return split, idx, {k: qm9.molecules(v) for k, v in idx.items()}, {k: values[v] for k, v in idx.items()}


def finetune_settings(regime: str, seed: int, args) -> FinetuneConfig:
    """One run's settings: the same stage for every regime (the epoch budget is the comparison)."""
    stage = StageConfig(lr=5e-4, batch_size=32, max_epochs=args.epochs, max_minutes=args.minutes,
                        patience=6, lr_patience=2, lr_factor=0.5)
    return FinetuneConfig(regime=regime, stage=stage, lambda_reg=args.lambda_reg, ff_head="gfn2",
                          ff_batch_size=args.ff_batch_size, seed=seed)


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared with scan.py: the backbone, the data and the per-run budget."""
    p.add_argument("--backbone", default=str(HERE / "results" / "backbone.pt"))
    p.add_argument("--n-train", type=int, default=3000, help="train + val molecules drawn from the BOOM pool")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--minutes", type=float, default=5.0, help="time budget per run")
    p.add_argument("--lambda-reg", type=float, default=1.0)
    p.add_argument("--ff-batch-size", type=int, default=16, help="force-field frames per property batch (MFT)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(p)
    p.add_argument("--properties", nargs="+", default=["gap"])
    p.add_argument("--regimes", nargs="+", default=list(REGIMES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--settings-from", default=None,
                   help="a scan.py result: take its chosen --lambda-reg and --ff-batch-size")
    p.add_argument("--n-diag", type=int, default=300, help="molecules per set for the diagnostics")
    p.add_argument("--n-eval", type=int, default=2000,
                   help="ID-test and OOD molecules evaluated (fixed random subset; 0 = all)")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.settings_from:
        chosen = json.loads(Path(args.settings_from).read_text())["choice"]
        args.lambda_reg, args.ff_batch_size = chosen["lambda_reg"], chosen["ff_batch_size"]
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    backbone = load_model(args.backbone)
    qm9 = load_qm9()
    ff_train, _ = split_frames(qm9_xtb_frames(CorpusConfig(), progress=False), (0.95, 0.05), seed=0)
    summary = {"settings": vars(args), "properties": {}}
    for prop in args.properties:
        split, idx, frames, y = task_data(qm9, prop, args.n_train, args.n_eval)
        atoms = diagnostic_atoms(qm9, split, args.n_diag)
        reference = {}
        for name, (fr, labels) in atoms.items():
            x = atomic_representations(backbone, fr)
            reference[name] = {"x": x, "db_raw": davies_bouldin(x, labels)}
        sub = np.sort(np.random.default_rng(0).choice(len(atoms["ood"][1]), min(2000, len(atoms["ood"][1])),
                                                      replace=False))
        y2 = tsne_2d(reference["ood"]["x"][sub])
        reference["ood"].update(tsne_idx=sub, db_tsne=davies_bouldin(y2, atoms["ood"][1][sub]))
        panels = {"pretrained": (y2, atoms["ood"][1][sub])}
        unit = QM9_PROPERTIES[prop][2]
        runs = []
        for seed in range(args.seeds):  # all regimes of one seed first: a cut-short run stays comparable
            for regime in args.regimes:
                path = out / "runs" / f"{prop}-{regime}-{seed}.json"
                if path.exists():
                    runs.append(json.loads(path.read_text()))
                    log.info("%s exists, skipped", path.name)
                    continue
                t0 = time.perf_counter()
                cfg = finetune_settings(regime, seed, args)
                head = PropertyHeadConfig(prop, reduce="mean", unit=unit if unit == "eV" else "")
                model, result = finetune_property(backbone, head, frames["train"], y["train"], frames["val"],
                                                  y["val"], cfg, ff_frames=ff_train,
                                                  log_path=out / "runs" / f"{prop}-{regime}-{seed}.csv")
                train_s = time.perf_counter() - t0
                errors = {k: rmse(predict_properties(model, frames[k], prop), y[k]) for k in ("val", "id_test", "ood")}
                diag = diagnostics(model, reference, atoms, tsne=(seed == 0))
                if seed == 0:
                    panels[regime.upper()] = (diag["ood"].pop("_tsne"), atoms["ood"][1][sub])
                    np.save(out / "runs" / f"{prop}-{regime}-tsne.npy", panels[regime.upper()][0])
                run = {"property": prop, "regime": regime, "seed": seed, "rmse": errors,
                       "diagnostics": diag, "epochs": result.epochs, "stop_reason": result.stop_reason,
                       "train_seconds": train_s, "total_seconds": time.perf_counter() - t0}
                with atomic_write(path, "w") as fh:
                    json.dump(run, fh, indent=2)
                log.info("%s %s seed %d: ID %.4f OOD %.4f %s (%.0f s)", prop, regime, seed, errors["id_test"],
                         errors["ood"], unit, run["total_seconds"])
                runs.append(run)
        for regime in args.regimes:
            f = out / "runs" / f"{prop}-{regime}-tsne.npy"
            if regime.upper() not in panels and f.exists():
                panels[regime.upper()] = (np.load(f), atoms["ood"][1][sub])
        plot_tsne_panels(panels, out / f"{prop}_tsne_ood.png")
        summary["properties"][prop] = summarise(runs, split, unit, {k: len(v) for k, v in idx.items()})
        plot_error_bars({r: {"ID": s["rmse_id"], "OOD": s["rmse_ood"]}
                         for r, s in summary["properties"][prop]["regimes"].items()},
                        out / f"{prop}_rmse.png", ylabel=f"{prop} RMSE ({unit})")
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "results.md").write_text(markdown(summary))
    print(markdown(summary))


def mean_std(xs) -> tuple[float, float]:
    xs = np.asarray(list(xs), dtype=float)
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def summarise(runs: list[dict], split, unit: str, n_eval: dict) -> dict:
    regimes = {}
    for regime in dict.fromkeys(r["regime"] for r in runs):
        rs = [r for r in runs if r["regime"] == regime]
        entry = {"n_seeds": len(rs), "rmse_id": mean_std(r["rmse"]["id_test"] for r in rs),
                 "rmse_ood": mean_std(r["rmse"]["ood"] for r in rs),
                 "train_minutes": mean_std(r["train_seconds"] / 60 for r in rs)}
        for s in ("train", "id", "ood"):
            entry[f"w1_{s}"] = mean_std(r["diagnostics"][s]["wasserstein"] for r in rs)
            entry[f"db_raw_{s}"] = mean_std(r["diagnostics"][s]["db_raw"] for r in rs)
        tsne = [r["diagnostics"]["ood"]["db_tsne"] for r in rs if "db_tsne" in r["diagnostics"]["ood"]]
        entry["db_tsne_ood_seed0"] = tsne[0] if tsne else None
        regimes[regime] = entry
    claims = {}
    if {"mft", "ft", "scratch"} <= set(regimes):
        m, f, s = regimes["mft"], regimes["ft"], regimes["scratch"]
        claims = {
            "MFT OOD RMSE < FT and Scratch": m["rmse_ood"][0] < min(f["rmse_ood"][0], s["rmse_ood"][0]),
            "MFT ID RMSE within 5% of FT": m["rmse_id"][0] <= 1.05 * f["rmse_id"][0],
            "W(pre->MFT) < W(pre->FT) on OOD": m["w1_ood"][0] < f["w1_ood"][0],
            "W(pre->MFT) < W(pre->FT) on train and ID": m["w1_train"][0] < f["w1_train"][0] and m["w1_id"][0] < f["w1_id"][0],
        }
    return {"unit": unit, "split": split.sizes(), "evaluated": {"id_test": n_eval["id_test"], "ood": n_eval["ood"]},
            "regimes": regimes, "claims": claims}


def markdown(summary: dict) -> str:
    lines = []
    for prop, s in summary["properties"].items():
        u = s["unit"]
        lines += [f"### QM9 {prop} (BOOM split: {s['split']}; evaluated on {s['evaluated']})", "",
                  f"| regime | ID RMSE ({u}) | OOD RMSE ({u}) | W₁ train | W₁ ID | W₁ OOD | DB raw OOD (÷ pretrained) "
                  f"| DB t-SNE OOD (seed 0) | minutes/run |", "|---|---|---|---|---|---|---|---|---|"]
        for regime, e in s["regimes"].items():
            f = lambda ms, d=3: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"  # noqa: E731
            tsne = "–" if e["db_tsne_ood_seed0"] is None else f"{e['db_tsne_ood_seed0']:.2f}"
            lines.append(f"| {regime.upper()} ({e['n_seeds']} seeds) | {f(e['rmse_id'])} | {f(e['rmse_ood'])} | "
                         f"{f(e['w1_train'], 2)} | {f(e['w1_id'], 2)} | {f(e['w1_ood'], 2)} | "
                         f"{f(e['db_raw_ood'], 2)} | {tsne} | {e['train_minutes'][0]:.1f} |")
        if s["claims"]:
            lines += ["", "Paper claims, as measured here:", ""]
            lines += [f"- {claim}: **{'reproduced' if ok else 'not reproduced'}**" for claim, ok in s["claims"].items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
