"""The shared representation θR: torchmd-net's TensorNet (default) or Equivariant Transformer.

The parameters are torchmd-net's own modules, so checkpoints keep torchmd-net's layout. The forward
pass is ours: it takes a precomputed :class:`~ttcalc.model.graph.Graph` instead of torchmd-net's internal
neighbour search. That gives (i) periodic edges that are differentiable in the cell (stress),
(ii) one cutoff that we can move for radius refinement, and (iii) static shapes and plain PyTorch
ops that ``torch.compile`` can fuse. ``tests/test_representation.py`` checks that the result equals
torchmd-net's native forward.

TensorNet: Simeon & De Fabritiis, "TensorNet: Cartesian tensor representations for efficient
learning of molecular potentials", NeurIPS 2023 (eqs. 3-10 for embedding and interaction).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ttcalc.model.tmdnet import CosineCutoff, TorchMD_ET
from ttcalc.model.tmdnet import tensornet as tn
from ttcalc.model.graph import Graph


@dataclass
class RepresentationConfig:
    """Hyperparameters of the representation (names follow torchmd-net)."""

    model: Literal["tensornet", "equivariant-transformer"] = "tensornet"
    hidden_channels: int = 64
    num_layers: int = 2
    num_rbf: int = 32
    rbf_type: str = "expnorm"
    activation: str = "silu"
    cutoff: float = 5.0
    max_z: int = 100
    num_heads: int = 8  # equivariant transformer only

    def to_dict(self) -> dict:
        return asdict(self)


class Representation(nn.Module):
    """Per-atom invariant features x_i (N, F) from atomic numbers and edge geometry."""

    def __init__(self, config: RepresentationConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        shared = dict(hidden_channels=config.hidden_channels, num_layers=config.num_layers,
                      num_rbf=config.num_rbf, rbf_type=config.rbf_type, activation=config.activation,
                      cutoff_upper=config.cutoff, max_z=config.max_z, dtype=dtype)
        if config.model == "tensornet":
            self.net = tn.TensorNet(**shared, static_shapes=False)
        elif config.model == "equivariant-transformer":
            self.net = TorchMD_ET(**shared, num_heads=config.num_heads)
        else:
            raise ValueError(
                f"unknown representation {config.model!r}; choose 'tensornet' or 'equivariant-transformer'"
            )
        # torchmd-net builds some TensorNet linears without its dtype argument: convert everything
        self.net.to(dtype)
        self._cutoff = float(config.cutoff)

    # --- cutoff (radius refinement) -------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        """The radius of the neighbour graph and of every cosine envelope."""
        return self._cutoff

    def set_cutoff(self, radius: float) -> None:
        """Move the graph radius and every smooth envelope to ``radius`` (radius refinement).

        The radial basis keeps its learned centres and widths; only its envelope moves, so
        features change smoothly with the radius and the energy stays continuous at the new cutoff
        (Kreiman & Krishnapriyan 2025, sec. 4).
        """
        if not (radius > 0 and math.isfinite(radius)):
            raise ValueError(f"cutoff must be a positive finite number, got {radius!r}")
        for module in self.net.modules():
            if isinstance(module, CosineCutoff):
                module.cutoff_upper = float(radius)
        self._cutoff = float(radius)

    # --- parameter groups ---------------------------------------------------------------------
    def early_parameter_names(self) -> list[str]:
        """Names (relative to this module) of the embedding and first interaction layer.

        These are the layers that test-time training adapts by default (Kreiman & Krishnapriyan
        2025, sec. 5.2: update the early layers, keep the heads fixed).
        """
        if self.config.model == "tensornet":
            prefixes = ("net.tensor_embedding.", "net.layers.0.")
        else:
            prefixes = ("net.embedding.", "net.neighbor_embedding.", "net.attention_layers.0.")
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes)]

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self, z: Tensor, graph: Graph, edge_vec: Tensor, edge_weight: Tensor, batch: Tensor
    ) -> Tensor:
        if self.config.model == "tensornet":
            return tensornet_features(self.net, z, graph.edge_index, edge_vec, edge_weight)
        return _et_features(self.net, z, graph.edge_index, edge_vec, edge_weight, batch)


def _matmul3(X: Tensor, Y: Tensor) -> Tensor:
    """Channel-wise 3x3 matrix product of (..., 3, 3, F) tensors as a broadcast sum.

    Equals torchmd-net's permute+matmul, but as one elementwise product and a reduction: CPU
    ``bmm`` over N*F tiny 3x3 matrices loops matrix by matrix and dominated the step time.
    """
    return (X.unsqueeze(-2) * Y.unsqueeze(-4)).sum(-3)


def _matmul_o3(Y: Tensor, msg: Tensor) -> Tensor:
    return _matmul3(msg, Y) + _matmul3(Y, msg)


def tensornet_features(
    net: tn.TensorNet, z: Tensor, edge_index: Tensor, edge_vec: Tensor, edge_weight: Tensor
) -> Tensor:
    """TensorNet's forward pass (pure-PyTorch branch of torchmd-net 3.1) on a given graph.

    Mirrors ``TensorNet.forward`` with ``static_shapes=False`` and the non-Warp ops, so the same
    parameters give the same features; see torchmd-net ``models/tensornet.py``.
    """
    edge_attr = net.distance_expansion(edge_weight)
    self_loop = edge_index[0] == edge_index[1]
    # unit vectors; self loops have zero vectors and keep them (divisor 1)
    edge_unit = edge_vec / edge_weight.masked_fill(self_loop, 1.0).unsqueeze(1)
    n_atoms = z.shape[0]
    X = _embedding(net.tensor_embedding, z, edge_index, edge_weight, edge_unit, edge_attr, n_atoms)
    for layer in net.layers:
        X = _interaction(layer, X, edge_index, edge_weight, edge_attr, n_atoms)
    return _readout(net, X)


def _readout(net: tn.TensorNet, X: Tensor) -> Tensor:
    """Invariant per-atom features from the final tensors (TensorNet eq. 10)."""
    I, A, S = tn._decompose_tensor(X)
    x = torch.cat((3 * I**2, tn.tensor_norm(A), tn.tensor_norm(S)), dim=-1)
    return net.act(net.linear(net.out_norm(x)))


def _embedding(emb, z, edge_index, edge_weight, edge_unit, edge_attr, n_atoms: int) -> Tensor:
    F = emb.hidden_channels
    Z = emb.emb(z)
    Zij = emb.emb2(Z.index_select(0, edge_index.t().reshape(-1)).view(-1, 2 * F))
    dp = torch.stack(
        [emb.distance_proj1(edge_attr), emb.distance_proj2(edge_attr), emb.distance_proj3(edge_attr)],
        dim=1,
    )
    CZij = emb.cutoff(edge_weight).unsqueeze(-1) * Zij
    edge_attr_processed = CZij.unsqueeze(1) * dp
    I, A, S = tn.tensornet_embedding_message_passing(edge_unit, edge_attr_processed, edge_index, n_atoms)
    return _embedding_output(emb, I, A, S)


def _embedding_output(emb, I: Tensor, A: Tensor, S: Tensor) -> Tensor:
    """The embedding's norm-gated linear maps of the summed messages (TensorNet eq. 5-6)."""
    norm = emb.init_norm(tn.tensor_norm(tn._compose_tensor(I, A, S)))
    for linear_scalar in emb.linears_scalar:
        norm = emb.act(linear_scalar(norm))
    norm = norm.reshape(-1, 3, emb.hidden_channels)
    I = emb.linears_tensor[0](I) * norm[:, 0, :]
    A = emb.linears_tensor[1](A) * norm[:, 1, None, None, :]
    S = emb.linears_tensor[2](S) * norm[:, 2, None, None, :]
    return tn._compose_tensor(I, A, S)


def _interaction(layer, X, edge_index, edge_weight, edge_attr, n_atoms: int) -> Tensor:
    """One interaction layer on a sparse graph. torchmd-net scales by (1 + 0.1 q) with the total
    charge q; ttcalc's molecules are neutral (q = 0), so the factor is exactly 1 and left out."""
    C = layer.cutoff(edge_weight)
    for linear_scalar in layer.linears_scalar:
        edge_attr = layer.act(linear_scalar(edge_attr))
    edge_attr = (edge_attr * C.view(-1, 1)).reshape(edge_attr.shape[0], 3, layer.hidden_channels)
    X, I, A, S, Y = _interaction_inputs(layer, X)
    Im, Am, Sm = tn.tensornet_interaction_message_passing(I, A, S, edge_attr, edge_index, n_atoms)
    return _interaction_update(layer, X, Y, tn._compose_tensor(Im, Am, Sm))


def _interaction_inputs(layer, X: Tensor):
    """Normalised X, its linearly mixed parts I, A, S and Y = I + A + S (TensorNet eq. 7)."""
    X = X / (tn.tensor_norm(X) + 1)[:, None, None, :]
    I, A, S = tn._decompose_tensor(X)
    I = layer.linears_tensor[0](I)
    A = layer.linears_tensor[1](A)
    S = layer.linears_tensor[2](S)
    return X, I, A, S, tn._compose_tensor(I, A, S)


def _interaction_update(layer, X: Tensor, Y: Tensor, msg: Tensor) -> Tensor:
    """X + ΔX + ΔX² from the messages ``msg`` and Y (TensorNet eq. 8-9)."""
    if layer.equivariance_invariance_group == "O(3)":
        C = _matmul_o3(Y, msg)
    else:
        C = 2 * _matmul3(Y, msg)
    I, A, S = tn._decompose_tensor(C)
    normp1 = tn.tensor_norm(C) + 1
    I, A, S = I / normp1, A / normp1[..., None, None, :], S / normp1[..., None, None, :]
    I = layer.linears_tensor[3](I)
    A = layer.linears_tensor[4](A)
    S = layer.linears_tensor[5](S)
    dX = tn._compose_tensor(I, A, S)
    return X + dX + _matmul3(dX, dX)


def _pairwise(fn, r: Tensor, sizes: list[int]) -> list[Tensor]:
    """``fn`` (a function of the distance only, K = sum(``sizes``) outputs) on the (B, N, N) distance
    grid, split into (B, N, N, k) pieces of ``sizes``; evaluated once per unordered pair plus once
    for the self loop (r = 0), then gathered into the grid.

    The per-pair radial MLPs are the largest matmuls of the kernel, and r_ij = r_ji, so this halves
    them: N(N-1)/2 + 1 rows instead of N². A gather from the compact rows (not a mirrored copy
    written with index_put) keeps the backward a scatter-add into those rows, with no zero-filled
    (B, N, N, K) grids.
    """
    B, N, _ = r.shape
    iu, ju = torch.triu_indices(N, N, offset=1, device=r.device)
    values = fn(torch.cat([r.new_zeros(B, 1), r[:, iu, ju]], dim=1))  # (B, 1 + P, K); row 0: r = 0
    slot = torch.zeros(N, N, dtype=torch.long, device=r.device)  # row of pair (i, j); diagonal: row 0
    rows = torch.arange(1, iu.numel() + 1, device=r.device)
    slot[iu, ju] = rows
    slot[ju, iu] = rows
    slot = slot.reshape(-1)
    return [v.index_select(1, slot).reshape(B, N, N, -1) for v in values.split(sizes, dim=-1)]


def _neighbour_sum(w: Tensor, x: Tensor, *, per_pair: bool, for_inductor: bool) -> Tensor:
    """Σ_j w[b, i, j, f] x[b, (i,) j, k, f] -> (B, N, K, F): the sum over neighbours j of the edge
    weights ``w`` (B, N, N, F) times ``x``: with ``per_pair`` a factor of the pair (B, N, N, K) (the
    embedding's unit vectors and their outer products), otherwise of atom j (B, N, K, F) (the
    messages' I, A, S).

    ``for_inductor``: a broadcast product and a sum, which inductor fuses into one loop without the
    (B, N, N, K, F) intermediate; eagerly that intermediate and its double backward dominate a
    training step, so eager autograd gets ``einsum`` (batched matmuls) instead.
    """
    if for_inductor:
        return (w.unsqueeze(-2) * (x.unsqueeze(-1) if per_pair else x.unsqueeze(1))).sum(2)
    return torch.einsum("bijf,bijk->bikf" if per_pair else "bijf,bjkf->bikf", w, x)


def tensornet_features_dense(net: tn.TensorNet, z: Tensor, pos: Tensor, mask: Tensor, *,
                             for_inductor: bool = False) -> Tensor:
    """TensorNet features of B padded molecules on the complete graph, as dense tensors.

    ``z`` (B, N), ``pos`` (B, N, 3), ``mask`` (B, N) bool (False for padding) -> (B, N, F).
    The (i, j) grid holds every ordered pair and the diagonal holds the self loops, so this is
    :func:`tensornet_features` on the dense graph with every scatter/gather replaced by a batched
    contraction (eq. 7 and 9 of the TensorNet paper as sums over j). Padding atoms neither send
    nor receive messages: every edge term carries the envelope times the pair mask.
    ``for_inductor`` chooses the form of those sums that compiles best (:func:`_neighbour_sum`);
    both give the same numbers up to the order of summation.
    """
    B, N = z.shape
    F = net.hidden_channels
    pair_b = mask[:, :, None] & mask[:, None, :]
    pair = pair_b.to(pos.dtype)
    # real edges: distinct atoms, both real; self loops and padding pairs get r = 0, u = 0
    edge = pair_b & ~torch.eye(N, dtype=torch.bool, device=pos.device)
    d = pos[:, None, :, :] - pos[:, :, None, :]  # d[b, i, j] = r_j - r_i
    r2 = (d * d).sum(-1)
    # sqrt(1) where there is no edge keeps gradients finite (padding atoms may coincide)
    r = torch.sqrt(torch.where(edge, r2, torch.ones_like(r2))) * edge
    u = d * edge.unsqueeze(-1) / torch.where(edge, r, torch.ones_like(r)).unsqueeze(-1)
    emb = net.tensor_embedding
    # radial functions of r only: every layer's, evaluated once per unordered pair (see _pairwise)
    def radial(rr: Tensor) -> Tensor:
        ea = net.distance_expansion(rr)
        parts = [emb.distance_proj1(ea), emb.distance_proj2(ea), emb.distance_proj3(ea)]
        for layer in net.layers:
            h = ea
            for linear_scalar in layer.linears_scalar:
                h = layer.act(linear_scalar(h))
            parts.append(h)
        return torch.cat(parts, dim=-1)

    dp1, dp2, dp3, *layer_radial = _pairwise(radial, r, [F, F, F] + [3 * F] * len(net.layers))

    Z = emb.emb(z)  # (B, N, F)
    W, b = emb.emb2.weight, emb.emb2.bias  # Zij = emb2([Z_i, Z_j])
    Zij = (Z @ W[:, :F].T)[:, :, None, :] + (Z @ W[:, F:].T)[:, None, :, :] + b
    CZij = (emb.cutoff(r) * pair).unsqueeze(-1) * Zij
    I = (CZij * dp1).sum(2).reshape(B * N, F)
    A_vec = _neighbour_sum(CZij * dp2, u, per_pair=True, for_inductor=for_inductor)
    uu = (u.unsqueeze(-1) * u.unsqueeze(-2)).reshape(B, N, N, 9)  # u_ij u_ij^T, flattened 3 x 3
    S_full = _neighbour_sum(CZij * dp3, uu, per_pair=True, for_inductor=for_inductor)
    A = tn.vector_to_skewtensor(A_vec.reshape(B * N, 3, F))
    S = tn.outer_to_symtensor(S_full.reshape(B * N, 3, 3, F))
    X = _embedding_output(emb, I, A, S)

    for layer, ea in zip(net.layers, layer_radial):
        C = layer.cutoff(r) * pair
        ea_I, ea_A, ea_S = (ea * C.unsqueeze(-1)).reshape(B, N, N, 3, F).unbind(-2)
        X, I, A, S, Y = _interaction_inputs(layer, X)
        A_v = tn.skewtensor_to_vector(A)
        Im, Am, Sm = (_neighbour_sum(w, x.reshape(B, N, -1, F), per_pair=False, for_inductor=for_inductor)
                      for w, x in ((ea_I, I), (ea_A, A_v), (ea_S, S)))
        msg = tn._compose_tensor(
            Im.reshape(B * N, F),
            tn.vector_to_skewtensor(Am.reshape(B * N, 3, F)),
            Sm.reshape(B * N, 3, 3, F),
        )
        X = _interaction_update(layer, X, Y, msg)
    return _readout(net, X).reshape(B, N, F)


class _GivenGraph(nn.Module):
    """Stands in for torchmd-net's distance module so the ET runs on our graph."""

    def __init__(self, edges: tuple[Tensor, Tensor, Tensor]):
        super().__init__()
        self.edges = edges

    def forward(self, pos, batch, box=None):
        return self.edges


def _et_features(net: TorchMD_ET, z, edge_index, edge_vec, edge_weight, batch) -> Tensor:
    """Equivariant Transformer (Thölke & De Fabritiis, ICLR 2022) features on a given graph."""
    # swap the distance module only for this call, so the state dict keeps torchmd-net's layout;
    # ET normalises edge_vec in place, so it gets a copy
    own = net.distance
    net.distance = _GivenGraph((edge_index, edge_weight, edge_vec.clone()))
    try:
        x, _vec, *_ = net(z, edge_vec.new_zeros((z.shape[0], 3)), batch)
    finally:
        net.distance = own
    return x

