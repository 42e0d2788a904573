"""The numba kernels of the one-period interior point method (``deepquant.mmot.ipm``): the
O(n m) passes over the plan P(x, y) and its dual slacks S(x, y) of one Newton step (the Schur
complement's rows, the right-hand sides' row and column sums, the search directions, the
complementarity products of a trial step, and the update with the next residuals). They
release the GIL, so the two sides can run in two threads. Compiled on first use, cached on
disk.

Also the two helpers in numpy that set up and check a period: the rows fixed before the IPM
(``_pin``) and the residuals of a plan (``_residual``).

The divisions are done once per iteration: ``_schur_rows`` stores the weights D = P / S and
the reciprocals 1 / S and 1 / P, which the passes of the predictor and the correctors (three to
five per iteration) multiply by.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FAST = {"contract", "reassoc", "nsz"}
"""Floating-point licences of the kernels: fused multiply-adds and reassociated sums (so that
the reductions vectorize); no assumptions on NaN or infinities (a broken iterate is detected
by the caller)."""

__all__ = ["_complementarity", "_directions", "_pin", "_residual", "_schur_rows", "_trial_mean",
           "_update"]


@njit(cache=True, nogil=True, fastmath=FAST)
def _schur_rows(P, S, d, free_idx, C, l11, l22, dbar, diag, D, Si, Pi):
    """The 2x2 blocks of the rows (D = P / S): l11 = sqrt(sum_y D), dbar = the D-mean of y - x,
    l22 = sqrt(sum_y D (y - x - dbar)^2); C = L^{-1} B on the free columns; diag = column sums
    of D on the free columns. Stores D, Si = 1 / S and Pi = 1 / P."""
    n, m = P.shape
    for k in range(free_idx.size):
        diag[k] = 0.0
    for i in range(n):
        a = 0.0
        b = 0.0
        for j in range(m):
            si = 1.0 / S[i, j]
            w = P[i, j] * si
            Si[i, j] = si
            Pi[i, j] = 1.0 / P[i, j]
            D[i, j] = w
            a += w
            b += w * d[i, j]
        mean = b / a
        v = 0.0
        for j in range(m):
            e = d[i, j] - mean
            v += D[i, j] * e * e
        v = max(v, 1e-300 * a)
        l11[i] = np.sqrt(a)
        l22[i] = np.sqrt(v)
        dbar[i] = mean
        r11 = 1.0 / l11[i]
        r22 = 1.0 / l22[i]
        for k in range(free_idx.size):
            j = free_idx[k]
            w = D[i, j]
            C[0, i, k] = w * r11
            C[1, i, k] = w * (d[i, j] - mean) * r22
            diag[k] += w


@njit(cache=True, nogil=True, fastmath=FAST)
def _directions(D, Si, Pi, Rd, Rc, d, use_rd, phi, h, psi, base, base_p, base_s, dP, dS):
    """dS = Rd - (phi + psi + h d), dP = (Rc - P dS) / S, each plus its base (if ``base``);
    returns the largest ratios -dP / P and -dS / S (the step to the boundary is their
    inverse)."""
    n, m = D.shape
    wp = 0.0
    ws = 0.0
    for i in range(n):
        a, b = phi[i], h[i]
        for j in range(m):
            dS[i, j] = -(a + psi[j] + b * d[i, j])
        if use_rd:
            for j in range(m):
                dS[i, j] += Rd[i, j]
        for j in range(m):
            dP[i, j] = Rc[i, j] * Si[i, j] - D[i, j] * dS[i, j]
        if base:
            for j in range(m):
                dP[i, j] += base_p[i, j]
                dS[i, j] += base_s[i, j]
        for j in range(m):
            wp = max(wp, -dP[i, j] * Pi[i, j])
            ws = max(ws, -dS[i, j] * Si[i, j])
    return wp, ws


@njit(cache=True, nogil=True, fastmath=FAST)
def _trial_mean(P, S, dP, dS, ap, ad):
    """The mean of the products (P + ap dP)(S + ad dS) of a trial step."""
    n, m = P.shape
    tot = 0.0
    for i in range(n):
        for j in range(m):
            tot += (P[i, j] + ap * dP[i, j]) * (S[i, j] + ad * dS[i, j])
    return tot / (n * m)


@njit(cache=True, nogil=True, fastmath=FAST)
def _complementarity(P, S, dP, dS, ap, ad, target, mode, out, D, Si, Rd, d, use_rd, r1, r2,
                     col):
    """The complementarity right-hand side ``out``: mode 0, target - P S - dP dS (Mehrotra's
    corrector); mode 1, Gondzio's corrector for the trial step (ap, ad): the products
    v = (P + ap dP)(S + ad dS) pushed into [0.1, 10] x target; mode 3, -P S (the predictor).
    In the same pass (r1, r2, col): the row sums, d-weighted row sums and column sums of
    T = (out - P Rd) / S (without Rd if not ``use_rd``), the right-hand side's A T."""
    n, m = P.shape
    lo, hi = 0.1 * target, 10.0 * target
    for j in range(m):
        col[j] = 0.0
    for i in range(n):
        if mode == 0:
            for j in range(m):
                out[i, j] = target - P[i, j] * S[i, j] - dP[i, j] * dS[i, j]
        elif mode == 3:
            for j in range(m):
                out[i, j] = -P[i, j] * S[i, j]
        else:
            for j in range(m):
                v = (P[i, j] + ap * dP[i, j]) * (S[i, j] + ad * dS[i, j])
                out[i, j] = max(min(max(v, lo), hi) - v, -hi)
        s1 = 0.0
        s2 = 0.0
        if use_rd:
            for j in range(m):
                t = out[i, j] * Si[i, j] - D[i, j] * Rd[i, j]
                s1 += t
                s2 += t * d[i, j]
                col[j] += t
        else:
            for j in range(m):
                t = out[i, j] * Si[i, j]
                s1 += t
                s2 += t * d[i, j]
                col[j] += t
        r1[i] = s1
        r2[i] = s2


@njit(cache=True, nogil=True, fastmath=FAST)
def _update(P, S, dP, dS, ap, ad, c, d, phi, h, psi, Rd, r1, r2, col):
    """Take the step, then the dual residual Rd = c - A^T w - S and the primal sums A P;
    returns (<c, P>, mean P S, max |Rd|)."""
    n, m = P.shape
    for j in range(m):
        col[j] = 0.0
    pobj = 0.0
    ps = 0.0
    worst = 0.0
    for i in range(n):
        s1 = 0.0
        s2 = 0.0
        for j in range(m):
            p = P[i, j] + ap * dP[i, j]
            s = S[i, j] + ad * dS[i, j]
            P[i, j] = p
            S[i, j] = s
            rd = c[i, j] - phi[i] - psi[j] - h[i] * d[i, j] - s
            Rd[i, j] = rd
            worst = max(worst, abs(rd))
            pobj += c[i, j] * p
            ps += p * s
            s1 += p
            s2 += p * d[i, j]
            col[j] += p
        r1[i] = s1
        r2[i] = s2
    return pobj, ps / (n * m), worst


def _pin(xv, yv, mu, nu, light=0.0):
    """Fix the rows at the ends of the hull of the y points (they can only stay put), and the
    lightest rows up to ``light`` of the total mass (``PIN_SHARE``): returns the kept rows, the
    kept columns, the reduced nu, the fixed (x index, y index, mass) and the mass of nu left
    out (dropped columns' remainders, negative remainders clipped to 0)."""
    rows = np.ones(xv.size, dtype=bool)
    cols = np.ones(yv.size, dtype=bool)
    nu = nu.copy()
    fixed = []
    budget = light * float(mu.sum())
    for a in np.argsort(mu, kind="stable"):
        j = int(np.searchsorted(yv, xv[a]))
        if mu[a] > budget:
            break
        if j < yv.size and yv[j] == xv[a] and nu[j] >= 2.0 * mu[a]:
            fixed.append((a, j, mu[a]))
            nu[j] -= mu[a]
            rows[a] = False
            budget -= mu[a]
    changed = True
    while changed and rows.any() and cols.any():
        changed = False
        live_y = np.flatnonzero(cols)
        for j in (live_y[0], live_y[-1]):
            for a in np.flatnonzero(rows & (xv == yv[j])):
                fixed.append((a, j, mu[a]))
                nu[j] -= mu[a]
                rows[a] = False
                changed = True
            if nu[j] <= 1e-15 * mu.sum():
                cols[j] = False  # no mass left there: no other row may move to it
                changed = True
        live_y = np.flatnonzero(cols)
        if live_y.size and rows.any():
            out = rows & ((xv < yv[live_y[0]]) | (xv > yv[live_y[-1]]))
            if out.any():  # rounding of the convex order: stay put at the nearest end
                for a in np.flatnonzero(out):
                    j = live_y[0] if xv[a] < yv[live_y[0]] else live_y[-1]
                    fixed.append((a, j, mu[a]))
                    nu[j] -= mu[a]
                    rows[a] = False
                changed = True
    lost = max(float(np.max(np.abs(nu[~cols]), initial=0.0)),
               float(-np.min(nu[cols], initial=0.0)))
    return rows, cols, np.maximum(nu, 0.0), fixed, lost


def _residual(P, xv, yv, mu, nu, phi, h, psi) -> tuple[float, float]:
    """Largest residual of the plan P (n, m) on its rows (before the fixed rows are added: those
    are exact) and its most negative entry; and the residuals' worth at the duals (phi, h, psi):
    sum |phi| |r_mu| + |h| |r_mart| + |psi| |r_nu|."""
    rows = P.sum(axis=1)
    r1, r2, r3 = np.abs(rows - mu), np.abs(P @ yv - xv * rows), np.abs(P.sum(axis=0) - nu)
    r = max(float(np.max(r1)), float(np.max(r2)), float(np.max(r3)))
    worth = float(np.abs(phi) @ r1 + np.abs(h) @ r2 + np.abs(psi) @ r3)
    return max(r, float(-min(P.min(), 0.0))), worth
