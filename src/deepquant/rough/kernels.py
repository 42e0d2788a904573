"""numba kernels for the hot elementwise loops of the rough engine (one pass, no temporaries).

Each kernel but ``signature2`` performs the SAME floating-point operations, in the same
order, as the numpy expression it replaces and calls scipy's own ``ndtr`` / ``ndtri`` (through
``scipy.special.cython_special``); exp, log and sqrt are the C library's, which numpy uses too
on the machines measured (checked bit for bit; a numpy build with its own SIMD exp/log could
differ by an ulp). So the results equal the numpy code's (tested); only the memory traffic of
the intermediate arrays is saved. Compiled on first use and cached on disk; the modules that
use them import this one lazily (numba stays out of ``import deepquant``).

* ``bs_put_call``: the Black–Scholes value K e^{-r tau} N(-d2) - S N(-d1) (put) or
  S N(d1) - K e^{-r tau} N(d2) (call) from log S, log(K e^{-r tau}) and sigma sqrt(tau)
  (``lsm.bs_european``'s hot path).
* ``outer_paths``: Y, V, S of the hybrid scheme and log-Euler from the Volterra convolution
  (``rbergomi.RoughBergomi.paths_from_increments``).
* ``inner_log_paths``: log S, V, log V of the sub-simulation's inner paths over one period
  from the Volterra terms (``subsim._Inner.simulate``).
* ``payoff_increments``: the one-step increments of European values that end the martingale
  basis (``dual.martingale_increments``), summed per interval.
* ``signature2``: the level-2 signature of the inner paths' segments, combined with the
  outer path's signature (Chen); the one kernel whose sums run in another order than the code
  it replaces (pysiglib), equal to rounding.
* ``shifted_normals``: inverse normal CDF of Sobol points under a Cranley–Patterson shift
  modulo 1 and clipped to [eps, 1 - eps] (the sub-simulation's inner draws);
  ``clipped_normals``: the same without the shift (``qmc.gaussian_points``).
* ``bridge_increments``: the Brownian bridge per path (``qmc.BrownianBridge.increments``).
* ``coarsen_cells``: the increments of the grid with twice the step
  (``coupling.coarsen_increments``).
* ``bs_deltas``: the Black–Scholes deltas of the martingale basis (``dual._step_features``).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types
from numba.extending import get_cython_function_address

__all__ = ["bs_put_call", "shifted_normals", "clipped_normals", "bridge_increments",
           "coarsen_cells", "bs_deltas",
           "inner_log_paths", "outer_paths", "payoff_increments", "signature2"]


def _scipy_function(name: str, symbol: str):
    """scipy's compiled ``name`` (a double -> double function of ``cython_special``) as an
    external function of the kernels, registered under ``symbol``: called by name, so the
    kernels are cached on disk (a ctypes pointer would pin them to one process)."""
    llvm.add_symbol(symbol, get_cython_function_address("scipy.special.cython_special", name))
    return types.ExternalFunction(symbol, types.float64(types.float64))


# scipy's own ``ndtr`` / ``ndtri`` (Cephes). A transcription inlined into the kernels was
# measured: the same values bit for bit but 3% faster on the payoff-increment kernel and no
# faster on the inverse normal (the time is the exp/log and the rational functions, not the
# call), so the library's functions are called.
_ndtr = _scipy_function("__pyx_fuse_1ndtr", "deepquant_rough_ndtr")
_ndtri = _scipy_function("ndtri", "deepquant_rough_ndtri")


@njit(cache=True, nogil=True, inline="always")
def _bs1(log_s, s, log_dk, dk, sd, put):  # pragma: no cover - compiled
    """One Black–Scholes value: d1 = (log S - log(K e^{-r tau})) / sd + sd / 2, d2 = d1 - sd."""
    d1 = (log_s - log_dk) / sd + 0.5 * sd
    d2 = d1 - sd
    if put:
        return dk * _ndtr(-d2) - s * _ndtr(-d1)
    return s * _ndtr(d1) - dk * _ndtr(d2)


@njit(cache=True, nogil=True)
def _bs(logS, S, logdk, dk, sd, put, out):  # pragma: no cover - compiled
    n0, n1 = out.shape
    for i in range(n0):
        for j in range(n1):
            out[i, j] = _bs1(logS[i, j], S[i, j], logdk[i, j], dk[i, j], sd[i, j], put)


@njit(cache=True, nogil=True)
def _shifted(base, shift, eps, out):  # pragma: no cover - compiled
    n, m, d = out.shape
    for a in range(n):
        for b in range(m):
            for c in range(d):
                u = base[b, c] + shift[a, c]
                u -= np.floor(u)
                out[a, b, c] = _ndtri(min(max(u, eps), 1.0 - eps))


@njit(cache=True, nogil=True)
def _clipped(u, eps, out):  # pragma: no cover - compiled
    n, d = out.shape
    for a in range(n):
        for c in range(d):
            out[a, c] = _ndtri(min(max(u[a, c], eps), 1.0 - eps))


@njit(cache=True, nogil=True)
def _deltas(S, fv, ck, r, tau, put, out):  # pragma: no cover - compiled
    for a in range(S.shape[0]):
        sd = np.sqrt(fv[a] * tau)
        drift = (r + 0.5 * fv[a]) * tau
        for p in range(ck.shape[0]):
            d1 = (np.log(S[a] / ck[p]) + drift) / sd
            out[a, p] = _ndtr(-d1) if put else _ndtr(d1)


@njit(cache=True, nogil=True)
def _coarsen(w, wp, c, z, b, sd, out_w, out_wp, out_c):  # pragma: no cover - compiled
    n, h = out_w.shape
    resid = z.shape[0] > 0
    for a in range(n):
        for k in range(h):
            w0, w1 = w[a, 2 * k], w[a, 2 * k + 1]
            out_w[a, k] = w0 + w1
            out_wp[a, k] = wp[a, 2 * k] + wp[a, 2 * k + 1]
            x = ((b[0] * w0 + b[1] * c[a, 2 * k]) + b[2] * w1) + b[3] * c[a, 2 * k + 1]
            if resid:
                x += sd * z[a, k]
            out_c[a, k] = x


@njit(cache=True, nogil=True)
def _bridge(z, tgt, lo, hi, wl, wr, sd, out):  # pragma: no cover - compiled
    n, m = z.shape
    w = np.zeros(m + 1)  # w[0] = 0; the plan sets every other point once
    for a in range(n):
        for c in range(m):
            if hi[c] < 0:
                w[tgt[c]] = z[a, c] * sd[c]
            else:
                w[tgt[c]] = (wl[c] * w[lo[c]] + wr[c] * w[hi[c]]) + sd[c] * z[a, c]
        for k in range(m):
            out[a, k] = w[k + 1] - w[k]

@njit(cache=True, nogil=True)
def _inner(hist, cell, mm, logV0, logS0, dW, dWp, c):  # pragma: no cover - compiled
    s2h, log_xi0, eta, rho, rho_c, r, dt = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    half_var = c[7:]
    n, ni, m = cell.shape
    logV = np.empty((n, ni, m + 1))
    V = np.empty((n, ni, m + 1))
    logS = np.empty((n, ni, m + 1))
    for a in range(n):
        for b in range(ni):
            lv = logV0[a]
            v = np.exp(lv)
            logV[a, b, 0] = lv
            V[a, b, 0] = v
            logS[a, b, 0] = logS0[a]
            acc = 0.0
            for k in range(m):
                db = rho * dW[a, b, k] + rho_c * dWp[a, b, k]
                acc += (r - 0.5 * v) * dt + np.sqrt(v) * db
                logS[a, b, k + 1] = logS0[a] + acc
                y = s2h * ((hist[a, k] + cell[a, b, k]) + mm[a, b, k])
                lv = (log_xi0 + eta * y) - half_var[k]
                v = np.exp(lv)
                logV[a, b, k + 1] = lv
                V[a, b, k + 1] = v
    return logS, V, logV


@njit(cache=True, nogil=True)
def _payoff_incr(S, logS, V, fwd, q_of, col_of, i_of, c, strikes, logdk_a, dk_a,
                logdk_b, dk_b, put, off, out):  # pragma: no cover - compiled
    # c[s] = (dt, rest, sqrt(rest), sqrt(dt + rest), disc_q, disc_q1, K)
    n = S.shape[0]
    P = strikes.shape[0]
    for a in range(n):
        for s in range(q_of.shape[0]):
            q, i = q_of[s], i_of[s]
            dt, rest, sq_rest, sq_tb = c[s, 0], c[s, 1], c[s, 2], c[s, 3]
            f = fwd[a, col_of[s]]
            vol_b = np.sqrt((V[a, q] * dt + f * rest) / (dt + rest))
            sd_b = sq_tb * vol_b
            sd_a = sq_rest * np.sqrt(f)
            for p in range(P):
                if rest > 0.0:
                    after = _bs1(logS[a, q + 1], S[a, q + 1], logdk_a[s, p], dk_a[s, p], sd_a,
                                 put)
                elif put:
                    after = max(strikes[p] - S[a, q + 1], 0.0)
                else:
                    after = max(S[a, q + 1] - strikes[p], 0.0)
                before = _bs1(logS[a, q], S[a, q], logdk_b[s, p], dk_b[s, p], sd_b, put)
                out[a, i, off + p] += (c[s, 5] * after - c[s, 4] * before) / c[s, 6]



@njit(cache=True, nogil=True)
def _outer(cell, conv, dW, dWp, v, c):  # pragma: no cover - compiled
    s2h, log_xi0, eta, half_eta2, rho, rho_c, r, dt, log_s0 = (c[0], c[1], c[2], c[3], c[4],
                                                                c[5], c[6], c[7], c[8])
    n, m = dW.shape
    Y = np.zeros((n, m + 1))
    V = np.empty((n, m + 1))
    S = np.empty((n, m + 1))
    for a in range(n):
        v_k = np.exp((log_xi0 + eta * 0.0) - half_eta2 * v[0])
        V[a, 0] = v_k
        S[a, 0] = np.exp(log_s0)
        acc = 0.0
        for k in range(m):
            acc += (r - 0.5 * v_k) * dt + np.sqrt(v_k) * (rho * dW[a, k] + rho_c * dWp[a, k])
            S[a, k + 1] = np.exp(acc + log_s0)
            y = s2h * (cell[a, k] + conv[a, k + 1])
            Y[a, k + 1] = y
            v_k = np.exp((log_xi0 + eta * y) - half_eta2 * v[k + 1])
            V[a, k + 1] = v_k
    return Y, V, S


@njit(cache=True, nogil=True)
def _segment_sig2(x, prefix, rep, out):  # pragma: no cover - compiled
    N, p, _ = x.shape
    s1 = np.empty(3)
    s2 = np.empty((3, 3))
    dx = np.empty(3)
    for a in range(N):
        s1[:] = 0.0
        s2[:] = 0.0
        for k in range(p - 1):
            for i in range(3):
                dx[i] = x[a, k + 1, i] - x[a, k, i]
            for i in range(3):
                for j in range(3):
                    s2[i, j] += s1[i] * dx[j] + 0.5 * dx[i] * dx[j]
            for i in range(3):
                s1[i] += dx[i]
        if prefix.shape[0]:
            b = a // rep
            for i in range(3):
                for j in range(3):
                    s2[i, j] += prefix[b, 3 + 3 * i + j] + prefix[b, i] * s1[j]
            for i in range(3):
                s1[i] += prefix[b, i]
        for i in range(3):
            out[a, i] = s1[i]
            for j in range(3):
                out[a, 3 + 3 * i + j] = s2[i, j]


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
    _bs(*views, bool(put), out)
    return out.reshape(shape)


def shifted_normals(base: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    """ndtri(clip((base + shift) mod 1, eps, 1 - eps)) for points ``base`` (m, d) and one
    shift per outer path ``shift`` (n, d); shape (n, m, d). Equals
    ``u = base[None] + shift[:, None]; u -= floor(u); ndtri(clip(u, eps, 1 - eps))``."""
    base = np.ascontiguousarray(base, dtype=float)
    shift = np.ascontiguousarray(shift, dtype=float)
    out = np.empty((shift.shape[0],) + base.shape)
    _shifted(base, shift, float(eps), out)
    return out


def clipped_normals(u: np.ndarray, eps: float) -> np.ndarray:
    """ndtri(clip(u, eps, 1 - eps)) for points ``u`` (n, d); equals that numpy expression."""
    u = np.asarray(u, dtype=float)
    out = np.empty(u.shape)
    _clipped(u, float(eps), out)
    return out


def bs_deltas(S, fv, strikes, r: float, tau: float, *, put: bool, out: np.ndarray) -> None:
    """Write N(-d1) (put) or N(d1) (call), d1 = (log(S / K_p) + (r + fv / 2) tau) /
    sqrt(fv tau), for spots ``S`` and variances ``fv`` (n,) and ``strikes`` (P,) into ``out``
    (n, P) (``dual._step_features``); the numpy form's operations in its order."""
    _deltas(np.asarray(S, dtype=float), np.asarray(fv, dtype=float),
            np.asarray(strikes, dtype=float), float(r), float(tau), bool(put), out)


def coarsen_cells(dW, dW_perp, cell, beta, sd: float, z) -> tuple:
    """(dW, dW_perp, cell) on the grid with twice the step from (..., n) fine arrays
    (``coupling.coarsen_increments``): pair sums, and the coarse cell
    ((b0 dW_1 + b1 I_1) + b2 dW_2) + b3 I_2 (+ sd z where ``z`` (..., n/2) is given); the numpy
    form's operations in its order."""
    n = dW.shape[-1]
    lead = dW.shape[:-1]
    w, wp, c = (np.ascontiguousarray(a, dtype=float).reshape(-1, n) for a in (dW, dW_perp, cell))
    zz = np.zeros((0, 0)) if z is None else np.ascontiguousarray(z, dtype=float).reshape(-1, n // 2)
    out = [np.empty((w.shape[0], n // 2)) for _ in range(3)]
    _coarsen(w, wp, c, zz, np.asarray(beta, dtype=float), float(sd), *out)
    return tuple(o.reshape(lead + (n // 2,)) for o in out)


def bridge_increments(z: np.ndarray, plan) -> np.ndarray:
    """Brownian-bridge increments (``qmc.BrownianBridge.increments``) of z (..., m) for the
    construction ``plan``, rows (target, left, right, w_left, w_right, std) in order, right
    < 0 for the terminal point: per path w_target = (w_left w_l + w_right w_r) + std z_col,
    w_0 = 0, then the differences; the numpy form's operations in its order."""
    m = z.shape[-1]
    tgt, lo, hi, wl, wr, sd = (np.array(c) for c in zip(*plan, strict=True))
    z2 = z.reshape(-1, m)
    out = np.empty(z2.shape)
    _bridge(z2, tgt.astype(np.int64), lo.astype(np.int64), hi.astype(np.int64),
            wl.astype(float), wr.astype(float), sd.astype(float), out)
    return out.reshape(z.shape)


def inner_log_paths(hist, cell, mm, logV0, logS0, dW, dWp, *, s2h, log_xi0, eta, rho, r, dt,
                    half_var) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log S, V, log V), each (n, n_inner, m + 1), of inner paths starting at log V0, log S0
    (n,): log V_{k+1} = log xi0 + eta y_k - half_var_k with
    y_k = s2h ((hist_k + cell_k) + mm_k) (hist (n, m) the outer path's Volterra history, mm
    (n, n_inner, m) the new-noise convolution), V = exp(log V), and the log-Euler step
    log S_{k+1} = log S_0 + sum_{l <= k} ((r - V_l / 2) dt + sqrt(V_l) (rho dW_l +
    sqrt(1 - rho^2) dWp_l)). The operations of ``subsim._Inner.simulate``'s numpy form, in
    its order."""
    c = np.concatenate([[s2h, log_xi0, eta, rho, np.sqrt(max(1.0 - rho**2, 0.0)), r, dt],
                        np.asarray(half_var, dtype=float)])
    return _inner(np.ascontiguousarray(hist, dtype=float),
                          np.ascontiguousarray(cell, dtype=float),
                          np.ascontiguousarray(mm, dtype=float),
                          np.ascontiguousarray(logV0, dtype=float),
                          np.ascontiguousarray(logS0, dtype=float),
                          np.ascontiguousarray(dW, dtype=float),
                          np.ascontiguousarray(dWp, dtype=float), c)


def payoff_increments(S, logS, V, fwd, steps, cols, intervals, times, ends, disc, strikes,
                      K: float, r: float, *, put: bool, out: np.ndarray, offset: int) -> None:
    """Add to ``out[:, i, offset:]`` (out (n, J, P)) for each simulation step q in ``steps``
    (interval ``intervals`` ending at time ``ends``, forward variance ``fwd[:, cols]``) the
    increment (disc_{q+1} P(S_{q+1}; sqrt(f), rest) - disc_q P(S_q; vol_b, dt + rest)) / K of
    the European values with ``strikes`` (P,) expiring at the interval's end, rest = end -
    t_{q+1}, vol_b^2 = (V_q dt + f rest) / (dt + rest); P(.; ., 0) the intrinsic value.
    The operations of ``dual.martingale_increments``' numpy form through ``lsm.bs_european``,
    in its order (bit-identical; S, log S, V (n, N + 1))."""
    steps = np.asarray(steps, dtype=np.int64)
    t0, t1 = times[steps], times[steps + 1]
    dt = t1 - t0
    rest = np.asarray(ends, dtype=float) - t1
    tb = dt + rest
    strikes = np.asarray(strikes, dtype=float)
    # per step, as bs_european forms them from its scalar tau
    dk_a = np.array([np.exp(-r * np.asarray(x)) * strikes for x in rest])
    dk_b = np.array([np.exp(-r * np.asarray(x)) * strikes for x in tb])
    c = np.stack([dt, rest, np.sqrt(np.maximum(rest, 0.0)), np.sqrt(tb), disc[steps],
                  disc[steps + 1], np.full_like(dt, K)], axis=1)
    _payoff_incr(S, logS, V, np.ascontiguousarray(fwd), steps,
                   np.asarray(cols, dtype=np.int64), np.asarray(intervals, dtype=np.int64),
                   np.ascontiguousarray(c), strikes, np.log(dk_a), dk_a, np.log(dk_b), dk_b,
                   bool(put), int(offset), out)


def outer_paths(cell, conv, dW, dWp, v, *, s2h, log_xi0, eta, rho, r, dt, log_s0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, V, S), each (n, m + 1), of ``RoughBergomi.paths_from_increments`` (eta != 0) from
    the cell integrals, the convolution ``conv`` (n, >= m + 1) and the drivers (n, m):
    Y_k = s2h (cell_k + conv_k), log V = log xi0 + eta Y - eta^2 v / 2, log S by log-Euler
    with the left-point variance from log S_0. The numpy form's operations in its order."""
    c = np.array([s2h, log_xi0, eta, 0.5 * eta**2, rho, np.sqrt(max(1.0 - rho**2, 0.0)), r,
                  dt, log_s0])
    return _outer(np.ascontiguousarray(cell, dtype=float), np.ascontiguousarray(conv),
                  np.ascontiguousarray(dW, dtype=float), np.ascontiguousarray(dWp, dtype=float),
                  np.ascontiguousarray(v, dtype=float), c)


def signature2(x: np.ndarray, prefix: np.ndarray | None = None, repeat: int = 1) -> np.ndarray:
    """Level-2 signature (N, 12) of the piecewise-linear paths x (N, p, 3) (level 1 then level
    2 row-major, as ``pysiglib.sig(x, 2)``), by Chen's identity segment by segment; with
    ``prefix`` (N / repeat, 12) the Chen product prefix[i // repeat] (x) sig(x_i) (as
    ``pysiglib.sig_combine`` of the repeated prefix). Equal to pysiglib to rounding (the sums
    in another order: ~1e-16 relative, tested)."""
    x = np.ascontiguousarray(x, dtype=float)
    pre = np.zeros((0, 12)) if prefix is None else np.ascontiguousarray(prefix, dtype=float)
    out = np.empty((x.shape[0], 12))
    _segment_sig2(x, pre, int(repeat), out)
    return out
