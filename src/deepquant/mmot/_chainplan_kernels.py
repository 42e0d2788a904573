"""The numba kernels of ``ChainPlan``'s forward recursion (``deepquant.mmot.model``).

Each date is two steps for B instances: ``_trim_step`` cuts each kernel row to its band (the
columns from the first to the last entry above ``band_eps`` times the row's largest) and each
row of the transposed joint law to its live states (entries above ``thr``), counting what it
drops; ``_advance_step`` multiplies per block of states and tile of rows with one BLAS dgemm on
the rectangle of live rows and the union of their bands, and pushes the product through the
statistic map (in place for a running-sum lattice, one dgemm per run of evenly spaced
columns; through a CSC map otherwise). Kernels are
stochastic and the maps move mass without creating it, so |result - exact| <= the counted mass
x max |payoff| (the bound ``ChainPlan`` reports).

The last date of a call- or put-like payoff (``_hinge_terminal``: the payoff pulled back through
the last statistic map, g(s, y), is zero on one side of a threshold in s and linear in s on the
other, column by column: Asian calls and puts on a lattice or an interpolated sum grid) is
summed in closed form (``_last_step_hinge``): E[g(s, Y) | x] is a prefix sum of the kernel row
times the columns' intercepts and slopes, O(M + n) per grid point instead of a product into
the last date's law. The meeting in the middle on a running-sum lattice (a backward half
joined by the same closed form) is ``deepquant.mmot._chainplan_meet``.

Compiled on first use, cached on disk.
"""

from __future__ import annotations

import ctypes
import math
import threading

import numpy as np
from numba import njit
from numba.extending import get_cython_function_address

__all__ = ["_DGEMM", "_advance_step", "_band_row", "_forward", "_gemm", "_hinge_terminal",
           "_last_step_hinge", "_pack_steps", "_scratch", "_transposed_map", "_trim_step",
           "_zero_ends"]


def _transposed_map(src, dst, w, n_src, n_dst, n, n1):
    """One date's statistic map from flattened sources j n + s (kernel column j, state s) to
    destinations y' n1 + s': ``(indptr, dst, w, off, shift, n1, run_end, run_ld)``, the map
    in CSC over the sources, then for a shift map (``shift`` 1: every (j, s) goes to
    off[j] + s with weight 1, a running-sum lattice; ``_advance_step`` adds the product in
    place) the columns' offsets and their runs: columns j .. run_end[j] - 1 have offsets
    stepping evenly by run_ld[j] >= n (one strided dgemm per run; a single run where the
    support has no holes). ``shift`` 0: a general map (off, run_end, run_ld unused)."""
    from scipy import sparse

    csc = sparse.csr_matrix((w, (src, dst)), shape=(n_src, n_dst))
    csc.sort_indices()
    indptr, idx = csc.indptr.astype(np.int64), csc.indices.astype(np.int64)
    c = n_src // max(n, 1)
    off = np.zeros(c, dtype=np.int64)
    run_end, run_ld = np.zeros(c, dtype=np.int64), np.full(c, max(n, n1, 1), dtype=np.int64)
    shift = 0
    if n_src and np.all(np.diff(indptr) == 1) and np.all(csc.data == 1.0):
        o = (idx - np.arange(n_src) % n).reshape(-1, n)
        if np.all(o == o[:, :1]):
            off, shift = np.ascontiguousarray(o[:, 0]), 1
            j0 = 0
            while j0 < c:                  # greedy runs of evenly stepping offsets
                j1 = j0 + 1
                if j1 < c and off[j1] - off[j0] >= max(n, 1):
                    ld = off[j1] - off[j0]
                    while j1 + 1 < c and off[j1 + 1] - off[j1] == ld:
                        j1 += 1
                    j1 += 1
                    run_ld[j0:j1] = ld
                run_end[j0:j1] = j1
                j0 = j1
    return indptr, idx, csc.data.astype(float), off, shift, n1, run_end, run_ld


# scipy's BLAS dgemm as a ctypes function, passed to the kernels as an argument (a global
# function pointer would keep numba from caching them)
_DGEMM = ctypes.CFUNCTYPE(None, *(ctypes.c_void_p,) * 13)(
    get_cython_function_address("scipy.linalg.cython_blas", "dgemm"))


@njit(cache=True, nogil=True)
def _gemm(f, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, m, n, k,
          a_trans):  # pragma: no cover
    """c[c_off:] (m x n, row stride ldc) += a.T @ b on flat row-major float64 arrays, with
    a[a_off:] stored as (k x m, row stride lda) and b[b_off:] as (k x n, ldb) (dgemm ``f`` on
    the column-major views: no copies); with ``a_trans`` False, c += a @ b, a stored as
    (m x k, lda)."""
    tr = np.array([78, 84 if a_trans else 78], np.uint8)                # "N", "T" or "N"
    ints = np.array([n, m, k, ldb, lda, ldc], np.int32)
    one = np.ones(1)
    f(tr[0:].ctypes, tr[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
      one.ctypes, b[b_off:].ctypes, ints[3:].ctypes, a[a_off:].ctypes, ints[4:].ctypes,
      one.ctypes, c[c_off:].ctypes, ints[5:].ctypes)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _band_row(src, x, cols, band_eps, k, i):  # pragma: no cover
    """k[i, j] = src[x, cols[j]] cut to its band [a, e): the columns from the first to the last
    entry above ``band_eps`` times the row's largest (0 outside). Returns (a, e, mass cut off).

    Rows are indexed in place, not taken as views (a view per row costs two atomic reference
    counts); the largest entry is found with four running maxima (a max is exact in any
    order: one serial chain of compares was most of the cost) and the edges eight entries at
    a time."""
    c = cols.size
    m0 = m1 = m2 = m3 = 0.0
    j = 0
    while j + 4 <= c:
        v0, v1 = src[x, cols[j]], src[x, cols[j + 1]]
        v2, v3 = src[x, cols[j + 2]], src[x, cols[j + 3]]
        k[i, j], k[i, j + 1], k[i, j + 2], k[i, j + 3] = v0, v1, v2, v3
        v0, v1, v2, v3 = abs(v0), abs(v1), abs(v2), abs(v3)
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        j += 4
    while j < c:
        v0 = src[x, cols[j]]
        k[i, j] = v0
        v0 = abs(v0)
        m0 = v0 if v0 > m0 else m0
        j += 1
    cut = band_eps * max(max(m0, m1), max(m2, m3))
    a = 0
    while a + 8 <= c:                   # whole groups of eight below the cut
        hit = False
        for u in range(8):
            hit |= abs(k[i, a + u]) > cut
        if hit:
            break
        a += 8
    while a < c and not abs(k[i, a]) > cut:
        a += 1
    e = c
    while e - 8 >= a:
        hit = False
        for u in range(1, 9):
            hit |= abs(k[i, e - u]) > cut
        if hit:
            break
        e -= 8
    while e > a and not abs(k[i, e - 1]) > cut:
        e -= 1
    tail = 0.0
    for j in range(a):
        tail += abs(k[i, j])
        k[i, j] = 0.0
    for j in range(e, c):
        tail += abs(k[i, j])
        k[i, j] = 0.0
    return a, e, tail


@njit(cache=True, nogil=True)
def _zero_ends(a, i, p, q):  # pragma: no cover
    """[p, q) with whole groups of eight exact zeros of row i of ``a`` at either end left out
    (nothing there to drop or to clear: a trim that follows gives the same range and sum)."""
    while p + 8 <= q:
        z = True
        for u in range(8):
            z &= a[i, p + u] == 0.0
        if not z:
            break
        p += 8
    while q - 8 >= p:
        z = True
        for u in range(1, 9):
            z &= a[i, q - u] == 0.0
        if not z:
            break
        q -= 8
    return p, q


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _trim_step(jt, kern, rows, cols, thr, band_eps, kb, lo, hi, sa, se):  # pragma: no cover
    """First half of a date for B instances: per row i (grid point rows[i]) the kernel band
    [lo, hi) over ``cols`` (``_band_row``) and the live states [sa, se) of ``jt`` (B, r, n)
    (entries outside are set to 0), the banded kernel rows ``kb`` (B, r, c); a row with no
    live state gets a zero ``kb`` row without reading its kernel row. On entry [sa, se)
    holds a range outside which the row is known to be 0 (written by ``_advance_step``), and
    only that range is scanned. Returns the dropped mass."""
    nb, r, n = jt.shape
    lost = np.zeros(nb)
    for b in range(nb):
        acc = 0.0
        jb, kbb, kn = jt[b], kb[b], kern[b]     # rows indexed in place below, not viewed
        for i in range(r):
            p, q = min(max(sa[b, i], 0), n), min(max(se[b, i], 0), n)
            while p < q and not abs(jb[i, p]) > thr[b]:
                acc += abs(jb[i, p])
                jb[i, p] = 0.0
                p += 1
            while q > p and not abs(jb[i, q - 1]) > thr[b]:
                acc += abs(jb[i, q - 1])
                jb[i, q - 1] = 0.0
                q -= 1
            if q <= p:          # no live state: the kernel row is not needed, only zeros
                kbb[i, :] = 0.0
                lo[b, i], hi[b, i], sa[b, i], se[b, i] = 0, 0, p, p
                continue
            a, e, tail = _band_row(kn, rows[i], cols, band_eps, kbb, i)
            if e <= a:          # a zero kernel row moves no mass (as the exact sum)
                jb[i, p:q] = 0.0
                q = p
            else:
                live = 0.0
                for s in range(p, q):
                    live += abs(jb[i, s])
                acc += live * tail
            lo[b, i], hi[b, i], sa[b, i], se[b, i] = a, e, p, q
        lost[b] = acc
    return lost


@njit(cache=True, nogil=True)
def _advance_step(f, jt, kb, lo, hi, sa, se, block, tile, off, shift, run_end, run_ld, indptr,
                  dst, w, out, na, ne):  # pragma: no cover
    """Second half: out (B, r' n') = map(kb.T @ jt), per block of ``block`` states and tile of
    ``tile`` rows one dgemm ``f`` on the rectangle of the tile's live rows, the union of their
    kernel bands and the union of their live states within the block; on a shift map
    (``shift`` > 0) the product is added in place (row j at off[j], one dgemm per run of evenly
    spaced offsets: ``_transposed_map``), else gathered per block and pushed through the CSC
    map. [na, ne) (B, r'): per row of ``out`` (n' states) a range outside which nothing was
    written (all of it for a general map)."""
    nb, r, n = jt.shape
    c = kb.shape[2]
    n1 = out.shape[1] // max(na.shape[1], 1)
    prod = np.empty(0 if shift > 0 else c * block)
    ydst = np.empty(c if shift > 0 else 0, np.int64)   # column j lands in row ydst[j] of out
    ddst = np.empty_like(ydst)                         # at state ddst[j] + s (one division)
    for j in range(ydst.size):
        ydst[j] = off[j] // n1
        ddst[j] = off[j] - ydst[j] * n1
    for b in range(nb):
        jf, kf, of = jt[b].ravel(), kb[b].ravel(), out[b]
        na[b, :] = n1 if shift > 0 else 0
        ne[b, :] = 0 if shift > 0 else n1
        for s0 in range(0, n, block):
            s1 = min(n, s0 + block)
            if shift <= 0:
                prod[:] = 0.0
            ya_b, ye_b = c, 0
            for t0 in range(0, r, tile):
                xa, xe, ya, ye, qa, qe = r, 0, c, 0, s1, s0
                for i in range(t0, min(r, t0 + tile)):
                    if sa[b, i] < s1 and se[b, i] > s0 and sa[b, i] < se[b, i]:
                        xa, xe = min(xa, i), i + 1
                        ya, ye = min(ya, lo[b, i]), max(ye, hi[b, i])
                        qa, qe = min(qa, sa[b, i]), max(qe, se[b, i])
                if xe <= xa or ye <= ya:
                    continue
                qa, qe = max(qa, s0), min(qe, s1)       # the tile's live states in the block
                if shift > 0:   # row j of the product lands at off[j] + s, per run of columns
                    j = ya
                    while j < ye:
                        je = min(ye, run_end[j])
                        _gemm(f, kf, xa * c + j, c, jf, xa * n + qa, n, of, off[j] + qa,
                              run_ld[j], je - j, qe - qa, xe - xa, True)
                        for jj in range(j, je):         # the states written in row y'
                            y, d = ydst[jj], ddst[jj]
                            na[b, y] = min(na[b, y], d + qa)
                            ne[b, y] = max(ne[b, y], d + qe)
                        j = je
                    continue
                _gemm(f, kf, xa * c + ya, c, jf, xa * n + qa, n, prod,
                      ya * (s1 - s0) + qa - s0, s1 - s0, ye - ya, qe - qa, xe - xa, True)
                ya_b, ye_b = min(ya_b, ya), max(ye_b, ye)
            for j in range(ya_b, ye_b):
                for s in range(s0, s1):
                    v = prod[j * (s1 - s0) + s - s0]
                    if v != 0.0:
                        for p in range(indptr[j * n + s], indptr[j * n + s + 1]):
                            of[dst[p]] += w[p] * v
    return 0


_POOL = threading.local()
POOL_MAX = 1 << 21
"""Largest scratch array (elements) ``_scratch`` keeps per thread between calls (16 MB of
float64): the forward law's two buffers of an exact Asian chain at N = 10, M = 150 hold about
1.1 MB each per instance."""


def _scratch(key: str, shape: tuple, dtype=np.float64) -> np.ndarray:
    """An uninitialised array of ``shape``, reused by later calls in the same thread (no fresh
    pages to fault in and zero at every price); above ``POOL_MAX`` elements a fresh one. One
    dtype per ``key``."""
    size = math.prod(shape)
    if size > POOL_MAX:
        return np.empty(shape, dtype)
    buf = _POOL.__dict__.get(key)
    if buf is None or buf.size < size:
        buf = _POOL.__dict__[key] = np.empty(max(size, 1024), dtype)
    return buf[:size].reshape(shape)


def _pack_steps(rows, cols, steps, n_states):
    """The forward recursion's per-date index arrays (``rows``, ``cols``, the maps of
    ``_transposed_map``) concatenated once per chain, for ``_forward``: ``(int64 (9, ...)
    pointer table, rows, cols, indptr, dst, w, off, run_end, run_ld, shift, n_states)``."""
    T = len(steps)
    cat = lambda parts, dt: (np.concatenate(parts).astype(dt) if parts  # noqa: E731
                             else np.zeros(0, dt))
    ptr = np.zeros((4, T + 2), dtype=np.int64)   # rows, cols, indptr, dst/w
    for t in range(T + 1):
        ptr[0, t + 1] = ptr[0, t] + rows[t].size
    for t in range(T):
        ptr[1, t + 1] = ptr[1, t] + cols[t].size
        ptr[2, t + 1] = ptr[2, t] + steps[t][0].size
        ptr[3, t + 1] = ptr[3, t] + steps[t][1].size
    return (ptr, cat(list(rows), np.int64), cat(list(cols), np.int64),
            cat([st[0] for st in steps], np.int64), cat([st[1] for st in steps], np.int64),
            cat([st[2] for st in steps], float), cat([st[3] for st in steps], np.int64),
            cat([st[6] for st in steps], np.int64), cat([st[7] for st in steps], np.int64),
            np.array([st[4] for st in steps], dtype=np.int64),
            np.asarray(n_states, dtype=np.int64))


@njit(cache=True, nogil=True)
def _forward(f, kernels, packed_ptr, rows, cols, indptr, dst, w, off, run_end, run_ld, shift,
             n_states, steps, thr, band_eps, block, tile, bufs, kb, ranges):  # pragma: no cover
    """``steps`` dates of the banded forward recursion in one compiled call (``_trim_step``
    then ``_advance_step`` per date, on the packed index arrays of ``_pack_steps``).
    ``bufs`` (2, L): the joint law of date t in ``bufs[t % 2]``, the initial one (B, r_0,
    n_0) in ``bufs[0]`` on entry; ``kb`` (L',) scratch; ``ranges`` (6, B, r_max): lo, hi,
    sa, se, na, ne, with sa, se set for date 0. Returns the dropped mass (B,); the last law
    is in ``bufs[steps % 2]``, its written ranges in ``ranges[2:4]``."""
    nb = kernels.shape[0]
    lost = np.zeros(nb)
    for t in range(steps):
        r0, r1 = packed_ptr[0, t], packed_ptr[0, t + 1]
        c0, c1 = packed_ptr[1, t], packed_ptr[1, t + 1]
        r, c, rn = r1 - r0, c1 - c0, packed_ptr[0, t + 2] - r1
        n, n1 = n_states[t], n_states[t + 1]
        jt = bufs[t % 2, :nb * r * n].reshape((nb, r, n))
        kbv = kb[:nb * r * c].reshape((nb, r, c))
        lo, hi = ranges[0, :, :r], ranges[1, :, :r]
        sa, se = ranges[2, :, :r], ranges[3, :, :r]
        lost += _trim_step(jt, kernels[:, t], rows[r0:r1], cols[c0:c1], thr, band_eps, kbv, lo,
                           hi, sa, se)
        out = bufs[(t + 1) % 2, :nb * rn * n1].reshape((nb, rn * n1))
        out[:] = 0.0
        na, ne = ranges[4, :, :rn], ranges[5, :, :rn]
        i0, i1 = packed_ptr[2, t], packed_ptr[2, t + 1]
        d0, d1 = packed_ptr[3, t], packed_ptr[3, t + 1]
        _advance_step(f, jt, kbv, lo, hi, sa, se, block, tile, off[c0:c1], shift[t],
                      run_end[c0:c1], run_ld[c0:c1], indptr[i0:i1], dst[d0:d1], w[d0:d1], out,
                      na, ne)
        ranges[2, :, :rn] = na
        ranges[3, :, :rn] = ne
    return lost


def _hinge_terminal(g, rel_tol=1e-13):
    """The closed form of the last date, or None: ``g`` (n, c) is the payoff pulled back to
    (state s of the previous date, kernel column j). Call-like: every column is zero for
    s < a_j and alpha_j + beta_j s from a_j on; put-like: alpha_j + beta_j s below e_j, zero
    from e_j on. Returns ``(perm, alpha, beta, count, err)``: columns in the order they become
    active, their lines in that order, ``count[s]`` = how many are active at s (a prefix of
    ``perm``), and err = max |g - closed form| (round-off of the payoff's values, added to
    the bound). None when g has another shape or the lines miss by more than ``rel_tol``
    times max |g|."""
    n, c = g.shape
    nz = g != 0.0
    first = np.where(nz.any(axis=0), nz.argmax(axis=0), n)
    last = np.where(nz.any(axis=0), n - nz[::-1].argmax(axis=0), n)    # one past the last
    width = nz.sum(axis=0)
    contiguous = np.all((width == 0) | (last - first == width))
    if not contiguous or n == 0 or c == 0:
        return None
    if np.all((width == 0) | (last == n)):             # call-like: active from first[j] on
        key, active_from = first, True
    elif np.all((width == 0) | (first == 0)):          # put-like: active below last[j]
        key, active_from = np.where(width == 0, 0, last), False
    else:
        return None
    s = np.arange(n, dtype=float)
    alpha, beta = np.zeros(c), np.zeros(c)
    err = 0.0
    for j in np.flatnonzero(width):
        sel = slice(first[j], last[j])
        x, y = s[sel], g[sel, j]
        if y.size == 1:
            alpha[j] = y[0]
        else:
            xm = x.mean()
            beta[j] = np.dot(x - xm, y - y.mean()) / np.dot(x - xm, x - xm)
            alpha[j] = y.mean() - beta[j] * xm
        err = max(err, float(np.max(np.abs(alpha[j] + beta[j] * x - y))))
    if err > rel_tol * max(float(np.max(np.abs(g))), 1e-300):
        return None
    if active_from:
        perm = np.argsort(key, kind="stable")
        count = np.searchsorted(np.sort(key), np.arange(n), side="right")
    else:
        perm = np.argsort(-key, kind="stable")
        count = c - np.searchsorted(np.sort(key), np.arange(n), side="right")
    perm = np.ascontiguousarray(perm[:c], dtype=np.int64)
    return (perm, alpha[perm].copy(), beta[perm].copy(), count.astype(np.int64), err)


@njit(cache=True, nogil=True, fastmath={"contract"})
def _last_step_hinge(jt, kern, rows, cols, perm, alpha, beta, count, mass, wa,
                     we):  # pragma: no cover
    """E[payoff] of B instances from the law ``jt`` (B, r, n) of the previous date and the last
    kernels ``kern`` (B, M, M) with the closed form of ``_hinge_terminal``: per grid point
    rows[i], prefix sums A, C of k(x, perm[l]) alpha_l and k(x, perm[l]) beta_l, then
    sum_s jt(x, s) (A[count[s]] + s C[count[s]]). Writes sum_s |jt(x, s)| into ``mass``
    (B, r). ``wa``, ``we`` (B, r): per row a range of states outside which it is 0 (the
    ranges ``_forward`` wrote), the only part scanned for its first and last nonzero."""
    nb, r, n = jt.shape
    c = perm.size
    pa, pb = np.empty(c + 1), np.empty(c + 1)
    cp = np.empty(c, np.int64)          # the kernel column of each line, looked up once
    for k in range(c):
        cp[k] = cols[perm[k]]
    out = np.zeros(nb)
    for b in range(nb):
        acc = 0.0
        for i in range(r):
            row = jt[b, i]
            mass[b, i] = 0.0
            p, q = min(max(wa[b, i], 0), n), min(max(we[b, i], 0), n)
            while p < q and row[p] == 0.0:
                p += 1
            if p == q:
                continue
            while row[q - 1] == 0.0:
                q -= 1
            src = kern[b, rows[i]]
            pa[0] = pb[0] = 0.0
            for k in range(c):          # the products first, then the (serial) prefix sums
                v = src[cp[k]]
                pa[k + 1] = v * alpha[k]
                pb[k + 1] = v * beta[k]
            sa = sb = 0.0
            for k in range(1, c + 1):   # running sums in registers, not reloaded from pa, pb
                sa += pa[k]
                sb += pb[k]
                pa[k], pb[k] = sa, sb
            a0 = a1 = m0 = m1 = 0.0     # two accumulators: half the add latency chain
            s = p
            while s + 1 < q:
                j0, j1 = count[s], count[s + 1]
                a0 += row[s] * (pa[j0] + s * pb[j0])
                a1 += row[s + 1] * (pa[j1] + (s + 1) * pb[j1])
                m0 += abs(row[s])
                m1 += abs(row[s + 1])
                s += 2
            if s < q:
                j0 = count[s]
                a0 += row[s] * (pa[j0] + s * pb[j0])
                m0 += abs(row[s])
            acc += a0 + a1
            mass[b, i] = m0 + m1
        out[b] = acc
    return out
