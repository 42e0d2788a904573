"""The common moneyness grid of a calibration, and the clean-up of the solver's weights.

``make_grid`` places the points where the quotes need resolution (equidistribution of
sqrt(density / half-spread)); ``interp_matrix`` and ``second_difference`` are the sparse maps
from call values on the grid to quote prices and to weights; ``clean_rows`` turns the solver's
weights into exact probabilities of mean 1 in convex order, reporting how far each row moved.
All serve ``deepquant.market.calibrate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from deepquant.blackscholes import implied_vol
from deepquant.market.marginals import call_curve

if TYPE_CHECKING:
    from deepquant.market.parity import SliceQuotes

__all__ = ["clean_rows", "interp_matrix", "make_grid", "second_difference"]

_CLEAN_NOISE = 1e-13


def _smile_density_weight(q: SliceQuotes, x: np.ndarray) -> np.ndarray:
    """sqrt(p(x) / h(x)) on the quoted range of ``q``, 0 outside (see ``make_grid``).

    p(x): lognormal density of mean 1 whose total volatility is the slice's mid implied total
    volatility at x (out-of-the-money quotes, interpolated in log k, flat beyond), a cheap proxy
    of the density that keeps the skew's fat left tail; h(x): the half-spread, interpolated.
    """
    otm = np.where(q.is_call, q.k >= 1, q.k <= 1)
    mid = (q.bid + q.ask) / 2
    v = implied_vol(mid[otm], 1.0, q.k[otm], 1.0, is_call=q.is_call[otm])
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




def clean_rows(w: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    ext = np.zeros(grid.size)
    ext[0], ext[-1] = (x1 - 1) / (x1 - x0), (1 - x0) / (x1 - x0)
    c_ext = call_curve(grid, ext)[0]
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
            c_prev, c_now = call_curve(grid, w[s - 1])[0], call_curve(grid, row)[0]
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


def interp_matrix(grid: np.ndarray, k: np.ndarray) -> sparse.csr_matrix:
    """Sparse (Q, M) matrix B with (B c)_i = linear interpolation of c (on grid) at k_i."""
    j = np.clip(np.searchsorted(grid, k, side="right") - 1, 0, grid.size - 2)
    lam = (k - grid[j]) / (grid[j + 1] - grid[j])
    rows = np.repeat(np.arange(k.size), 2)
    cols = np.stack([j, j + 1], axis=1).ravel()
    vals = np.stack([1 - lam, lam], axis=1).ravel()
    return sparse.csr_matrix((vals, (rows, cols)), shape=(k.size, grid.size))


def second_difference(x: np.ndarray) -> sparse.csr_matrix:
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
