"""Martingale-Sinkhorn sweeps (seed 001 Algorithm 1, our signs) on a prepared batch.

One sweep: u closed form (row normalisation, inside every kernel evaluation), h by a few
safeguarded 1-D Newton steps per row, v closed form (column scaling phi += log(nu / col)).
``_sinkhorn_sweep`` is the cold start and the rescue step of the Newton solver (``_newton``);
``_sinkhorn_batch`` is the plain baseline behind ``solve_entropic(method="sinkhorn")``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepquant.mmot._gibbs import _evaluate, _kernels_into
from deepquant.mmot._support import _Batch


def _sinkhorn_sweep(lk: np.ndarray, grid: np.ndarray, diff: np.ndarray, diff2: np.ndarray,
                    mu: np.ndarray, nu: np.ndarray, phi: np.ndarray, eta: np.ndarray,
                    buf: np.ndarray, *, inner: int = 3, inner_tol: float = 0.0) -> int:
    """One martingale-Sinkhorn sweep in place (seed 001 Algorithm 1, our signs).

    u is eliminated in closed form inside every evaluation (row scaling); h by ``inner``
    safeguarded 1-D Newton steps per row (-m/Var, capped to an exponent change of 30 * 4^k
    across the grid until the root is bracketed, bisection once bracketed; stops early when
    every |m| <= ``inner_tol``); then v in
    closed form, phi += log(nu / column sums). Returns the number of kernel evaluations.
    """
    active = mu > 0
    span = float(grid[-1] - grid[0])
    lo = np.full(eta.shape, -np.inf)
    hi = np.full(eta.shape, np.inf)
    cap = np.full(eta.shape, 30.0 / span)
    evals = 0
    for _ in range(inner):
        _kernels_into(buf, lk, diff, phi, eta)
        evals += 1
        m = np.matmul(buf, grid) - grid
        m[~active] = 0.0
        if inner_tol > 0 and np.all(np.abs(m) <= inner_tol):
            break
        second = np.einsum("bxy,xy->bx", buf, diff2)
        var = np.maximum(second - m * m, 1e-300)
        lo = np.where(m < 0, np.maximum(lo, eta), lo)
        hi = np.where(m > 0, np.minimum(hi, eta), hi)
        new = eta + np.clip(-m / var, -cap, cap)
        both = np.isfinite(lo) & np.isfinite(hi)
        cap = np.where(both, cap, 4.0 * cap)
        outside = (new <= lo) | (new >= hi)
        mid = np.where(both, 0.5 * (np.where(both, lo, 0.0) + np.where(both, hi, 0.0)), 0.0)
        new = np.where(outside & both, mid, new)
        eta[...] = np.where(active, new, 0.0)
    _kernels_into(buf, lk, diff, phi, eta)
    evals += 1
    col = np.matmul(mu[:, None, :], buf)[:, 0, :]
    ok = (nu > 0) & (col > 0)
    phi += np.where(ok, np.log(np.where(ok, nu, 1.0) / np.where(ok, col, 1.0)), 0.0)
    return evals


def _sinkhorn_batch(b: _Batch, eps: float, phi: np.ndarray, eta: np.ndarray, *, tol: float,
                    max_iter: int, stage: int, history: list[dict[str, Any]],
                    inner: int = 50) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Plain martingale-Sinkhorn (seed 001 Algorithm 1) on all periods of ``b``, in place.

    Each sweep: u closed form (row scaling), h per row by safeguarded 1-D Newton to
    |m_x| <= tol / 10 (at most ``inner`` steps), v closed form (column scaling). Stops on the
    measured residuals after the sweep (L1 column error and drift, rows being exact), or after
    ``max_iter`` sweeps. Converged periods leave the working set. Returns (phi, eta, sweeps,
    status) with status 0 converged, 1 sweep limit.
    """
    nb, mm = b.mu.shape
    lk = b.logk(eps)
    status = np.ones(nb, dtype=int)
    work = np.arange(nb)
    buf = np.empty((nb, mm, mm))
    mu, nu, ph, et = b.mu, b.nu, phi.copy(), eta.copy()
    st = _evaluate(lk, b.grid, b.diff, mu, nu, ph, et, buf)
    it = 0
    while True:
        done = st.finite & (st.err <= tol) & (st.drift <= tol)
        status[work[done]] = 0
        if np.all(done) or it >= max_iter:
            break
        if np.any(done):
            keep = ~done
            phi[work], eta[work] = ph, et
            work = work[keep]
            lk, mu, nu, ph, et = lk[keep], mu[keep], nu[keep], ph[keep], et[keep]
            buf = buf[: work.size]
        it += 1
        _sinkhorn_sweep(lk, b.grid, b.diff, b.diff2, mu, nu, ph, et, buf, inner=inner,
                        inner_tol=0.1 * tol)
        st = _evaluate(lk, b.grid, b.diff, mu, nu, ph, et, buf)
        history.append({"stage": stage, "eps": eps, "kind": "sinkhorn", "iteration": it,
                        "marginal_error": float(st.err.max()), "drift": float(st.drift.max()),
                        "step": 1.0})
    phi[work], eta[work] = ph, et
    return phi, eta, it, status
