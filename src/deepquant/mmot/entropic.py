"""Batched entropic martingale optimal transport for pairwise or zero costs (DESIGN §2.1–2.2).

For a Markov reference and a cost that is a sum of terms c_t(x_t, x_{t+1}) (or zero), the entropic
multi-period MMOT splits into N independent one-period problems (gluing lemma), one per period
t = 0..N-1 with row law mu = marginals[t] and column law nu = marginals[t+1]:

    minimise   <c_t, pi> + eps KL(pi | R_t),        R_t(x, y) = mu(x) q_t(y | x),
    over       pi >= 0 with row sums mu, column sums nu and sum_y pi(x, y)(y - x) = 0.

Lagrangian and signs (our own derivation; the seed's signs disagree with each other). With
multipliers u(x) (rows), v(y) (columns) and h(x) (martingale), stationarity in pi gives the Gibbs
form

    pi(x, y) = R(x, y) exp((u(x) + v(y) + h(x)(y - x) - c(x, y)) / eps)

and the concave dual  D(u, v, h) = <u, mu> + <v, nu> - eps sum_{x,y} pi(x, y) + eps.
Its gradient is the constraint residual (mu - row sums, nu - column sums, -sum_y pi (y - x)).

Solver. We eliminate u exactly (closed form per row, so row sums hold to rounding at every iterate)
and work with the scaled potentials phi = v / eps, eta = h / eps. The resulting semi-dual

    F(phi, eta) = <phi, nu> - sum_x mu(x) log sum_y q(y|x) exp(phi(y) + eta(x)(y - x) - c/eps)

is concave with Hessian -sum_x mu(x) Cov_{p_x}[(e_y, (y - x))], p_x = pi(x, .) / mu(x). The eta
block is diagonal (one entry per row: the per-row (u, h) block of the full dual, with u already
eliminated), so a Newton step costs one Schur complement in phi,

    S = diag(col) - sum_x mu(x) p_x p_x^T - sum_x mu(x) / Var_x  (p_x o d_x)(p_x o d_x)^T,

with d_x(y) = y - E_{p_x}[Y] (centred moments throughout, DESIGN §7), an M x M positive
semi-definite matrix whose null space is spanned by constants and linear functions of y (the
2-dimensional gauge: u absorbs constants, h absorbs slopes). We fix the gauge by adding a rank-2
term (mean and slope under nu), scale by sqrt(nu), factor by Cholesky, and take a backtracking
(Armijo) line search on F, all batched over periods (arrays (B, M, M)). The start is a few
martingale-Sinkhorn sweeps (seed 001 Algorithm 1: u closed form, h by a safeguarded 1-D Newton per
row, v closed form) or given potentials (``warm_start``, ``newton_polish``); for a non-zero cost
the regularisation follows a decreasing eps schedule with warm starts (eps-scaling).

Irreducible components and edge rows (DESIGN §7). Let D(k) = C_nu(k) - C_mu(k) >= 0 be the
difference of call prices. If D(k) = 0 at a grid point k, no martingale plan moves mass across k,
and mass sitting at k stays there (conditional Jensen with equality). We therefore pin every row at
such a point to a point mass (this includes rows at the ends of the convex hull of supp(nu), where
h would diverge), forbid the entries that cross a touching point, and remove both from the Newton
system; the pinned mass is subtracted from the column targets. Rows and columns with zero weight
are dropped (no log 0, no division by zero).

Stopping uses measured residuals: the L1 error of both marginals of every plan and the drift
max_x |E[Y - X | X = x]| over rows with mass, never iterate changes.

The result's potentials are gauge-fixed: on the columns that carry Gibbs mass, v has zero mean and
zero slope under the column target (nu minus the mass of pinned rows); v = 0 on other columns;
u = h = 0 on rows without mass; pinned rows have h = 0 and u chosen so that the Gibbs formula
gives their diagonal entry (their other entries are zero, which no finite h reproduces).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from deepquant.market.marginals import Marginals

__all__ = [
    "ConvergenceWarning",
    "EntropicResult",
    "solve_entropic",
    "newton_polish",
    "pairwise_cost",
    "reference_kernels",
    "touching_points",
]


class ConvergenceWarning(UserWarning):
    """The entropic solver stopped before its measured residuals reached the tolerance."""


_CONTROLLER: ThreadpoolController | None = None


def _blas_limit(threads: int | None):
    """Context manager that sets the BLAS thread count (DESIGN §7: 1 thread is often fastest)."""
    global _CONTROLLER
    if threads is None:
        import contextlib

        return contextlib.nullcontext()
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=int(threads), user_api="blas")


# ---------------------------------------------------------------------------- result
@dataclass
class EntropicResult:
    """Output of ``solve_entropic`` (one-period plans of a Markov martingale chain).

    Attributes
    ----------
    u, v, h : ndarray, shape (N, M)
        Dual potentials of period t (rows: x = grid at date t, columns: y = grid at date t+1),
        gauge-fixed as described in the module docstring. Units of the cost (v = eps * phi).
    kernels : ndarray, shape (N, M, M)
        Row-stochastic transition kernels P(X_{t+1} = y | X_t = x). Rows without mass and pinned
        rows are point masses at x.
    grid : ndarray, shape (M,)
    weights : ndarray, shape (N+1, M)
        The marginals solved for.
    eps : float
        Regularisation of the last stage.
    nit : int
        Newton iterations of the last stage, summed over periods solved together (the maximum
        over periods, since periods are iterated as one batch).
    sweeps : int
        Martingale-Sinkhorn sweeps used (warm start, or all iterations of the baseline).
    marginal_error : float
        max over periods of the measured L1 errors sum|row sums - mu| + sum|column sums - nu|.
    drift : float
        max over periods and rows x with mu(x) > 0 of |E[X_{t+1} - X_t | X_t = x]|.
    marginal_errors, drifts : ndarray, shape (N,)
        The same per period.
    success : bool
    status : int
        0 converged, 1 iteration limit, 2 line search failed / numerical breakdown.
    message : str
    seconds : float
        Wall time of the solve.
    history : list of dict
        One entry per iteration: ``stage``, ``eps``, ``kind`` ("sinkhorn" or "newton"),
        ``marginal_error`` and ``drift`` (max over the periods still iterating), ``step``.
    transport_cost : float
        sum_t <c_t, pi_t> (0 without a cost): an inner estimate of the LP value.
    dual_value : float
        sum_t <u_t, mu_t> + <v_t, nu_t>; at convergence equal to ``entropic_objective``.
    entropic_objective : float
        sum_t <c_t, pi_t> + eps KL(pi_t | R_t), measured on the plans.
    pinned : ndarray of bool, shape (N, M)
        Rows pinned to a point mass (touching points of the call-price curves, grid-edge rows).
    """

    u: np.ndarray
    v: np.ndarray
    h: np.ndarray
    kernels: np.ndarray
    grid: np.ndarray
    weights: np.ndarray
    eps: float
    nit: int
    sweeps: int
    marginal_error: float
    drift: float
    marginal_errors: np.ndarray
    drifts: np.ndarray
    success: bool
    status: int
    message: str
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    transport_cost: float = 0.0
    dual_value: float = float("nan")
    entropic_objective: float = float("nan")
    pinned: np.ndarray | None = field(default=None, repr=False)

    @property
    def plans(self) -> np.ndarray:
        """Transport plans pi_t(x, y) = mu_t(x) P(y | x), shape (N, M, M)."""
        return self.weights[:-1, :, None] * self.kernels

    @property
    def n_periods(self) -> int:
        return int(self.kernels.shape[0])

    def summary(self) -> dict[str, Any]:
        """Scalars for printing / JSON."""
        return {
            "success": bool(self.success), "status": int(self.status), "message": self.message,
            "nit": int(self.nit), "sweeps": int(self.sweeps), "seconds": float(self.seconds),
            "marginal_error": float(self.marginal_error), "drift": float(self.drift),
            "eps": float(self.eps), "transport_cost": float(self.transport_cost),
            "dual_value": float(self.dual_value),
            "entropic_objective": float(self.entropic_objective),
            "n_periods": self.n_periods, "grid_size": int(self.grid.size),
            "pinned_rows": int(self.pinned.sum()) if self.pinned is not None else 0,
        }


# ---------------------------------------------------------------------------- inputs
def pairwise_cost(marginals: Marginals, cost: Any) -> np.ndarray | None:
    """Cost arrays c_t(x, y), shape (N, M, M), from ``None``, an array or a pairwise ``Payoff``.

    ``None`` gives ``None`` (zero cost). A payoff must return terms from ``pairwise(N+1)``; terms
    for the same period are added.
    """
    n, m = marginals.n_periods, marginals.size
    if cost is None:
        return None
    if hasattr(cost, "pairwise") and callable(cost.pairwise):
        terms = cost.pairwise(marginals.n_dates)
        if terms is None:
            raise ValueError(
                f"cost payoff {getattr(cost, 'name', cost)!r} is not pairwise-decomposable; "
                "path-dependent payoffs need the augmented-chain solver"
            )
        out = np.zeros((n, m, m))
        x = marginals.grid[:, None]
        y = marginals.grid[None, :]
        for t, fn in terms:
            if not 0 <= int(t) < n:
                raise ValueError(f"pairwise term for period {t} outside 0..{n - 1}")
            out[int(t)] += np.broadcast_to(np.asarray(fn(x, y), dtype=np.float64), (m, m))
        return out
    arr = np.asarray(cost, dtype=np.float64)
    if arr.shape != (n, m, m):
        raise ValueError(f"cost must have shape (N, M, M) = {(n, m, m)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("cost has non-finite entries")
    return arr


def reference_kernels(marginals: Marginals, reference: Any = "product") -> np.ndarray | None:
    """Log reference kernels log q_t(y | x), shape (N, M, M), or ``None`` for the product.

    ``"product"``: q_t(y|x) = nu_t(y) (``None`` is returned; the solver uses log nu directly).
    ``"lognormal"``: Y = x exp(s Z - s^2/2) discretised on the grid (density times the trapezoid
    cell width, renormalised per row), with s_t^2 = log(1 + (Var X_{t+1} - Var X_t) / E[X_t^2])
    so that the reference's variance increment matches the marginals'. Needs a positive grid.
    An array of shape (N, M, M): kernels q_t(y|x) >= 0 (rows need not be normalised).
    """
    n, m = marginals.n_periods, marginals.size
    grid = marginals.grid
    if isinstance(reference, str):
        if reference == "product":
            return None
        if reference != "lognormal":
            raise ValueError(
                f"reference must be 'product', 'lognormal' or an (N, M, M) array, got {reference!r}"
            )
        if grid[0] <= 0:
            raise ValueError(
                f"reference='lognormal' needs a positive moneyness grid, got grid[0]={grid[0]:.6g}"
            )
        w = marginals.weights
        var = marginals.variances()
        second = w @ grid**2
        cell = np.empty(m)
        cell[1:-1] = 0.5 * (grid[2:] - grid[:-2])
        cell[0] = 0.5 * (grid[1] - grid[0])
        cell[-1] = 0.5 * (grid[-1] - grid[-2])
        min_s = 0.5 * float(np.min(np.diff(grid))) / float(grid.max())
        logx = np.log(grid)
        out = np.empty((n, m, m))
        for t in range(n):
            dvar = max(float(var[t + 1] - var[t]), 0.0)
            s = max(math.sqrt(math.log1p(dvar / second[t])), min_s)
            z = (logx[None, :] - logx[:, None] + 0.5 * s * s) / s
            lq = -0.5 * z * z - logx[None, :] + np.log(cell)[None, :]
            lq -= lq.max(axis=1, keepdims=True)
            lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))
            out[t] = lq
        return out
    arr = np.asarray(reference, dtype=np.float64)
    if arr.shape != (n, m, m):
        raise ValueError(f"reference array must have shape (N, M, M) = {(n, m, m)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("reference kernels must be finite and non-negative")
    with np.errstate(divide="ignore"):
        return np.log(arr)


def touching_points(mu: np.ndarray, nu: np.ndarray, grid: np.ndarray, *, tol: float) -> np.ndarray:
    """Grid points k where C_nu(k) - C_mu(k) <= tol (no martingale plan moves mass across k).

    ``mu``, ``nu`` have shape (B, M); returns a boolean array (B, M). The call curves of laws on the
    grid are piecewise linear with kinks at grid points, so testing grid points is exact.
    """
    # C(k_j) = sum_i w_i (x_i - k_j)^+ via cumulative sums from the right.
    def calls(w: np.ndarray) -> np.ndarray:
        tail_mass = np.cumsum(w[:, ::-1], axis=1)[:, ::-1]          # sum_{i>=j} w_i
        tail_first = np.cumsum((w * grid)[:, ::-1], axis=1)[:, ::-1]  # sum_{i>=j} w_i x_i
        return tail_first - grid * tail_mass

    return calls(nu) - calls(mu) <= tol


# ---------------------------------------------------------------------------- prepared batch
@dataclass
class _Batch:
    """Prepared one-period problems for a set of periods (internal).

    ``logq``: (B, M, M) log reference kernel with -inf on forbidden entries and on rows without
    Gibbs mass; ``cost``: (B, M, M) or None; ``mu``/``nu``: active row masses / column targets
    (pinned mass removed); ``mu_full``/``nu_full``: the marginals.
    """

    grid: np.ndarray
    diff: np.ndarray
    diff2: np.ndarray
    mu_full: np.ndarray
    nu_full: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    pinned: np.ndarray
    logq: np.ndarray
    logq_raw: np.ndarray | None
    cost: np.ndarray | None

    @property
    def size(self) -> int:
        return int(self.mu.shape[0])

    def logk(self, eps: float) -> np.ndarray:
        if self.cost is None:
            return self.logq
        return self.logq - self.cost / eps


def _prepare(grid: np.ndarray, mu_full: np.ndarray, nu_full: np.ndarray,
             logq_raw: np.ndarray | None, cost: np.ndarray | None, *, touch_tol: float) -> _Batch:
    b, m = mu_full.shape
    diff = grid[None, :] - grid[:, None]
    scale = max(1.0, float(np.max(np.abs(grid))))
    touch = touching_points(mu_full, nu_full, grid, tol=touch_tol * scale)
    has_mass = mu_full > 0
    pinned = touch & has_mass
    mu = np.where(pinned, 0.0, mu_full)
    nu = nu_full - np.where(pinned, mu_full, 0.0)
    # rounding: pinned mass equal to the column mass up to round-off leaves an empty column
    nu = np.where(nu <= 1e-14 * np.maximum(nu_full, 1e-300), 0.0, nu)
    nu = np.maximum(nu, 0.0)
    # allowed entries: y in [L(x), R(x)], the touching points that enclose x
    idx = np.arange(m)
    logq = np.empty((b, m, m))
    for t in range(b):
        tp = np.flatnonzero(touch[t])
        if tp.size == 0:
            lo = np.zeros(m, dtype=int)
            hi = np.full(m, m - 1)
        else:
            pos = np.searchsorted(tp, idx, side="left")      # first touch index >= i
            left = np.where(pos > 0, tp[np.maximum(pos - 1, 0)], 0)
            pos_r = np.searchsorted(tp, idx, side="right")   # first touch index > i
            right = np.where(pos_r < tp.size, tp[np.minimum(pos_r, tp.size - 1)], m - 1)
            lo, hi = left, right
        allowed = (idx[None, :] >= lo[:, None]) & (idx[None, :] <= hi[:, None])
        allowed &= (mu[t] > 0)[:, None] & (nu[t] > 0)[None, :]
        if logq_raw is None:
            with np.errstate(divide="ignore"):
                base = np.broadcast_to(np.log(nu_full[t])[None, :], (m, m))
        else:
            base = logq_raw[t]
            allowed &= np.isfinite(base)
        # rows that reach no column, and columns no row reaches (possible only through the
        # round-off tolerance of the touching test or a reference kernel with zeros) are dropped;
        # their (tiny) mass shows up in the measured marginal error
        dead_rows = ~allowed.any(axis=1) & (mu[t] > 0)
        if np.any(dead_rows):
            mu[t, dead_rows] = 0.0
            allowed[dead_rows] = False
        dead_cols = ~allowed.any(axis=0) & (nu[t] > 0)
        nu[t, dead_cols] = 0.0
        logq[t] = np.where(allowed, base, -np.inf)
    return _Batch(grid=grid, diff=diff, diff2=diff * diff, mu_full=mu_full, nu_full=nu_full,
                  mu=mu, nu=nu, pinned=pinned, logq=logq, logq_raw=logq_raw, cost=cost)


# ---------------------------------------------------------------------------- evaluation
@dataclass
class _State:
    """Quantities at (phi, eta) for a batch: kernels, LSE, moments, residuals, objective."""

    p: np.ndarray        # (B, M, M) row-normalised kernels (0 rows for inactive rows)
    lse: np.ndarray      # (B, M)
    col: np.ndarray      # (B, M) column sums of the active plan
    m: np.ndarray        # (B, M) conditional drift E[Y - x]
    obj: np.ndarray      # (B,)  F(phi, eta)
    obj_scale: np.ndarray  # (B,) magnitude of the terms of F (for round-off tolerances)
    err: np.ndarray      # (B,)  L1 column error of the active plan
    drift: np.ndarray    # (B,)  max |m| over active rows
    finite: np.ndarray   # (B,)  bool


def _evaluate(logk: np.ndarray, b: _Batch, sel: np.ndarray, phi: np.ndarray,
              eta: np.ndarray) -> _State:
    """Evaluate the semi-dual at (phi, eta) for the periods ``sel`` of the batch."""
    mu = b.mu[sel]
    nu = b.nu[sel]
    s = eta[:, :, None] * b.diff[None]
    s += logk[sel]
    s += phi[:, None, :]
    smax = s.max(axis=2)
    smax[~np.isfinite(smax)] = 0.0
    s -= smax[:, :, None]
    np.exp(s, out=s)
    z = s.sum(axis=2)
    z[z <= 0] = 1.0
    s /= z[:, :, None]
    p = s
    lse = smax + np.log(z)
    col = np.matmul(mu[:, None, :], p)[:, 0, :]
    m = np.matmul(p, b.grid) - b.grid[None, :]
    active = mu > 0
    m = np.where(active, m, 0.0)
    obj = np.einsum("by,by->b", nu, phi) - np.einsum("bx,bx->b", mu, lse)
    obj_scale = np.einsum("by,by->b", nu, np.abs(phi)) + np.einsum("bx,bx->b", mu, np.abs(lse))
    err = np.abs(col - nu).sum(axis=1)
    drift = np.abs(m).max(axis=1) if m.shape[1] else np.zeros(m.shape[0])
    finite = np.isfinite(obj) & np.isfinite(err) & np.isfinite(drift)
    return _State(p=p, lse=lse, col=col, m=m, obj=obj, obj_scale=obj_scale, err=err,
                  drift=drift, finite=finite)


def _newton_direction(b: _Batch, logk: np.ndarray, sel: np.ndarray, st: _State, phi: np.ndarray,
                      eta: np.ndarray, *, reg: float = 1e-12, frozen_sd: float = 5.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Newton direction (dphi, deta) for the semi-dual by a Schur complement in phi."""
    mu = b.mu[sel]
    nu = b.nu[sel]
    p = st.p
    m_ = st.m
    k, mm = p.shape[0], p.shape[1]
    active = mu > 0
    second = np.einsum("bxy,xy->bx", p, b.diff2)
    var = second - m_ * m_
    var_floor = 1e-300
    var = np.where(active, np.maximum(var, var_floor), 1.0)
    # rows whose drift exceeds ``frozen_sd`` conditional standard deviations (nearly degenerate
    # kernels far from the solution, where the quadratic model is useless) are frozen in the
    # joint system; they jump to their row-optimal eta for the current phi (a block step)
    frozen = active & (np.abs(m_) > frozen_sd * np.sqrt(var))
    joint = active & ~frozen
    cx = np.where(joint, np.sqrt(mu / var), 0.0)          # (B, M)
    w = np.empty((k, 2 * mm, mm))
    np.multiply(np.sqrt(mu)[:, :, None], p, out=w[:, :mm])
    # centred deviations y - E[Y|x] = (y - x) - m_x
    dev = b.diff[None] - m_[:, :, None]
    dev *= p
    np.multiply(cx[:, :, None], dev, out=w[:, mm:])
    wa = w[:, mm:]
    s_mat = -np.matmul(w.transpose(0, 2, 1), w)
    diag = np.einsum("bii->bi", s_mat)
    diag += st.col
    g_v = nu - st.col
    r = g_v + np.matmul((cx * m_)[:, None, :], wa)[:, 0, :]
    # scale by sqrt(column targets), fix the 2-dim gauge (mean and slope under nu)
    col_active = nu > 0
    d = np.where(col_active, np.sqrt(np.where(col_active, nu, 1.0)), 1.0)
    s_mat /= d[:, :, None]
    s_mat /= d[:, None, :]
    rs = r / d
    ybar = np.einsum("by,y->b", nu, b.grid) / np.maximum(nu.sum(axis=1), 1e-300)
    yc = b.grid[None, :] - ybar[:, None]
    sd = np.sqrt(np.maximum(np.einsum("by,by->b", nu, yc * yc), 1e-300))
    g1 = np.where(col_active, nu / d, 0.0)
    g2 = np.where(col_active, nu * yc / sd[:, None] / d, 0.0)
    s_mat += g1[:, :, None] * g1[:, None, :]
    s_mat += g2[:, :, None] * g2[:, None, :]
    diag = np.einsum("bii->bi", s_mat)
    diag += np.where(col_active, reg, 1.0)
    rs = np.where(col_active, rs, 0.0)
    try:
        chol = np.linalg.cholesky(s_mat)
        x = _cho_solve(chol, rs)
    except np.linalg.LinAlgError:
        x = np.empty_like(rs)
        for i in range(k):
            x[i] = np.linalg.lstsq(s_mat[i], rs[i], rcond=1e-14)[0]
    dphi = np.where(col_active, x / d, 0.0)
    pdv = np.matmul(dev, dphi[:, :, None])[:, :, 0]     # sum_y p (y - E[Y|x]) dphi(y)
    deta = np.where(joint, -(m_ + pdv) / var, 0.0)
    if np.any(frozen):
        bi, xi = np.nonzero(frozen)
        eta_new = _row_solve(logk, b, sel[bi], xi, phi[bi], eta[bi, xi])
        deta[bi, xi] = eta_new - eta[bi, xi]
    return dphi, deta


def _row_solve(logk: np.ndarray, b: _Batch, periods: np.ndarray, rows: np.ndarray,
               phi: np.ndarray, eta: np.ndarray, *, iters: int = 60, tol: float = 1e-13
               ) -> np.ndarray:
    """Row-optimal eta for given phi on selected rows: m_x(eta) = 0 by safeguarded 1-D Newton.

    ``periods``, ``rows``: (K,) indices; ``phi``: (K, M); ``eta``: (K,) starting values. m_x is
    increasing in eta; Newton steps are kept inside the current bracket (bisection otherwise)
    and, before a bracket exists, capped to an exponent change of 2^k * 10 across the grid.
    """
    base = logk[periods, rows, :] + phi
    d = b.diff[rows, :]
    span = float(b.grid[-1] - b.grid[0])
    e = eta.astype(np.float64, copy=True)
    lo = np.full(e.shape, -np.inf)
    hi = np.full(e.shape, np.inf)
    cap = np.full(e.shape, 10.0 / span)
    for _ in range(iters):
        s = base + e[:, None] * d
        smax = s.max(axis=1, keepdims=True)
        smax[~np.isfinite(smax)] = 0.0
        p = np.exp(s - smax)
        p /= p.sum(axis=1, keepdims=True)
        m = np.einsum("ky,ky->k", p, d)
        var = np.maximum(np.einsum("ky,ky->k", p, d * d) - m * m, 1e-300)
        if np.all(np.abs(m) <= tol):
            break
        lo = np.where(m < 0, np.maximum(lo, e), lo)
        hi = np.where(m > 0, np.minimum(hi, e), hi)
        step = np.clip(-m / var, -cap, cap)
        new = e + step
        bracketed = np.isfinite(lo) & np.isfinite(hi)
        outside = (new <= lo) | (new >= hi)
        new = np.where(bracketed & outside, 0.5 * (lo + hi), new)
        cap = np.where(bracketed, cap, 2.0 * cap)
        e = np.where(np.abs(m) <= tol, e, new)
    return e


def _cho_solve(chol: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    y = solve_triangular(chol, rhs[..., None], lower=True)
    return solve_triangular(chol, y, lower=True, trans="T")[..., 0]


# ---------------------------------------------------------------------------- Sinkhorn sweeps
def _sinkhorn_sweep(logk: np.ndarray, b: _Batch, sel: np.ndarray, phi: np.ndarray,
                    eta: np.ndarray, *, inner: int = 3, inner_tol: float = 0.0) -> None:
    """One martingale-Sinkhorn sweep in place: h per row by safeguarded 1-D Newton, then v.

    u is eliminated (closed form) inside every evaluation. The 1-D Newton step for eta(x) is
    -m_x / Var_x, capped so the exponent changes by at most 30 across the row's support and
    bisected inside the bracket once the sign of m_x has changed.
    """
    mu = b.mu[sel]
    nu = b.nu[sel]
    active = mu > 0
    span = float(b.grid[-1] - b.grid[0])
    lo = np.full(eta.shape, -np.inf)
    hi = np.full(eta.shape, np.inf)
    for _ in range(inner):
        s = eta[:, :, None] * b.diff[None]
        s += logk[sel]
        s += phi[:, None, :]
        smax = s.max(axis=2)
        smax[~np.isfinite(smax)] = 0.0
        s -= smax[:, :, None]
        np.exp(s, out=s)
        z = s.sum(axis=2)
        z[z <= 0] = 1.0
        s /= z[:, :, None]
        m = np.matmul(s, b.grid) - b.grid[None, :]
        second = np.einsum("bxy,xy->bx", s, b.diff2)
        var = np.maximum(second - m * m, 1e-300)
        m = np.where(active, m, 0.0)
        if inner_tol > 0 and np.all(np.abs(m) <= inner_tol):
            break
        # bracket: m is increasing in eta
        lo = np.where(m < 0, np.maximum(lo, eta), lo)
        hi = np.where(m > 0, np.minimum(hi, eta), hi)
        step = -m / var
        step = np.clip(step, -30.0 / span, 30.0 / span)
        new = eta + step
        outside = (new <= lo) | (new >= hi)
        both = np.isfinite(lo) & np.isfinite(hi)
        new = np.where(outside & both, 0.5 * (lo + hi), new)
        eta[...] = np.where(active, new, 0.0)
    # v-step: closed form column scaling with u re-eliminated afterwards
    st = _evaluate(logk, b, sel, phi, eta)
    col_active = nu > 0
    ratio = np.where(col_active & (st.col > 0), nu / np.where(st.col > 0, st.col, 1.0), 1.0)
    phi += np.where(col_active, np.log(ratio), 0.0)


# ---------------------------------------------------------------------------- core solver
def _solve_batch(b: _Batch, eps: float, phi: np.ndarray, eta: np.ndarray, *, tol: float,
                 max_iter: int, sweeps: int, stage: int, history: list[dict[str, Any]],
                 armijo: float = 1e-4, max_backtrack: int = 30, min_step: float = 1e-3
                 ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Newton iterations on all periods of ``b``, in place; returns (phi, eta, nit, status).

    status per period: 0 converged, 1 iteration limit, 2 line search failure. A period whose
    line search only accepts a step below ``min_step`` gets a martingale-Sinkhorn sweep instead
    (block coordinate ascent never decreases the dual), which globalises the method.
    """
    nb = b.size
    logk = b.logk(eps)
    status = np.ones(nb, dtype=int)
    all_idx = np.arange(nb)
    for k in range(sweeps):
        _sinkhorn_sweep(logk, b, all_idx, phi, eta)
        st = _evaluate(logk, b, all_idx, phi, eta)
        history.append({"stage": stage, "eps": eps, "kind": "sinkhorn", "iteration": k,
                        "marginal_error": float(st.err.max()), "drift": float(st.drift.max()),
                        "step": 1.0})
    work = all_idx.copy()
    st = _evaluate(logk, b, work, phi[work], eta[work])
    nit = 0
    stalls = np.zeros(nb, dtype=int)
    while True:
        done = st.finite & (st.err <= tol) & (st.drift <= tol)
        status[work[done]] = 0
        dead = stalls[work] >= 3
        status[work[dead]] = 2
        keep = ~(done | dead)
        if not np.any(keep) or nit >= max_iter:
            break
        if not np.all(keep):
            work = work[keep]
            st = _subset(st, keep)
        nit += 1
        dphi, deta = _newton_direction(b, logk, work, st, phi[work], eta[work])
        g_v = b.nu[work] - st.col
        g_h = -b.mu[work] * st.m
        slope = np.einsum("by,by->b", g_v, dphi) + np.einsum("bx,bx->b", g_h, deta)
        alpha = np.ones(work.size)
        accepted = np.zeros(work.size, dtype=bool)
        pending = np.flatnonzero(slope > 0)
        phi0 = phi[work]
        eta0 = eta[work]
        trial_phi = phi0.copy()
        trial_eta = eta0.copy()
        stores: dict[int, tuple[_State, int]] = {}
        for _ in range(max_backtrack):
            if pending.size == 0:
                break
            trial_phi[pending] = phi0[pending] + alpha[pending, None] * dphi[pending]
            trial_eta[pending] = eta0[pending] + alpha[pending, None] * deta[pending]
            tst = _evaluate(logk, b, work[pending], trial_phi[pending], trial_eta[pending])
            roundoff = 1e-13 * (1.0 + st.obj_scale[pending] + tst.obj_scale)
            gain = tst.obj - st.obj[pending]
            ok = tst.finite & (
                (gain >= armijo * alpha[pending] * slope[pending] - roundoff)
                | ((np.abs(gain) <= roundoff) & (tst.err + tst.drift
                                                 <= st.err[pending] + st.drift[pending]))
            )
            for j in np.flatnonzero(ok):
                stores[int(pending[j])] = (tst, int(j))
            accepted[pending[ok]] = True
            pending = pending[~ok]
            alpha[pending] *= 0.5
            if np.all(alpha[pending] < min_step):
                break
        for i in np.flatnonzero(accepted):
            phi[work[i]] = trial_phi[i]
            eta[work[i]] = trial_eta[i]
        if stores:
            st = _gather_states(st, stores)
        rescue = ~accepted | (alpha < min_step)
        if np.any(rescue):
            sel = work[rescue]
            ph, et = phi[sel], eta[sel]
            _sinkhorn_sweep(logk, b, sel, ph, et)
            phi[sel], eta[sel] = ph, et
            stalls[sel[~accepted[rescue]]] += 1
            rst = _evaluate(logk, b, sel, ph, et)
            st = _gather_states(st, {int(i): (rst, j) for j, i in enumerate(np.flatnonzero(rescue))})
        history.append({"stage": stage, "eps": eps, "kind": "newton", "iteration": nit,
                        "marginal_error": float(st.err.max()), "drift": float(st.drift.max()),
                        "step": float(alpha.min())})
    return phi, eta, nit, status


def _subset(st: _State, keep: np.ndarray) -> _State:
    return _State(p=st.p[keep], lse=st.lse[keep], col=st.col[keep], m=st.m[keep],
                  obj=st.obj[keep], obj_scale=st.obj_scale[keep], err=st.err[keep],
                  drift=st.drift[keep], finite=st.finite[keep])


def _gather_states(old: _State, stores: dict[int, tuple[_State, int]]) -> _State:
    """Combine per-period trial states into one state (rows of ``old`` where nothing was kept)."""
    p = old.p
    out = _State(p=p, lse=old.lse.copy(), col=old.col.copy(), m=old.m.copy(), obj=old.obj.copy(),
                 obj_scale=old.obj_scale.copy(), err=old.err.copy(), drift=old.drift.copy(),
                 finite=old.finite.copy())
    for i, (tst, j) in stores.items():
        out.p[i] = tst.p[j]
        out.lse[i] = tst.lse[j]
        out.col[i] = tst.col[j]
        out.m[i] = tst.m[j]
        out.obj[i] = tst.obj[j]
        out.obj_scale[i] = tst.obj_scale[j]
        out.err[i] = tst.err[j]
        out.drift[i] = tst.drift[j]
        out.finite[i] = tst.finite[j]
    return out


# ---------------------------------------------------------------------------- public API
def _check_eps(eps: Any, name: str = "eps") -> float:
    try:
        val = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {eps!r}") from None
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"{name} must be a positive finite number, got {eps!r}")
    return val


def _warm_potentials(warm_start: Any, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(v, h) in cost units from an EntropicResult, a mapping or a (u, v, h) tuple."""
    if isinstance(warm_start, EntropicResult):
        v, h = warm_start.v, warm_start.h
    elif isinstance(warm_start, dict):
        v, h = warm_start["v"], warm_start["h"]
    elif isinstance(warm_start, Sequence) and len(warm_start) == 3:
        _, v, h = warm_start
    else:
        raise ValueError(
            "warm_start must be an EntropicResult, a dict with 'v' and 'h', or a (u, v, h) tuple"
        )
    v = np.array(v, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    if v.shape != (n, m) or h.shape != (n, m):
        raise ValueError(
            f"warm_start potentials must have shape (N, M) = {(n, m)}, got v {v.shape}, h {h.shape}"
        )
    v[~np.isfinite(v)] = 0.0
    h[~np.isfinite(h)] = 0.0
    return v, h


def _default_schedule(eps: float, cost: np.ndarray | None, maximize: bool) -> list[float]:
    if cost is None:
        return [eps]
    spread = float(np.ptp(cost)) if cost.size else 0.0
    start = max(eps, 0.05 * spread)
    sched = []
    e = start
    while e > eps * 1.0001:
        sched.append(e)
        e /= 4.0
    sched.append(eps)
    return sched


def solve_entropic(
    marginals: Marginals,
    eps: float,
    cost: Any = None,
    reference: Any = "product",
    *,
    tol: float = 1e-9,
    max_iter: int = 100,
    warm_start: Any = None,
    eps_schedule: Sequence[float] | None = None,
    sinkhorn_sweeps: int | None = None,
    stage_tol: float = 1e-6,
    maximize: bool = False,
    touch_tol: float = 1e-13,
    threads: int | None = 1,
    chunk_entries: int = 8_000_000,
    warn: bool = True,
) -> EntropicResult:
    """Solve the N one-period entropic martingale transport problems as one batch.

    Parameters
    ----------
    marginals : Marginals
        N+1 laws on a common grid of M points (convex order is validated by ``Marginals``).
    eps : float
        Entropic regularisation in cost units (moneyness^2-like for variance costs).
    cost : None, ndarray (N, M, M) or Payoff
        Pairwise cost c_t(x, y); ``None`` is zero; a payoff must implement ``pairwise``.
    reference : "product", "lognormal" or ndarray (N, M, M)
        Reference kernel q_t(y|x) (see ``reference_kernels``).
    tol : float
        Target of both measured residuals: L1 marginal error and drift.
    max_iter : int
        Newton iterations per eps stage.
    warm_start : EntropicResult, dict or (u, v, h), optional
        Potentials in cost units, shape (N, M) each; only v and h are used (u is eliminated).
    eps_schedule : sequence of float, optional
        Decreasing regularisations ending at ``eps`` (eps-scaling). Default: ``[eps]`` without a
        cost; with a cost, from 5% of the cost's range down to eps by factors of 4.
    sinkhorn_sweeps : int, optional
        Martingale-Sinkhorn sweeps before Newton (default 1 from a cold start, 0 with a warm start).
    stage_tol : float
        Residual target of the intermediate eps stages.
    maximize : bool
        Maximise <c, pi> (i.e. use the cost -c); ``transport_cost`` is reported for +c.
    touch_tol : float
        Relative tolerance on C_nu(k) - C_mu(k) below which k is a touching point (rows there are
        pinned to point masses and no mass crosses k).
    threads : int or None
        BLAS threads inside the solve (``None``: leave as is). 1 is the fastest on 2 cores.
    chunk_entries : int
        Periods are solved in chunks of at most this many N*M*M entries (memory bound).
    warn : bool
        Emit ``ConvergenceWarning`` on failure.

    Returns
    -------
    EntropicResult
    """
    t0 = time.perf_counter()
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    eps = _check_eps(eps)
    if marginals.n_dates < 2:
        raise ValueError("solve_entropic needs at least 2 dates (one period)")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if int(max_iter) < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter!r}")
    n, m = marginals.n_periods, marginals.size
    if not marginals.check_convex:
        rep = marginals.check_convex_order()
        scale = max(1.0, abs(marginals.mean))
        if rep.violation > marginals.convex_tol * scale:
            raise ValueError(
                f"marginals[{rep.date}] is not in convex order with marginals[{rep.date - 1}]: "
                f"call price at k={rep.point:.6g} drops by {rep.violation:.3e}; no martingale "
                "plan exists (see Marginals.repair_convex_order)"
            )
    cost_arr = pairwise_cost(marginals, cost)
    if cost_arr is not None and not np.any(cost_arr):
        cost_arr = None
    signed_cost = None if cost_arr is None else (-cost_arr if maximize else cost_arr)
    logq_raw = reference_kernels(marginals, reference)
    if eps_schedule is None:
        schedule = _default_schedule(eps, signed_cost, maximize)
    else:
        schedule = [_check_eps(e, "eps_schedule entries") for e in eps_schedule]
        if not schedule or abs(schedule[-1] - eps) > 1e-12 * eps:
            raise ValueError(f"eps_schedule must end at eps={eps!r}, got {list(eps_schedule)!r}")
        if any(b > a for a, b in zip(schedule, schedule[1:])):
            raise ValueError(f"eps_schedule must be non-increasing, got {list(eps_schedule)!r}")
    if warm_start is not None:
        v0, h0 = _warm_potentials(warm_start, n, m)
    else:
        v0 = h0 = None
    if sinkhorn_sweeps is None:
        sinkhorn_sweeps = 0 if warm_start is not None else 1
    if int(sinkhorn_sweeps) < 0:
        raise ValueError(f"sinkhorn_sweeps must be >= 0, got {sinkhorn_sweeps!r}")

    grid = marginals.grid
    w = marginals.weights
    per_chunk = max(1, int(chunk_entries // max(1, m * m)))
    history: list[dict[str, Any]] = []
    kernels = np.empty((n, m, m))
    u_out = np.zeros((n, m))
    v_out = np.zeros((n, m))
    h_out = np.zeros((n, m))
    status = np.zeros(n, dtype=int)
    pinned_all = np.zeros((n, m), dtype=bool)
    nit_total = 0
    with _blas_limit(threads), np.errstate(over="ignore", under="ignore", invalid="ignore",
                                           divide="ignore"):
        for start in range(0, n, per_chunk):
            sl = slice(start, min(n, start + per_chunk))
            b = _prepare(grid, w[:-1][sl].copy(), w[1:][sl].copy(),
                         None if logq_raw is None else logq_raw[sl],
                         None if signed_cost is None else signed_cost[sl], touch_tol=touch_tol)
            nb = b.size
            if v0 is not None:
                phi = v0[sl] / schedule[0]
                eta = h0[sl] / schedule[0]
            else:
                phi = np.zeros((nb, m))
                eta = np.zeros((nb, m))
            prev = schedule[0]
            chunk_nit = 0
            for k, e in enumerate(schedule):
                phi *= prev / e
                eta *= prev / e
                prev = e
                last = k == len(schedule) - 1
                phi, eta, it, st = _solve_batch(
                    b, e, phi, eta, tol=tol if last else max(tol, stage_tol),
                    max_iter=int(max_iter), sweeps=int(sinkhorn_sweeps) if k == 0 else 0,
                    stage=k, history=history,
                )
                chunk_nit += it
                if last:
                    status[sl] = st
            nit_total = max(nit_total, chunk_nit)
            _finish_chunk(b, eps, phi, eta, kernels[sl], u_out[sl], v_out[sl], h_out[sl])
            pinned_all[sl] = b.pinned
        # measured residuals on the full plans
        errs, drifts = measure(grid, w, kernels)
        tc, ent, dual = _objectives(grid, w, kernels, u_out, v_out, cost_arr, logq_raw, eps)
    ok = (errs <= tol) & (drifts <= tol)
    success = bool(np.all(ok)) and bool(np.isfinite(errs).all())
    if success:
        code, msg = 0, f"converged: marginal error {errs.max():.2e}, drift {drifts.max():.2e}"
    else:
        code = 2 if np.any(status == 2) else 1
        bad = np.flatnonzero(~ok)
        what = "line search failed" if code == 2 else f"iteration limit max_iter={max_iter} reached"
        msg = (f"{what}: {bad.size} period(s) above tol={tol:g} (first: period {bad[0] if bad.size else -1}); "
               f"marginal error {np.nanmax(errs):.2e}, drift {np.nanmax(drifts):.2e}")
        if warn:
            warnings.warn(f"solve_entropic: {msg}", ConvergenceWarning, stacklevel=2)
    return EntropicResult(
        u=u_out, v=v_out, h=h_out, kernels=kernels, grid=grid, weights=w, eps=eps,
        nit=nit_total, sweeps=int(sinkhorn_sweeps), marginal_error=float(np.max(errs)),
        drift=float(np.max(drifts)), marginal_errors=errs, drifts=drifts, success=success,
        status=code, message=msg, seconds=time.perf_counter() - t0, history=history,
        transport_cost=tc, dual_value=dual, entropic_objective=ent, pinned=pinned_all,
    )


def _finish_chunk(b: _Batch, eps: float, phi: np.ndarray, eta: np.ndarray, kernels: np.ndarray,
                  u: np.ndarray, v: np.ndarray, h: np.ndarray) -> None:
    """Kernels and gauge-fixed potentials (cost units) for a solved chunk, written in place."""
    nb, m = phi.shape
    logk = b.logk(eps)
    st = _evaluate(logk, b, np.arange(nb), phi, eta)
    grid = b.grid
    active_rows = b.mu > 0
    col_active = b.nu > 0
    kernels[...] = st.p
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
    u_g = np.where(active_rows, -st.lse + a[:, None] + slope[:, None] * grid[None, :], 0.0)
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


def measure(grid: np.ndarray, weights: np.ndarray, kernels: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Measured residuals per period: L1 marginal errors and drifts of the plans mu_t * K_t.

    Returns ``(errors, drifts)``, each of shape (N,): errors = sum|row sums - mu_t| + sum|column
    sums - mu_{t+1}|, drifts = max over x with mu_t(x) > 0 of |sum_y K_t(x, y) y - x|.
    """
    mu = weights[:-1]
    nu = weights[1:]
    rows = mu * kernels.sum(axis=2)
    cols = np.matmul(mu[:, None, :], kernels)[:, 0, :]
    errs = np.abs(rows - mu).sum(axis=1) + np.abs(cols - nu).sum(axis=1)
    mean_y = np.matmul(kernels, grid)
    drift = np.where(mu > 0, np.abs(mean_y - grid[None, :]), 0.0).max(axis=1)
    bad = ~np.all(np.isfinite(kernels), axis=(1, 2))
    errs = np.where(bad, np.inf, errs)
    drift = np.where(bad, np.inf, drift)
    return errs, drift


def _objectives(grid, w, kernels, u, v, cost, logq_raw, eps) -> tuple[float, float, float]:
    """(transport cost, entropic objective <c,pi> + eps KL(pi|R), dual value) summed over t."""
    mu = w[:-1]
    nu = w[1:]
    plans = mu[:, :, None] * kernels
    tc = 0.0 if cost is None else float(np.einsum("txy,txy->", cost, plans))
    pos = plans > 0
    if logq_raw is None:
        with np.errstate(divide="ignore"):
            log_r = np.log(mu)[:, :, None] + np.log(nu)[:, None, :]
    else:
        with np.errstate(divide="ignore"):
            log_r = np.log(mu)[:, :, None] + logq_raw
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_terms = np.where(pos, plans * (np.log(np.where(pos, plans, 1.0)) - log_r), 0.0)
    kl = float(kl_terms.sum())
    dual = float(np.einsum("tx,tx->", u, mu) + np.einsum("ty,ty->", v, nu))
    return tc, tc + eps * kl, dual


def newton_polish(marginals: Marginals, eps: float, u: np.ndarray | None, v: np.ndarray,
                  h: np.ndarray, cost: Any = None, reference: Any = "product", **options
                  ) -> EntropicResult:
    """Newton to tolerance from given potentials (the hybrid neural solver's second stage).

    ``u`` is ignored (it is eliminated in closed form) and may be ``None``; ``v`` and ``h`` have
    shape (N, M) in cost units, any gauge. No Sinkhorn sweeps and no eps-scaling by default.
    """
    options.setdefault("sinkhorn_sweeps", 0)
    options.setdefault("eps_schedule", [float(eps)])
    return solve_entropic(marginals, eps, cost, reference, warm_start=(u, v, h), **options)
