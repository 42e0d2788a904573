"""Arbitrage-free marginals from an option chain: one convex program over all chosen expiries.

Seed 001 §7.1 calibrates each maturity alone by least squares to mid prices plus a TV penalty.
Mid prices of SPX are not arbitrage-free at 5-point strike spacing (data set quality report: about
14% of near-the-money mid butterflies are negative), and slice-by-slice fits can cross in convex
order. Here instead, for S chosen slices with forwards F_s and discount factors D_s (put–call
parity, ``deepquant.market.quotes.fit_parity``), every quote is normalized to forward moneyness,

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
differences, W = A C + e_0 (``_second_difference``), so W >= 0 is a banded constraint, the rows
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
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.special import ndtr

from deepquant.market.marginals import Marginals
from deepquant.market.quotes import (
    DAYS_PER_YEAR,
    ChainSlice,
    CleaningReport,
    OptionChain,
    ParityFit,
    fit_parity,
    load_chain,
)

__all__ = [
    "CalibrationResult",
    "CalibrationWarning",
    "SliceQuotes",
    "SliceReport",
    "black_price",
    "calibrate",
    "calibrate_chain",
    "confidence_halfwidth",
    "implied_vol",
    "make_grid",
    "normalize_slice",
    "save_figures",
    "select_slices",
]

DEFAULT_EXPIRIES = ("30d", "60d", "90d", "120d", "150d")
_CLEAN_NOISE = 1e-13


class CalibrationWarning(UserWarning):
    """The solver did not report an optimal solution."""


# ----------------------------------------------------------------------------- data classes
@dataclass(frozen=True, eq=False)
class SliceQuotes:
    """Two-sided quotes of one slice in forward moneyness (the calibration's input).

    Attributes
    ----------
    label : str
        ``"2023-07-21 SPX"``.
    t : float
        Year fraction to expiry.
    forward, discount : float
        F(0, t) and D(0, t) used for the normalization.
    k : ndarray, shape (Q,)
        Strikes K / F.
    is_call : ndarray of bool, shape (Q,)
    bid, ask : ndarray, shape (Q,)
        Quotes divided by D F (prices of payoffs on X = S_t / F).
    parity : ParityFit or None
        The put–call parity fit that gave F and D.
    """

    label: str
    t: float
    forward: float
    discount: float
    k: np.ndarray
    is_call: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    parity: ParityFit | None = None

    def __post_init__(self) -> None:
        k = np.array(self.k, dtype=float, copy=True).reshape(-1)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "is_call", np.array(self.is_call, dtype=bool, copy=True))
        for name in ("bid", "ask"):
            object.__setattr__(self, name, np.array(getattr(self, name), dtype=float, copy=True))
        for name in ("is_call", "bid", "ask"):
            if np.shape(getattr(self, name)) != k.shape:
                raise ValueError(f"SliceQuotes {self.label}: {name} has shape "
                                 f"{np.shape(getattr(self, name))}, k has {k.shape}")
        if k.size == 0:
            raise ValueError(f"SliceQuotes {self.label}: no quotes")
        if not (self.t > 0 and self.forward > 0 and self.discount > 0):
            raise ValueError(f"SliceQuotes {self.label}: t, forward, discount must be > 0, got "
                             f"{self.t!r}, {self.forward!r}, {self.discount!r}")
        bid, ask = np.asarray(self.bid, float), np.asarray(self.ask, float)
        if np.any(~np.isfinite(bid)) or np.any(~np.isfinite(ask)) or np.any(bid > ask):
            i = int(np.flatnonzero(~(np.isfinite(bid) & np.isfinite(ask) & (bid <= ask)))[0])
            raise ValueError(f"SliceQuotes {self.label}: quote {i} at k={k[i]:.6g} has "
                             f"bid {bid[i]!r} > ask {ask[i]!r} or is not finite")
        if np.any(k <= 0):
            raise ValueError(f"SliceQuotes {self.label}: strikes must be > 0")

    @property
    def n(self) -> int:
        return int(self.k.size)

    @property
    def half_spread(self) -> np.ndarray:
        """(ask - bid) / 2, shape (Q,)."""
        return (np.asarray(self.ask) - np.asarray(self.bid)) / 2.0

    def atm_total_vol(self) -> float:
        """ATM total volatility sigma sqrt(t): Black implied total vol of the out-of-the-money
        mid quote whose strike is nearest k = 1 (0.2 sqrt(t) if it has none).
        """
        mid = (np.asarray(self.bid) + np.asarray(self.ask)) / 2
        otm = np.where(self.is_call, self.k >= 1, self.k <= 1)
        idx = np.flatnonzero(otm) if np.any(otm) else np.arange(self.n)
        i = int(idx[np.argmin(np.abs(np.log(self.k[idx])))])
        v = implied_vol(np.array([mid[i]]), np.array([self.k[i]]), 1.0,
                        np.array([bool(self.is_call[i])]))[0]
        return float(v) if np.isfinite(v) and v > 0 else 0.2 * np.sqrt(self.t)


@dataclass(frozen=True)
class SliceReport:
    """Fit of one calibrated slice to its bid–ask band (prices in forward-moneyness units).

    Attributes
    ----------
    label : str
    t : float
        Year fraction; ``days`` = 365 t.
    forward, discount : float
    n_quotes : int
        Quotes in the program.
    n_inside : int
        Quotes with model price within [bid - tol, ask + tol] (``inside_tol``).
    fraction_inside : float
    max_violation : float
        max_i max(bid_i - model_i, model_i - ask_i, 0), normalized units (divide by D F).
    max_violation_spreads : float
        The same in units of each quote's full spread, max_i violation_i / (ask_i - bid_i).
    n_window, n_inside_window, fraction_inside_window, max_violation_window :
        The same restricted to |k - 1| <= window (the acceptance window, default 40%).
    mean_spread : float
        s, the mean normalized spread (ask - bid) / (D F) of the slice's quotes.
    half_width : float
        Seed 001 Cor. 6.3: delta(s, alpha, n_quotes), moneyness units.
    half_width_price : float
        delta times D F, in currency.
    alpha : float
    """

    label: str
    t: float
    forward: float
    discount: float
    n_quotes: int
    n_inside: int
    fraction_inside: float
    max_violation: float
    max_violation_spreads: float
    n_window: int
    n_inside_window: int
    fraction_inside_window: float
    max_violation_window: float
    mean_spread: float
    half_width: float
    half_width_price: float
    alpha: float

    @property
    def days(self) -> float:
        return self.t * DAYS_PER_YEAR

    def as_dict(self) -> dict[str, float | int | str]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["days"] = self.days
        return d


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """Output of ``calibrate``: arbitrage-free marginals and how well they fit the quotes.

    Attributes
    ----------
    marginals : Marginals
        S rows on the common grid, times = the slices' year fractions; passes validation with the
        default tolerances (1e-9) including the convex-order check.
    slices : tuple of SliceReport
    quotes : tuple of SliceQuotes
        The normalized quotes that entered the program.
    model : tuple of ndarray
        Model prices at each slice's quotes, shape (Q_s,) each (normalized units).
    value : float
        Objective value at the solution.
    band_penalty, smoothness : float
        The two parts of the objective (violations in half-spreads; lam times roughness).
    success : bool
    status : str
        Solver status.
    message : str
    solver : str
    nit : int
        Solver iterations (-1 when the solver does not say).
    primal_residual : float
        Largest violation of the hard constraints (W >= 0, convex order, C(x_0) = 1 - x_0,
        C(x_{M-1}) = 0) by the solver's point before cleaning, in moneyness units.
    solve_time, total_time : float
        Seconds in ``Problem.solve`` (cvxpy compilation plus the solver) and overall.
    cleanup_l1 : ndarray, shape (S,)
        L1 change of each row by the post-solve cleaning (should be ~1e-9 or less).
    reg : float
        lam.
    chain_path : str
    cleaning : CleaningReport or None
        Loader counts when the result comes from ``calibrate_chain``.
    """

    marginals: Marginals
    slices: tuple[SliceReport, ...]
    quotes: tuple[SliceQuotes, ...]
    model: tuple[np.ndarray, ...]
    value: float
    band_penalty: float
    smoothness: float
    success: bool
    status: str
    message: str
    solver: str
    nit: int
    primal_residual: float
    solve_time: float
    total_time: float
    cleanup_l1: np.ndarray
    reg: float
    chain_path: str = ""
    cleaning: CleaningReport | None = None

    @property
    def fraction_inside(self) -> float:
        """Fraction of all quotes inside bid–ask."""
        return sum(r.n_inside for r in self.slices) / max(1, sum(r.n_quotes for r in self.slices))

    @property
    def fraction_inside_window(self) -> float:
        """Fraction of quotes with |k - 1| <= window inside bid–ask."""
        n = sum(r.n_window for r in self.slices)
        return sum(r.n_inside_window for r in self.slices) / max(1, n)

    @property
    def max_violation(self) -> float:
        return max(r.max_violation for r in self.slices)

    def summary(self) -> dict:
        """Plain dict for JSON output."""
        return dict(
            chain=self.chain_path, success=self.success, status=self.status,
            solver=self.solver, nit=self.nit, primal_residual=self.primal_residual,
            value=self.value, band_penalty=self.band_penalty,
            smoothness=self.smoothness, solve_time=self.solve_time, total_time=self.total_time,
            grid_size=self.marginals.size, grid=[float(self.marginals.grid[0]),
                                                  float(self.marginals.grid[-1])],
            fraction_inside=self.fraction_inside,
            fraction_inside_window=self.fraction_inside_window,
            max_violation=self.max_violation, cleanup_l1=self.cleanup_l1,
            convex_order_violation=self.marginals.check_convex_order().violation,
            slices=[r.as_dict() for r in self.slices],
            cleaning=self.cleaning.as_dict() if self.cleaning else None,
        )


# ----------------------------------------------------------------------------- Black formulas
def black_price(k: np.ndarray, v: np.ndarray, is_call: np.ndarray) -> np.ndarray:
    """Black (1976) price on a unit forward, undiscounted: E[(X - k)^+] or E[(k - X)^+].

    X lognormal with mean 1 and total volatility v = sigma sqrt(t):
    call = N(d1) - k N(d2), put = k N(-d2) - N(-d1), d1 = (-ln k + v^2/2) / v, d2 = d1 - v.
    Shapes broadcast.
    """
    k, v = np.asarray(k, float), np.asarray(v, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (-np.log(k) + 0.5 * v**2) / v
    d2 = d1 - v
    call = ndtr(d1) - k * ndtr(d2)
    put = k * ndtr(-d2) - ndtr(-d1)
    return np.where(is_call, call, put)


def implied_vol(price: np.ndarray, k: np.ndarray, t: float | np.ndarray,
                is_call: np.ndarray, *, max_vol: float = 5.0) -> np.ndarray:
    """Black implied volatility sigma of normalized prices, by vectorized bisection.

    Parameters
    ----------
    price, k, is_call : ndarray, shape (Q,)
        Undiscounted prices on a unit forward (see ``black_price``), strikes K / F, option types.
    t : float or ndarray
        Year fraction(s).

    Returns
    -------
    ndarray, shape (Q,)
        sigma, or NaN where the price is at or below intrinsic or above the no-arbitrage bound
        (forward for a call, k for a put). Absolute accuracy on sigma sqrt(t) about 1e-10.
    """
    price = np.asarray(price, float)
    k = np.asarray(k, float)
    is_call = np.asarray(is_call, bool)
    intrinsic = np.where(is_call, np.maximum(1 - k, 0), np.maximum(k - 1, 0))
    upper = np.where(is_call, 1.0, k)
    ok = (price > intrinsic) & (price < upper) & np.isfinite(price)
    lo = np.full(price.shape, 1e-8)
    hi = np.full(price.shape, max_vol * np.sqrt(np.max(t)) + 1.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        above = black_price(k, mid, is_call) > price
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    v = 0.5 * (lo + hi)
    return np.where(ok, v / np.sqrt(t), np.nan)


def confidence_halfwidth(spread: float, n_quotes: int, alpha: float = 0.05) -> float:
    """Seed 001 Cor. 6.3: delta(s, alpha, M) = (s / 2) sqrt(2 (1 + log(2 / alpha)) / M).

    A bound, with probability >= 1 - alpha, on the W1 error of a marginal estimated from M quotes
    with bid–ask spread s (same units as s). The seed states it without proof; we report it as
    the seed defines it, with s the mean spread of the slice.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n_quotes < 1:
        raise ValueError(f"n_quotes must be >= 1, got {n_quotes!r}")
    return float(spread / 2 * np.sqrt(2 * (1 + np.log(2 / alpha)) / n_quotes))


# ----------------------------------------------------------------------------- quotes -> moneyness
def normalize_slice(
    sl: ChainSlice,
    parity: ParityFit,
    *,
    fit_range: tuple[float, float] = (0.0, np.inf),
) -> SliceQuotes:
    """Two-sided quotes of ``sl`` in forward moneyness: k = K/F, prices / (D F).

    Only quotes with ``fit_range[0] <= k <= fit_range[1]`` are kept. Calls and puts are both kept
    (they carry different spreads; parity ties them through the mean-1 constraint).
    """
    f, d = parity.forward, parity.discount
    ks, cb, ca, pb, pa = sl.strikes, sl.call_bid, sl.call_ask, sl.put_bid, sl.put_ask
    k = np.concatenate([ks[sl.call_ok], ks[sl.put_ok]]) / f
    is_call = np.concatenate([np.ones(int(sl.call_ok.sum()), bool),
                              np.zeros(int(sl.put_ok.sum()), bool)])
    bid = np.concatenate([cb[sl.call_ok], pb[sl.put_ok]]) / (d * f)
    ask = np.concatenate([ca[sl.call_ok], pa[sl.put_ok]]) / (d * f)
    keep = (k >= fit_range[0]) & (k <= fit_range[1])
    if not keep.any():
        raise ValueError(f"slice {sl.label} has no two-sided quotes with K/F in "
                         f"[{fit_range[0]:g}, {fit_range[1]:g}]")
    order = np.lexsort((~is_call[keep], k[keep]))
    return SliceQuotes(sl.label, sl.t, f, d, k[keep][order], is_call[keep][order],
                       bid[keep][order], ask[keep][order], parity)


# ----------------------------------------------------------------------------- grid
def _smile_density_weight(q: SliceQuotes, x: np.ndarray) -> np.ndarray:
    """sqrt(p(x) / h(x)) on the quoted range of ``q``, 0 outside (see ``make_grid``).

    p(x): lognormal density of mean 1 whose total volatility is the slice's mid implied total
    volatility at x (out-of-the-money quotes, interpolated in log k, flat beyond), a cheap proxy
    of the density that keeps the skew's fat left tail; h(x): the half-spread, interpolated.
    """
    otm = np.where(q.is_call, q.k >= 1, q.k <= 1)
    mid = (q.bid + q.ask) / 2
    v = implied_vol(mid[otm], q.k[otm], 1.0, q.is_call[otm])
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < 2:
        v_x = np.full(x.shape, q.atm_total_vol())
        kk = q.k
        h_x = np.full(x.shape, max(float(np.median(q.half_spread)), 1e-12))
    else:
        kk, vv, hh = q.k[otm][ok], v[ok], q.half_spread[otm][ok]
        order = np.argsort(kk)
        kk, vv, hh = kk[order], vv[order], hh[order]
        v_x = np.interp(np.log(x), np.log(kk), vv)
        h_x = np.maximum(np.interp(x, kk, hh), 1e-12)
    logpdf = (-((np.log(x) + 0.5 * v_x**2) ** 2) / (2 * v_x**2)
              - np.log(x * v_x * np.sqrt(2 * np.pi)))
    inside = (x >= q.k.min()) & (x <= q.k.max())
    return np.where(inside, np.exp(0.5 * (logpdf - np.log(h_x))), 0.0)


def make_grid(
    quotes: Sequence[SliceQuotes],
    size: int,
    *,
    lo: float | None = None,
    hi: float | None = None,
    floor: float = 0.05,
) -> np.ndarray:
    """Common moneyness grid of ``size`` points, dense where the quotes need resolution.

    Between grid points the call curve of a law on the grid is linear, so a quote at k inside a
    cell of width h is matched to about h^2 p(k) / 8 (p the density); keeping that below the
    half-spread h_s(k) everywhere with the fewest points means a local point density
    proportional to sqrt(p / h_s) (equidistribution). The grid is the set of quantiles of

        g(x) = (1 - floor) * sum_s g_s(x) / int sum_s g_s + floor / (hi - lo),
        g_s(x) = sqrt(p_s(x) / h_s(x)) on the quoted range of slice s, 0 elsewhere,

    with p_s the lognormal density at the slice's own mid implied volatility at x (a proxy that
    keeps the skew's fat left tail) and h_s the interpolated half-spread. ``lo`` and ``hi``
    default to half the smallest quoted k and 1 + 2 (largest k - 1), so every quote lies
    strictly inside and the tails have room; ``floor`` spreads a fraction of the points
    uniformly. The point 1 is always a grid point.

    Returns
    -------
    ndarray, shape (size,)
        Strictly increasing.
    """
    size = int(size)
    if size < 10:
        raise ValueError(f"grid size must be >= 10, got {size}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor!r}")
    kmin = min(float(q.k.min()) for q in quotes)
    kmax = max(float(q.k.max()) for q in quotes)
    lo = 0.5 * min(kmin, 1.0) if lo is None else float(lo)
    hi = 1.0 + 2.0 * max(kmax - 1.0, 0.05) if hi is None else float(hi)
    if not (0 <= lo < min(kmin, 1.0) and hi > max(kmax, 1.0)):
        raise ValueError(f"grid range [{lo:.6g}, {hi:.6g}] must contain 1 and every quoted k "
                         f"in [{kmin:.6g}, {kmax:.6g}] strictly inside")
    fine = np.linspace(lo, hi, 20001)
    xs = np.maximum(fine, 1e-12)
    g = np.zeros_like(fine)
    for q in quotes:
        g += _smile_density_weight(q, xs)
    total = np.trapezoid(g, fine)
    g = (1 - floor) * g / total + floor / (hi - lo) if total > 0 else np.ones_like(fine)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(fine))])
    cdf /= cdf[-1]
    grid = np.interp(np.linspace(0, 1, size), cdf, fine)
    grid[0], grid[-1] = lo, hi
    j = int(np.argmin(np.abs(grid[1:-1] - 1.0))) + 1
    grid[j] = 1.0
    if np.any(np.diff(grid) <= 0):
        raise ValueError("grid construction produced repeated points; use a smaller size")
    return grid


# ----------------------------------------------------------------------------- the program
def _interp_matrix(grid: np.ndarray, k: np.ndarray) -> sparse.csr_matrix:
    """Sparse (Q, M) matrix B with (B c)_i = linear interpolation of c (on grid) at k_i."""
    j = np.clip(np.searchsorted(grid, k, side="right") - 1, 0, grid.size - 2)
    lam = (k - grid[j]) / (grid[j + 1] - grid[j])
    rows = np.repeat(np.arange(k.size), 2)
    cols = np.stack([j, j + 1], axis=1).ravel()
    vals = np.stack([1 - lam, lam], axis=1).ravel()
    return sparse.csr_matrix((vals, (rows, cols)), shape=(k.size, grid.size))


def _second_difference(x: np.ndarray) -> sparse.csr_matrix:
    """(M, M) matrix A with A c + e_0 = the weights of the law whose call curve is c on ``x``.

    For a law W on the grid, C(x_j) = sum_l W_l (x_l - x_j)^+ is piecewise linear with slopes
    -(sum_{l > j} W_l) on [x_j, x_{j+1}], so W_0 = 1 + (C_1 - C_0) / dx_0,
    W_j = (C_{j+1} - C_j) / dx_j - (C_j - C_{j-1}) / dx_{j-1} and
    W_{M-1} = -(C_{M-1} - C_{M-2}) / dx_{M-2}; they sum to 1 whatever C is (telescoping), and
    sum_j W_j x_j = x_0 + C_0 whenever C_{M-1} = 0.
    """
    m = x.size
    inv = 1.0 / np.diff(x)
    j = np.arange(m - 1)
    rows = np.concatenate([j, j, j + 1, j + 1])
    cols = np.concatenate([j + 1, j, j + 1, j])
    vals = np.concatenate([inv, -inv, -inv, inv])
    return sparse.csr_matrix((vals, (rows, cols)), shape=(m, m))


def _clean_rows(w: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make rows exact probabilities with mean 1 in convex order; return (weights, L1 moved).

    Each row: clip negatives, renormalise, then restore the mean by mixing with a point mass at
    an end point, (1 - e) w + e delta_z with e = (1 - m) / (z - m). Then for s >= 1, if
    C_s < C_{s-1} anywhere on the grid, mix row s with the largest law of mean 1 on the grid,
    nu = two-point law on {x_0, x_{M-1}} (its call curve is the chord, >= every other), with the
    smallest e that restores C_s >= C_{s-1}: e = max_j (C_{s-1} - C_s)_j / (C_nu - C_s)_j.
    """
    w = np.array(w, dtype=float)
    moved = np.zeros(w.shape[0])
    x0, x1 = grid[0], grid[-1]
    payoff = np.maximum(grid[None, :] - grid[:, None], 0.0)  # (K=M, M)
    ext = np.zeros(grid.size)
    ext[0], ext[-1] = (x1 - 1) / (x1 - x0), (1 - x0) / (x1 - x0)
    c_ext = payoff @ ext
    for s in range(w.shape[0]):
        orig = w[s].copy()
        row = np.maximum(w[s], 0.0)
        row /= row.sum()
        m = row @ grid
        if m != 1.0:
            z = x0 if m > 1 else x1
            e = (1.0 - m) / (z - m)
            row *= 1 - e
            row[0 if m > 1 else -1] += e
        if s > 0:
            c_prev, c_now = payoff @ w[s - 1], payoff @ row
            gap = c_prev - c_now
            # rounding noise (~1e-16) at the end points, where every call curve is pinned, is
            # left alone: the Marginals check tolerance is 1e-9
            bad = gap > _CLEAN_NOISE
            if np.any(bad):
                room = np.maximum(c_ext - c_now, 1e-300)
                e = min(1.0, float(np.max(gap[bad] / room[bad])) * (1 + 1e-6))
                row = (1 - e) * row + e * ext
        w[s] = row
        moved[s] = float(np.abs(row - orig).sum())
    return w, moved


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
        lam, weight of the smoothness term relative to the band term (in half-spreads).
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
        Fewer than 2 slices, times not strictly increasing, or a bad grid.
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
    if not (reg >= 0 and np.isfinite(reg)):
        raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
    x = make_grid(quotes, grid_size) if grid is None else np.asarray(grid, dtype=float)
    if x.ndim != 1 or x.size < 3 or np.any(np.diff(x) <= 0):
        raise ValueError("grid must be a strictly increasing 1-D array of at least 3 points")
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
    amat = sparse.kron(sparse.identity(n_s), _second_difference(x), format="csr")
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
        b = _interp_matrix(x, q.k)
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
        warnings.warn(f"calibration: solver status {status}", CalibrationWarning, stacklevel=2)
    raw_c = call.value.reshape(n_s, m)
    raw_w = (amat @ call.value + bvec).reshape(n_s, m)
    # largest violation of the hard constraints by the solver's own point (before cleaning)
    primal_residual = float(max(
        0.0, -raw_w.min(), float(np.max(raw_c[:-1] - raw_c[1:])) if n_s > 1 else 0.0,
        float(np.max(np.abs(raw_c[:, 0] - (1.0 - x[0])))), float(np.max(np.abs(raw_c[:, -1]))),
    ))
    weights, moved = _clean_rows(raw_w, x)
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


# ----------------------------------------------------------------------------- chain front end
_TENOR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dwmy])\s*$", re.IGNORECASE)
_DATE = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})(?:[:@/ ]([A-Za-z]+))?\s*$")


def _parse_expiry(spec: str | float | dt.date) -> tuple[str, float | dt.date, str | None]:
    """'30d', '6w', '3m', '1y' -> ('days', days); 'YYYY-MM-DD[:ROOT]' -> ('date', date, root)."""
    if isinstance(spec, dt.date):
        return "date", spec, None
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return "days", float(spec), None
    text = str(spec)
    m = _TENOR.match(text)
    if m:
        n, unit = float(m.group(1)), m.group(2).lower()
        days = n * {"d": 1.0, "w": 7.0, "m": DAYS_PER_YEAR / 12, "y": DAYS_PER_YEAR}[unit]
        return "days", days, None
    m = _DATE.match(text)
    if m:
        return "date", dt.date.fromisoformat(m.group(1)), (m.group(2) or None)
    raise ValueError(f"expiry {text!r} is neither a tenor like '30d', '6w', '3m', '1y' nor a date "
                     "'YYYY-MM-DD' (optionally ':ROOT', e.g. '2023-07-21:SPX')")


def select_slices(chain: OptionChain, expiries: Sequence[str | float | dt.date],
                  *, min_pairs: int = 5) -> list[ChainSlice]:
    """Pick one slice per requested expiry.

    A tenor (``"30d"``, ``"6w"``, ``"3m"`` = 3 x 365/12 days, ``"1y"``, or a number of days)
    maps to the slice whose ACT/365 time to expiry is nearest; a date ``YYYY-MM-DD`` to the slice
    on that date (``YYYY-MM-DD:ROOT`` to choose the root; without one, the slice with the most
    two-sided quotes); a range of tenors ``"7d..1y"`` to every slice in it (both AM and PM
    slices of a date). Only slices with at least ``min_pairs`` put–call pairs are candidates.
    The result is sorted by time to expiry.

    Raises
    ------
    ValueError
        The chain has fewer than 2 usable slices (e.g. a single expiry), a date is not in the
        chain, or two requests map to the same slice.
    """
    usable = [s for s in chain.slices if s.n_pairs >= min_pairs]
    if len(usable) < 2:
        labels = ", ".join(s.label for s in usable) or "none"
        raise ValueError(f"{chain.path}: needs at least 2 expiries with >= {min_pairs} two-sided "
                         f"call/put pairs, found {len(usable)} ({labels}); a single expiry "
                         "cannot be calibrated in convex order")
    if len(expiries) == 0:
        raise ValueError("no expiries requested")
    chosen: dict[int, str] = {}
    for spec in expiries:
        if isinstance(spec, str) and ".." in spec:
            a, b = spec.split("..", 1)
            (ka, da, _), (kb, db, _) = _parse_expiry(a), _parse_expiry(b)
            if ka != "days" or kb != "days":
                raise ValueError(f"expiry range {spec!r} must be two tenors, e.g. '7d..1y'")
            hits = [j for j, s in enumerate(usable) if float(da) <= s.days <= float(db)]
            if not hits:
                raise ValueError(f"{chain.path}: no usable slice between {a} and {b}")
            for j in hits:
                chosen.setdefault(j, spec)
            continue
        kind, value, root = _parse_expiry(spec)
        if kind == "days":
            i = int(np.argmin([abs(s.days - float(value)) for s in usable]))
        else:
            hits = [j for j, s in enumerate(usable)
                    if s.expiry == value and (root is None or s.root.upper() == root.upper())]
            if not hits:
                avail = ", ".join(s.label for s in usable)
                raise ValueError(f"{chain.path}: no usable slice on {value}"
                                 f"{' ' + root if root else ''}; available: {avail}")
            i = max(hits, key=lambda j: usable[j].n_quotes)
        if i in chosen:
            raise ValueError(f"expiries {chosen[i]!r} and {str(spec)!r} both map to "
                             f"{usable[i].label} ({usable[i].days:.1f} days); ask for distinct "
                             "expiries")
        chosen[i] = str(spec)
    return [usable[i] for i in sorted(chosen, key=lambda j: usable[j].t)]


def calibrate_chain(
    chain: str | os.PathLike[str] | OptionChain,
    expiries: Sequence[str | float | dt.date] = DEFAULT_EXPIRIES,
    *,
    grid_size: int = 150,
    fit_range: tuple[float, float] = (0.3, 2.0),
    near_fraction: float = 0.4,
    **options,
) -> CalibrationResult:
    """Load a chain, fit forwards by parity, and calibrate marginals at the chosen expiries.

    Parameters
    ----------
    chain : path-like or OptionChain
        A CSV in either layout (``deepquant.market.quotes.load_chain``) or a loaded chain.
    expiries : sequence
        Tenors (``"30d"``, ``"3m"``, ...) or dates (``"2023-07-21"``, ``"2023-07-21:SPX"``); see
        ``select_slices``. At least 2.
    grid_size : int
        Number of grid points M.
    fit_range : (float, float)
        Quotes with K/F outside are left out of the program.
    near_fraction : float
        Fraction of the pairs used by the parity fit (``fit_parity``).
    **options
        Passed to ``calibrate`` (``reg``, ``window``, ``alpha``, ``inside_tol``, ``solver``).

    Returns
    -------
    CalibrationResult
        ``result.marginals`` is a validated ``Marginals`` (times = year fractions);
        ``result.slices[s].forward``/``discount`` convert back to currency.
    """
    t0 = time.perf_counter()
    ch = chain if isinstance(chain, OptionChain) else load_chain(chain)
    chosen = select_slices(ch, expiries)
    spot = ch.spot if np.isfinite(ch.spot) else None
    quotes = []
    for sl in chosen:
        fit = fit_parity(sl, spot=spot, near_fraction=near_fraction, source=ch.path)
        try:
            quotes.append(normalize_slice(sl, fit, fit_range=fit_range))
        except ValueError as exc:
            raise ValueError(f"{ch.path}: {exc}") from None
    res = calibrate(quotes, grid_size=grid_size, **options)
    return CalibrationResult(**{**res.__dict__, "chain_path": ch.path, "cleaning": ch.cleaning,
                                "total_time": time.perf_counter() - t0})


# ----------------------------------------------------------------------------- figures
def save_figures(result: CalibrationResult, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``densities.png`` and ``implied_vols.png`` for a calibration into ``folder``.

    * densities: the implied density p_{s,j} = W_sj / cell_j of every slice against moneyness.
    * implied vols: per slice, Black implied vols of the out-of-the-money quotes (puts for k < 1,
      calls for k >= 1) as bid–ask bars, with the model's implied vol on a fine strike grid.

    Uses matplotlib with the Agg backend (no display needed); files are written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepquant.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marg = result.marginals
    x = marg.grid
    cell = np.empty_like(x)
    cell[1:-1] = (x[2:] - x[:-2]) / 2
    cell[0], cell[-1] = (x[1] - x[0]) / 2, (x[-1] - x[-2]) / 2
    out = []

    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("viridis")
    n_s = marg.n_dates
    lo = min(float(q.k.min()) for q in result.quotes)
    hi = max(float(q.k.max()) for q in result.quotes)
    for s, rep in enumerate(result.slices):
        ax.plot(x, marg.weights[s] / cell, color=cmap(s / max(1, n_s - 1)),
                label=f"{rep.label} ({rep.days:.0f}d)", lw=1.2)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("forward moneyness K/F")
    ax.set_ylabel("implied density")
    ax.set_title("Calibrated marginals (convex order, within bid-ask)")
    ax.legend(fontsize=7, ncol=1 + n_s // 12)
    fig.tight_layout()
    with atomic_path(folder / "densities.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    out.append(folder / "densities.png")

    ncol = min(3, n_s)
    nrow = int(np.ceil(n_s / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for s, (q, rep) in enumerate(zip(result.quotes, result.slices)):
        ax = axes[s // ncol][s % ncol]
        otm = np.where(q.is_call, q.k >= 1, q.k < 1)
        kq, cq = q.k[otm], q.is_call[otm]
        iv_bid = implied_vol(q.bid[otm], kq, q.t, cq)
        iv_ask = implied_vol(q.ask[otm], kq, q.t, cq)
        mid = np.where(np.isfinite(iv_bid), iv_bid, 0.0)
        ok = np.isfinite(iv_ask)
        ax.errorbar(kq[ok], 0.5 * (mid[ok] + iv_ask[ok]),
                    yerr=0.5 * (iv_ask[ok] - mid[ok]), fmt="none", ecolor="tab:gray",
                    elinewidth=1.0, capsize=1.5, label="market bid/ask")
        kf = np.linspace(kq.min(), kq.max(), 400)
        cf = np.full(kf.shape, True)
        cf[kf < 1] = False
        c = marg.call_prices(kf)[s]
        model = np.where(cf, c, c - 1.0 + kf)
        ax.plot(kf, implied_vol(model, kf, q.t, cf), color="tab:red", lw=1.0, label="model")
        ax.set_title(f"{rep.label} ({rep.days:.0f}d): {100 * rep.fraction_inside:.1f}% inside",
                     fontsize=8)
        ax.set_xlabel("K/F", fontsize=8)
        ax.set_ylabel("implied vol", fontsize=8)
        ax.tick_params(labelsize=7)
        if s == 0:
            ax.legend(fontsize=7)
    for s in range(n_s, nrow * ncol):
        axes[s // ncol][s % ncol].axis("off")
    fig.tight_layout()
    with atomic_path(folder / "implied_vols.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    out.append(folder / "implied_vols.png")
    return out
