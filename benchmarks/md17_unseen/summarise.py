"""One Markdown summary of a results folder: errors (``run.py``), long MD (``long_md.py``) and extra
relaxation steps (``extra_steps.py``), per molecule and variant.

    python benchmarks/md17_unseen/summarise.py benchmarks/md17_unseen/results/sgdml50

writes ``summary.md`` into the folder and prints it. Cells with no run behind them show "–".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ttcalc.bench import markdown


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


if __name__ == "__main__":
    main()
