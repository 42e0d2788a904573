"""The exact martingale projection of given column potentials (for the neural engine).

``martingale_projection`` turns predicted potentials v of a chain into martingale kernels by
solving every row multiplier exactly; ``semi_dual`` evaluates the semi-dual of one-period
problems at given v (its value, its row multipliers and, optionally, the projected rows), the
dual-gap loss of the neural engine. Both share the support rules (pinned rows, touching points)
of ``solve_entropic``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from deepquant.market.marginals import Marginals
from deepquant.mmot._gibbs import _row_solve
from deepquant.mmot._plans import measure
from deepquant.mmot._support import _check_eps, _prepare, reference_kernels
from deepquant.results import result_dict, warn_failure

__all__ = ["ProjectionResult", "martingale_projection", "project_periods", "SemiDual",
           "semi_dual"]


@dataclass(frozen=True, eq=False)
class ProjectionResult:
    """Kernels of given column potentials with the row multipliers solved exactly.

    Attributes
    ----------
    kernels : ndarray, shape (N, M, M)
        K_t(y | x) = q_t(y | x) exp(v_t(y)/eps + h_t(x)(y - x)/eps) / Z_t(x) on the allowed
        entries; rows without mass and pinned rows are the point mass at x.
    h : ndarray, shape (N, M)
        The row-optimal multipliers (cost units; 0 on rows without mass and on pinned rows).
    drift : ndarray, shape (N,)
        Measured max_x |E[Y - x | x]| over rows with mass (<= ``tol`` up to rounding).
    marginal_error : ndarray, shape (N,)
        Measured L1 error of the row and column sums (rows exact; the columns carry the error
        of v).
    v : ndarray, shape (N, M)
        The input v (cost units), except on the columns dropped by ``column_floor`` that carry
        weight: there v is set in closed form so that the Gibbs kernels at (v, h) would give
        them exactly their target weight (one martingale-Sinkhorn column update): a warm start
        for ``newton_polish`` that does not need the dropped columns repaired by iteration.
    success : bool
        Every row with mass met the row solve's target |E[Y - x | x]| <= ``tol`` (the columns
        are not asked to match: they carry the error of v).
    status : str
        ``"converged"`` or ``"not_converged"`` (some row missed ``tol`` within the row solve's
        iterations).
    message : str
    seconds : float
        Wall time of the projection.
    """

    kernels: np.ndarray
    h: np.ndarray
    drift: np.ndarray
    marginal_error: np.ndarray
    v: np.ndarray
    success: bool
    status: str
    message: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: the protocol fields and the per-period ``drift`` and
        ``marginal_error`` (no kernels or potentials)."""
        return result_dict(self, skip=("kernels", "h", "v"))


def martingale_projection(marginals: Marginals, v: np.ndarray, h: np.ndarray | None = None, *,
                          eps: float = 1.0, reference: Any = "product", tol: float = 1e-13,
                          touch_tol: float = 1e-11, column_floor: float = 0.0,
                          warn: bool = True) -> ProjectionResult:
    """The exact martingale kernels of column potentials ``v`` (shape (N, M), cost units).

    For fixed v the semi-dual F(phi, eta) of the module doc separates over rows in (u, eta):
    u is the row normaliser and eta(x) = h(x) / eps solves the 1-D convex equation
    E_{p_x}[Y - x] = 0 (safeguarded Newton, bracketed, ``_row_solve``), started from ``h`` when
    given. The resulting kernels are exact martingale transitions (drift <= ``tol``) with exact
    row sums; only their column sums carry the error of v. This is the "c-transform" of
    martingale transport: one half-sweep of martingale-Sinkhorn (seed 001 Algorithm 1) without
    the v update, and it is how the neural pricer turns predicted potentials into a martingale
    model. Edge rows and touching points are handled as in ``solve_entropic`` (pinned to point
    masses, crossing entries forbidden).

    ``column_floor``: columns y with mu_{t+1}(y) <= column_floor receive no mass (the kernels
    are built as if those weights were 0; rows left without support on both sides are pinned).
    For potentials that are only meaningful where the target has mass (a network trained with a
    mass floor): there an arbitrary v can pull O(1) mass onto a column of weight 1e-20. The
    measured marginal error then includes the dropped weights (at most M * column_floor).

    A row whose multiplier misses ``tol`` within the row solve's iterations makes the result
    ``success=False`` (status ``"not_converged"``) and, with ``warn``, a ``ConvergenceWarning``.
    """
    t0 = time.perf_counter()
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    eps = _check_eps(eps)
    n, m = marginals.n_periods, marginals.size
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (n, m) or not np.all(np.isfinite(v)):
        raise ValueError(f"v must be a finite array of shape (N, M) = {(n, m)}, got "
                         f"shape {v.shape} with {int(np.size(v) - np.isfinite(v).sum())} "
                         "non-finite entries")
    if h is None:
        h = np.zeros((n, m))
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (n, m):
        raise ValueError(f"h must have shape (N, M) = {(n, m)}, got {h.shape}")
    h = np.where(np.isfinite(h), h, 0.0)
    if not (np.isfinite(column_floor) and column_floor >= 0):
        raise ValueError(f"column_floor must be a finite number >= 0, got {column_floor!r}")
    grid, w = marginals.grid, marginals.weights
    logq_raw = reference_kernels(marginals, reference)
    nu = w[1:].copy()
    if column_floor > 0:
        nu[nu <= column_floor] = 0.0
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        b = _prepare(grid, w[:-1].copy(), nu, logq_raw, None, touch_tol=touch_tol)
        phi = v / eps
        active = b.mu > 0
        kernels = np.broadcast_to(np.eye(m), (n, m, m)).copy()
        eta = np.zeros((n, m))
        tt, xx = np.nonzero(active)
        lse = np.zeros((n, m))
        row_residual = np.zeros(0)
        if tt.size:
            base = b.logq[tt, xx, :] + phi[tt, :]
            d = b.diff[xx]
            e, p, lse_rows, row_residual = _row_solve(base, d, h[tt, xx] / eps, tol=tol,
                                                      kernels=True)
            eta[tt, xx] = e
            kernels[tt, xx] = p
            lse[tt, xx] = lse_rows
        v_out = v.copy()
        light = (w[1:] <= column_floor) & (w[1:] > 0) if column_floor > 0 else None
        if light is not None and light.any():
            from scipy.special import logsumexp

            for t in np.flatnonzero(light.any(axis=1)):
                rows = np.flatnonzero(active[t])
                cols = np.flatnonzero(light[t])
                if rows.size == 0:
                    continue
                lq = (np.log(w[t + 1, cols])[None, :] if logq_raw is None
                      else logq_raw[t][np.ix_(rows, cols)])
                sc = (lq + phi[t, cols][None, :] + eta[t, rows][:, None]
                      * b.diff[np.ix_(rows, cols)] - lse[t, rows][:, None])
                lcol = logsumexp(np.log(b.mu[t, rows])[:, None] + sc, axis=0)
                ok = np.isfinite(lcol)
                v_out[t, cols[ok]] += eps * (np.log(w[t + 1, cols[ok]]) - lcol[ok])
    errs, drift = measure(grid, w, kernels)
    missed = int(np.count_nonzero(~(np.abs(row_residual) <= tol)))
    residuals = (f"drift {np.max(drift, initial=0.0):.2e}, column L1 error "
                 f"{np.max(errs, initial=0.0):.2e}")
    if missed:
        message = (f"{missed} of {row_residual.size} row(s) above tol={tol:g} (largest "
                   f"|E[Y - x | x]| {np.max(np.abs(row_residual)):.2e}); {residuals}")
    else:
        message = f"every row solved to tol={tol:g}; {residuals}"
    result = ProjectionResult(kernels=kernels, h=eps * eta, drift=drift, marginal_error=errs,
                              v=v_out, success=missed == 0,
                              status="not_converged" if missed else "converged",
                              message=message, seconds=time.perf_counter() - t0)
    if warn:
        warn_failure(result, "martingale_projection")
    return result


def project_periods(grid: np.ndarray, mu: np.ndarray, nu: np.ndarray, phi: np.ndarray,
                    eta0: np.ndarray, *, logq_raw: np.ndarray | None = None, tol: float = 1e-13,
                    touch_tol: float = 1e-11, iters: int = 60, threads: int = 1):
    """The kernels of ``martingale_projection`` for K stacked periods (any mix of instances on
    one grid), compiled: the neural engine's batched path. Inputs are trusted (validated by
    the caller): marginals ``mu``, column targets ``nu`` (K, M), scaled potentials
    ``phi`` = v / eps and starts ``eta0`` (K, M), finite.

    The supports (``_prepare``: pinned rows, touching points) are those of ``solve_entropic``;
    every row with mass is solved by ``_project_rows`` (the safeguarded Newton of the numpy
    reference ``deepquant.mmot._gibbs._row_solve``, row by row, kernel rows written in place;
    kernels equal to the reference's to ~1e-14, tests/neural/test_fast_path.py). Rows stop on
    a residual at round-off, so with a ``tol`` below round-off which rows count as converged
    differs from the reference (``martingale_projection`` keeps the reference).
    Returns ``(batch, kernels (K, M, M), eta (K, M), lse (K, M), residual of each solved row)``;
    with the product reference the batch carries the bands, not the (K, M, M) log kernel
    (``batch.logq`` is None: row x allows the columns in [lo(x), hi(x)] with nu > 0).
    ``threads`` > 1 solves the rows in that many interleaved shares side by side (the kernels
    release the GIL; each row's result does not depend on the split).
    """
    k, m = mu.shape
    b = _prepare(grid, np.array(mu, dtype=np.float64), nu, logq_raw, None, touch_tol=touch_tol,
                 logq=False)
    kernels = np.empty((k, m, m))               # rows with mass are written in full below
    tp, xp = np.nonzero(~(b.mu > 0))
    kernels[tp, xp] = 0.0
    kernels[tp, xp, xp] = 1.0                   # the others: the point mass at x
    eta, lse = np.zeros((k, m)), np.zeros((k, m))
    tt, xx = np.nonzero(b.mu > 0)
    residual = np.zeros(tt.size)
    phi = np.ascontiguousarray(phi, dtype=np.float64)
    eta0 = np.ascontiguousarray(eta0, dtype=np.float64)
    step = np.diff(grid)
    delta = float(step.mean()) if grid.size > 1 else 0.0
    if logq_raw is None and not np.any(np.abs(step - delta) > 1e-12 * delta) and delta > 0:
        def solve(t, x, res):
            _project_rows_uniform(b.nu, b.nu_full, b.lo, b.hi, phi, grid, t, x, eta0, tol,
                                  iters, kernels, eta, lse, res, delta)
    else:
        if b.logq is None:          # product reference: row x allows [lo, hi] where nu > 0
            with np.errstate(divide="ignore"):
                lognu = np.where(b.nu > 0, np.log(b.nu_full), -np.inf)
            logq = np.empty((0, 0, 0))
        else:
            lognu = np.empty((0, 0))
            logq = b.logq

        def solve(t, x, res):
            _project_rows(logq, lognu, b.lo, b.hi, phi, grid, t, x, eta0, tol, iters, kernels,
                          eta, lse, res)
    _in_shares(solve, tt, xx, residual, threads)
    return b, kernels, eta, lse, residual


@functools.cache
def _pool(workers: int):
    """A pool of ``workers`` threads kept for the process (no thread start per call)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix="projection")


def _in_shares(solve, tt, xx, residual, threads: int) -> None:
    """``solve(tt, xx, residual)`` for the rows (tt[r], xx[r]), on ``threads`` interleaved
    shares of them side by side (contiguous copies, so the kernels see the same array types;
    one share, in this thread, for ``threads`` = 1 or a handful of rows)."""
    shares = min(int(threads), max(tt.size // 64, 1))
    if shares <= 1:
        solve(tt, xx, residual)
        return
    parts = [(np.ascontiguousarray(tt[i::shares]), np.ascontiguousarray(xx[i::shares]),
              np.zeros(tt[i::shares].size)) for i in range(shares)]
    rest = [_pool(shares - 1).submit(solve, *part) for part in parts[1:]]
    solve(*parts[0])
    for f in rest:
        f.result()
    for i, (_, _, res) in enumerate(parts):
        residual[i::shares] = res


_BLOCK = 32


@njit(cache=True, nogil=True)
def _newton_step(e, mean, sec, lo, hi, cap, mult, tol):  # pragma: no cover
    """One safeguarded Newton step of the row solve (``_row_solve``'s rule) at multiplier e
    with step mean ``mean`` and second moment ``sec``: the bracket [lo, hi] narrowed, the
    step capped at ``cap * mult`` (the cap doubling towards an open side), bisection when it
    leaves the bracket. Returns (stop, e, lo, hi, mult); stop at |mean| <= tol or a bracket
    at round-off."""
    if mean < 0:
        lo = max(lo, e)
    if mean > 0:
        hi = min(hi, e)
    stuck = np.isfinite(lo) and np.isfinite(hi) and hi - lo <= 1e-15 * max(1.0, abs(e))
    if abs(mean) <= tol or stuck:
        return True, e, lo, hi, mult
    var = max(sec - mean * mean, 1e-300)
    lim = cap * mult
    step = -mean / var
    if not np.isfinite(step):
        step = -np.sign(mean) * lim
    capped = abs(step) >= lim
    step = min(max(step, -lim), lim)
    open_side = not np.isfinite(hi) if step > 0 else not np.isfinite(lo)
    mult = 2.0 * mult if capped and open_side else 1.0
    new = e + step
    mid = 0.5 * (lo + hi)
    if (new <= lo or new >= hi) and np.isfinite(mid):
        new = mid
    return False, new, lo, hi, mult


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _project_rows(logq, lognu, band_lo, band_hi, phi, grid, tt, xx, eta0, tol, iters, kernels,
                  eta, lse, residual):  # pragma: no cover
    """Row r = (tt[r], xx[r]): eta solving E_p[Y - x] = 0 for p(y) = exp(logq(x, y) + phi(y)
    + eta (y - x) - lse), written with p into ``kernels``, ``eta``, ``lse``, ``residual``.
    ``logq`` (K, M, M), or, when it is empty, the product reference's logq(x, y) =
    ``lognu[t, y]`` for y in [band_lo(x), band_hi(x)] (-inf elsewhere).

    The same iteration as ``_row_solve`` / ``_solve_interior`` of ``deepquant.mmot._gibbs``
    (the numpy reference): steps capped at 30 / max |y - x|, the cap doubling towards an open
    side, bisection inside a known bracket, stop at |m| <= tol or a round-off bracket, at most
    ``iters`` steps; rows with allowed moves on one side only are pinned to x (eta = -+inf).

    The product reference on a uniform grid takes ``_project_rows_uniform`` instead.
    """
    m = grid.size
    banded = logq.shape[0] == 0
    lq = np.empty(m)
    for r in range(tt.size):
        t, x = tt[r], xx[r]
        if banded:
            for j in range(m):
                lq[j] = lognu[t, j] if band_lo[t, x] <= j <= band_hi[t, x] else -np.inf
        else:
            lq[:] = logq[t, x]
        p = kernels[t, x]
        p[:] = 0.0
        has_pos = has_neg = False
        zero = -1
        dmax = 0.0
        for j in range(m):
            if np.isfinite(lq[j]):
                dj = grid[j] - grid[x]
                has_pos |= dj > 0
                has_neg |= dj < 0
                if dj == 0 and zero < 0:
                    zero = j
                dmax = max(dmax, abs(dj))
        if not (has_pos and has_neg):
            lse[t, x] = lq[zero] + phi[t, zero] if zero >= 0 else -np.inf
            if zero >= 0:
                p[zero] = 1.0
                eta[t, x] = -np.inf if has_pos else (np.inf if has_neg else 0.0)
            continue
        e = eta0[t, x] if np.isfinite(eta0[t, x]) else 0.0
        cap = 30.0 / max(dmax, 1e-300)
        mult, lo, hi = 1.0, -np.inf, np.inf
        mean = sec = 0.0
        ph, gx = phi[t], grid[x]
        for it in range(iters + 1):
            smax = -np.inf
            for j in range(m):
                p[j] = lq[j] + ph[j] + e * (grid[j] - gx)
                smax = max(smax, p[j])
            if not np.isfinite(smax):
                smax = 0.0
            z = 0.0
            for j in range(m):
                p[j] = np.exp(p[j] - smax)
            for j in range(m):
                z += p[j]
            inv = 1.0 / z
            mean = sec = 0.0
            for j in range(m):
                p[j] *= inv
                dj = grid[j] - gx
                mean += p[j] * dj
                sec += p[j] * dj * dj
            lse[t, x] = smax + np.log(z)
            if it == iters:
                break
            stop, e, lo, hi, mult = _newton_step(e, mean, sec, lo, hi, cap, mult, tol)
            if stop:
                break
        eta[t, x] = e
        residual[r] = mean


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _project_rows_uniform(nu, nu_full, band_lo, band_hi, phi, grid, tt, xx, eta0, tol, iters,
                          kernels, eta, lse, residual, delta):  # pragma: no cover
    """``_project_rows`` for the product reference on a uniform grid of step ``delta``: the
    same rows, the same safeguarded Newton iteration and stopping rule, with each evaluation
    one streaming pass.

    Row x allows the columns y in [band_lo(x), band_hi(x)] with nu(y) > 0 (``nu``: the
    targets net of pinned mass), where its weights are
    exp(log nu_full(y) + phi(y) + e (y - x) - s) = u(y) A(y) with
    u = exp(log nu_full + phi - amax) (<= 1; amax the maximum over the period) and
    A(y) = exp(amax + e (y - x) - s). The shift s = amax + log max u + max_y e (y - x) (over
    the allowed y) keeps every weight <= 1 without a pass for the maximum, and A is exact
    every ``_BLOCK`` = 32 points and advanced in between by the powers exp(e delta)^k,
    k < 32 (two to six exponentials per evaluation instead of one per entry; relative error
    below 4e-15 by 31 roundings, typically 1e-15). One pass then gives the sums Z,
    sum w (y - x) and sum w (y - x)^2 (mean and variance of the step), and the kernel row is
    written once, at the end. An evaluation whose Z leaves [1e-200, 1e300] (the shift far
    above the largest weight, or a factor out of the float range: far-off starting points)
    is redone with the exact maximum and one exponential per entry.
    """
    k, m = phi.shape
    av = np.full((k, m), -np.inf)       # log nu_full + phi where nu_full > 0
    unit = np.zeros((k, m))
    amax = np.zeros(k)
    for t in range(k):
        top = -np.inf
        for j in range(m):
            if nu_full[t, j] > 0:
                av[t, j] = np.log(nu_full[t, j]) + phi[t, j]
                top = max(top, av[t, j])
        amax[t] = top if np.isfinite(top) else 0.0
        for j in range(m):
            if np.isfinite(av[t, j]):
                unit[t, j] = np.exp(av[t, j] - amax[t])
    nb = (m + _BLOCK - 1) // _BLOCK
    mp = nb * _BLOCK
    ur = np.zeros(mp)           # the row's u on its allowed columns, 0 elsewhere (padded)
    dd = np.zeros(mp)           # y - x
    fac = np.zeros(mp)          # A(y)
    wb = np.zeros(mp)           # the weights of the last evaluation
    la = np.empty(m)            # log nu + phi on the allowed columns, -inf elsewhere
    pw = np.empty(_BLOCK)
    for r in range(tt.size):
        t, x = tt[r], xx[r]
        gx = grid[x]
        p = kernels[t, x]
        lo_b, hi_b = band_lo[t, x], band_hi[t, x]
        jlo, jhi = m, -1
        umax = 0.0
        exact = False           # an allowed u below 1e-290: exp(log-weight) for every entry
        for j in range(m):
            dd[j] = grid[j] - gx
            if lo_b <= j <= hi_b and nu[t, j] > 0:
                ur[j] = unit[t, j]
                la[j] = av[t, j]
                exact |= not ur[j] > 1e-290
                umax = max(umax, ur[j])
                jlo = min(jlo, j)
                jhi = j
            else:
                ur[j] = 0.0
                la[j] = -np.inf
        if not (jlo < x < jhi):         # allowed moves on one side only: pinned to x
            p[:] = 0.0
            lse[t, x] = la[x]
            if np.isfinite(la[x]):
                p[x] = 1.0
                eta[t, x] = -np.inf if jhi > x else (np.inf if jlo < x else 0.0)
            continue
        lumax = np.log(umax) if umax > 0 else 0.0
        dmax = max(dd[jhi], -dd[jlo])
        e = eta0[t, x] if np.isfinite(eta0[t, x]) else 0.0
        cap = 30.0 / max(dmax, 1e-300)
        mult, lo, hi = 1.0, -np.inf, np.inf
        mean = z = 0.0
        for it in range(iters + 1):
            z = s1 = s2 = shift = 0.0
            if not exact:
                top = max(e * dd[jlo], e * dd[jhi])
                rho = np.exp(e * delta)
                pw[0] = 1.0
                for k in range(1, _BLOCK):
                    pw[k] = pw[k - 1] * rho
                for a in range(nb):
                    anc = np.exp(e * dd[a * _BLOCK] - top - lumax)
                    for k in range(_BLOCK):
                        fac[a * _BLOCK + k] = anc * pw[k]
                for j in range(mp):
                    w = ur[j] * fac[j]
                    wb[j] = w
                    z += w
                    s1 += w * dd[j]
                    s2 += w * dd[j] * dd[j]
                shift = amax[t] + lumax + top
            if exact or not (1e-200 <= z <= 1e300):     # the exact maximum, one exp per entry
                smax = -np.inf
                for j in range(m):
                    smax = max(smax, la[j] + e * dd[j])
                z = s1 = s2 = 0.0
                for j in range(m):
                    w = np.exp(la[j] + e * dd[j] - smax)
                    wb[j] = w
                    z += w
                    s1 += w * dd[j]
                    s2 += w * dd[j] * dd[j]
                shift = smax
            mean = s1 / z
            sec = s2 / z
            lse[t, x] = shift + np.log(z)
            if it == iters:
                break
            stop, e, lo, hi, mult = _newton_step(e, mean, sec, lo, hi, cap, mult, tol)
            if stop:
                break
        inv = 1.0 / z
        for j in range(m):
            p[j] = wb[j] * inv
        eta[t, x] = e
        residual[r] = mean


@dataclass
class SemiDual:
    """K independent one-period problems evaluated at column potentials v (``semi_dual``).

    With the product reference and c = 0, and potentials in units of eps, the semi-dual of
    period k is

        G_k(v) = sum_y nu_k(y) v(y) - sum_x mu_k(x) log Z_x(v),
        log Z_x(v) = min_eta LSE_y(logq_k(x, y) + v(y) + eta (y - x)),

    concave in v, maximal at the entropic optimum v*, and for every v
    G_k(v*) - G_k(v) = KL(pi*_k || pi_k(v)), where pi_k(v) is the plan of the martingale kernels
    of v with the row multipliers solved exactly (``martingale_projection``): the dual gap is
    the relative entropy of the projected plan, and summed over the periods of a chain it is
    the relative entropy of the path law (chain rule). Its gradient in v is nu - (column sums
    of pi_k(v)) (envelope theorem: eta is row-optimal).

    Attributes
    ----------
    logq : ndarray, shape (K, M, M)
        log reference kernel log nu(y) on the allowed entries (no touching point crossed, row
        with mass, column with target mass), -inf elsewhere; rows without an allowed entry are
        all -inf.
    mu : ndarray, shape (K, M)
        Transported row mass (pinned rows removed).
    nu : ndarray, shape (K, M)
        Column targets net of the pinned mass, tilted by a factor 1 + a + b (y - 1) (relative
        size <= ~M * column_floor) so that their mass and mean equal those of ``mu`` exactly;
        then G_k is exactly invariant under the gauge v -> v + a + b (y - 1).
    pinned : ndarray of bool, shape (K, M)
    eta : ndarray, shape (K, M)
        Row-optimal multipliers at v (0 on rows without mass).
    lse : ndarray, shape (K, M)
        log Z_x(v) (0 on rows without mass).
    value : ndarray, shape (K,)
        G_k(v).
    kernels : ndarray, shape (K, M, M), or None
        With ``semi_dual(..., kernels=True)``: the projected rows p(y | x) at (v, eta) on rows
        with transported mass, 0 elsewhere.
    """

    logq: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    pinned: np.ndarray
    eta: np.ndarray
    lse: np.ndarray
    value: np.ndarray
    kernels: np.ndarray | None = None


def semi_dual(grid: np.ndarray, mu: np.ndarray, nu: np.ndarray, v: np.ndarray,
              h: np.ndarray | None = None, *, tol: float = 1e-12, touch_tol: float = 1e-11,
              column_floor: float = 0.0, kernels: bool = False) -> SemiDual:
    """The semi-dual G_k(v) of K one-period problems (rows of ``mu``, ``nu`` (K, M), marginals
    in convex order on ``grid``) at column potentials ``v`` (K, M, units of eps), with the row
    multipliers solved exactly as in ``martingale_projection`` (started from ``h`` if given).
    See ``SemiDual``. ``column_floor``: columns with nu <= floor are dropped (target 0);
    ``kernels``: also return the projected rows.
    """
    grid = np.asarray(grid, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    nu = np.array(nu, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[1] != grid.size or nu.shape != mu.shape:
        raise ValueError(f"mu and nu must both have shape (K, {grid.size}), got {mu.shape} "
                         f"and {nu.shape}")
    if v.shape != mu.shape or not np.all(np.isfinite(v)):
        raise ValueError(f"v must be a finite array of shape {mu.shape}, got shape {v.shape}")
    if not (np.isfinite(column_floor) and column_floor >= 0):
        raise ValueError(f"column_floor must be a finite number >= 0, got {column_floor!r}")
    h0 = np.zeros_like(v) if h is None else np.where(np.isfinite(h), h, 0.0)
    if column_floor > 0:
        nu[nu <= column_floor] = 0.0
    k, m = mu.shape
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        b = _prepare(grid, mu.copy(), nu, None, None, touch_tol=touch_tol)
        eta = np.zeros((k, m))
        lse = np.zeros((k, m))
        rows = np.zeros((k, m, m)) if kernels else None
        tt, xx = np.nonzero(b.mu > 0)
        if tt.size:
            base = b.logq[tt, xx, :] + v[tt, :]
            e, p, lse_rows, _ = _row_solve(base, b.diff[xx], h0[tt, xx], tol=tol,
                                           kernels=True)
            eta[tt, xx] = e
            lse[tt, xx] = lse_rows
            if kernels:
                rows[tt, xx] = p
    # tilt the targets so that their mass and mean match the transported rows exactly
    y = grid - 1.0
    tnu = b.nu.copy()
    mom = np.stack([tnu.sum(1), tnu @ y, tnu @ (y * y)], axis=1)      # (K, 3)
    rhs = np.stack([b.mu.sum(1) - mom[:, 0], b.mu @ y - mom[:, 1]], axis=1)
    det = mom[:, 0] * mom[:, 2] - mom[:, 1] ** 2
    ok = det > 1e-300
    a = np.where(ok, (rhs[:, 0] * mom[:, 2] - rhs[:, 1] * mom[:, 1]) / np.where(ok, det, 1), 0)
    c = np.where(ok, (mom[:, 0] * rhs[:, 1] - mom[:, 1] * rhs[:, 0]) / np.where(ok, det, 1), 0)
    tnu *= 1.0 + a[:, None] + c[:, None] * y[None, :]
    value = np.where(tnu > 0, tnu * v, 0.0).sum(1) - (b.mu * lse).sum(1)
    return SemiDual(logq=b.logq, mu=b.mu, nu=tnu, pinned=b.pinned, eta=eta, lse=lse,
                    value=value, kernels=rows)
