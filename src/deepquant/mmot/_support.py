"""Inputs of the entropic solver: cost and reference kernels, touching points, pinned rows.

``_prepare`` turns the marginals of a set of periods into the ``_Batch`` that the solvers
(``_newton``, ``_sinkhorn_sweeps``) and the projection (``projection``) work on: log reference
kernels restricted to the allowed entries, row masses with the pinned rows removed, and column
targets net of the pinned mass.

Irreducible components and edge rows (DESIGN §7). Let D(k) = C_nu(k) - C_mu(k) >= 0 be the
difference of call prices. If D(k) = 0 at a grid point k (tested relative to the round-off of the
call or put sums at k, ``touching_points``), no martingale plan moves mass across k,
and mass sitting at k stays there (conditional Jensen with equality). We therefore pin every row at
such a point to a point mass (this includes rows at the ends of the convex hull of supp(nu), where
h would diverge), forbid the entries that cross a touching point, and remove both from the Newton
system; the pinned mass is subtracted from the column targets. This handles all edge rows at once
(no repeated pinning is needed: the zero set of D is computed once). Rows and columns with zero
weight are dropped (no log 0, no division by zero).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from deepquant.market.marginals import Marginals
from deepquant.payoffs import Payoff

__all__ = [
    "pairwise_cost",
    "reference_kernels",
    "touching_points",
    "support_structure",
]


def _check_eps(eps: Any, name: str = "eps") -> float:
    """``eps`` as a float; a ``ValueError`` naming ``name`` and the value for anything but a
    positive finite real number (a bool or a string is not read as a number: ``float(True)``
    would run eps = 1, ``float("0.1")`` would hide a caller's mistake)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {eps!r}")
    val = float(eps)
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"{name} must be a positive finite number, got {eps!r}")
    return val


TOUCH_FLOOR = 1e-12
"""Multiple of the round-off scale s(k) below which D(k) = C_nu(k) - C_mu(k) always counts as
zero (``touching_points``' ``rel`` part): about 4,500 machine epsilons, above the worst-case
round-off of the prefix sums of a few thousand grid points."""

TOUCH_MASS = 1e-10
"""Between ``TOUCH_FLOOR`` and ``rel`` times s(k), a point counts as touching only when
D(k) <= ``TOUCH_MASS`` x (the smaller grid step beside k). Any martingale plan moves at least
D(k) / (that step) of mass across or out of k, so a pinned point then misplaces at most this
much mass (a tenth of the entropic solver's default ``tol``). Without it a genuine gap below
``rel`` x s(k) was pinned whatever mass it stood for: an exact mean-preserving spread of 2e-8
of mass to a point 0.016 away (D = 3.1e-10, 1e-11 x s = 7.7e-10) left the solver a marginal
error of 4e-8 it could never remove."""


def _side_steps(grid: np.ndarray) -> np.ndarray:
    """The smaller of the two grid steps beside each point (the one step at the ends; inf on
    a one-point grid)."""
    steps = np.full(grid.size, np.inf)
    if grid.size > 1:
        d = np.diff(grid)
        steps[:-1] = d
        steps[1:] = np.minimum(steps[1:], d)
    return steps


# ---------------------------------------------------------------------------- inputs
def pairwise_cost(marginals: Marginals, cost: Any) -> np.ndarray | None:
    """Cost arrays c_t(x, y), shape (N, M, M), from ``None``, an array or a pairwise ``Payoff``.

    ``None`` gives ``None`` (zero cost). A payoff must return terms from ``pairwise(N+1)``; terms
    for the same period are added.
    """
    n, m = marginals.n_periods, marginals.size
    if cost is None:
        return None
    if isinstance(cost, Payoff):
        by_t = cost.pairwise_costs(marginals.n_dates, marginals.grid)
        if by_t is None:
            raise ValueError(
                f"cost payoff {cost.name!r} is not pairwise-decomposable; "
                "path-dependent payoffs need the augmented-chain solver"
            )
        out = np.zeros((n, m, m))
        for t, c in by_t.items():
            if not 0 <= t < n:
                raise ValueError(f"pairwise term for period {t} outside 0..{n - 1}")
            out[t] += c
        return out
    arr = np.asarray(cost, dtype=np.float64)
    if arr.shape != (n, m, m):
        raise ValueError(f"cost must have shape (N, M, M) = {(n, m, m)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("cost has non-finite entries")
    return arr


def reference_kernels(marginals: Marginals, reference: Any = "product") -> np.ndarray | None:
    """Log reference kernels log q_t(y | x), shape (N, M, M), or ``None`` for the product.

    ``"product"``: q_t(y|x) = nu_t(y) (``None`` is returned; the solver uses log nu directly).
    ``"lognormal"``: Y = x exp(s Z - s^2/2) discretised on the grid (density times the trapezoid
    cell width, renormalised per row), with s_t^2 = log(1 + (Var X_{t+1} - Var X_t) / E[X_t^2])
    so that the reference's variance increment matches the marginals'. Needs a positive grid.
    An array of shape (N, M, M): kernels q_t(y|x) >= 0 (rows need not be normalised).
    """
    n, m = marginals.n_periods, marginals.size
    grid = marginals.grid
    if isinstance(reference, str):
        if reference == "product":
            return None
        if reference != "lognormal":
            raise ValueError(
                f"reference must be 'product', 'lognormal' or an (N, M, M) array, got {reference!r}"
            )
        if grid[0] <= 0:
            raise ValueError(
                f"reference='lognormal' needs a positive moneyness grid, got grid[0]={grid[0]:.6g}"
            )
        w = marginals.weights
        var = marginals.variances()
        second = w @ grid**2
        cell = np.empty(m)
        cell[1:-1] = 0.5 * (grid[2:] - grid[:-2])
        cell[0] = 0.5 * (grid[1] - grid[0])
        cell[-1] = 0.5 * (grid[-1] - grid[-2])
        min_s = 0.5 * float(np.min(np.diff(grid))) / float(grid.max())
        logx = np.log(grid)
        out = np.empty((n, m, m))
        for t in range(n):
            dvar = max(float(var[t + 1] - var[t]), 0.0)
            s = max(math.sqrt(math.log1p(dvar / second[t])), min_s)
            z = (logx[None, :] - logx[:, None] + 0.5 * s * s) / s
            lq = -0.5 * z * z - logx[None, :] + np.log(cell)[None, :]
            lq -= lq.max(axis=1, keepdims=True)
            lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))
            out[t] = lq
        return out
    arr = np.asarray(reference, dtype=np.float64)
    if arr.shape != (n, m, m):
        raise ValueError(f"reference array must have shape (N, M, M) = {(n, m, m)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("reference kernels must be finite and non-negative")
    with np.errstate(divide="ignore"):
        return np.log(arr)


def touching_points(mu: np.ndarray, nu: np.ndarray, grid: np.ndarray, *, tol: float = 0.0,
                    rel: float = 0.0) -> np.ndarray:
    """Grid points k where D(k) = C_nu(k) - C_mu(k) <= tol + rel * s(k) (and, above
    ``tol + TOUCH_FLOOR * s(k)``, D(k) <= ``TOUCH_MASS`` x the grid step beside k): no mass
    crosses k.

    ``mu``, ``nu`` have shape (B, M); returns a boolean array (B, M). The call curves of laws on
    the grid are piecewise linear with kinks at grid points, so testing grid points is exact.
    D is computed from the side with less mass: calls (sums over x_i >= k) above, puts (sums over
    x_i <= k, equal to D for equal means) below, so tail values keep their precision; s(k) is
    the round-off scale of those sums, sum (mu_i + nu_i)(|x_i| + |k|) over the same side.
    ``tol`` is an absolute tolerance, ``rel`` a multiple of s(k) (a relative test stays correct
    in tails whose masses are far below any absolute tolerance); a gap the relative test alone
    would call zero but that stands for more than ``TOUCH_MASS`` of mass is not one.
    """
    mu = np.atleast_2d(mu)
    nu = np.atleast_2d(nu)
    ax = np.abs(grid)

    def right(w: np.ndarray) -> np.ndarray:        # sum_{i >= j} w_i
        return np.cumsum(w[:, ::-1], axis=1)[:, ::-1]

    calls = lambda w: right(w * grid) - grid * right(w)           # noqa: E731
    puts = lambda w: grid * np.cumsum(w, axis=1) - np.cumsum(w * grid, axis=1)  # noqa: E731
    both = mu + nu
    s_call = right(both * ax) + ax * right(both)
    s_put = np.cumsum(both * ax, axis=1) + ax * np.cumsum(both, axis=1)
    d = np.where(s_put < s_call, puts(nu) - puts(mu), calls(nu) - calls(mu))
    scale = np.minimum(s_put, s_call)
    return ((d <= tol + min(rel, TOUCH_FLOOR) * scale)
            | ((d <= tol + rel * scale) & (d <= TOUCH_MASS * _side_steps(grid))))


def support_structure(marginals: Marginals, *, touch_tol: float = 1e-11
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The solver's structural decisions, without solving: ``(pinned, allowed)``.

    ``pinned`` (N, M) bool: rows the solver fixes to a point mass (touching points of the call
    curves, grid-edge rows, rows that reach columns on one side only). ``allowed`` (N, M, M)
    bool: the entries (x, y) a Gibbs kernel may charge (product reference: rows with mass, not
    pinned; columns with mass left after pinning; no crossing of a touching point). Kernels of
    other rows are point masses at x. For models that predict potentials (neural engine) and must
    build the same kernels as ``solve_entropic``.
    """
    w = marginals.weights
    b = _prepare(marginals.grid, w[:-1].copy(), w[1:].copy(), None, None, touch_tol=touch_tol)
    return b.pinned.copy(), np.isfinite(b.logq)


# ---------------------------------------------------------------------------- prepared batch
@dataclass
class _Batch:
    """Prepared one-period problems for a set of periods (internal).

    ``logq``: (B, M, M) log reference kernel with -inf on forbidden entries and on rows without
    Gibbs mass (None when ``_prepare`` was asked for the bands only); ``cost``: (B, M, M) or
    None; ``mu``/``nu``: active row masses / column targets (pinned mass removed);
    ``mu_full``/``nu_full``: the marginals; ``lo``/``hi``: (B, M) the touching points that
    enclose each row (with the product reference the allowed entries of a row with mass are
    the columns in [lo, hi] with nu > 0).
    """

    grid: np.ndarray
    diff: np.ndarray
    diff2: np.ndarray
    mu_full: np.ndarray
    nu_full: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    pinned: np.ndarray
    logq: np.ndarray
    logq_raw: np.ndarray | None
    cost: np.ndarray | None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.mu.shape[0])

    def logk(self, eps: float) -> np.ndarray:
        if self.cost is None:
            return self.logq
        return self.logq - self.cost / eps


def _prepare(grid: np.ndarray, mu_full: np.ndarray, nu_full: np.ndarray,
             logq_raw: np.ndarray | None, cost: np.ndarray | None, *, touch_tol: float,
             logq: bool = True) -> _Batch:
    """The ``_Batch`` of periods with marginals ``mu_full``, ``nu_full`` (B, M) (module doc).

    ``logq=False`` with the product reference skips the (B, M, M) log kernel (``logq`` is then
    None; the supports are ``lo``, ``hi`` and ``nu > 0``), for callers that read the bands.
    """
    build = logq or logq_raw is not None
    b, m = mu_full.shape
    diff = grid[None, :] - grid[:, None]
    if logq_raw is None and not build:      # the bands only: one compiled pass
        mu, nu, pinned, lo, hi = _product_bands(grid, np.ascontiguousarray(mu_full, dtype=float),
                                                np.ascontiguousarray(nu_full, dtype=float),
                                                float(touch_tol), _side_steps(grid),
                                                TOUCH_FLOOR, TOUCH_MASS)
        return _Batch(grid=grid, diff=diff, diff2=diff * diff, mu_full=mu_full,
                      nu_full=nu_full, mu=mu, nu=nu, pinned=pinned, logq=None,
                      logq_raw=None, cost=cost, lo=lo, hi=hi)
    touch = touching_points(mu_full, nu_full, grid, rel=touch_tol)
    has_mass = mu_full > 0
    pinned = touch & has_mass
    mu = np.where(pinned, 0.0, mu_full)
    nu = nu_full - np.where(pinned, mu_full, 0.0)
    # rounding: pinned mass equal to the column mass up to round-off leaves an empty column
    nu = np.where(nu <= 1e-14 * np.maximum(nu_full, 1e-300), 0.0, nu)
    nu = np.maximum(nu, 0.0)
    # allowed entries: y in [lo(x), hi(x)], the touching points that enclose x (the last one
    # strictly before x, else 0; the first one strictly after x, else m - 1), all periods at once
    idx = np.arange(m)
    lo = np.zeros((b, m), dtype=np.int64)
    hi = np.full((b, m), m - 1, dtype=np.int64)
    if m > 1:
        lo[:, 1:] = np.maximum.accumulate(np.where(touch[:, :-1], idx[:-1], 0), axis=1)
        hi[:, :-1] = np.minimum.accumulate(
            np.where(touch[:, :0:-1], idx[:0:-1], m - 1), axis=1)[:, ::-1]
    rows = np.arange(b)[:, None]
    # rows whose reachable columns all lie on one side of x (or nowhere) admit no martingale
    # kernel except the point mass at x: possible only when the marginals violate convex
    # order at round-off level in a far tail (noise-level masses), or with a reference
    # kernel that has zeros. Such rows are pinned too; if the column at x lacks the mass,
    # the (tiny) deficit shows up in the measured marginal error. Columns no row reaches are
    # dropped likewise. (Repeated: pinning a row can empty the column that kept another row
    # feasible; every period in each pass, a pass changes only the periods with stuck rows.)
    if logq_raw is None:
        # product reference: allowed = [lo, hi] x (nu > 0) on rows with mass, so the
        # one-sided test needs only prefix counts of the live columns (O(M) per pass)
        for _ in range(m):
            cnt = np.zeros((b, m + 1), dtype=np.int64)
            np.cumsum(nu > 0, axis=1, out=cnt[:, 1:])
            has_left = cnt[:, :-1] - cnt[rows, lo] > 0             # a live column in [lo, x)
            has_right = cnt[rows, hi + 1] - cnt[:, 1:] > 0         # a live column in (x, hi]
            stuck = (mu > 0) & ~(has_left & has_right)
            if not stuck.any():
                break
            pinned |= stuck
            mu[stuck] = 0.0
            nu[stuck] = np.maximum(nu[stuck] - mu_full[stuck], 0.0)
        with np.errstate(divide="ignore"):
            base = np.log(nu_full)
        out = np.empty((b, m, m) if build else (0, 0, 0))
        reached = _product_logq(lo, hi, mu, nu, base, out, build)
        out = out if build else None
        nu[~reached & (nu > 0)] = 0.0                       # columns no row reaches
    else:
        band = (idx[None, None, :] >= lo[:, :, None]) & (idx[None, None, :] <= hi[:, :, None])
        allowed = band & (mu > 0)[:, :, None] & (nu > 0)[:, None, :]
        base = logq_raw
        allowed &= np.isfinite(base)
        for _ in range(m):
            cs = np.cumsum(allowed, axis=2)
            diag = cs[:, idx, idx]
            has_left = diag - allowed[:, idx, idx] > 0              # an allowed column y < x
            has_right = cs[:, :, -1] - diag > 0                     # an allowed column y > x
            stuck = (mu > 0) & ~(has_left & has_right)
            if not stuck.any():
                break
            pinned |= stuck
            mu[stuck] = 0.0
            allowed[stuck] = False
            nu[stuck] = np.maximum(nu[stuck] - mu_full[stuck], 0.0)
            allowed &= (nu > 0)[:, None, :]
        nu[~allowed.any(axis=1) & (nu > 0)] = 0.0           # columns no row reaches
        out = np.where(allowed, base, -np.inf)
    return _Batch(grid=grid, diff=diff, diff2=diff * diff, mu_full=mu_full, nu_full=nu_full,
                  mu=mu, nu=nu, pinned=pinned, logq=out, logq_raw=logq_raw, cost=cost,
                  lo=lo, hi=hi)


@njit(cache=True, nogil=True)
def _product_logq(lo, hi, mu, nu, lognu, logq, build):  # pragma: no cover
    """``logq[t, x, y]`` = log nu_full(y) on the allowed entries of the product reference (x
    with mass, y in [lo(x), hi(x)] with target mass), -inf elsewhere, in one pass (if
    ``build``); returns which columns some row reaches (B, M)."""
    b, m = mu.shape
    reached = np.zeros((b, m), dtype=np.bool_)
    for t in range(b):
        if not build:           # the reached columns only: the union of the rows' bands
            cover = np.zeros(m + 1, dtype=np.int64)
            for x in range(m):
                if mu[t, x] > 0:
                    cover[lo[t, x]] += 1
                    cover[hi[t, x] + 1] -= 1
            run = 0
            for y in range(m):
                run += cover[y]
                reached[t, y] = run > 0 and nu[t, y] > 0
            continue
        for x in range(m):
            row = logq[t, x]
            a, e = (lo[t, x], hi[t, x] + 1) if mu[t, x] > 0 else (m, m)
            for y in range(m):
                if a <= y < e and nu[t, y] > 0:
                    row[y] = lognu[t, y]
                    reached[t, y] = True
                else:
                    row[y] = -np.inf
    return reached


@njit(cache=True, nogil=True)
def _product_bands(grid, mu_full, nu_full, rel, steps, floor, mass):  # pragma: no cover
    """``_prepare(..., logq=False)`` with the product reference, compiled: (mu, nu, pinned,
    lo, hi), each (B, M). The same operations in the same order as the numpy path
    (``touching_points`` with ``rel``, ``floor`` = ``TOUCH_FLOOR``, ``mass`` = ``TOUCH_MASS``
    and ``steps`` = ``_side_steps(grid)``: sequential prefix and suffix sums; the pinning
    passes; the columns no band reaches), so the output is identical bit for bit
    (tests/mmot/test_support_prepare.py); no fastmath."""
    b, m = mu_full.shape
    mu = np.empty((b, m))
    nu = np.empty((b, m))
    pinned = np.zeros((b, m), dtype=np.bool_)
    lo = np.zeros((b, m), dtype=np.int64)
    hi = np.full((b, m), m - 1, dtype=np.int64)
    ax = np.abs(grid)
    # prefix (p*) and suffix (r*) sums of nu x, nu, mu x, mu, (mu + nu)|x|, mu + nu
    pnx, pn, pmx, pm, pba, pb = np.empty((6, m))
    rnx, rn, rmx, rm, rba, rb = np.empty((6, m))
    touch = np.empty(m, dtype=np.bool_)
    cnt = np.zeros(m + 1, dtype=np.int64)
    for t in range(b):
        mw, nw = mu_full[t], nu_full[t]
        for j in range(m):
            both = mw[j] + nw[j]
            if j == 0:
                pnx[j], pn[j], pmx[j], pm[j] = nw[j] * grid[j], nw[j], mw[j] * grid[j], mw[j]
                pba[j], pb[j] = both * ax[j], both
            else:
                pnx[j] = pnx[j - 1] + nw[j] * grid[j]
                pn[j] = pn[j - 1] + nw[j]
                pmx[j] = pmx[j - 1] + mw[j] * grid[j]
                pm[j] = pm[j - 1] + mw[j]
                pba[j] = pba[j - 1] + both * ax[j]
                pb[j] = pb[j - 1] + both
        for j in range(m - 1, -1, -1):
            both = mw[j] + nw[j]
            if j == m - 1:
                rnx[j], rn[j], rmx[j], rm[j] = nw[j] * grid[j], nw[j], mw[j] * grid[j], mw[j]
                rba[j], rb[j] = both * ax[j], both
            else:
                rnx[j] = rnx[j + 1] + nw[j] * grid[j]
                rn[j] = rn[j + 1] + nw[j]
                rmx[j] = rmx[j + 1] + mw[j] * grid[j]
                rm[j] = rm[j + 1] + mw[j]
                rba[j] = rba[j + 1] + both * ax[j]
                rb[j] = rb[j + 1] + both
        for j in range(m):
            s_call = rba[j] + ax[j] * rb[j]
            s_put = pba[j] + ax[j] * pb[j]
            if s_put < s_call:
                d = (grid[j] * pn[j] - pnx[j]) - (grid[j] * pm[j] - pmx[j])
            else:
                d = (rnx[j] - grid[j] * rn[j]) - (rmx[j] - grid[j] * rm[j])
            sc = min(s_put, s_call)
            touch[j] = (d <= 0.0 + min(rel, floor) * sc) or (d <= 0.0 + rel * sc
                                                              and d <= mass * steps[j])
        for j in range(m):
            pinned[t, j] = touch[j] and mw[j] > 0
            mu[t, j] = 0.0 if pinned[t, j] else mw[j]
            v = nw[j] - (mw[j] if pinned[t, j] else 0.0)
            v = 0.0 if v <= 1e-14 * max(nw[j], 1e-300) else v
            nu[t, j] = max(v, 0.0)
        for j in range(1, m):
            lo[t, j] = max(lo[t, j - 1], j - 1 if touch[j - 1] else 0)
        for j in range(m - 2, -1, -1):
            hi[t, j] = min(hi[t, j + 1], j + 1 if touch[j + 1] else m - 1)
        cnt[0] = 0
        for _ in range(m):          # rows with live columns on one side only: pinned
            for j in range(m):
                cnt[j + 1] = cnt[j] + (1 if nu[t, j] > 0 else 0)
            any_stuck = False
            for x in range(m):
                left = cnt[x] - cnt[lo[t, x]] > 0
                right = cnt[hi[t, x] + 1] - cnt[x + 1] > 0
                if mu[t, x] > 0 and not (left and right):
                    touch[x] = True     # reused as the pass's stuck mask
                    any_stuck = True
                else:
                    touch[x] = False
            if not any_stuck:
                break
            for x in range(m):
                if touch[x]:
                    pinned[t, x] = True
                    mu[t, x] = 0.0
                    nu[t, x] = max(nu[t, x] - mu_full[t, x], 0.0)
        run = 0                     # columns no row's band reaches are dropped
        for j in range(m + 1):
            cnt[j] = 0
        for x in range(m):
            if mu[t, x] > 0:
                cnt[lo[t, x]] += 1
                cnt[hi[t, x] + 1] -= 1
        for y in range(m):
            run += cnt[y]
            if not run > 0 and nu[t, y] > 0:
                nu[t, y] = 0.0
    return mu, nu, pinned, lo, hi
