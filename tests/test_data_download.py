"""`ttcalc data`: lookup order, listing, and downloads from a local HTTP server on 127.0.0.1
(a real transfer of a small rMD17-layout archive; nothing leaves the machine)."""
from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from ttcalc.data import load_rmd17
from ttcalc.data.catalog import dataset_status, download
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


def test_offline_and_unpinned_downloads_give_clear_errors(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="Are you offline"):
        download("rmd17", dest=tmp_path, url=f"http://127.0.0.1:{port}/x.tar.bz2", sha256="0" * 64,
                 progress=False, timeout=5)
    with pytest.raises(ValueError, match="no pinned SHA-256"):
        download("rmd17", dest=tmp_path, progress=False)
    with pytest.raises(ValueError, match="no download is known for 'qm9'"):
        download("qm9", dest=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown data set 'md22'"):
        download("md22", dest=tmp_path, progress=False)


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
