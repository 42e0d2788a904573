"""Model-free bounds from the bid-ask quotes themselves (DESIGN §2.3, §2.6, §2.8).

The bounds are taken over EVERY martingale law of (X_0 = 1, X_1, ..., X_S) on a moneyness grid
whose option prices at each quoted strike lie inside the quoted band at every chosen expiry:

    bid_i <= E[c_i(X_{d_i})] <= ask_i,     c_i(x) = (x - k_i)^+ (call) or (k_i - x)^+ (put),

in the units of ``deepquant.market.calibrate``: k = K / F, prices divided by D F (undiscounted
prices of payoffs on X = S_t / F(0, t)). Date 0 is today (X_0 = 1); dates 1..S are the expiries.
A zero (or missing) bid gives no lower constraint (a call or put is worth >= 0 anyway); a missing
ask (one-sided quote) gives no upper constraint. From a chain file both kinds are used: the
loader keeps them apart from the two-sided quotes (``deepquant.market.quotes.OneSidedQuotes``)
and ``load_bands`` adds them to the bands, while the calibration keeps its two-sided filter.

Dual (upper side; the lower side is minus the upper side of -f): a static portfolio of the listed
options, a_i units of quote i, bought at the ask when a_i > 0 and sold at the bid when a_i < 0,
plus cash and dynamic positions h_t(x, s) in the underlying (forward positions are affine in X_t
and are absorbed into h), such that

    sum_i a_i c_i(X_{d_i}) + cash + sum_t h_t(X_t, S_t) (X_{t+1} - X_t) >= f     on every path.

For FIXED positions a, the cheapest h and cash follow by one backward sweep of concave envelopes
over the augmented chain (``deepquant.mmot.envelope``), whatever the laws: so cost(a) + cash is a
VALID upper bound for any a, certified exactly. Two methods:

``"lp"``         the exact LP on the augmented chain (``deepquant.mmot.lp.build_chain_lp``) with
                 the marginal equality rows replaced by free laws l_t(y) >= 0 and the quote
                 inequalities on them (small grids). Its optimal positions are the duals of the
                 quote rows; the hedge is the sweep of those positions (equal to the LP value
                 by strong duality, which the result reports).
``"certified"``  min over a of cost(a) + sweep(a), smoothed (entropic envelope, reference kernel
                 from a full-support law, eps-scaling), split long/short variables p, q >= 0
                 with a = p - q optimised by L-BFGS-B; every stage certified by the exact sweep.
                 The smoothed chain's laws give an inner estimate and their band violation.

A band that no law on the grid satisfies (static arbitrage in the quotes, or a grid too coarse
for tight spreads) is found by the band-violation LP of ``check_bands`` (the band term of the
calibration program, ``deepquant.market.calibrate``, with lam = 0) and reported as a
``ValueError`` naming the expiry and the strikes; ``repair="minimal"`` widens exactly those
bands to the closest arbitrage-free prices, ``repair="calibration"`` widens every band to
contain the calibrated marginals' prices (the fit the calibration offers).

The default grid (``quote_grid``) spans the quoted strikes, so a narrow ``fit_range`` gives a
narrow grid; a bid that no law of mean 1 on that span can reach (``quote_bands.span_misses``),
however fine the grid, is then a ``ValueError`` naming ``fit_range``. A repair that moves the
bands by more than ``MAX_REPAIR_WIDENING`` of the quotes' total price gives bounds of other
prices than the quoted ones: the result says ``success=False`` (status ``"repair-too-wide"``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import numpy as np
from scipy import optimize, sparse
from threadpoolctl import threadpool_limits

from deepquant.market.marginals import Marginals
from deepquant.mmot.beside import fork_available, quote_inner_beside_polish
from deepquant.mmot.highs import check_highs_options, cost_scale
from deepquant.mmot.lp import build_chain_lp
from deepquant.mmot.multiscale import COARSE_SHARE, FINE_SWEEPS
from deepquant.mmot.polish import SIDE_MAX_STEPS, polish_positions
from deepquant.mmot.quote_bands import (
    QuoteBands,
    band_changes,
    check_bands,
    check_grid_span,
    check_quote_grid,
    describe_span_misses,
    load_bands,
    quote_grid,
    span_misses,
)
from deepquant.mmot.quote_inner import adopt_quote_markov, reinner_side
from deepquant.mmot.quote_problem import (
    QuoteHedge,
    _Problem,
    _quote_hedge,
    verify_quote_hedge,
    with_positions,
)
from deepquant.mmot.quotes_certified import (
    BAND_TOL,
    CERTIFIED_OPTIONS,
    RTOL,
    _certified_side,
    _check_certified_options,
)
from deepquant.mmot.relaxed import quote_relaxation
from deepquant.mmot.result import BoundSide, BoundsResult, check_sides, failed_side
from deepquant.payoffs import Payoff, SumSquaredIncrements, check_payoff
from deepquant.results import warn_failure

__all__ = ["QuoteBands", "QuoteHedge", "bounds_from_quotes", "check_bands", "coarse_grid", "load_bands",
           "quote_grid", "verify_quote_hedge", "REPAIRS", "CERTIFIED_OPTIONS",
           "MAX_REPAIR_WIDENING"]

REPAIRS = (None, "minimal", "calibration")
MAX_REPAIR_WIDENING = 0.1
"""Largest total band widening of a repair, as a fraction of the quotes' total price (the sum
over the quotes used of the ask, or of the bid where there is no ask), for a result that says
``success=True``: the price-weighted mean of each quote's widening over its price. Measured on
valid inputs (``spx_options_normalized.csv`` at 30d..150d, the synthetic chain, the SPX
excerpt of June 2023; grids of 5 to 25 points, thinned or not, both repairs): at most 0.049
(SPX on a 5-point grid, not thinned), 0.011 from 9 points on. Fit ranges too narrow for the
laws (which ``span_misses`` now rejects first) needed 0.036 (0.95..1.05 on that excerpt), 0.18
(0.97..1.03) and 0.96 (0.999..1.001: the bids lowered by 96% of the prices)."""
METHODS = ("lp", "certified")
LP_METHODS = ("highs", "highs-ipm", "highs-ds")
"""``scipy.optimize.linprog`` methods for the exact LP sides (HiGHS's choice, interior point
with crossover, dual simplex)."""


# ---------------------------------------------------------------------------- exact LP
def _lp_side(prob: _Problem, sense: str, highs_options: dict | None,
             lp_method: str = "highs") -> BoundSide:
    """The chain LP with free laws l_t and quote rows; positions = duals of the quote rows."""
    t0 = time.perf_counter()
    sign = 1.0 if sense == "upper" else -1.0
    lp = build_chain_lp(prob.chain, prob.ref)
    n_pi = lp.a_eq.shape[1]
    b_eq = lp.b_eq.copy()
    rows, cols = [], []
    lcol = []  # first column of l_{t+1}
    c0 = n_pi
    for t in range(prob.T):
        r0 = lp.rows["marg"][t]
        ny = lp.ys[t].size
        b_eq[r0:r0 + ny] = 0.0
        rows.append(r0 + np.arange(ny))
        cols.append(c0 + np.arange(ny))
        lcol.append(c0)
        c0 += ny
    n_col = c0
    extra = sparse.csr_matrix((-np.ones(n_col - n_pi), (np.concatenate(rows),
                                                         np.concatenate(cols))),
                              shape=(lp.a_eq.shape[0], n_col))
    a_eq = (sparse.hstack([lp.a_eq, sparse.csr_matrix((lp.a_eq.shape[0], n_col - n_pi))])
            + extra).tocsr()
    ub_r, ub_c, ub_v, b_ub, kind = [], [], [], [], []
    r = 0
    for t, mt in enumerate(prob.mats):
        ys = lp.ys[t]
        q0 = prob.off[t]
        for i in range(mt.shape[0]):
            for sgn, bnd, ok in ((1.0, prob.ask[q0 + i], np.isfinite(prob.ask[q0 + i])),
                                 (-1.0, -prob.bid[q0 + i], prob.bid[q0 + i] > 0)):
                if not ok:
                    continue
                ub_r.append(np.full(ys.size, r))
                ub_c.append(lcol[t] + np.arange(ys.size))
                ub_v.append(sgn * mt[i, ys])
                b_ub.append(bnd)
                kind.append((q0 + i, sgn))
                r += 1
    a_ub = sparse.csr_matrix((np.concatenate(ub_v) if ub_v else np.zeros(0),
                              (np.concatenate(ub_r) if ub_r else np.zeros(0, int),
                               np.concatenate(ub_c) if ub_c else np.zeros(0, int))),
                             shape=(r, n_col))
    cost = np.concatenate([-sign * lp.cost, np.zeros(n_col - n_pi)])
    opts = check_highs_options(highs_options)
    scale = cost_scale(cost)  # solved on cost / scale: its value and duals scaled back
    res = optimize.linprog(cost / scale, A_ub=a_ub if r else None,
                           b_ub=np.array(b_ub) if r else None, A_eq=a_eq, b_eq=b_eq,
                           bounds=(0, None), method=lp_method, options=opts)
    if res.status != 0:
        return failed_side(res.status, res.message, time.perf_counter() - t0)
    z = res.x
    primal = float(max(np.max(np.abs(a_eq @ z - b_eq)),
                       np.max(a_ub @ z - b_ub, initial=0.0) if r else 0.0, -z.min()))
    a = np.zeros(prob.off[-1])
    marg = scale * res.ineqlin.marginals if r else np.zeros(0)
    for (i, sgn), mg in zip(kind, marg):
        a[i] += -mg if sgn > 0 else mg  # ask rows: units bought; bid rows: units sold
    a = np.where((a > 0) & ~np.isfinite(prob.ask), 0.0, a)
    value = -float(res.fun) * scale
    hedge = _quote_hedge(prob, a, sense)
    gap = abs(sign * hedge.bound - value)
    laws = [z[lcol[t]:lcol[t] + lp.ys[t].size] for t in range(prob.T)]
    return BoundSide(sign * value, True, "optimal", res.message, time.perf_counter() - t0,
                     primal, 0.0, gap, None, None,
                     dict(hedge=hedge, hedge_bound=hedge.bound, positions=hedge.positions,
                          laws=laws, rows=dict(eq=a_eq.shape[0], ub=r), cols=n_col))


# ---------------------------------------------------------------------------- coarse start
COARSE = 25
"""Default size of the coarse grid whose certified positions start a certified side (grids
of at least twice as many points; ``coarse=None`` turns it off)."""


INNER_SHARE = 0.2
"""Share of a side's time budget kept, after a coarse start, for the rigorous inner value on
the fine grid (``quote_inner.quote_markov_inner``); the coarse solve gets ``COARSE_SHARE`` of
the rest. Measured (SPX, M = 150, 10 s per side, load 3.5-4), 0.2 against 0.4: the Markov
values of five sides differ by < 7e-5 (the lookback's upper side, whose fine stages left it
2 s, by 1e-3), while the coarse solves' bounds lose up to 5e-4 with 5.4 s instead of 7.2 s
(Asian upper 0.02374 -> 0.02426; 0.3: 0.02425)."""


POLISH_SHARE = 0.2
"""Share of a side's time budget kept, after a coarse start and the inner value, for polishing
the positions by subgradient steps on the exact bound (``polish.polish_positions``)."""

REINNER_SHARE = 0.1
"""Share of a side's time budget kept, out of the polish's, for a second inner value started from
the polished positions (``quote_inner.reinner_side``): the laws that price them best, their
Markov chain and its path passes. The first inner value starts from the positions before the
polish, which moves the bound by up to 9% (the Asian's lower side); the laws chosen by the
polished positions lie nearer the optimum's. Measured offline from the 10 s sides' polished
positions (SPX, M = 150, three processes on two cores): the lookback's upper inner value
0.054217 -> 0.054778 against the bound 0.054855, the straddle's upper 0.076828 -> 0.077294
(bound 0.077410), its lower 0.044959 -> 0.044929, the lookback's lower 0.034082 -> 0.034066, the
Asian's upper 0.023176 -> 0.023182; the Asian's lower worse (0.016465 -> 0.016500: kept as it
was); 1.2-3.4 s each. The polish gives up that time: with its dilated steps, 0.35 of the budget
against 0.2 moved no bound by more than 1.3e-5."""


def coarse_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """Every r-th point of ``grid`` through 1 (r the largest step giving at least ``size``
    points), with the two ends of ``grid`` added: a subgrid, so a law on it is a law on
    ``grid``, covering the same range, so no quote of the fine grid is left out."""
    i1 = int(np.argmin(np.abs(grid - 1.0)))
    r = max(1, (grid.size - 1) // (size - 1))
    idx = np.union1d(np.arange(i1 % r, grid.size, r), [0, grid.size - 1])
    return grid[idx]


def _work(prob: _Problem) -> float:
    """Size of one smoothed sweep: states times M squared (measured on the SPX chain, a sweep
    at M = 145 took 5 s against 14 ms at M = 25, about this ratio; states x M underestimates
    it tenfold)."""
    return float(sum(prob.chain.n_states[:-1])) * prob.grid.size ** 2


def _map_positions(prob: _Problem, coarse: _Problem, positions) -> np.ndarray:
    """Positions of the coarse problem's quotes as positions of ``prob``'s quotes (matched by
    expiry, strike and type; a quote the fine problem does not use gets none)."""
    index = {}
    for j, s in enumerate(prob.used):
        for q, (k, c) in enumerate(zip(prob.bands.k[s], prob.bands.is_call[s])):
            index.setdefault((s, float(k), bool(c)), prob.off[j] + q)
    a = np.zeros(prob.off[-1])
    for j, s in enumerate(coarse.used):
        for q, (k, c) in enumerate(zip(coarse.bands.k[s], coarse.bands.is_call[s])):
            i = index.get((s, float(k), bool(c)))
            if i is not None:
                a[i] += positions[j][q]
    return a


def _certified_with_start(prob: _Problem, side: str, sum_mode: str, options: dict) -> BoundSide:
    """A certified side, started (when the grid has at least twice ``coarse`` points and no
    ``a0`` is given) from the positions of the same side on a coarse subgrid (its quotes
    thinned, its bands repaired minimally if the subgrid cannot meet them), solved with
    ``COARSE_SHARE`` of the time budget: their exact sweep on the fine grid is already a valid
    bound (the option positions of a coarse solution carry over; potentials would not). The
    coarse inner value and band violation are the inner estimate until a fine stage does
    better; the coarse solve is reported in ``info["coarse"]``. The fine grid's smoothed
    stages get the rest of the budget but ``INNER_SHARE`` (most of it when the coarse solve
    reaches its rtol early), and are skipped when ``FINE_SWEEPS`` smoothed sweeps (predicted
    from the coarse ones) would not fit in it: the first sweep is at the coarse positions
    themselves. What is left then goes to a rigorous inner value on the fine grid
    (``quote_inner.adopt_quote_markov``): a coarse chain is no law of the fine problem."""
    options = dict(options)
    size = options.pop("coarse", COARSE)
    workers = options.pop("workers", 1)
    if size is None or options.get("a0") is not None or prob.grid.size < 2 * size:
        return _certified_side(prob, side, **options)
    t0 = time.perf_counter()
    budget = float(options.get("max_seconds", 600.0))
    reserve = (INNER_SHARE + POLISH_SHARE) * budget if np.isfinite(budget) else 0.0
    sub = {k: v for k, v in options.items() if k != "max_seconds"}
    cg = coarse_grid(prob.grid, size)
    cres = bounds_from_quotes(prob.bands, prob.payoff, grid=cg, method="certified",
                              repair="minimal", thin=True, sum_mode=sum_mode, sides=(side,),
                              max_seconds=COARSE_SHARE * (budget - reserve), coarse=None, **sub)
    cside = getattr(cres, f"{side}_side")
    a0 = _map_positions(prob, cres.info["problem"], cside.info["positions"])
    # the exact LP of the expiries the payoff reads alone, if it skips some (``relaxed``)
    relaxation = quote_relaxation(prob, side)
    start = dict(inner=cside.info["inner"], band_violation=cside.info["band_violation"],
                 kind=f"coarse grid of {cg.size} points ({cside.info['inner_kind']})")
    left = budget - reserve - (time.perf_counter() - t0)
    # one smoothed sweep on the fine grid, predicted from the coarse ones
    sweep = cside.seconds / max(cside.info.get("evaluations", 0), 1) * _work(prob) \
        / _work(cres.info["problem"])
    options["max_seconds"] = left if FINE_SWEEPS * sweep < left else 0.0
    fine = _certified_side(prob, side, a0=a0, start=start, **options)
    info = dict(fine.info, coarse=dict(size=int(cg.size), bound=cside.value,
                                       inner=cside.info["inner"], status=cside.status,
                                       band_violation=cside.info["band_violation"],
                                       band_widening=cres.info["band_widening"],
                                       seconds=cside.seconds))
    polish_time = POLISH_SHARE * budget if np.isfinite(budget) else 0.0
    tols = dict(band_tol=options.get("band_tol", BAND_TOL), rtol=options.get("rtol", RTOL))
    fine = dataclasses.replace(fine, info=info)
    if relaxation is not None:  # the inner value and the polish go on from the tighter bound
        best, report = relaxation
        report["adopted"] = bool(best[0] < (1.0 if side == "upper" else -1.0) * fine.value)
        fine = with_positions(fine, prob, side, best, info=dict(fine.info, relaxation=report),
                              note=f"bound from the relaxation to dates {report['dates']}",
                              **tols)
        if report["adopted"]:  # its optimum, which the polish has not moved in any run
            polish_time = 0.0  # measured: the inner value gets the polish's share then
    inner_time = budget - polish_time - (time.perf_counter() - t0)
    reinner = REINNER_SHARE * budget if np.isfinite(budget) else 0.0
    if workers == 2 and np.isfinite(budget) and inner_time > 0 and fork_available():
        # the path passes in a second process beside the polish, both to the deadline
        fine = quote_inner_beside_polish(
            fine, prob, side, inner_seconds=inner_time,
            max_seconds=budget - reinner - (time.perf_counter() - t0), **tols)
    else:
        fine = adopt_quote_markov(fine, prob, side, max_seconds=inner_time, **tols)
        if fine.status != "certified" and np.isfinite(budget):
            fine = _polish_side(fine, prob, side,
                                max_seconds=budget - reinner - (time.perf_counter() - t0),
                                **tols)
    if fine.status != "certified" and np.isfinite(budget):
        fine = reinner_side(fine, prob, side,
                            max_seconds=budget - (time.perf_counter() - t0), **tols)
    return dataclasses.replace(fine, seconds=time.perf_counter() - t0)


def _polish_side(fine: BoundSide, prob: _Problem, side: str, *, max_seconds: float,
                 rtol: float, band_tol: float) -> BoundSide:
    """``fine`` with its positions polished by subgradient steps on the exact bound
    (``polish.polish_positions``, the side's inner value as the floor) within ``max_seconds``
    and ``polish.SIDE_MAX_STEPS``: the better bound, its hedge and gap; ``info["polish"]`` reports the attempt (start and end
    in the payoff's sign). Certified only when the gap is within ``rtol`` and the inner value's
    chain prices the bands within ``band_tol`` (``fine.primal_residual``, as the stages ask):
    the bound may otherwise have closed on an inner value beyond the optimum."""
    sign = 1.0 if side == "upper" else -1.0
    start = (sign * fine.value, np.concatenate(fine.info["positions"]), fine.info["violation"])
    best, report = polish_positions(prob, sign, start, sign * fine.info["inner"],
                                    max_seconds=max_seconds, max_steps=SIDE_MAX_STEPS)
    info = dict(fine.info, polish=dict(report, start=sign * report["start"],
                                       value=sign * report["value"]))
    return with_positions(fine, prob, side, best, rtol=rtol, band_tol=band_tol, info=info)


def _fitted_rows(fitted: Marginals, bands: QuoteBands) -> np.ndarray:
    """The (S, M) weights of ``fitted`` at the expiries of ``bands`` (a first row at time 0,
    the point mass at 1, is date 0 and left out)."""
    w = np.asarray(fitted.weights, dtype=float)
    times = np.asarray(fitted.times, dtype=float)
    if w.shape[0] == bands.n_expiries + 1 and times[0] == 0.0:
        w, times = w[1:], times[1:]
    if w.shape[0] != bands.n_expiries or not np.allclose(times, bands.times, rtol=0,
                                                         atol=1e-6):
        raise ValueError(f"fitted marginals at times {np.round(times, 6).tolist()} do not match "
                         f"the {bands.n_expiries} expiries of the quotes at times "
                         f"{np.round(bands.times, 6).tolist()}")
    return w


# ---------------------------------------------------------------------------- entry point
def bounds_from_quotes(source, payoff: Payoff, *, expiries: Sequence[str] | None = None,
                       grid: np.ndarray | None = None, grid_size: int = 15, method: str = "lp",
                       repair: str | None = None, fitted: Marginals | None = None,
                       fit_range=(0.5, 1.6), thin: bool = False,
                       sum_mode: str = "auto", sum_grid_size: int | None = None,
                       sides: tuple[str, ...] = ("lower", "upper"),
                       highs_options: dict | None = None, lp_method: str = "highs",
                       **certified_options) -> BoundsResult:
    """Lower and upper bounds of E[payoff] over all martingale laws on the grid that price every
    quote inside its band (see the module docstring).

    Parameters
    ----------
    source : QuoteBands, sequence of SliceQuotes, CalibrationResult, path(s) or OptionChain
        The quotes. A path or chain needs ``expiries`` (forwards and discounts by put-call
        parity, quotes with K/F in ``fit_range``) and brings every quote with a price bound:
        two-sided ones, zero or missing bids with an ask (upper constraint only) and bids
        without an ask (lower constraint only), see ``load_bands``. A ``CalibrationResult``
        brings the two-sided quotes the calibration used (its filter drops the others) and its
        fitted marginals (used for the smoothing's reference and ``repair="calibration"``); to
        use the one-sided quotes too, pass ``load_bands(...)[0]`` and ``fitted=``.
    payoff : Payoff
        On dates 0..S (0 = today, X_0 = 1; the expiries are dates 1..S).
    grid : ndarray, optional
        Moneyness grid with 1 on it (default ``quote_grid(bands, grid_size)``, or the
        calibration's grid). Quotes with k outside (grid[0], grid[-1]) are left out
        (``info["dropped_quotes"]``).
    method : {"lp", "certified"}
    repair : {None, "minimal", "calibration"}
        What to do with bands that no law on the grid satisfies: raise (default), widen the
        violated bands to the closest arbitrage-free prices, or widen every band to contain the
        calibrated marginals' prices (needs ``fitted`` or a ``CalibrationResult`` on the grid).
    fitted : Marginals, optional
        Fitted laws on ``grid``: one row per expiry, or with a first row at time 0 that is the
        point mass at 1 (date 0, as ``deepquant.demo.coarsen_marginals`` gives). The prices
        ``repair="calibration"`` widens the bands to, and the smoothing's reference. Default:
        the marginals of a ``CalibrationResult`` source.
    thin : bool
        Keep per expiry and type only the quote nearest each grid point
        (``QuoteBands.thinned``), for coarse grids.
    sum_mode, sum_grid_size
        Running-sum state (``deepquant.mmot.augment.build_chain``).
    highs_options : dict, optional
        HiGHS options of the exact LP (over ``deepquant.mmot.highs.DEFAULT_HIGHS_OPTIONS``).
    lp_method : {"highs", "highs-ipm", "highs-ds"}
        ``scipy.optimize.linprog`` method of the exact LP. Measured on the demo's 13-point grid
        (5 expiries, 100 quotes): "highs-ipm" (interior point, then crossover to a vertex, so
        the quote-row duals are exact) solved the Asian call's two sides in 4.2 s against 9.2 s
        for "highs", with the same bounds to 1e-16.
    sides : tuple of {"lower", "upper"}
        The sides to solve (a side not asked for has value NaN, status "not_requested").
    **certified_options
        Method "certified" only (``CERTIFIED_OPTIONS``): ``eps_start``, ``eps_end``,
        ``eps_factor`` (the eps schedule, relative to the payoff's scale), ``band``,
        ``max_iter`` (L-BFGS-B iterations per stage), ``rtol``, ``band_tol``, ``max_seconds``
        (time budget per side, checked before every smoothed sweep; the side then ends with
        the best certified bound so far), ``a0`` (starting positions, one per quote used),
        ``coarse`` (the coarse start's size, or None) and ``workers`` (1 or 2: with 2 and a
        coarse start, the inner value's path passes run in a forked second process beside
        the positions' polish, ``beside.quote_inner_beside_polish``).
        Unknown names raise ``TypeError``, out-of-range values ``ValueError``.

    Returns
    -------
    BoundsResult
        ``method`` "quotes-lp" or "quotes-certified"; per side ``info["hedge"]`` (a
        ``QuoteHedge``: positions, cash, h) and ``info["positions"]``; ``info["problem"]``;
        ``info["no_bid"]`` and ``info["no_ask"]``: quotes used with no lower (bid 0) and no
        upper (no ask) constraint; ``info["band_widening"]`` and ``info["widened_quotes"]``:
        total and count of the repair's band changes; ``info["band_widening_share"]``: that
        total over the quotes' total price (above ``MAX_REPAIR_WIDENING``: ``success=False``,
        status ``"repair-too-wide"``).

    Raises
    ------
    ValueError
        Besides bad arguments: bands that no law on the grid meets with ``repair=None``; on
        the default grid (it spans the quoted strikes, so ``fit_range`` sets it for a chain),
        a bid that no law of mean 1 on its span reaches (``quote_bands.span_misses``).
    """
    from deepquant.market.calibrate import CalibrationResult

    check_payoff(payoff)
    if isinstance(payoff, SumSquaredIncrements):
        raise ValueError(f"payoff {payoff.name!r} is pairwise only: its bounds do not depend on "
                         "the quotes beyond the marginals; use deepquant.mmot.bounds")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if repair not in REPAIRS:
        raise ValueError(f"repair must be one of {REPAIRS}, got {repair!r}")
    if lp_method not in LP_METHODS:
        raise ValueError(f"lp_method must be one of {LP_METHODS}, got {lp_method!r}")
    check_sides(sides)
    _check_certified_options(certified_options)
    if certified_options and method != "certified":
        raise ValueError(f"options {sorted(certified_options)} apply to method='certified' only, "
                         f"got method={method!r}")
    if grid is None and (isinstance(grid_size, bool)
                         or not isinstance(grid_size, int | np.integer)):
        raise TypeError(f"grid_size must be an integer, got {grid_size!r}")
    t_build = time.perf_counter()
    explicit = fitted is not None
    own_grid = grid is None  # the default grid: it spans the quoted strikes
    if explicit and not isinstance(fitted, Marginals):
        raise TypeError(f"fitted must be a Marginals, got {type(fitted).__name__}")
    span_advice = ("pass a grid= that spans the laws' support (the default grid spans the "
                   "quoted strikes)")
    if isinstance(source, QuoteBands):
        bands = source
    elif isinstance(source, CalibrationResult):
        bands = QuoteBands.from_quotes(source.quotes)
        fitted = source.marginals if fitted is None else fitted
        grid = fitted.grid if grid is None else grid
        own_grid = False  # the calibration's grid, not the strikes' span
    elif isinstance(source, str | os.PathLike) or hasattr(source, "slices"):
        if isinstance(expiries, str):
            expiries = [e.strip() for e in expiries.split(",") if e.strip()]
        if not expiries:
            raise ValueError("expiries must be given with a chain path, got none")
        bands, _ = load_bands(source, expiries, fit_range=fit_range)
        span_advice = (f"widen fit_range (got {tuple(fit_range)!r}): the default grid spans the "
                       "quoted strikes with K/F in it")
    else:
        try:
            bands = QuoteBands.from_quotes(source)
        except (TypeError, AttributeError):
            raise TypeError("source must be QuoteBands, a CalibrationResult, a chain path or "
                            "OptionChain, or a sequence of SliceQuotes, got "
                            f"{type(source).__name__}") from None
    if not isinstance(thin, (bool, np.bool_)):
        raise TypeError(f"thin must be a bool, got {thin!r}")
    grid = check_quote_grid(quote_grid(bands, grid_size) if grid is None else grid)
    try:
        payoff.last_date(bands.n_expiries + 1)
    except ValueError as exc:
        raise ValueError(f"payoff {payoff.name!r} does not fit the {bands.n_expiries} expiries "
                         f"of the quotes (dates 0..{bands.n_expiries}, 0 = today): {exc}") from None
    bands, dropped = bands.restrict(grid[0], grid[-1])
    if own_grid:
        check_grid_span(bands, grid, advice=span_advice)
    if thin:
        n0 = sum(k.size for k in bands.k)
        bands = bands.thinned(grid)
        dropped += n0 - sum(k.size for k in bands.k)
    fitted_w = None
    if fitted is not None:
        if fitted.size != grid.size or not np.allclose(fitted.grid, grid):
            if repair == "calibration" or explicit:
                raise ValueError(f"fitted marginals on {fitted.size} points "
                                 f"[{fitted.grid[0]:.4g}, {fitted.grid[-1]:.4g}] are not on the "
                                 f"grid of {grid.size} points [{grid[0]:.4g}, {grid[-1]:.4g}]; "
                                 "repair='calibration' needs the fitted laws on the grid")
        else:
            fitted_w = _fitted_rows(fitted, bands)
    original = bands
    if repair == "calibration":
        if fitted_w is None:
            raise ValueError("repair='calibration' needs a CalibrationResult as source or "
                             "fitted= marginals on the grid")
        bands = bands.widened([bands.payoffs(s, grid) @ fitted_w[s]
                               for s in range(bands.n_expiries)])
    check = check_bands(bands, grid)
    if not check.feasible:
        if repair is None:
            where = "; ".join(f"expiry {lab}: " + ", ".join(items[:6])
                              + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
                              for lab, items in check.culprits(bands))
            misses = span_misses(bands, grid)
            hint = ("; or use a finer grid" if not misses else
                    f". But {describe_span_misses(misses, grid)}")
            raise ValueError(
                f"the bid-ask bands admit no arbitrage-free law on this grid of {grid.size} "
                f"points [{grid[0]:.4g}, {grid[-1]:.4g}] (total band violation "
                f"{check.total:.3g} at the closest law): {where}. Repair: repair='minimal' "
                "widens these bands to the closest arbitrage-free prices (the calibration's "
                "band fit, deepquant.market.calibrate), repair='calibration' to the calibrated "
                f"marginals' prices{hint}")
        bands = bands.widened(list(check.prices))
    prob = _Problem(bands, grid, payoff, fitted_w, sum_mode, sum_grid_size, closest=check.laws)
    build = time.perf_counter() - t_build
    out = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for s in sides:
            if method == "lp":
                out[s] = _lp_side(prob, s, highs_options, lp_method)
            else:
                out[s] = _certified_with_start(prob, s, sum_mode, certified_options)
    missing = BoundSide(float("nan"), True, "not_requested", "not requested", 0.0)
    lo, up = out.get("lower", missing), out.get("upper", missing)
    ok = all(r.success for r in out.values())
    if method == "lp":
        status = "optimal" if ok else "failed"
    else:
        status = ("certified" if all(r.status == "certified" for r in out.values())
                  else "certified-wide")
    msg = "; ".join(f"{k}: {r.message}" for k, r in out.items())
    widening, n_widened, price = band_changes(original, bands)
    share = widening / max(price, 1e-300)
    if share > MAX_REPAIR_WIDENING:
        ok, status = False, "repair-too-wide"
        msg = (f"repair={repair!r} widened the bid-ask "
               f"bands by {widening:.3g} in total, {share:.1%} of the quotes' total price "
               f"{price:.3g} (more than MAX_REPAIR_WIDENING = "
               f"{MAX_REPAIR_WIDENING:.0%}): these are bounds for other prices than the quoted "
               f"ones; check the quotes, the grid's span and its resolution; {msg}")
    result = BoundsResult(
        lower=lo.value, upper=up.value, method=f"quotes-{method}", status=status, success=ok,
        message=msg, seconds=dict(lower=lo.seconds, upper=up.seconds, build=build),
        sizes=dict(grid=int(grid.size), quotes=int(prob.off[-1]),
                   states=int(sum(prob.chain.n_states))),
        lower_side=out.get("lower"), upper_side=out.get("upper"), exact=prob.chain.exact,
        structure="augmented",
        info=dict(problem=prob, bands=bands, dropped_quotes=dropped,
                  no_bid=int(sum(np.sum(original.bid[s] <= 0) for s in prob.used)),
                  no_ask=int(sum(np.sum(~np.isfinite(original.ask[s])) for s in prob.used)),
                  repaired=not check.feasible or repair == "calibration",
                  band_widening=widening, band_widening_share=share,
                  widened_quotes=n_widened,
                  band_check=check, expiries_used=[bands.labels[s] for s in prob.used]),
    )
    warn_failure(result, "quote bounds")
    return result
