"""Meeting in the middle on a running-sum lattice (``deepquant.mmot.model.ChainPlan``).

When every step from a middle date on is a pure shift of the statistic (column j of period t
sends state s to state s + d_j of grid row y'_j with weight 1) and the payoff is a call- or
put-like line of the last state, the forward recursion stops at the middle date and the law of
the rest of the sum comes backwards (``_meet_plan``):

    W_{T-1}(x, d_j) += k_{T-1}(x, j),     W_t(x, rho) = sum_j k_t(x, j) W_{t+1}(y'_j, rho - d_j)

(Markov chain, the sum's increments fixed by the columns). ``_backward_laws`` runs it banded,
the mirror image of the forward step (``_chainplan_kernels``): kernel rows cut to the columns
above ``band_eps`` times the row's largest, rows of W cut to the entries above ``mass_eps`` at
both ends (each row of W is a conditional law, mass <= 1), one BLAS dgemm per tile of rows and
block of kernel columns on the rectangle of the tile's rows whose bands meet the block and the
union of the live ranges the block's columns reach (the ranges move with the columns' offsets:
a narrow block keeps the rectangle close to that diagonal band). The dropped mass
is propagated exactly as a per-row bound e_t(x) >= sum_rho |W_t(x, rho) - W~_t(x, rho)| (W the
dense recursion, W~ the banded one):

    e_t(x) = sum_j k~_t(x, j) e_{t+1}(y'_j) + tail_t(x) max_y (|W~_{t+1}(y)|_1 + e_{t+1}(y))
             + dropped_t(x)

(tail_t(x) the kernel mass outside the band, dropped_t(x) the entries of W_t cut off), so the
joined price is within sum_x |m(x)|_1 e_mid(x) max |payoff| of the dense one.

Compiled on first use, cached on disk. The cache is keyed on this file only: after editing the
kernels it calls from ``_chainplan_kernels`` (``_band_row``, ``_zero_ends``), delete its
``__pycache__`` entries, or the old code stays compiled in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numba import njit

from deepquant.mmot._chainplan_kernels import (
    _DGEMM,
    _band_row,
    _gemm,
    _hinge_terminal,
    _scratch,
    _zero_ends,
)

__all__ = ["_backward_laws", "_meet_plan", "backward_laws_started"]


def _meet_plan(steps, n_states, terminal, mid):
    """Meet in the middle at date ``mid`` for a payoff of the last state on shift maps, or None.

    Applies when every step from ``mid`` on sends (column j, state s) to (row y'_j, s + d_j)
    with weight 1 (a shift map, ``shift`` > 0 in ``_transposed_map``: a running-sum lattice,
    with holes in the support or not), and the payoff depends on the last state only (``terminal``
    (n_T, r_T) with equal columns) through a call- or put-like line (``_hinge_terminal``). Then
    the last state is s_mid + rho + C, rho the sum of the offsets d_j - min d of the remaining
    steps, and the law W_t(x, rho) of rho given X_t = x follows backwards
    (``_backward_laws``). Returns ``(back, hinge)``: per step from the last down to ``mid``,
    ``(t, y'_j, d_j - min d, L_t)`` (L_t the number of values of rho from date t), and the
    closed form of g(s, rho) = payoff(s + rho + C).
    """
    T = len(steps)
    if not 0 <= mid < T or terminal.size == 0 or np.any(terminal != terminal[:, :1]):
        return None
    psi = terminal[:, 0]
    back, length, shift = [], 1, 0
    for t in range(T - 1, mid - 1, -1):
        off, is_shift, n1 = steps[t][3:6]
        if is_shift <= 0:
            return None
        y1 = off // n1
        d = off - y1 * n1
        low = int(d.min())
        d = d - low
        new = length + int(d.max())
        back.append((t, y1, d, new))
        length, shift = new, shift + low
    last = np.arange(n_states[mid])[:, None] + np.arange(length)[None, :] + shift
    if last.min() < 0 or last.max() >= psi.size:
        return None
    hinge = _hinge_terminal(psi[last])
    return None if hinge is None else (back, hinge)


def _backward_laws(back, kernels, rows, cols, *, band_eps=0.0, mass_eps=0.0, tile=16,
                   block=16):
    """W_mid (B, |rows[mid]|, L_mid) of ``_meet_plan``'s ``back`` for kernels (B, T', M, M),
    banded (kernel rows cut at ``band_eps`` of their largest entry, rows of W at ``mass_eps``;
    one dgemm per tile of ``tile`` rows and block of ``block`` kernel columns), and the per-row
    bound e_mid (B, |rows[mid]|) on its L1 distance to the dense recursion (module docstring;
    zero with ``band_eps`` = ``mass_eps`` = 0: nothing dropped). W_mid lives in a buffer kept
    per thread (``_scratch``): valid until the thread's next call."""
    b = kernels.shape[0]
    w = np.ones((b, 1, 1))
    wa, we = np.zeros((b, 1), dtype=np.int64), np.ones((b, 1), dtype=np.int64)
    err = np.zeros((b, 1))
    for k, (t, y1, d, length) in enumerate(back):
        r, c = rows[t].size, cols[t].size
        if w.shape[1] == 1 and y1.size:            # the last step starts from W_T = 1
            y1 = np.zeros_like(y1)
        out = _scratch(f"back_w{k % 2}", (b, r, length))   # two kept buffers, in turn
        oa, oe = np.empty((b, r), dtype=np.int64), np.empty((b, r), dtype=np.int64)
        e = np.empty((b, r))
        _backward_step(_DGEMM, kernels[:, t], rows[t], cols[t], np.ascontiguousarray(y1),
                       np.ascontiguousarray(d), w, wa, we, err, band_eps, mass_eps, tile, block,
                       _scratch("back_kb", (r, c)), _scratch("back_p", (c, length)), out, oa,
                       oe, e)
        w, wa, we, err = out, oa, oe, e
    return w, err


_HELPERS = threading.local()


def _helper():
    """This thread's own one-worker pool (made on first use): the backward half of a split
    recursion runs there, so its per-thread scratch (``_scratch``) is never shared between two
    callers, and the result is read before this thread submits again."""
    pool = getattr(_HELPERS, "pool", None)
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor

        pool = _HELPERS.pool = ThreadPoolExecutor(1, thread_name_prefix="chainplan-back")
    return pool


@dataclass(frozen=True)
class _Done:
    """A result computed in place, read like a future's."""
    value: tuple

    def result(self):
        return self.value


def backward_laws_started(back, kernels, rows, cols, *, band_eps, mass_eps, on_helper=False):
    """``_backward_laws`` started: on this thread's helper thread with ``on_helper`` (both
    halves release the GIL, so the caller's forward dates run meanwhile), else here. Returns an
    object whose ``result()`` is ``(W_mid, e_mid)``; read it before this thread starts another."""
    args = (back, kernels, rows, cols)
    opts = {"band_eps": band_eps, "mass_eps": mass_eps}
    if on_helper:
        return _helper().submit(_backward_laws, *args, **opts)
    return _Done(_backward_laws(*args, **opts))


@njit(cache=True, nogil=True, fastmath={"contract"})
def _backward_step(f, kern, rows, cols, y1, d, wp, wa, we, ep, band_eps, thr, tile, block,
                   kb, p, out, oa, oe, e):  # pragma: no cover
    """One backward date for B instances: out(x, rho) += sum_j kb(x, j) P(j, rho),
    P(j, d_j + rho) = wp(y1_j, rho) on wp's live range [wa, we) of row y1_j, kb the kernel
    rows rows[i] over ``cols`` cut to their band; then each row of out cut to its live range
    [oa, oe) (entries above ``thr``) and the bound e (module docstring). ``out`` is cleared
    first. ``kb`` (r, c) and ``p`` (c, L) are scratch."""
    nb, r, n_out = out.shape
    c = cols.size
    lo, hi = np.empty(r, np.int64), np.empty(r, np.int64)
    pa, pe = np.empty(c, np.int64), np.empty(c, np.int64)
    for b in range(nb):
        out[b] = 0.0             # (a compiled memset: a numpy fill was 2% of an Asian price)
        top_mass = 0.0           # max over y of the exact row mass of W_{t+1}: <= |W~|_1 + e
        y = 0
        while y + 4 <= wp.shape[1]:     # four rows' sums side by side (four add chains), each
            q0 = min(min(wa[b, y], wa[b, y + 1]), min(wa[b, y + 2], wa[b, y + 3]))
            q1 = max(max(we[b, y], we[b, y + 1]), max(we[b, y + 2], we[b, y + 3]))
            s0, s1, s2, s3 = ep[b, y], ep[b, y + 1], ep[b, y + 2], ep[b, y + 3]
            for q in range(q0, q1):     # in its own order (the zeros outside a row's range add
                s0 += abs(wp[b, y, q])  # nothing: the same sums)
                s1 += abs(wp[b, y + 1, q])
                s2 += abs(wp[b, y + 2, q])
                s3 += abs(wp[b, y + 3, q])
            top_mass = max(top_mass, max(max(s0, s1), max(s2, s3)))
            y += 4
        for yy in range(y, wp.shape[1]):
            sm = ep[b, yy]
            for q in range(wa[b, yy], we[b, yy]):
                sm += abs(wp[b, yy, q])
            top_mass = max(top_mass, sm)
        scatter = wp.shape[2] == 1
        if not scatter:
            for j in range(c):
                y = y1[j]
                for q in range(n_out):
                    p[j, q] = 0.0
                a, z = wa[b, y], we[b, y]
                for q in range(a, z):
                    p[j, d[j] + q] = wp[b, y, q]
                pa[j], pe[j] = (d[j] + a, d[j] + z) if a < z else (n_out, 0)
        kn = kern[b]
        for i in range(r):
            a, z, tail = _band_row(kn, rows[i], cols, band_eps, kb, i)
            acc = tail * top_mass
            for j in range(a, z):
                acc += abs(kb[i, j]) * ep[b, y1[j]]
                if scatter:
                    out[b, i, d[j]] += kb[i, j] * wp[b, y1[j], 0]
            e[b, i] = acc
            lo[i], hi[i] = a, z
        if not scatter:
            kf, pf, of = kb.ravel(), p.ravel(), out[b].ravel()
            for t0 in range(0, r, tile):
                t1 = min(r, t0 + tile)
                ya, ye = c, 0
                for i in range(t0, t1):
                    if lo[i] < hi[i]:
                        ya, ye = min(ya, lo[i]), max(ye, hi[i])
                for j0 in range(ya, ye, block):     # per chunk of columns: the rows it meets
                    j1 = min(ye, j0 + block)
                    xa, xe = t1, t0
                    for i in range(t0, t1):
                        if lo[i] < j1 and hi[i] > j0 and lo[i] < hi[i]:
                            xa, xe = min(xa, i), i + 1
                    ra, re = n_out, 0               # and the values of rho they reach
                    for j in range(j0, j1):
                        if pa[j] < pe[j]:
                            ra, re = min(ra, pa[j]), max(re, pe[j])
                    if xe > xa and re > ra:
                        _gemm(f, kf, xa * c + j0, c, pf, j0 * n_out + ra, n_out, of,
                              xa * n_out + ra, n_out, xe - xa, re - ra, j1 - j0, False)
        ob = out[b]
        for i in range(r):
            dropped = 0.0
            q, z = _zero_ends(ob, i, 0, n_out)
            while q < z and not abs(ob[i, q]) > thr:
                dropped += abs(ob[i, q])
                ob[i, q] = 0.0
                q += 1
            if q == z:                  # nothing above thr: the row is empty
                q = z = n_out
            while z > q and not abs(ob[i, z - 1]) > thr:
                dropped += abs(ob[i, z - 1])
                ob[i, z - 1] = 0.0
                z -= 1
            oa[b, i], oe[b, i] = q, z
            e[b, i] += dropped
    return 0
