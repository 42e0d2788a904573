"""Arbitrage-free marginals from an option chain: one convex program over all chosen expiries.

Seed 001 §7.1 calibrates each maturity alone by least squares to mid prices plus a TV penalty.
Mid prices of SPX are not arbitrage-free at 5-point strike spacing (data set quality report: about
14% of near-the-money mid butterflies are negative), and slice-by-slice fits can cross in convex
order. Here instead, for S chosen slices with forwards F_s and discount factors D_s (put–call
parity, ``deepquant.market.parity.fit_parity``), every quote is normalized to forward moneyness,

    k = K / F_s,   bid' = bid / (D_s F_s),   ask' = ask / (D_s F_s),

and one convex quadratic program is solved for weights W (S, M) on a common moneyness grid x (M,):

    minimise    sum_i (u_i + v_i)  +  lam * sum_s sigma_s^3 sum_j (p_{s,j+1} - p_{s,j})^2 / dx_j
    subject to  W >= 0,  sum_j W_sj = 1,  sum_j W_sj x_j = 1           (probability, mean 1)
                bid'_i - h_i u_i <= model_i(W) <= ask'_i + h_i v_i,     (bid-ask band)
                u, v >= 0
                C_{s+1}(x_j) >= C_s(x_j) for every grid point x_j, s     (convex order)

where model_i is E[(X - k_i)^+] for a call and E[(k_i - X)^+] for a put under row s of W,
h_i = (ask'_i - bid'_i) / 2 is the half-spread (so u, v count violations in half-spreads;
carrying h in the constraints rather than 1/h in the objective keeps the program well scaled
when spreads are tiny), dx_j = x_{j+1} - x_j,
p_{s,j} = W_sj / cell_j is the density (cell_j the width of the Voronoi cell of x_j, with
p = 0 beyond the grid, which also penalises mass piled on the end points), and sigma_s = the ATM
total volatility of slice s (making each slice's smoothness term dimensionless: for a Gaussian
of standard deviation sigma, sigma^3 int p'^2 = 1 / (4 sqrt(pi))). With lam small the band term
dominates: quotes are repriced inside [bid, ask] wherever that is possible, and among those
marginals the smoothest one is chosen (and the program has a unique solution).

The variables are the call values C_s(x_j) at the grid points; the weights are their second
differences, W = A C + e_0 (``deepquant.market.grid.second_difference``), so W >= 0 is a banded constraint, the rows
sum to 1 identically, C_s(x_0) = 1 - x_0 and C_s(x_{M-1}) = 0 fix the mean at 1, and the convex
order on the grid (exact for laws on the grid, see ``deepquant.market.marginals``) is one sparse
inequality per point. The call curve of a law on the grid is piecewise linear with kinks at grid
points, so a quote at any strike is an exact linear interpolation of C. Everything is banded,
which keeps Clarabel's factorizations cheap (an earlier version with separate weight, tail-mass
and call variables linked by recursions took 6-10x longer on 43 slices). Solved by Clarabel
through cvxpy.

The solver's weights are cleaned so that ``Marginals`` validation passes to 1e-9: tiny negative
weights clipped, rows renormalised, the mean restored by moving a tiny mass to an end point, and
convex order restored by mixing a later row with the largest law of mean 1 on the grid (mass at
x_0 and x_{M-1}); the L1 size of each change is reported (``CalibrationResult.cleanup_l1``).

Per-slice reports give the fraction of quotes inside [bid, ask], the largest violation, and the
confidence half-width of seed 001 Cor. 6.3, delta(s, alpha, M) = (s / 2) sqrt(2 (1 + log(2 / alpha)) / M),
with s the mean normalized bid-ask spread of the slice and M its number of quotes.
"""

from __future__ import annotations

import datetime as dt
import numbers
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

from deepquant.market.expiries import select_slices
from deepquant.market.grid import clean_rows, interp_matrix, make_grid, second_difference
from deepquant.market.marginals import Marginals
from deepquant.market.parity import (
    DEFAULT_RATE_RANGE,
    ParityFit,
    SliceQuotes,
    calendar_violations,
    check_fit_range,
    check_rates,
    fit_parity,
    normalize_slice,
)
from deepquant.market.quotes import (
    DEFAULT_MAX_QUOTE_SPREAD,
    ChainSlice,
    OptionChain,
    load_chain,
)
from deepquant.market.result import CalibrationResult, SliceReport

__all__ = [
    "CalibrationResult",
    "CalibrationWarning",
    "SliceQuotes",
    "SliceReport",
    "calibrate",
    "calibrate_chain",
    "confidence_halfwidth",
    "normalize_slice",
]

DEFAULT_EXPIRIES = ("30d", "60d", "90d", "120d", "150d")

MAX_REG = 1e6
"""Largest ``reg`` (lam): a roughness of 1 then costs a million half-spreads of band violation,
so the quotes hardly move the fit (1.5% of the synthetic chain's quotes inside at 1e6, grid
150), and Clarabel already stops short of optimal from about 1e5 (a reported failure). Far
larger values overflowed cvxpy's problem data (``reg=1e308``: "Problem data contains NaN or
Inf")."""


class CalibrationWarning(UserWarning):
    """The quotes hold calendar arbitrage or put-call parity outliers. (A solver that does not
    report an optimal solution is a ``deepquant.results.ConvergenceWarning``.)"""


def confidence_halfwidth(spread: float, n_quotes: int, alpha: float = 0.05) -> float:
    """Seed 001 Cor. 6.3: delta(s, alpha, M) = (s / 2) sqrt(2 (1 + log(2 / alpha)) / M).

    A bound, with probability >= 1 - alpha, on the W1 error of a marginal estimated from M quotes
    with bid–ask spread s (same units as s). The seed states it without proof; we report it as
    the seed defines it, with s the mean spread of the slice.
    """
    _check_alpha(alpha)
    if n_quotes < 1:
        raise ValueError(f"n_quotes must be >= 1, got {n_quotes!r}")
    return float(spread / 2 * np.sqrt(2 * (1 + np.log(2 / alpha)) / n_quotes))


def _check_alpha(alpha: float) -> None:
    """ValueError unless ``alpha`` (a confidence level) is a number in (0, 1); NaN fails."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_options(*, grid_size: Any = 150, reg: Any = 1e-2, window: Any = 0.4,
                   alpha: Any = 0.05, inside_tol: Any = 1e-9, solver: Any = "CLARABEL",
                   **_: Any) -> None:
    """``calibrate``'s options, before any work (``calibrate_chain`` checks them before
    reading the chain). A NaN ``inside_tol`` counted no quote inside; an unknown ``solver``
    failed after the program was built; a fractional ``grid_size`` was truncated."""
    if isinstance(grid_size, bool) or not isinstance(grid_size, numbers.Integral):
        raise ValueError(f"grid_size must be an integer >= 10, got {grid_size!r}")
    if not 0 <= reg <= MAX_REG:
        raise ValueError(f"reg must be a number in [0, {MAX_REG:g}] (MAX_REG), got {reg!r}")
    if not (window >= 0 and np.isfinite(window)):
        raise ValueError(f"window must be a finite number >= 0, got {window!r}")
    _check_alpha(alpha)
    if not (inside_tol >= 0 and np.isfinite(inside_tol)):
        raise ValueError(f"inside_tol must be a finite number >= 0, got {inside_tol!r}")
    import cvxpy as cp

    if not isinstance(solver, str) or solver.upper() not in cp.installed_solvers():
        raise ValueError(f"solver must be one of the installed cvxpy solvers "
                         f"{cp.installed_solvers()}, got {solver!r}")


# ----------------------------------------------------------------------------- the program
def calibrate(
    quotes: Sequence[SliceQuotes],
    *,
    grid_size: int = 150,
    grid: np.ndarray | None = None,
    reg: float = 1e-2,
    window: float = 0.4,
    alpha: float = 0.05,
    inside_tol: float = 1e-9,
    solver: str = "CLARABEL",
    solver_opts: dict | None = None,
    verbose: bool = False,
) -> CalibrationResult:
    """Calibrate arbitrage-free marginals to the bid–ask bands of several slices at once.

    Parameters
    ----------
    quotes : sequence of SliceQuotes
        S >= 2 slices with strictly increasing ``t`` (normalized quotes, see ``normalize_slice``).
    grid_size : int
        M, used when ``grid`` is not given (``make_grid``).
    grid : ndarray, shape (M,), optional
        Common moneyness grid; must contain every quoted k strictly inside.
    reg : float
        lam, weight of the smoothness term relative to the band term (in half-spreads), in
        [0, MAX_REG].
    window : float
        Acceptance window |k - 1| <= window for the ``*_window`` report fields.
    alpha : float
        Confidence level of the Cor. 6.3 half-width.
    inside_tol : float
        A quote counts as inside when its violation is at most this (normalized units; 1e-9 is
        about 4e-6 index points on SPX, far below the 0.05 tick).
    solver : str
        cvxpy solver name (``"CLARABEL"``; any QP solver cvxpy knows).
    solver_opts : dict, optional
        Passed to ``cvxpy.Problem.solve`` (e.g. Clarabel's ``tol_feas``).
    verbose : bool
        Solver log on stdout.

    Returns
    -------
    CalibrationResult
        ``success`` is False (and a ``CalibrationWarning`` is issued) when the solver does not
        report an optimal solution; the marginals are then the cleaned solver output.

    Raises
    ------
    ValueError
        Fewer than 2 slices, times not strictly increasing, a bad grid, or ``reg``,
        ``window`` or ``alpha`` out of range (NaN included), before the solve.
    """
    import cvxpy as cp

    t_start = time.perf_counter()
    quotes = list(quotes)
    if len(quotes) < 2:
        what = quotes[0].label if quotes else "none"
        raise ValueError(f"calibration needs at least 2 expiries (a single expiry gives no "
                         f"convex-order constraint and no MMOT problem); got {len(quotes)}: {what}")
    times = np.array([q.t for q in quotes])
    if np.any(np.diff(times) <= 0):
        i = int(np.flatnonzero(np.diff(times) <= 0)[0])
        raise ValueError(f"slices must have strictly increasing times: {quotes[i].label} "
                         f"(t={times[i]:.6f}) then {quotes[i + 1].label} (t={times[i + 1]:.6f})")
    _check_options(grid_size=grid_size, reg=reg, window=window, alpha=alpha,
                   inside_tol=inside_tol, solver=solver)
    x = make_grid(quotes, grid_size) if grid is None else np.asarray(grid, dtype=float)
    if x.ndim != 1 or x.size < 3 or not np.all(np.diff(x) > 0) or not np.isfinite(x).all():
        raise ValueError(f"grid must be a finite, strictly increasing 1-D array of at least 3 "
                         f"points, got {grid!r:.80}")
    kmin = min(float(q.k.min()) for q in quotes)
    kmax = max(float(q.k.max()) for q in quotes)
    if not (x[0] < min(kmin, 1.0) and x[-1] > max(kmax, 1.0)):
        raise ValueError(f"grid [{x[0]:.6g}, {x[-1]:.6g}] must contain 1 and every quoted k "
                         f"in [{kmin:.6g}, {kmax:.6g}] strictly inside")
    n_s, m = len(quotes), x.size
    dx = np.diff(x)

    # variables: call values C_s(x_j), flattened as s * M + j; weights are their second
    # differences W = A C + b (b puts the 1 in W_0 = 1 + (C_1 - C_0) / dx_0)
    call = cp.Variable(n_s * m)
    amat = sparse.kron(sparse.identity(n_s), second_difference(x), format="csr")
    bvec = np.zeros(n_s * m)
    bvec[::m] = 1.0
    w = amat @ call + bvec
    ends = np.arange(n_s) * m
    pick_first = sparse.csr_matrix((np.ones(n_s), (np.arange(n_s), ends)), shape=(n_s, n_s * m))
    pick_last = sparse.csr_matrix((np.ones(n_s), (np.arange(n_s), ends + m - 1)),
                                  shape=(n_s, n_s * m))
    cons = [
        w >= 0,                                   # probabilities (they sum to 1 by telescoping)
        pick_first @ call == 1.0 - x[0],          # C(x_0) = mean - x_0: mean 1
        pick_last @ call == 0.0,                  # no mass beyond the grid
    ]
    # convex order: C_{s+1} - C_s >= 0 at every grid point
    if n_s > 1:
        step = sparse.diags([-np.ones(n_s - 1), np.ones(n_s - 1)], [0, 1], shape=(n_s - 1, n_s))
        cons.append(sparse.kron(step, sparse.identity(m), format="csr") @ call >= 0)
    # quotes: model_i = B_i C_s + offset_i
    blocks, offs, bids, asks, halves = [], [], [], [], []
    for s, q in enumerate(quotes):
        b = interp_matrix(x, q.k)
        blocks.append(sparse.hstack([sparse.csr_matrix((q.n, s * m)), b,
                                     sparse.csr_matrix((q.n, (n_s - s - 1) * m))]))
        offs.append(np.where(q.is_call, 0.0, q.k - 1.0))
        bids.append(q.bid)
        asks.append(q.ask)
        halves.append(q.half_spread)
    bmat = sparse.vstack(blocks, format="csr")
    off, bid, ask = np.concatenate(offs), np.concatenate(bids), np.concatenate(asks)
    half = np.concatenate(halves)
    half = np.maximum(half, max(1e-12, 1e-3 * float(np.median(half))))
    n_q = bid.size
    under = cp.Variable(n_q, nonneg=True)
    over = cp.Variable(n_q, nonneg=True)
    model = bmat @ call + off
    # slacks in units of the quote's half-spread (u_i = violation_i / h_i)
    cons += [model + cp.multiply(half, under) >= bid, model - cp.multiply(half, over) <= ask]
    band = cp.sum(under + over)
    # smoothness: sigma^3 sum_j (p_{j+1} - p_j)^2 / (x_{j+1} - x_j), p = W / cell, p = 0 off-grid
    cell = np.empty(m)
    cell[1:-1] = (x[2:] - x[:-2]) / 2
    cell[0], cell[-1] = dx[0] / 2, dx[-1] / 2
    ext_diff = sparse.diags([-np.ones(m), np.ones(m)], [0, -1], shape=(m + 1, m), format="csr")
    gap = np.concatenate([[cell[0]], (x[1:] - x[:-1]), [cell[-1]]])
    sig = np.array([q.atm_total_vol() for q in quotes])
    rows = []
    for s in range(n_s):
        scale = sparse.diags(sig[s] ** 1.5 / np.sqrt(gap)) @ ext_diff @ sparse.diags(1.0 / cell)
        rows.append(scale)
    rough_op = sparse.block_diag(rows, format="csr")
    smooth = cp.sum_squares(rough_op @ w)
    problem = cp.Problem(cp.Minimize(band + reg * smooth), cons)
    t0 = time.perf_counter()
    try:
        problem.solve(solver=solver, verbose=verbose, **(solver_opts or {}))
    except cp.error.SolverError as exc:
        raise RuntimeError(f"calibration: solver {solver} failed: {exc}") from exc
    solve_time = time.perf_counter() - t0
    stats = problem.solver_stats
    nit = int(stats.num_iters) if stats is not None and stats.num_iters is not None else -1
    status = str(problem.status)
    success = status == cp.OPTIMAL
    if w.value is None:
        raise RuntimeError(f"calibration: solver {solver} returned no solution (status {status})")
    if not success:
        from deepquant.results import ConvergenceWarning

        warnings.warn(f"calibration: solver {solver} status {status} after {nit} iterations",
                      ConvergenceWarning, stacklevel=2)
    raw_c = call.value.reshape(n_s, m)
    raw_w = (amat @ call.value + bvec).reshape(n_s, m)
    # largest violation of the hard constraints by the solver's own point (before cleaning)
    primal_residual = float(max(
        0.0, -raw_w.min(), float(np.max(raw_c[:-1] - raw_c[1:])) if n_s > 1 else 0.0,
        float(np.max(np.abs(raw_c[:, 0] - (1.0 - x[0])))), float(np.max(np.abs(raw_c[:, -1]))),
    ))
    weights, moved = clean_rows(raw_w, x)
    marg = Marginals(x, weights, times)
    # reports from the cleaned marginals (exact prices of the returned laws)
    reports, models = [], []
    calls_all = [marg.call_prices(q.k)[s] for s, q in enumerate(quotes)]
    for s, q in enumerate(quotes):
        c = calls_all[s]
        mod = np.where(q.is_call, c, c - 1.0 + q.k)
        viol = np.maximum.reduce([q.bid - mod, mod - q.ask, np.zeros(q.n)])
        inside = viol <= inside_tol
        win = np.abs(q.k - 1.0) <= window
        spread = q.ask - q.bid
        s_mean = float(spread.mean())
        hw = confidence_halfwidth(s_mean, q.n, alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            vs = np.where(spread > 0, viol / spread, np.where(viol > inside_tol, np.inf, 0.0))
        reports.append(SliceReport(
            label=q.label, t=q.t, forward=q.forward, discount=q.discount, n_quotes=q.n,
            n_inside=int(inside.sum()), fraction_inside=float(inside.mean()),
            max_violation=float(viol.max()), max_violation_spreads=float(vs.max()),
            n_window=int(win.sum()), n_inside_window=int((inside & win).sum()),
            fraction_inside_window=float(inside[win].mean()) if win.any() else float("nan"),
            max_violation_window=float(viol[win].max()) if win.any() else 0.0,
            mean_spread=s_mean, half_width=hw, half_width_price=hw * q.discount * q.forward,
            alpha=alpha))
        models.append(mod)
    return CalibrationResult(
        marginals=marg, slices=tuple(reports), quotes=tuple(quotes), model=tuple(models),
        value=float(problem.value), band_penalty=float(band.value),
        smoothness=float(reg * smooth.value), success=success, status=status,
        message=f"{solver}: {status} after {nit} iterations", solver=solver, nit=nit,
        primal_residual=primal_residual, solve_time=solve_time,
        total_time=time.perf_counter() - t_start, cleanup_l1=moved, reg=float(reg))


def calibrate_chain(
    chain: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | OptionChain,
    expiries: Sequence[str | float | dt.date] = DEFAULT_EXPIRIES,
    *,
    grid_size: int = 150,
    fit_range: tuple[float, float] = (0.3, 2.0),
    near_fraction: float = 0.4,
    rate_range: tuple[float, float] = DEFAULT_RATE_RANGE,
    max_quote_spread: float = DEFAULT_MAX_QUOTE_SPREAD,
    **options,
) -> CalibrationResult:
    """Load a chain, fit forwards by parity, and calibrate marginals at the chosen expiries.

    Parameters
    ----------
    chain : path-like, sequence of path-likes, or OptionChain
        A CSV in either layout, or several holding snapshots of one chain
        (``deepquant.market.quotes.load_chain``), or a loaded chain.
    expiries : sequence
        Tenors (``"30d"``, ``"3m"``, ...) or dates (``"2023-07-21"``, ``"2023-07-21:SPX"``); see
        ``select_slices``. At least 2.
    grid_size : int
        Number of grid points M.
    fit_range : (float, float)
        Quotes with K/F outside are left out of the program.
    near_fraction : float
        Fraction of the pairs used by the parity fit (``fit_parity``).
    rate_range : (float, float)
        Plausible annual rates: an expiry whose parity fit implies a rate outside (beyond three
        standard errors) is an error (``deepquant.market.parity.check_rates``).
    max_quote_spread : float
        Seconds; passed to ``load_chain`` when ``chain`` is a path.
    **options
        Passed to ``calibrate`` (``reg``, ``window``, ``alpha``, ``inside_tol``, ``solver``).

    Returns
    -------
    CalibrationResult
        ``result.marginals`` is a validated ``Marginals`` (times = year fractions);
        ``result.slices[s].forward``/``discount`` convert back to currency.
    """
    t0 = time.perf_counter()
    check_fit_range(fit_range)
    _check_options(grid_size=grid_size, **options)
    ch = chain if isinstance(chain, OptionChain) else load_chain(
        chain, max_quote_spread=max_quote_spread)
    chosen = select_slices(ch, expiries, min_slices=2)
    spot = ch.spot if np.isfinite(ch.spot) else None
    fits = [fit_parity(sl, spot=spot, near_fraction=near_fraction, source=ch.path)
            for sl in chosen]
    checks = _check_quotes(ch.path, chosen, fits, rate_range)
    quotes = []
    for sl, fit in zip(chosen, fits):
        try:
            quotes.append(normalize_slice(sl, fit, fit_range=fit_range))
        except ValueError as exc:
            raise ValueError(f"{ch.path}: {exc}") from None
    res = calibrate(quotes, grid_size=grid_size, **options)
    return CalibrationResult(**{**res.__dict__, "chain_path": ch.path, "cleaning": ch.cleaning,
                                "total_time": time.perf_counter() - t0,
                                "quote_checks": tuple(checks)})


def _check_quotes(path: str, chosen: Sequence[ChainSlice], fits: Sequence[ParityFit],
                  rate_range: tuple[float, float]) -> list[str]:
    """Rates (an error when implausible), calendar arbitrage and parity outliers (warnings)."""
    calendar = [v.message() for v in calendar_violations(chosen, fits)]
    bad_rates = check_rates(fits, rate_range=rate_range)
    if bad_rates:
        hint = (" The quotes of such an expiry are probably scaled or stale"
                + (f"; {'; '.join(calendar)}" if calendar else "")
                + ". Drop the expiry from --expiries, or widen --rate-range (rate_range=) if the "
                "rate is real.")
        raise ValueError(f"{path}: " + "; ".join(bad_rates) + "." + hint)
    checks = calendar + [
        f"{f.label}: put-call parity outliers at strikes "
        f"{', '.join(f'{k:g}' for k in f.outlier_strikes)} left out of the forward and discount "
        "fit" for f in fits if f.n_outliers]
    for msg in checks:
        warnings.warn(f"{path}: {msg}", CalibrationWarning, stacklevel=3)
    return checks
