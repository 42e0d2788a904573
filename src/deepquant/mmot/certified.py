"""Certified MMOT bounds at market resolution (DESIGN §2.8).

One side (the upper; the lower is minus the upper of -f) of the bounds on the augmented chain is
min over static potentials u_t of the superhedging value F(u) (``deepquant.mmot.envelope``): any
u gives a VALID bound in one exact backward sweep of concave envelopes. The method:

1. smooth F with the entropic envelope (h eliminated state by state, reference kernel mu_{t+1})
   and minimise F_eps over the N*M potentials by L-BFGS, with eps-scaling (eps from 1e-2 to
   about 1e-7 of the payoff scale, warm-started);
2. after each stage, certify: the exact sweep gives the cheapest h and constant for the current
   u; the superhedging inequality is then checked on every move of the chain and the constant is
   shifted by the measured worst violation (rounding only). That is the **outer bound**;
3. the smoothed chain of the last stage is a martingale (its rows solved exactly) whose marginals
   are off by the measured residual: its value is the **inner estimate**.

``gap = outer - inner`` says how far from the LP optimum the bound can be. Stop when the relative
gap reaches ``rtol`` (or the schedule or the time budget ends; the result says which).

Chains small enough for an LP (``POLISH_MAX_STATES``) skip the smoothing: the chain LP is solved
exactly by column generation (``deepquant.mmot.colgen``, every move priced in the same layout);
its plan is feasible (a rigorous inner value) and its potentials, swept exactly, give the outer
bound, so the bracket closes to the LP tolerance.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

from deepquant.market.marginals import Marginals
from deepquant.mmot._levels import LEVEL_EPS_START, WORK_COLUMNS_PER_SECOND, coarse_share, is_above
from deepquant.mmot.augment import AugmentedChain, build_chain
from deepquant.mmot.colgen import band_moves, solve_chain_colgen
from deepquant.mmot.result import BoundSide, BoundsResult
from deepquant.mmot.sweep import _Sweeper, duals_of
from deepquant.payoffs import Payoff, SumSquaredIncrements
from deepquant.results import warn_failure

__all__ = ["certified_bounds", "certify_side", "clip_inner", "nest_supports", "stage_stop",
           "CertifiedProgress"]


POLISH_MAX_STATES = 1_500
"""Chains with at most this many live states (x, s) over all periods are solved exactly by
column generation (measured on a loaded 2-core machine: lookback N = 5, M = 25 (742 states) in
4 s per side; the Asian at M = 25 (3,625 states) took over 50 s per pricing round); larger ones
go through the smoothed stages, then one restricted LP for the inner value."""

INNER_MAX_COLUMNS = 1_500_000
"""The restricted LP of the inner value (smoothed plan's bands plus near-contact moves) is
solved only up to this many columns."""

POLISH_RESIDUAL = 1e-8
"""Largest row residual of a column-generation plan accepted as a feasible (inner) plan."""


def live_states(chain: AugmentedChain) -> int:
    """Number of live states (x, s) at the dates 0..T-1 (the LP's martingale rows)."""
    return int(sum(chain.reach[t][chain.support[t]].sum() for t in range(chain.last_date)))


def lp_columns(chain: AugmentedChain) -> int:
    """Number of columns (moves (x, s) -> y) of the chain LP, counted without building it."""
    return int(sum(chain.reach[t][chain.support[t]].sum() * chain.support[t + 1].sum()
                   for t in range(chain.last_date)))


@dataclass(frozen=True)
class CertifiedProgress:
    """One eps stage of a certified solve, passed to ``progress`` callbacks. ``eps == 0``
    marks a round of the exact column generation (``stage`` the round, ``inner`` the restricted
    LP's value, ``outer`` the exact sweep of its potentials)."""

    side: str
    stage: int
    eps: float
    outer: float
    inner: float
    marginal_error: float
    seconds: float


def nest_supports(marginals: Marginals, last_date: int, *, max_mass: float = 1e-8
                  ) -> tuple[Marginals, float]:
    """Merge tail mass of mu_t lying outside the hull of supp mu_{t+1} onto that hull's end point.

    Marginals in convex order within a tolerance (tails of 1e-12 mass, supports that differ by
    date) can put mass at points from which no martingale move onto supp mu_{t+1} exists; the
    exact problem is then infeasible by that mass. Dates are processed backwards so the supports
    nest. Returns the repaired marginals and the total mass moved; more than ``max_mass`` is a
    ``ValueError`` naming the date (the marginals are then not in convex order).
    """
    w = np.array(marginals.weights, dtype=float)
    grid = np.asarray(marginals.grid, dtype=float)
    moved = 0.0
    for t in range(last_date - 1, -1, -1):
        nxt = np.flatnonzero(w[t + 1] > 0)
        lo, hi = nxt[0], nxt[-1]
        for sl, end in ((slice(0, lo), lo), (slice(hi + 1, None), hi)):
            extra = float(w[t, sl].sum())
            if extra > 0:
                if extra > max_mass:
                    raise ValueError(
                        f"marginals[{t}] has mass {extra:.3e} outside [{grid[lo]:.6g}, "
                        f"{grid[hi]:.6g}], the hull of the support of marginals[{t + 1}]: no "
                        "martingale has these marginals (repair the convex order first)")
                w[t, end] += extra
                w[t, sl] = 0.0
                moved += extra
    if moved == 0.0:
        return marginals, 0.0
    return Marginals(grid, w, marginals.times, sum_tol=marginals.sum_tol,
                     mean_tol=max(marginals.mean_tol, 1e-8), convex_tol=marginals.convex_tol,
                     check_convex=False), moved


class _OutOfTime(Exception):
    """The time budget ran out inside an L-BFGS stage (raised by the objective before a
    smoothed sweep, so that a line search of many sweeps cannot overrun the budget)."""


def within_rtol(gap: float, outer: float, scale: float, rtol: float) -> bool:
    """|gap| <= rtol * max(|outer|, 1e-3 * scale): the bracket is closed to ``rtol`` of the
    bound (of the payoff's scale for bounds near 0)."""
    return abs(gap) <= rtol * max(abs(outer), 1e-3 * scale)


def stage_stop(gap: float, outer: float, scale: float, *, rtol: float, fitted: bool,
               t0: float, max_seconds: float, eps: float, eps_end: float
               ) -> tuple[int, str] | None:
    """The end of an eps-scaling loop after a stage, as (status, message), or None to go on:
    the gap within ``rtol`` of the bound (with the inner value's fit acceptable), the time
    budget spent, or the schedule at ``eps_end``."""
    if within_rtol(gap, outer, scale, rtol) and fitted:
        return 0, "certified gap within rtol"
    if time.perf_counter() - t0 > max_seconds:
        return 1, f"time budget {max_seconds:g} s spent"
    if eps <= eps_end * (1 + 1e-9):
        return 1, "eps schedule ended before the gap reached rtol"
    return None


def _check_options(*, rtol: float = 1e-4, eps_start: float = 1e-2, eps_end: float = 1e-7,
                   eps_factor: float = 0.2, band: float = 40.0, max_seconds: float = 600.0,
                   **_: object) -> None:
    """ValueError naming the option and the value for an out-of-range option of
    ``certify_side`` (defaults as there; other keywords are ignored), NaN included: a NaN time
    budget would never run out."""
    for name, v in (("rtol", rtol), ("eps_start", eps_start), ("eps_end", eps_end)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not 0 < eps_factor < 1:
        raise ValueError(f"eps_factor must be in (0, 1), got {eps_factor!r}")
    if eps_end > eps_start:
        raise ValueError(f"eps_end must be <= eps_start, got {eps_end!r} > {eps_start!r}")
    if not (np.isfinite(band) and band >= 5):
        raise ValueError(f"band must be >= 5, got {band!r}")
    if not max_seconds >= 0:  # 0: no stage, the start's certificate (a coarse level's)
        raise ValueError(f"max_seconds must be a number >= 0 (inf: no budget), got "
                         f"{max_seconds!r}")


def certify_side(chain: AugmentedChain, marginals: Marginals, sense: str, *,
                 rtol: float = 1e-4, eps_start: float = 1e-2, eps_end: float = 1e-7,
                 eps_factor: float = 0.2, band: float = 40.0, max_iter: int = 400,
                 gtol: float = 1e-9, maxcor: int = 50, precondition: float = 0.0,
                 inner_resid_tol: float = 1e-3, polish: bool = True,
                 polish_max_states: int = POLISH_MAX_STATES, max_seconds: float = 600.0,
                 u0: np.ndarray | None = None, start: dict | None = None,
                 min_sweeps: int = 0, progress=None) -> BoundSide:
    """One side of the certified bounds on ``chain`` (see the module docstring).

    Parameters
    ----------
    chain : AugmentedChain
    marginals : Marginals
    sense : {"lower", "upper"}
    rtol : float
        Stop when |outer - inner| <= rtol * max(|outer|, 1e-3 * payoff scale) with the inner
        chain's marginal error (L1 summed over dates) <= ``inner_resid_tol``.
    eps_start, eps_end, eps_factor : float
        eps-scaling schedule, relative to the payoff scale max |f| on the chain.
    band : float
        Band of the smoothed envelope in units of eps (terms below exp(-band) dropped).
    max_iter : int
        L-BFGS iterations per stage.
    gtol, maxcor : float, int
        L-BFGS-B options (gradient tolerance on the marginal residual, memory).
    precondition : float
        0 (off) or a mass floor: optimise v = u sqrt(max(mu, floor) / eps) (the diagonal of
        the Hessian at a fitted chain, floored so tail points are not blown up).
    inner_resid_tol : float
        Marginal error (L1 over dates) below which an inner estimate counts.
    polish : bool
        Solve the chain LP exactly by column generation (``deepquant.mmot.colgen``) when the
        chain has at most ``polish_max_states`` live states in all: first from ``u0`` (if it
        converges, the bracket closes to the LP tolerance and the smoothed stages are skipped),
        otherwise (larger chains) the LP restricted to the final smoothed plan's bands and the
        near-contact moves is solved once (up to ``INNER_MAX_COLUMNS`` columns). Either plan is
        feasible, so its value is a rigorous inner bound (``info["inner_kind"]`` says which
        inner value is reported); its potentials, swept exactly, are a second outer candidate.
    polish_max_states : int
    max_seconds : float
        Time budget; the best certificate so far is returned when it runs out.
    u0 : ndarray, optional
        Warm start, the concatenated potentials u_1..u_T on the supports. Its certificate is
        taken before the first stage (the side never ends worse than it), and the budget is
        then checked before the first smoothed sweep too (a side may end without smoothing).
    start : dict, optional
        The inner estimate until a stage gives one (``inner``, ``resid``, ``kind``), e.g. the
        inner value of a coarse grid.
    min_sweeps : int
        With ``u0``: run the smoothed stages only if this many smoothed sweeps, predicted as
        ``SOFT_OVER_HARD`` times the exact sweep of ``u0``'s certificate, fit in the budget
        left (0: always run them).
    progress : callable, optional
        Called with a ``CertifiedProgress`` after each stage.

    Returns
    -------
    BoundSide
        ``value`` the certified outer bound (always valid), ``gap`` outer - inner,
        ``primal_residual`` the inner chain's L1 marginal error, ``info`` with ``inner``,
        ``eps``, ``stages``, ``iterations``, ``violation`` (the shift added to the constant).
    """
    if sense not in ("lower", "upper"):
        raise ValueError(f"sense must be 'lower' or 'upper', got {sense!r}")
    _check_options(rtol=rtol, eps_start=eps_start, eps_end=eps_end, eps_factor=eps_factor,
                   band=band, max_seconds=max_seconds)
    t0 = time.perf_counter()
    sign = 1.0 if sense == "upper" else -1.0
    if chain.last_date == 0:
        val = float(np.sum(chain.law0[:, None] * chain.initial.toarray() * chain.terminal))
        return BoundSide(val, True, "optimal", "no free variables (payoff known at date 0)",
                         0.0, 0.0, 0.0, 0.0, info=dict(inner=val))
    with threadpool_limits(limits=1, user_api="blas"):
        # L-BFGS-B's small dense algebra: 4x slower with 2 BLAS threads on 2 cores (DESIGN §7)
        return _certify(chain, marginals, sense, sign, t0, rtol=rtol, eps_start=eps_start,
                        eps_end=eps_end, eps_factor=eps_factor, band=band, max_iter=max_iter,
                        gtol=gtol, maxcor=maxcor, precondition=precondition,
                        inner_resid_tol=inner_resid_tol, polish=polish,
                        polish_max_states=polish_max_states, max_seconds=max_seconds, u0=u0,
                        start=start, min_sweeps=min_sweeps, progress=progress)


def _certify(chain, marginals, sense, sign, t0, *, rtol, eps_start, eps_end, eps_factor, band,
             max_iter, gtol, maxcor, precondition, inner_resid_tol, polish, polish_max_states,
             max_seconds, u0, start, min_sweeps, progress) -> BoundSide:
    sw = _Sweeper(chain, marginals, sign)
    uvec = np.zeros(sw.mu_flat.size) if u0 is None else np.array(u0, dtype=float)
    if uvec.shape != sw.mu_flat.shape:
        raise ValueError(f"u0 must have shape {sw.mu_flat.shape}, got {uvec.shape}")
    scale = sw.scale
    best = (np.inf, uvec.copy(), np.zeros(sw.T))
    inner = np.nan
    resid = np.inf  # marginal error (L1 over dates) of the chain that gave ``inner``
    drift = np.nan
    nit = 0
    stages = 0
    eps = eps_start
    inner_kind = "smoothed chain"
    if u0 is not None:  # the start's certificate: the side never ends worse than it
        t_cert = time.perf_counter()
        best = sw.certify(uvec.copy())
        sweep = SOFT_OVER_HARD * (time.perf_counter() - t_cert)
        if min_sweeps * sweep >= max_seconds - (time.perf_counter() - t0):
            max_seconds = 0.0  # no smoothed stage fits: the start's certificate stands
    if start is not None:
        inner, resid, inner_kind = sign * start["inner"], start["resid"], start["kind"]
    if polish and live_states(chain) <= polish_max_states:
        log = None
        if progress is not None:
            def log(rnd, sec, cols, val, worst, outer):
                # eps = 0 marks a column-generation round: the restricted LP's value is an
                # inner value, its potentials swept exactly the round's outer bound
                progress(CertifiedProgress(sense, rnd, 0.0, sign * outer, sign * val, 0.0,
                                           time.perf_counter() - t0))
        cg = solve_chain_colgen(sw, uvec, max_seconds=max_seconds, log=log)
        if cg.u is not None and cg.residual <= POLISH_RESIDUAL:
            # a feasible plan (rigorous inner) and its potentials (a second outer candidate)
            cert = sw.certify(cg.u)
            if best[0] < cert[0]:  # a budget-stopped LP can end worse than its start
                cert = best
            outer = cert[0]
            within = within_rtol(outer - cg.value, outer, scale, rtol)
            status = 0 if within else 1
            message = (f"LP solved by column generation ({cg.rounds} rounds, {cg.columns} "
                       f"columns): {cg.message}")
            return _side_result(sw, sign, t0, cert, cg.value, cg.residual,
                                "LP (column generation)", status, message,
                                dict(eps=0.0, stages=0, iterations=cg.rounds, drift=0.0,
                                     lp_seconds=cg.lp_seconds, columns=cg.columns))
    status, message = 1, "eps schedule ended before the gap reached rtol"
    while True:
        e_abs = eps * scale
        sw.h_warm = [None] * sw.T

        # diagonal preconditioner: d law_t(y) / d u_t(y) ~ -mu_t(y) / eps (the Gibbs weight
        # of y scales like exp(-u_t(y) / eps)), so optimise v = u * sqrt(mu / eps)
        pre = (np.sqrt(e_abs / np.maximum(sw.mu_flat, precondition)) if precondition > 0
               else np.full(sw.mu_flat.size, e_abs))

        low: dict = {}  # the stage's evaluation with the lowest smoothed value

        def fun(v, e_abs=e_abs, pre=pre, low=low, armed=bool(np.isfinite(best[0]))):
            # the budget is checked before every sweep: one L-BFGS stage (up to max_iter
            # iterations, each with its line search) can otherwise run far past it
            if (low or armed) and time.perf_counter() - t0 > max_seconds:
                raise _OutOfTime
            val, grad, _, _, _ = sw.soft(v * pre, e_abs, band)
            if not low or val < low["f"]:
                low.update(f=val, v=v.copy())
            return val / e_abs, grad * pre / e_abs

        def count(intermediate_result):
            nonlocal nit
            nit += 1

        try:
            optimize.minimize(fun, uvec / pre, jac=True, method="L-BFGS-B", callback=count,
                              options=dict(maxiter=max_iter, maxcor=maxcor, gtol=gtol,
                                           ftol=1e-15))
        except _OutOfTime:
            if not low:  # out of time before the stage's first sweep: the start stands
                status, message = 1, f"time budget {max_seconds:g} s spent"
                break
        uvec = low["v"] * pre
        stages += 1
        _, _, stage_inner, law, drift = sw.soft(uvec, e_abs, band)
        stage_resid = float(np.sum(np.abs(law - sw.mu_flat)))
        # the inner estimate is only as good as its chain's marginals: among the stages whose
        # chain fits them within inner_resid_tol keep the largest value (the entropic bias is
        # downwards); while none does, keep the best-fitting one
        fits, fitted = stage_resid <= inner_resid_tol, resid <= inner_resid_tol
        if (fits and (not fitted or stage_inner > inner)) or \
                (not fits and not fitted and stage_resid < resid):
            inner, resid = stage_inner, stage_resid
        cert = sw.certify(uvec.copy())
        if cert[0] < best[0]:
            best = cert
        gap = best[0] - inner
        if progress is not None:
            progress(CertifiedProgress(sense, stages, e_abs, sign * best[0], sign * inner, resid,
                                       time.perf_counter() - t0))
        verdict = stage_stop(gap, best[0], scale, rtol=rtol, fitted=resid <= inner_resid_tol,
                             t0=t0, max_seconds=max_seconds, eps=eps, eps_end=eps_end)
        if verdict is not None:
            status, message = verdict
            break
        eps = max(eps * eps_factor, eps_end)
    extra = dict(eps=eps * scale, stages=stages, iterations=nit, drift=drift)
    left = max_seconds - (time.perf_counter() - t0)
    if polish and left > 1.0:
        # one restricted LP on the final stage's bands and the near-contact moves of the best
        # potentials (within what is left of the budget): a feasible plan, so a rigorous inner
        # value
        sw.soft(best[1], eps * scale, band)
        cg = solve_chain_colgen(sw, best[1], k=6, extra=band_moves(sw), max_rounds=1,
                                solver="ipm", max_columns=INNER_MAX_COLUMNS, max_seconds=left)
        if cg.u is not None and cg.residual <= POLISH_RESIDUAL:
            inner, resid, inner_kind = cg.value, cg.residual, "restricted LP"
            extra.update(lp_seconds=cg.lp_seconds, columns=cg.columns)
            cert = sw.certify(cg.u)
            if cert[0] < best[0]:
                best = cert
            if within_rtol(best[0] - inner, best[0], scale, rtol):
                status, message = 0, "certified gap within rtol (inner: a feasible plan)"
    return _side_result(sw, sign, t0, best, inner, resid, inner_kind, status, message, extra)


def clip_inner(inner: float, outer: float) -> tuple[float, float]:
    """(inner clipped to the outer bound, the excess clipped off). An inner value above the
    certified outer bound is an artefact: a smoothed chain's marginal (or band) error, or an LP
    plan whose row residuals (within the solver's tolerance) sit on rows with huge duals (tail
    states of 1e-13 mass). The bracket keeps the outer bound and reports the excess instead of
    a negative gap."""
    return min(inner, outer), max(0.0, float(inner - outer))


def _side_result(sw: _Sweeper, sign: float, t0: float, best, inner: float, resid: float,
                 inner_kind: str, status: int, message: str, extra: dict) -> BoundSide:
    """The BoundSide of the certificate ``best`` = (outer, u, violation per period)."""
    chain = sw.chain
    outer, ubest, viol = best
    duals = duals_of(sw, ubest)
    inner, excess = clip_inner(inner, outer)
    extra = dict(extra, inner_excess=excess)
    gap = outer - inner
    u_grid = np.full((sw.T + 1, chain.size), np.nan)
    for t, piece in enumerate(sw.split(ubest), start=1):
        u_grid[t, sw.supp[t]] = piece
    info = dict(inner=sign * inner, inner_kind=inner_kind, u_sweep=u_grid,
                violation=float(viol.sum()), scale=sw.scale,
                relative_gap=gap / max(abs(outer), 1e-300), **extra)
    code = "certified" if status == 0 else "certified-wide"
    return BoundSide(sign * outer, True, code, message, time.perf_counter() - t0, resid, 0.0,
                     float(gap), duals, None, info)


LP_START_COLUMNS = 25_000
"""The warm start halves the grid until the chain LP has at most this many columns (moves
(x, s) -> y), then solves that level exactly with HiGHS (``deepquant.mmot.lp``) and carries its
potentials up. Measured on the demo's calibrated chain (N = 5), loaded 2-core machine, one side:
20 points, lookback 5,600 columns in 0.7 s and straddle 10,800 in 1.8 s; the Asian needs 11
points (8,300 columns, 1.4 s; at 20 points 41,000 columns took 30 s). Column generation took
3-4 s and over 7 s on the same two 20-point chains from cold, and the smoothed stages did not
come within 4x of the Asian's value in 7 s. Was 12,000: the 20-point straddle of the benchmark
(23,218 columns) takes 2.4-2.6 s, column generation on it 6 s or more."""

MIN_COARSE_SIZE = 6
"""The halving stops at this many points even if the LP is still larger than
``LP_START_COLUMNS`` (the coarsest level is then solved by ``certify_side``)."""

COARSE_SHARE = 0.9
"""Share of the time budget for the coarse level of the quote bounds
(``deepquant.mmot.quotes_bounds``; the certified bounds split theirs by ``_levels``)."""

FINE_SWEEPS = 4
"""Fewest predicted smoothed sweeps worth a fine stage after a coarse start."""

SOFT_OVER_HARD = 100.0
"""Cost of one smoothed sweep over one exact sweep of the same chain (measured 70-160 at 150
points: exact 4-16 ms, smoothed 0.3-1.2 s on the Heston lookback; the prediction of the fine
stages' cost)."""


def _lp_side(chain: AugmentedChain, marginals: Marginals, sense: str, options: dict
             ) -> BoundSide | None:
    """One side solved exactly by the chain LP (HiGHS), in certify_side's form: the LP's
    potentials swept exactly (the outer bound) and its value (inner); None if HiGHS fails."""
    from deepquant.mmot.lp import build_chain_lp, solve_side

    t0 = time.perf_counter()
    # HiGHS stops at the side's budget (at least a second: the LP is small by construction)
    limit = max(float(options.get("max_seconds", 600.0)), 1.0)
    side = solve_side(build_chain_lp(chain, marginals), sense,
                      highs_options=dict(time_limit=limit))
    if not side.success or side.duals is None:
        return None
    sign = 1.0 if sense == "upper" else -1.0
    sw = _Sweeper(chain, marginals, sign)
    u = side.duals.u
    cert = sw.certify(np.concatenate([np.nan_to_num(sign * u[t, sw.supp[t]])
                                      for t in range(1, sw.T + 1)]))
    rtol = options.get("rtol", 1e-4)
    within = within_rtol(cert[0] - sign * side.value, cert[0], sw.scale, rtol)
    return _side_result(sw, sign, t0, cert, sign * side.value, side.primal_residual,
                        "LP (HiGHS)", 0 if within else 1, f"chain LP solved by HiGHS: "
                        f"{side.message}", dict(eps=0.0, stages=0, iterations=0, drift=0.0))


def _multiscale_side(marginals: Marginals, payoff: Payoff, chain: AugmentedChain, sense: str, *,
                     levels: int | None, sum_grid_size, sum_mode, progress, top: bool = True,
                     role: str = "above", work_columns: float | None = None,
                     lp_budget: float | None = None,
                     **options) -> BoundSide:
    """``certify_side`` started from the same side on ``coarse_marginals`` (recursively).

    The grid is halved until the chain LP is small (``LP_START_COLUMNS``), and that level is
    solved exactly by HiGHS with the side's whole budget (``lp_budget``). The rest is split
    over the levels by ``_levels.coarse_share`` (``role`` and ``work_columns``, the work level's
    threshold from the top budget, carry its state down). The coarse levels are solved like
    any side (by column generation, warm-started, when small); their potentials, interpolated
    linearly onto the fine supports, are certified by one exact sweep (a valid bound whatever
    the grid); above the work level, the fine stages run only when ``FINE_SWEEPS`` smoothed
    sweeps (predicted as ``SOFT_OVER_HARD`` times the exact sweep just timed) fit in what is
    left. Until a fine stage gives one, the inner estimate is the coarse level's: a value on
    other (coarsened) marginals, so the gap is then an estimate of the bracket, not a bound
    (``info["inner_kind"]`` says so). ``top`` is False on the coarse levels (the user's own
    grid is never replaced by its LP here: a small one goes to ``certify_side``)."""
    from deepquant.mmot.entropic import coarse_marginals

    cols = lp_columns(chain)
    lp_small = cols <= LP_START_COLUMNS
    if levels is None:  # automatic: halve until the chain LP is small
        bottom = lp_small or marginals.size <= MIN_COARSE_SIZE
    else:
        bottom = levels <= 0
    if bottom:
        # a coarse level whose LP is small is solved exactly by HiGHS; the user's own grid
        # (and anything the LP cannot take) goes to certify_side: column generation when small
        if lp_small and not top:
            t_lp = time.perf_counter()
            # the LP level is the start of every finer one: it gets the side's whole budget
            # (HiGHS stops when it is solved; the LP is small by construction)
            side = _lp_side(chain, marginals, sense,
                            options if lp_budget is None else dict(options, max_seconds=lp_budget))
            if side is not None:
                return side
            # what the failed LP left of the budget
            options["max_seconds"] = max(options.get("max_seconds", 600.0)
                                         - (time.perf_counter() - t_lp), 0.0)
        return certify_side(chain, marginals, sense, progress=progress, **options)
    t_start = time.perf_counter()
    budget = float(options.get("max_seconds", 600.0))
    if work_columns is None:
        work_columns = WORK_COLUMNS_PER_SECOND * budget
        lp_budget = budget
    T = chain.last_date
    coarse = coarse_marginals(marginals)
    coarse, _ = nest_supports(coarse, T)
    cchain = build_chain(coarse, payoff, sum_mode=sum_mode,
                         sum_grid_size=None if sum_grid_size is None
                         else max(2, (int(sum_grid_size) + 1) // 2))
    copts = dict(options)
    copts["eps_end"] = max(options.get("eps_end", 1e-7), 1e-5)
    copts["rtol"] = max(options.get("rtol", 1e-4), 1e-3)
    coarse_is_lp = lp_columns(cchain) <= LP_START_COLUMNS and (levels is None or levels <= 1)
    share, crole = coarse_share(cols, work_columns, role, coarse_is_lp)
    copts["max_seconds"] = share * budget
    cres = _multiscale_side(coarse, payoff, cchain, sense,
                            levels=None if levels is None else levels - 1,
                            sum_grid_size=sum_grid_size, sum_mode=sum_mode, progress=None,
                            top=False, role=crole, work_columns=work_columns,
                            lp_budget=lp_budget, **copts)
    uc = cres.info.get("u_sweep")
    if uc is None:  # nothing to carry over (a payoff known at date 0)
        return certify_side(chain, marginals, sense, progress=progress, **options)
    grid, cgrid = marginals.grid, coarse.grid
    pieces = []
    for t in range(1, T + 1):
        ok = np.isfinite(uc[t])
        xs = np.flatnonzero(chain.support[t])
        pieces.append(np.interp(grid[xs], cgrid[ok], uc[t, ok]))
    opts = dict(options)
    opts.setdefault("eps_start", max(cres.info.get("eps", 0.0) / cres.info["scale"],
                                     LEVEL_EPS_START, opts.get("eps_end", 1e-7)))
    opts["max_seconds"] = max(budget - (time.perf_counter() - t_start), 0.0)
    start = dict(inner=cres.info["inner"], resid=np.nan,
                 kind=f"coarse grid of {coarse.size} points ({cres.info['inner_kind']})")
    fine = certify_side(chain, marginals, sense, u0=np.concatenate(pieces), start=start,
                        min_sweeps=FINE_SWEEPS if is_above(cols, work_columns, role) else 0,
                        progress=progress, **opts)
    info = dict(fine.info, coarse=dict(size=int(coarse.size), bound=cres.value,
                                       inner=cres.info["inner"], gap=cres.gap,
                                       status=cres.status, seconds=cres.seconds))
    return dataclasses.replace(fine, seconds=time.perf_counter() - t_start, info=info)


def certified_bounds(marginals: Marginals, payoff: Payoff, *, sum_grid_size: int | None = None,
                     sum_mode: str = "auto", sides: tuple[str, ...] = ("lower", "upper"),
                     multiscale: int | None = None, progress=None, **options) -> BoundsResult:
    """Certified lower and upper bounds of E[payoff] over martingale laws with ``marginals``.

    Parameters
    ----------
    marginals : Marginals
        In convex order on the grid (checked).
    payoff : Payoff
        Any payoff with a statistic (European, Asian, lookback, forward start, barrier).
    sum_grid_size, sum_mode
        Running-sum state (``deepquant.mmot.augment.build_chain``).
    sides : tuple of str
    multiscale : int, optional
        Number of coarser levels (every other grid point, ``coarse_marginals``) solved first to
        warm-start the potentials; default: halve until the chain LP has at most
        ``LP_START_COLUMNS`` columns and solve that level exactly (grids whose own LP is that
        small are solved directly).
    progress : callable, optional
        Called with a ``CertifiedProgress`` after every eps stage of every side.
    **options
        Passed to ``certify_side`` (``rtol``, ``eps_end``, ``max_seconds``, ...).

    Returns
    -------
    BoundsResult
        ``lower``/``upper`` the certified outer bounds (always valid bounds of the LP on the
        chain), per side ``gap`` = outer - inner and ``info["inner"]``; ``method="certified"``.
    """
    from deepquant.mmot.lp import check_convex_order

    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    if not isinstance(payoff, Payoff):
        raise TypeError(f"payoff must be a Payoff, got {type(payoff).__name__}")
    if isinstance(payoff, SumSquaredIncrements):
        raise ValueError(f"payoff {payoff.name!r} is pairwise only; use method='lp' (its "
                         "bounds are model-free and cheap)")
    for s in sides:
        if s not in ("lower", "upper"):
            raise ValueError(f"sides must be a subset of ('lower', 'upper'), got {sides!r}")
    _check_options(**options)  # before the chain is built
    t_build = time.perf_counter()
    T = payoff.last_date(marginals.n_dates)
    check_convex_order(marginals, range(1, T + 1))
    marginals, moved = nest_supports(marginals, T)
    chain = build_chain(marginals, payoff, sum_mode=sum_mode, sum_grid_size=sum_grid_size)
    build = time.perf_counter() - t_build
    res = {s: _multiscale_side(marginals, payoff, chain, s, levels=multiscale,
                               sum_grid_size=sum_grid_size, sum_mode=sum_mode,
                               progress=progress, **options) for s in sides}
    missing = BoundSide(float("nan"), True, "not_requested", "not requested", 0.0)
    lo, up = res.get("lower", missing), res.get("upper", missing)
    ok = all(r.success for r in res.values())
    certified = all(r.status == "certified" for r in res.values())
    status = "certified" if certified else "certified-wide"
    msg = "; ".join(f"{k}: {r.message} (gap {r.gap:.3g})" for k, r in res.items())
    result = BoundsResult(
        lower=lo.value, upper=up.value, method="certified", status=status, success=ok,
        message=msg, seconds=dict(lower=lo.seconds, upper=up.seconds, build=build),
        sizes=dict(states=int(sum(chain.n_states)), pairs=int(sum(r.sum() for r in chain.reach)),
                   grid=int(chain.size)),
        lower_side=lo if "lower" in res else None, upper_side=up if "upper" in res else None,
        exact=chain.exact, structure="augmented",
        info=dict(states=chain.n_states, kind=chain.kind, chain=chain, tail_mass_moved=moved,
                  support=[int(s.sum()) for s in chain.support]),
    )
    warn_failure(result, "certified bounds")
    return result
