"""The energy + force loss shared by training and test-time training.

    L = w_E · mean_b ((E_b − Ê_b) / N_b)²  +  w_F · mean_{i,α} (F_iα − F̂_iα)²

Per-atom energy errors keep molecules of different sizes comparable. Training and TTT use this
one function, so the in-distribution prior loss stored in a checkpoint is directly comparable to
the TTT loss (the TTT early-stopping target, Kreiman & Krishnapriyan 2025, sec. 5).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class LossWeights:
    energy: float = 1.0
    forces: float = 10.0


def energy_force_loss(pred: dict[str, Tensor], energy: Tensor, forces: Tensor, n_atoms: Tensor,
                      weights: LossWeights, offset_free: bool = False) -> tuple[Tensor, dict[str, float]]:
    """Weighted loss and its parts (energy MSE per atom², force MSE) in eV² and (eV/Å)².

    ``offset_free=True`` (frames of one system only) removes the mean energy error of the batch
    first, i.e. fits energies up to one constant: what TTT needs on a molecule whose composition
    the element references never saw, where the prior's energy zero and the model's differ by an
    arbitrary constant (hundreds of eV for rMD17 references fitted on three compositions).
    """
    e_err = (pred["energy"] - energy) / n_atoms.to(energy.dtype)
    if offset_free:
        e_err = e_err - e_err.mean()
    e_mse = (e_err ** 2).mean()
    f_mse = ((pred["forces"] - forces) ** 2).mean()
    loss = weights.energy * e_mse + weights.forces * f_mse
    return loss, {"energy_mse": float(e_mse.detach()), "forces_mse": float(f_mse.detach())}
