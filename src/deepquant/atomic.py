"""Atomic file writes: write to a temporary file in the same folder, then ``os.replace``.

A reader never sees a half-written file, and an interrupted job leaves either the old file or the
new one. Every writer in the package goes through these helpers. ``ensure_writable`` checks an
output location before a long job starts, so a bad path fails at once with one line naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_path", "ensure_writable", "to_jsonable", "write_bytes", "write_text",
           "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` atomically.

    Parameters
    ----------
    path : path-like
        Final destination. Its parent folder is created if missing.
    suffix : str, optional
        Suffix of the temporary file (some writers, e.g. ``numpy.savez``, insist on one).
        Defaults to the suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: numpy arrays and scalars to lists and Python numbers,
    tuples to lists, dict keys to strings, results through their ``to_dict()``, other
    dataclass instances through their fields, and every non-finite float (NaN, +inf, -inf) to
    ``None`` (JSON ``null``; strict JSON has no infinities). The one sanitizer of the package,
    used for ``--json`` output, for reports and by every result's ``to_dict``."""
    if callable(getattr(obj, "to_dict", None)) and not isinstance(obj, type):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path.

    Floats are written as Python's ``json`` does (NaN and infinities as the ``NaN`` and
    ``Infinity`` literals, which ``json.load`` reads back), so state files round-trip exactly;
    pass ``to_jsonable(obj)`` for strict JSON."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=float) + "\n")


def ensure_writable(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Check that ``path`` can be written (as a file, or as a folder when ``folder``) BEFORE the
    work that produces it; return it as a ``Path``.

    The deepest existing ancestor must be a folder in which a file can really be created (a
    temporary file is made and removed there: permission bits alone mislead, e.g. for root or
    on read-only mounts); missing folders below it are created later by ``atomic_path``. A file
    path must not be an existing folder, a folder path not an existing file. Nothing is left
    behind.

    Raises
    ------
    ValueError
        One line naming the path and the reason (a parent is a regular file, the folder is not
        writable, the path is a folder or a file of the wrong kind).
    """
    p = Path(path)
    kind = "folder" if folder else "file"
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"cannot write the {kind} {str(p)!r}: it exists and is not a folder")
    if not folder and p.is_dir():
        raise ValueError(f"cannot write the {kind} {str(p)!r}: it is a folder")
    base = (p if folder else p.parent).absolute()
    probe = base
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"cannot write the {kind} {str(p)!r}: {str(probe)!r} is a regular file, "
                         "not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".deepquant-write-check.", dir=probe)
    except OSError as exc:
        raise ValueError(f"cannot write the {kind} {str(p)!r}: the folder {str(probe)!r} is not "
                         f"writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)
    return p
