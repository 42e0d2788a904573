"""From solved potentials to the result: kernels, gauge-fixed potentials, measured residuals.

``_finish_chunk`` writes the kernels and the gauge-fixed potentials (module doc of
``entropic``) of a solved chunk; ``_repair_rows`` restores the mean of noise-level tail rows;
``measure`` and ``_objectives`` compute the residuals and the objective values that the result
reports, from the plans themselves.
"""

from __future__ import annotations

import numpy as np

from deepquant.mmot._gibbs import _kernels_into
from deepquant.mmot._support import _Batch

__all__ = ["measure"]


def _finish_chunk(b: _Batch, eps: float, phi: np.ndarray, eta: np.ndarray, kernels: np.ndarray,
                  u: np.ndarray, v: np.ndarray, h: np.ndarray, lse: np.ndarray | None = None
                  ) -> None:
    """Kernels and gauge-fixed potentials (cost units) for a solved chunk, written in place.

    With ``lse`` given, ``kernels`` already hold the Gibbs kernels at (phi, eta) and ``lse``
    their row log-sum-exp (as left by ``_solve_batch``); otherwise both are computed here.
    """
    nb, m = phi.shape
    if lse is None:
        lse = _kernels_into(kernels, b.logk(eps), b.diff, phi, eta)
    grid = b.grid
    active_rows = b.mu > 0
    col_active = b.nu > 0
    eye = np.eye(m)
    for t in range(nb):
        rows = ~active_rows[t]
        kernels[t][rows] = eye[rows]
    phi = np.where(col_active, phi, 0.0)
    # gauge: zero mean and slope of v under the active column targets
    tot = b.nu.sum(axis=1)
    safe = np.where(tot > 0, tot, 1.0)
    ybar = (b.nu @ grid) / safe
    yc = grid[None, :] - ybar[:, None]
    var = np.einsum("by,by->b", b.nu, yc * yc)
    slope = np.where(var > 0, np.einsum("by,by->b", b.nu, yc * phi) / np.where(var > 0, var, 1.0),
                     0.0)
    mean = np.einsum("by,by->b", b.nu, phi) / safe
    a = mean - slope * ybar
    phi_g = np.where(col_active, phi - a[:, None] - slope[:, None] * grid[None, :], 0.0)
    eta_g = np.where(active_rows, eta + slope[:, None], 0.0)
    u_g = np.where(active_rows, -lse + a[:, None] + slope[:, None] * grid[None, :], 0.0)
    v[...] = eps * phi_g
    h[...] = eps * eta_g
    u[...] = eps * u_g
    # pinned rows: u so that the Gibbs formula gives the diagonal entry (h = 0 there)
    for t in range(nb):
        idx = np.flatnonzero(b.pinned[t])
        if idx.size == 0:
            continue
        if b.logq_raw is None:
            with np.errstate(divide="ignore"):
                lq = np.log(b.nu_full[t, idx])
        else:
            lq = b.logq_raw[t, idx, idx]
        c = 0.0 if b.cost is None else b.cost[t, idx, idx] / eps
        val = c - phi_g[t, idx] - lq
        u[t, idx] = np.where(np.isfinite(val), eps * val, 0.0)


REPAIR_MAX_CHANGE = 1e-3
"""Largest mixture weight ``_repair_rows`` may use on a row (larger drifts are left alone)."""


def _repair_rows(grid: np.ndarray, mu: np.ndarray, kernels: np.ndarray, drift: np.ndarray,
                 tol: float) -> int:
    """Restore the mean of rows whose drift exceeds ``tol`` by the smallest mixture with one
    support point of the row itself, in place; returns the number of rows changed.

    On rows with almost no mass (measured: 1e-15, in the far tails of N = 30-50 chains) the
    Newton solve can leave a drift of 1e-7..1e-5 that more iterations do not remove: the row's
    multiplier runs off to |h| ~ 1e13 and its Gibbs row keeps only two columns with the wrong
    proportions in float64. For such a row p with mean m != x, p' = (1 - lam) p + lam delta_z,
    z the support point of p farthest on the other side of x, lam = (m - x) / (m - z), has mean
    x exactly, stays within the row's allowed columns (z already carries mass), and moves
    mu(x) * lam of column mass (reported in the measured marginal error). Rows that would need
    lam > ``REPAIR_MAX_CHANGE`` or move more than 1e-3 * tol of column mass are not touched:
    their drift is a convergence failure, reported as such.
    """
    bad = np.argwhere((mu > 0) & (np.abs(drift) > tol) & np.isfinite(drift))
    count = 0
    for t, x in bad:
        row = kernels[t, x]
        m = grid[x] + drift[t, x]
        side = np.flatnonzero((row > 0) & ((grid - grid[x]) * (m - grid[x]) < 0))
        if side.size == 0:
            continue
        z = side[np.argmax(np.abs(grid[side] - grid[x]))]
        lam = (m - grid[x]) / (m - grid[z])
        if not (0.0 < lam <= REPAIR_MAX_CHANGE and mu[t, x] * lam <= 1e-3 * tol):
            continue
        row *= 1.0 - lam
        row[z] += lam
        count += 1
    return count


def _moments(grid: np.ndarray, weights: np.ndarray, kernels: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row sums, column sums and drifts E[Y - x | x] of the plans mu_t * K_t, each (N, M)."""
    mu = weights[:-1]
    rows = mu * kernels.sum(axis=2)
    cols = np.matmul(mu[:, None, :], kernels)[:, 0, :]
    drift = np.matmul(kernels, grid) - grid[None, :]
    return rows, cols, drift


def measure(grid: np.ndarray, weights: np.ndarray, kernels: np.ndarray,
            moments: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Measured residuals per period: L1 marginal errors and drifts of the plans mu_t * K_t.

    Returns ``(errors, drifts)``, each of shape (N,): errors = sum|row sums - mu_t| + sum|column
    sums - mu_{t+1}|, drifts = max over x with mu_t(x) > 0 of |sum_y K_t(x, y) y - x|.
    """
    mu = weights[:-1]
    nu = weights[1:]
    rows, cols, drift = _moments(grid, weights, kernels) if moments is None else moments
    errs = np.abs(rows - mu).sum(axis=1) + np.abs(cols - nu).sum(axis=1)
    drift = np.where(mu > 0, np.abs(drift), 0.0).max(axis=1)
    bad = ~(np.isfinite(errs) & np.isfinite(drift))
    errs = np.where(bad, np.inf, errs)
    drift = np.where(bad, np.inf, drift)
    return errs, drift


def _objectives(grid, w, kernels, u, v, h, cost, moments=None) -> tuple[float, float, float]:
    """(transport cost, entropic objective, dual value), each summed over the periods.

    The entropic objective <c, pi> + eps KL(pi | R) uses the Gibbs form of the plans,
    eps log(pi / R) = u + v + h (y - x) - c on their support (pinned rows included, by the
    choice of their u), so eps KL = sum_x u rows + sum_y v cols + sum_x h mu E[Y - x | x]
    - <c, pi> with the MEASURED row sums, column sums and drifts: O(N M) work instead of N M^2
    logarithms. The dual value is sum_t <u_t, mu_t> + <v_t, mu_{t+1}>; the two agree at
    convergence and differ by the residuals otherwise.
    """
    mu = w[:-1]
    nu = w[1:]
    rows, cols, drift = _moments(grid, w, kernels) if moments is None else moments
    drift = np.where(np.isfinite(drift), drift, 0.0)
    tc = 0.0 if cost is None else float(np.einsum("txy,txy->", cost, mu[:, :, None] * kernels))
    ent = float(np.einsum("tx,tx->", u, rows) + np.einsum("ty,ty->", v, cols)
                + np.einsum("tx,tx->", h, mu * drift))
    dual = float(np.einsum("tx,tx->", u, mu) + np.einsum("ty,ty->", v, nu))
    return tc, ent, dual
