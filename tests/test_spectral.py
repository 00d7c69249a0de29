"""Normalised-Laplacian spectra and radius refinement (Kreiman & Krishnapriyan 2025, sec. 4, eq. 5)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial.transform import Rotation

from ttcalc.data import load_rmd17
from ttcalc.diagnostics.spectral import (
    distribution_distance,
    spectral_quantiles,
    TrainingSpectrum,
    adjacency,
    build_training_spectrum,
    default_radius_grid,
    laplacian_spectrum,
    normalized_laplacian,
    pad_spectrum,
    refine_radius,
    spectral_distance,
)

PAIR = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
TRIANGLE = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]])
CHAIN = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # ends 2 Å apart
RADIUS = 1.5


# ----------------------------------------------------------------------------- hand-checked spectra
@pytest.mark.parametrize(
    "positions, expected",
    [(PAIR, [0.0, 2.0]), (TRIANGLE, [0.0, 1.5, 1.5]), (CHAIN, [0.0, 1.0, 2.0])],
    ids=["pair", "triangle", "chain"],
)
def test_small_graphs_have_known_spectra(positions, expected):
    np.testing.assert_allclose(laplacian_spectrum(positions, RADIUS), expected, atol=1e-12)


def test_chain_adjacency_and_laplacian_by_hand():
    A = adjacency(CHAIN, RADIUS)
    np.testing.assert_array_equal(A, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(normalized_laplacian(A), [[1, -s, 0], [-s, 1, -s], [0, -s, 1]], atol=1e-12)
    # strict inequality: a pair exactly at the radius is not an edge
    np.testing.assert_array_equal(adjacency(PAIR, 1.0), np.zeros((2, 2)))


def test_isolated_atoms_and_disconnected_graphs():
    far = np.array([[0.0, 0, 0], [10.0, 0, 0], [20.0, 0, 0]])
    np.testing.assert_array_equal(normalized_laplacian(adjacency(far, RADIUS)), np.zeros((3, 3)))
    np.testing.assert_array_equal(laplacian_spectrum(far, RADIUS), np.zeros(3))

    # triangle + pair + one isolated atom: union of the parts' spectra, 3 components -> 3 zeros
    combined = np.vstack([TRIANGLE, PAIR + [10.0, 0, 0], [[0.0, 20.0, 0.0]]])
    expected = np.sort(np.concatenate([[0.0, 1.5, 1.5], [0.0, 2.0], [0.0]]))
    spectrum = laplacian_spectrum(combined, RADIUS)
    np.testing.assert_allclose(spectrum, expected, atol=1e-12)
    assert np.sum(spectrum < 1e-10) == 3

    # two real benzene frames side by side: the union of their spectra
    a, b = load_rmd17("benzene", "test_01", n=2)
    both = np.vstack([a.positions, b.positions + [50.0, 0, 0]])
    union = np.sort(np.concatenate([laplacian_spectrum(a, 3.0), laplacian_spectrum(b, 3.0)]))
    np.testing.assert_allclose(laplacian_spectrum(both, 3.0), union, atol=1e-12)


def test_spectrum_is_rotation_translation_and_permutation_invariant():
    atoms = load_rmd17("aspirin", "test_01", n=1)[0]
    rng = np.random.default_rng(0)
    rotated = Rotation.random(random_state=1).apply(atoms.positions) + [3.0, -2.0, 7.0]
    permuted = rotated[rng.permutation(len(atoms))]
    reference = laplacian_spectrum(atoms, 3.0)
    assert len(np.unique(np.round(reference, 6))) > 5  # a non-trivial spectrum
    np.testing.assert_allclose(laplacian_spectrum(permuted, 3.0), reference, atol=1e-10)
    assert np.all(np.diff(reference) >= 0) and reference.min() >= 0 and reference.max() <= 2


def test_padding_convention_is_extra_isolated_atoms():
    padded = laplacian_spectrum(PAIR, RADIUS, n_pad=5)
    np.testing.assert_allclose(padded, [0, 0, 0, 0, 2.0], atol=1e-12)
    with_isolated = np.vstack([PAIR, [[10.0, 0, 0], [20.0, 0, 0], [30.0, 0, 0]]])
    np.testing.assert_allclose(laplacian_spectrum(with_isolated, RADIUS), padded, atol=1e-12)
    np.testing.assert_array_equal(pad_spectrum(np.array([0.5, 1.5]), 3), [0.0, 0.5, 1.5])
    with pytest.raises(ValueError, match="n_pad=2 is smaller than the spectrum length 3"):
        laplacian_spectrum(TRIANGLE, RADIUS, n_pad=2)


def test_spectral_distance():
    triangle, chain, pair = (laplacian_spectrum(p, RADIUS) for p in (TRIANGLE, CHAIN, PAIR))
    assert spectral_distance(triangle, chain) == pytest.approx(0.25 + 0.25)  # [0,1.5,1.5] vs [0,1,2]
    assert spectral_distance(chain, triangle) == spectral_distance(triangle, chain)
    assert spectral_distance(chain, chain) == 0.0
    # different lengths: [0,2] -> [0,0,2] against [0,1.5,1.5]: 0 + 2.25 + 0.25
    assert spectral_distance(pair, triangle) == pytest.approx(2.5)
    assert spectral_distance(triangle, pair) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="1-D"):
        spectral_distance(np.zeros((2, 2)), triangle)


def test_periodic_cells_use_minimum_image():
    cell = np.diag([3.0, 20.0, 20.0])
    positions = np.array([[0.0, 0, 0], [2.5, 0, 0]])  # 2.5 Å apart directly, 0.5 Å across the boundary
    np.testing.assert_array_equal(adjacency(positions, 1.0), np.zeros((2, 2)))
    np.testing.assert_array_equal(adjacency(positions, 1.0, cell=cell, pbc=[True, False, False]), [[0, 1], [1, 0]])

    # fcc Cu: 12 nearest neighbours at a/sqrt(2) = 2.55 Å, the next shell at a = 3.61 Å
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    A = adjacency(cu, 2.7)
    assert np.all(A.sum(axis=1) == 12) and np.all(A == A.T) and np.all(np.diag(A) == 0)
    # a one-atom primitive cell only neighbours its own images: no edges, one zero eigenvalue
    np.testing.assert_array_equal(laplacian_spectrum(bulk("Cu", "fcc", a=3.61), 3.0), [0.0])
    with pytest.raises(ValueError, match="need a cell"):
        adjacency(positions, 1.0, pbc=True)


# ------------------------------------------------------------------------------ radius refinement
TRAINING_RADIUS = 5.0


@pytest.fixture(scope="module")
def benzene_spectrum():
    return build_training_spectrum(load_rmd17("benzene", "train_01", n=200), TRAINING_RADIUS)


@pytest.fixture(scope="module")
def aspirin_spectrum():
    return build_training_spectrum(load_rmd17("aspirin", "train_01", n=200), TRAINING_RADIUS)


def test_build_training_spectrum(benzene_spectrum):
    frames = load_rmd17("benzene", "train_01", n=200)
    assert benzene_spectrum.n_pad == 12 and benzene_spectrum.mean.shape == (12,)
    spectra = np.stack([laplacian_spectrum(a, TRAINING_RADIUS) for a in frames])
    np.testing.assert_allclose(benzene_spectrum.mean, spectra.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(
        benzene_spectrum.distances[:3], [spectral_distance(s, benzene_spectrum.mean) for s in spectra[:3]], atol=1e-12
    )
    assert benzene_spectrum.summary()["q90"] >= benzene_spectrum.summary()["q50"] > 0

    # mixed sizes pad to the largest structure; max_frames subsamples
    mixed_frames = frames[:5] + load_rmd17("aspirin", "train_01", n=5)
    mixed = build_training_spectrum(mixed_frames, 4.0)
    assert mixed.n_pad == 21 and mixed.mean.shape == (21,)
    padded = [laplacian_spectrum(a, 4.0, n_pad=21) for a in mixed_frames]
    assert all(np.all(p[:9] == 0.0) for p in padded[:5])  # benzene enters as 9 isolated atoms + 12
    np.testing.assert_allclose(mixed.mean, np.mean(padded, axis=0), atol=1e-12)
    assert len(build_training_spectrum(mixed_frames, 4.0, max_frames=6).distances) == 6
    with pytest.raises(ValueError, match="n_pad=10 is smaller"):
        build_training_spectrum(frames[:3], 4.0, n_pad=10)


def test_training_spectrum_round_trip(aspirin_spectrum):
    restored = TrainingSpectrum.from_dict(json.loads(json.dumps(aspirin_spectrum.to_dict())))
    np.testing.assert_array_equal(restored.mean, aspirin_spectrum.mean)
    np.testing.assert_array_equal(restored.distances, aspirin_spectrum.distances)
    np.testing.assert_array_equal(restored.quantiles, aspirin_spectrum.quantiles)
    np.testing.assert_array_equal(restored.quantile_distances, aspirin_spectrum.quantile_distances)
    assert (restored.n_pad, restored.radius) == (aspirin_spectrum.n_pad, aspirin_spectrum.radius)
    with pytest.raises(ValueError, match="expected \\(21,\\)"):
        TrainingSpectrum.from_dict({**aspirin_spectrum.to_dict(), "mean": [0.0] * 3})


def test_default_grid_contains_training_radius():
    grid = default_radius_grid(4.7)
    assert 4.7 in grid.tolist() and grid[0] == pytest.approx(0.6 * 4.7) and grid[-1] == pytest.approx(1.4 * 4.7)
    assert np.all(np.diff(grid) > 0)
    assert 5.5 in default_radius_grid(5.0).tolist()  # grid points are round numbers, no float noise


def test_refine_radius_keeps_training_radius_in_distribution(benzene_spectrum):
    held_out = load_rmd17("benzene", "test_01", n=50, seed=7)
    radius, distances = refine_radius(held_out[0], benzene_spectrum)
    assert radius == TRAINING_RADIUS
    assert distances[TRAINING_RADIUS] == min(distances.values())
    chosen = [refine_radius(a, benzene_spectrum)[0] for a in held_out]
    assert np.mean(np.array(chosen) == TRAINING_RADIUS) >= 0.9


@pytest.mark.parametrize("scale, direction", [(1.3, +1), (0.8, -1)])
def test_refine_radius_follows_a_connectivity_shift(aspirin_spectrum, scale, direction):
    """A uniformly scaled molecule keeps its graph only if the radius scales with it."""
    held_out = load_rmd17("aspirin", "test_01", n=20, seed=3)
    chosen = np.array([refine_radius(a.positions * scale, aspirin_spectrum)[0] for a in held_out])
    assert np.all(np.sign(chosen - TRAINING_RADIUS) == direction)
    # mostly the radius that restores the training graph exactly, scale * 5 Å (±1 grid step)
    assert np.median(np.abs(chosen - scale * TRAINING_RADIUS)) <= 0.25 + 1e-9
    # the refined graph is closer to training than the unrefined one
    radius, distances = refine_radius(held_out[0].positions * scale, aspirin_spectrum)
    assert distances[radius] < 0.5 * distances[TRAINING_RADIUS]


def test_refine_radius_ties_and_larger_structures(benzene_spectrum):
    # all trial radii give the same graph (atoms far apart): ties go to the training radius
    far = np.array([[0.0, 0, 0], [100.0, 0, 0]])
    reference = build_training_spectrum([far], 2.0)
    radius, distances = refine_radius(far, reference, radii=[1.0, 1.5, 2.0, 2.5, 3.5])
    assert radius == 2.0 and set(distances.values()) == {0.0}
    radius, _ = refine_radius(far, reference, radii=[1.0, 1.5, 2.5, 3.5])
    assert radius == 1.5  # equally close below and above: the smaller one

    # eq. 5, a structure larger than n_pad: the training mean is padded with zeros at the front
    aspirin = load_rmd17("aspirin", "test_01", n=1)[0]
    _, distances = refine_radius(aspirin, benzene_spectrum, radii=[TRAINING_RADIUS], metric="padded")
    by_hand = spectral_distance(laplacian_spectrum(aspirin, TRAINING_RADIUS), benzene_spectrum.mean)
    assert distances[TRAINING_RADIUS] == pytest.approx(by_hand, rel=1e-12)
    assert benzene_spectrum.distance(aspirin, metric="padded") == pytest.approx(by_hand, rel=1e-12)
    # the distribution metric: W2^2 between quantile functions, whatever the sizes
    _, distances = refine_radius(aspirin, benzene_spectrum, radii=[TRAINING_RADIUS])
    by_hand = distribution_distance(spectral_quantiles(laplacian_spectrum(aspirin, TRAINING_RADIUS)),
                                    benzene_spectrum.quantiles)
    assert distances[TRAINING_RADIUS] == pytest.approx(by_hand, rel=1e-12)
    assert benzene_spectrum.distance(aspirin) == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(ValueError, match="positive"):
        refine_radius(aspirin, benzene_spectrum, radii=[0.0, 1.0])


def test_spectral_quantiles_do_not_depend_on_size():
    triangle = laplacian_spectrum(TRIANGLE, RADIUS)  # [0, 1.5, 1.5]
    np.testing.assert_allclose(spectral_quantiles(triangle, 6), [0.0, 0.0, 1.5, 1.5, 1.5, 1.5], atol=1e-12)
    two_triangles = np.concatenate([TRIANGLE, TRIANGLE + 50.0])  # two disjoint copies of one graph
    q1 = spectral_quantiles(triangle)
    q2 = spectral_quantiles(laplacian_spectrum(two_triangles, RADIUS))
    assert distribution_distance(q1, q2) < 1e-24
    # eq. 5 sees the copy as a different graph
    assert spectral_distance(laplacian_spectrum(two_triangles, RADIUS), triangle) > 1.0
    chain = spectral_quantiles(laplacian_spectrum(CHAIN, RADIUS))  # [0, 1, 2]
    assert distribution_distance(q1, chain) == pytest.approx(np.mean((q1 - chain) ** 2))
    with pytest.raises(ValueError, match="equal length"):
        distribution_distance(q1, q1[:10])
    with pytest.raises(ValueError, match="empty"):
        spectral_quantiles(np.zeros(0))


def test_mixed_size_training_set_keeps_its_own_molecules_near_the_training_radius():
    """Why "distribution" is the default: with training molecules of different sizes, eq. 5's padding
    makes a larger training molecule look disconnected-to-be, and radius refinement shrinks its cutoff."""
    train = {m: load_rmd17(m, "train_01", n=30, seed=0) for m in ("aspirin", "benzene", "uracil")}
    spectrum = build_training_spectrum([a for frames in train.values() for a in frames], TRAINING_RADIUS)
    assert spectrum.metric == "distribution"
    aspirin = load_rmd17("aspirin", "test_01", n=10, seed=1)
    padded = np.array([refine_radius(a, spectrum, metric="padded")[0] for a in aspirin])
    dist = np.array([refine_radius(a, spectrum)[0] for a in aspirin])
    assert np.all(padded <= 3.5)  # a training molecule pushed 1.5 Å or more below its cutoff
    assert np.all(np.abs(dist - TRAINING_RADIUS) <= 0.75) and abs(dist.mean() - TRAINING_RADIUS) <= 0.3


def test_old_training_spectrum_without_quantiles_uses_eq5(aspirin_spectrum):
    old = {k: v for k, v in aspirin_spectrum.to_dict().items() if not k.startswith("quantile")}
    restored = TrainingSpectrum.from_dict(old)
    assert restored.metric == "padded" and restored.quantiles is None
    frame = load_rmd17("aspirin", "test_01", n=1)[0]
    assert refine_radius(frame, restored) == refine_radius(frame, aspirin_spectrum, metric="padded")
    with pytest.raises(ValueError, match="no quantiles"):
        restored.distance(frame, metric="distribution")
    with pytest.raises(ValueError, match="unknown spectral metric"):
        aspirin_spectrum.distance(frame, metric="l2")
