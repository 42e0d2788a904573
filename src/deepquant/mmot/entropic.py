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
term (mean and slope under nu), build S per period with BLAS ``syrk`` calls directly into a
stored buffer and factor it there by LAPACK ``potrf`` (lower; 1 BLAS thread by default: DESIGN
§7), all other work batched over periods (arrays (B, M, M); kernels are evaluated in blocks of
periods of about 2 MiB); converged periods leave the batch (moved to the front of the buffers in
place). Entries of the factor W of S below 1e-150 are flushed to zero before ``syrk``: narrow
kernels (many periods, fine grids) have subnormal tails that made BLAS 6x slower (``_FLUSH``).
The kernels and LSE of the final iterate are returned as computed by the solver (no second
evaluation). Globalisation: a backtracking (Armijo)
line search on F; a Levenberg–Marquardt damping (H + lam D, D = diag(nu) on phi and
diag(mu span^2) on eta) that grows after short steps and vanishes after full ones; rows whose
drift exceeds 5 conditional standard deviations are taken out of the joint system and solved
exactly per row (safeguarded 1-D Newton); rows lighter than 1e-2 tol are re-solved exactly after
each step (Newton's mass-weighted model hardly sees them, yet their drift must reach tol); a
period whose step stays below 1e-3 gets a martingale-Sinkhorn sweep. In the quadratic phase
(residual <= 1e-5 and the last step cut it tenfold) the last Cholesky factor is reused (a chord
step). The start is one martingale-Sinkhorn sweep (seed 001 Algorithm 1: u closed form, h by a
safeguarded 1-D Newton per row, v closed form) or given potentials (``warm_start``,
``newton_polish``); for a non-zero cost the regularisation follows a decreasing eps schedule with
warm starts (eps-scaling). With c = 0 the plan does not depend on eps (phi, eta absorb it).

Irreducible components and edge rows (DESIGN §7). Let D(k) = C_nu(k) - C_mu(k) >= 0 be the
difference of call prices. If D(k) = 0 at a grid point k (tested relative to the round-off of the
call or put sums at k, ``touching_points``), no martingale plan moves mass across k,
and mass sitting at k stays there (conditional Jensen with equality). We therefore pin every row at
such a point to a point mass (this includes rows at the ends of the convex hull of supp(nu), where
h would diverge), forbid the entries that cross a touching point, and remove both from the Newton
system; the pinned mass is subtracted from the column targets. This handles all edge rows at once
(no repeated pinning is needed: the zero set of D is computed once). Rows and columns with zero
weight are dropped (no log 0, no division by zero).

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

from deepquant.market.marginals import Marginals, split_onto_grid

__all__ = [
    "ConvergenceWarning",
    "EntropicResult",
    "solve_entropic",
    "newton_polish",
    "martingale_projection",
    "ProjectionResult",
    "SemiDual",
    "semi_dual",
    "pairwise_cost",
    "reference_kernels",
    "touching_points",
    "support_structure",
    "measure",
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
        Newton iterations over all eps stages (periods iterate as one batch, so this is the
        count of the slowest period; the maximum over chunks of periods). For
        ``method="sinkhorn"``, the number of sweeps.
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
        ``marginal_error`` (column L1 error of the Gibbs plans, rows being exact by
        construction) and ``drift``, both max over the periods still iterating, and ``step``
        (the smallest line-search step of the iteration).
    transport_cost : float
        sum_t <c_t, pi_t> (0 without a cost): an inner estimate of the LP value.
    dual_value : float
        sum_t <u_t, mu_t> + <v_t, nu_t>; at convergence equal to ``entropic_objective``.
    entropic_objective : float
        sum_t <c_t, pi_t> + eps KL(pi_t | R_t) (for the signed cost, -c when ``maximize``), from
        the Gibbs form with the measured row sums, column sums and drifts (see ``_objectives``).
    pinned : ndarray of bool, shape (N, M)
        Rows pinned to a point mass (touching points of the call-price curves, grid-edge rows,
        rows whose reachable columns lie on one side only).
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


def touching_points(mu: np.ndarray, nu: np.ndarray, grid: np.ndarray, *, tol: float = 0.0,
                    rel: float = 0.0) -> np.ndarray:
    """Grid points k where D(k) = C_nu(k) - C_mu(k) <= tol + rel * s(k): no mass crosses k.

    ``mu``, ``nu`` have shape (B, M); returns a boolean array (B, M). The call curves of laws on
    the grid are piecewise linear with kinks at grid points, so testing grid points is exact.
    D is computed from the side with less mass: calls (sums over x_i >= k) above, puts (sums over
    x_i <= k, equal to D for equal means) below, so tail values keep their precision; s(k) is
    the round-off scale of those sums, sum (mu_i + nu_i)(|x_i| + |k|) over the same side.
    ``tol`` is an absolute tolerance, ``rel`` a multiple of s(k) (a relative test stays correct
    in tails whose masses are far below any absolute tolerance).
    """
    mu = np.atleast_2d(mu)
    nu = np.atleast_2d(nu)
    ax = np.abs(grid)

    def right(w: np.ndarray) -> np.ndarray:        # sum_{i >= j} w_i
        return np.cumsum(w[:, ::-1], axis=1)[:, ::-1]

    calls = lambda w: right(w * grid) - grid * right(w)           # noqa: E731
    puts = lambda w: grid * np.cumsum(w, axis=1) - np.cumsum(w * grid, axis=1)  # noqa: E731
    both = mu + nu
    s_call = right(both * ax) + ax * right(both)
    s_put = np.cumsum(both * ax, axis=1) + ax * np.cumsum(both, axis=1)
    d = np.where(s_put < s_call, puts(nu) - puts(mu), calls(nu) - calls(mu))
    return d <= tol + rel * np.minimum(s_put, s_call)


def support_structure(marginals: Marginals, *, touch_tol: float = 1e-11
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The solver's structural decisions, without solving: ``(pinned, allowed)``.

    ``pinned`` (N, M) bool: rows the solver fixes to a point mass (touching points of the call
    curves, grid-edge rows, rows that reach columns on one side only). ``allowed`` (N, M, M)
    bool: the entries (x, y) a Gibbs kernel may charge (product reference: rows with mass, not
    pinned; columns with mass left after pinning; no crossing of a touching point). Kernels of
    other rows are point masses at x. For models that predict potentials (neural engine) and must
    build the same kernels as ``solve_entropic``.
    """
    w = marginals.weights
    b = _prepare(marginals.grid, w[:-1].copy(), w[1:].copy(), None, None, touch_tol=touch_tol)
    return b.pinned.copy(), np.isfinite(b.logq)


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
    touch = touching_points(mu_full, nu_full, grid, rel=touch_tol)
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
        # rows whose reachable columns all lie on one side of x (or nowhere) admit no martingale
        # kernel except the point mass at x: possible only when the marginals violate convex
        # order at round-off level in a far tail (noise-level masses), or with a reference
        # kernel that has zeros. Such rows are pinned too; if the column at x lacks the mass,
        # the (tiny) deficit shows up in the measured marginal error. Columns no row reaches are
        # dropped likewise.
        # (Repeated: pinning a row can empty the column that kept another row feasible.)
        if logq_raw is None:
            # product reference: allowed = [lo, hi] x (nu > 0) on rows with mass, so the
            # one-sided test needs only prefix counts of the live columns (O(M) per pass)
            for _ in range(m):
                cnt = np.concatenate([[0], np.cumsum(nu[t] > 0)])
                has_left = cnt[idx] - cnt[lo] > 0             # a live column in [lo, x)
                has_right = cnt[hi + 1] - cnt[idx + 1] > 0    # a live column in (x, hi]
                stuck = (mu[t] > 0) & ~(has_left & has_right)
                if not np.any(stuck):
                    break
                pinned[t, stuck] = True
                mu[t, stuck] = 0.0
                nu[t, stuck] = np.maximum(nu[t, stuck] - mu_full[t, stuck], 0.0)
            allowed = (idx[None, :] >= lo[:, None]) & (idx[None, :] <= hi[:, None])
            allowed &= (mu[t] > 0)[:, None] & (nu[t] > 0)[None, :]
            with np.errstate(divide="ignore"):
                base = np.log(nu_full[t])[None, :]
        else:
            allowed = (idx[None, :] >= lo[:, None]) & (idx[None, :] <= hi[:, None])
            allowed &= (mu[t] > 0)[:, None] & (nu[t] > 0)[None, :]
            base = logq_raw[t]
            allowed &= np.isfinite(base)
            for _ in range(m):
                cs = np.cumsum(allowed, axis=1)
                has_left = cs[idx, idx] - allowed[idx, idx] > 0    # an allowed column y < x
                has_right = cs[:, -1] - cs[idx, idx] > 0           # an allowed column y > x
                stuck = (mu[t] > 0) & ~(has_left & has_right)
                if not np.any(stuck):
                    break
                pinned[t, stuck] = True
                mu[t, stuck] = 0.0
                allowed[stuck] = False
                nu[t, stuck] = np.maximum(nu[t, stuck] - mu_full[t, stuck], 0.0)
                allowed &= (nu[t] > 0)[None, :]
        dead_cols = ~allowed.any(axis=0) & (nu[t] > 0)
        nu[t, dead_cols] = 0.0
        logq[t] = np.where(allowed, base, -np.inf)
    return _Batch(grid=grid, diff=diff, diff2=diff * diff, mu_full=mu_full, nu_full=nu_full,
                  mu=mu, nu=nu, pinned=pinned, logq=logq, logq_raw=logq_raw, cost=cost)


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


# Entries of the factor W of the Schur complement below this are set to zero. Narrow kernels
# (many periods, fine grids) have tails far below it; syrk on such operands (subnormal inputs,
# or products that underflow) ran 6x slower here. Dropping them perturbs S by at most
# M * _FLUSH in absolute terms (round-off for every column with mass above ~1e-130; on columns
# below, the diagonal only grows: a slightly damped, still positive definite Newton model).
# The gradient, the residuals and the kernels themselves are never flushed.
_FLUSH = 1e-150


def _newton_direction(lk: np.ndarray, grid: np.ndarray, diff: np.ndarray, diff2: np.ndarray,
                      mu: np.ndarray, nu: np.ndarray, p: np.ndarray, st: _State,
                      phi: np.ndarray, eta: np.ndarray, lam: np.ndarray, bbuf: np.ndarray,
                      *, reg: float = 1e-12, frozen_sd: float = 5.0,
                      factors: np.ndarray | None = None, reuse: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Damped Newton direction (dphi, deta) of the semi-dual by a Schur complement in phi.

    The system is (H + lam D) d = g with H the negative Hessian of F, D = diag(nu) on phi and
    diag(mu span^2) on eta (Levenberg–Marquardt; lam = 0 is Newton). Eliminating the diagonal
    eta block (the per-row (u, h) block, u being already eliminated) leaves

        S = diag(col + (lam + reg) nu) - W^T W + G^T G,
        W = [sqrt(mu) p ; sqrt(mu / V) p (y - E[Y|x])]      (2M x M per period),

    with V = Var_x + lam span^2 (centred moments) and G (2 x M) = [nu / |nu|_1 ; nu (y - ybar) / sd]
    a rank-2 term that fixes the gauge (constants and slopes in y, absorbed by u and h). S is
    symmetric positive definite; per period it is built by BLAS ``syrk`` calls directly into
    ``factors[i]``, factored in place by ``potrf`` and solved by ``potrs``.
    Rows whose drift exceeds ``frozen_sd`` conditional standard deviations (nearly degenerate
    kernels far from the solution) are left out of the joint system and jump to their
    row-optimal eta for the current phi instead (``_row_solve``).

    ``factors`` (k, M, M), optional, is the work space of S and receives its Cholesky factors
    (C order; ``factors[i].T`` is the lower factor in Fortran order: LAPACK's lower
    Cholesky is faster here than the upper one); periods with
    ``reuse[i]`` skip the O(M^3) build and factorisation and solve with the stored factor (a
    chord step: exact gradient, Hessian from an earlier iterate, used only in the quadratic
    phase; the caller guarantees that a valid factor is stored). ``reuse[i]`` is cleared where
    the factorisation failed.
    """
    from scipy.linalg import blas, lapack

    k, mm = mu.shape
    active = mu > 0
    second = np.einsum("bxy,xy->bx", p, diff2)
    m_ = st.m
    var = np.where(active, np.maximum(second - m_ * m_, 1e-300), 1.0)
    frozen = active & (np.abs(m_) > frozen_sd * np.sqrt(var))
    joint = active & ~frozen
    span2 = float(grid[-1] - grid[0]) ** 2
    var_d = var + (lam * span2)[:, None]
    col_active = nu > 0
    cx = np.where(joint, np.sqrt(mu / var_d), 0.0)
    sqmu = np.sqrt(mu)
    bot = bbuf[:k]
    np.subtract(diff[None], m_[:, :, None], out=bot)
    bot *= p
    bot *= cx[:, :, None]                       # sqrt(mu/V) p (y - E[Y|x])
    # flush entries below _FLUSH to zero (see _FLUSH): BLAS on subnormal operands and
    # products is many times slower, and such entries are far below round-off of S
    np.putmask(bot, np.abs(bot) < _FLUSH, 0.0)
    # right-hand side g_v - H_vh H_hh^-1 g_h
    rs = (nu - st.col) + np.matmul((cx * m_)[:, None, :], bot)[:, 0, :]
    rs = np.where(col_active, rs, 0.0)
    diag = np.where(col_active, st.col + (lam[:, None] + reg) * nu, 1.0)
    tot = np.maximum(nu.sum(axis=1), 1e-300)
    ybar = (nu @ grid) / tot
    yc = grid[None, :] - ybar[:, None]
    sd = np.sqrt(np.maximum(np.einsum("by,by->b", nu, yc * yc) / tot, 1e-300))
    gauge = np.empty((k, 2, mm))
    gauge[:, 0] = nu / np.sqrt(tot)[:, None]
    gauge[:, 1] = nu * yc / (sd * np.sqrt(tot))[:, None]
    x = np.zeros((k, mm))
    todo = np.ones(k, dtype=bool)
    if factors is not None and reuse is not None:
        for i in np.flatnonzero(reuse):
            x[i], info = lapack.dpotrs(factors[i].T, rs[i], lower=1)
            todo[i] = info != 0
    scratch = None if factors is not None else np.empty((mm, mm))
    top = np.empty((mm, mm))
    for i in np.flatnonzero(todo):
        c = factors[i] if factors is not None else scratch
        np.multiply(p[i], sqmu[i][:, None], out=top)
        np.putmask(top, top < _FLUSH, 0.0)
        # C-order symmetric buffer: its transpose is the Fortran array LAPACK works on in place
        cf = blas.dsyrk(-1.0, top.T, beta=0.0, c=c.T, trans=0, lower=1, overwrite_c=1)
        cf = blas.dsyrk(-1.0, bot[i].T, beta=1.0, c=cf, trans=0, lower=1, overwrite_c=1)
        cf = blas.dsyrk(1.0, gauge[i].T, beta=1.0, c=cf, trans=0, lower=1, overwrite_c=1)
        cf[np.diag_indices(mm)] += diag[i]
        cf, info = lapack.dpotrf(cf, lower=1, overwrite_a=1, clean=0)
        if info == 0:
            x[i], info = lapack.dpotrs(cf, rs[i], lower=1)
            if not np.shares_memory(cf, c):
                c[...] = cf.T
        if info != 0:                            # not positive definite (round-off): lstsq
            full = (np.diag(diag[i]) + gauge[i].T @ gauge[i] - (p[i].T * mu[i]) @ p[i]
                    - bot[i].T @ bot[i])
            x[i] = np.linalg.lstsq(full, rs[i], rcond=1e-14)[0]
        else:
            todo[i] = False                      # a valid factor is stored
    dphi = np.where(col_active, x, 0.0)
    # back-substitution for eta on joint rows: deta = -(m + sum_y p dev dphi) / V
    pdv = np.matmul(bot, dphi[:, :, None])[:, :, 0]        # = cx * sum_y p dev dphi
    deta = np.where(joint, -(m_ + pdv / np.where(joint, cx, 1.0)) / var_d, 0.0)
    if np.any(frozen):
        bi, xi_ = np.nonzero(frozen)
        eta_new = _row_solve(lk[bi, xi_, :] + phi[bi], diff[xi_, :], grid, eta[bi, xi_])
        deta[bi, xi_] = eta_new - eta[bi, xi_]
    factored_ok = ~todo
    if reuse is not None:
        reuse[...] = factored_ok
    return dphi, deta


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
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-optimal eta: m(eta) = E_p[y - x] = 0 by safeguarded 1-D Newton, row by row (K rows).

    ``base`` (K, M): log kernel without the eta term (lk + phi); ``d`` (K, M): y - x. m is
    increasing in eta; Newton steps stay inside the current bracket (bisection otherwise) and,
    before a bracket exists, are capped to an exponent change of 10 * 2^k across the grid.
    With ``kernels`` returns (eta, p, lse): the normalised rows and their LSE at that eta.
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
        return e, p, lse
    return e


# ---------------------------------------------------------------------------- Sinkhorn sweeps
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


# ---------------------------------------------------------------------------- core solver
def _compact_front(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Move arr[idx] (idx increasing) to arr[:idx.size] in place; returns that view."""
    for j, i in enumerate(idx):
        if i != j:
            arr[j] = arr[i]
    return arr[:idx.size]


def _solve_batch(b: _Batch, eps: float, phi: np.ndarray, eta: np.ndarray, *, tol: float,
                 max_iter: int, sweeps: int, stage: int, history: list[dict[str, Any]],
                 armijo: float = 1e-4, max_backtrack: int = 30, min_step: float = 1e-3,
                 polish_below: float = 0.5, chord: bool = True, chord_below: float = 1e-5,
                 light_mass: float = 1e-2, kernels_out: np.ndarray | None = None,
                 lse_out: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Damped Newton on all periods of ``b``, in place; returns (phi, eta, nit, status).

    status per period: 0 converged, 1 iteration limit, 2 line search failure. Converged
    periods leave the working set (arrays are compacted). A period whose line search only
    accepts a step below ``min_step`` also gets a martingale-Sinkhorn sweep (block coordinate
    ascent never decreases the dual), and its Levenberg–Marquardt damping grows; damping
    shrinks after full steps, so the end game is pure Newton (quadratic convergence).
    """
    nb, mm = b.mu.shape
    grid, diff, diff2 = b.grid, b.diff, b.diff2
    status = np.ones(nb, dtype=int)
    work = np.arange(nb)
    lk = b.logk(eps)
    if lk is b.logq:
        lk = lk.copy()
    mu, nu = b.mu.copy(), b.nu.copy()
    ph, et = phi.copy(), eta.copy()
    pbuf = np.empty((nb, mm, mm))
    tbuf = np.empty((nb, mm, mm))
    bbuf = np.empty((nb, mm, mm))
    st = None
    for k in range(sweeps):
        _sinkhorn_sweep(lk, grid, diff, diff2, mu, nu, ph, et, pbuf)
        st = _evaluate(lk, grid, diff, mu, nu, ph, et, pbuf)
        history.append({"stage": stage, "eps": eps, "kind": "sinkhorn", "iteration": k,
                        "marginal_error": float(st.err.max()), "drift": float(st.drift.max()),
                        "step": 1.0})
    if st is None:
        st = _evaluate(lk, grid, diff, mu, nu, ph, et, pbuf)
    nit = 0
    stalls = np.zeros(nb, dtype=int)
    lam = np.zeros(nb)
    factors = np.empty((nb, mm, mm))       # work space of S and its Cholesky factors
    have = np.zeros(nb, dtype=bool)        # a factor of an undamped Hessian is stored
    quad = np.zeros(nb, dtype=bool)        # last step: full, undamped, residual / >= 10

    def compact(keep: np.ndarray) -> None:
        nonlocal work, lk, mu, nu, ph, et, st, pbuf, stalls, lam, factors, have, quad
        phi[work] = ph
        eta[work] = et
        if kernels_out is not None:
            gone = ~keep
            kernels_out[work[gone]] = pbuf[:work.size][gone]
            lse_out[work[gone]] = st.lse[gone]
        idx = np.flatnonzero(keep)
        work, mu, nu = work[keep], mu[keep], nu[keep]
        ph, et, stalls, lam = ph[keep], et[keep], stalls[keep], lam[keep]
        have, quad = have[keep], quad[keep]
        # (k, M, M) work arrays (owned here): kept periods move to the front, no new copies
        lk = _compact_front(lk, idx)
        factors = _compact_front(factors, idx)
        pbuf = _compact_front(pbuf[:keep.size], idx)
        st = st.take(keep)

    while True:
        done = st.finite & (st.err <= tol) & (st.drift <= tol)
        status[work[done]] = 0
        dead = stalls >= 3
        status[work[dead]] = 2
        keep = ~(done | dead)
        if not np.any(keep) or nit >= max_iter:
            break
        if not np.all(keep):
            compact(keep)
        k = work.size
        nit += 1
        res_before = st.err + st.drift
        valid = have & quad & (lam == 0.0) & (res_before <= chord_below)   # chord steps
        if not chord:
            valid[:] = False
        dphi, deta = _newton_direction(lk, grid, diff, diff2, mu, nu, pbuf, st, ph, et, lam,
                                       bbuf, factors=factors, reuse=valid)
        # valid now: factors[i] holds a factor (reused, or of this iterate's S)
        have = valid & (lam == 0.0)
        slope = (np.einsum("by,by->b", nu - st.col, dphi)
                 - np.einsum("bx,bx->b", mu * st.m, deta))
        alpha = np.ones(k)
        accepted = np.zeros(k, dtype=bool)
        pending = np.flatnonzero(slope > 0)
        trial_ph = ph.copy()
        trial_et = et.copy()
        first = True
        for _ in range(max_backtrack):
            if pending.size == 0:
                break
            trial_ph[pending] = ph[pending] + alpha[pending, None] * dphi[pending]
            trial_et[pending] = et[pending] + alpha[pending, None] * deta[pending]
            if first and pending.size == k:
                tst = _evaluate(lk, grid, diff, mu, nu, trial_ph, trial_et, tbuf[:k])
                tp = tbuf[:k]
            else:
                tp = tbuf[:pending.size]
                tst = _evaluate(lk[pending], grid, diff, mu[pending], nu[pending],
                                trial_ph[pending], trial_et[pending], tp)
            first = False
            idx = pending if tst.obj.size == pending.size else np.arange(k)
            sub = np.arange(pending.size) if tst.obj.size == pending.size else pending
            roundoff = 1e-13 * (1.0 + st.obj_scale[idx] + tst.obj_scale[sub])
            gain = tst.obj[sub] - st.obj[idx]
            ok = tst.finite[sub] & (
                (gain >= armijo * alpha[idx] * slope[idx] - roundoff)
                | ((np.abs(gain) <= roundoff)
                   & (tst.err[sub] + tst.drift[sub] <= st.err[idx] + st.drift[idx]))
            )
            acc = idx[ok]
            if acc.size:
                st.put(acc, tst, sub[ok])
                if acc.size == k and tp.shape[0] == k:
                    pbuf, tbuf = tp, pbuf          # swap (both hold at least k periods)
                else:
                    pbuf[acc] = tp[sub[ok]]
                ph[acc] = trial_ph[acc]
                et[acc] = trial_et[acc]
                accepted[acc] = True
            pending = idx[~ok]
            alpha[pending] *= 0.5
            if np.all(alpha[pending] < min_step):
                break
        full = accepted & (alpha >= 1.0)
        quad = full & (lam == 0.0) & (st.err + st.drift <= 0.1 * res_before)
        lam[full] = np.where(lam[full] < 1e-6, 0.0, lam[full] / 16.0)
        lam[~full] = np.maximum(lam[~full] * 8.0, 1e-4)
        rescue = ~accepted | (alpha < min_step)
        if np.any(rescue):
            r = np.flatnonzero(rescue)
            rp, re_ = ph[r], et[r]
            rbuf = np.empty((r.size, mm, mm))
            _sinkhorn_sweep(lk[r], grid, diff, diff2, mu[r], nu[r], rp, re_, rbuf)
            ph[r], et[r] = rp, re_
            rst = _evaluate(lk[r], grid, diff, mu[r], nu[r], rp, re_, rbuf)
            st.put(r, rst, np.arange(r.size))
            pbuf[r] = rbuf
            stalls[r[~accepted[r]]] += 1
        # struggling periods (short steps): re-solve the rows far from their own optimum
        # exactly for the current phi (block step on eta; it never decreases the dual)
        short = np.flatnonzero(alpha < polish_below)
        if short.size:
            sec = np.einsum("bxy,xy->bx", pbuf[short], diff2)
            msh = st.m[short]
            vsh = np.maximum(sec - msh * msh, 1e-300)
            bad = (mu[short] > 0) & (np.abs(msh) > 0.5 * np.sqrt(vsh))
            if np.any(bad):
                bi, xi = np.nonzero(bad)
                pi = short[bi]
                et[pi, xi] = _row_solve(lk[pi, xi, :] + ph[pi], diff[xi, :], grid, et[pi, xi])
                rbuf = np.empty((short.size, mm, mm))
                rst = _evaluate(lk[short], grid, diff, mu[short], nu[short], ph[short],
                                et[short], rbuf)
                st.put(short, rst, np.arange(short.size))
                pbuf[short] = rbuf
        # light rows (mass <= light_mass * tol: they hardly move the column sums, but their
        # drift must still reach tol, and Newton's quadratic model, weighted by the mass, barely
        # sees them): solve them exactly for the new phi, row by row (block coordinate ascent),
        # and patch the state (kernel rows, LSE, drift, column sums, objective) in O(K M)
        light = (mu > 0) & (mu <= light_mass * tol) & (np.abs(st.m) > 0.1 * tol)
        if np.any(light):
            _polish_rows(light, lk, grid, diff, mu, nu, ph, et, pbuf, st, tol=0.01 * tol)
        history.append({"stage": stage, "eps": eps, "kind": "newton", "iteration": nit,
                        "marginal_error": float(st.err.max()), "drift": float(st.drift.max()),
                        "step": float(alpha.min())})
    phi[work] = ph
    eta[work] = et
    if kernels_out is not None:            # pbuf always holds the kernels at (ph, et)
        kernels_out[work] = pbuf[:work.size]
        lse_out[work] = st.lse
    return phi, eta, nit, status


def _polish_rows(rows: np.ndarray, lk: np.ndarray, grid: np.ndarray, diff: np.ndarray,
                 mu: np.ndarray, nu: np.ndarray, ph: np.ndarray, et: np.ndarray,
                 pbuf: np.ndarray, st: _State, *, tol: float) -> None:
    """Exact 1-D solves of the selected rows (k, M mask) for the current phi; patch the state."""
    bi, xi = np.nonzero(rows)
    base = lk[bi, xi, :] + ph[bi]
    d = diff[xi, :]
    e, pn, lse = _row_solve(base, d, grid, et[bi, xi], tol=tol, kernels=True)
    w = mu[bi, xi]
    # bi is sorted (row-major nonzero): sums per period by reduceat
    starts = np.flatnonzero(np.concatenate([[True], bi[1:] != bi[:-1]]))
    touched = bi[starts]
    st.col[touched] += np.add.reduceat(w[:, None] * (pn - pbuf[bi, xi, :]), starts, axis=0)
    st.obj[touched] -= np.add.reduceat(w * (lse - st.lse[bi, xi]), starts)
    pbuf[bi, xi, :] = pn
    st.lse[bi, xi] = lse
    et[bi, xi] = e
    st.m[bi, xi] = pn @ grid - grid[xi]
    st.err[touched] = np.abs(st.col[touched] - nu[touched]).sum(axis=1)
    st.drift[touched] = np.abs(st.m[touched]).max(axis=1)


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


def _default_schedule(eps: float, cost: np.ndarray | None, maximize: bool,
                      ratio: float = 4.0) -> list[float]:
    """eps-scaling stages from 5% of the cost range down to ``eps``, dividing by ``ratio``."""
    if cost is None:
        return [eps]
    spread = float(np.ptp(cost)) if cost.size else 0.0
    start = max(eps, 0.05 * spread)
    sched = []
    e = start
    while e > eps * 1.0001:
        sched.append(e)
        e /= ratio
    sched.append(eps)
    return sched


_RETRY_RATIO = 1.5
"""eps-scaling ratio of the automatic retry after a failed line search with the default
schedule (rough costs, e.g. c/eps of order 50 with random signs, need the gentler path)."""


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
    touch_tol: float = 1e-11,
    threads: int | None = 1,
    chunk_entries: int = 1_000_000,
    warn: bool = True,
    method: str = "newton",
    multiscale: bool | None = None,
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
        k is a touching point when C_nu(k) - C_mu(k) <= touch_tol * s(k), s(k) the round-off
        scale of the call (or put) sums at k (``touching_points``); rows there are pinned to
        point masses and no mass crosses k.
    threads : int or None
        BLAS threads inside the solve (``None``: leave as is). 1 is the fastest on 2 cores.
    chunk_entries : int
        Periods are solved in chunks of at most this many N*M*M entries (memory bound; the
        default, 1e6, keeps the work arrays of a chunk near the cache: 20% faster at M = 500
        than 8e6).
    warn : bool
        Emit ``ConvergenceWarning`` on failure.
    method : "newton" or "sinkhorn"
        ``"sinkhorn"`` runs the plain martingale-Sinkhorn baseline (seed 001 Algorithm 1) with
        ``max_iter`` sweeps per stage instead of Newton (for comparisons; see
        ``deepquant.mmot.sinkhorn``).
    multiscale : bool, optional
        Warm-start from the same problem on every other grid point (``coarse_marginals``),
        solved recursively to a loose tolerance, its potentials interpolated to this grid
        (``_multiscale_start``). Default (``None``): on for Newton from a cold start with zero
        cost, a named reference and at least ``MULTISCALE_MIN_POINTS`` grid points (it halves
        the fine Newton iterations; the answer is the same to ``tol``).

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
    if method not in ("newton", "sinkhorn"):
        raise ValueError(f"method must be 'newton' or 'sinkhorn', got {method!r}")
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
    if multiscale is None:
        multiscale = (method == "newton" and warm_start is None and cost_arr is None
                      and isinstance(reference, str) and m >= MULTISCALE_MIN_POINTS)
    coarse_history: list[dict[str, Any]] = []
    from_coarse = False
    if multiscale and warm_start is None and m >= 4:
        warm_start = _multiscale_start(marginals, eps, reference, tol=tol, max_iter=max_iter,
                                       touch_tol=touch_tol, threads=threads,
                                       history=coarse_history)
        from_coarse = warm_start is not None
        if from_coarse and sinkhorn_sweeps is None:
            sinkhorn_sweeps = 1   # the interpolated h is off on the finer rows: one sweep
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
    history: list[dict[str, Any]] = coarse_history
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
            lse_chunk = None          # Newton writes the final kernels and LSE (no recompute)
            for k, e in enumerate(schedule):
                phi *= prev / e
                eta *= prev / e
                prev = e
                last = k == len(schedule) - 1
                if method == "sinkhorn":
                    phi, eta, it, st = _sinkhorn_batch(
                        b, e, phi, eta, tol=tol if last else max(tol, stage_tol),
                        max_iter=int(max_iter), stage=k, history=history,
                    )
                else:
                    if last:
                        lse_chunk = np.empty((nb, m))
                    phi, eta, it, st = _solve_batch(
                        b, e, phi, eta, tol=tol if last else max(tol, stage_tol),
                        max_iter=int(max_iter), sweeps=int(sinkhorn_sweeps) if k == 0 else 1,
                        stage=k, history=history,
                        kernels_out=kernels[sl] if last else None,
                        lse_out=lse_chunk if last else None,
                    )
                chunk_nit += it
                if last:
                    status[sl] = st
            nit_total = max(nit_total, chunk_nit)
            _finish_chunk(b, eps, phi, eta, kernels[sl], u_out[sl], v_out[sl], h_out[sl],
                          lse=lse_chunk)
            pinned_all[sl] = b.pinned
        # measured residuals on the full plans
        moments = _moments(grid, w, kernels)
        n_repaired = _repair_rows(grid, w[:-1], kernels, moments[2], tol)
        if n_repaired:
            moments = _moments(grid, w, kernels)
        errs, drifts = measure(grid, w, kernels, moments)
        tc, ent, dual = _objectives(grid, w, kernels, u_out, v_out, h_out, cost_arr, moments)
    ok = (errs <= tol) & (drifts <= tol)
    success = bool(np.all(ok)) and bool(np.isfinite(errs).all())
    if not success and from_coarse:
        # the interpolated start was worse than a cold one (rare: about 1 in 150 random
        # cases): solve again from the usual cold start
        retry = solve_entropic(
            marginals, eps, cost, reference, tol=tol, max_iter=max_iter, warm_start=None,
            eps_schedule=eps_schedule, sinkhorn_sweeps=None, stage_tol=stage_tol,
            maximize=maximize, touch_tol=touch_tol, threads=threads,
            chunk_entries=chunk_entries, warn=warn, method=method, multiscale=False)
        retry.history[:0] = history
        retry.nit += nit_total
        retry.seconds = time.perf_counter() - t0
        return retry
    if (not success and eps_schedule is None and signed_cost is not None
            and method == "newton" and np.any(status == 2)):
        # the default eps-scaling was too coarse for this cost: redo with gentler stages
        finer = _default_schedule(eps, signed_cost, maximize, ratio=_RETRY_RATIO)
        if len(finer) > len(schedule):
            retry = solve_entropic(
                marginals, eps, cost, reference, tol=tol, max_iter=max_iter,
                warm_start=warm_start, eps_schedule=finer, sinkhorn_sweeps=sinkhorn_sweeps,
                stage_tol=stage_tol, maximize=maximize, touch_tol=touch_tol, threads=threads,
                chunk_entries=chunk_entries, warn=warn, method=method, multiscale=False)
            retry.history[:0] = history
            retry.nit += nit_total
            retry.seconds = time.perf_counter() - t0
            return retry
    if success:
        code, msg = 0, f"converged: marginal error {errs.max():.2e}, drift {drifts.max():.2e}"
        if n_repaired:
            msg += f" ({n_repaired} tail row(s) mean-corrected)"
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
        nit=nit_total,
        sweeps=nit_total if method == "sinkhorn" else int(sinkhorn_sweeps), marginal_error=float(np.max(errs)),
        drift=float(np.max(drifts)), marginal_errors=errs, drifts=drifts, success=success,
        status=code, message=msg, seconds=time.perf_counter() - t0, history=history,
        transport_cost=tc, dual_value=dual, entropic_objective=ent, pinned=pinned_all,
    )


MULTISCALE_MIN_POINTS = 100
"""Grid size from which ``solve_entropic`` warm-starts from the half grid by default."""

_COARSE_TOL = 1e-3
"""Residual target of the coarse solves of the multiscale start (finer gains nothing: the
interpolation error dominates)."""


def coarse_marginals(marginals: Marginals) -> Marginals:
    """The marginals on every other grid point (and the last one), by linear splitting.

    Splitting mass at a dropped point onto its two kept neighbours preserves the total mass and
    the mean, and leaves every call price at a kept point unchanged ((y - k)^+ is linear
    between kept points); the call function of a law on the kept points is linear between them,
    so the coarse laws are in convex order exactly when the fine ones are at the kept points.
    """
    grid = marginals.grid
    keep = np.unique(np.r_[np.arange(0, grid.size, 2), grid.size - 1])
    cg = grid[keep]
    w = np.stack([split_onto_grid(grid, row, cg) for row in marginals.weights])
    return Marginals(cg, w, marginals.times, check_convex=False)


def _multiscale_start(marginals: Marginals, eps: float, reference: str, *, tol: float,
                      max_iter: int, touch_tol: float, threads: int | None,
                      history: list[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """(v, h) for ``marginals`` interpolated from the solve on ``coarse_marginals`` (recursive).

    v is interpolated over the columns with mass and h over the free (not pinned) rows with
    mass of the coarse solve; the rest of either is meaningless there. Returns None (cold start)
    when the coarse solve fails.
    """
    coarse = coarse_marginals(marginals)
    res = solve_entropic(coarse, eps, None, reference, tol=max(tol, _COARSE_TOL),
                         max_iter=max_iter, touch_tol=touch_tol, threads=threads, warn=False)
    if not res.success:
        return None
    cg, fine = coarse.grid, marginals.grid
    w = coarse.weights
    v = np.zeros((marginals.n_periods, fine.size))
    h = np.zeros_like(v)
    for t in range(marginals.n_periods):
        cols = (w[t + 1] > 0) & np.isfinite(res.v[t])
        rows = (w[t] > 0) & ~res.pinned[t] & np.isfinite(res.h[t])
        if cols.sum() >= 2:
            v[t] = np.interp(fine, cg[cols], res.v[t][cols])
        if rows.sum() >= 2:
            h[t] = np.interp(fine, cg[rows], res.h[t][rows])
    history.append({"stage": -1, "eps": eps, "kind": "coarse", "iteration": res.nit,
                    "grid_size": int(cg.size), "marginal_error": res.marginal_error,
                    "drift": res.drift, "step": 1.0, "seconds": res.seconds})
    return {"v": v, "h": h}


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


@dataclass
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
    """

    kernels: np.ndarray
    h: np.ndarray
    drift: np.ndarray
    marginal_error: np.ndarray
    v: np.ndarray


def martingale_projection(marginals: Marginals, v: np.ndarray, h: np.ndarray | None = None, *,
                          eps: float = 1.0, reference: Any = "product", tol: float = 1e-13,
                          touch_tol: float = 1e-11, column_floor: float = 0.0
                          ) -> ProjectionResult:
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
    """
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
        if tt.size:
            base = b.logq[tt, xx, :] + phi[tt, :]
            d = b.diff[xx]
            e, p, lse_rows = _row_solve(base, d, grid, h[tt, xx] / eps, tol=tol, kernels=True)
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
    return ProjectionResult(kernels=kernels, h=eps * eta, drift=drift, marginal_error=errs,
                            v=v_out)


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
            e, p, lse_rows = _row_solve(base, b.diff[xx], grid, h0[tt, xx], tol=tol,
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
