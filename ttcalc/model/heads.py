"""Output heads on top of the shared representation.

An :class:`EnergyHead` maps per-atom features x_i to per-atom energies

    E_i = s · MLP(x_i) + e_ref(Z_i),        E = Σ_i E_i,

where e_ref are per-element reference energies fitted by least squares on the head's training
labels and s is a fixed scale (the RMS force of those labels), so the MLP learns O(1) numbers.
The main head θM predicts reference (DFT) labels, the prior head θP predicts a cheap prior's labels
(Kreiman & Krishnapriyan 2025, sec. 5.1: joint/prior pretraining gives TTT a label-free target).

:class:`PropertyHead` maps the same features to a molecular property (HOMO-LUMO gap, dipole, ⟨R²⟩)
for property fine-tuning (Peng et al. 2026).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from ttcalc.model.tmdnet import act_class_mapping


def mlp(in_features: int, hidden: Sequence[int], out: int, activation: str, dtype: torch.dtype) -> nn.Sequential:
    """Linear-act-...-Linear with the given hidden widths."""
    act = act_class_mapping[activation]
    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Linear(width, h, dtype=dtype), act()]
        width = h
    layers.append(nn.Linear(width, out, dtype=dtype))
    return nn.Sequential(*layers)


def segment_sum(values: Tensor, index: Tensor, n: int) -> Tensor:
    """Σ over atoms of each structure: (n_atoms, ...) -> (n, ...)."""
    out = torch.zeros((n,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add(0, index, values)


class EnergyHead(nn.Module):
    """Per-atom energy MLP with element references and a scale."""

    def __init__(self, in_features: int, hidden: int, max_z: int, activation: str = "silu",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.mlp = mlp(in_features, (hidden,), 1, activation, dtype)
        self.register_buffer("element_energy", torch.zeros(max_z, dtype=dtype))
        self.register_buffer("scale", torch.ones((), dtype=dtype))

    def set_statistics(self, element_energy: dict[int, float], scale: float) -> None:
        """Install least-squares element references (eV) and the output scale (eV/Å RMS force)."""
        with torch.no_grad():
            self.element_energy.zero_()
            for z, e in element_energy.items():
                self.element_energy[int(z)] = float(e)
            self.scale.fill_(float(scale))

    def copy_mlp_from(self, other: "EnergyHead") -> None:
        """Take ``other``'s MLP, rescaled to this head's scale, so both predict the same forces
        (energies differ only by the per-element references)."""
        with torch.no_grad():
            self.mlp.load_state_dict(other.mlp.state_dict())
            ratio = other.scale / self.scale
            self.mlp[-1].weight.mul_(ratio)
            self.mlp[-1].bias.mul_(ratio)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Per-atom energies (eV) with the shape of ``z``."""
        return self.scale * self.mlp(x).squeeze(-1) + self.element_energy[z]


# --- property heads (Peng et al. 2026, "Multi-Task Fine-Tuning ...", sec. 3) --------------------------
PROPERTY_KINDS = ("atomwise", "dipole", "spatial_extent")
#: e·Å -> Debye and Å² -> bohr², for the special heads' output units
UNIT_FACTORS = {"": 1.0, "eV": 1.0, "e*Angstrom": 1.0, "Debye": 4.803204, "Angstrom^2": 1.0,
                "bohr^2": 1.0 / 0.52917721067 ** 2}


@dataclass
class PropertyHeadConfig:
    """A downstream property head on the shared representation.

    ``kind="atomwise"``: y = pool_i [s · MLP(x_i) + p(Z_i)] with ``reduce="sum"`` (extensive) or
    ``"mean"`` (intensive); p(Z) are per-element constants fitted by least squares on counts
    (extensive) or composition fractions (intensive) and switched off with ``element_bias=False``
    (one global constant instead, so test elements absent from training cost nothing).
    ``kind="dipole"``: |Σ_i q_i r_i| with charges q_i = MLP(x_i) made neutral per molecule.
    ``kind="spatial_extent"``: ⟨R²⟩ = Σ_i w_i |r_i − r_c|², w_i = softplus(MLP(x_i)) ≥ 0 and r_c
    the centre of nuclear charge.
    """

    name: str
    kind: str = "atomwise"
    reduce: str = "mean"
    hidden: tuple[int, ...] = (240, 240, 240)
    out_dim: int = 1
    element_bias: bool = True
    unit: str = "eV"

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a property head needs a non-empty name")
        if self.kind not in PROPERTY_KINDS:
            raise ValueError(f"unknown property head kind {self.kind!r}; choose from {PROPERTY_KINDS}")
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' (intensive) or 'sum' (extensive), not {self.reduce!r}")
        if self.out_dim < 1 or (self.kind != "atomwise" and self.out_dim != 1):
            raise ValueError(f"out_dim must be >= 1 (and 1 for the {self.kind} head), got {self.out_dim}")
        if self.unit not in UNIT_FACTORS:
            raise ValueError(f"unknown unit {self.unit!r}; choose from {sorted(UNIT_FACTORS)}")
        self.hidden = tuple(int(h) for h in self.hidden)

    @property
    def intensive(self) -> bool:
        return self.reduce == "mean"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class PropertyHead(nn.Module):
    """Molecular property from per-atom features (see :class:`PropertyHeadConfig`)."""

    def __init__(self, config: PropertyHeadConfig, in_features: int, max_z: int, activation: str = "silu",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.mlp = mlp(in_features, config.hidden, config.out_dim, activation, dtype)
        self.register_buffer("element_bias", torch.zeros(max_z, config.out_dim, dtype=dtype))
        self.register_buffer("scale", torch.ones(config.out_dim, dtype=dtype))

    def set_statistics(self, element_bias: Tensor | np.ndarray, scale: Tensor | np.ndarray) -> None:
        """Install p(Z) as a (max_z, d) table and the output scale (d,)."""
        with torch.no_grad():
            self.element_bias.copy_(torch.as_tensor(np.asarray(element_bias), dtype=self.element_bias.dtype))
            self.scale.copy_(torch.as_tensor(np.asarray(scale), dtype=self.scale.dtype).reshape(-1))

    def forward(self, x: Tensor, z: Tensor, pos: Tensor, index: Tensor, n_structures: int) -> Tensor:
        """(n_structures, out_dim) predictions in the head's unit."""
        kind = self.config.kind
        raw = self.mlp(x)
        counts = segment_sum(torch.ones_like(z, dtype=x.dtype), index, n_structures)
        if kind == "atomwise":
            y_atom = raw * self.scale + self.element_bias[z]
            y = segment_sum(y_atom, index, n_structures)
            return y / counts[:, None] if self.config.intensive else y
        if kind == "dipole":
            q = raw[:, 0]
            q = q - (segment_sum(q, index, n_structures) / counts)[index]  # neutral: origin-independent
            mu = segment_sum(q[:, None] * pos, index, n_structures)
            out = torch.linalg.norm(mu, dim=1, keepdim=True)
        else:  # spatial_extent
            zf = z.to(x.dtype)
            centre = segment_sum(zf[:, None] * pos, index, n_structures) / segment_sum(zf, index, n_structures)[:, None]
            w = nn.functional.softplus(raw[:, 0] + self.element_bias[z, 0])
            out = segment_sum(w * ((pos - centre[index]) ** 2).sum(-1), index, n_structures)[:, None]
        return out * self.scale * UNIT_FACTORS[self.config.unit]
