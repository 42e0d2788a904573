"""Exact bounds of pairwise payoffs by a primal-dual interior point method, certified by the
concave envelope (DESIGN §2.1, §2.2, §2.8).

A pairwise payoff sum_t c_t(X_t, X_{t+1}) decomposes into one-period LPs (gluing lemma). For one
period with laws mu on points x (n of them) and nu on points y (m of them), the LP in pi(x, y) >= 0

    min/max  sum c(x, y) pi(x, y)
    s.t.     sum_y pi(x, y) = mu(x)          [phi(x)]
             sum_y pi(x, y) (y - x) = 0      [h(x)]
             sum_x pi(x, y) = nu(y)          [psi(y)]

is solved by Mehrotra's predictor-corrector method (Wright, *Primal-Dual Interior-Point Methods*,
1997, ch. 10; Mehrotra, SIAM J. Optim. 2, 1992). Its normal equations A D A^T dw = r (D = pi / s,
the primal over the dual slacks) have an arrow structure: the rows (phi(x), h(x)) of one x form a
2x2 block K_x that couples to the psi rows only, through B_x = [D(x, .); D(x, .)(y - x)]. With
K_x = L_x L_x^T (L_x explicit), C_x = L_x^{-1} B_x (two rows of length m) and

    S = diag(sum_x D(x, y)) - sum_x C_x^T C_x            (m x m, dense SPD, one ``dsyrk``),

a Newton step costs one Cholesky factorisation of S (O(n m^2) to form, O(m^3 / 3) to factor) and
O(n m) work besides. The system is rank deficient by two (the total mass and the mean of nu are
implied by the other rows), so psi is fixed to 0 at the two heaviest points of nu (the gauge).

The IPM's accuracy does not matter for the bound: for ANY potential psi, the cheapest phi and h
follow from the upper concave envelope in y of g(x, .) - psi(.) evaluated at x (g = c for the
upper side, -c for the lower side; ``deepquant.mmot.envelope``), and

    F(psi) = sum_y psi(y) nu(y) + sum_x mu(x) cav_y[g(x, .) - psi(.)](x)  >=  max E[g]

(weak duality; the constant is shifted by the measured worst violation of the superhedging
inequality on every move (x, y), rounding only). That is the **outer bound**; the IPM's primal
objective, at a plan whose residuals are at most ``feas_tol``, less what those residuals are
worth at the IPM's duals (sum |dual| |residual|, so that a plan made better by its infeasibility
does not close the bracket early), is the **inner value**, and the solve stops when the two are
within ``rtol`` (the certificate is evaluated from ``CERTIFY_GAP`` rtol of duality gap on). A stopped or failed solve still returns the best
certified outer bound (``success=False``, a ``ConvergenceWarning``).

Data: points of zero mass are dropped; mass of mu outside the hull of supp nu (tails of 1e-12
that no martingale can move) is merged onto the hull's end (``certified.nest_supports``, at most
1e-8 in all); rows at an end of the hull can only stay put and are fixed (pi(x, x) = mu(x))
before the IPM, which would otherwise chase a diverging h(x), and so are the lightest rows, up
to ``PIN_SHARE`` rtol of the mass together (the outer bound still certifies every row).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas, lapack

from deepquant.market.marginals import Marginals
from deepquant.mmot._ipm_kernels import (
    _complementarity,
    _directions,
    _pin,
    _residual,
    _schur_rows,
    _trial_mean,
    _update,
)
from deepquant.mmot.envelope import hedge_violation_period, hull_sweep_period
from deepquant.mmot.result import BoundSide, BoundsResult, Duals, check_sides
from deepquant.payoffs import Payoff, check_payoff
from deepquant.results import check_count, warn_failure

__all__ = ["ipm_bounds", "solve_period", "certify_period", "PeriodSolve"]

STEP = 0.9
"""Fraction of the step to the boundary of the positive orthant. Steps closer to the boundary
(0.995) took more iterations on Black-Scholes marginals (98 against 82 at M = 800): the entries
that block the primal step, one row after another, then start the next step nearer to 0."""

CORRECTORS = 4
"""Gondzio's centrality correctors per iteration at most (each one solve with the same factor,
about a sixth of the factorization's cost at M = 800; 4 took 71 iterations there, 2 took 82)."""

PIN_SHARE = 0.01
"""The lightest rows, up to this share of ``rtol`` of the total mass together, stay put
(pi(x, x) = mu(x), where x is a point of nu with at least twice the mass): removing the same
mass from mu and nu at x leaves the rest in convex order, and the restriction lowers the inner
value by at most that mass times 2 max |c|. The outer bound stays exact (all rows are
certified); the IPM no longer stalls on rows of mass 1e-15 to 1e-10 (Black-Scholes tails)."""

TRIAL = 0.2
"""Gondzio's trial step: the step lengths plus this much."""

GAIN = 0.02
"""A corrector is kept if it lengthens the shorter step by at least this much."""

CERTIFY_GAP = 3.0
"""The exact certificate (one envelope sweep, O(n m)) is evaluated at every iterate whose
relative duality gap is below this many ``rtol``, and at the last one."""


@dataclass(frozen=True, eq=False)
class PeriodSolve:
    """One side of one period: the certified outer bound and the IPM's inner value.

    Attributes
    ----------
    outer : float
        Certified bound (upper side: >= the LP maximum; lower side: <= the LP minimum).
    inner : float
        The IPM's primal objective at the last iterate with residual <= ``feas_tol``, less the
        residuals' worth at its duals (clipped to ``outer``), NaN if none.
    residual : float
        Largest residual of that plan on every row (marginals of both dates, martingale), with
        the fixed rows, and its most negative entry.
    nit : int
    status : str
        ``"converged"`` (bracket within rtol), ``"iteration_limit"``, ``"numerical"`` (the
        Schur complement lost positive definiteness, or a non-finite iterate).
    phi, h, psi : ndarray, shapes (n,), (n,), (m,)
        The certificate: phi(x) + psi(y) + h(x)(y - x) dominates the payoff term (upper side)
        or is dominated by it (lower side).
    info : dict
        ``violation``, ``dual_residual``, ``duality_gap`` (relative, of the IPM), ``pinned``
        (rows fixed), ``history`` (per certified iterate: iteration, outer, inner, residual).
    """

    outer: float
    inner: float
    residual: float
    nit: int
    status: str
    phi: np.ndarray
    h: np.ndarray
    psi: np.ndarray
    info: dict = field(default_factory=dict, repr=False)


def certify_period(xv: np.ndarray, yv: np.ndarray, mu: np.ndarray, nu: np.ndarray,
                   g: np.ndarray, psi: np.ndarray):
    """The exact certificate of ``psi`` for max E[g] over one period.

    xv (n,), mu (n,): points and masses of the first date (every x inside [yv[0], yv[-1]]);
    yv (m,), nu (m,): of the second; g (n, m): the payoff term; psi (m,).
    Returns (outer, phi (n,), h (n,), violation): phi(x) + psi(y) + h(x)(y - x) >= g(x, y) on
    every (x, y) after the shift by ``violation`` (included in ``outer`` and ``phi``)."""
    n = xv.size
    G = np.ascontiguousarray(g - psi[None, :])
    live = np.eye(n, dtype=np.bool_)
    val, slope, lam = np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    j1, j2 = np.empty((n, n), np.int64), np.empty((n, n), np.int64)
    vert = np.empty(G.shape, dtype=np.bool_)
    hull_sweep_period(G, yv, xv, live, val, slope, j1, j2, lam, vert)
    phi, h = np.diagonal(val).copy(), np.diagonal(slope).copy()
    viol = float(np.max(hedge_violation_period(G, yv, xv, live, val, slope), initial=0.0))
    phi = phi + viol
    return float(psi @ nu + mu @ phi), phi, h, viol


class _Normal:
    """Cholesky factor of the Schur complement of A D A^T in the psi rows (module docstring)."""

    def __init__(self, d: np.ndarray, free: np.ndarray):
        n = d.shape[0]
        self.d, self.free_idx = d, np.flatnonzero(free)
        k = self.free_idx.size
        self.C = np.empty((2, n, k))
        self.l11, self.l22, self.dbar = np.empty(n), np.empty(n), np.empty(n)
        self.diag = np.empty(k)
        self.D, self.Si, self.Pi = (np.empty(d.shape) for _ in range(3))
        self.buf = np.empty((k, k), order="F")
        self.dg = np.arange(k) * (k + 1)

    def factor(self, P: np.ndarray, S: np.ndarray) -> bool:
        """Factor for the weights D = P / S (n, m); False if S is not numerically positive
        definite even after a diagonal shift."""
        _schur_rows(P, S, self.d, self.free_idx, self.C, self.l11, self.l22, self.dbar,
                    self.diag, self.D, self.Si, self.Pi)
        k = self.free_idx.size
        if k == 0:
            self.F = np.zeros((0, 0))
            return True
        # C as a C-ordered (2n, k) array is the Fortran (k, 2n) array C^T: -C^T C into the
        # Fortran buffer (upper triangle), the diagonal added, factored in place
        for shift in (1e-14, 1e-11, 1e-8):
            S = blas.dsyrk(-1.0, self.C.reshape(-1, k).T, beta=0.0, c=self.buf, trans=0,
                           lower=0, overwrite_c=1)
            S.ravel(order="K")[self.dg] += self.diag * (1.0 + shift)
            F, info = lapack.dpotrf(S, lower=0, clean=0, overwrite_a=1)
            if info == 0:
                self.F = F
                return True
        return False

    def solve(self, r_phi: np.ndarray, r_h: np.ndarray, r_psi: np.ndarray):
        """(dphi, dh, dpsi) solving A D A^T dw = r (psi on the free columns)."""
        z1 = r_phi / self.l11
        z2 = (r_h - self.dbar * r_phi) / self.l22
        rhs = r_psi - (z1 @ self.C[0] + z2 @ self.C[1])
        if rhs.size:
            b, _ = lapack.dpotrs(self.F, rhs, lower=0)
        else:
            b = rhs
        z1 = z1 - self.C[0] @ b
        z2 = z2 - self.C[1] @ b
        dh = z2 / self.l22
        return z1 / self.l11 - self.dbar * dh, dh, b


def _step(worst: float) -> float:
    """The largest step <= 1 to the boundary, from the largest ratio -dv / v."""
    return 1.0 if worst <= 1.0 else 1.0 / worst


def solve_period(xv: np.ndarray, yv: np.ndarray, mu: np.ndarray, nu: np.ndarray,
                 cost: np.ndarray, sense: str, *, rtol: float = 1e-7, feas_tol: float = 1e-8,
                 max_iter: int = 100) -> PeriodSolve:
    """One side of one period (see the module docstring).

    Parameters
    ----------
    xv, mu : ndarray, shape (n,)
        Points (increasing) and positive masses of the first date, inside [yv[0], yv[-1]].
    yv, nu : ndarray, shape (m,)
        Points (increasing) and positive masses of the second date.
    cost : ndarray, shape (n, m)
        The payoff term c(x, y).
    sense : {"lower", "upper"}
    rtol : float
        Stop when |outer - inner| <= rtol * max(|outer|, 1e-3 max|c|) at a plan with residual
        <= ``feas_tol``.
    feas_tol : float
        Largest residual (of rows whose right-hand sides sum to 1) of a plan that counts as inner.
    max_iter : int
        IPM iterations.
    """
    sign = 1.0 if sense == "upper" else -1.0
    g = sign * np.asarray(cost, dtype=float)
    n, m = xv.size, yv.size
    scale = float(np.max(np.abs(g), initial=0.0)) or 1.0
    rows, cols, nu_r, fixed, lost = _pin(xv, yv, mu, nu, PIN_SHARE * rtol)
    fixed_value = float(sum(w * g[a, j] for a, j, w in fixed))
    xr, yr, mur, nur = xv[rows], yv[cols], mu[rows], nu_r[cols]
    gr = g[np.ix_(rows, cols)]
    history: list[dict] = []
    best = [np.inf, np.zeros(n), np.zeros(n), np.zeros(m), 0.0]
    inner, resid, nit, status = np.nan, np.inf, 0, "iteration_limit"
    info: dict = dict(pinned=len(fixed))

    def certify(phi_r, h_r, psi_r):
        # psi on the dropped columns: the smallest value keeping the IPM's own dual feasible
        if not (np.all(np.isfinite(psi_r)) and np.all(np.isfinite(h_r))):
            return  # a broken iterate (status "numerical"): the best certificate stays
        psi = np.zeros(m)
        psi[cols] = psi_r
        if (~cols).any() and rows.any():
            dx = yv[None, ~cols] - xr[:, None]
            psi[~cols] = np.max(g[np.ix_(rows, ~cols)] - phi_r[:, None] - h_r[:, None] * dx,
                                axis=0)
        out = certify_period(xv, yv, mu, nu, g, psi)
        if out[0] < best[0]:
            best[:] = [out[0], out[1], out[2], psi, out[3]]

    def accept(val, P, duals):
        # the IPM's plan gives the inner value if its residuals are within feas_tol: its value
        # less what the residuals are worth at the IPM's duals (first order)
        nonlocal inner, resid
        res, worth = _residual(P, xr, yr, mur, nur, *duals)
        res = max(res, lost)
        if res <= feas_tol:
            inner, resid = val - worth, res
        return res <= feas_tol and abs(best[0] - inner) <= rtol * max(abs(best[0]),
                                                                     1e-3 * scale)

    if rows.any():
        it = _Mehrotra(xr, yr, mur, nur, -gr / scale)
        for nit in range(1, max_iter + 1):
            if not it.step():
                status = "numerical"
                break
            if it.gap > CERTIFY_GAP * rtol and nit < max_iter:
                continue
            duals = (-it.phi * scale, -it.h * scale, -it.psi_full() * scale)
            certify(*duals)
            done = it.pres <= feas_tol and accept(fixed_value - it.pobj * scale, it.P, duals)
            history.append(dict(iteration=nit, outer=sign * best[0], inner=sign * inner,
                                residual=float(it.pres), gap=float(it.gap)))
            if done:
                status = "converged"
                break
        info.update(dual_residual=float(it.dres * scale), duality_gap=float(it.gap))
        if not np.isfinite(best[0]):  # broke down before any certificate
            certify(-it.phi * scale, -it.h * scale, -it.psi_full() * scale)
    if not np.isfinite(best[0]):
        certify(np.zeros(int(rows.sum())), np.zeros(int(rows.sum())), np.zeros(int(cols.sum())))
    if not rows.any():
        inner, resid, status = fixed_value, lost, "converged"
    outer, phi, h, psi, viol = best
    if np.isfinite(inner):
        inner = min(inner, outer)  # round-off of the plan's residuals, see certified.clip_inner
    info.update(violation=viol, history=history)
    return PeriodSolve(outer=sign * outer, inner=sign * inner, residual=resid, nit=nit,
                       status=status, phi=sign * phi, h=sign * h, psi=sign * psi, info=info)


class _Mehrotra:
    """Iterates of Mehrotra's predictor-corrector method with Gondzio's centrality correctors on
    the (pinned) one-period LP min <c, P> (c scaled to max |c| <= 1); the gauge columns' psi
    stays 0."""

    def __init__(self, xv, yv, mu, nu, c):
        n, m = c.shape
        self.c = np.ascontiguousarray(c)
        self.d = np.ascontiguousarray(yv[None, :] - xv[:, None])
        gauge = np.argsort(nu, kind="stable")[-min(2, m):]
        self.free = np.ones(m, dtype=bool)
        self.free[gauge] = False
        self.ne = _Normal(self.d, self.free)
        self.b = (mu, np.zeros(n), nu[self.free])
        self.k = 0
        self.Rd, self.Rc, self.dP, self.dS, self.cP, self.cS = (np.empty((n, m))
                                                                 for _ in range(6))
        self.sums = (np.empty(n), np.empty(n), np.empty(m))
        # Mehrotra's starting point: least-norm primal and dual, shifted into the interior
        self.ne.factor(np.ones((n, m)), np.ones((n, m)))
        P = self.At(*self.ne.solve(*self.b))
        w = self.ne.solve(c.sum(axis=1), np.einsum("ij,ij->i", c, self.d),
                          c.sum(axis=0)[self.free])
        S = c - self.At(*w)
        P = P + max(-1.5 * P.min(), 0.0)
        S = S + max(-1.5 * S.min(), 0.0)
        ps = float(np.sum(P * S))
        self.P = P + 0.5 * ps / S.sum()
        self.S = S + 0.5 * ps / self.P.sum()
        self.phi, self.h, self.psi = w
        self.dP.fill(0.0)
        self.dS.fill(0.0)
        self.measure(*_update(self.P, self.S, self.dP, self.dS, 0.0, 0.0, self.c, self.d,
                              self.phi, self.h, self.psi_full(), self.Rd, *self.sums))

    def At(self, phi, h, psi_f):
        return phi[:, None] + self.psi_full(psi_f)[None, :] + h[:, None] * self.d

    def psi_full(self, psi_f=None):
        psi = np.zeros(self.free.size)
        psi[self.free] = self.psi if psi_f is None else psi_f
        return psi

    def measure(self, pobj, mean_ps, dres):
        r1, r2, col = self.sums
        self.rp = (self.b[0] - r1, -r2, self.b[2] - col[self.free])
        self.pobj = float(pobj)
        dobj = float(self.b[0] @ self.phi + self.b[2] @ self.psi)
        self.pres = max(float(np.max(np.abs(r), initial=0.0)) for r in self.rp)
        self.dres = float(dres)
        self.gap = abs(self.pobj - dobj) / (1.0 + abs(self.pobj))
        self.mu = float(mean_ps)

    def direction(self, Rc, rp, use_rd, base_p, base_s, dP, dS):
        """Newton direction for the complementarity target Rc (primal residual rp, dual
        residual Rd if use_rd, else 0) plus (base_p, base_s) unless None, from the sums A T
        of the right-hand side in ``self.sums`` (``_complementarity``); returns (dw, step P,
        step S)."""
        r1, r2, col = self.sums
        ne = self.ne
        dw = ne.solve(rp[0] - r1, rp[1] - r2, rp[2] - col[self.free])
        base = base_p is not None
        wp, ws = _directions(ne.D, ne.Si, ne.Pi, self.Rd, Rc, self.d, use_rd, dw[0], dw[1],
                             self.psi_full(dw[2]), base, base_p if base else Rc,
                             base_s if base else Rc, dP, dS)
        return dw, _step(wp), _step(ws)

    def products(self, ap, ad, target, mode, use_rd):
        """``_complementarity`` at the current iterate and direction (into Rc and the sums)."""
        ne = self.ne
        _complementarity(self.P, self.S, self.dP, self.dS, ap, ad, target, mode,
                                self.Rc, ne.D, ne.Si, self.Rd, self.d, use_rd, *self.sums)

    def step(self) -> bool:
        """One predictor-corrector step; False on numerical breakdown."""
        P, S, Rc = self.P, self.S, self.Rc
        if not self.ne.factor(P, S) or not np.all(np.isfinite(self.ne.l22)):
            return False
        self.products(0.0, 0.0, 0.0, 3, True)  # the predictor: Rc = -P S
        _, ap, ad = self.direction(Rc, self.rp, True, None, None, self.dP, self.dS)
        mu_aff = _trial_mean(P, S, self.dP, self.dS, ap, ad)
        target = (mu_aff / self.mu) ** 3 * self.mu if self.mu > 0 else 0.0
        self.products(0.0, 0.0, target, 0, True)
        dw, ap, ad = self.direction(Rc, self.rp, True, None, None, self.dP, self.dS)
        zero_rp = (np.zeros_like(self.rp[0]), np.zeros_like(self.rp[1]),
                   np.zeros_like(self.rp[2]))
        for _ in range(CORRECTORS):
            # Gondzio's centrality corrector: push the products of a longer trial step into
            # [0.1, 10] x target, keep it if both steps grow
            self.products(min(1.0, ap + TRIAL), min(1.0, ad + TRIAL), target, 1, False)
            cw, nap, nad = self.direction(Rc, zero_rp, False, self.dP, self.dS, self.cP,
                                          self.cS)
            if min(nap, nad) < min(ap, ad) + GAIN:
                break
            self.dP, self.cP, self.dS, self.cS = self.cP, self.dP, self.cS, self.dS
            ap, ad = nap, nad
            dw = tuple(a + b for a, b in zip(dw, cw))
        # a full step where nothing blocks it (it zeroes the residuals), else STEP of the way
        ap, ad = (a if a == 1.0 else STEP * a for a in (ap, ad))
        self.phi, self.h, self.psi = (w + ad * dw_ for w, dw_ in zip((self.phi, self.h, self.psi),
                                                                    dw))
        self.k += 1
        self.measure(*_update(P, S, self.dP, self.dS, ap, ad, self.c, self.d, self.phi, self.h,
                              self.psi_full(), self.Rd, *self.sums))
        return bool(np.isfinite(self.pobj) and np.isfinite(self.gap))


def _check_options(rtol, feas_tol, max_iter) -> None:
    for name, v in (("rtol", rtol), ("feas_tol", feas_tol)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and 0 < v < 1):
            raise ValueError(f"{name} must be a number in (0, 1), got {v!r}")
    check_count(max_iter, "max_iter")


def ipm_bounds(marginals: Marginals, payoff: Payoff, *, rtol: float = 1e-7,
               feas_tol: float = 1e-8, max_iter: int = 100,
               sides: tuple[str, ...] = ("lower", "upper"), workers: int = 1) -> BoundsResult:
    """Certified bounds of a pairwise payoff by the interior point method (module docstring).

    Parameters
    ----------
    marginals : Marginals
        In convex order on the grid (checked; tails outside the next support's hull up to 1e-8
        are merged onto its ends).
    payoff : Payoff
        A payoff with ``payoff.pairwise(n_dates)`` not None (forward-start straddle or call
        between adjacent dates, European payoffs, sum of squared increments).
    rtol : float
        Target relative width of each side's bracket [inner, outer] (per period).
    feas_tol : float
        Largest row residual of an IPM plan whose value counts as the inner value.
    max_iter : int
        IPM iterations per period and side.
    sides : tuple of str
    workers : {1, 2}
        Sides solved at once (threads; the kernels and the BLAS release the GIL). With 2, the
        per-side ``timings`` overlap and ``info["wall_seconds"]`` is the elapsed time.

    Returns
    -------
    BoundsResult
        ``method="ipm"``, ``structure="pairwise"``; ``lower``/``upper`` the certified outer bounds
        (valid whatever the IPM reached), per side ``gap`` = |outer - inner|, ``info["inner"]``,
        ``primal_residual`` the inner plans' largest residual, ``duals`` the certificate in the
        layout of the pairwise LP (``superhedge`` takes it). ``status`` ``"certified"`` when
        every bracket is within ``rtol``, else ``"certified-wide"`` with ``success=False``.
    """
    from deepquant.mmot.certified import nest_supports
    from deepquant.mmot.lp import check_convex_order

    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    check_payoff(payoff)
    _check_options(rtol, feas_tol, max_iter)
    if workers not in (1, 2) or isinstance(workers, bool):
        raise ValueError(f"workers must be 1 or 2, got {workers!r}")
    check_sides(sides)
    terms = payoff.pairwise(marginals.n_dates)
    if terms is None:
        raise ValueError(f"payoff {payoff.name!r} is not pairwise on {marginals.n_dates} dates: "
                         "method='ipm' takes payoffs sum_t c_t(X_t, X_{t+1}) only (use "
                         "method='certified')")
    t_build = time.perf_counter()
    grid = np.asarray(marginals.grid, dtype=float)
    by_t = payoff.pairwise_costs(marginals.n_dates, grid)
    T = max(by_t) + 1
    check_convex_order(marginals, range(1, T + 1))
    periods, moved = [], 0.0
    for t in sorted(by_t):
        sub, mv = nest_supports(marginals.select([t, t + 1]), 1)
        moved += mv
        w = np.asarray(sub.weights, dtype=float)
        xs, ys = np.flatnonzero(w[0] > 0), np.flatnonzero(w[1] > 0)
        periods.append((t, xs, ys, w[0, xs], w[1, ys], by_t[t][np.ix_(xs, ys)]))
    build = time.perf_counter() - t_build
    opts = dict(rtol=rtol, feas_tol=feas_tol, max_iter=max_iter)
    if workers == 2 and len(sides) == 2:
        with ThreadPoolExecutor(2) as pool:
            futures = {s: pool.submit(_side, periods, s, grid, T, by_t, **opts) for s in sides}
            out = {s: f.result() for s, f in futures.items()}
    else:
        out = {s: _side(periods, s, grid, T, by_t, **opts) for s in sides}
    wall = time.perf_counter() - t_build
    missing = BoundSide(float("nan"), True, "not_requested", "not requested", 0.0)
    lo, up = out.get("lower", missing), out.get("upper", missing)
    ok = all(r.success for r in out.values())
    msg = "; ".join(f"{k}: {r.message}" for k, r in out.items())
    result = BoundsResult(
        lower=lo.value, upper=up.value, method="ipm", status="certified" if ok else
        "certified-wide", success=ok, message=msg,
        seconds=dict(lower=lo.seconds, upper=up.seconds, build=build),
        sizes=dict(cols=int(sum(p[1].size * p[2].size for p in periods)),
                   rows=int(sum(2 * p[1].size + p[2].size for p in periods))),
        lower_side=out.get("lower"), upper_side=out.get("upper"), exact=True,
        structure="pairwise",
        info=dict(periods=sorted(by_t), last_date=T, tail_mass_moved=moved, wall_seconds=wall,
                  workers=workers))
    warn_failure(result, "IPM bounds")
    return result


def _side(periods, sense, grid, T, costs, *, rtol, feas_tol, max_iter) -> BoundSide:
    """One side over the periods: sums of the outer bounds and inner values, the certificates
    as ``Duals`` (u_t += phi_t, u_{t+1} += psi_t, h_t) on the grid."""
    t0 = time.perf_counter()
    M = grid.size
    u = np.zeros((T + 1, M))
    h = [np.zeros((M, 1)) for _ in range(T)]
    outer = inner = 0.0
    resid, nit, worst, notes, viol = 0.0, 0, "converged", [], 0.0
    for t, xs, ys, mu, nu, cost in periods:
        r = solve_period(grid[xs], grid[ys], mu, nu, cost, sense, rtol=rtol, feas_tol=feas_tol,
                         max_iter=max_iter)
        outer += r.outer
        inner += r.inner
        resid = max(resid, r.residual)
        nit += r.nit
        viol += r.info["violation"]
        u[t, xs] += r.phi
        u[t + 1, ys] += r.psi
        h[t][xs, 0] = r.h
        if r.status != "converged" and worst == "converged":
            worst = r.status
        notes.append(f"period {t}: {r.status} after {r.nit} iterations")
    supp = np.zeros((T + 1, M), dtype=bool)
    for t, xs, ys, *_ in periods:
        supp[t, xs] = supp[t + 1, ys] = True
    duals = Duals(u=np.where(supp, u, np.nan), h=h,
                  phi=[np.where(sp[:, None], 0.0, np.nan) for sp in supp],
                  costs=[np.asarray(costs.get(t, np.zeros((M, M)))) for t in range(T)])
    gap = abs(outer - inner) if np.isfinite(inner) else np.inf
    within = worst == "converged"
    message = "; ".join(notes) + f"; bracket [{min(inner, outer):.10g}, {max(inner, outer):.10g}]"
    return BoundSide(outer, within, "certified" if within else "certified-wide", message,
                     time.perf_counter() - t0, resid, float("nan"), gap, duals,
                     info=dict(inner=inner, iterations=nit, violation=viol, status=worst,
                               relative_gap=gap / max(abs(outer), 1e-300)))
