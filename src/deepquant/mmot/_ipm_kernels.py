"""The numba kernels of the one-period interior point method (``deepquant.mmot.ipm``): the
O(n m) passes over the plan P(x, y) and its dual slacks S(x, y) of one Newton step (the Schur
complement's rows, the right-hand sides' row and column sums, the search directions, the
complementarity products of a trial step, and the update with the next residuals). They
release the GIL, so the two sides can run in two threads. Compiled on first use, cached on
disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["_complementarity", "_directions", "_rhs_sums", "_schur_rows", "_update"]


@njit(cache=True, nogil=True)
def _schur_rows(P, S, d, free_idx, C, l11, l22, dbar, diag):
    """The 2x2 blocks of the rows (D = P / S): l11 = sqrt(sum_y D), dbar = the D-mean of y - x,
    l22 = sqrt(sum_y D (y - x - dbar)^2); C = L^{-1} B on the free columns; diag = column sums
    of D on the free columns."""
    n, m = P.shape
    for k in range(free_idx.size):
        diag[k] = 0.0
    for i in range(n):
        a = 0.0
        b = 0.0
        for j in range(m):
            w = P[i, j] / S[i, j]
            a += w
            b += w * d[i, j]
        mean = b / a
        v = 0.0
        for j in range(m):
            e = d[i, j] - mean
            v += P[i, j] / S[i, j] * e * e
        v = max(v, 1e-300 * a)
        l11[i] = np.sqrt(a)
        l22[i] = np.sqrt(v)
        dbar[i] = mean
        for k in range(free_idx.size):
            j = free_idx[k]
            w = P[i, j] / S[i, j]
            C[0, i, k] = w / l11[i]
            C[1, i, k] = w * (d[i, j] - mean) / l22[i]
            diag[k] += w


@njit(cache=True, nogil=True)
def _rhs_sums(P, S, Rd, Rc, d, use_rd, r1, r2, col):
    """Row sums, d-weighted row sums and column sums of T = (Rc - P Rd) / S (A T)."""
    n, m = P.shape
    for j in range(m):
        col[j] = 0.0
    for i in range(n):
        s1 = 0.0
        s2 = 0.0
        for j in range(m):
            t = (Rc[i, j] - P[i, j] * Rd[i, j]) / S[i, j] if use_rd else Rc[i, j] / S[i, j]
            s1 += t
            s2 += t * d[i, j]
            col[j] += t
        r1[i] = s1
        r2[i] = s2


@njit(cache=True, nogil=True)
def _directions(P, S, Rd, Rc, d, use_rd, phi, h, psi, base_p, base_s, dP, dS):
    """dS = Rd - (phi + psi + h d), dP = (Rc - P dS) / S, each plus its base; returns the
    largest ratios -dP / P and -dS / S (the step to the boundary is their inverse)."""
    n, m = P.shape
    wp = 0.0
    ws = 0.0
    for i in range(n):
        for j in range(m):
            ds = (Rd[i, j] if use_rd else 0.0) - (phi[i] + psi[j] + h[i] * d[i, j])
            dp = (Rc[i, j] - P[i, j] * ds) / S[i, j] + base_p[i, j]
            ds += base_s[i, j]
            dP[i, j] = dp
            dS[i, j] = ds
            wp = max(wp, -dp / P[i, j])
            ws = max(ws, -ds / S[i, j])
    return wp, ws


@njit(cache=True, nogil=True)
def _complementarity(P, S, dP, dS, ap, ad, target, mode, out):
    """mode 0: out = target - P S - dP dS (Mehrotra's corrector); mode 1: Gondzio's corrector
    for the trial step (ap, ad): the products v pushed into [0.1, 10] x target. Returns the
    mean of the trial products (P + ap dP)(S + ad dS)."""
    n, m = P.shape
    tot = 0.0
    for i in range(n):
        for j in range(m):
            v = (P[i, j] + ap * dP[i, j]) * (S[i, j] + ad * dS[i, j])
            tot += v
            if mode == 0:
                out[i, j] = target - P[i, j] * S[i, j] - dP[i, j] * dS[i, j]
            else:
                r = min(max(v, 0.1 * target), 10.0 * target) - v
                out[i, j] = max(r, -10.0 * target)
    return tot / (n * m)


@njit(cache=True, nogil=True)
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
