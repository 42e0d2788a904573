"""The numba kernel of one step of ``ChainPlan``'s forward recursion (``deepquant.mmot.model``).

Per instance, the joint law m(s, x) is cut into blocks of ``block`` consecutive states s. In a
block, the columns x run from the first to the last one holding an entry above ``thr`` (in
absolute value), and y over the union of the kernel bands of those rows (the columns from the
first to the last kernel entry above ``band_eps`` times the row's largest, in absolute value);
the block's product is one BLAS matmul on that rectangle, and its result is pushed through the
statistic map (CSC by source (s, y)), skipping exact zeros. What the rectangles leave out is
counted: the joint entries outside them and, per kept entry, |m(s, x)| times the kernel mass
of row x outside its band. Kernels are stochastic and the maps move mass without creating it,
so |result - exact| <= the counted mass x max |payoff| (the bound ``ChainPlan`` reports).

Compiled on first use, cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["banded_step"]


@njit(cache=True, nogil=True)
def banded_step(joint, k, thr, band_eps, block, indptr, dst, w, out):
    """One date for B instances.

    joint (B, n, r); k (B, r, c) the kernels on the reachable rows and the support columns;
    thr (B,) the joint threshold per instance; indptr / dst / w the map in CSC over sources
    s * c + y with destinations s' * r' + y'; out (B, n' r') receives the next joint (zeroed
    here). Returns the dropped mass per instance, shape (B,).
    """
    n_b, n, r = joint.shape
    c = k.shape[2]
    lo = np.empty(r, np.int64)
    hi = np.empty(r, np.int64)
    drop_k = np.empty(r)
    lost = np.zeros(n_b)
    for b in range(n_b):
        for j in range(out.shape[1]):
            out[b, j] = 0.0
        for i in range(r):
            top = 0.0
            for j in range(c):
                v = abs(k[b, i, j])
                if v > top:
                    top = v
            cut = band_eps * top
            a = 0
            while a < c and not abs(k[b, i, a]) > cut:
                a += 1
            e = c
            while e > a and not abs(k[b, i, e - 1]) > cut:
                e -= 1
            lo[i] = a
            hi[i] = e
            tail = 0.0
            for j in range(a):
                tail += abs(k[b, i, j])
            for j in range(e, c):
                tail += abs(k[b, i, j])
            drop_k[i] = tail
        t_b = thr[b]
        for s0 in range(0, n, block):
            s1 = min(n, s0 + block)
            xa = r
            xe = 0
            for s in range(s0, s1):
                for i in range(r):
                    if abs(joint[b, s, i]) > t_b:
                        if i < xa:
                            xa = i
                        if i + 1 > xe:
                            xe = i + 1
            ya = c
            ye = 0
            for i in range(xa, xe):
                if hi[i] > lo[i]:
                    if lo[i] < ya:
                        ya = lo[i]
                    if hi[i] > ye:
                        ye = hi[i]
            dropped = 0.0
            for s in range(s0, s1):
                for i in range(r):
                    v = abs(joint[b, s, i])
                    if i < xa or i >= xe:
                        dropped += v
                    else:
                        dropped += v * drop_k[i]
            lost[b] += dropped
            if xe <= xa or ye <= ya:
                continue
            prod = np.dot(np.ascontiguousarray(joint[b, s0:s1, xa:xe]),
                          np.ascontiguousarray(k[b, xa:xe, ya:ye]))
            for s in range(s0, s1):
                for j in range(ya, ye):
                    v = prod[s - s0, j - ya]
                    if v != 0.0:
                        src = s * c + j
                        for p in range(indptr[src], indptr[src + 1]):
                            out[b, dst[p]] += w[p] * v
    return lost
