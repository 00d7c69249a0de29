"""Q-residuals: PCA distance from the training feature subspace, and its limits."""
from __future__ import annotations

import numpy as np
import pytest

from ttcalc.diagnostics.uncertainty import QResidual, fit_q_residual, jackson_mudholkar_limit


def _data(rng, n=4000, f=12, k=3, noise=0.05):
    basis = np.linalg.qr(rng.normal(size=(f, f)))[0]
    x = rng.normal(size=(n, k)) * [3.0, 2.0, 1.0] @ basis[:, :k].T + noise * rng.normal(size=(n, f))
    return x, basis


def test_q_separates_in_subspace_from_off_subspace_points(rng):
    x, basis = _data(rng)
    structure = np.repeat(np.arange(len(x) // 8), 8)
    model = fit_q_residual(x, structure, variance=0.99)
    assert model.k == 3
    inside = rng.normal(size=(200, 3)) @ basis[:, :3].T
    outside = inside + 1.0 * basis[:, 5]
    assert model.atom_q(inside).max() < model.atom_limit < model.atom_q(outside).min()
    # Q is the squared norm of the residual: a shift of 1 along a discarded direction adds ~1
    assert np.median(model.atom_q(outside)) == pytest.approx(1.0, abs=0.1)


def test_q_is_zero_for_points_rebuilt_from_the_mean_and_kept_components_and_grows_with_a_shift(rng):
    x, basis = _data(rng)
    model = fit_q_residual(x, np.repeat(np.arange(len(x) // 8), 8), variance=0.99)
    rebuilt = model.mean + rng.normal(size=(50, model.k)) @ model.loadings.T
    assert np.allclose(model.atom_q(rebuilt), 0.0, atol=1e-20)
    off = basis[:, 7] - model.loadings @ (model.loadings.T @ basis[:, 7])
    off /= np.linalg.norm(off)
    q = [model.atom_q(rebuilt + t * off).mean() for t in (0.1, 0.2, 0.4)]
    assert q == pytest.approx([0.01, 0.04, 0.16], rel=1e-9)  # Q = t² for a unit shift off the subspace


def test_jackson_mudholkar_limit_flags_about_one_minus_alpha_of_gaussian_training_atoms(rng):
    x, _ = _data(rng, n=20000)
    model = fit_q_residual(x, np.arange(len(x)), alpha=0.95)
    flagged = float(np.mean(model.atom_q(x) > model.atom_limit))
    assert 0.03 < flagged < 0.07
    assert jackson_mudholkar_limit(model.eigenvalues[model.k:], 0.99) > model.atom_limit


def test_structure_q_is_the_largest_atom_q_and_its_limit_a_training_quantile(rng):
    x, _ = _data(rng, n=800)
    structure = np.repeat(np.arange(100), 8)
    model = fit_q_residual(x, structure, alpha=0.9)
    q = model.atom_q(x)
    assert np.allclose(model.structure_q(x, structure), q.reshape(100, 8).max(axis=1))
    assert np.mean(model.train_structure_q > model.structure_limit) == pytest.approx(0.1, abs=0.02)
    again = QResidual.from_dict(model.to_dict())
    assert np.allclose(again.atom_q(x), q) and again.structure_limit == model.structure_limit


def test_bad_input_is_refused(rng):
    x, _ = _data(rng, n=40)
    with pytest.raises(ValueError, match="variance must be in"):
        fit_q_residual(x, np.arange(40), variance=1.0)
    with pytest.raises(ValueError, match="at least two atoms"):
        fit_q_residual(x[:1], np.arange(1))
    model = fit_q_residual(x, np.arange(40))
    with pytest.raises(ValueError, match="features must be"):
        model.atom_q(x[:, :5])
    with pytest.raises(ValueError, match="one structure index per atom"):
        model.structure_q(x, np.arange(39))
    with pytest.raises(ValueError, match="alpha must be in"):
        jackson_mudholkar_limit(np.ones(3), 1.5)


def _shipped_q_calc(**kw):
    from ttcalc import TTTCalculator

    return TTTCalculator(model="md17-abu", compile=False, disagreement_every=0, **kw)


@pytest.mark.parametrize("pbc", [False, True])
def test_calculator_q_comes_from_its_own_forward_pass_and_matches_the_stored_pca(naphthalene, pbc):
    """The dense kernel (molecule) and the flat graph (periodic box) give the Q of the model's
    features under the checkpoint's PCA; the two headline values reach atoms.info."""
    from ttcalc.diagnostics.collapse import atomic_representations

    calc = _shipped_q_calc()
    atoms = naphthalene.copy()
    if pbc:
        atoms.set_cell([30.0, 30.0, 30.0])
        atoms.pbc = True
    atoms.calc = calc
    atoms.get_forces()
    expected = calc.q_model.atom_q(atomic_representations(calc.model, [atoms]))
    assert np.allclose(calc.results["q_residual_atoms"], expected, rtol=1e-4, atol=1e-7)
    assert calc.results["q_residual"] == pytest.approx(expected.max(), rel=1e-4)
    assert calc.results["q_residual_limit"] == pytest.approx(calc.q_model.structure_limit)
    assert atoms.info["q_residual"] == calc.results["q_residual"]
    assert atoms.info["q_residual_limit"] == calc.results["q_residual_limit"]


def test_calculator_q_grows_with_a_distortion_and_can_be_switched_off(benzene):
    calc = _shipped_q_calc()
    atoms = benzene.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    q0 = calc.results["q_residual"]
    atoms.positions = atoms.positions * 1.15  # every bond 15 % longer: far from any training frame
    atoms.get_potential_energy()
    assert calc.results["q_residual"] > 3 * q0
    assert calc.results["q_residual"] > calc.results["q_residual_limit"]
    off = _shipped_q_calc(q_residual=False)
    atoms.calc = off
    atoms.get_potential_energy()
    assert "q_residual" not in off.results and off.q_model is None
