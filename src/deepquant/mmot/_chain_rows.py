"""Row-wise log-sum-exp numerics of the augmented entropic solver
(``deepquant.mmot.augmented_entropic``): a stable log-sum-exp, its segmented form, and the
per-row martingale solve min_g log sum_y exp(L_y + g d_y) (1-D, convex, safeguarded Newton)."""

from __future__ import annotations

import numpy as np


def _lse(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return -np.inf
    mx = v.max()
    return float(mx + np.log(np.exp(v - mx).sum()))


def _segment_logsumexp(key: np.ndarray, vals: np.ndarray, size: int) -> np.ndarray:
    """out[k] = log sum_{i: key_i = k} exp(vals_i); -inf for empty segments."""
    mx = np.full(size, -np.inf)
    np.maximum.at(mx, key, vals)
    safe = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(invalid="ignore"):
        e = np.exp(vals - safe[key])
    e = np.where(np.isfinite(e), e, 0.0)
    s = np.bincount(key, weights=e, minlength=size)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, safe + np.log(s), -np.inf)


def _min_logsumexp(L: np.ndarray, d: np.ndarray, g0: np.ndarray | None, tol: float,
                   max_iter: int = 200):
    """Per row, minimise psi(g) = log sum_y exp(L_y + g d_y) over g (convex, 1-D).

    Returns g (P,), psi (P,), and the minimising softmax weights (P, M), whose mean of d is 0 to
    ``tol`` (the martingale condition). Rows with support on one side of 0 only are pinned to the
    point mass at d = 0 (g = -+inf); rows with no feasible move get psi = -inf and zero weights.
    Safeguarded Newton: steps capped at 30 / max|d| in log-weight (the cap doubles while no
    bracket is known on the side of the move), bisection inside the bracket once one is known.
    """
    P, M = L.shape
    fin = np.isfinite(L)
    has_pos = (fin & (d > 0)).any(axis=1)
    has_neg = (fin & (d < 0)).any(axis=1)
    has_zero = (fin & (d == 0)).any(axis=1)
    interior = has_pos & has_neg
    g = np.zeros(P) if g0 is None or g0.shape != (P,) else np.where(np.isfinite(g0), g0, 0.0)
    g = np.where(interior, g, 0.0)
    lo = np.full(P, -np.inf)
    hi = np.full(P, np.inf)
    dspan = np.where(fin, np.abs(d), 0.0).max(axis=1)
    cap = 30.0 / np.maximum(dspan, 1e-300)
    mult = np.ones(P)
    active = np.flatnonzero(interior)
    for _ in range(max_iter):
        if active.size == 0:
            break
        La, da, ga = L[active], d[active], g[active]
        z = La + ga[:, None] * da
        zmax = z.max(axis=1, keepdims=True)
        e = np.exp(z - zmax)
        w = e / e.sum(axis=1, keepdims=True)
        m1 = (w * da).sum(axis=1)
        c = da - m1[:, None]
        m2 = (w * c * c).sum(axis=1)
        done = np.abs(m1) <= tol
        pos = m1 > 0
        hi[active[pos]] = np.minimum(hi[active[pos]], ga[pos])
        lo[active[~pos]] = np.maximum(lo[active[~pos]], ga[~pos])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = -m1 / m2
        lim = cap[active] * mult[active]
        step = np.where(np.isfinite(step), step, -np.sign(m1) * lim)
        capped = np.abs(step) >= lim
        step = np.clip(step, -lim, lim)
        # no bracket yet on the side we move to: grow the cap geometrically (exponential search)
        open_side = np.where(step > 0, ~np.isfinite(hi[active]), ~np.isfinite(lo[active]))
        mult[active] = np.where(capped & open_side, mult[active] * 2.0, 1.0)
        gn = ga + step
        la, ha = lo[active], hi[active]
        out = (gn <= la) | (gn >= ha)
        mid = 0.5 * (la + ha)
        gn = np.where(out & np.isfinite(mid), mid, gn)
        g[active] = np.where(done, ga, gn)
        stuck = np.isfinite(la) & np.isfinite(ha) & (ha - la <= 1e-15 * np.maximum(1, np.abs(ga)))
        active = active[~(done | stuck)]
    z = L + g[:, None] * np.where(fin, d, 0.0)
    psi = np.full(P, -np.inf)
    w = np.zeros((P, M))
    if interior.any():
        zi = z[interior]
        zmax = zi.max(axis=1, keepdims=True)
        e = np.exp(zi - zmax)
        s = e.sum(axis=1, keepdims=True)
        psi[interior] = (zmax + np.log(s))[:, 0]
        w[interior] = e / s
    pin = ~interior & has_zero
    if pin.any():
        rows = np.flatnonzero(pin)
        cols = np.argmax(fin[rows] & (d[rows] == 0), axis=1)
        psi[rows] = L[rows, cols]
        w[rows, cols] = 1.0
        g[rows] = np.where(has_pos[rows], -np.inf, np.where(has_neg[rows], np.inf, 0.0))
    return g, psi, w


# ----------------------------------------------------------------------------- solver
