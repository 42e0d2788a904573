"""Shared output helpers for the CLI: rich console, JSON printing, tables and progress bars."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["check_writable", "console", "err_console", "print_json", "table", "progress", "fail",
           "reported_failures"]

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (``deepquant.atomic.to_jsonable``: numpy values
    converted, NaN and infinities as null; nothing else printed there)."""
    from deepquant.atomic import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def reported_failures() -> Iterator[None]:
    """Silence ``ConvergenceWarning`` inside: the command reports ``success``, ``status`` and
    ``message`` of the result itself (in the table or the JSON), not as a Python warning."""
    from deepquant.results import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table; floats are shown with 6 significant digits."""
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c not in ("name", "payoff", "model") else "left")
    for row in rows:
        t.add_row(*[f"{v:.6g}" if isinstance(v, float | np.floating) else str(v) for v in row])
    return t


def progress(*, disable: bool = False) -> Progress:
    """A rich progress bar on stderr (so ``--json`` output on stdout stays clean)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    disable=disable, transient=False)


def fail(message: str) -> None:
    """Abort the command with a clear message (exit code 2)."""
    raise click.UsageError(message)


def check_writable(path: Any, option: str, *, folder: bool = False) -> None:
    """Fail at once (exit code 2, one line naming ``option`` and the path) when ``path`` cannot
    be written as a file (or a folder); call it before the work that produces the output.
    ``None`` is skipped. See ``deepquant.atomic.ensure_writable``."""
    from deepquant.atomic import ensure_writable

    if path is None:
        return
    try:
        ensure_writable(path, folder=folder)
    except ValueError as exc:
        fail(f"{option}: {exc}")
