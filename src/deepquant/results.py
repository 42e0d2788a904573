"""The result protocol every engine follows, and the one warning for a solve that falls short.

Every solve returns one frozen dataclass (never a tuple whose shape depends on a flag) with, besides
its domain fields (``lower``, ``upper``, ``value``, ``stderr``, ``kernels``, ...):

``success`` : bool
    The solve reached what was asked of it (a tolerance, an optimal LP, a precision target).
    Where nothing was asked (a Monte Carlo run with a fixed budget, a backtest), it is True.
``status`` : str
    A short machine-readable code: lower case, no spaces. One type everywhere (a string, not an
    integer: the bounds and Monte Carlo results already spoke in words, and a word says which
    engine's condition applied). The codes in use:

    * ``"optimal"`` an LP or convex program solved to optimality (``"optimal_inaccurate"``,
      ``"infeasible"``, ... as the convex solver reports them); ``"failed"`` an LP side failed;
    * one side of LP bounds (``BoundSide``) speaks HiGHS's words: ``"optimal"``,
      ``"iteration_limit"``, ``"infeasible"``, ``"unbounded"``, ``"numerical"`` (scipy's
      ``linprog`` status 0..4; the integer itself in ``info["highs_status"]``), or
      ``"not_requested"`` for a side that was not asked for;
    * ``"certified"``, ``"certified-wide"`` certified bounds (or one side of them) within / above
      their gap target;
    * ``"converged"``, ``"not_converged"`` an iterative solver against its tolerance (the
      martingale projection: every row multiplier solved to ``tol``); the entropic solver says
      why it fell short: ``"iteration_limit"`` (``max_iter`` reached) or
      ``"line_search_failed"`` (a Newton step found no ascent: numerical breakdown);
    * ``"tol"``, ``"patience"``, ``"max_batches"`` why adaptive Monte Carlo stopped;
      ``"no_target"``, ``"tol_not_met"`` a precision target that was absent or missed;
    * ``"max_steps"``, ``"early_stopping"``, ``"time_budget"`` why training stopped;
    * ``"done"`` a computation with no stopping criterion; ``"runs_failed"``,
      ``"classical_failed"`` an aggregate whose parts did not all succeed.

``message`` : str
    One line a person can read (what stopped the solve and the measured residuals).
``nit`` : int
    Iterations, where the method iterates (Newton steps, Monte Carlo batches, CG steps).
``seconds`` : float
    Total wall time. A per-phase breakdown, where there is one, is ``timings`` (a dict).
``to_dict()``
    JSON-safe scalars and small arrays, through ``deepquant.atomic.to_jsonable`` (the package's
    one sanitizer: NaN and infinities become ``null``). Large arrays (paths, plans) stay out.

When a solve returns ``success=False`` it also warns with ``ConvergenceWarning`` (callers that
report the failure themselves, such as the command line, silence it).

``ConvergenceWarning`` is one class for the whole package, defined here; the engines import it
(``deepquant.mmot.entropic.ConvergenceWarning`` and the other public names are this class).
Filter or catch ``deepquant.results.ConvergenceWarning``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

__all__ = ["ConvergenceWarning", "Result", "check_callback", "check_count", "result_dict", "total_seconds",
           "warn_failure"]

PROTOCOL_FIELDS = ("success", "status", "message", "seconds")


class ConvergenceWarning(UserWarning):
    """A solve stopped before it reached what was asked of it (``success=False``)."""


@runtime_checkable
class Result(Protocol):
    """What every result offers (see the module docstring)."""

    @property
    def success(self) -> bool: ...

    @property
    def status(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def seconds(self) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


def warn_failure(result: Any, where: str, *, stacklevel: int = 2) -> None:
    """Warn with ``ConvergenceWarning`` (``"{where}: {result.message}"``) when
    ``result.success`` is False; ``stacklevel`` counts from the caller (2: the caller's caller).
    """
    if not result.success:
        warnings.warn(f"{where}: {result.message}", ConvergenceWarning,
                      stacklevel=stacklevel + 1)


def check_callback(fn: Any, name: str) -> None:
    """A ``TypeError`` naming ``name`` unless ``fn`` is callable or None (a progress callback
    is checked before the work, not when it is first called after a run)."""
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")


def check_count(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1 (None kept with ``allow_none``); a ``ValueError`` naming
    ``name`` for a bool, a float, a string or a count below 1."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def total_seconds(timings: dict[str, float]) -> float:
    """Sum of the finite per-phase seconds (NaN when none is finite)."""
    vals = [float(v) for v in timings.values() if v is not None and math.isfinite(float(v))]
    return float(sum(vals)) if vals else float("nan")


def result_dict(result: Any, *, skip: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """``result``'s dataclass fields (less ``skip``) plus the protocol attributes (``success``,
    ``status``, ``message``, ``seconds``, and ``nit`` where it exists) and ``extra``, as plain
    JSON values (``deepquant.atomic.to_jsonable``; nested results through their ``to_dict``).
    """
    from deepquant.atomic import to_jsonable

    skip = set(skip)
    out = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
           if f.name not in skip}
    for name in (*PROTOCOL_FIELDS, "nit"):
        if name not in skip and name not in out and hasattr(result, name):
            out[name] = getattr(result, name)
    out.update(extra)
    return to_jsonable(out)
