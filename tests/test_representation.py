"""Our graph-based TensorNet forward equals torchmd-net's own, dense and sparse."""
from __future__ import annotations

import pytest
import torch

from ttcalc.model.batch import collate
from ttcalc.data import load_rmd17
from ttcalc.model.graph import build_graph, edge_geometry
from ttcalc.model.representation import Representation, RepresentationConfig, tensornet_features_dense


@pytest.fixture(scope="module")
def rep():
    torch.manual_seed(0)
    return Representation(RepresentationConfig(hidden_channels=32, num_layers=2), dtype=torch.float64)


@pytest.mark.parametrize("molecule", ["naphthalene", "aspirin"])
def test_dense_and_sparse_match_torchmdnet(rep, molecule):
    atoms = load_rmd17(molecule, "test_01", n=1)[0]
    z = torch.as_tensor(atoms.numbers)
    pos = torch.as_tensor(atoms.positions, dtype=torch.float64)
    native, *_ = rep.net(z, pos, torch.zeros_like(z))
    mask = torch.ones(1, len(z), dtype=torch.bool)
    dense = tensornet_features_dense(rep.net, z[None], pos[None], mask)[0]
    fused = tensornet_features_dense(rep.net, z[None], pos[None], mask, for_inductor=True)[0]
    g = build_graph([len(z)], atoms.positions, rep.cutoff, dense=False)
    vec, w = edge_geometry(pos, g)
    sparse = rep(z, g, vec, w, torch.zeros_like(z))
    assert torch.allclose(dense, native, atol=1e-10)
    assert torch.allclose(fused, native, atol=1e-10)  # the form the compiled kernels trace
    assert torch.allclose(sparse, native, atol=1e-10)


def test_padding_atoms_do_not_change_features(rep):
    small = load_rmd17("benzene", "test_01", n=2)
    big = load_rmd17("aspirin", "test_01", n=1)
    batch = collate(small + big, rep.cutoff, dtype=torch.float64)
    x = tensornet_features_dense(rep.net, batch.z_dense, batch.pos, batch.mask)
    alone = collate(small[:1], rep.cutoff, dtype=torch.float64)
    x0 = tensornet_features_dense(rep.net, alone.z_dense, alone.pos, alone.mask)
    assert torch.allclose(x[0, :12], x0[0], atol=1e-12)
    fused = tensornet_features_dense(rep.net, batch.z_dense, batch.pos, batch.mask, for_inductor=True)
    assert torch.allclose(fused, x, atol=1e-12)
    # and gradients stay finite although padding atoms coincide at the origin
    pos = batch.pos.clone().requires_grad_(True)
    tensornet_features_dense(rep.net, batch.z_dense, pos, batch.mask)[batch.mask].sum().backward()
    assert torch.isfinite(pos.grad).all()


def test_set_cutoff_moves_every_envelope(rep):
    from torchmdnet.models.utils import CosineCutoff

    r = Representation(RepresentationConfig(hidden_channels=16, num_layers=1))
    r.set_cutoff(4.0)
    cutoffs = {m.cutoff_upper for m in r.modules() if isinstance(m, CosineCutoff)}
    assert cutoffs == {4.0} and r.cutoff == 4.0
    with pytest.raises(ValueError, match="positive"):
        r.set_cutoff(-1.0)


def test_unknown_representation_is_rejected():
    with pytest.raises(ValueError, match="unknown representation"):
        Representation(RepresentationConfig(model="schnet"))
