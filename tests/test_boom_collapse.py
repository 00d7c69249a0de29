"""BOOM split and representation-collapse diagnostics on small hand-checked cases."""
import numpy as np
import pytest
from ase.build import molecule
from scipy.stats import gaussian_kde, wasserstein_distance

from ttcalc.diagnostics.collapse import atom_classes, davies_bouldin, wasserstein_1
from ttcalc.data.boom import boom_split, kde_density


@pytest.mark.parametrize("n", [500, 20000])  # exact and binned evaluation
def test_kde_matches_scipy_scott(n):
    v = np.random.default_rng(0).gamma(2.0, size=n)
    ref = gaussian_kde(v, bw_method="scott")(v)
    np.testing.assert_allclose(kde_density(v), ref, rtol=1e-4)


def test_boom_split_is_deterministic_disjoint_and_ood_in_the_tails():
    v = np.random.default_rng(1).normal(size=5000)
    a = boom_split(v, n_ood=500, seed=3)
    b = boom_split(v, n_ood=500, seed=3)
    for k in ("train", "val", "id_test", "ood"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    parts = [a.train, a.val, a.id_test, a.ood]
    assert sum(map(len, parts)) == len(v) and len(np.unique(np.concatenate(parts))) == len(v)
    assert a.sizes()["id_test"] == round(0.05 * 4500)
    # OOD = the lowest densities, which for a unimodal sample are both tails
    rest = np.concatenate([a.train, a.val, a.id_test])
    density = kde_density(v)
    assert density[a.ood].max() <= density[rest].min()
    low, high = v[a.ood] < v[rest].min(), v[a.ood] > v[rest].max()
    assert np.all(low | high) and low.any() and high.any()
    c = boom_split(v, n_ood=500, seed=4)
    np.testing.assert_array_equal(a.ood, c.ood)  # the OOD set does not depend on the seed
    assert not np.array_equal(a.id_test, c.id_test)


def test_boom_split_subsamples_train_and_rejects_bad_input():
    v = np.random.default_rng(2).normal(size=2000)
    s = boom_split(v, n_ood=200, n_train=300, val_fraction=0.1)
    assert s.sizes() == {"train": 270, "val": 30, "id_test": 90, "ood": 200}
    with pytest.raises(ValueError, match="n_ood"):
        boom_split(v, n_ood=0)
    with pytest.raises(ValueError, match="n_train"):
        boom_split(v, n_ood=200, n_train=10_000)


def test_atom_classes_count_covalent_neighbours():
    labels = atom_classes([molecule("CH3CH2OH")])
    assert sorted(labels.tolist()) == sorted(["C4", "C4", "O2"] + ["H1"] * 6)
    assert atom_classes([molecule("C2H2")]).tolist() == ["C2", "C2", "H1", "H1"]


def test_davies_bouldin_hand_checked():
    # two classes of two points each: s_1 = s_2 = 1 (distance to centroid), centroids 10 apart
    X = np.array([[0.0, 1.0], [0.0, -1.0], [10.0, 1.0], [10.0, -1.0]])
    assert davies_bouldin(X, np.array(["a", "a", "b", "b"])) == pytest.approx(0.2)
    # a singleton class is dropped instead of contributing s = 0
    X3 = np.vstack([X, [[50.0, 0.0]]])
    assert davies_bouldin(X3, np.array(["a", "a", "b", "b", "c"])) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="two classes"):
        davies_bouldin(X[:2], np.array(["a", "a"]))


def test_wasserstein_hand_checked():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(300, 4))
    assert wasserstein_1(A, A + np.array([3.0, 0, 0, 4.0])) == pytest.approx(5.0)  # a pure shift
    a, b = rng.normal(size=(400, 1)), rng.exponential(size=(400, 1))
    assert wasserstein_1(a, b) == pytest.approx(wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-9)
    # subsampling to max_points keeps it close to the full value
    big_a, big_b = rng.normal(size=(3000, 1)), rng.normal(0.5, 1.0, size=(3000, 1))
    assert wasserstein_1(big_a, big_b, max_points=1000) == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="same d"):
        wasserstein_1(A, A[:, :2])
    # paired clouds larger than max_points keep the same rows: identical features give exactly 0
    assert wasserstein_1(big_a, big_a.copy(), max_points=1000) == 0.0
