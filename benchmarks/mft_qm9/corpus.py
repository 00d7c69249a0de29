"""The force-field corpus of the MFT backbone (issue: stand-in for SPICE2, which is not available here).

One energy head per level of theory, each with its own labelled frames:

=========  ===============================  =====================================================
head       level of theory                  frames
=========  ===============================  =====================================================
gfn2       GFN2-xTB (computed and cached)   QM9 geometries displaced by σ = 0.05 Å, drawn from the
                                            molecules outside the GAP BOOM split's OOD and ID-test
                                            sets (so no evaluation molecule is seen in pretraining)
pbe        PBE/def2-SVP (rMD17)             train_01 frames of all 5 rMD17 molecules
pbe_d3     PBE-D3/def2-SVP (acac)           train_300K + train_600K
wb97x      ωB97X/6-31G(d) (3BPA)            train_300K
=========  ===============================  =====================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ttcalc.data import label_with_prior, load_rmd17, read_frames, split_frames
from ttcalc.data.boom import boom_split
from ttcalc.data.qm9 import displaced_molecules, load_qm9
from ttcalc.paths import dataset_path
from ttcalc.priors import make_prior

RMD17_HERE = ("aspirin", "benzene", "uracil", "naphthalene", "toluene")  # the five in ../shared/data


@dataclass
class CorpusConfig:
    n_qm9: int = 6000          # displaced QM9 molecules labelled with GFN2-xTB
    qm9_sigma: float = 0.05
    n_rmd17: int = 300         # frames per rMD17 molecule
    n_3bpa: int = 500
    n_acac: int = 500          # per temperature
    val_fraction: float = 0.05
    seed: int = 0


def evaluation_molecules(seed: int = 0) -> np.ndarray:
    """QM9 indices of the GAP split's OOD and ID-test sets (kept out of the pretraining corpus)."""
    split = boom_split(load_qm9().property("gap"), seed=seed)
    return np.union1d(split.ood, split.id_test)


def qm9_xtb_frames(cfg: CorpusConfig, progress: bool = True) -> list[Atoms]:
    qm9 = load_qm9()
    pool = np.setdiff1d(np.arange(len(qm9)), evaluation_molecules(cfg.seed))
    chosen = np.sort(np.random.default_rng(cfg.seed).choice(pool, cfg.n_qm9, replace=False))
    frames = displaced_molecules(qm9, chosen, sigma=cfg.qm9_sigma, seed=cfg.seed)
    return label_with_prior(frames, make_prior("xtb"), progress=progress)


def build_corpus(cfg: CorpusConfig, progress: bool = True) -> dict[str, tuple[list[Atoms], list[Atoms]]]:
    """``{head: (train_frames, val_frames)}`` in eV and Å."""
    sources = {
        "gfn2": qm9_xtb_frames(cfg, progress),
        "pbe": [a for mol in RMD17_HERE for a in load_rmd17(mol, "train_01", n=cfg.n_rmd17, seed=cfg.seed)],
        "pbe_d3": (read_frames(dataset_path("acac", "train_300K.xyz"))[: cfg.n_acac]
                   + read_frames(dataset_path("acac", "train_600K.xyz"))[: cfg.n_acac]),
        "wb97x": read_frames(dataset_path("3bpa", "train_300K.xyz"))[: cfg.n_3bpa],
    }
    fractions = (1 - cfg.val_fraction, cfg.val_fraction)
    return {head: split_frames(frames, fractions, seed=cfg.seed) for head, frames in sources.items()}
