"""Concave envelopes on the augmented chain: the exact superhedging sweep and its entropic
smoothing (DESIGN §2.8).

For static potentials u_t on the grid (the upper side; the lower side is the upper side of -f),
the cheapest semi-static superhedge follows from one backward sweep over the chain (X_t, S_t):

    W_T(x, s) = f(x, s) - u_T(x),
    G_{t,s}(y) = sum_{s'} K_t(s, y; s') W_{t+1}(y, s'),            y in supp mu_{t+1},
    V_t(x, s) = cav_y G_{t,s} (x),        W_t = V_t - u_t   (t >= 1),

where cav_y is the upper concave envelope over the points y of supp mu_{t+1}, evaluated at x; its
slope at x is the position h_t(x, s) in the underlying. For every u,

    F(u) = sum_{t>=1} <u_t, mu_t> + sum_x mu_0(x) V_0(x, s_0(x))  >=  max E[f]

(weak duality: the portfolio dominates f on every path of the chain), and min_u F = the LP value.
One hull per state s costs O(Y) (monotone chain), so a sweep costs O(sum_t n_t M).

The smoothed sweep replaces cav by the entropic envelope with h eliminated per state,

    V_t(x, s) = min_h eps log sum_y exp((G~_{t,s}(y) - h (y - x)) / eps),
    G~ = G + eps log mu_{t+1}(y)   (reference kernel: the next marginal),

whose minimiser h makes the Gibbs kernel p(y | x, s) an exact martingale transition. F_eps is
smooth and convex in u with gradient mu_t - (law of X_t under that chain). The sum over y is
restricted to the band of points whose gap to the exact supporting line at x is below
``band`` * eps (the hull bounds the gap from below, so the scan stops at the first hull vertex
beyond the band); the dropped terms weigh less than exp(-band) each.

The kernels run in numba (compiled on first use, cached on disk); ``warm_kernels`` compiles or
loads them all once per process, so that a timed solve does not pay for it.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

__all__ = ["hull_sweep_period", "soft_sweep_period", "soft_forward_period",
           "hedge_violation_period", "point_slack_period", "gather_period", "scatter_period",
           "moves_period", "kernels", "warm_kernels"]

_PIN = 1e-13  # relative distance to the end of the hull at which a row is pinned (point mass)


@njit(cache=True, nogil=True)
def _upper_hull(yv, g, out, hx, hg):
    """Positions of the vertices of the upper concave hull of (yv[j], g[j]) (yv increasing).
    Writes them into ``out``, their abscissae and values into ``hx`` and ``hg`` (the chain
    reads its last vertices from these, not through ``out``: one load instead of two dependent
    ones per test), and returns their number. Collinear points are dropped."""
    n = 0
    for j in range(yv.size):
        yj = yv[j]
        gj = g[j]
        while n >= 2:
            ax = hx[n - 2]
            ag = hg[n - 2]
            # drop the last vertex if it lies on or below the chord from the one before to j
            cross = (hx[n - 1] - ax) * (gj - ag) - (hg[n - 1] - ag) * (yj - ax)
            if cross >= 0.0:
                n -= 1
            else:
                break
        out[n] = j
        hx[n] = yj
        hg[n] = gj
        n += 1
    return n


def _hull_sweep_period(G, yv, xv, live, val, slope, j1, j2, lam, vert):
    """Exact envelope of one period.

    G : (n_s, Y) values G_{t,s}(y);  yv : (Y,) next points;  xv : (X,) current points (sorted);
    live : (n_s, X) bool, the reachable pairs. Outputs (n_s, X): ``val`` = cav at x, ``slope``
    = a supergradient (the hedge h), ``j1``/``j2`` = positions in yv of the move and ``lam`` the
    weight on j1 (the hull chain: the martingale transition on the bracketing vertices);
    ``vert`` (n_s, Y) marks hull vertices. Pairs whose x lies outside [yv[0], yv[-1]] get
    val = -inf (no martingale transition exists)."""
    n_s, n_y = G.shape
    n_x = xv.size
    hull = np.empty(n_y, np.int64)
    hx = np.empty(n_y)
    hg = np.empty(n_y)
    for s in range(n_s):
        nh = _upper_hull(yv, G[s], hull, hx, hg)
        for k in range(n_y):
            vert[s, k] = False
        for k in range(nh):
            vert[s, hull[k]] = True
        k = 0
        for a in range(n_x):
            if not live[s, a]:
                val[s, a] = 0.0
                slope[s, a] = 0.0
                j1[s, a] = 0
                j2[s, a] = 0
                lam[s, a] = 1.0
                continue
            x = xv[a]
            if x < hx[0] or x > hx[nh - 1]:
                val[s, a] = -np.inf
                slope[s, a] = 0.0
                j1[s, a] = 0
                j2[s, a] = 0
                lam[s, a] = 1.0
                continue
            while k < nh - 2 and hx[k + 1] < x:
                k += 1
            while k > 0 and hx[k] > x:
                k -= 1
            if nh == 1:
                val[s, a] = hg[0]
                slope[s, a] = 0.0
                j1[s, a] = hull[0]
                j2[s, a] = hull[0]
                lam[s, a] = 1.0
                continue
            ia = hull[k]
            ib = hull[k + 1]
            ya = hx[k]
            yb = hx[k + 1]
            ga = hg[k]
            gb = hg[k + 1]
            sl = (gb - ga) / (yb - ya)
            slope[s, a] = sl
            if x == ya:
                val[s, a] = ga
                j1[s, a] = ia
                j2[s, a] = ia
                lam[s, a] = 1.0
            elif x == yb:
                val[s, a] = gb
                j1[s, a] = ib
                j2[s, a] = ib
                lam[s, a] = 1.0
            else:
                w = (yb - x) / (yb - ya)
                val[s, a] = w * ga + (1.0 - w) * gb
                j1[s, a] = ia
                j2[s, a] = ib
                lam[s, a] = w


@njit(cache=True, nogil=True)
def _soft_row(g, dv, lo, hi, h, h_mid, radius, eps, tol, max_iter):
    """min_h eps log sum_{j=lo..hi} exp((g[j] - h dv[j]) / eps) by safeguarded Halley steps
    (Newton with the third moment; dv[j] = y_j - x, filled on lo..hi).

    The minimiser lies within ``radius`` of the exact slope ``h_mid`` (the band holds every
    point within band*eps of the supporting line), so h is kept in that interval; a step that
    goes uphill is halved, unless it meets the drift tolerance (near the minimum the value is
    flat to rounding). One pass of exponentials per step: the mean, variance and third central
    moment of y - x under the Gibbs kernel come from its raw moments, shifted by the largest
    exponent.
    Returns (value, h, |E[y - x]|)."""
    h_lo = h_mid - radius
    h_hi = h_mid + radius
    h = min(max(h, h_lo), h_hi)
    best_v = np.inf
    best_h = h
    drift = np.inf
    h_prev = h
    inv = 1.0 / eps
    for _ in range(max_iter):
        mx = -np.inf
        for j in range(lo, hi + 1):
            z = g[j] - h * dv[j]
            if z > mx:
                mx = z
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for j in range(lo, hi + 1):
            d = dv[j]
            e = np.exp((g[j] - h * d - mx) * inv)
            s0 += e
            ed = e * d
            s1 += ed
            edd = ed * d
            s2 += edd
            s3 += edd * d
        mean = s1 / s0
        v = mx + eps * np.log(s0)
        if (not (v <= best_v + 1e-15 * (abs(best_v) + eps)) and best_v < np.inf
                and not abs(mean) <= tol):
            # uphill (or not finite): halve the step (the objective is convex in h); a point
            # that meets the drift tolerance is the minimiser, whatever the rounding of v says
            h = 0.5 * (h + h_prev)
            continue
        best_v = v
        best_h = h
        drift = abs(mean)
        if drift <= tol:
            break
        if mean > 0.0:
            h_lo = max(h_lo, h)
        else:
            h_hi = min(h_hi, h)
        m2 = s2 / s0
        var = m2 - mean * mean
        h_prev = h
        # a variance lost to cancellation (kernel on one point far from x) bisects instead
        step = eps * mean / var if var > 1e-12 * m2 else np.inf
        if step < np.inf:
            # Halley: the third central moment of y - x corrects the Newton step (cubic order)
            k3 = s3 / s0 - 3.0 * mean * m2 + 2.0 * mean * mean * mean
            c = 1.0 - 0.5 * mean * k3 / (var * var)
            if 0.5 < c < 2.0:
                step /= c
        h_new = h + step
        if not (h_lo < h_new < h_hi):
            h_new = 0.5 * (h_lo + h_hi)  # bisection inside the bracket
        if abs(h_new - h) <= 1e-14 * (abs(h) + radius):
            break
        h = h_new
    return best_v, best_h, drift


def _soft_sweep_period(G, yv, xv, live, hval, hslope, vert, eps, band, h_init, use_init,
                      val, h_out, lo_out, hi_out, drift_out):
    """Entropic envelope of one period (see the module docstring).

    G : (n_s, Y) the smoothed values G~ (reference folded in); hval/hslope/vert from
    ``hull_sweep_period`` on the same G; h_init (n_s, X) warm starts used where ``use_init``.
    Outputs (n_s, X): val, h_out, the band [lo_out, hi_out] (positions in yv) and the drift."""
    n_s, n_y = G.shape
    n_x = xv.size
    thr = band * eps
    span = yv[n_y - 1] - yv[0]
    for s in range(n_s):
        g = G[s]
        dv = np.empty(n_y)
        for a in range(n_x):
            if not live[s, a]:
                val[s, a] = 0.0
                h_out[s, a] = 0.0
                lo_out[s, a] = 0
                hi_out[s, a] = -1
                drift_out[s, a] = 0.0
                continue
            x = xv[a]
            # position p: last j with yv[j] <= x
            lo = 0
            hi = n_y - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if yv[mid] <= x:
                    lo = mid
                else:
                    hi = mid - 1
            p = lo
            pin_lo = x - yv[0] <= _PIN * span
            pin_hi = yv[n_y - 1] - x <= _PIN * span
            if pin_lo or pin_hi:
                q = 0 if pin_lo else n_y - 1
                val[s, a] = g[q]
                h_out[s, a] = hslope[s, a]
                lo_out[s, a] = q
                hi_out[s, a] = q
                drift_out[s, a] = 0.0
                continue
            v0 = hval[s, a]
            s0 = hslope[s, a]
            j = p
            while j >= 0:
                d = v0 + s0 * (yv[j] - x) - g[j]
                if vert[s, j] and d > thr:
                    break
                j -= 1
            lo = j + 1
            j = p + 1
            while j < n_y:
                d = v0 + s0 * (yv[j] - x) - g[j]
                if vert[s, j] and d > thr:
                    break
                j += 1
            hi = j - 1
            if lo > p or hi <= p and yv[p] < x:
                # cannot happen for x inside the hull (the bracketing vertices have gap 0)
                lo = max(0, min(lo, p))
                hi = min(n_y - 1, max(hi, p + 1))
            dmin = span
            for j in range(lo, hi + 1):
                dj = yv[j] - x
                dv[j] = dj
                d = abs(dj)
                if 0.0 < d < dmin:
                    dmin = d
            radius = 2.0 * (band + 2.0) * eps / dmin
            h0 = h_init[s, a] if use_init else s0
            tol = 1e-12 * span
            v, hh, dr = _soft_row(g, dv, lo, hi, h0, s0, radius, eps, tol, 80)
            val[s, a] = v
            h_out[s, a] = hh
            lo_out[s, a] = lo
            hi_out[s, a] = hi
            drift_out[s, a] = dr


def _soft_forward_period(G, yv, xv, mass, h, lo, hi, val, eps, q):
    """Mass of (S_t = s, X_{t+1} = yv[j]) under the smoothed chain: q[s, j] = sum_x mass[s, x]
    p(j | x, s), p the Gibbs kernel exp((G~ - h (y - x) - val) / eps) on the band."""
    n_s, n_y = G.shape
    n_x = xv.size
    e = np.empty(n_y)  # the row's terms, each computed once
    for s in range(n_s):
        for j in range(n_y):
            q[s, j] = 0.0
        for a in range(n_x):
            w = mass[s, a]
            if w <= 0.0 or hi[s, a] < lo[s, a]:
                continue
            x = xv[a]
            tot = 0.0
            for j in range(lo[s, a], hi[s, a] + 1):
                e[j] = np.exp((G[s, j] - h[s, a] * (yv[j] - x) - val[s, a]) / eps)
                tot += e[j]
            for j in range(lo[s, a], hi[s, a] + 1):
                q[s, j] += w * e[j] / tot


def _hedge_violation_period(G, yv, xv, live, val, slope):
    """Largest violation max_y [G_s(y) - val(s, x) - slope(s, x) (y - x)] over the live pairs,
    per state (n_s,): what the superhedge of this period misses on its worst move. (The loop
    over y is innermost and element-wise, so it vectorises; max is exact, so the order of the
    pairs does not change the result.)"""
    n_s, n_y = G.shape
    n_x = xv.size
    out = np.zeros(n_s)
    worst = np.empty(n_y)
    for s in range(n_s):
        for j in range(n_y):
            worst[j] = 0.0
        for a in range(n_x):
            if not live[s, a]:
                continue
            x = xv[a]
            v = val[s, a]
            p = slope[s, a]
            for j in range(n_y):
                d = G[s, j] - v - p * (yv[j] - x)
                worst[j] = d if d > worst[j] else worst[j]
        best = 0.0
        for j in range(n_y):
            if worst[j] > best:
                best = worst[j]
        out[s] = best
    return out


def _point_slack_period(G, yv, xv, live, val, slope):
    """Smallest slack min_{s, x} [val(s, x) + slope(s, x) (y - x) - G_s(y)] of each next point
    y (Y,) under the supporting lines of all live pairs with a finite value (+inf if none): by
    how much W_{t+1}(y, .) can rise (u_{t+1}(y) fall) before y touches a line of period t.
    (The loop over y is innermost and element-wise, so it vectorises.)"""
    n_s, n_y = G.shape
    n_x = xv.size
    out = np.full(n_y, np.inf)
    for s in range(n_s):
        for a in range(n_x):
            if not live[s, a]:
                continue
            x = xv[a]
            v = val[s, a]
            p = slope[s, a]
            for j in range(n_y):
                d = v + p * (yv[j] - x) - G[s, j]
                out[j] = d if d < out[j] else out[j]
    return out


def _gather_period(nidx, nw, w_next, out):
    """out[s, j] = sum_k nw[s, j, k] w_next[nidx[s, j, k], j] over the (at most two) states the
    statistic moves (s, y_j) to, the second only where its weight is > 0 (``sweep._Period``'s
    layout): G_{t,s}(y) of the sweeps from W_{t+1}."""
    n_s, n_y = out.shape
    for s in range(n_s):
        for j in range(n_y):
            a = nw[s, j, 0] * w_next[nidx[s, j, 0], j]
            if nw[s, j, 1] > 0.0:
                a = a + nw[s, j, 1] * w_next[nidx[s, j, 1], j]
            else:
                a = a + 0.0
            out[s, j] = a


def _scatter_period(nidx, nw, q, out):
    """out[nidx[s, j, k], j] += q[s, j] nw[s, j, k] in the order of (s, j, k) (``out`` zeroed
    first): the law at t+1 of the states the statistic moves the mass q of (S_t = s,
    X_{t+1} = y_j) to."""
    n_s, n_y = q.shape
    for i in range(out.shape[0]):
        for j in range(n_y):
            out[i, j] = 0.0
    for s in range(n_s):
        for j in range(n_y):
            m = q[s, j]
            out[nidx[s, j, 0], j] += m * nw[s, j, 0]
            out[nidx[s, j, 1], j] += m * nw[s, j, 1]


def _moves_period(mass, live, j1, j2, lam, q):
    """q[s, j] = the mass the exact sweep's envelopes move from the live states (s, x) of
    ``mass`` (n_s, X) to (S_t = s, X_{t+1} = y_j): weight lam to y_j1, 1 - lam to y_j2 (``q``
    zeroed first), added in numpy's bincount order of the index list [the j1 moves; the j2
    moves], states with mass in row-major order, so the sums are numpy's to the bit."""
    n_s, n_x = mass.shape
    for s in range(n_s):
        for j in range(q.shape[1]):
            q[s, j] = 0.0
    for s in range(n_s):
        for a in range(n_x):
            m = mass[s, a]
            if m > 0.0 and live[s, a]:
                q[s, j1[s, a]] += m * lam[s, a]
    for s in range(n_s):
        for a in range(n_x):
            m = mass[s, a]
            if m > 0.0 and live[s, a]:
                q[s, j2[s, a]] += m * (1.0 - lam[s, a])


_PY = dict(hull_sweep_period=_hull_sweep_period, soft_sweep_period=_soft_sweep_period,
           soft_forward_period=_soft_forward_period,
           hedge_violation_period=_hedge_violation_period,
           point_slack_period=_point_slack_period, gather_period=_gather_period,
           scatter_period=_scatter_period, moves_period=_moves_period)
_SERIAL = {k: njit(cache=True)(f) for k, f in _PY.items()}
"""The compiled kernels, serial. A threaded build (``parallel=True``) of the same functions was
dropped: numba's disk cache keys an entry by the function and its signature, not by the
``parallel`` flag, so the two builds shared one entry and whichever compiled first ran in both
roles (measured: the threaded kernel a cache hit right after the serial compile, 2.3 us per
call against 13.8 us for a real threaded build; a large first sweep would have left threaded
code in every small one, 10x slower there). Threaded copies under their own names were
measured no better on 2 cores (docs/benchmarks-certified.md)."""


def kernels() -> dict:
    """The compiled kernels by name (``_SERIAL``)."""
    return _SERIAL


_WARM = False  # set by warm_kernels once every kernel of this process is compiled or loaded


def warm_kernels() -> float:
    """Compile (first use after an install or an edit of this module: 6-7 s) or load from
    numba's disk cache (0.3-1.8 s) every kernel of this module by running each once on a
    one-state, three-point period with the argument types of ``deepquant.mmot.sweep`` (float64 and int64 C arrays, bool ``live``, float
    ``eps``/``band``). Once per process: later calls return 0.0 at once.

    Returns the seconds spent (what a timed solve would otherwise pay inside its budget)."""
    global _WARM
    if _WARM:
        return 0.0
    t0 = time.perf_counter()
    yv = np.array([0.9, 1.0, 1.1])
    G = np.array([[0.1, 0.0, 0.1]])  # convex: the envelope at 1.0 is the chord, slope 0
    live = np.ones((1, 3), dtype=np.bool_)
    for k in (_SERIAL,):
        val, slope, lam = np.empty((1, 3)), np.empty((1, 3)), np.empty((1, 3))
        j1, j2 = np.empty((1, 3), np.int64), np.empty((1, 3), np.int64)
        vert = np.empty((1, 3), np.bool_)
        k["hull_sweep_period"](G, yv, yv, live, val, slope, j1, j2, lam, vert)
        k["hedge_violation_period"](G, yv, yv, live, val, slope)
        k["point_slack_period"](G, yv, yv, live, val, slope)
        sval, h, drift = np.empty((1, 3)), np.empty((1, 3)), np.empty((1, 3))
        lo, hi = np.empty((1, 3), np.int64), np.empty((1, 3), np.int64)
        k["soft_sweep_period"](G, yv, yv, live, val, slope, vert, 0.01, 40.0, slope, False,
                               sval, h, lo, hi, drift)
        k["soft_forward_period"](G, yv, yv, np.full((1, 3), 1.0 / 3.0), h, lo, hi, sval, 0.01,
                                 np.empty((1, 3)))
        nidx, nw = np.zeros((1, 3, 2), np.int64), np.zeros((1, 3, 2))
        k["gather_period"](nidx, nw, G, np.empty((1, 3)))
        k["scatter_period"](nidx, nw, G, np.empty((1, 3)))
        k["moves_period"](np.full((1, 3), 1.0 / 3.0), live, j1, j2, lam, np.empty((1, 3)))
    _WARM = True
    return time.perf_counter() - t0


hull_sweep_period = _SERIAL["hull_sweep_period"]
soft_sweep_period = _SERIAL["soft_sweep_period"]
soft_forward_period = _SERIAL["soft_forward_period"]
hedge_violation_period = _SERIAL["hedge_violation_period"]
point_slack_period = _SERIAL["point_slack_period"]
gather_period = _SERIAL["gather_period"]
scatter_period = _SERIAL["scatter_period"]
moves_period = _SERIAL["moves_period"]
