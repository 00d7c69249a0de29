"""Atomic file writes: a crash or an exception never leaves a half-written file behind.

The content goes to a temporary file in the target's folder, is flushed and fsynced, gets the
permissions an ordinary ``open(path, "w")`` would give (``tempfile.mkstemp`` creates files readable
by their owner only, which would make shared checkpoints and results unreadable to a group), and
then replaces the target with ``os.replace``, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """For writers that need a file *name* (e.g. ASE's ``TrajectoryWriter``): ``with atomic_path(p)
    as tmp: write(tmp)``; then ``tmp`` replaces ``p``. On an exception ``p`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path, "w") as fh: ...`` writes ``path`` all at once or not at all.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (binary). Missing parent folders are created. The data
    are fsynced before the rename, so a power cut cannot leave the new name on empty content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
