"""ttcalc.data on real data: the fixtures in tests/data (rMD17, 3BPA, acac, mlearn subsets)."""
from __future__ import annotations

import re

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from ttcalc.data import (
    composition_matrix,
    fit_element_references,
    label_with_prior,
    load_rmd17,
    read_frames,
    reference_energy,
    rmd17_arrays,
    split_frames,
    with_labels,
)
from ttcalc.paths import cache_dir, dataset_path
from ttcalc.priors.base import Prior

KCAL_MOL_IN_EV = 0.0433641  # the value quoted in ../shared/data/README.md
MOLECULES = {"aspirin": "C9H8O4", "benzene": "C6H6", "uracil": "C4H4N2O2", "naphthalene": "C10H8", "toluene": "C7H8"}


def _raw(molecule: str) -> dict[str, np.ndarray]:
    """The shared npz read directly (kcal/mol), independent of the loader under test."""
    with np.load(dataset_path("rmd17", f"rmd17_{molecule}.npz")) as data:
        return {k: data[k] for k in data.files}


# ----------------------------------------------------------------------------------------- rMD17
@pytest.mark.parametrize("molecule", sorted(MOLECULES))
def test_load_rmd17_units_shapes_and_splits(molecule):
    raw = _raw(molecule)
    train = load_rmd17(molecule, "train_01")
    test = load_rmd17(molecule, "test_01")
    n_atoms = len(raw["z"])
    assert len(train) == len(raw["train_01"]) and len(test) == len(raw["test_01"])  # 1000 each in full
    assert all(len(a) == n_atoms and a.get_chemical_formula(mode="hill") == MOLECULES[molecule] for a in train[:5])

    # split order is the file's order and info points back into the npz
    assert [a.info["index"] for a in train] == raw["train_01"].tolist()
    assert train[0].info == {"dataset": "rmd17", "molecule": molecule, "index": int(raw["train_01"][0])}

    # kcal/mol -> eV and kcal/mol/Å -> eV/Å
    i = int(raw["train_01"][7])
    atoms = train[7]
    assert atoms.get_potential_energy() == pytest.approx(raw["E"][i] * KCAL_MOL_IN_EV, rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), raw["F"][i] * KCAL_MOL_IN_EV, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(atoms.positions, raw["R"][i], atol=1e-6)

    # official train and test splits are disjoint
    assert not {a.info["index"] for a in train} & {a.info["index"] for a in test}


def test_load_rmd17_all_and_random_draws():
    all_frames = load_rmd17("benzene", "all")
    assert len(all_frames) == len(_raw("benzene")["E"])  # 9633 in the full data (tests_full)
    outside = load_rmd17("benzene", "all", exclude=["test_01"])
    assert len(outside) == len(all_frames) - len(_raw("benzene")["test_01"])
    assert not {a.info["index"] for a in outside} & set(_raw("benzene")["test_01"].tolist())
    with pytest.raises(ValueError, match="cannot exclude split 'test_09'"):
        load_rmd17("benzene", "all", exclude=["test_09"])
    assert [a.info["index"] for a in all_frames[:3]] == [0, 1, 2]

    a = load_rmd17("benzene", "train_02", n=50, seed=3)
    b = load_rmd17("benzene", "train_02", n=50, seed=3)
    c = load_rmd17("benzene", "train_02", n=50, seed=4)
    index_a = [f.info["index"] for f in a]
    assert index_a == [f.info["index"] for f in b]
    assert index_a != [f.info["index"] for f in c]
    assert len(set(index_a)) == 50  # without replacement
    assert set(index_a) <= set(_raw("benzene")["train_02"].tolist())
    np.testing.assert_array_equal(a[10].get_forces(), b[10].get_forces())

    too_many = len(_raw("benzene")["train_01"]) + 1
    with pytest.raises(ValueError, match=f"cannot draw n={too_many}"):
        load_rmd17("benzene", "train_01", n=too_many)
    with pytest.raises(ValueError, match="unknown rMD17 split 'valid_01'"):
        load_rmd17("benzene", "valid_01")


def test_rmd17_arrays_are_ev_and_cached():
    arrays = rmd17_arrays("uracil")
    raw = _raw("uracil")
    n = len(raw["E"])
    assert arrays.R.shape == (n, 12, 3) and arrays.F.shape == (n, 12, 3) and arrays.E.shape == (n,)
    np.testing.assert_allclose(arrays.E, raw["E"] * KCAL_MOL_IN_EV, rtol=1e-6)
    assert set(arrays.splits) == {f"{k}_{i:02d}" for k in ("train", "test") for i in range(1, 6)}
    assert rmd17_arrays("uracil") is arrays  # one np.load per file
    with pytest.raises(ValueError, match="read-only"):
        arrays.E[0] = 0.0


def _write_public_layout(root, n_frames=30):
    """A tarball-shaped public rMD17 copy (rmd17/npz_data + rmd17/splits) made of real benzene frames."""
    raw = _raw("benzene")
    npz_dir = root / "rmd17" / "npz_data"
    split_dir = root / "rmd17" / "splits"
    npz_dir.mkdir(parents=True)
    split_dir.mkdir()
    take = np.arange(100, 100 + n_frames)
    np.savez(
        npz_dir / "rmd17_benzene.npz",
        nuclear_charges=raw["z"], coords=raw["R"][take].astype(np.float64), energies=raw["E"][take],
        forces=raw["F"][take].astype(np.float64), old_indices=raw["old_indices"][take],
        old_energies=raw["E"][take] + 1.0, old_forces=raw["F"][take].astype(np.float64),
    )
    (split_dir / "index_train_01.csv").write_text("".join(f"{i}\n" for i in range(0, 20)))
    (split_dir / "index_test_01.csv").write_text("".join(f"{i}\n" for i in range(20, n_frames)))
    return npz_dir, take, raw


def test_load_rmd17_public_layout(tmp_path):
    npz_dir, take, raw = _write_public_layout(tmp_path)
    train = load_rmd17("benzene", "train_01", path=npz_dir)
    test = load_rmd17("benzene", "test_01", path=npz_dir / "rmd17_benzene.npz")
    assert len(train) == 20 and len(test) == 10
    shared = load_rmd17("benzene", "all")
    for k, atoms in enumerate(train + test):
        reference = shared[int(take[k])]
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), rtol=1e-6)
    assert len(load_rmd17("benzene", "all", path=tmp_path / "rmd17")) == 30  # the tarball root works too
    with pytest.raises(ValueError, match=r"no split 'train_02'.*index_train_02\.csv"):
        load_rmd17("benzene", "train_02", path=npz_dir)


def test_load_rmd17_errors_mention_paths(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown rMD17 molecule 'caffeine'.*rmd17.*rmd17_aspirin\.npz"):
        load_rmd17("caffeine")
    monkeypatch.setenv("TTCALC_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_rmd17("aspirin")
    (tmp_path / "rmd17").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))}.*rmd17_ethanol\.npz.*figshare"):
        load_rmd17("ethanol")


# ----------------------------------------------------------------------------------- read_frames
@pytest.mark.parametrize(
    "relpath, n_frames, n_atoms, pbc",
    [("3bpa/train_300K.xyz", 40, 27, False), ("acac/train_300K.xyz", 40, 15, False), ("mlearn/Cu_test.xyz", 31, None, True)],
)
def test_read_frames_real_files(relpath, n_frames, n_atoms, pbc):
    path = dataset_path(*relpath.split("/"))
    frames = read_frames(path)
    assert len(frames) == n_frames
    for atoms in frames:
        assert n_atoms is None or len(atoms) == n_atoms
        assert atoms.get_forces().shape == (len(atoms), 3)
        assert np.isfinite(atoms.get_potential_energy())
        assert bool(atoms.pbc.all()) is pbc
    # the energy is the one written in the first frame's comment line
    comment = path.read_text().splitlines()[1]
    energy = float(comment.split("energy=")[1].split()[0])
    assert frames[0].get_potential_energy() == energy
    assert len(read_frames(path, index="0:10:2")) == 5


def test_read_frames_detects_other_label_keys_and_db(tmp_path):
    source = read_frames(dataset_path("acac", "train_300K.xyz"), index=":4")
    renamed = []
    for atoms in source:
        plain = atoms.copy()  # no calculator: labels only under MACE-style names
        plain.info["REF_energy"] = atoms.get_potential_energy()
        plain.arrays["REF_forces"] = atoms.get_forces()
        renamed.append(plain)
    ase.io.write(tmp_path / "ref.xyz", renamed, format="extxyz")
    back = read_frames(tmp_path / "ref.xyz")
    for a, b in zip(source, back):
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), rtol=1e-8)
        assert "REF_energy" not in b.info and "REF_forces" not in b.arrays

    # explicit keys win over the automatic choice
    for atoms in renamed:
        atoms.info["xtb_energy"] = -1.0
    ase.io.write(tmp_path / "two.xyz", renamed, format="extxyz")
    assert read_frames(tmp_path / "two.xyz", energy_key="xtb_energy")[0].get_potential_energy() == -1.0

    with ase.db.connect(tmp_path / "frames.db") as db:
        for atoms in source:
            db.write(atoms, mol="acac")
    from_db = read_frames(tmp_path / "frames.db")
    assert len(from_db) == 4 and from_db[2].info["mol"] == "acac"
    np.testing.assert_allclose(from_db[2].get_forces(), source[2].get_forces())
    assert len(read_frames(tmp_path / "frames.db", index="1:3")) == 2


def test_read_frames_without_labels(tmp_path):
    frames = [Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])] * 2
    ase.io.write(tmp_path / "bare.xyz", frames, format="extxyz")
    with pytest.raises(ValueError, match=r"frame 0 has no energy and forces.*require_labels=False"):
        read_frames(tmp_path / "bare.xyz")
    assert all(a.calc is None for a in read_frames(tmp_path / "bare.xyz", require_labels=False))
    with pytest.raises(FileNotFoundError, match="missing.xyz"):
        read_frames(tmp_path / "missing.xyz")


# ---------------------------------------------------------------------------- element references
PLANTED = {1: -13.61, 6: -1029.49, 7: -1484.27, 8: -2041.98}


def test_fit_element_references_recovers_planted_constants():
    frames = [a for m in MOLECULES for a in load_rmd17(m, "train_01", n=10)]
    planted = [with_labels(a, sum(PLANTED[int(z)] for z in a.numbers), None) for a in frames]
    refs = fit_element_references(planted)
    assert refs.keys() == PLANTED.keys()
    for z, value in PLANTED.items():
        assert refs[z] == pytest.approx(value, rel=1e-10)
    # the vectorised path: atomic-number arrays plus energies
    numbers = [rmd17_arrays(m).z for m in MOLECULES]
    energies = [sum(PLANTED[int(z)] for z in zs) for zs in numbers]
    assert fit_element_references(numbers, energies=energies) == pytest.approx(refs, rel=1e-10)


def test_fit_element_references_rank_deficient_and_ridge():
    frames = load_rmd17("benzene", "train_01", n=50)
    energies = np.array([a.get_potential_energy() for a in frames])
    refs = fit_element_references(frames)
    # one composition: minimum-norm solution has e_H = e_C and reproduces the mean energy exactly
    assert refs[1] == pytest.approx(refs[6], rel=1e-10)
    assert reference_energy(frames[0], refs) == pytest.approx(energies.mean(), rel=1e-12)

    X = composition_matrix(frames, [1, 6])
    ridge_refs = fit_element_references(frames, ridge=5.0)
    e = np.array([ridge_refs[1], ridge_refs[6]])
    np.testing.assert_allclose((X.T @ X + 5.0 * np.eye(2)) @ e, X.T @ energies, rtol=1e-10)
    with pytest.raises(ValueError, match=r"outside elements=\[1\]"):
        fit_element_references(frames, elements=[1])


def test_element_references_remove_the_spread_of_real_energies():
    frames = [a for m in ("aspirin", "benzene", "uracil") for a in load_rmd17(m, "train_01", n=100, seed=1)]
    energies = np.array([a.get_potential_energy() for a in frames])
    refs = fit_element_references(frames)
    residual = energies - np.array([reference_energy(a, refs) for a in frames])
    assert energies.std() > 1000.0  # eV: dominated by composition
    assert residual.std() < 0.5  # eV: only the thermal fluctuations of each molecule remain
    for k in range(3):  # 3 compositions, rank 3: each molecule's mean is fitted exactly
        assert abs(residual[100 * k:100 * (k + 1)].mean()) < 1e-6
    with pytest.raises(ValueError, match=r"no reference energy for element\(s\) \[29\]"):
        reference_energy([1, 29], refs)
    assert reference_energy([6, 1], {"1": 1.0, "6": 2.0}) == 3.0  # str keys from JSON


# ---------------------------------------------------------------------------------- prior labels
class CountingEMT(Prior):
    """The real EMT potential as a prior, counting how often it is evaluated."""

    name = "emt-counting"

    def __init__(self, tag: str = "v1"):
        self.calls = 0
        self.tag = tag

    def fingerprint(self) -> str:
        return f"{self.name}:{self.tag}"

    def _energy_forces(self, atoms):
        self.calls += 1
        work = atoms.copy()
        work.calc = EMT()
        return work.get_potential_energy(), work.get_forces()


@pytest.fixture()
def cu_frames():
    return read_frames(dataset_path("mlearn", "Cu_test.xyz"), index=":6")


def test_label_with_prior_uses_and_invalidates_cache(cu_frames, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTCALC_CACHE", str(tmp_path))
    prior = CountingEMT()
    first = label_with_prior(cu_frames, prior, progress=True)
    assert prior.calls == 6
    assert "labels (emt-counting)" in capsys.readouterr().err
    for atoms, labelled in zip(cu_frames, first):
        work = atoms.copy()
        work.calc = EMT()
        assert labelled.get_potential_energy() == pytest.approx(work.get_potential_energy(), rel=1e-12)
        assert labelled.get_potential_energy() != atoms.get_potential_energy()  # the DFT label is untouched
    assert len(list(cache_dir("labels").rglob("*.npy"))) == 6

    second = label_with_prior(cu_frames, prior)
    assert prior.calls == 6  # everything came from the cache
    for a, b in zip(first, second):
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())

    moved = [a.copy() for a in cu_frames]
    moved[2].positions[5] += [0.05, 0.0, 0.0]
    third = label_with_prior(moved, prior)
    assert prior.calls == 7  # only the changed frame is relabelled
    assert third[2].get_potential_energy() != first[2].get_potential_energy()
    assert third[3].get_potential_energy() == first[3].get_potential_energy()

    label_with_prior(cu_frames[:2], CountingEMT(tag="v2"))  # a new fingerprint misses the cache
    assert len(list(cache_dir("labels").rglob("*.npy"))) == 9


def test_label_with_prior_without_cache(cu_frames, tmp_path, monkeypatch):
    monkeypatch.setenv("TTCALC_CACHE", str(tmp_path))
    prior = CountingEMT()
    label_with_prior(cu_frames[:2], prior, cache=False)
    label_with_prior(cu_frames[:2], prior, cache=False)
    assert prior.calls == 4
    assert not list(tmp_path.rglob("*.npy"))


# ------------------------------------------------------------------------------------ split_frames
def test_split_frames():
    frames = load_rmd17("toluene", "train_01", n=101)
    train, val = split_frames(frames, (0.9, 0.1), seed=1)
    assert (len(train), len(val)) == (91, 10)
    ids = [a.info["index"] for a in train + val]
    assert sorted(ids) == sorted(a.info["index"] for a in frames)
    again, _ = split_frames(frames, (0.9, 0.1), seed=1)
    assert [a.info["index"] for a in again] == [a.info["index"] for a in train]
    other, _ = split_frames(frames, (0.9, 0.1), seed=2)
    assert [a.info["index"] for a in other] != [a.info["index"] for a in train]
    with pytest.raises(ValueError, match="sum to 1"):
        split_frames(frames, (0.8, 0.1))
    with pytest.raises(ValueError, match="empty part"):
        split_frames(frames[:3], (0.9, 0.1))
