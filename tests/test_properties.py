"""Property heads: least-squares element bias, pooling, special heads, checkpoints, calculator."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from ttcalc.model.batch import collate
from ttcalc.calculator import TTTCalculator
from ttcalc.data import fit_element_constants
from ttcalc.model.heads import PropertyHeadConfig
from ttcalc.model.potential import ModelConfig, MultiHeadPotential
from ttcalc.model.representation import RepresentationConfig
from ttcalc.train.finetune import install_property_statistics


def small_model(dtype="float64", **heads):
    cfg = ModelConfig(RepresentationConfig(hidden_channels=16, num_layers=1, num_rbf=8, cutoff=4.0),
                      head_hidden=8)
    torch.manual_seed(0)
    model = MultiHeadPotential(cfg, dtype=dtype)
    for name, kw in heads.items():
        model.add_property_head(PropertyHeadConfig(name, hidden=(16, 16), **kw))
    return model.eval()


def predict(model, frames, name):
    batch = collate(frames, model.cutoff, model.dtype)
    with torch.no_grad():
        return model.predict_properties(batch, [name])[name].numpy()


MOLECULES = ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "HCOOH", "C2H2", "CH3CN", "C6H6", "H2CO"]


@pytest.mark.parametrize("intensive", [False, True])
def test_element_bias_recovers_planted_constants(intensive):
    frames = [molecule(m) for m in MOLECULES]
    planted = {1: -0.7, 6: 2.5, 7: -1.3, 8: 4.1}
    rng = np.random.default_rng(0)
    p2 = {z: rng.normal() for z in planted}  # a second output column
    y = []
    for a in frames:
        s1, s2 = sum(planted[z] for z in a.numbers), sum(p2[z] for z in a.numbers)
        y.append([s1, s2] if not intensive else [s1 / len(a), s2 / len(a)])
    elements, p = fit_element_constants(frames, np.array(y), intensive=intensive)
    assert elements.tolist() == [1, 6, 7, 8]
    np.testing.assert_allclose(p[:, 0], [planted[z] for z in elements], atol=1e-10)
    np.testing.assert_allclose(p[:, 1], [p2[z] for z in elements], atol=1e-10)


def test_fit_element_constants_rejects_mismatched_values():
    with pytest.raises(ValueError, match="one value per structure"):
        fit_element_constants([molecule("CH4")], np.zeros(3))


def replicate(atoms: Atoms, shift=30.0) -> Atoms:
    far = atoms.copy()
    far.positions += shift  # beyond every cutoff: the copies do not interact
    return atoms + far


@pytest.mark.parametrize("reduce,factor", [("sum", 2.0), ("mean", 1.0)])
def test_pooling_under_replication(reduce, factor):
    model = small_model(p=dict(reduce=reduce, out_dim=2))
    install_property_statistics(model, "p", [molecule(m) for m in MOLECULES[:6]],
                                np.random.default_rng(1).normal(size=(6, 2)))
    mol = molecule("CH3OH")
    single, double = predict(model, [mol], "p")[0], predict(model, [replicate(mol)], "p")[0]
    assert np.all(np.abs(single) > 1e-6)
    np.testing.assert_allclose(double, factor * single, rtol=1e-9)


def test_element_bias_off_uses_one_constant():
    model = small_model(p=dict(reduce="mean", element_bias=False))
    frames = [molecule(m) for m in MOLECULES]
    y = np.arange(len(frames), dtype=float)
    install_property_statistics(model, "p", frames, y)
    table = model.property_heads["p"].element_bias[:, 0].numpy()
    np.testing.assert_allclose(table, y.mean())  # every element, seen or not, gets the same bias


def test_dipole_and_spatial_extent_heads_transform_correctly():
    from scipy.spatial.transform import Rotation

    model = small_model(mu=dict(kind="dipole", unit="Debye"), r2=dict(kind="spatial_extent", unit="bohr^2"))
    mol = molecule("CH3CN")
    moved = mol.copy()
    moved.positions = moved.positions @ Rotation.random(random_state=3).as_matrix().T + [3.0, -2.0, 7.0]
    for name in ("mu", "r2"):
        a, b = predict(model, [mol], name)[0, 0], predict(model, [moved], name)[0, 0]
        assert a > 0
        assert b == pytest.approx(a, rel=1e-9)
    r2_replica = predict(model, [replicate(mol)], "r2")[0, 0]
    assert r2_replica > 2 * predict(model, [mol], "r2")[0, 0]  # two far-apart copies spread out


def test_property_head_config_validation():
    with pytest.raises(ValueError, match="unknown property head kind"):
        PropertyHeadConfig("x", kind="banana")
    with pytest.raises(ValueError, match="reduce"):
        PropertyHeadConfig("x", reduce="max")
    with pytest.raises(ValueError, match="unknown unit"):
        PropertyHeadConfig("x", unit="furlong")
    model = small_model()
    with pytest.raises(ValueError, match="taken"):
        model.add_property_head(PropertyHeadConfig("main"))
    with pytest.raises(KeyError, match="no property head"):
        model.predict_properties(collate([molecule("CH4")], 4.0, torch.float64), ["gap"])


def test_checkpoint_round_trip_with_property_heads(tmp_path):
    model = small_model(gap=dict(out_dim=2), mu=dict(kind="dipole"))
    install_property_statistics(model, "gap", [molecule(m) for m in MOLECULES], np.ones((10, 2)))
    path = model.save(tmp_path / "m.pt")
    again = MultiHeadPotential.load(path)
    assert [p.name for p in again.config.properties] == ["gap", "mu"]
    frames = [molecule("C6H6"), molecule("CH3OH")]
    for name in ("gap", "mu"):
        np.testing.assert_array_equal(predict(model, frames, name), predict(again, frames, name))


def test_calculator_exposes_properties():
    model = small_model(dtype="float32", gap=dict(), vec=dict(out_dim=3))
    calc = TTTCalculator(model=model, compile=False)
    mol = molecule("CH3OH")
    gap = calc.get_property("gap", mol)
    assert isinstance(gap, float)
    assert calc.results["properties"]["gap"] == gap
    assert calc.results["properties"]["vec"].shape == (3,)
    np.testing.assert_allclose(gap, predict(calc.model, [mol], "gap")[0, 0], rtol=1e-6)
    assert "energy" in calc.results  # one calculation serves both
    mol.calc = calc
    mol.get_potential_energy()
