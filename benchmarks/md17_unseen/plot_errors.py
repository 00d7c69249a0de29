"""Bar charts of the unseen-molecule force MAE per variant, one per prior, from ``run.py`` results.

    python benchmarks/md17_unseen/plot_errors.py

writes ``results/force_mae_sgdml50.png`` and ``results/force_mae_xtb.png``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ttcalc.app.plots import plot_error_bars

RESULTS = Path(__file__).resolve().parent / "results"
#: figure -> [(bar label, results folder, variant)]
FIGURES = {
    "force_mae_sgdml50.png": [("prior alone", "sgdml50", "prior"), ("no TTT", "sgdml50", "mlip"),
                              ("TTT", "sgdml50", "mlip+ttt"), ("TTT, acac-chosen", "sgdml50-acac-ttt", "mlip+ttt"),
                              ("RR + TTT", "sgdml50-rr-dist", "mlip+ttt+rr")],
    "force_mae_xtb.png": [("GFN2-xTB alone", "xtb-v1", "prior"), ("no TTT", "xtb-v1", "mlip"),
                          ("TTT", "xtb-v1", "mlip+ttt"), ("RR + TTT", "xtb-v1-rr-dist", "mlip+ttt+rr")],
}


def main() -> None:
    for name, bars in FIGURES.items():
        table = {}
        for label, folder, variant in bars:
            res = json.loads((RESULTS / folder / "results.json").read_text())["molecules"]
            table[label] = {mol: (m["variants"][variant]["errors"]["force_mae_meV_A"], 0.0) for mol, m in res.items()}
        plot_error_bars(table, RESULTS / name, ylabel="force MAE (meV/Å)")
        print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
