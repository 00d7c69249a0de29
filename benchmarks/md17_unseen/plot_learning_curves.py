"""Learning curves of the v4 training runs: validation force MAE per head against epoch.

    python benchmarks/md17_unseen/plot_learning_curves.py

reads ``results/md17-abu-sgdml-v4.csv``, ``results/md17-abu-xtb-v4.csv`` and the warm restart
``results/md17-abu-sgdml-v4r.csv`` (the logs that ``ttcalc train`` writes as it goes; the restart is drawn
from epoch 480, after the 479 epochs of the run it starts from) and writes ``results/learning_curves_v4.png``.
"""
from __future__ import annotations

from pathlib import Path

from ttcalc.app.plots import plot_learning_curves

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = {"md17-abu-sgdml v4": RESULTS / "md17-abu-sgdml-v4.csv", "md17-abu v4 (xTB)": RESULTS / "md17-abu-xtb-v4.csv",
        "md17-abu-sgdml v4r (warm restart)": RESULTS / "md17-abu-sgdml-v4r.csv"}
OFFSETS = {"md17-abu-sgdml v4r (warm restart)": 479}  # v4r starts from v4's last epoch


if __name__ == "__main__":
    print(plot_learning_curves({k: v for k, v in LOGS.items() if v.exists()}, RESULTS / "learning_curves_v4.png",
                               epoch_offsets=OFFSETS))
