"""Choose MFT's λ_reg and auxiliary batch size on in-distribution validation only (issue: MFT on a
real backbone, step 2).

For every (λ_reg, force-field batch) pair of the grid, one MFT run (seed 0, the budget of run.py)
is trained on the BOOM train subsample and scored by its RMSE on the ID *validation* molecules. The
pair with the lowest validation RMSE is the choice; ties (within 1 %) go to the smaller λ_reg and
then the smaller batch, the cheaper and less constraining setting. The rule is fixed here, before
any run. This script never loads the ID-test or OOD molecules, so no test number can influence the
choice: it writes ``scan_<property>.json`` (grid, scores, choice), which ``run.py --settings-from``
then reads.

Each run is written to ``<out>/runs/`` as it finishes, and a rerun skips it (resumable).

    python benchmarks/mft_qm9/scan.py --backbone benchmarks/mft_qm9/results/backbone_v2.pt \\
        --n-train 2000 --epochs 8 --minutes 15 --out benchmarks/mft_qm9/results/v2
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

from corpus import CorpusConfig, qm9_xtb_frames
from md_protocols.files import atomic_write
from run import HERE, add_budget_arguments, benchmark_split, finetune_settings, rmse
from ttcalc import load_model
from ttcalc.data.qm9 import QM9_PROPERTIES, load_qm9
from ttcalc.diagnostics.evaluation import predict_properties
from ttcalc.model.heads import PropertyHeadConfig
from ttcalc.train import finetune_property
from ttcalc.train.regimes import split_frames

log = logging.getLogger("mft_scan")
#: relative difference of validation RMSE below which two settings count as tied
TIE = 0.01


def choose(scores: list[dict]) -> dict:
    """The rule of the module docstring: lowest validation RMSE; ties to smaller λ, then batch."""
    best = min(s["val_rmse"] for s in scores)
    tied = [s for s in scores if s["val_rmse"] <= best * (1 + TIE)]
    return min(tied, key=lambda s: (s["lambda_reg"], s["ff_batch_size"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(p)
    p.add_argument("--property", default="gap")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--ff-batch-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--out", default=str(HERE / "results" / "v2"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    backbone = load_model(args.backbone)
    qm9 = load_qm9()
    values = qm9.property(args.property)
    split = benchmark_split(values, args.n_train)  # only train and val are read here
    train, val = qm9.molecules(split.train), qm9.molecules(split.val)
    ff_train, _ = split_frames(qm9_xtb_frames(CorpusConfig(), progress=False), (0.95, 0.05), seed=0)
    unit = QM9_PROPERTIES[args.property][2]
    head = PropertyHeadConfig(args.property, reduce="mean", unit=unit if unit == "eV" else "")
    scores = []
    for lam, bs in itertools.product(args.lambdas, args.ff_batch_sizes):
        path = out / "runs" / f"scan-{args.property}-lambda{lam:g}-ff{bs}.json"
        if path.exists():
            scores.append(json.loads(path.read_text()))
            continue
        args.lambda_reg, args.ff_batch_size = lam, bs
        t0 = time.perf_counter()
        model, result = finetune_property(backbone, head, train, values[split.train], val, values[split.val],
                                          finetune_settings("mft", 0, args), ff_frames=ff_train,
                                          log_path=path.with_suffix(".csv"))
        row = {"lambda_reg": lam, "ff_batch_size": bs, "seed": 0,
               "val_rmse": rmse(predict_properties(model, val, args.property), values[split.val]),
               "epochs": result.epochs, "stop_reason": result.stop_reason,
               "seconds": time.perf_counter() - t0}
        with atomic_write(path, "w") as fh:
            json.dump(row, fh, indent=2)
        log.info("λ %g, ff batch %d: val RMSE %.4f %s (%.0f s)", lam, bs, row["val_rmse"], unit, row["seconds"])
        scores.append(row)
    choice = choose(scores)
    report = {"property": args.property, "unit": unit, "rule": f"lowest ID-validation RMSE; ties within "
              f"{TIE:.0%} to the smaller lambda_reg, then the smaller ff batch", "backbone": args.backbone,
              "budget": {k: getattr(args, k) for k in ("n_train", "epochs", "minutes")},
              "scores": scores, "choice": {k: choice[k] for k in ("lambda_reg", "ff_batch_size", "val_rmse")}}
    with atomic_write(out / f"scan_{args.property}.json", "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps(report["choice"]))


if __name__ == "__main__":
    main()
