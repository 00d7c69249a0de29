"""`ttcalc data`: lookup order, listing, and downloads from a local HTTP server on 127.0.0.1
(a real transfer of a small rMD17-layout archive; nothing leaves the machine)."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ttcalc.data import load_rmd17, read_frames
from ttcalc.data.catalog import DATASETS, Remote, dataset_status, download
from ttcalc.data.converters import QM9PACK_PROPERTIES, mlearn_json_to_extxyz, qm9pack_wheel_to_npz
from ttcalc.data.qm9 import load_qm9
from ttcalc.paths import data_roots, dataset_path

FIXTURES = Path(__file__).resolve().parent / "data"


def _archive() -> bytes:
    """The public rMD17 tarball's layout (rmd17/npz_data/*.npz), made of the benzene fixture."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tar:
        for mol in ("aspirin", "benzene", "uracil", "naphthalene", "toluene"):
            tar.add(FIXTURES / "rmd17" / f"rmd17_{mol}.npz", arcname=f"rmd17/npz_data/rmd17_{mol}.npz")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        if self.path == "/truncated":  # the connection drops half-way
            self.wfile.write(self.payload[: len(self.payload) // 2])
            return
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    _Handler.payload = _archive()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.sha256(_Handler.payload).hexdigest()
    httpd.shutdown()


def test_download_verifies_unpacks_and_the_readers_find_it(server, tmp_path, monkeypatch):
    url, sha = server
    path = download("rmd17", dest=tmp_path / "data", url=f"{url}/rmd17.tar.bz2", sha256=sha, progress=False)
    assert path == tmp_path / "data" / "rmd17"
    frames = load_rmd17("benzene", "test_01", n=3, path=path)
    assert len(frames) == 3 and frames[0].get_forces().shape == (12, 3)
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no leftovers
    # the cache is looked in when TTCALC_DATA is unset
    monkeypatch.delenv("TTCALC_DATA")
    monkeypatch.setenv("TTCALC_CACHE", str(tmp_path))
    assert data_roots()[0] == ("cache", tmp_path / "data")
    assert dataset_path("rmd17", "npz_data", "rmd17_benzene.npz").is_file()
    status = {r["name"]: r for r in dataset_status()}
    assert status["rmd17"]["present"] and status["rmd17"]["found_via"] == "cache"


def test_checksum_mismatch_installs_nothing(server, tmp_path):
    url, _ = server
    with pytest.raises(ValueError, match="checksum mismatch"):
        download("rmd17", dest=tmp_path, url=f"{url}/rmd17.tar.bz2", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_installs_nothing(server, tmp_path):
    url, sha = server
    with pytest.raises(ConnectionError, match="interrupted"):
        download("rmd17", dest=tmp_path, url=f"{url}/truncated", sha256=sha, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_and_unknown_downloads_give_clear_errors(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="Are you offline"):
        download("rmd17", dest=tmp_path, url=f"http://127.0.0.1:{port}/x.tar.bz2", sha256="0" * 64,
                 progress=False, timeout=5)
    monkeypatch.setitem(DATASETS, "qm9", replace(DATASETS["qm9"], remotes=()))
    with pytest.raises(ValueError, match="no download is known for 'qm9'"):
        download("qm9", dest=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown data set 'md22'"):
        download("md22", dest=tmp_path, progress=False)


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture()
def file_server():
    """Serves ``files[name]`` at ``/name`` on 127.0.0.1 (nothing leaves the machine)."""
    files: dict[str, bytes] = {}

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()


def test_every_downloadable_data_set_has_pinned_checksums_for_each_file():
    for d in DATASETS.values():
        assert d.remotes and d.convert is not None, d.name
        for r in d.remotes:
            kind, _, value = r.checksum.partition(":")
            assert (kind, len(value)) in (("sha256", 64), ("git-blob-sha1", 40)), (d.name, r.checksum)
            assert r.url.startswith("https://"), r.url


def test_multi_file_download_checks_sha256_and_git_blob_ids(file_server, tmp_path, monkeypatch):
    """The acac layout (files used as they are) from three files, one pinned by its git blob id."""
    url, files = file_server
    for name in ("train_300K.xyz", "test_MD_300K.xyz", "test_MD_600K.xyz"):
        files[name] = (FIXTURES / "acac" / name).read_bytes()
    remotes = (Remote(f"{url}/train_300K.xyz", "sha256:" + hashlib.sha256(files["train_300K.xyz"]).hexdigest(),
                      "train_300K.xyz"),
               Remote(f"{url}/test_MD_300K.xyz", "git-blob-sha1:" + _git_blob_id(files["test_MD_300K.xyz"]),
                      "test_MD_300K.xyz"))
    monkeypatch.setitem(DATASETS, "acac", replace(DATASETS["acac"], remotes=remotes))
    path = download("acac", dest=tmp_path / "data", progress=False)
    assert sorted(p.name for p in path.iterdir()) == ["test_MD_300K.xyz", "train_300K.xyz"]
    assert read_frames(path / "train_300K.xyz")[0].get_forces().shape == (15, 3)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["acac"]  # no staging left
    # one wrong byte in the blob-pinned file: nothing changes where the readers look
    files["test_MD_300K.xyz"] = files["test_MD_300K.xyz"][:-2] + b"0\n"
    before = (path / "test_MD_300K.xyz").read_bytes()
    with pytest.raises(ValueError, match="checksum mismatch.*git-blob-sha1"):
        download("acac", dest=tmp_path / "data", progress=False)
    assert (path / "test_MD_300K.xyz").read_bytes() == before
    with pytest.raises(ValueError, match="single-file"):
        download("acac", dest=tmp_path / "data", url=f"{url}/x", progress=False)


def test_mlearn_json_converts_to_the_extxyz_the_readers_take(tmp_path):
    ref = read_frames(FIXTURES / "mlearn" / "Ge_test.xyz")[:3]
    records = [{"structure": {"lattice": {"matrix": a.cell.array.tolist()},
                              "sites": [{"species": [{"element": s, "occu": 1}], "xyz": p.tolist()}
                                        for s, p in zip(a.get_chemical_symbols(), a.positions)]},
                "outputs": {"energy": a.get_potential_energy(), "forces": a.get_forces().tolist(),
                            "virial_stress": list(a.info["virial_stress_kbar"])},
                "group": a.info["group"], "tag": "test"} for a in ref]
    (tmp_path / "Ge_test.json").write_text(json.dumps(records))
    assert mlearn_json_to_extxyz(tmp_path / "Ge_test.json", tmp_path / "Ge_test.xyz") == 3
    got = read_frames(tmp_path / "Ge_test.xyz")
    for a, b in zip(got, ref):
        assert a.pbc.all() and np.allclose(a.cell.array, b.cell.array) and np.allclose(a.positions, b.positions)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy())
        assert np.allclose(a.get_forces(), b.get_forces()) and a.info["group"] == b.info["group"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an mlearn data file"):
        mlearn_json_to_extxyz(tmp_path / "bad.json", tmp_path / "bad.xyz")


def test_qm9pack_wheel_converts_to_the_npz_the_reader_takes(tmp_path):
    ref = load_qm9(FIXTURES / "qm9" / "qm9.npz")
    picks = [2, 0, 1]  # out of order in the CSV: the npz is in QM9 index order
    header = ["Index", "SMILES", "Elements", "XYZ_Ang", *QM9PACK_PROPERTIES]
    lines = [",".join(header)]
    for i in picks:
        a = ref.atoms(i)
        row = [str(int(ref.arrays["qm9_index"][i])), ref.arrays["smiles"][i].decode(),
               '"' + repr(a.get_chemical_symbols()) + '"', '"' + repr(a.positions.tolist()) + '"']
        lines.append(",".join(row + [repr(float(ref.arrays[k][i])) for k in QM9PACK_PROPERTIES]))
    wheel = tmp_path / "qm9pack-1.0.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("qm9pack/data/qm9_part1.csv", "\n".join(lines) + "\n")
    assert qm9pack_wheel_to_npz(wheel, tmp_path / "qm9.npz") == 3
    got = load_qm9(tmp_path / "qm9.npz")
    for j in range(3):
        assert np.array_equal(got.atoms(j).numbers, ref.atoms(j).numbers)
        assert np.allclose(got.atoms(j).positions, ref.atoms(j).positions, atol=1e-6)
    assert np.allclose(got.property("gap"), ref.property("gap")[:3])
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as zf:
        zf.writestr("x.txt", "")
    with pytest.raises(ValueError, match="not a qm9pack"):
        qm9pack_wheel_to_npz(tmp_path / "other.whl", tmp_path / "x.npz")


def test_missing_data_error_names_every_place_and_the_download_command(tmp_path, monkeypatch):
    monkeypatch.delenv("TTCALC_DATA")
    monkeypatch.setenv("TTCALC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as err:
        dataset_path("rmd17", "rmd17_ethanol.npz")
    msg = str(err.value)
    assert "cache:" in msg and "../shared/data" in msg and "TTCALC_DATA is unset" in msg
    assert "ttcalc data download rmd17" in msg


def test_cli_data_list_runs(capsys):
    from ttcalc.app.cli import main

    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "rmd17" in out and "CC0" in out and str(FIXTURES) in out
