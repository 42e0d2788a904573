"""Gibbs kernels of the entropic semi-dual and the exact per-row martingale solve.

For scaled potentials phi = v / eps (columns) and eta = h / eps (rows) a row of the Gibbs plan is
p_x(y) = exp(lk(x, y) + phi(y) + eta(x)(y - x) - LSE_x), lk the log reference kernel minus
c / eps. ``_kernels_into`` evaluates these rows for a batch of periods (blocks of about 2 MiB),
``_evaluate`` adds the semi-dual F(phi, eta) and the measured residuals (``_State``), and
``_row_solve`` finds, row by row, the eta(x) that makes p_x a martingale row (E[Y - x] = 0) by
a safeguarded 1-D Newton: the step that Newton freezes, that light rows are polished with, and
the whole of the projection of the neural engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ---------------------------------------------------------------------------- evaluation
@dataclass
class _State:
    """Quantities at (phi, eta) for k periods: LSE, moments, residuals, objective.

    The kernels p (k, M, M) live in a separate buffer (see ``_evaluate``).
    """

    lse: np.ndarray      # (k, M)
    col: np.ndarray      # (k, M) column sums of the active plan
    m: np.ndarray        # (k, M) conditional drift E[Y - x] (0 on inactive rows)
    obj: np.ndarray      # (k,)  F(phi, eta)
    obj_scale: np.ndarray  # (k,) magnitude of the terms of F (for round-off tolerances)
    err: np.ndarray      # (k,)  L1 column error of the active plan
    drift: np.ndarray    # (k,)  max |m| over active rows
    finite: np.ndarray   # (k,)  bool

    def take(self, idx: np.ndarray) -> _State:
        return _State(*(getattr(self, f)[idx] for f in _STATE_FIELDS))

    def put(self, idx: np.ndarray, other: _State, other_idx: np.ndarray) -> None:
        for f in _STATE_FIELDS:
            getattr(self, f)[idx] = getattr(other, f)[other_idx]


_STATE_FIELDS = ("lse", "col", "m", "obj", "obj_scale", "err", "drift", "finite")


_BLOCK_ENTRIES = 1 << 18   # periods per pass over (k, M, M) arrays: about 2 MiB (one L2)


def _kernels_into(out: np.ndarray, lk: np.ndarray, diff: np.ndarray, phi: np.ndarray,
                  eta: np.ndarray, mu: np.ndarray | None = None, grid: np.ndarray | None = None
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-normalised Gibbs kernels into ``out`` (k, M, M); returns the row log-sum-exp (k, M).

    s(x, y) = lk(x, y) + phi(y) + eta(x)(y - x); p = exp(s - LSE_y s). Rows that are -inf
    everywhere (inactive) give zero rows and LSE 0. With ``mu`` and ``grid`` also returns the
    column sums mu @ p and the row means p @ grid, (lse, col, mean), computed block by block
    while the kernels are in cache (blocks of periods of about ``_BLOCK_ENTRIES`` entries).
    """
    k, mm = phi.shape
    step = max(1, _BLOCK_ENTRIES // max(1, mm * mm))
    moments = mu is not None and grid is not None
    if step >= k:
        lse = _kernels_block(out, lk, diff, phi, eta)
        if not moments:
            return lse
        return lse, np.matmul(mu[:, None, :], out)[:, 0, :], np.matmul(out, grid)
    lse = np.empty((k, mm))
    col = np.empty((k, mm)) if moments else None
    mean = np.empty((k, mm)) if moments else None
    for s0 in range(0, k, step):
        sl = slice(s0, min(k, s0 + step))
        o = out[sl]
        lse[sl] = _kernels_block(o, lk[sl], diff, phi[sl], eta[sl])
        if moments:
            col[sl] = np.matmul(mu[sl, None, :], o)[:, 0, :]
            mean[sl] = np.matmul(o, grid)
    if not moments:
        return lse
    return lse, col, mean


def _kernels_block(out: np.ndarray, lk: np.ndarray, diff: np.ndarray, phi: np.ndarray,
                   eta: np.ndarray) -> np.ndarray:
    np.multiply(eta[:, :, None], diff[None], out=out)
    out += lk
    out += phi[:, None, :]
    smax = out.max(axis=2)
    smax[~np.isfinite(smax)] = 0.0
    out -= smax[:, :, None]
    np.exp(out, out=out)
    z = out.sum(axis=2)
    z[~(z > 0)] = 1.0
    out *= (1.0 / z)[:, :, None]
    return smax + np.log(z)


def _evaluate(lk: np.ndarray, grid: np.ndarray, diff: np.ndarray, mu: np.ndarray,
              nu: np.ndarray, phi: np.ndarray, eta: np.ndarray, out: np.ndarray) -> _State:
    """Semi-dual, residuals and kernels (written into ``out``) at (phi, eta)."""
    lse, col, m = _kernels_into(out, lk, diff, phi, eta, mu, grid)
    m -= grid
    m[~(mu > 0)] = 0.0
    obj = np.einsum("by,by->b", nu, phi) - np.einsum("bx,bx->b", mu, lse)
    obj_scale = np.einsum("by,by->b", nu, np.abs(phi)) + np.einsum("bx,bx->b", mu, np.abs(lse))
    err = np.abs(col - nu).sum(axis=1)
    drift = np.abs(m).max(axis=1)
    finite = np.isfinite(obj) & np.isfinite(err) & np.isfinite(drift)
    return _State(lse, col, m, obj, obj_scale, err, drift, finite)


def _row_eval(base: np.ndarray, e: np.ndarray, d: np.ndarray, d2: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows p = exp(base + e d - LSE) (K, M), their LSE, mean E_p[d] and second moment E_p[d^2]."""
    s = base + e[:, None] * d
    smax = s.max(axis=1)
    smax[~np.isfinite(smax)] = 0.0
    s -= smax[:, None]
    p = np.exp(s, out=s)
    z = p.sum(axis=1)
    p /= z[:, None]
    return p, smax + np.log(z), np.einsum("ky,ky->k", p, d), np.einsum("ky,ky->k", p, d2)


def _row_solve(base: np.ndarray, d: np.ndarray, grid: np.ndarray, eta: np.ndarray, *,
               iters: int = 60, tol: float = 1e-13, kernels: bool = False
               ) -> np.ndarray | tuple[np.ndarray, ...]:
    """Row-optimal eta: m(eta) = E_p[y - x] = 0 by safeguarded 1-D Newton, row by row (K rows).

    ``base`` (K, M): log kernel without the eta term (lk + phi); ``d`` (K, M): y - x. m is
    increasing in eta; Newton steps stay inside the current bracket (bisection otherwise) and,
    before a bracket exists, are capped to an exponent change of 10 * 2^k across the grid.
    With ``kernels`` returns (eta, p, lse, m): the normalised rows, their LSE and their mean
    E_p[y - x] (the residual the stopping test |m| <= ``tol`` was applied to) at that eta.
    """
    span = float(grid[-1] - grid[0])
    e = np.array(eta, dtype=np.float64)
    lo = np.full(e.shape, -np.inf)
    hi = np.full(e.shape, np.inf)
    cap = np.full(e.shape, 10.0 / span)
    d2 = d * d
    p, lse, m, sec = _row_eval(base, e, d, d2)
    for it in range(iters):
        var = np.maximum(sec - m * m, 1e-300)
        done = np.abs(m) <= tol
        if np.all(done) or it == iters - 1:
            break
        lo = np.where(m < 0, np.maximum(lo, e), lo)
        hi = np.where(m > 0, np.minimum(hi, e), hi)
        new = e + np.clip(-m / var, -cap, cap)
        bracketed = np.isfinite(lo) & np.isfinite(hi)
        outside = (new <= lo) | (new >= hi)
        new = np.where(bracketed & outside, 0.5 * (lo + hi), new)
        cap = np.where(bracketed, cap, 2.0 * cap)
        e = np.where(done, e, new)
        act = np.flatnonzero(~done)                # only rows still moving are re-evaluated
        if act.size == e.size:
            p, lse, m, sec = _row_eval(base, e, d, d2)
        else:
            p[act], lse[act], m[act], sec[act] = _row_eval(base[act], e[act], d[act], d2[act])
    if kernels:
        return e, p, lse, m
    return e
