"""The reference data sets ttcalc reads: where each is looked for, its source and licence, and the
download of a public original (verified against a pinned SHA-256, converted to the readers'
layout, written atomically).

Lookup order and the cache are :mod:`ttcalc.paths`'. A download streams to a temporary file in the
destination with a progress bar, checks the byte count and the SHA-256, unpacks into a temporary
folder beside the target and only then moves the result into place, so an interrupted transfer,
a wrong checksum or a crash never leaves a half-written data set where the readers look.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ttcalc.paths import PUBLIC_SOURCES, cache_root, data_roots

log = logging.getLogger(__name__)

_RMD17 = ("aspirin", "benzene", "uracil", "naphthalene", "toluene")


@dataclass(frozen=True)
class DataSet:
    """One reference data set: ``files`` (paths below a data root; each a tuple of alternatives)
    must all exist for it to count as present. ``url`` and ``sha256`` describe the public
    original that ``download`` fetches (a tar archive that unpacks into the readers' layout)."""

    name: str
    files: tuple[tuple[str, ...], ...]
    licence: str
    url: str | None = None
    sha256: str | None = None

    @property
    def source(self) -> str:
        return PUBLIC_SOURCES[self.name]

    def present_in(self, root: Path) -> bool:
        return all(any((root / alt).exists() for alt in alts) for alts in self.files)

    def size_bytes(self, root: Path) -> int:
        top = root / self.name
        return sum(f.stat().st_size for f in top.rglob("*") if f.is_file()) if top.is_dir() else 0


DATASETS: dict[str, DataSet] = {d.name: d for d in (
    # the figshare archive unpacks to rmd17/npz_data/*.npz and rmd17/splits/*.csv, which
    # ttcalc.data.rmd17 reads as is. Its SHA-256 is not pinned: figshare publishes an MD5 only,
    # and this project was built without network access to compute one; pass --sha256 after
    # checking the file yourself.
    DataSet("rmd17", tuple((f"rmd17/rmd17_{m}.npz", f"rmd17/npz_data/rmd17_{m}.npz") for m in _RMD17),
            "CC0", url="https://figshare.com/ndownloader/files/23950376"),
    DataSet("qm9", (("qm9/qm9.npz",),), "CC0"),
    DataSet("3bpa", (("3bpa/train_300K.xyz",), ("3bpa/test_300K.xyz",), ("3bpa/test_600K.xyz",)), "MIT"),
    DataSet("acac", (("acac/train_300K.xyz",), ("acac/test_MD_300K.xyz",)), "MIT"),
    DataSet("mlearn", (("mlearn/Cu_test.xyz",), ("mlearn/Ni_test.xyz",)), "BSD-3"),
)}


def get_dataset(name: str) -> DataSet:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}") from None


def dataset_status() -> list[dict]:
    """For each data set: where it is found (or every place looked), its size, source, licence."""
    rows = []
    for d in DATASETS.values():
        found = next(((label, root) for label, root in data_roots() if d.present_in(root)), None)
        rows.append({"name": d.name, "present": found is not None,
                     "where": str(found[1] / d.name) if found else None, "found_via": found[0] if found else None,
                     "looked_in": [str(root / d.name) for _, root in data_roots()],
                     "size_mb": round(d.size_bytes(found[1]) / 1e6, 1) if found else 0.0,
                     "source": d.source, "licence": d.licence, "downloadable": d.url is not None})
    return rows


def _fetch(url: str, target: Path, progress: bool, timeout: float) -> str:
    """Stream ``url`` to ``target``; returns the SHA-256 hex digest of what arrived."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(target, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}",
                      disable=not progress) as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.URLError as exc:
        raise ConnectionError(f"cannot download {url}: {exc.reason}. Are you offline? Copy the file by "
                              f"other means and point TTCALC_DATA at its folder.") from exc
    except (ConnectionError, OSError) as exc:  # a dropped connection mid-transfer (IncompleteRead and kin)
        raise ConnectionError(f"download of {url} was interrupted ({exc}); nothing was installed, "
                              f"run the command again") from exc
    if total is not None and got != total:
        raise ConnectionError(f"download of {url} was interrupted: {got} of {total} bytes arrived; "
                              f"nothing was installed, run the command again")
    return digest.hexdigest()


def _install_tar(archive: Path, dest: Path) -> list[Path]:
    """Unpack ``archive`` next to ``dest``'s content, then move each top-level entry into place."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack."))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out or device files
        placed = []
        for entry in staging.iterdir():
            target = dest / entry.name
            if target.exists():
                old = dest / f".{entry.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(entry, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, target)
            placed.append(target)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(name: str, dest: str | Path | None = None, url: str | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch data set ``name``'s public original into ``dest`` (default: the cache's ``data/``),
    verify its SHA-256 and unpack it into the readers' layout; returns ``dest / name``.

    ``url`` and ``sha256`` override the catalogue (a mirror, or a checksum you verified yourself).
    Raises ``ValueError`` (no download known, no checksum, checksum mismatch) or
    ``ConnectionError`` (offline, interrupted); in every case nothing is installed.
    """
    d = get_dataset(name)
    url, sha256 = url or d.url, (sha256 or d.sha256 or "").lower() or None
    if url is None:
        raise ValueError(f"no download is known for {name!r}; get it from {d.source}")
    if sha256 is None:
        raise ValueError(f"no pinned SHA-256 for {url}; check the file's checksum with its publisher and "
                         f"pass it with --sha256 (ttcalc never installs unverified data)")
    dest = Path(dest).expanduser() if dest is not None else cache_root() / "data"
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".download")
    os.close(fd)
    tmp = Path(tmp)
    try:
        got = _fetch(url, tmp, progress, timeout)
        if got != sha256:
            raise ValueError(f"checksum mismatch for {url}: SHA-256 {got}, expected {sha256}; "
                             f"nothing was installed")
        placed = _install_tar(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("installed %s into %s (%s)", name, dest, ", ".join(p.name for p in placed))
    if not d.present_in(dest):
        raise ValueError(f"{url} unpacked to {[p.name for p in placed]}, not the layout of {name!r} "
                         f"({[alts[0] for alts in d.files]})")
    return dest / name
