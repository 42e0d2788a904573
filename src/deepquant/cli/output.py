"""Shared output helpers for the CLI: rich console, JSON printing, tables and progress bars."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
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

from deepquant.market.synthetic import TAIL_TOL

__all__ = ["ENTROPIC_TOL", "FINITE", "FiniteFloat", "LEVEL", "PLAIN_PROGRESS_SECONDS", "activity", "MAX_GRID_SIZE", "MAX_RATE", "RATE", "FIGURE_FORMATS", "check_figure", "check_memory", "check_workers", "check_writable",
           "console", "err_console",
           "print_json", "table", "progress", "fail", "fail_option", "parse_list", "PAYOFF_OPTIONS",
           "reported_failures", "tail_warnings"]

MAX_GRID_SIZE = 5000
"""Largest ``--grid-size`` a command takes: one period's dense (M, M) arrays then hold 200 MB;
far beyond it a typo (an extra zero or three) would run for hours or exhaust the memory."""

PIPED_WIDTH = 160
"""Width of the console's tables when stdout is not a terminal (a file, a pipe, a CI log):
rich would assume 80 columns there and cut the digits of wide tables (the demo's bounds against
the grid read "0.029..."); a terminal keeps its own width."""

console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS")
                  else PIPED_WIDTH)
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


PLAIN_PROGRESS_SECONDS = 30.0
"""Seconds between two plain progress lines on a stderr that is not a terminal (a CI log,
``2> log``), where rich draws neither bars nor spinners until the job ends."""


def _elapsed(seconds: float) -> str:
    """``seconds`` as ``1:02:03`` (h:mm:ss), like rich's elapsed column."""
    m, sec = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{sec:02d}"


class _LoggedProgress(Progress):
    """rich's ``Progress`` that also prints one plain line per task when it starts, and on an
    update at most every ``PLAIN_PROGRESS_SECONDS`` ("instances: 40/100 (40%), 0:01:02
    elapsed"): on a stderr that is not a terminal, rich shows the bar only when it stops."""

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._logged: dict[Any, float] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any):
        task_id = super().add_task(description, *args, **kwargs)
        self._log(task_id, force=True)
        return task_id

    def update(self, task_id: Any, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        self._log(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: Any, *, force: bool = False) -> None:
        import time

        now = time.monotonic()
        if not force and now - self._logged.get(task_id, now) < PLAIN_PROGRESS_SECONDS:
            return
        self._logged[task_id] = now
        task = self._tasks[task_id]
        done = f"{task.completed:g}" + (f"/{task.total:g} ({task.percentage:.0f}%)"
                                         if task.total else " done")
        self.console.print(f"{task.description}: {done}, {_elapsed(task.elapsed or 0.0)} "
                           "elapsed", highlight=False, markup=False)


def progress(*, disable: bool = False) -> Progress:
    """A rich progress bar on stderr (so ``--json`` output on stdout stays clean); on a stderr
    that is not a terminal, plain lines every ``PLAIN_PROGRESS_SECONDS`` as well."""
    kind = Progress if disable or err_console.is_terminal else _LoggedProgress
    return kind(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                disable=disable, transient=False)


class _Heartbeat:
    """The plain counterpart of a rich status spinner: the message at once, each new message
    of ``update`` at once, and "MESSAGE: still running, h:mm:ss elapsed" every
    ``PLAIN_PROGRESS_SECONDS`` from a daemon thread until ``stop``."""

    def __init__(self, message: str) -> None:
        import threading
        import time

        self._message, self._start = message, time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def start(self) -> None:
        err_console.print(self._message, highlight=False, markup=False)
        self._thread.start()

    def update(self, message: str) -> None:
        self._message = message
        err_console.print(message, highlight=False, markup=False)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        import time

        while not self._done.wait(PLAIN_PROGRESS_SECONDS):
            err_console.print(f"{self._message}: still running, "
                              f"{_elapsed(time.monotonic() - self._start)} elapsed",
                              highlight=False, markup=False)


@contextlib.contextmanager
def activity(message: str, *, disable: bool = False) -> Iterator[Any]:
    """A status line on stderr while one long call runs: rich's spinner on a terminal, else
    the plain lines of a heartbeat (the message, then one every ``PLAIN_PROGRESS_SECONDS``).
    Yields an object whose ``update(message)`` changes the message; nothing when ``disable``
    (``--json``)."""
    if disable:
        yield type("_Quiet", (), {"update": staticmethod(lambda message: None)})()
        return
    status = (err_console.status(message, spinner="dots") if err_console.is_terminal
              else _Heartbeat(message))
    status.start()
    try:
        yield status
    finally:
        status.stop()


def fail(message: str) -> None:
    """Abort the command with a clear message (exit code 2)."""
    raise click.UsageError(message)


def given(name: str) -> bool:
    """Whether the running command's option ``name`` (its Python name) was set on the command
    line (or by an environment variable), not left at its default."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def check_workers(backend: str) -> None:
    """Fail when ``--workers`` was given with a ``--backend`` that does not read it: only the
    local process pool has a size (``deepquant.parallel.get_executor``; serial runs one task at
    a time, Ray takes the cluster's CPUs)."""
    if given("workers") and backend != "local":
        fail(f"--workers sizes the local process pool (--backend local); --backend {backend} "
             "would ignore it")


def refuse_unused(method: str, options: dict[str, tuple[str, ...]]) -> None:
    """Fail when an option given on the command line is not used by ``method``.

    ``options`` maps each option's Python name to the methods that use it."""
    params = click.get_current_context().params
    for name, users in options.items():
        if method not in users and given(name):
            flag = "--" + name.replace("_", "-")
            fail(f"{flag} {params[name]} is not used by --method {method} (only by --method "
                 f"{' / '.join(users)})")


def parse_list(text: str, option: str, convert: Callable[[str], Any] = str, *,
               what: str = "values", noun: str = "value") -> list[Any]:
    """The comma-separated items of ``option``'s value ``text``, each passed through
    ``convert`` (e.g. ``float``, ``int``); a usage error naming the option and the value for no
    item at all, an empty item (``1,,2``, a trailing comma: never dropped silently), an item
    that ``convert`` rejects, or a NaN or infinite number.

    ``what`` names the expected items in the error (``"year fractions like 0.25,0.5,1"``),
    ``noun`` one of them (``"date"``)."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        fail(f"{option} must list at least one {noun}, got {text!r}")
    if not all(items):
        fail(f"{option} has an empty item (as in '1,,2' or a trailing comma), got {text!r}")
    out = []
    for item in items:
        try:
            value = convert(item)
        except ValueError:
            fail(f"{option} must be comma-separated {what}, got {text!r}")
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"{option} must be finite numbers, got {item!r} in {text!r}")
        out.append(value)
    return out


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


FIGURE_FORMATS = ("png", "pdf", "svg")
"""Formats a ``--plot`` figure is written in, chosen by the path's suffix (matplotlib's Agg
canvas writes each of them; it refuses others, e.g. ``.xyz``, only when it saves)."""


def check_figure(path: Any, option: str) -> str | None:
    """The format of the figure file ``path`` (its suffix, lower case), or None for no path.

    Fails at once (exit code 2, one line naming ``option`` and the path) when the suffix is not
    one of ``FIGURE_FORMATS`` or the path cannot be written (``check_writable``); call it
    before the work, so that a bad name neither wastes a run nor leaves a file of another
    format under it."""
    if path is None:
        return None
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        ends = ", ".join(f".{f}" for f in FIGURE_FORMATS[:-1]) + f" or .{FIGURE_FORMATS[-1]}"
        fail(f"{option} must end in {ends} (the suffix picks the figure's format), got "
             f"{os.fspath(path)!r}")
    check_writable(path, option)
    return fmt


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (``os.sysconf``), or None where the system does
    not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(nbytes: float, option: str, value: Any, rule: str) -> None:
    """Fail at once (exit code 2, one line naming ``option`` and ``value``) when a job would hold
    ``nbytes`` in memory, more than this machine has (``physical_memory``): it could only end in
    swapping or a ``MemoryError`` after the work. ``rule`` says how ``nbytes`` is counted."""
    total = physical_memory()
    if total is not None and nbytes > total:
        fail(f"{option} {value} would hold {_bytes(nbytes)} ({rule}), more than this "
             f"machine's {_bytes(total)} of memory; split the job or lower {option}")


def _bytes(n: float) -> str:
    """``n`` bytes in decimal units, 3 significant digits ("26.4 TB")."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} bytes"


class FiniteFloat(click.FloatRange):
    """A float option within optional bounds that, unlike ``click.FloatRange``, rejects NaN
    (every comparison with NaN is false, so a range alone lets it through) and infinities
    unless ``allow_inf``.

    Parameters
    ----------
    min, max : float, optional
        Bounds, as for ``click.FloatRange``.
    min_open, max_open : bool
        Exclude the bound itself.
    allow_inf : bool
        Accept ``inf`` (within the bounds), e.g. for a time budget meaning "no limit".
    hint : str, optional
        Said after every refusal, e.g. the unit the option is read in.

    Notes
    -----
    The error is click's usage error (exit code 2) naming the option and the value, e.g.
    ``Invalid value for '--rtol': nan is not a finite number.``
    """

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False, *,
                 allow_inf: bool = False, hint: str | None = None) -> None:
        super().__init__(min, max, min_open=min_open, max_open=max_open)
        self.allow_inf = allow_inf
        self.hint = hint

    def fail(self, message: str, param: click.Parameter | None = None,
             ctx: click.Context | None = None):
        """Click's usage error, with ``hint`` (what the bounds mean) after the message."""
        super().fail(f"{message} {self.hint}" if self.hint else message, param, ctx)

    def _describe_range(self) -> str:
        """The bounds for ``--help``; nothing without bounds (click would print "x<=None")."""
        return "" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        """The float, or a usage error naming ``param`` and the value."""
        v = super().convert(value, param, ctx)
        if math.isnan(v) or (math.isinf(v) and not self.allow_inf):
            self.fail(f"{v!r} is not a finite number.", param, ctx)
        return v


FINITE = FiniteFloat()
"""The type of a float option whose range the library checks (and ``fail_option`` names): a
finite number. Python's ``float`` (click's ``type=float``) reads "nan", "inf" and "-inf" as
numbers, which some checks let through (a NaN fails every comparison)."""

LEVEL = FiniteFloat(0.0, min_open=True)
"""The type of every ``--strike`` and ``--barrier``: a finite level > 0. The underlying is
positive (forward moneyness on the MMOT grids, a price for ``american``), so at or below 0 a
call is the linear forward, a put is worth 0, an up barrier is crossed at once and a down
barrier never, and a forward start's relative strike k makes X_t2 - k X_t1 linear too: a
value there is a typo (a sign, a percent read as a level), not a question. The payoff classes
of the library take any real level."""

ENTROPIC_TOL = FiniteFloat(0, 2, min_open=True, max_open=True)
"""The type of the entropic solver's ``--tol`` (``solve``, ``generate``), the target of the L1
marginal error and of the drift: two laws are at most 2 apart in L1, so at 2 or above the
solver's start meets it (``solve --tol 1e308`` stopped at once, "converged" with drift 0.44)."""

MAX_RATE = 1.0
"""Largest ``|--rate|`` of ``american``: rates are decimals, continuously compounded, so 1.0 is
100% a year (172% compounded annually, beyond the policy rate of any currency in recent
decades); ``--rate 5`` meaning 5% would price a rate of 500%. The models take any finite rate;
the synthetic chain generator (``deepquant chain``) has its own narrower range (-0.5, 0.5)."""

RATE = FiniteFloat(-MAX_RATE, MAX_RATE,
                   hint=f"Rates are decimals, continuously compounded: 0.05 = 5% (|rate| <= "
                        f"{MAX_RATE:g}).")
"""The type of ``--rate`` where the library takes any rate (see ``MAX_RATE``)."""


def tail_warnings(grid: np.ndarray, times: Sequence[float], bounds: Sequence[float],
                  advice: str) -> list[str]:
    """One line per date whose tail bound (``deepquant.market.synthetic.tail_bounds``) exceeds
    ``deepquant.market.synthetic.TAIL_TOL`` (a call price in forward-moneyness units): the grid
    cannot hold that law, and its call prices moved by up to it."""
    return [f"the grid [{grid[0]:.4g}, {grid[-1]:.4g}] cannot hold the law's tails at "
            f"t = {t:g}: moving them inside changes call prices by up to {b:.3g} (more than "
            f"{TAIL_TOL:g}); {advice}" for t, b in zip(times, bounds) if b > TAIL_TOL]


PAYOFF_OPTIONS = {"strike": "--strike", "barrier": "--barrier"}
"""Payoff parameters and the options of ``bounds`` and ``quote-bounds`` that set them, for
``fail_option`` (``Payoff.on_grid`` starts its error with the level it blames)."""


def fail_option(exc: Exception, options: dict[str, str]) -> None:
    """Abort with ``exc``'s message (exit code 2), prefixed by the command-line option when the
    message starts with the name of a library parameter listed in ``options`` (parameter name
    -> option, e.g. ``{"H": "--hurst"}``), so that the line names the option the user typed."""
    message = str(exc)
    option = options.get(message.split(" ", 1)[0])
    fail(f"{option}: {message}" if option else message)
