"""Atomic writes (md_protocols.files): all or nothing, no stray temporary files, ordinary permissions."""
from __future__ import annotations

import json
import stat

import pytest

from md_protocols.report import write_json_atomic
from md_protocols.files import atomic_path, atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_all_at_once_with_ordinary_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open(path, "w") gives under this umask
    target = tmp_path / "sub" / "out.json"
    with atomic_write(target, "w") as fh:
        fh.write('{"a": 1}')
        assert not target.exists()  # nothing visible before the block ends
    assert json.loads(target.read_text()) == {"a": 1}
    assert _mode(target) == _mode(plain)  # mkstemp's 0600 is not kept
    write_json_atomic(tmp_path / "r.json", {"b": 2})
    assert _mode(tmp_path / "r.json") == _mode(plain)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_write(target, "wb") as fh:
            fh.write(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    with atomic_path(target) as tmp:
        open(tmp, "wb").write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(target, "a"):
            pass


def test_saved_checkpoints_are_readable_like_any_file(tiny_model_path, tmp_path):
    from ttcalc import load_model

    plain = tmp_path / "plain"
    plain.write_text("x")
    path = load_model(tiny_model_path).save(tmp_path / "m.pt")
    assert _mode(path) == _mode(plain)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "plain"]
