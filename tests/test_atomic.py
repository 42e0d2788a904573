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


def test_to_jsonable_one_rule_for_non_finite_values():
    import numpy as np

    from deepquant.atomic import to_jsonable

    obj = {1: np.array([1.0, np.inf]), "t": (np.float64(-np.inf), float("nan"), np.int64(3))}
    out = to_jsonable(obj)
    # strict JSON: NaN, +inf and -inf all become null, numpy values plain Python
    assert out == {"1": [1.0, None], "t": [None, None, 3]}
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_print_json_and_reports_share_the_sanitizer(capsys):
    from deepquant.cli.output import print_json

    print_json({"upper": float("inf"), "lower": -float("inf"), "gap": float("nan")})
    assert json.loads(capsys.readouterr().out) == {"upper": None, "lower": None, "gap": None}


def test_ensure_writable_names_the_path_and_leaves_nothing(tmp_path):
    from deepquant.atomic import ensure_writable

    blocker = write_text(tmp_path / "file.txt", "x")
    with pytest.raises(ValueError, match=r"cannot write the file '.*file\.txt/sub/out\.npz': "
                                         r"'.*file\.txt' is a regular file, not a folder"):
        ensure_writable(blocker / "sub" / "out.npz")
    with pytest.raises(ValueError, match=r"cannot write the folder '.*file\.txt': it exists and "
                                         r"is not a folder"):
        ensure_writable(blocker, folder=True)
    with pytest.raises(ValueError, match=r"cannot write the file '.*': it is a folder"):
        ensure_writable(tmp_path)
    # a missing chain of folders below a writable one is fine (atomic_path creates them)
    assert ensure_writable(tmp_path / "a" / "b" / "c.json") == tmp_path / "a" / "b" / "c.json"
    assert ensure_writable(tmp_path / "figs", folder=True) == tmp_path / "figs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_ensure_writable_read_only_folder(tmp_path):
    from deepquant.atomic import ensure_writable

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"the folder '.*ro' is not writable"):
            ensure_writable(ro / "x" / "m.npz")
    finally:
        ro.chmod(0o700)
