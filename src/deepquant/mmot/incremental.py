"""Incremental updates of a batched entropic MMOT solution (seed 001 Algorithm 2, DESIGN §2.2).

With a pairwise (or zero) cost and a Markov reference, the N periods are independent one-period
problems. Inserting a date therefore changes at most two periods (the one that gets split, or a
new last/first period), and changing one marginal changes at most the two periods that touch it:
only those are solved, as one batch, and every other period's kernel and potentials are copied.
This is exact (no joint refinement is needed, unlike the seed's Algorithm 2, whose multipliers
couple periods); the tests check it against a full solve.

Warm starts: an updated marginal re-solves its periods from their previous potentials (Newton
only, no Sinkhorn sweep); a new period starts cold (one Sinkhorn sweep, then Newton).
"""

from __future__ import annotations

import numbers
import time
import warnings
from typing import Any

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot.entropic import EntropicResult, measure, pairwise_cost, solve_entropic
from deepquant.results import ConvergenceWarning

__all__ = ["insert_date", "update_date", "append_date"]


def _check_previous(previous: EntropicResult, marginals: Marginals, dropped: int | None) -> None:
    if not isinstance(previous, EntropicResult):
        raise TypeError(f"previous must be an EntropicResult, got {type(previous).__name__}")
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    if previous.grid.shape != marginals.grid.shape or not np.array_equal(previous.grid,
                                                                          marginals.grid):
        raise ValueError("marginals must live on the grid of the previous solution")
    w = marginals.weights
    if dropped is not None:
        w = np.delete(w, dropped, axis=0)
    if w.shape != previous.weights.shape:
        raise ValueError(
            f"marginals have {marginals.n_dates} dates; expected "
            f"{previous.weights.shape[0] + (1 if dropped is not None else 0)}"
        )


def _slice_option(value: Any, periods: list[int], marginals: Marginals, what: str) -> Any:
    """Cost / reference restricted to the given periods of the new chain."""
    if value is None or isinstance(value, str):
        return value
    if what == "cost":
        arr = pairwise_cost(marginals, value)
        return None if arr is None else arr[periods]
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (marginals.n_periods, marginals.size, marginals.size):
        from deepquant.mmot.entropic import reference_kernels

        reference_kernels(marginals, value)  # raises with the standard message
    return arr[periods]


def _resolve(previous: EntropicResult, marginals: Marginals, eps: float | None, cost: Any,
             reference: Any, reuse: dict[int, int], warm: dict[int, int], options: dict
             ) -> EntropicResult:
    """Assemble the new chain: copy periods in ``reuse`` (new -> old), solve the others."""
    t0 = time.perf_counter()
    eps = previous.eps if eps is None else float(eps)
    n, m = marginals.n_periods, marginals.size
    todo = [t for t in range(n) if t not in reuse]
    kernels = np.empty((n, m, m))
    u = np.zeros((n, m))
    v = np.zeros((n, m))
    h = np.zeros((n, m))
    pinned = np.zeros((n, m), dtype=bool)
    for t, s in reuse.items():
        kernels[t] = previous.kernels[s]
        u[t], v[t], h[t] = previous.u[s], previous.v[s], previous.h[s]
        if previous.pinned is not None:
            pinned[t] = previous.pinned[s]
    nit, sweeps, history, status_ok, msg = 0, 0, [], True, "no period to solve"
    # solve the new/changed periods in runs of consecutive periods (one batch per run)
    runs: list[list[int]] = []
    for t in todo:
        if runs and runs[-1][-1] == t - 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    for run in runs:
        dates = list(range(run[0], run[-1] + 2))
        sub = marginals.select(dates)
        c = _slice_option(cost, run, marginals, "cost")
        ref = _slice_option(reference, run, marginals, "reference")
        opts = dict(options)
        if all(t in warm for t in run):
            vv = np.stack([previous.v[warm[t]] for t in run])
            hh = np.stack([previous.h[warm[t]] for t in run])
            opts.setdefault("sinkhorn_sweeps", 0)
            opts.setdefault("eps_schedule", [eps])
            opts["warm_start"] = (None, vv, hh)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = solve_entropic(sub, eps, c, ref, **opts)
        kernels[run] = res.kernels
        u[run], v[run], h[run] = res.u, res.v, res.h
        pinned[run] = res.pinned
        nit = max(nit, res.nit)
        sweeps = max(sweeps, res.sweeps)
        history.extend(res.history)
        status_ok &= res.success
        msg = res.message
    errs, drifts = measure(marginals.grid, marginals.weights, kernels)
    tol = float(options.get("tol", 1e-9))
    success = bool(np.all(errs <= tol) and np.all(drifts <= tol))
    if not success:
        msg = (f"incremental update above tol={tol:g}: marginal error {errs.max():.2e}, drift "
               f"{drifts.max():.2e} ({msg})")
        if options.get("warn", True):
            warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    else:
        msg = (f"converged: solved period(s) {todo}, reused {len(reuse)}; marginal error "
               f"{errs.max():.2e}, drift {drifts.max():.2e}")
    # objectives: recompute on the whole chain
    from deepquant.mmot._plans import _objectives

    cost_arr = pairwise_cost(marginals, cost)
    tc, ent, dual = _objectives(marginals.grid, marginals.weights, kernels, u, v, h, cost_arr)
    return EntropicResult(
        u=u, v=v, h=h, kernels=kernels, grid=marginals.grid, weights=marginals.weights, eps=eps,
        nit=nit, sweeps=sweeps, marginal_error=float(errs.max()), drift=float(drifts.max()),
        marginal_errors=errs, drifts=drifts, success=success,
        status="converged" if success else "not_converged",
        message=msg, seconds=time.perf_counter() - t0, history=history, transport_cost=tc,
        dual_value=dual, entropic_objective=ent, pinned=pinned,
    )


def _check_date(date: Any, n_dates: int) -> int:
    """``date`` as an index in [0, n_dates); a ``ValueError`` for a float, a bool or NaN (an
    ``int()`` would read 1.5 as 1)."""
    if isinstance(date, bool) or not isinstance(date, numbers.Integral):
        raise ValueError(f"date must be an integer, got {date!r}")
    if not 0 <= date < n_dates:
        raise ValueError(f"date {date} out of range for {n_dates} dates")
    return int(date)


def insert_date(previous: EntropicResult, marginals: Marginals, date: int, *,
                eps: float | None = None, cost: Any = None, reference: Any = "product",
                **options) -> EntropicResult:
    """Solution for ``marginals`` = the previous marginals with a new row at index ``date``.

    Periods that do not touch the new date are copied from ``previous``; the one or two periods
    that do are solved (cold start). ``cost``/``reference`` describe the NEW chain (N+1 periods);
    ``eps`` defaults to the previous one; other options go to ``solve_entropic``.
    """
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    date = _check_date(date, marginals.n_dates)
    _check_previous(previous, marginals, date)
    if not np.array_equal(np.delete(marginals.weights, date, axis=0), previous.weights):
        raise ValueError(
            f"marginals without date {date} differ from the previous solution's marginals"
        )
    n = marginals.n_periods
    reuse = {}
    for t in range(n):
        if t + 1 < date:
            reuse[t] = t                  # periods before the new date keep their index
        elif t > date:
            reuse[t] = t - 1              # periods after it shift by one
    return _resolve(previous, marginals, eps, cost, reference, reuse, {}, options)


def append_date(previous: EntropicResult, marginals: Marginals, **kwargs) -> EntropicResult:
    """``insert_date`` at the end: one new period, every previous period reused."""
    return insert_date(previous, marginals, marginals.n_dates - 1, **kwargs)


def update_date(previous: EntropicResult, marginals: Marginals, date: int, *,
                eps: float | None = None, cost: Any = None, reference: Any = "product",
                **options) -> EntropicResult:
    """Solution after the marginal at ``date`` changed (e.g. new quotes for one expiry).

    The (at most two) periods that touch ``date`` are re-solved, warm-started from their previous
    potentials (Newton only); the others are copied.
    """
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    date = _check_date(date, marginals.n_dates)
    _check_previous(previous, marginals, None)
    other = np.delete(np.arange(marginals.n_dates), date)
    if not np.array_equal(marginals.weights[other], previous.weights[other]):
        raise ValueError(f"marginals other than date {date} differ from the previous solution's")
    n = marginals.n_periods
    changed = {t for t in (date - 1, date) if 0 <= t < n}
    reuse = {t: t for t in range(n) if t not in changed}
    warm = {t: t for t in changed}
    return _resolve(previous, marginals, eps, cost, reference, reuse, warm, options)
