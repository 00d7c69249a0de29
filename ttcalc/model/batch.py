"""Collating ASE structures into model inputs.

Non-periodic structures of up to :data:`~ttcalc.model.graph.DENSE_MAX_ATOMS` atoms are padded into dense
(B, N) tensors and use the complete-graph TensorNet kernel; anything else (periodic cells, large
systems, the Equivariant Transformer) uses a flat layout with an explicit radius graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ttcalc.model.graph import DENSE_MAX_ATOMS, Graph, build_graph


@dataclass
class Batch:
    """Model input for B structures with n atoms in total.

    Always present: ``z`` (n,), ``batch`` (n,) structure index of each atom, ``n_atoms`` (B,).
    Dense layout: ``pos`` (B, N, 3), ``z_dense`` (B, N), ``mask`` (B, N).
    Flat layout: ``pos`` (n, 3), ``graph``, ``cell`` (B, 3, 3), ``periodic`` (B,) bool.
    Optional labels: ``energy`` (B,) and ``forces`` (n, 3), in eV and eV/Å.
    """

    z: torch.Tensor
    batch: torch.Tensor
    n_atoms: torch.Tensor
    pos: torch.Tensor
    dense: bool
    z_dense: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    graph: Graph | None = None
    cell: torch.Tensor | None = None
    periodic: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    def flat_positions(self) -> torch.Tensor:
        """Positions as (n, 3), whatever the layout."""
        return self.pos[self.mask] if self.dense else self.pos


def collate(
    frames: Sequence[Atoms],
    cutoff: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    labels: bool = False,
    dense: bool | None = None,
) -> Batch:
    """Collate ASE structures into a :class:`Batch`.

    ``dense=None`` chooses the dense layout when every structure is non-periodic and small.
    With ``labels=True`` each frame must carry energy and forces (e.g. a SinglePointCalculator).
    """
    if len(frames) == 0:
        raise ValueError("cannot collate an empty list of structures")
    n_atoms = np.array([len(a) for a in frames])
    periodic = np.array([bool(np.any(a.pbc)) for a in frames])
    if dense is None:
        dense = (not periodic.any()) and n_atoms.max() <= DENSE_MAX_ATOMS
    elif dense and periodic.any():
        raise ValueError("the dense layout does not support periodic structures")
    z_flat = np.concatenate([a.numbers for a in frames])
    batch_index = np.repeat(np.arange(len(frames)), n_atoms)
    out = dict(
        z=torch.as_tensor(z_flat, dtype=torch.long, device=device),
        batch=torch.as_tensor(batch_index, dtype=torch.long, device=device),
        n_atoms=torch.as_tensor(n_atoms, dtype=torch.long, device=device),
        dense=dense,
    )
    if dense:
        B, N = len(frames), int(n_atoms.max())
        pos = np.zeros((B, N, 3))
        z = np.zeros((B, N), dtype=np.int64)
        mask = np.zeros((B, N), dtype=bool)
        for b, a in enumerate(frames):
            pos[b, : len(a)] = a.positions
            z[b, : len(a)] = a.numbers
            mask[b, : len(a)] = True
        out.update(
            pos=torch.as_tensor(pos, dtype=dtype, device=device),
            z_dense=torch.as_tensor(z, device=device),
            mask=torch.as_tensor(mask, device=device),
        )
    else:
        positions = np.concatenate([a.positions for a in frames])
        cells = [np.asarray(a.cell.array) for a in frames]
        pbcs = [np.asarray(a.pbc) for a in frames]
        out.update(
            pos=torch.as_tensor(positions, dtype=dtype, device=device),
            graph=build_graph(list(n_atoms), positions, cutoff, cells, pbcs, dense=False, device=device),
            cell=torch.as_tensor(np.stack(cells), dtype=dtype, device=device),
            periodic=torch.as_tensor(periodic, device=device),
        )
    if labels:
        energies, forces = [], []
        for a in frames:
            if a.calc is None:
                raise ValueError(f"frame {a.get_chemical_formula()} carries no energy/forces labels")
            energies.append(a.get_potential_energy())
            forces.append(a.get_forces())
        out.update(
            energy=torch.as_tensor(np.array(energies), dtype=dtype, device=device),
            forces=torch.as_tensor(np.concatenate(forces), dtype=dtype, device=device),
        )
    return Batch(**out)
