"""Integration tests on the full reference data (``$TTCALC_DATA``, else ``../shared/data``).

Not part of the default suite (``tests/`` runs on its fixtures alone); CI runs these when the
full data are present: ``python -m pytest tests_full``.
"""
from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from ttcalc.data import load_rmd17, read_frames
from ttcalc.data.qm9 import load_qm9
from ttcalc.data.rmd17 import rmd17_arrays
from ttcalc.paths import data_dir

ROOT = Path(__file__).resolve().parents[1]
MOLECULES = ("aspirin", "benzene", "uracil", "naphthalene", "toluene")

if not (data_dir() / "rmd17").is_dir():
    pytest.skip(f"full reference data not found at {data_dir()} (set TTCALC_DATA)", allow_module_level=True)


@pytest.mark.parametrize("molecule", MOLECULES)
def test_rmd17_has_every_frame_of_the_official_splits(molecule):
    arrays = rmd17_arrays(molecule)
    assert len(arrays) == 9633
    assert {len(v) for v in arrays.splits.values()} == {1000}
    for k in range(1, 6):
        assert not set(arrays.splits[f"train_0{k}"]) & set(arrays.splits[f"test_0{k}"])
    assert len(load_rmd17(molecule, "all", exclude=["test_01"])) == 8633


@pytest.mark.parametrize("relpath, n_frames", [("3bpa/train_300K.xyz", 500), ("3bpa/test_600K.xyz", 2138),
                                               ("acac/train_300K.xyz", 500), ("mlearn/Cu_test.xyz", 31)])
def test_xyz_sets_have_their_published_sizes(relpath, n_frames):
    assert len(read_frames(data_dir() / relpath)) == n_frames


def test_qm9_has_every_molecule():
    qm9 = load_qm9()
    assert len(qm9.offsets) - 1 == 130831


def test_committed_fixtures_are_what_the_build_script_makes(tmp_path, monkeypatch):
    """``tests/data`` is reproducible from the full data by ``tests/data/build_fixtures.py``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_fixtures", ROOT / "tests" / "data" / "build_fixtures.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "HERE", tmp_path)
    build.main(["--source", str(data_dir())])
    committed = ROOT / "tests" / "data"
    for f in tmp_path.rglob("*.*"):
        rel = f.relative_to(tmp_path)
        if f.suffix == ".npz":
            a, b = np.load(f), np.load(committed / rel)
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{rel}:{k}")
        else:
            assert filecmp.cmp(f, committed / rel, shallow=False), rel


def test_the_pinned_acac_checksums_match_the_full_data(tmp_path, monkeypatch):
    """The acac files here are the public originals byte for byte: the catalogue's download, served
    from 127.0.0.1, accepts them against its pins and installs them unchanged."""
    import functools
    import http.server
    import threading
    from dataclasses import replace

    from ttcalc.data.catalog import DATASETS, Remote, download

    folder = data_dir() / "acac"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        acac = DATASETS["acac"]
        local = tuple(Remote(f"{base}/{r.name}", r.checksum, r.name) for r in acac.remotes)
        monkeypatch.setitem(DATASETS, "acac", replace(acac, remotes=local))
        path = download("acac", dest=tmp_path, progress=False)
    finally:
        httpd.shutdown()
    for r in acac.remotes:
        assert filecmp.cmp(path / r.name, folder / r.name, shallow=False)
