"""Interatomic graphs: which atom pairs a message-passing model sees.

Two constructions share one output type, :class:`Graph`:

* **dense** (molecules, no periodicity): every ordered pair (i, j), i != j, plus one self loop per
  atom. Every TensorNet contribution of an edge is multiplied by the cosine envelope, which is zero
  beyond the cutoff (with zero gradient), so the dense graph gives the same energy as a radius
  graph, and its shape depends only on the number of atoms. Static shapes are what lets the compiled
  path (:mod:`ttcalc.model.compiled`) reuse one compiled kernel for a whole trajectory.
* **radius** (periodic cells or large systems): ASE's neighbour list with integer cell shifts, so
  edge vectors ``r_j - r_i + S·cell`` stay differentiable in both positions and cell (stress).

Self loops are kept apart from real edges: their vectors are exactly zero and do not depend on
positions, so the edge norm is never differentiated at zero (which would give NaN gradients).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ase.neighborlist import neighbor_list

#: above this many atoms a non-periodic system uses the sparse radius graph
DENSE_MAX_ATOMS = 96


@dataclass
class Graph:
    """Edges of a (batched) structure.

    ``edge_index`` (2, E) holds real edges (receiver i, sender j) first and then ``n_self``
    self loops; ``shifts`` (E_real, 3) are integer cell shifts of the sender for the real edges.
    """

    edge_index: torch.Tensor
    shifts: torch.Tensor
    n_self: int

    @property
    def n_real(self) -> int:
        return int(self.edge_index.shape[1]) - self.n_self


def _dense_pairs(n: int) -> np.ndarray:
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    return np.stack([i, j])


def build_graph(
    numbers_per_structure: list[int],
    positions: np.ndarray,
    cutoff: float,
    cells: list[np.ndarray | None] | None = None,
    pbcs: list[np.ndarray | None] | None = None,
    dense: bool | None = None,
    device: torch.device | str = "cpu",
) -> Graph:
    """Build the graph of a batch of structures laid out consecutively in ``positions``.

    ``numbers_per_structure`` gives the atom count of each structure. Periodic structures always
    use the radius graph; non-periodic ones use the dense graph when ``dense`` is True, or when
    ``dense`` is None and they have at most :data:`DENSE_MAX_ATOMS` atoms.
    """
    cells = cells or [None] * len(numbers_per_structure)
    pbcs = pbcs or [None] * len(numbers_per_structure)
    edges, shifts = [], []
    offset = 0
    for n, cell, pbc in zip(numbers_per_structure, cells, pbcs):
        periodic = pbc is not None and bool(np.any(pbc))
        use_dense = (not periodic) and (dense if dense is not None else n <= DENSE_MAX_ATOMS)
        if use_dense:
            e = _dense_pairs(n)
            s = np.zeros((e.shape[1], 3))
        else:
            from ase import Atoms

            atoms = Atoms(
                numbers=np.ones(n, dtype=int),
                positions=positions[offset : offset + n],
                cell=cell if cell is not None else np.zeros((3, 3)),
                pbc=pbc if pbc is not None else False,
            )
            i, j, S = neighbor_list("ijS", atoms, float(cutoff))
            e = np.stack([i, j])
            s = S.astype(np.float64)
        edges.append(e + offset)
        shifts.append(s)
        offset += n
    self_loops = np.arange(offset)
    edge_index = np.concatenate(edges + [np.stack([self_loops, self_loops])], axis=1)
    return Graph(
        edge_index=torch.as_tensor(edge_index, dtype=torch.long, device=device),
        shifts=torch.as_tensor(np.concatenate(shifts), dtype=torch.float64, device=device),
        n_self=offset,
    )


def edge_geometry(
    pos: torch.Tensor,
    graph: Graph,
    cell_per_edge: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge vectors (E, 3) and lengths (E,) for ``graph``, differentiable in ``pos`` (and cell).

    ``cell_per_edge`` (E_real, 3, 3) is each real edge's cell, needed only for periodic edges.
    The vector of edge (i, j) is ``r_j - r_i + S_ij · cell``; self loops get zero vectors.
    """
    n_real = graph.n_real
    src = graph.edge_index[0, :n_real]
    dst = graph.edge_index[1, :n_real]
    vec = pos.index_select(0, dst) - pos.index_select(0, src)
    if cell_per_edge is not None:
        shifts = graph.shifts.to(pos.dtype)
        vec = vec + torch.einsum("ek,ekl->el", shifts, cell_per_edge)
    length = torch.linalg.vector_norm(vec, dim=-1)
    zeros_v = pos.new_zeros((graph.n_self, 3))
    zeros_l = pos.new_zeros((graph.n_self,))
    return torch.cat([vec, zeros_v]), torch.cat([length, zeros_l])
