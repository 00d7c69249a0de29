"""Learning curves of the v4 training runs: validation force MAE per head against epoch.

    python benchmarks/md17_unseen/plot_learning_curves.py

reads ``results/md17-abu-sgdml-v4.csv``, ``results/md17-abu-xtb-v4.csv`` and the warm restart
``results/md17-abu-sgdml-v4r.csv`` (the logs that ``ttcalc train`` writes as it goes; the restart is drawn
after the last epoch of the v4 log, the run it starts from) and writes ``results/learning_curves_v4.png``.
"""
from __future__ import annotations

from pathlib import Path

from ttcalc.app.plots import plot_learning_curves, read_training_log

RESULTS = Path(__file__).resolve().parent / "results"
V4, V4R = "md17-abu-sgdml v4", "md17-abu-sgdml v4r (warm restart)"
LOGS = {V4: RESULTS / "md17-abu-sgdml-v4.csv", "md17-abu v4 (xTB)": RESULTS / "md17-abu-xtb-v4.csv",
        V4R: RESULTS / "md17-abu-sgdml-v4r.csv"}


if __name__ == "__main__":
    logs = {k: v for k, v in LOGS.items() if v.exists()}
    # v4r starts from v4's last epoch, so its epoch 1 is drawn right after it
    offsets = {V4R: int(read_training_log(LOGS[V4])[0][-1])} if V4 in logs else {}
    print(plot_learning_curves(logs, RESULTS / "learning_curves_v4.png", epoch_offsets=offsets))
