"""One Markdown summary of a results folder: errors (``run.py``), long MD (``long_md.py``) and extra
relaxation steps (``extra_steps.py``), per molecule and variant.

    python benchmarks/md17_unseen/summarise.py benchmarks/md17_unseen/results/sgdml50

writes ``summary.md`` into the folder and prints it, and ``{molecule}_hr_{ensemble}.png`` (h(r) of every
variant whose long-MD file holds the curves, seed-averaged, against all rMD17 frames). Cells with no run
behind them show "–".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from md_protocols.plots import plot_hr
from ttcalc.app.benchmark import markdown


def merged_results(folder: Path) -> dict:
    """``results.json`` with each long-MD file's stability, h(r) and runs under its variant/ensemble."""
    results = json.loads((folder / "results.json").read_text())
    for path in sorted((folder / "long").glob("*.json")):
        md = json.loads(path.read_text())
        mol = results["molecules"].setdefault(md["molecule"], {"variants": {}})
        variant = mol["variants"].setdefault(md["label"], {})
        variant[md["ensemble"]] = {"stability": md["stability"], "hr_mae": md["hr_mae_mean"], "runs": md["runs"],
                                   "simulated_ps": md["simulated_ps"], "target_ps": md["target_ps"]}
    return results


def hr_plots(folder: Path) -> list[Path]:
    """One h(r) figure per molecule and ensemble from the long-MD files that store curves."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted((folder / "long").glob("*.json")):
        md = json.loads(path.read_text())
        if "hr_r" in md and any("hr" in run for run in md["runs"]):
            groups.setdefault((md["molecule"], md["ensemble"]), []).append(md)
    written = []
    for (mol, ens), runs in groups.items():
        r = np.asarray(runs[0]["hr_r"])
        curves = {f"{md['label']} (MAE {md['hr_mae_mean']:.3f})": np.mean([run["hr"] for run in md["runs"] if "hr" in run], axis=0)
                  for md in runs}
        path = folder / f"{mol}_hr_{ens}.png"
        plot_hr(r, curves, np.asarray(runs[0]["hr_reference"]), path,
                title=f"{mol}, {ens.upper()} 500 K: h(r) against all rMD17 frames")
        written.append(path)
    return written


def extra_steps_table(folder: Path) -> str:
    path = folder / "extra_steps.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    lines = ["## Extra relaxation steps", "",
             "BFGS to fmax 0.01 eV/Å from the benchmark's starting frame with each variant, then with the "
             "reference from that minimum (`extra_steps.py`).", "",
             "| molecule | variant | own steps | extra GFN2-xTB steps | xTB energy above xTB minimum (meV) | "
             "PBE max force at the minimum (eV/Å) | extra PBE steps |", "|---|---|---|---|---|---|---|"]
    for mol, variants in data.items():
        if mol == "config":
            continue
        for name, v in variants.items():
            f = v.get("dft_max_force_at_minimum_eV_per_A")
            lines.append(f"| {mol} | {name} | {v['own_steps']} | {v['xtb_extra_steps']} | "
                         f"{v['xtb_energy_above_xtb_minimum_meV']:.0f} | {'–' if f is None else f'{f:.3f}'} | "
                         f"{v.get('dft_extra_steps', '–')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    folder = Path(p.parse_args().folder)
    text = markdown(merged_results(folder)) + "\n" + extra_steps_table(folder)
    (folder / "summary.md").write_text(text)
    print(text)
    for path in hr_plots(folder):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
