"""Build the test fixtures in ``tests/data/`` from the full reference data.

The fixtures have the layout of the full data (``rmd17/rmd17_<mol>.npz`` with the official split
keys, ``qm9/qm9.npz``, the 3BPA, acac and mlearn extended XYZ files), so the test suite runs the
same readers on them; they are seeded subsets, a few hundred kB each. Sources and licences:

* rMD17 (Christensen & von Lilienfeld 2020), CC0: per molecule, SPLIT_FRAMES frames of each
  official split (re-indexed; train_0k and test_0k stay disjoint);
* QM9 (Ramakrishnan et al. 2014), CC0: QM9_MOLECULES molecules with every property;
* 3BPA (Kovács et al. 2021), MIT; acac (Batatia et al., BOTNet), MIT: the first frames of each file;
* mlearn (Zuo et al. 2020), BSD-3: the Cu and Ni test files, and the first frames of the others.

Run from the repository root: ``python tests/data/build_fixtures.py [--source DIR]`` (default
``$TTCALC_DATA``, else ``../shared/data``). The output is deterministic.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MOLECULES = ("aspirin", "benzene", "uracil", "naphthalene", "toluene")
SPLITS = [f"{k}_0{i}" for k in ("train", "test") for i in range(1, 6)]
#: frames kept per official split: enough for the largest draw a test makes from it
SPLIT_FRAMES = {"train_01": 256, "test_01": 256, "train_02": 56}
OTHER_SPLIT_FRAMES = 8
QM9_MOLECULES = 600
XYZ_FRAMES = {"3bpa/train_300K.xyz": 40, "3bpa/test_300K.xyz": 12, "3bpa/test_600K.xyz": 12,
              "acac/train_300K.xyz": 40, "acac/train_600K.xyz": 24, "acac/test_MD_300K.xyz": 12,
              "acac/test_MD_600K.xyz": 12, "mlearn/Cu_test.xyz": None, "mlearn/Ni_test.xyz": None,
              "mlearn/Ge_test.xyz": 6, "mlearn/Li_test.xyz": 6, "mlearn/Mo_test.xyz": 6, "mlearn/Si_test.xyz": 6,
              "mlearn/Ge_training.xyz": 6, "mlearn/Li_training.xyz": 6, "mlearn/Mo_training.xyz": 6,
              "mlearn/Si_training.xyz": 6}


def rmd17_subset(src: Path, dest: Path, seed: int = 0) -> None:
    d = np.load(src)
    rng = np.random.default_rng(seed)
    picked = {s: rng.permutation(d[s])[: SPLIT_FRAMES.get(s, OTHER_SPLIT_FRAMES)] for s in SPLITS}
    frames = np.unique(np.concatenate(list(picked.values())))
    new = {old: i for i, old in enumerate(frames)}
    out = {k: d[k][frames] for k in ("R", "E", "F", "old_indices")}
    out["z"] = d["z"]
    out.update({s: np.array([new[i] for i in idx], dtype=np.int64) for s, idx in picked.items()})
    np.savez_compressed(dest, **out)


def qm9_subset(src: Path, dest: Path, seed: int = 0) -> None:
    d = np.load(src)
    n = len(d["n_atoms"])
    keep = np.sort(np.random.default_rng(seed).choice(n, QM9_MOLECULES, replace=False))
    offsets = d["offsets"]
    rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in keep])
    out = {k: d[k][keep] for k in d.files if k not in ("Z", "R", "offsets")}
    out["Z"], out["R"] = d["Z"][rows], d["R"][rows]
    out["offsets"] = np.concatenate([[0], np.cumsum(d["n_atoms"][keep].astype(np.int64))])
    np.savez_compressed(dest, **out)


def xyz_head(src: Path, dest: Path, n_frames: int | None) -> None:
    """The first ``n_frames`` frames of an (extended) XYZ file, copied verbatim."""
    lines = src.read_text().splitlines(keepends=True)
    out, i, count = [], 0, 0
    while i < len(lines) and (n_frames is None or count < n_frames):
        n = int(lines[i])
        out += lines[i: i + n + 2]
        i += n + 2
        count += 1
    dest.write_text("".join(out))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=os.environ.get("TTCALC_DATA", "../shared/data"))
    args = p.parse_args(argv)
    src = Path(args.source)
    for sub in ("rmd17", "qm9", "3bpa", "acac", "mlearn"):
        (HERE / sub).mkdir(exist_ok=True)
    for mol in MOLECULES:
        rmd17_subset(src / "rmd17" / f"rmd17_{mol}.npz", HERE / "rmd17" / f"rmd17_{mol}.npz")
    qm9_subset(src / "qm9" / "qm9.npz", HERE / "qm9" / "qm9.npz")
    for rel, n in XYZ_FRAMES.items():
        xyz_head(src / rel, HERE / rel, n)
    total = sum(f.stat().st_size for f in HERE.rglob("*") if f.is_file())
    print(f"fixtures written to {HERE} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
