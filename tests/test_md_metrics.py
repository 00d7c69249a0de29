"""Metrics of md_protocols: h(r), bond stability, NVE drift, reports and plots."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

import md_protocols.observables as observables
from md_protocols import (
    bond_lengths,
    bonds_from_atoms,
    bonds_stability,
    hr,
    hr_mae,
    max_bond_deviation,
    nve_drift,
    stability_summary,
    write_results,
)
from md_protocols import plots
from md_protocols.report import markdown_table
from ttcalc.paths import dataset_path


@pytest.fixture(scope="module")
def benzene():
    """rMD17 benzene: atomic numbers, all frames (Å), and the official split 01 indices."""
    data = np.load(dataset_path("rmd17", "rmd17_benzene.npz"))
    return {
        "z": data["z"].astype(int),
        "R": data["R"].astype(np.float64),
        "train": data["train_01"],
        "test": data["test_01"],
    }


def _bin_of(r: np.ndarray, distance: float) -> int:
    width = r[1] - r[0]
    return int(np.floor((distance - (r[0] - width / 2)) / width))


# ---------------------------------------------------------------- h(r)


def test_hr_equilateral_triangle_is_one_spike():
    side = 1.5
    tri = np.array([[0.0, 0.0, 0.0], [side, 0.0, 0.0], [side / 2, side * np.sqrt(3) / 2, 0.0]])
    r, h = hr(tri, bins=500, r_max=10.0)
    width = r[1] - r[0]
    assert width == pytest.approx(0.02)
    k = _bin_of(r, np.linalg.norm(tri[2] - tri[0]))
    assert r[k] - width / 2 <= side + 1e-9 and side - 1e-9 <= r[k] + width / 2
    assert h[k] == pytest.approx(1.0 / width)
    assert np.count_nonzero(h) == 1


def test_hr_square_sides_and_diagonals():
    a = 1.23
    square = np.array([[0, 0, 0], [a, 0, 0], [a, a, 0], [0, a, 0]], dtype=float)
    r, h = hr(square, bins=400, r_max=4.0)
    width = r[1] - r[0]
    assert h[_bin_of(r, a)] == pytest.approx(4 / 6 / width)
    assert h[_bin_of(r, a * np.sqrt(2))] == pytest.approx(2 / 6 / width)
    assert np.count_nonzero(h) == 2
    assert h.sum() * width == pytest.approx(1.0)


def test_hr_matches_per_frame_histograms_and_is_chunk_independent(benzene, monkeypatch):
    frames = benzene["R"][benzene["test"][:50]]
    r, h = hr(frames, bins=200, r_max=5.0)
    # independent reference: np.histogram(density=True) of each frame's i<j distances, then the mean
    i, j = np.triu_indices(frames.shape[1], k=1)
    expected = np.mean(
        [np.histogram(np.linalg.norm(f[i] - f[j], axis=1), bins=200, range=(0, 5.0), density=True)[0] for f in frames],
        axis=0,
    )
    np.testing.assert_allclose(h, expected, rtol=1e-10, atol=1e-12)
    assert np.sum(h) * (r[1] - r[0]) == pytest.approx(1.0)
    # a chunk of 3 frames at a time gives the same answer
    monkeypatch.setattr(observables, "_MAX_PAIR_ROWS", 3 * len(i))
    np.testing.assert_allclose(hr(frames, bins=200, r_max=5.0)[1], h, rtol=1e-12)


def test_hr_single_frame_shapes_agree_and_far_pairs_are_ignored():
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 3.0, size=(7, 3))
    r1, h1 = hr(pos, bins=50, r_max=6.0)
    r2, h2 = hr(pos[None], bins=50, r_max=6.0)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(h1, h2)
    # an atom 100 Å away adds only out-of-range pairs: h over [0, r_max] keeps unit area
    far = np.vstack([pos, [[100.0, 0, 0]]])
    _, h_far = hr(far, bins=50, r_max=6.0)
    np.testing.assert_allclose(h_far, h1)


def test_hr_mae_identical_disjoint_and_bad_input():
    r = np.linspace(0.05, 9.95, 100)
    width = r[1] - r[0]
    a = np.zeros(100)
    a[10] = 1 / width
    b = np.zeros(100)
    b[50] = 1 / width
    assert hr_mae(a, a, r) == 0.0
    assert hr_mae(a, b, r) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shapes differ"):
        hr_mae(a, b[:-1], r)
    with pytest.raises(ValueError, match="uniform grid"):
        hr_mae(a, b, r**2)
    with pytest.raises(ValueError, match="at least 2 atoms"):
        hr(np.zeros((1, 3)))


# ---------------------------------------------------------------- stability


def test_bonds_of_benzene_are_six_cc_and_six_ch(benzene):
    bonds = bonds_from_atoms(Atoms(numbers=benzene["z"], positions=benzene["R"][0]))
    assert bonds.shape == (12, 2)
    assert np.all(bonds[:, 0] < bonds[:, 1])
    kinds = sorted(tuple(sorted(benzene["z"][b])) for b in bonds)
    assert kinds.count((6, 6)) == 6 and kinds.count((1, 6)) == 6
    lengths = bond_lengths(benzene["R"][0], bonds)[0]
    cc = lengths[[tuple(sorted(benzene["z"][b])) == (6, 6) for b in bonds]]
    assert np.all((cc > 1.3) & (cc < 1.5))


def test_stability_detects_a_stretched_bond_at_its_frame(benzene):
    ref = benzene["R"][benzene["train"]]
    traj = benzene["R"][benzene["test"][:200]].copy()
    bonds = bonds_from_atoms(Atoms(numbers=benzene["z"], positions=ref[0]))
    c, h = next(b for b in bonds if sorted(benzene["z"][b]) == [1, 6])
    if benzene["z"][c] == 1:
        c, h = h, c
    k = 137
    for t in range(k, len(traj)):  # stretch the C-H bond by 0.6 Å from frame k on
        unit = (traj[t, h] - traj[t, c]) / np.linalg.norm(traj[t, h] - traj[t, c])
        traj[t, h] += 0.6 * unit
    time_ps = bonds_stability(traj, ref, threshold=0.5, frame_interval_fs=5.0, numbers=benzene["z"])
    assert time_ps == pytest.approx(k * 5.0 / 1000)
    ref_mean = bond_lengths(ref, bonds).mean(axis=0)
    dev = max_bond_deviation(traj, bonds, ref_mean)
    assert dev.shape == (200,)
    assert dev[:k].max() < 0.5 < dev[k]


def test_stability_passes_real_reference_frames_in_every_input_form(benzene, tmp_path):
    ref = benzene["R"][benzene["train"]]
    traj = benzene["R"][benzene["test"]]
    full = (len(traj) - 1) * 0.5 / 1000  # the time from the first frame to the last
    assert bonds_stability(traj, ref, frame_interval_fs=0.5, numbers=benzene["z"]) == pytest.approx(full)
    images = [Atoms(numbers=benzene["z"], positions=p) for p in traj[:100]]
    path = tmp_path / "frames.traj"
    write(path, images)
    ref_images = [Atoms(numbers=benzene["z"], positions=p) for p in ref]
    assert bonds_stability(images, ref_images, frame_interval_fs=0.5) == pytest.approx(0.0495)
    assert bonds_stability(str(path), ref_images, frame_interval_fs=0.5) == pytest.approx(0.0495)
    with pytest.raises(ValueError, match="numbers="):
        bonds_stability(traj, ref, frame_interval_fs=0.5)
    with pytest.raises(ValueError, match="frame_interval_fs"):
        bonds_stability(traj, ref, numbers=benzene["z"])


def test_stability_counts_nan_frames_as_collapsed(benzene):
    traj = benzene["R"][:20].copy()
    traj[4, 0] = np.nan
    assert bonds_stability(traj, benzene["R"][benzene["train"]], frame_interval_fs=1.0,
                           numbers=benzene["z"]) == pytest.approx(0.004)


def test_stability_summary():
    s = stability_summary([10.0, 20.0, 30.0], full_time_ps=30.0)
    assert s == {"mean": 20.0, "std": pytest.approx(10.0), "n": 3, "n_stable_full": 1}
    assert stability_summary([5.0])["std"] == 0.0
    assert stability_summary([5.0, 7.0])["n_stable_full"] is None
    with pytest.raises(ValueError, match="no stability"):
        stability_summary([])


# ---------------------------------------------------------------- NVE drift


def test_nve_drift_recovers_a_planted_slope():
    t = np.linspace(0.0, 10.0, 501)  # ps
    slope = 2.5e-3  # eV/ps
    energy = -100.0 + slope * t + 1e-4 * np.sin(2 * np.pi * t)  # drift + a zero-mean-ish oscillation
    d = nve_drift(t, energy, n_atoms=20)
    assert d["slope_eV_per_ps"] == pytest.approx(slope, rel=2e-3)
    assert d["slope_meV_per_atom_per_ps"] == pytest.approx(slope * 1000 / 20, rel=2e-3)
    exact = nve_drift(t, -100.0 + slope * t, n_atoms=20)
    assert exact["slope_eV_per_ps"] == pytest.approx(slope, rel=1e-10)
    assert exact["max_abs_dev_eV"] == pytest.approx(slope * 10.0)
    assert exact["max_abs_dev_meV_per_atom"] == pytest.approx(slope * 10.0 * 1000 / 20)
    assert exact["std_eV"] == pytest.approx(np.std(slope * t))
    assert exact["duration_ps"] == 10.0 and exact["n_frames"] == 501
    with pytest.raises(ValueError, match="at least 2 frames"):
        nve_drift([0.0], [1.0], 3)
    with pytest.raises(ValueError, match="or an MDResult"):
        nve_drift(t)


# ---------------------------------------------------------------- reports and plots


def test_write_results_json_and_markdown(tmp_path):
    results = {
        "xtb": {"stability_ps": [10.0, 20.0, 30.0], "hr_mae": 0.05,
                "nve_drift": {"slope_meV_per_atom_per_ps": 0.012}, "force_mae": 0.0123,
                "curve": np.arange(3.0), "nan": float("nan")},
        "emt": {"stability_ps": {"mean": 1.0, "std": 0.5, "n": 2, "n_stable_full": 0}},
    }
    text = write_results(results, tmp_path / "r.json", tmp_path / "r.md")
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["xtb"]["curve"] == [0.0, 1.0, 2.0]
    assert stored["xtb"]["nan"] is None
    lines = (tmp_path / "r.md").read_text().splitlines()
    assert text == markdown_table(results)
    assert lines[0].startswith("| model | stability (ps, mean ± std)")
    assert lines[2] == "| xtb | 20.00 ± 10.00 (n=3) | 0.050 | 0.012 | 12.3 |"
    assert lines[3] == "| emt | 1.00 ± 0.50 (n=2), 0 full | – | – | – |"
    with pytest.raises(ValueError, match="no results"):
        write_results({}, tmp_path / "x.json", tmp_path / "x.md")


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_write_labelled_pngs_of_the_expected_size(benzene, tmp_path):
    r, h_ref = hr(benzene["R"][benzene["train"][:200]], bins=200, r_max=6.0)
    _, h_test = hr(benzene["R"][benzene["test"][:200]], bins=200, r_max=6.0)
    fig = plots.plot_hr(r, {"test frames": h_test}, h_ref, tmp_path / "hr.png")
    assert _png_size(tmp_path / "hr.png") == (int(6.4 * plots.DPI), int(4.0 * plots.DPI))
    ax = fig.axes[0]
    assert "(Å)" in ax.get_xlabel() and "(1/Å)" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["reference", "test frames"]

    t = np.linspace(0, 1, 50)
    fig = plots.plot_bond_deviation(t, {"a": 0.1 + 0.5 * t}, 0.5, tmp_path / "dev.png")
    assert fig.axes[0].get_xlabel() == "time (ps)" and "(Å)" in fig.axes[0].get_ylabel()
    fig = plots.plot_stability_bars({"a": (3.0, 1.0), "b": stability_summary([1.0, 2.0])},
                                    tmp_path / "bars.png", max_time_ps=5.0)
    assert [x.get_text() for x in fig.axes[0].get_xticklabels()] == ["a", "b"]
    assert "(ps)" in fig.axes[0].get_ylabel()
    fig = plots.plot_energy_drift({"nve": (t, -10 + 0.001 * t, 10)}, tmp_path / "drift.png")
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), 1000 * 0.001 * t / 10)  # meV/atom
    assert "meV/atom" in fig.axes[0].get_ylabel()
    for name in ("dev", "bars", "drift"):
        w, h = _png_size(tmp_path / f"{name}.png")
        assert w >= 600 and h >= 500
