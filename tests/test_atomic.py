"""Atomic writes: all-or-nothing, usual permissions."""

from __future__ import annotations

import json
import os

import pytest

from deepquant.atomic import atomic_path, write_json, write_text


def test_write_and_permissions(tmp_path):
    p = write_json(tmp_path / "sub" / "a.json", {"x": 1.5})
    assert json.loads(p.read_text()) == {"x": 1.5}
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    target = write_text(tmp_path / "b.txt", "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["b.txt"]
