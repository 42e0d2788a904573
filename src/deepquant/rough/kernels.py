"""numba kernels for the hot elementwise loops of the rough engine (one pass, no temporaries).

Each kernel performs the SAME floating-point operations, in the same order, as the numpy
expression it replaces, and calls scipy's own ``ndtr`` / ``ndtri`` (through
``scipy.special.cython_special``), so its results are bit-identical to the numpy code
(tested); only the memory traffic of the intermediate arrays is saved. The kernels are
compiled on first use (about a second each; numba cannot cache functions that call through C
pointers).

* ``bs_put_call``: the Black–Scholes value K e^{-r tau} N(-d2) - S N(-d1) (put) or
  S N(d1) - K e^{-r tau} N(d2) (call) from log S, log(K e^{-r tau}) and sigma sqrt(tau)
  (``lsm.bs_european``'s hot path).
* ``shifted_normals``: inverse normal CDF of Sobol points under a Cranley–Patterson shift
  modulo 1 and clipped to [eps, 1 - eps] (the sub-simulation's inner draws).
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np

__all__ = ["bs_put_call", "shifted_normals"]


@cache
def _compiled():
    from numba import njit
    from numba.extending import get_cython_function_address

    sig = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)
    ndtr = sig(get_cython_function_address("scipy.special.cython_special", "__pyx_fuse_1ndtr"))
    ndtri = sig(get_cython_function_address("scipy.special.cython_special", "ndtri"))

    @njit(nogil=True)
    def bs(logS, S, logdk, dk, sd, put, out):  # pragma: no cover - compiled
        n0, n1 = out.shape
        for i in range(n0):
            for j in range(n1):
                s = sd[i, j]
                d1 = (logS[i, j] - logdk[i, j]) / s + 0.5 * s
                d2 = d1 - s
                if put:
                    out[i, j] = dk[i, j] * ndtr(-d2) - S[i, j] * ndtr(-d1)
                else:
                    out[i, j] = S[i, j] * ndtr(d1) - dk[i, j] * ndtr(d2)

    @njit(nogil=True)
    def shifted(base, shift, eps, out):  # pragma: no cover - compiled
        n, m, d = out.shape
        for a in range(n):
            for b in range(m):
                for c in range(d):
                    u = base[b, c] + shift[a, c]
                    u -= np.floor(u)
                    out[a, b, c] = ndtri(min(max(u, eps), 1.0 - eps))

    return bs, shifted


def bs_put_call(S, log_S, disc_k, log_disc_k, sd, *, put: bool) -> np.ndarray:
    """Black–Scholes value for broadcasting arrays: spot ``S`` and its log ``log_S``, the
    discounted strike K e^{-r tau} and its log, the total volatility sigma sqrt(tau) (> 0).
    Returns the broadcast shape; equals the numpy expression in ``lsm.bs_european`` bit for
    bit."""
    args = [np.asarray(a, dtype=float) for a in (log_S, S, log_disc_k, disc_k, sd)]
    shape = np.broadcast_shapes(*(a.shape for a in args))
    flat = (int(np.prod(shape[:-1])) if len(shape) > 1 else 1, shape[-1] if shape else 1)
    views = [np.broadcast_to(a, shape) for a in args]
    if len(shape) != 2:
        views = [np.ascontiguousarray(v).reshape(flat) for v in views]
    out = np.empty(flat)
    _compiled()[0](*views, bool(put), out)
    return out.reshape(shape)


def shifted_normals(base: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    """ndtri(clip((base + shift) mod 1, eps, 1 - eps)) for points ``base`` (m, d) and one
    shift per outer path ``shift`` (n, d); shape (n, m, d). Equals
    ``u = base[None] + shift[:, None]; u -= floor(u); ndtri(clip(u, eps, 1 - eps))``."""
    base = np.ascontiguousarray(base, dtype=float)
    shift = np.ascontiguousarray(shift, dtype=float)
    out = np.empty((shift.shape[0],) + base.shape)
    _compiled()[1](base, shift, float(eps), out)
    return out
