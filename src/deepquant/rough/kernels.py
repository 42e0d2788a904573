"""numba kernels for the hot elementwise loops of the rough engine (one pass, no temporaries).

Each kernel but ``signature2`` performs the SAME floating-point operations, in the same
order, as the numpy expression it replaces, with scipy's ``ndtr`` / ``ndtri`` (Cephes,
transcribed below bit for bit); exp, log and sqrt are the C library's, which numpy uses too
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

import numpy as np
from numba import njit

__all__ = ["bs_put_call", "shifted_normals", "clipped_normals", "bridge_increments",
           "coarsen_cells", "bs_deltas",
           "inner_log_paths", "outer_paths", "payoff_increments", "signature2"]


# Cephes' ndtr and ndtri (Moshier, "ndtr.c", "ndtri.c": rational approximations), scipy's
# ``special.ndtr`` / ``special.ndtri``, transcribed: the same coefficients, the same Horner
# evaluations (polevl, p1evl) in the same order and the C library's exp, log and sqrt, so the
# values are scipy's bit for bit (tested on 5e6 points and the branch edges). Inlined, they
# save the call into scipy and its registration as an external symbol; the gain measured in
# the kernels is small (0-20%): the time is the exp/log and the rational functions themselves.
_ERFC_P = np.array([2.46196981473530512524e-10, 5.64189564831068821977e-1,
                    7.46321056442269912687e0, 4.86371970985681366614e1,
                    1.96520832956077098242e2, 5.26445194995477358631e2,
                    9.34528527171957607540e2, 1.02755188689515710272e3,
                    5.57535335369399327526e2])
_ERFC_Q = np.array([1.32281951154744992508e1, 8.67072140885989742329e1,
                    3.54937778887819891062e2, 9.75708501743205489753e2,
                    1.82390916687909736289e3, 2.24633760818710981792e3,
                    1.65666309194161350182e3, 5.57535340817727675546e2])
_ERFC_R = np.array([5.64189583547755073984e-1, 1.27536670759978104416e0,
                    5.01905042251180477414e0, 6.16021097993053585195e0,
                    7.40974269950448939160e0, 2.97886665372100240670e0])
_ERFC_S = np.array([2.26052863220117276590e0, 9.39603524938001434673e0,
                    1.20489539808096656605e1, 1.70814450747565897222e1,
                    9.60896809063285878198e0, 3.36907645100081516050e0])
_ERF_T = np.array([9.60497373987051638749e0, 9.00260197203842689217e1,
                   2.23200534594684319226e3, 7.00332514112805075473e3,
                   5.55923013010394962768e4])
_ERF_U = np.array([3.35617141647503099647e1, 5.21357949780152679795e2,
                   4.59432382970980127987e3, 2.26290000613890934246e4,
                   4.92673942608635921086e4])
_MAXLOG = 7.09782712893383996843e2
_SQRT1_2 = 0.70710678118654752440
_NDTRI_P0 = np.array([-5.99633501014107895267e1, 9.80010754185999661536e1,
                      -5.66762857469070293439e1, 1.39312609387279679503e1,
                      -1.23916583867381258016e0])
_NDTRI_Q0 = np.array([1.95448858338141759834e0, 4.67627912898881538453e0,
                      8.63602421390890590575e1, -2.25462687854119370527e2,
                      2.00260212380060660359e2, -8.20372256168333339912e1,
                      1.59056225126211695515e1, -1.18331621121330003142e0])
_NDTRI_P1 = np.array([4.05544892305962419923e0, 3.15251094599893866154e1,
                      5.71628192246421288162e1, 4.40805073893200834700e1,
                      1.46849561928858024014e1, 2.18663306850790267539e0,
                      -1.40256079171354495875e-1, -3.50424626827848203418e-2,
                      -8.57456785154685413611e-4])
_NDTRI_Q1 = np.array([1.57799883256466749731e1, 4.53907635128879210584e1,
                      4.13172038254672030440e1, 1.50425385692907503408e1,
                      2.50464946208309415979e0, -1.42182922854787788574e-1,
                      -3.80806407691578277194e-2, -9.33259480895457427372e-4])
_NDTRI_P2 = np.array([3.23774891776946035970e0, 6.91522889068984211695e0,
                      3.93881025292474443415e0, 1.33303460815807542389e0,
                      2.01485389549179081538e-1, 1.23716634817820021358e-2,
                      3.01581553508235416007e-4, 2.65806974686737550832e-6,
                      6.23974539184983293730e-9])
_NDTRI_Q2 = np.array([6.02427039364742014255e0, 3.67983563856160859403e0,
                      1.37702099489081330271e0, 2.16236993594496635890e-1,
                      1.34204006088543189037e-2, 3.28014464682127739104e-4,
                      2.89247864745380683936e-6, 6.79019408009981274425e-9])
_S2PI = 2.50662827463100050242e0
_EXPM2 = 0.13533528323661269189  # exp(-2)


@njit(cache=True, nogil=True, inline="always")
def _polevl(x, coef):  # pragma: no cover - compiled
    ans = coef[0]
    for i in range(1, coef.shape[0]):
        ans = ans * x + coef[i]
    return ans


@njit(cache=True, nogil=True, inline="always")
def _p1evl(x, coef):  # pragma: no cover - compiled
    ans = x + coef[0]
    for i in range(1, coef.shape[0]):
        ans = ans * x + coef[i]
    return ans


@njit(cache=True, nogil=True, inline="always")
def _erf_small(x):  # pragma: no cover - compiled
    """Cephes erf for |x| <= 1."""
    z = x * x
    return x * _polevl(z, _ERF_T) / _p1evl(z, _ERF_U)


@njit(cache=True, nogil=True, inline="always")
def _erfc_large(a):  # pragma: no cover - compiled
    """Cephes erfc for |a| >= 1 (0 or 2 where it underflows)."""
    x = abs(a)
    z = -a * a
    if z < -_MAXLOG:
        return 2.0 if a < 0.0 else 0.0
    z = np.exp(z)
    if x < 8.0:
        y = (z * _polevl(x, _ERFC_P)) / _p1evl(x, _ERFC_Q)
    else:
        y = (z * _polevl(x, _ERFC_R)) / _p1evl(x, _ERFC_S)
    if a < 0.0:
        y = 2.0 - y
    if y == 0.0:
        return 2.0 if a < 0.0 else 0.0
    return y


@njit(cache=True, nogil=True, inline="always")
def _ndtr(a):  # pragma: no cover - compiled
    """The standard normal CDF, scipy's ``special.ndtr`` bit for bit (see above)."""
    if a != a:
        return a
    x = a * _SQRT1_2
    z = abs(x)
    if z < _SQRT1_2:  # 0.5 + 0.5 erf(x), |x| < 1
        return 0.5 + 0.5 * _erf_small(x)
    # 0.5 erfc(z), z >= 1/sqrt(2): erfc = 1 - erf below 1
    y = 0.5 * (1.0 - _erf_small(z) if z < 1.0 else _erfc_large(z))
    if x > 0.0:
        y = 1.0 - y
    return y


@njit(cache=True, nogil=True, inline="always")
def _ndtri(y0):  # pragma: no cover - compiled
    """The inverse standard normal CDF, scipy's ``special.ndtri`` bit for bit (see above)."""
    if y0 == 0.0:
        return -np.inf
    if y0 == 1.0:
        return np.inf
    if not 0.0 < y0 < 1.0:
        return np.nan
    y = y0
    negate = True
    if y > 1.0 - _EXPM2:
        y = 1.0 - y
        negate = False
    if y > _EXPM2:  # central region: a rational function of (y - 1/2)^2
        y = y - 0.5
        y2 = y * y
        x = y + y * (y2 * _polevl(y2, _NDTRI_P0) / _p1evl(y2, _NDTRI_Q0))
        return x * _S2PI
    x = np.sqrt(-2.0 * np.log(y))
    x0 = x - np.log(x) / x
    z = 1.0 / x
    if x < 8.0:
        x1 = z * _polevl(z, _NDTRI_P1) / _p1evl(z, _NDTRI_Q1)
    else:
        x1 = z * _polevl(z, _NDTRI_P2) / _p1evl(z, _NDTRI_Q2)
    x = x0 - x1
    return -x if negate else x


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
