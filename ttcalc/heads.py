"""Output heads on top of the shared representation.

An :class:`EnergyHead` maps per-atom features x_i to per-atom energies

    E_i = s · MLP(x_i) + e_ref(Z_i),        E = Σ_i E_i,

where e_ref are per-element reference energies fitted by least squares on the head's training
labels and s is a fixed scale (the RMS force of those labels), so the MLP learns O(1) numbers.
The main head θM predicts reference (DFT) labels, the prior head θP predicts a cheap prior's labels
(Kreiman & Krishnapriyan 2025, sec. 5.1: joint/prior pretraining gives TTT a label-free target).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from .tmdnet import act_class_mapping


class EnergyHead(nn.Module):
    """Per-atom energy MLP with element references and a scale."""

    def __init__(self, in_features: int, hidden: int, max_z: int, activation: str = "silu",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        act = act_class_mapping[activation]
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden, dtype=dtype), act(), nn.Linear(hidden, 1, dtype=dtype)
        )
        self.register_buffer("element_energy", torch.zeros(max_z, dtype=dtype))
        self.register_buffer("scale", torch.ones((), dtype=dtype))

    def set_statistics(self, element_energy: dict[int, float], scale: float) -> None:
        """Install least-squares element references (eV) and the output scale (eV/Å RMS force)."""
        with torch.no_grad():
            self.element_energy.zero_()
            for z, e in element_energy.items():
                self.element_energy[int(z)] = float(e)
            self.scale.fill_(float(scale))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Per-atom energies (eV) with the shape of ``z``."""
        return self.scale * self.mlp(x).squeeze(-1) + self.element_energy[z]
