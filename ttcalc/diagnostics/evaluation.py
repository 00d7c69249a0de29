"""Energy and force errors of a model on labelled frames (``ttcalc eval``, benchmarks)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ttcalc.model.batch import collate


def predict_frames(model, frames: Sequence[Atoms], head: str = "main",
                   batch_size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (M,) and forces of ``frames`` with one head, in eV and eV/Å."""
    energies, forces = [], []
    for start in range(0, len(frames), batch_size):
        chunk = list(frames[start:start + batch_size])
        batch = collate(chunk, model.cutoff, dtype=model.dtype, device=model.device)
        out = model(batch, heads=(head,))[head]
        energies.append(out["energy"].detach().double().cpu().numpy())
        f = out["forces"].detach().double().cpu().numpy()
        forces += np.split(f, np.cumsum([len(a) for a in chunk])[:-1])
    return np.concatenate(energies), forces


def force_component_errors(pred_f: Sequence[np.ndarray], ref_f: Sequence[np.ndarray]) -> np.ndarray:
    """All force-component differences of two per-frame force lists, flattened (eV/Å)."""
    return np.concatenate([np.ravel(np.asarray(p) - np.asarray(r)) for p, r in zip(pred_f, ref_f)])


def error_metrics(pred_e: np.ndarray, pred_f: Sequence[np.ndarray], ref_e: np.ndarray,
                  ref_f: Sequence[np.ndarray]) -> dict:
    """MAE/RMSE of energies (meV) and force components (meV/Å).

    ``energy_mae_offset_meV`` removes the mean energy error first: with element references fitted
    on few compositions, a molecule outside them carries an undetermined constant offset, and the
    offset-free error is what matters for dynamics.
    """
    de = np.asarray(pred_e) - np.asarray(ref_e)
    df = force_component_errors(pred_f, ref_f)
    return {
        "n_frames": int(len(de)),
        "energy_mae_meV": float(np.abs(de).mean() * 1e3),
        "energy_rmse_meV": float(np.sqrt((de**2).mean()) * 1e3),
        "energy_mae_offset_meV": float(np.abs(de - de.mean()).mean() * 1e3),
        "energy_offset_meV": float(de.mean() * 1e3),
        "force_mae_meV_A": float(np.abs(df).mean() * 1e3),
        "force_rmse_meV_A": float(np.sqrt((df**2).mean()) * 1e3),
    }


def evaluate_frames(model, frames: Sequence[Atoms], head: str = "main") -> dict:
    """Errors of ``model``'s head against the labels the frames carry."""
    e, f = predict_frames(model, frames, head)
    ref_e = np.array([a.get_potential_energy() for a in frames])
    ref_f = [a.get_forces() for a in frames]
    return error_metrics(e, f, ref_e, ref_f)


def evaluate_calculator(calc, frames: Sequence[Atoms]) -> dict:
    """Errors of any ASE calculator (a prior, an adapted TTTCalculator) against frame labels."""
    pe, pf = [], []
    for a in frames:
        b = a.copy()
        b.calc = calc
        pe.append(b.get_potential_energy())
        pf.append(b.get_forces())
    return error_metrics(np.array(pe), pf, np.array([a.get_potential_energy() for a in frames]),
                         [a.get_forces() for a in frames])


def load_eval_frames(data: str, split: str = "test_01", n: int | None = None, seed: int = 0) -> list[Atoms]:
    """rMD17 molecule name (official split) or a labelled extxyz/db file."""
    from ttcalc.data import RMD17_MOLECULES, load_rmd17, read_frames

    if data in RMD17_MOLECULES or not Path(data).exists():
        return load_rmd17(data, split=split, n=n, seed=seed)
    frames = read_frames(data)
    if n is not None:
        idx = np.random.default_rng(seed).choice(len(frames), size=min(n, len(frames)), replace=False)
        frames = [frames[i] for i in sorted(idx)]
    return frames


def predict_properties(model, frames: Sequence[Atoms], name: str, batch_size: int = 256) -> np.ndarray:
    """Predictions (M, d) of property head ``name`` on ``frames`` (in the head's unit).

    Frames are batched in order of size (less padding in the dense layout) and returned in input order."""
    order = np.argsort([len(a) for a in frames], kind="stable")
    out = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            batch = collate([frames[i] for i in order[start:start + batch_size]], model.cutoff,
                            dtype=model.dtype, device=model.device)
            out.append(model.predict_properties(batch, [name])[name].double().cpu().numpy())
    pred = np.empty((len(frames), out[0].shape[1]))
    pred[order] = np.concatenate(out)
    return pred
