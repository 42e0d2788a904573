"""Batched entropic martingale optimal transport for pairwise or zero costs (DESIGN §2.1–2.2).

For a Markov reference and a cost that is a sum of terms c_t(x_t, x_{t+1}) (or zero), the entropic
multi-period MMOT splits into N independent one-period problems (gluing lemma), one per period
t = 0..N-1 with row law mu = marginals[t] and column law nu = marginals[t+1]:

    minimise   <c_t, pi> + eps KL(pi | R_t),        R_t(x, y) = mu(x) q_t(y | x),
    over       pi >= 0 with row sums mu, column sums nu and sum_y pi(x, y)(y - x) = 0.

Lagrangian and signs (our own derivation; the seed's signs disagree with each other). With
multipliers u(x) (rows), v(y) (columns) and h(x) (martingale), stationarity in pi gives the Gibbs
form

    pi(x, y) = R(x, y) exp((u(x) + v(y) + h(x)(y - x) - c(x, y)) / eps)

and the concave dual  D(u, v, h) = <u, mu> + <v, nu> - eps sum_{x,y} pi(x, y) + eps.
Its gradient is the constraint residual (mu - row sums, nu - column sums, -sum_y pi (y - x)).

Solver (``_newton``). We eliminate u exactly (closed form per row) and work with the scaled
potentials phi = v / eps, eta = h / eps: a damped Newton method on the concave semi-dual
F(phi, eta), one Schur complement in phi per step, started from a martingale-Sinkhorn sweep
(``_sinkhorn_sweeps``) or from given potentials (``warm_start``, ``newton_polish``); for a
non-zero cost the regularisation follows a decreasing eps schedule with warm starts
(eps-scaling). With c = 0 the plan does not depend on eps (phi, eta absorb it). Periods whose
measured residuals miss the tolerance are solved once more, at the final eps, from potentials
whose Gibbs rows are normal kernels with the period's variance increment (``_spread_start``);
the second result is kept where it meets the tolerance.

Irreducible components and edge rows (``_support``): rows at touching points of the call-price
curves are pinned to point masses and no mass crosses such a point.

Stopping uses measured residuals: the L1 error of both marginals of every plan and the drift
max_x |E[Y - X | X = x]| over rows with mass, never iterate changes.

The result's potentials are gauge-fixed: on the columns that carry Gibbs mass, v has zero mean and
zero slope under the column target (nu minus the mass of pinned rows); v = 0 on other columns;
u = h = 0 on rows without mass; pinned rows have h = 0 and u chosen so that the Gibbs formula
gives their diagonal entry (their other entries are zero, which no finite h reproduces).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from deepquant.market.marginals import Marginals, split_onto_grid
from deepquant.mmot._newton import _solve_batch, _spread_start
from deepquant.mmot._plans import _finish_chunk, _moments, _objectives, _repair_rows, measure
from deepquant.mmot._sinkhorn_sweeps import _sinkhorn_batch
from deepquant.mmot._support import (
    _check_eps,
    _prepare,
    pairwise_cost,
    reference_kernels,
    support_structure,
    touching_points,
)
from deepquant.mmot.projection import (
    ProjectionResult,
    SemiDual,
    martingale_projection,
    semi_dual,
)
from deepquant.mmot.result import EntropicResult
from deepquant.results import ConvergenceWarning, check_count, warn_failure

__all__ = [
    "ConvergenceWarning",  # deepquant.results' class, under the name its first user gave it
    "EntropicResult",
    "solve_entropic",
    "newton_polish",
    "martingale_projection",
    "ProjectionResult",
    "SemiDual",
    "semi_dual",
    "pairwise_cost",
    "reference_kernels",
    "touching_points",
    "support_structure",
    "measure",
]


_CONTROLLER: ThreadpoolController | None = None


def _blas_limit(threads: int | None):
    """Context manager that sets the BLAS thread count (DESIGN §7: 1 thread is often fastest)."""
    global _CONTROLLER
    if threads is None:
        import contextlib

        return contextlib.nullcontext()
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=int(threads), user_api="blas")


def _check_options(*, tol: Any, stage_tol: Any, touch_tol: Any, max_iter: Any, threads: Any,
                   chunk_entries: Any) -> None:
    """``solve_entropic``'s numeric options; a ``ValueError`` naming the option and the value
    (``int()`` would read 2.5 iterations as 2 and fail on NaN without naming it; a NaN
    ``touch_tol`` finds no touching point)."""
    def real(value) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and math.isfinite(value)

    def integer(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    for name, value in (("tol", tol), ("stage_tol", stage_tol)):
        if not (real(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not (real(touch_tol) and touch_tol >= 0):
        raise ValueError(f"touch_tol must be a finite number >= 0, got {touch_tol!r}")
    if not (integer(max_iter) and max_iter >= 0):
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    check_count(threads, "threads", allow_none=True)
    check_count(chunk_entries, "chunk_entries")


# ---------------------------------------------------------------------------- public API
def _warm_potentials(warm_start: Any, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(v, h) in cost units from an EntropicResult, a mapping or a (u, v, h) tuple."""
    if isinstance(warm_start, EntropicResult):
        v, h = warm_start.v, warm_start.h
    elif isinstance(warm_start, dict):
        v, h = warm_start["v"], warm_start["h"]
    elif isinstance(warm_start, Sequence) and len(warm_start) == 3:
        _, v, h = warm_start
    else:
        raise ValueError(
            "warm_start must be an EntropicResult, a dict with 'v' and 'h', or a (u, v, h) tuple"
        )
    v = np.array(v, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    if v.shape != (n, m) or h.shape != (n, m):
        raise ValueError(
            f"warm_start potentials must have shape (N, M) = {(n, m)}, got v {v.shape}, h {h.shape}"
        )
    v[~np.isfinite(v)] = 0.0
    h[~np.isfinite(h)] = 0.0
    return v, h


def _default_schedule(eps: float, cost: np.ndarray | None, maximize: bool,
                      ratio: float = 4.0) -> list[float]:
    """eps-scaling stages from 5% of the cost range down to ``eps``, dividing by ``ratio``."""
    if cost is None:
        return [eps]
    spread = float(np.ptp(cost)) if cost.size else 0.0
    start = max(eps, 0.05 * spread)
    sched = []
    e = start
    while e > eps * 1.0001:
        sched.append(e)
        e /= ratio
    sched.append(eps)
    return sched


_RETRY_RATIO = 1.5
"""eps-scaling ratio of the automatic retry after a failed line search with the default
schedule (rough costs, e.g. c/eps of order 50 with random signs, need the gentler path)."""


def solve_entropic(
    marginals: Marginals,
    eps: float,
    cost: Any = None,
    reference: Any = "product",
    *,
    tol: float = 1e-9,
    max_iter: int = 100,
    warm_start: Any = None,
    eps_schedule: Sequence[float] | None = None,
    sinkhorn_sweeps: int | None = None,
    stage_tol: float = 1e-6,
    maximize: bool = False,
    touch_tol: float = 1e-11,
    threads: int | None = 1,
    chunk_entries: int = 1_000_000,
    warn: bool = True,
    method: str = "newton",
    multiscale: bool | None = None,
) -> EntropicResult:
    """Solve the N one-period entropic martingale transport problems as one batch.

    Parameters
    ----------
    marginals : Marginals
        N+1 laws on a common grid of M points (convex order is validated by ``Marginals``).
    eps : float
        Entropic regularisation in cost units (moneyness^2-like for variance costs).
    cost : None, ndarray (N, M, M) or Payoff
        Pairwise cost c_t(x, y); ``None`` is zero; a payoff must implement ``pairwise``.
    reference : "product", "lognormal" or ndarray (N, M, M)
        Reference kernel q_t(y|x) (see ``reference_kernels``).
    tol : float
        Target of both measured residuals: L1 marginal error and drift.
    max_iter : int
        Newton iterations per eps stage.
    warm_start : EntropicResult, dict or (u, v, h), optional
        Potentials in cost units, shape (N, M) each; only v and h are used (u is eliminated).
    eps_schedule : sequence of float, optional
        Decreasing regularisations ending at ``eps`` (eps-scaling). Default: ``[eps]`` without a
        cost; with a cost, from 5% of the cost's range down to eps by factors of 4.
    sinkhorn_sweeps : int, optional
        Martingale-Sinkhorn sweeps before Newton (default 1 from a cold start, 0 with a warm start).
    stage_tol : float
        Residual target of the intermediate eps stages.
    maximize : bool
        Maximise <c, pi> (i.e. use the cost -c); ``transport_cost`` is reported for +c.
    touch_tol : float
        k is a touching point when C_nu(k) - C_mu(k) <= touch_tol * s(k), s(k) the round-off
        scale of the call (or put) sums at k (``touching_points``); rows there are pinned to
        point masses and no mass crosses k.
    threads : int or None
        BLAS threads inside the solve (``None``: leave as is). 1 is the fastest on 2 cores.
    chunk_entries : int
        Periods are solved in chunks of at most this many N*M*M entries (memory bound; the
        default, 1e6, keeps the work arrays of a chunk near the cache: 20% faster at M = 500
        than 8e6).
    warn : bool
        Emit ``ConvergenceWarning`` on failure.
    method : "newton" or "sinkhorn"
        ``"sinkhorn"`` runs the plain martingale-Sinkhorn baseline (seed 001 Algorithm 1) with
        ``max_iter`` sweeps per stage instead of Newton (for comparisons; see
        ``deepquant.mmot.sinkhorn``).
    multiscale : bool, optional
        Warm-start from the same problem on every other grid point (``coarse_marginals``),
        solved recursively to a loose tolerance, its potentials interpolated to this grid
        (``_multiscale_start``). Default (``None``): on for Newton from a cold start with zero
        cost, a named reference and at least ``MULTISCALE_MIN_POINTS`` grid points (it halves
        the fine Newton iterations; the answer is the same to ``tol``).

    Returns
    -------
    EntropicResult
    """
    t0 = time.perf_counter()
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    eps = _check_eps(eps)
    if marginals.n_dates < 2:
        raise ValueError("solve_entropic needs at least 2 dates (one period)")
    _check_options(tol=tol, stage_tol=stage_tol, touch_tol=touch_tol, max_iter=max_iter,
                   threads=threads, chunk_entries=chunk_entries)
    if method not in ("newton", "sinkhorn"):
        raise ValueError(f"method must be 'newton' or 'sinkhorn', got {method!r}")
    n, m = marginals.n_periods, marginals.size
    if not marginals.check_convex:
        marginals.require_convex_order(
            hint="no martingale plan exists (see Marginals.repair_convex_order)")
    cost_arr = pairwise_cost(marginals, cost)
    if cost_arr is not None and not np.any(cost_arr):
        cost_arr = None
    signed_cost = None if cost_arr is None else (-cost_arr if maximize else cost_arr)
    logq_raw = reference_kernels(marginals, reference)
    if eps_schedule is None:
        schedule = _default_schedule(eps, signed_cost, maximize)
    else:
        schedule = [_check_eps(e, "eps_schedule entries") for e in eps_schedule]
        if not schedule or abs(schedule[-1] - eps) > 1e-12 * eps:
            raise ValueError(f"eps_schedule must end at eps={eps!r}, got {list(eps_schedule)!r}")
        if any(b > a for a, b in zip(schedule, schedule[1:])):
            raise ValueError(f"eps_schedule must be non-increasing, got {list(eps_schedule)!r}")
    if multiscale is None:
        multiscale = (method == "newton" and warm_start is None and cost_arr is None
                      and isinstance(reference, str) and m >= MULTISCALE_MIN_POINTS)
    coarse_history: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    from_coarse = False
    if multiscale and warm_start is None and m >= 4:
        tc0 = time.perf_counter()
        warm_start = _multiscale_start(marginals, eps, reference, tol=tol, max_iter=max_iter,
                                       touch_tol=touch_tol, threads=threads,
                                       history=coarse_history)
        timings["coarse"] = time.perf_counter() - tc0
        from_coarse = warm_start is not None
        if from_coarse and sinkhorn_sweeps is None:
            sinkhorn_sweeps = 1   # the interpolated h is off on the finer rows: one sweep
    if warm_start is not None:
        v0, h0 = _warm_potentials(warm_start, n, m)
    else:
        v0 = h0 = None
    if sinkhorn_sweeps is None:
        sinkhorn_sweeps = 0 if warm_start is not None else 1
    if int(sinkhorn_sweeps) < 0:
        raise ValueError(f"sinkhorn_sweeps must be >= 0, got {sinkhorn_sweeps!r}")

    grid = marginals.grid
    w = marginals.weights
    per_chunk = max(1, int(chunk_entries // max(1, m * m)))
    history: list[dict[str, Any]] = coarse_history

    def solve_periods(periods: np.ndarray, out: tuple[np.ndarray, ...], spread: bool = False
                      ) -> None:
        """Solve the periods ``periods`` in chunks into ``out`` = (kernels, u, v, h, pinned,
        status, nit), arrays with one entry per period of ``periods``. ``spread``: from
        ``_spread_start`` at the final eps (the restart), else from the configured start along
        the eps schedule."""
        k_out, u_o, v_o, h_o, pin_o, st_o, nit_o = out
        stages = [eps] if spread else schedule
        for start in range(0, periods.size, per_chunk):
            sel = periods[start:start + per_chunk]
            loc = slice(start, start + sel.size)
            b = _prepare(grid, w[sel], w[sel + 1],
                         None if logq_raw is None else logq_raw[sel],
                         None if signed_cost is None else signed_cost[sel], touch_tol=touch_tol)
            nb = b.size
            if spread:
                phi, eta = _spread_start(b)
            elif v0 is not None:
                phi = v0[sel] / stages[0]
                eta = h0[sel] / stages[0]
            else:
                phi = np.zeros((nb, m))
                eta = np.zeros((nb, m))
            prev = stages[0]
            chunk_nit = 0
            lse_chunk = None          # Newton writes the final kernels and LSE (no recompute)
            for k, e in enumerate(stages):
                phi *= prev / e
                eta *= prev / e
                prev = e
                last = k == len(stages) - 1
                stage = len(schedule) - 1 if spread else k
                if method == "sinkhorn":
                    phi, eta, it, st = _sinkhorn_batch(
                        b, e, phi, eta, tol=tol if last else max(tol, stage_tol),
                        max_iter=int(max_iter), stage=stage, history=history,
                    )
                else:
                    if last:
                        lse_chunk = np.empty((nb, m))
                    first = 1 if spread else int(sinkhorn_sweeps)
                    phi, eta, it, st = _solve_batch(
                        b, e, phi, eta, tol=tol if last else max(tol, stage_tol),
                        max_iter=int(max_iter), sweeps=first if k == 0 else 1,
                        stage=stage, history=history,
                        kernels_out=k_out[loc] if last else None,
                        lse_out=lse_chunk if last else None,
                    )
                chunk_nit += it
                if last:
                    st_o[loc] = st
            nit_o[loc] = chunk_nit
            _finish_chunk(b, eps, phi, eta, k_out[loc], u_o[loc], v_o[loc], h_o[loc],
                          lse=lse_chunk)
            pin_o[loc] = b.pinned

    def new_out(size: int) -> tuple[np.ndarray, ...]:
        return (np.empty((size, m, m)), np.zeros((size, m)), np.zeros((size, m)),
                np.zeros((size, m)), np.zeros((size, m), dtype=bool), np.zeros(size, dtype=int),
                np.zeros(size, dtype=int))

    with _blas_limit(threads), np.errstate(over="ignore", under="ignore", invalid="ignore",
                                           divide="ignore"):
        ts = time.perf_counter()
        kernels, u_out, v_out, h_out, pinned_all, status, period_nit = out = new_out(n)
        solve_periods(np.arange(n), out)
        # measured residuals on the full plans
        moments = _moments(grid, w, kernels)
        n_repaired = _repair_rows(grid, w[:-1], kernels, moments[2], tol)
        if n_repaired:
            moments = _moments(grid, w, kernels)
        errs, drifts = measure(grid, w, kernels, moments)
        failed = np.flatnonzero(~((errs <= tol) & (drifts <= tol)))
        timings["solve"] = time.perf_counter() - ts
        if method == "newton" and failed.size:
            ts = time.perf_counter()
            # restart the failed periods from the spread start; keep what converges there
            history.append({"stage": len(schedule) - 1, "eps": eps, "kind": "restart",
                            "iteration": 0, "periods": failed.tolist(),
                            "marginal_error": float(np.max(errs[failed])),
                            "drift": float(np.max(drifts[failed])), "step": 1.0})
            again = new_out(failed.size)
            solve_periods(failed, again, spread=True)
            for j, t in enumerate(failed):
                wt, kt = w[t:t + 2], again[0][j:j + 1]
                mom = _moments(grid, wt, kt)
                rep = _repair_rows(grid, wt[:-1], kt, mom[2], tol)
                e2, d2 = measure(grid, wt, kt, _moments(grid, wt, kt) if rep else mom)
                period_nit[t] += again[6][j]
                if e2[0] <= tol and d2[0] <= tol:
                    for dst, src in zip(out[:6], again[:6]):
                        dst[t] = src[j]
                    n_repaired += rep
            moments = _moments(grid, w, kernels)
            errs, drifts = measure(grid, w, kernels, moments)
            timings["restart"] = time.perf_counter() - ts
        nit_total = int(period_nit.max())
        tc, ent, dual = _objectives(grid, w, kernels, u_out, v_out, h_out, cost_arr, moments)
    ok = (errs <= tol) & (drifts <= tol)
    success = bool(np.all(ok)) and bool(np.isfinite(errs).all())
    retry: dict[str, Any] | None = None
    if not success and from_coarse:
        # the interpolated start was worse than a cold one (rare: about 1 in 150 random
        # cases): solve again from the usual cold start
        retry = dict(warm_start=None, eps_schedule=eps_schedule, sinkhorn_sweeps=None)
    elif (not success and eps_schedule is None and signed_cost is not None
            and method == "newton" and np.any(status == 2)):
        # the default eps-scaling was too coarse for this cost: redo with gentler stages
        finer = _default_schedule(eps, signed_cost, maximize, ratio=_RETRY_RATIO)
        if len(finer) > len(schedule):
            retry = dict(warm_start=warm_start, eps_schedule=finer,
                         sinkhorn_sweeps=sinkhorn_sweeps)
    if retry is not None:
        first = time.perf_counter() - t0
        again = solve_entropic(
            marginals, eps, cost, reference, tol=tol, max_iter=max_iter, stage_tol=stage_tol,
            maximize=maximize, touch_tol=touch_tol, threads=threads,
            chunk_entries=chunk_entries, warn=warn, method=method, multiscale=False, **retry)
        return replace(again, history=history + again.history, nit=again.nit + nit_total,
                       seconds=time.perf_counter() - t0,
                       timings={"first_attempt": first, **again.timings})
    if success:
        code, msg = "converged", (f"converged: marginal error {errs.max():.2e}, drift "
                                  f"{drifts.max():.2e}")
        if n_repaired:
            msg += f" ({n_repaired} tail row(s) mean-corrected)"
    else:
        breakdown = bool(np.any(status == 2))
        code = "line_search_failed" if breakdown else "iteration_limit"
        bad = np.flatnonzero(~ok)
        what = "line search failed" if breakdown else f"iteration limit max_iter={max_iter} reached"
        msg = (f"{what}: {bad.size} period(s) above tol={tol:g} (first: period "
               f"{bad[0] if bad.size else -1}); "
               f"marginal error {np.nanmax(errs):.2e}, drift {np.nanmax(drifts):.2e}")
    result = EntropicResult(
        u=u_out, v=v_out, h=h_out, kernels=kernels, grid=grid, weights=w, eps=eps,
        nit=nit_total, sweeps=nit_total if method == "sinkhorn" else int(sinkhorn_sweeps),
        marginal_error=float(np.max(errs)), drift=float(np.max(drifts)), marginal_errors=errs,
        drifts=drifts, success=success, status=code, message=msg,
        seconds=time.perf_counter() - t0, history=history, transport_cost=tc, dual_value=dual,
        entropic_objective=ent, pinned=pinned_all, timings=timings,
    )
    if warn:
        warn_failure(result, "solve_entropic")
    return result


MULTISCALE_MIN_POINTS = 100
"""Grid size from which ``solve_entropic`` warm-starts from the half grid by default."""

_COARSE_TOL = 1e-4
"""Residual target of the coarse solves of the multiscale start. A loose target leaves the
coarse residuals anywhere below it, and the fine start inherits that: on the 100 instances
0, 10, .., 990 of ``benchmarks/mmot_entropic_robustness.py --seed 11``, 1e-4 instead of 1e-3
took 645 instead of 714 fine Newton iterations for 319 instead of 270 coarse ones (a coarse
iteration costs 1/4 to 1/8 of a fine one: half the points, a quarter of the kernel entries)."""


def coarse_marginals(marginals: Marginals, offset: int = 0) -> Marginals:
    """The marginals on every other grid point (from ``offset``, 0 or 1, and both ends), by
    linear splitting.

    Splitting mass at a dropped point onto its two kept neighbours preserves the total mass and
    the mean, and leaves every call price at a kept point unchanged ((y - k)^+ is linear
    between kept points); the call function of a law on the kept points is linear between them,
    so the coarse laws are in convex order exactly when the fine ones are at the kept points.
    """
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) \
            or offset not in (0, 1):   # 1.0 was an IndexError, True ran as 1
        raise ValueError(f"offset must be 0 or 1, got {offset!r}")
    grid = marginals.grid
    keep = np.unique(np.r_[0, np.arange(offset, grid.size, 2), grid.size - 1])
    cg = grid[keep]
    w = np.stack([split_onto_grid(grid, row, cg) for row in marginals.weights])
    return Marginals(cg, w, marginals.times, check_convex=False)


def _multiscale_start(marginals: Marginals, eps: float, reference: str, *, tol: float,
                      max_iter: int, touch_tol: float, threads: int | None,
                      history: list[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """(v, h) for ``marginals`` interpolated from the solve on ``coarse_marginals`` (recursive).

    v is interpolated over the columns with mass and h over the free (not pinned) rows with
    mass of the coarse solve; the rest of either is meaningless there. Returns None (cold start)
    when the coarse solve fails.
    """
    coarse = coarse_marginals(marginals)
    res = solve_entropic(coarse, eps, None, reference, tol=max(tol, _COARSE_TOL),
                         max_iter=max_iter, touch_tol=touch_tol, threads=threads, warn=False)
    if not res.success:
        return None
    cg, fine = coarse.grid, marginals.grid
    w = coarse.weights
    v = np.zeros((marginals.n_periods, fine.size))
    h = np.zeros_like(v)
    for t in range(marginals.n_periods):
        cols = (w[t + 1] > 0) & np.isfinite(res.v[t])
        rows = (w[t] > 0) & ~res.pinned[t] & np.isfinite(res.h[t])
        if cols.sum() >= 2:
            v[t] = np.interp(fine, cg[cols], res.v[t][cols])
        if rows.sum() >= 2:
            h[t] = np.interp(fine, cg[rows], res.h[t][rows])
    history.append({"stage": -1, "eps": eps, "kind": "coarse", "iteration": res.nit,
                    "grid_size": int(cg.size), "marginal_error": res.marginal_error,
                    "drift": res.drift, "step": 1.0, "seconds": res.seconds})
    return {"v": v, "h": h}


def newton_polish(marginals: Marginals, eps: float, u: np.ndarray | None, v: np.ndarray,
                  h: np.ndarray, cost: Any = None, reference: Any = "product", **options
                  ) -> EntropicResult:
    """Newton to tolerance from given potentials (a warm start, e.g. a network's prediction).

    ``u`` is ignored (it is eliminated in closed form) and may be ``None``; ``v`` and ``h`` have
    shape (N, M) in cost units, any gauge. No Sinkhorn sweeps and no eps-scaling by default.
    """
    options.setdefault("sinkhorn_sweeps", 0)
    options.setdefault("eps_schedule", [float(eps)])
    return solve_entropic(marginals, eps, cost, reference, warm_start=(u, v, h), **options)
