"""Certified MMOT bounds on fine grids: the multiscale start (DESIGN §2.8).

``certified_bounds`` is the entry point. Each side halves the grid (``coarse_marginals``) until
the chain LP is small (``LP_START_COLUMNS``), solves that level exactly with HiGHS, and carries
its potentials up level by level: interpolated onto the finer supports (``carry_up``: the line
or a spline, whichever certifies better) they are a valid start whatever the grid, certified by
one exact sweep of the potentials lowered to their lines (``deepquant.mmot.certified``), and each
level may then run the smoothed stages of ``certify_side`` within its share of the side's time
budget (``deepquant.mmot._levels``).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot._levels import (
    INNER_SHARE,
    LEVEL_EPS_START,
    WORK_COLUMNS_PER_SECOND,
    coarse_share,
    is_above,
    polish_share,
)
from deepquant.mmot.augment import AugmentedChain, build_chain
from deepquant.mmot.beside import check_workers, fork_available, inner_beside_polish
from deepquant.mmot.certified import (
    INNER_RESID_TOL,
    certify_side,
    check_options,
    lp_columns,
    nest_supports,
    side_result,
    within_rtol,
)
from deepquant.mmot.envelope import warm_kernels
from deepquant.mmot.markov_inner import MARGINAL_TOL, MARKOV_SHARE, adopt_markov_inner
from deepquant.mmot.polish import polish_side
from deepquant.mmot.relaxed import adopt_relaxed, relaxed_bounds
from deepquant.mmot.result import BoundSide, BoundsResult, check_sides
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import Payoff, SumSquaredIncrements, check_payoff
from deepquant.results import check_callback, warn_failure

__all__ = ["certified_bounds", "max_levels"]


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
    return side_result(sw, sign, t0, cert, sign * side.value, side.primal_residual,
                        "LP (HiGHS)", 0 if within else 1, f"chain LP solved by HiGHS: "
                        f"{side.message}", dict(eps=0.0, stages=0, iterations=0, drift=0.0))


def carry_up(coarse_x: np.ndarray, coarse_u: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Potentials of a coarse level at the finer points ``x``, two candidates (2, x.size):
    linear interpolation, and a cubic spline (not-a-knot) through the coarse values (linear
    through 3 points or fewer), both flat outside the coarse hull. Any potentials give a valid
    bound; the finer level starts from the one with the better certificate. Measured (Heston
    Asian, M = 150, the same 40 / 100 L-BFGS iterations on the 39-point level, certificates
    lowered to their lines): the spline carries the lower side better (0.02752 / 0.02794 ->
    0.02790 / 0.02822 at 150 points; the LP's 11 points carried to 39: 0.02231 -> 0.02440),
    the line the upper side after 100 iterations (0.037238 against 0.037328 at 150 points):
    where u bends smoothly the line leaves the finer points between two coarse ones below the
    curve, so they lift the envelopes; at a kink the spline overshoots."""
    line = np.interp(x, coarse_x, coarse_u)
    if coarse_x.size < 4:
        return np.stack([line, line])
    from scipy.interpolate import CubicSpline

    return np.stack([line, CubicSpline(coarse_x, coarse_u)(np.clip(x, coarse_x[0],
                                                                   coarse_x[-1]))])


def marginal_distance(coarse: Marginals, fine: Marginals, last_date: int) -> float:
    """L1 distance, summed over the dates 1..T, between the laws of ``coarse`` placed on the
    finer grid (its points are grid points of ``fine``) and those of ``fine``. A coarse level's
    plan read as a chain on the finer grid misses the finer marginals by at most this plus its
    own marginal error (triangle inequality); measured on the Heston grid of 150 points: 5.0
    from 76 points, 7.5 from 39, 9.4 from 11 (of at most 10: the dropped points' mass moves)."""
    idx = np.searchsorted(fine.grid, coarse.grid)
    placed = np.zeros_like(np.asarray(fine.weights, dtype=float))
    placed[:, idx] = coarse.weights
    return float(np.abs(placed - fine.weights)[1:last_date + 1].sum())


def max_levels(size: int) -> int:
    """How many times ``coarse_marginals`` can coarsen a grid of ``size`` points (every other
    point and the last: ``size // 2 + 1`` points) before the grid stops shrinking (2 points)."""
    levels = 0
    while size > 2:
        size = size // 2 + 1
        levels += 1
    return levels


def _multiscale_side(marginals: Marginals, payoff: Payoff, chain: AugmentedChain, sense: str, *,
                     levels: int | None, sum_grid_size, sum_mode, progress, top: bool = True,
                     role: str = "above", work_columns: float | None = None,
                     lp_budget: float | None = None, workers: int = 1,
                     relaxed: BoundsResult | None = None, **options) -> BoundSide:
    """``certify_side`` started from the same side on ``coarse_marginals`` (recursively).

    The grid is halved until the chain LP is small (``LP_START_COLUMNS``), and that level is
    solved exactly by HiGHS with the side's whole budget (``lp_budget``); the work level
    (``_levels``) starts straight from it, skipping the levels in between. The rest is split
    over the levels by ``_levels.coarse_share`` (``role`` and ``work_columns``, the work level's
    threshold from the top budget, carry its state down). The coarse levels are solved like
    any side (by column generation, warm-started, when small); their potentials, interpolated
    onto the fine supports (``carry_up``), are certified by one exact sweep (a valid bound whatever
    the grid); above the work level, the fine stages run only when ``FINE_SWEEPS`` smoothed
    sweeps (predicted as ``SOFT_OVER_HARD`` times the exact sweep just timed) fit in what is
    left. Until a fine stage gives one, the inner estimate is the coarse level's: a value on
    other (coarsened) marginals, so the gap is then an estimate of the bracket, not a bound
    (``info["inner_kind"]`` says so, and ``info["inner_marginal_bound"]`` bounds that chain's
    L1 miss of this grid's marginals, summed over dates: its error on its own grid plus
    ``marginal_distance``). ``top`` is False on the coarse levels (the user's own
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
        side = certify_side(chain, marginals, sense, progress=progress, **options)
        return adopt_relaxed(side, relaxed, chain, marginals, sense,
                             rtol=options.get("rtol", 1e-4)) if top else side
    t_start = time.perf_counter()
    budget = float(options.get("max_seconds", 600.0))
    if work_columns is None:
        work_columns = WORK_COLUMNS_PER_SECOND * budget
        lp_budget = budget
    T = chain.last_date

    def halved(m):
        coarse, _ = nest_supports(coarse_marginals(m), T)
        return coarse, build_chain(coarse, payoff, sum_mode=sum_mode,
                                   sum_grid_size=None if sum_grid_size is None
                                   else max(2, (int(sum_grid_size) + 1) // 2))

    coarse, cchain = halved(marginals)
    if levels is None and role == "above" and not is_above(cols, work_columns, role):
        # the work level starts straight from the LP level: a level between them costs its
        # share of the budget and gains nothing (measured, Heston M = 150, 10 s per side: the
        # Asian's 39-point stages end at 0.02797 whether started from its 20-point level's
        # 0.0257 or the 11-point LP's 0.0190, and its upper side tightens 0.0382 -> 0.0378
        # with the 20-point level's time; the lookback is unchanged)
        while lp_columns(cchain) > LP_START_COLUMNS and coarse.size > MIN_COARSE_SIZE:
            coarse, cchain = halved(coarse)
    copts = dict(options)
    copts["eps_end"] = max(options.get("eps_end", 1e-7), 1e-5)
    copts["rtol"] = max(options.get("rtol", 1e-4), 1e-3)
    coarse_is_lp = lp_columns(cchain) <= LP_START_COLUMNS and (levels is None or levels <= 1)
    share, crole = coarse_share(cols, work_columns, role, coarse_is_lp)
    # the user's grid above the work level keeps a share for its own (Markov) inner value
    # (and for polishing its certificate, after the inner value)
    polish = polish_share(T)
    reserve = (INNER_SHARE + polish) * budget if top and is_above(cols, work_columns, role) \
        else 0.0
    copts["max_seconds"] = share * (budget - reserve)
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
        pieces.append(carry_up(cgrid[ok], uc[t, ok], grid[xs]))
    opts = dict(options)
    opts.setdefault("eps_start", max(cres.info.get("eps", 0.0) / cres.info["scale"],
                                     LEVEL_EPS_START, opts.get("eps_end", 1e-7)))
    opts["max_seconds"] = max(budget - reserve - (time.perf_counter() - t_start), 0.0)
    # the coarse inner's chain read on this grid misses its marginals by at most its error on
    # the grid that gave it plus the move of the laws from that grid to this one (triangle)
    level = cres.info.get("inner_level", dict(marginals=coarse, resid=cres.primal_residual))
    start = dict(inner=cres.info["inner"],
                 resid=level["resid"] + marginal_distance(level["marginals"], marginals, T),
                 kind=f"coarse grid of {coarse.size} points ({cres.info['inner_kind']})")
    fine = certify_side(chain, marginals, sense, u0=np.concatenate(pieces, axis=1),
                        start=start,
                        min_sweeps=FINE_SWEEPS if is_above(cols, work_columns, role) else 0,
                        progress=progress, **opts)
    dist = marginal_distance(coarse, marginals, T)
    if fine.info["inner_kind"] != start["kind"]:  # a chain of this grid gave the inner value
        level = dict(marginals=marginals, resid=fine.primal_residual)
    info = dict(fine.info, inner_level=level, inner_marginal_bound=float(fine.primal_residual),
                coarse=dict(size=int(coarse.size), bound=cres.value, inner=cres.info["inner"],
                            gap=cres.gap, status=cres.status, seconds=cres.seconds,
                            marginal_distance=dist))
    fine = dataclasses.replace(fine, info=info)
    tols = dict(inner_resid_tol=options.get("inner_resid_tol", INNER_RESID_TOL),
                rtol=options.get("rtol", 1e-4))
    if top:  # the inner value's stages and the polish go on from the tighter certificate
        fine = adopt_relaxed(fine, relaxed, chain, marginals, sense, rtol=tols["rtol"])
    if top and not fine.primal_residual <= MARGINAL_TOL:
        # no plan on this grid's own marginals yet: a Markov chain on them, in what is left
        # a certificate of the relaxation is its optimum, which the polish has not moved in
        # any run measured: the inner value gets the polish's share as well then
        relaxed_cert = fine.info.get("relaxation", {}).get("adopted", False)
        plan = None if relaxed is None else relaxed.info["plans"].get(sense)
        two_date = (plan, relaxed.info["dates"][0]) if relaxed_cert and plan is not None \
            else None
        polish_time = polish * budget if reserve > 0 and not relaxed_cert else 0.0
        inner_time = budget - polish_time - (time.perf_counter() - t_start)
        if workers == 2 and reserve > 0 and inner_time > 0 and fork_available():
            # the path passes in a second process beside the polish, both to the deadline (a
            # final certificate, the relaxation's optimum: the two share the passes instead)
            fine = inner_beside_polish(fine, chain, marginals, sense,
                                       markov_seconds=MARKOV_SHARE * inner_time,
                                       max_seconds=budget - (time.perf_counter() - t_start),
                                       two_date=two_date, polish=not relaxed_cert, **tols)
            return dataclasses.replace(fine, seconds=time.perf_counter() - t_start)
        fine = adopt_markov_inner(fine, chain, marginals, sense, max_seconds=inner_time,
                                  two_date=two_date, **tols)
    if reserve > 0 and fine.status != "certified":
        fine = polish_side(fine, chain, marginals, sense,
                           max_seconds=budget - (time.perf_counter() - t_start), **tols)
    return dataclasses.replace(fine, seconds=time.perf_counter() - t_start)


def certified_bounds(marginals: Marginals, payoff: Payoff, *, sum_grid_size: int | None = None,
                     sum_mode: str = "auto", sides: tuple[str, ...] = ("lower", "upper"),
                     multiscale: int | None = None, progress=None, workers: int = 1,
                     **options) -> BoundsResult:
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
        warm-start the potentials, at most ``max_levels(marginals.size)``; default: halve until the chain LP has at most
        ``LP_START_COLUMNS`` columns and solve that level exactly (grids whose own LP is that
        small are solved directly).
    progress : callable, optional
        Called with a ``CertifiedProgress`` after every eps stage of every side.
    workers : {1, 2}
        Processes per side. With 2, on a grid above the work level the inner value's path
        passes run in a forked second process while the certificate is polished, each to the
        side's deadline, and that process then polishes the certificate too, with longer
        steps; the tighter certificate is kept (``beside.inner_beside_polish``). Where ``fork``
        is not available, and on grids the stages do not reach, as with 1.
    **options
        Passed to ``certify_side`` (``rtol``, ``eps_end``, ``max_seconds``, ...).
        ``max_seconds`` is each side's budget; it does not count the one-time compilation (or
        disk-cache load) of the numba kernels, done before the first side's clock starts
        (``envelope.warm_kernels``, once per process; its seconds are
        ``info["warmup_seconds"]``), so the bound does not depend on whether they were
        compiled before.

    Returns
    -------
    BoundsResult
        ``lower``/``upper`` the certified outer bounds (always valid bounds of the LP on the
        chain), per side ``gap`` = outer - inner and ``info["inner"]``; ``method="certified"``.
    """
    from deepquant.mmot.lp import check_convex_order

    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    check_payoff(payoff)
    if isinstance(payoff, SumSquaredIncrements):
        raise ValueError(f"payoff {payoff.name!r} is pairwise only; use method='lp' (its "
                         "bounds are model-free and cheap)")
    check_sides(sides)
    if multiscale is not None and (isinstance(multiscale, bool)
                                   or not isinstance(multiscale, int | np.integer)
                                   or not 0 <= multiscale <= max_levels(marginals.size)):
        raise ValueError(f"multiscale must be None or an integer in [0, "
                         f"{max_levels(marginals.size)}] (the coarsenings of a grid of "
                         f"{marginals.size} points), got {multiscale!r}")
    check_callback(progress, "progress")
    check_workers(workers)
    check_options(**options)  # before the chain is built
    # the kernels compiled or loaded outside every side's budget (0.0 after the first call)
    warmup = warm_kernels()
    t_build = time.perf_counter()
    T = payoff.last_date(marginals.n_dates)
    check_convex_order(marginals, range(1, T + 1))
    marginals, moved = nest_supports(marginals, T)
    chain = build_chain(marginals, payoff, sum_mode=sum_mode, sum_grid_size=sum_grid_size)
    build = time.perf_counter() - t_build
    # the bounds of the dates the payoff reads alone, if it skips some (``relaxed``): their
    # time is taken from the sides' budgets
    relaxed = relaxed_bounds(marginals, payoff, tuple(sides))
    if relaxed is not None and "max_seconds" in options:
        options["max_seconds"] = max(options["max_seconds"]
                                     - relaxed.info["seconds"] / len(sides), 0.0)
    res = {s: _multiscale_side(marginals, payoff, chain, s, levels=multiscale,
                               sum_grid_size=sum_grid_size, sum_mode=sum_mode,
                               progress=progress, workers=workers, relaxed=relaxed, **options)
           for s in sides}
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
                  support=[int(s.sum()) for s in chain.support], warmup_seconds=warmup,
                  relaxation=None if relaxed is None else dict(
                      dates=relaxed.info["dates"], lower=relaxed.lower, upper=relaxed.upper,
                      seconds=relaxed.info["seconds"])),
    )
    warn_failure(result, "certified bounds")
    return result
