"""Learning curves of the v4 training runs: validation force MAE per head against epoch.

    python benchmarks/md17_unseen/plot_learning_curves.py

reads ``results/md17-abu-sgdml-v4.csv`` and ``results/md17-abu-xtb-v4.csv`` (the logs that
``ttcalc train`` writes as it goes) and writes ``results/learning_curves_v4.png``.
"""
from __future__ import annotations

from pathlib import Path

from ttcalc.app.plots import plot_learning_curves

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = {"md17-abu-sgdml v4": RESULTS / "md17-abu-sgdml-v4.csv", "md17-abu v4 (xTB)": RESULTS / "md17-abu-xtb-v4.csv"}


if __name__ == "__main__":
    print(plot_learning_curves({k: v for k, v in LOGS.items() if v.exists()}, RESULTS / "learning_curves_v4.png"))
