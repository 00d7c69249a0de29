"""The reference data sets ttcalc reads: where each is looked for, its source and licence, and the
download of its public originals (each file verified against a pinned checksum, converted to the
readers' layout, installed atomically).

Lookup order and the cache are :mod:`ttcalc.paths`'. A download streams every file of a data set
into a staging folder inside the destination with a progress bar, checks its byte count and its
pinned checksum, converts the files into the readers' layout in that folder and only then moves the
result into place, so an interrupted transfer, a wrong checksum or a crash never leaves a
half-written data set where the readers look.

Checksums are SHA-256, except for the files whose publisher gives none and which this project
could not fetch to hash (built without network access): those are pinned by their git blob id,
``sha1(b"blob <size>\\0" + content)``, which names the exact bytes GitHub serves for a commit.
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
from typing import Callable

from tqdm.auto import tqdm

from ttcalc.data.converters import mlearn_json_to_extxyz, qm9pack_wheel_to_npz
from ttcalc.paths import PUBLIC_SOURCES, cache_root, data_roots

log = logging.getLogger(__name__)

_RMD17 = ("aspirin", "benzene", "uracil", "naphthalene", "toluene")
_BOTNET = "https://raw.githubusercontent.com/davkovacs/BOTNet-datasets/29e6d467317e4b5967b7ea5cbee54de953fa0d45"
_MLEARN = "https://raw.githubusercontent.com/materialsvirtuallab/mlearn/10c427a5480c6281c15c64efaf869b03be04818f/data"


@dataclass(frozen=True)
class Remote:
    """One public file: where it is, its pinned checksum (``"sha256:<hex>"`` or
    ``"git-blob-sha1:<hex>"``) and the name it gets in the staging folder."""

    url: str
    checksum: str
    name: str

    def __post_init__(self):
        kind, _, value = self.checksum.partition(":")
        if kind not in ("sha256", "git-blob-sha1") or not value:
            raise ValueError(f"checksum must be 'sha256:<hex>' or 'git-blob-sha1:<hex>', got {self.checksum!r}")


class _Digest:
    """The pinned kind of checksum, computed while the bytes stream in."""

    def __init__(self, kind: str, size: int | None):
        if kind == "git-blob-sha1":
            if size is None:
                raise ValueError("a git blob id can only be checked when the server sends the size")
            self.h = hashlib.sha1(b"blob %d\0" % size)
        else:
            self.h = hashlib.sha256()
        self.kind = kind

    def update(self, chunk: bytes) -> None:
        self.h.update(chunk)

    def hexdigest(self) -> str:
        return f"{self.kind}:{self.h.hexdigest()}"


@dataclass(frozen=True)
class DataSet:
    """One reference data set: ``files`` (paths below a data root; each a tuple of alternatives)
    must all exist for it to count as present. ``remotes`` are its public originals, and
    ``convert(staging, out)`` turns them (in ``staging``) into the readers' layout below ``out``."""

    name: str
    files: tuple[tuple[str, ...], ...]
    licence: str
    remotes: tuple[Remote, ...] = ()
    convert: Callable[[Path, Path], None] | None = None

    @property
    def source(self) -> str:
        return PUBLIC_SOURCES[self.name]

    def present_in(self, root: Path) -> bool:
        return all(any((root / alt).exists() for alt in alts) for alts in self.files)

    def size_bytes(self, root: Path) -> int:
        top = root / self.name
        return sum(f.stat().st_size for f in top.rglob("*") if f.is_file()) if top.is_dir() else 0


def _untar(staging: Path, out: Path) -> None:
    """Every archive in ``staging`` unpacked into ``out`` (no absolute paths, links out or devices)."""
    for archive in staging.iterdir():
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")


def _placed_as(folder: str) -> Callable[[Path, Path], None]:
    """Files used as they are (the readers parse them), moved into ``out/folder``."""
    def place(staging: Path, out: Path) -> None:
        (out / folder).mkdir(parents=True)
        for f in staging.iterdir():
            os.replace(f, out / folder / f.name)
    return place


def _mlearn(staging: Path, out: Path) -> None:
    (out / "mlearn").mkdir(parents=True)
    for f in staging.iterdir():
        mlearn_json_to_extxyz(f, out / "mlearn" / f.with_suffix(".xyz").name)


def _qm9(staging: Path, out: Path) -> None:
    (out / "qm9").mkdir(parents=True)
    qm9pack_wheel_to_npz(next(staging.iterdir()), out / "qm9" / "qm9.npz")


_MLEARN_FILES = {  # (element, split): SHA-256 of data/<El>/<split>.json at the pinned commit
    ("Cu", "test"): "1805a315ce8d0ce4a18bb761df4c4f619909ce114d598d426015d0071edc98c2",
    ("Ni", "test"): "dccbfa14ddff5d1d35f658c48b68f6b431f95496a5261ef8b8f4d1d41e36008a",
    ("Ge", "training"): "43dee02009a5167f94c7aafce19051222bcfc328c46181750cc2a2018187ca00",
    ("Ge", "test"): "737ea6159c9dd27ebee7fb8ffae22f15e20466884927771248ca4f5b2cd3f093",
    ("Li", "training"): "1cac01475c5a4fb85771ee1fd23366a6b8abfb9891e0c9e088b6e37228e147b3",
    ("Li", "test"): "554d0ce60b35a07b357be3a80bf04f68eb8fc97b5a88328caf08c860b5e9b260",
    ("Mo", "training"): "b13305fca0d0d2631ab080c8fcf13c743ee79a911712fb65a34ca88fadf09f9a",
    ("Mo", "test"): "68169e2927c2115daa2f504805fcb9548ee65daf2dd015428807ba92f8e13bb8",
    ("Si", "training"): "ae6d4b0a65b00e0fcf7ba0a6fad366716710d2f0d21d70199203089c6866b500",
    ("Si", "test"): "d452b30a89f23bff76f7cc529b7b6c2d159ea81ccd5a4599fb1a18207654fa91",
}

DATASETS: dict[str, DataSet] = {d.name: d for d in (
    # figshare publishes an MD5 only; the SHA-256 is a published pin whose first 12 hex digits
    # load-atoms (jla-gardner/load-atoms, importers/rmd17.py) pins independently
    DataSet("rmd17", tuple((f"rmd17/rmd17_{m}.npz", f"rmd17/npz_data/rmd17_{m}.npz") for m in _RMD17), "CC0",
            (Remote("https://figshare.com/ndownloader/files/23950376",
                    "sha256:cddeea2ec2c4b22a9de16a9a65a3eeedac5b29da9c99c20bbff0153912bf922b", "rmd17.tar.bz2"),),
            _untar),
    # the PyPI wheel of qm9pack 1.0.3 (its SHA-256 is the one PyPI publishes), converted to qm9.npz
    DataSet("qm9", (("qm9/qm9.npz",),), "CC0",
            (Remote("https://files.pythonhosted.org/packages/fd/8f/ce586cc7801ebd0880483904127b1e50a81d31d3af287379"
                    "edfe1af10fc7/qm9pack-1.0.3-py3-none-any.whl",
                    "sha256:1d88c2988007c6778e717ee3224cf511bd60e10732ebe3b7ed500ea5af05c9f0",
                    "qm9pack-1.0.3-py3-none-any.whl"),), _qm9),
    DataSet("3bpa", (("3bpa/train_300K.xyz",), ("3bpa/test_300K.xyz",), ("3bpa/test_600K.xyz",)), "MIT",
            (Remote(f"{_BOTNET}/dataset_3BPA/train_300K.xyz",
                    "sha256:d109971fab90e2231ad931a83eb704c8d940f5c7d7a8de27fe3b84ea18634c0a", "train_300K.xyz"),
             # the test files were too large to hash here: pinned by their git blob ids
             Remote(f"{_BOTNET}/dataset_3BPA/test_300K.xyz",
                    "git-blob-sha1:6ea840dfce31bd7667a26e592f3625729c90441b", "test_300K.xyz"),
             Remote(f"{_BOTNET}/dataset_3BPA/test_600K.xyz",
                    "git-blob-sha1:681d24eeb4e9193644e6db58193b50e205a5bc0f", "test_600K.xyz")),
            _placed_as("3bpa")),
    DataSet("acac", (("acac/train_300K.xyz",), ("acac/test_MD_300K.xyz",)), "MIT",
            tuple(Remote(f"{_BOTNET}/dataset_acac/{name}", f"sha256:{sha}", name) for name, sha in (
                ("train_300K.xyz", "8f5706d6902360555a5be59395612d2afc3489a75688388a58e7275fdad68af3"),
                ("train_600K.xyz", "180c2538508f7810a623c279426f44953ee7cfb2af77e48ea3986ff97645a71c"),
                ("test_MD_300K.xyz", "2291f3186a3cc6a5e05e92952c84a9237ca53f862d78fd3316a769360719ec43"),
                ("test_MD_600K.xyz", "d5a5bba154ec43f915eb7529f86ec3af60e6f911743859daba030181a0378ff7"))),
            _placed_as("acac")),
    DataSet("mlearn", (("mlearn/Cu_test.xyz",), ("mlearn/Ni_test.xyz",)), "BSD-3",
            tuple(Remote(f"{_MLEARN}/{el}/{split}.json", f"sha256:{sha}", f"{el}_{split}.json")
                  for (el, split), sha in _MLEARN_FILES.items()), _mlearn),
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
                     "source": d.source, "licence": d.licence, "downloadable": bool(d.remotes)})
    return rows


def _fetch(remote: Remote, target: Path, *, progress: bool, timeout: float) -> str:
    """Stream ``remote`` to ``target``; returns the checksum (of the pinned kind) of what arrived."""
    url = remote.url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(target, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            digest = _Digest(remote.checksum.partition(":")[0], total)
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {remote.name}",
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


def _install(built: Path, dest: Path) -> list[Path]:
    """Move each top-level entry of ``built`` into ``dest``, replacing what was there."""
    placed = []
    for entry in built.iterdir():
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


def _remotes(d: DataSet, url: str | None, sha256: str | None) -> tuple[Remote, ...]:
    """The catalogue's remotes, or the one of a single-file data set with ``url``/``sha256`` overridden."""
    if not d.remotes:
        raise ValueError(f"no download is known for {d.name!r}; get it from {d.source}")
    if url is None and sha256 is None:
        return d.remotes
    if len(d.remotes) != 1:
        raise ValueError(f"{d.name!r} has {len(d.remotes)} files; --url/--sha256 apply to single-file data sets")
    r = d.remotes[0]
    return (Remote(url or r.url, f"sha256:{sha256.lower()}" if sha256 else r.checksum, r.name),)


def download(name: str, dest: str | Path | None = None, url: str | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch data set ``name``'s public originals into ``dest`` (default: the cache's ``data/``),
    verify each file's pinned checksum, convert them into the readers' layout; returns ``dest / name``.

    ``url`` and ``sha256`` override the catalogue for a single-file data set (a mirror, or a
    checksum you verified yourself). Raises ``ValueError`` (no download known, checksum mismatch,
    unexpected content) or ``ConnectionError`` (offline, interrupted); in every case nothing is
    installed.
    """
    d = get_dataset(name)
    remotes = _remotes(d, url, sha256)
    dest = Path(dest).expanduser() if dest is not None else cache_root() / "data"
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{name}.download."))
    try:
        files, built = staging / "files", staging / "built"
        files.mkdir()
        built.mkdir()
        for r in remotes:
            got = _fetch(r, files / r.name, progress=progress, timeout=timeout)
            if got != r.checksum.lower():
                raise ValueError(f"checksum mismatch for {r.url}: {got}, expected {r.checksum}; "
                                 f"nothing was installed")
        d.convert(files, built)
        if not d.present_in(built):
            raise ValueError(f"the files of {name!r} converted to {sorted(p.name for p in built.iterdir())}, "
                             f"not the readers' layout ({[alts[0] for alts in d.files]})")
        placed = _install(built, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("installed %s into %s (%s)", name, dest, ", ".join(p.name for p in placed))
    return dest / name
