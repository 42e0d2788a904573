"""Entropic MMOT on the augmented chain (X_t, S_t) of a path-dependent payoff (DESIGN §2.3).

Problem. For a payoff f(X_T, S_T) with statistic S (``deepquant.mmot.augment``), minimise over
laws P of chains that are Markov in Z_t = (X_t, S_t)

    E_P[sign * f(X_T, S_T)] + eps KL(P | R),   P o X_t^{-1} = mu_t (t = 0..T),
    E_P[X_{t+1} - X_t | Z_t] = 0 (t < T),

with R the Markov reference X_0 ~ mu_0, X_{t+1} | X_t = x ~ q_t(. | x) (``"product"``:
q_t = mu_{t+1}; or kernels given as an array), S updated by the chain's (possibly split) rule.
sign = +1 gives the entropic lower bound, -1 the upper one.

Dual (derived from the Lagrangian; the seed's signs are inconsistent). With a_t = u_t / eps and
g_t = h_t / eps, the concave dual is

    D(a, g) = sum_t <a_t, mu_t> - log E_R[exp(sum_t a_t(X_t) + sum_t g_t(Z_t)(X_{t+1} - X_t)
                                              - sign f(Z_T) / eps)],

and the optimal law is the Gibbs measure dP/dR = exp(...)/Z. The expectation is a backward
recursion of messages in log-space (log-sum-exp):

    log beta_T(x, s) = a_T(x) - sign f(x, s) / eps,
    log B_t(s, y)    = log sum_{s'} K_t(s' | s, y) beta_{t+1}(y, s')      (split rule K_t),
    psi_t(x, s)      = log sum_y q_t(y | x) B_t(s, y) exp(g_t(x, s)(y - x)),
    log beta_t(x, s) = a_t(x) + psi_t(x, s),
    log Z            = log sum_{x} mu_0(x) sum_s init(s | x) beta_0(x, s).

Elimination of h. g_t(x, s) enters log Z only through beta_t(x, s), and log Z increases with
beta_t, so max_g D is attained state by state by minimising the convex 1-D function psi_t(x, s)
(the library's one martingale row solver, ``_gibbs._row_solve``: safeguarded Newton, vectorised): its stationarity condition is exactly the martingale
condition E[X_{t+1} - X_t | Z_t = (x, s)] = 0. One backward sweep therefore returns g*(a), and
D*(a) = max_g D(a, g) is concave with gradient (envelope theorem)

    dD*/da_t(x) = mu_t(x) - P(X_t = x),

computed by a forward pass: the Gibbs law of Z_0 is mu_0 init beta_0 / Z, its transition kernel
is q_t(y|x) B_t(s, y) exp(g (y - x) - psi_t(x, s)), and S' | (s, y) has law
K_t(s'|s, y) beta_{t+1}(y, s') / B_t(s, y). D* is maximised by L-BFGS (scipy) with eps-scaling
(a, g rescaled by eps_old / eps_new between stages).

Edge states: when x lies at the end of the convex hull of the support of q_t(.|x) B_t(s, .), g
diverges and the conditional law is the point mass at y = x (the only martingale move): we pin
it exactly (psi = log q_t(x|x) B_t(s, x)). A state with no feasible move gets psi = -inf.

Conditioning. L-BFGS works in z = a sqrt(mu) (Jacobi scaling: the dual Hessian in a_t(x) is
about diag(mu_t(x))). Marginals with masses below ~1e-10 or call curves that nearly touch between
dates (C_{t+1}(k) - C_t(k) < ~1e-9 at an interior k) make the dual nearly degenerate and the
solve slow or unsuccessful (reported through ``success`` and ``ConvergenceWarning``); exact
touching points are not pinned here (the one-period solver ``entropic.solve_entropic`` does):
trim such tails from the grid first.

Reported value: the transport cost <f, pi_eps> = E_P[f] of the entropic plan, a feasible plan up
to the measured residuals, hence an inner estimate inside [LP min, LP max] (DESIGN §2.3). The
entropic objective is reported beside it. Measured L1 marginal error sum_t ||P o X_t^{-1} -
mu_t||_1 and drift max_{t, z: P(z) > 0} |E[X_{t+1} - X_t | Z_t = z]| come from the final plan.

References: DESIGN §2.1–2.3; seed 001 §2.3–2.4 (Gibbs form, signs re-derived); Nutz, Marcel &
Wiesel / Benamou et al. for entropic martingale transport.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, sparse

from deepquant.market.marginals import Marginals
from deepquant.mmot._chain_rows import _lse, _segment_logsumexp
from deepquant.mmot._gibbs import _row_solve
from deepquant.mmot._support import _check_eps
from deepquant.mmot.augment import AugmentedChain, build_chain
from deepquant.payoffs import Payoff
from deepquant.results import ConvergenceWarning

__all__ = [
    "ChainSolution",
    "solve_chain_entropic",
    "entropic_bounds",
    "ConvergenceWarning",
    "MAX_EPS_RATIO",
    "MIN_EPS_RATIO",
]

MAX_EPS_RATIO = 1e16
"""Largest ``eps`` relative to the problem's scale, max(span of the payoff on the chain's last
states, max|grid|): beyond it f / eps is below float64's precision next to the dual potentials,
so the plan no longer depends on eps (it is the martingale projection of the reference), while
eps KL(P | R) overflows as eps nears 1e308 (``bounds --method entropic --eps 1e308``: numpy
overflow warnings, then "not converged")."""

MIN_EPS_RATIO = 1e-6
"""Smallest ``eps`` relative to the scale of ``MAX_EPS_RATIO``: below it L-BFGS stalls on the
float64 precision of the dual value (about 1e-16 |u| / eps) and the plan misses its marginals,
after a long run. Measured with ``AsianCall(strike=1)`` on 3 dates: GBM laws on 12 points (scale
1.4) converged down to eps = 1e-6 (1.2 s; at 1e-4 already within 1.3e-9 of the LP bounds), then
ended "not converged" at 1e-7 (4.4 s, outside the LP bounds by 4e-8), 1e-10 (18 s) and 1e-300
(41 s, outside by 1e-2); the README's example (scale 1.5) likewise from 1e-7."""


@dataclass(frozen=True, eq=False)
class ChainSolution:
    """The entropic optimiser on an augmented chain (one side).

    Attributes
    ----------
    value : float
        Transport cost E_P[f(X_T, S_T)] of the entropic plan (f with its original sign).
    objective : float
        Entropic objective sign * E_P[f] + eps KL(P | R) at the final plan, times sign (so it
        is comparable with ``value``: below it for the minimiser, above for the maximiser).
    sign : int
        +1 for the minimiser (lower bound), -1 for the maximiser (upper bound).
    eps : float
    success : bool
    message : str
    nit : int
        Total L-BFGS iterations over all eps stages.
    nfev : int
        Total backward/forward passes.
    marginal_error : float
        sum_t ||P o X_t^{-1} - mu_t||_1 (measured).
    drift : float
        max over t < T and states with P(Z_t = z) > 0 of |E[X_{t+1} - X_t | Z_t = z]|.
    u : ndarray, shape (T+1, M)
        Potentials u_t = eps a_t (NaN off the support of mu_t).
    h : list of ndarray
        ``h[t]`` of shape (M, n_t): h_t(x, s) = eps g_t(x, s) (NaN where not reachable; +-inf
        for pinned edge states).
    joint : list of ndarray
        ``joint[t]`` of shape (M, n_t): P(X_t = x, S_t = s), t = 0..T.
    kernels : list of ndarray
        ``kernels[t]`` of shape (M, n_t, M): P(X_{t+1} = y | X_t = x, S_t = s) (zero rows where
        unreachable).
    moves : ndarray, shape (T,)
        E_P|X_{t+1} - X_t| per period (for the transaction-cost widening).
    history : list of dict
        One entry per eps stage: ``eps``, ``nit``, ``marginal_error``, ``drift``, ``value``,
        ``seconds``.
    seconds : float
    """

    value: float
    objective: float
    sign: int
    eps: float
    success: bool
    message: str
    nit: int
    nfev: int
    marginal_error: float
    drift: float
    u: np.ndarray
    h: list[np.ndarray]
    joint: list[np.ndarray]
    kernels: list[np.ndarray]
    moves: np.ndarray
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def expected_abs_moves(self) -> np.ndarray:
        """E_P|X_{t+1} - X_t| per period, shape (T,)."""
        return self.moves

    def plan(self, t: int) -> np.ndarray:
        """pi_t(x, s, y) = P(X_t = x, S_t = s, X_{t+1} = y), shape (M, n_t, M)."""
        return self.joint[t][:, :, None] * self.kernels[t]


# ----------------------------------------------------------------------------- problem arrays
class _Problem:
    """Arrays of one chain + marginals + reference, prepared once for many dual evaluations."""

    def __init__(self, chain: AugmentedChain, marginals: Marginals, reference, sign: int):
        grid = np.asarray(chain.grid, dtype=float)
        m = grid.size
        T = chain.last_date
        w = np.asarray(marginals.weights[: T + 1], dtype=float)
        self.grid, self.m, self.T, self.sign = grid, m, T, sign
        self.mu = w
        self.supp = w > 0
        self.n = chain.n_states
        self._marginals, self._lognormal = marginals, None
        with np.errstate(divide="ignore"):
            self.log_mu = np.log(w)
        self.logq = [self._log_reference(reference, t, w) for t in range(T)]
        self.pairs = [chain.pairs(t) for t in range(T + 1)]
        init = chain.initial.tocoo()
        self.init_x, self.init_s = init.row, init.col
        with np.errstate(divide="ignore"):
            self.init_logw = np.log(init.data)
        self.cost = np.asarray(chain.terminal, dtype=float)  # (M, n_T)
        # split rule per period as COO: row r = s * M + y, col s', log weight
        self.trans = []
        for t in range(T):
            coo = chain.transitions[t].tocoo()
            keep = coo.data > 0
            r, c, d = coo.row[keep], coo.col[keep], coo.data[keep]
            self.trans.append((r // m, r % m, c, np.log(d)))
        # state -> pair aggregation (n_t x P_t)
        self.agg = []
        for t in range(T + 1):
            p = self.pairs[t]
            self.agg.append(sparse.csr_matrix((np.ones(len(p)), (p[:, 1], np.arange(len(p)))),
                                              shape=(self.n[t], len(p))))
        self.d = [grid[None, :] - grid[self.pairs[t][:, 0]][:, None] for t in range(T)]
        self.absd = [np.abs(d) for d in self.d]
        self.var_index = [np.flatnonzero(self.supp[t]) for t in range(T + 1)]
        self.offsets = np.concatenate([[0], np.cumsum([v.size for v in self.var_index])])

    def _log_reference(self, reference, t, w):
        m = self.m
        if isinstance(reference, str):
            if reference == "product":
                with np.errstate(divide="ignore"):
                    row = np.log(w[t + 1])
                return np.broadcast_to(row, (m, m)).copy()
            if reference != "lognormal":
                raise ValueError(f"reference must be 'product', 'lognormal' or an array of "
                                 f"kernels, got {reference!r}")
            if self._lognormal is None:
                from deepquant.mmot.entropic import reference_kernels

                self._lognormal = reference_kernels(self._marginals, "lognormal")
            lq = self._lognormal[t].copy()
            lq[:, ~self.supp[t + 1]] = -np.inf
            return lq
        q = np.asarray(reference, dtype=float)
        if q.ndim != 3 or q.shape[1:] != (m, m) or q.shape[0] < self.T:
            raise ValueError(f"reference kernels must have shape (>= {self.T}, {m}, {m}), "
                             f"got {q.shape}")
        if np.any(q < 0) or not np.all(np.isfinite(q)):
            raise ValueError("reference kernels must be finite and non-negative")
        with np.errstate(divide="ignore"):
            lq = np.log(q[t])
        lq[:, ~self.supp[t + 1]] = -np.inf
        return lq

    # ------------------------------------------------------------------ variables
    def unpack(self, z: np.ndarray) -> np.ndarray:
        a = np.full((self.T + 1, self.m), -np.inf)
        for t, idx in enumerate(self.var_index):
            a[t, idx] = z[self.offsets[t]: self.offsets[t + 1]]
        return a

    def pack(self, a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[t, idx] for t, idx in enumerate(self.var_index)])

    # ------------------------------------------------------------------ passes
    def backward(self, a: np.ndarray, eps: float, g0: list[np.ndarray], htol: float):
        """Messages log beta_t (M, n_t), log B_t (n_t, M), optimal g_t and kernels per pair."""
        T, m = self.T, self.m
        logbeta = [None] * (T + 1)
        lb = np.full((m, self.n[T]), -np.inf)
        pT = self.pairs[T]
        lb[pT[:, 0], pT[:, 1]] = a[T, pT[:, 0]] - self.sign * self.cost[pT[:, 0], pT[:, 1]] / eps
        logbeta[T] = lb
        logB = [None] * T
        gs = [None] * T
        kern = [None] * T
        for t in range(T - 1, -1, -1):
            s_idx, y_idx, s2, logw = self.trans[t]
            vals = logw + logbeta[t + 1][y_idx, s2]
            key = s_idx * m + y_idx
            lB = _segment_logsumexp(key, vals, self.n[t] * m).reshape(self.n[t], m)
            logB[t] = lB
            p = self.pairs[t]
            L = self.logq[t][p[:, 0]] + lB[p[:, 1]]
            g, k, psi, _ = _row_solve(L, self.d[t], g0[t], iters=200, tol=htol, kernels=True)
            gs[t], kern[t] = g, k
            lbt = np.full((m, self.n[t]), -np.inf)
            lbt[p[:, 0], p[:, 1]] = a[t, p[:, 0]] + psi
            logbeta[t] = lbt
        init_vals = self.log_mu[0][self.init_x] + self.init_logw + logbeta[0][self.init_x,
                                                                              self.init_s]
        logz = _lse(init_vals)
        return logbeta, logB, gs, kern, logz

    def forward(self, logbeta, logB, kern, logz):
        """Joint laws P(X_t = x, S_t = s), shape (M, n_t), t = 0..T."""
        T, m = self.T, self.m
        j0 = np.zeros((m, self.n[0]))
        vals = self.log_mu[0][self.init_x] + self.init_logw + logbeta[0][self.init_x,
                                                                         self.init_s] - logz
        np.add.at(j0, (self.init_x, self.init_s), np.exp(vals))
        joint = [j0]
        for t in range(T):
            p = self.pairs[t]
            mass = joint[t][p[:, 0], p[:, 1]]
            q = self.agg[t] @ (mass[:, None] * kern[t])  # (n_t, M): P(S_t = s, X_{t+1} = y)
            s_idx, y_idx, s2, logw = self.trans[t]
            with np.errstate(invalid="ignore"):
                ratio = np.exp(logw + logbeta[t + 1][y_idx, s2] - logB[t][s_idx, y_idx])
            ratio = np.where(np.isfinite(ratio), ratio, 0.0)
            contrib = q[s_idx, y_idx] * ratio
            nxt = np.bincount(y_idx * self.n[t + 1] + s2, weights=contrib,
                              minlength=m * self.n[t + 1]).reshape(m, self.n[t + 1])
            joint.append(nxt)
        return joint


def solve_chain_entropic(
    chain: AugmentedChain,
    marginals: Marginals,
    eps: float,
    *,
    sign: int = 1,
    reference="product",
    tol: float = 1e-6,
    drift_tol: float | None = None,
    max_iter: int = 5000,
    eps0: float | None = None,
    eps_factor: float = 0.25,
    warn: bool = True,
) -> ChainSolution:
    """Entropic MMOT on an augmented chain: minimise sign*E[f] + eps KL(P | R) (module docstring).

    Parameters
    ----------
    chain : AugmentedChain
        From ``deepquant.mmot.augment.build_chain(marginals, payoff)``.
    marginals : Marginals
        The marginals the chain was built on (rows 0..T are used).
    eps : float
        Regularisation (> 0), in the units of the payoff; between ``MIN_EPS_RATIO`` and
        ``MAX_EPS_RATIO`` times max(the payoff's range on the chain's last states, max|grid|).
    sign : {1, -1}
        +1: minimise (lower bound); -1: maximise (upper bound).
    reference : "product", "lognormal" or ndarray, shape (>= T, M, M)
        Reference kernels q_t(y | x); ``"lognormal"`` is ``entropic.reference_kernels``'s
        lognormal random walk with the marginals' variance increments.
    tol : float
        Target L1 marginal error sum_t ||P o X_t^{-1} - mu_t||_1. L-BFGS works on the dual value,
        whose float64 precision (about 1e-16 |u| / eps) limits the reachable gradient to about
        1e-7..1e-8 in L1; the default 1e-6 is met reliably. The transport cost moves by at most
        sup|f| times the marginal error.
    drift_tol : float, optional
        Target of the per-state Newton solves for h (default 1e-12 * max|grid|).
    max_iter : int
        L-BFGS iterations per eps stage.
    eps0, eps_factor : float
        eps-scaling: stages eps0, eps0*eps_factor, ... down to eps (default eps0 = max(eps,
        span of the payoff / 4)).
    warn : bool
        Emit ``ConvergenceWarning`` when the tolerance is not met.

    Returns
    -------
    ChainSolution
    """
    start = time.perf_counter()
    eps = _check_eps(eps)  # a bool or text is no eps
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (lower) or -1 (upper), got {sign!r}")
    if not (0 < eps_factor < 1):
        raise ValueError(f"eps_factor must lie in (0, 1), got {eps_factor!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    prob = _Problem(chain, marginals, reference, sign)
    scale = float(np.max(np.abs(prob.grid)))
    htol = drift_tol if drift_tol is not None else 1e-12 * scale
    last = prob.cost[prob.pairs[prob.T][:, 0], prob.pairs[prob.T][:, 1]]
    span = float(np.ptp(last))
    largest = float(np.max(np.abs(last), initial=0.0))
    if not np.isfinite(largest / eps):  # the Gibbs weights exp(-f / eps) need f / eps
        raise ValueError(f"eps {eps!r} is too small for the payoff's values on the chain (up to "
                         f"{largest:.3g}): f / eps overflows")
    if eps < MIN_EPS_RATIO * max(span, scale):
        raise ValueError(
            f"eps must be at least MIN_EPS_RATIO = {MIN_EPS_RATIO:g} times the problem's scale "
            f"(the payoff's range {span:.3g} on the chain, the grid's {scale:.3g}): below, the "
            f"dual solver stalls in float64 and misses the marginals, got {eps!r}")
    if eps > MAX_EPS_RATIO * max(span, scale):
        raise ValueError(
            f"eps must be at most MAX_EPS_RATIO = {MAX_EPS_RATIO:g} times the problem's scale "
            f"(the payoff's range {span:.3g} on the chain, the grid's {scale:.3g}): beyond, the "
            f"payoff no longer moves the plan in float64, got {eps!r}")
    e0 = max(eps, span / 4.0) if eps0 is None else max(float(eps0), eps)
    stages = [e0]
    while stages[-1] > eps * (1 + 1e-12):
        stages.append(max(eps, stages[-1] * eps_factor))
    # initial point: a_t = 0 on the supports; g = 0
    a = np.where(prob.supp, 0.0, -np.inf)
    g_store = [np.zeros(len(prob.pairs[t])) for t in range(prob.T)]
    history: list[dict] = []
    nit = nfev = 0
    cache: dict = {}
    # Jacobi preconditioning: the Hessian of the dual in a_t(x) is about diag(mu_t(x)), which
    # spans many orders of magnitude on tails; L-BFGS works in z = a sqrt(mu).
    scaling = np.sqrt(prob.pack(prob.mu))
    for k, e in enumerate(stages):
        if k > 0:
            r = stages[k - 1] / e
            a = np.where(prob.supp, a * r, -np.inf)
            g_store = [np.where(np.isfinite(gg), gg * r, 0.0) for gg in g_store]
        t0 = time.perf_counter()
        last = k == len(stages) - 1
        counter = [0]

        def fun(zvec, e=e, counter=counter, g_store=g_store):
            av = prob.unpack(zvec / scaling)
            logbeta, logB, gs, kern, logz = prob.backward(av, e, g_store, htol)
            for t in range(prob.T):
                g_store[t] = np.where(np.isfinite(gs[t]), gs[t], 0.0)
            counter[0] += 1
            if not np.isfinite(logz):
                return np.inf, np.zeros_like(zvec)
            joint = prob.forward(logbeta, logB, kern, logz)
            pm = np.vstack([j.sum(axis=1) for j in joint])
            val = -(float(np.sum(av[prob.supp] * prob.mu[prob.supp])) - logz)
            grad = -(prob.pack(prob.mu) - prob.pack(pm)) / scaling
            cache.update(a=av, kern=kern, joint=joint, gs=gs, logz=logz, pm=pm)
            return val, grad

        z0 = prob.pack(a) * scaling
        gtol = (tol if last else max(tol, 1e-6)) / np.sqrt(max(1, z0.size))
        res = optimize.minimize(fun, z0, jac=True, method="L-BFGS-B",
                                options=dict(maxiter=max_iter, maxcor=30, gtol=gtol,
                                             ftol=0.0 if last else 1e-12, maxls=40))
        # re-evaluate at the returned point so the cache matches it
        fun(res.x)
        a = prob.unpack(res.x / scaling)
        nit += int(res.nit)
        nfev += counter[0]
        merr, drift, value = _diagnostics(prob, cache)
        history.append(dict(eps=e, nit=int(res.nit), marginal_error=merr, drift=drift,
                            value=value, seconds=time.perf_counter() - t0))
    merr, drift, value = _diagnostics(prob, cache)
    dtol = max(10 * htol, 1e-11 * scale)
    success = bool(merr <= tol and drift <= dtol and np.isfinite(value))
    message = (f"converged: marginal error {merr:.2e} <= {tol:.1e}, drift {drift:.2e}"
               if success else
               f"not converged: marginal error {merr:.2e} (target {tol:.1e}), drift {drift:.2e}"
               f" (target {dtol:.1e}) after {nit} iterations at eps={eps:g}")
    if not success and warn:
        warnings.warn(f"augmented entropic solve {message}", ConvergenceWarning, stacklevel=2)
    kern_full, h_full, joint = _expand(prob, cache, eps)
    objective = _objective(prob, cache, eps)
    moves = np.array([
        float(np.sum(cache["joint"][t][prob.pairs[t][:, 0], prob.pairs[t][:, 1]][:, None]
                     * cache["kern"][t] * prob.absd[t]))
        for t in range(prob.T)])
    u = np.where(prob.supp, eps * cache["a"], np.nan)
    return ChainSolution(value=value, objective=objective, sign=sign, eps=eps, success=success,
                         message=message, nit=nit, nfev=nfev, marginal_error=merr, drift=drift,
                         u=u, h=h_full, joint=joint, kernels=kern_full, moves=moves,
                         history=history, seconds=time.perf_counter() - start)


def _diagnostics(prob: _Problem, cache: dict) -> tuple[float, float, float]:
    pm = cache["pm"]
    merr = float(np.abs(pm - prob.mu).sum())
    drift = 0.0
    for t in range(prob.T):
        p = prob.pairs[t]
        mass = cache["joint"][t][p[:, 0], p[:, 1]]
        dr = np.abs((cache["kern"][t] * prob.d[t]).sum(axis=1))
        live = mass > 1e-300
        if live.any():
            drift = max(drift, float(dr[live].max()))
    pT = prob.pairs[prob.T]
    value = float(np.sum(cache["joint"][prob.T][pT[:, 0], pT[:, 1]] * prob.cost[pT[:, 0],
                                                                                pT[:, 1]]))
    return merr, drift, value


def _objective(prob: _Problem, cache: dict, eps: float) -> float:
    """sign*E[f] + eps KL(P|R), returned times sign. KL from the Gibbs form:
    log dP/dR = sum a_t(X_t) + sum g_t (dX) - sign f / eps - log Z, so
    KL = sum_t <a_t, P_t> + sum_t E[g_t dX] - sign E[f]/eps - log Z, and E[g dX] = 0 up to drift.
    """
    pm = cache["pm"]
    a = cache["a"]
    ea = float(np.sum(a[prob.supp] * pm[prob.supp]))
    eg = 0.0
    for t in range(prob.T):
        p = prob.pairs[t]
        mass = cache["joint"][t][p[:, 0], p[:, 1]]
        gt = cache["gs"][t]
        dr = (cache["kern"][t] * prob.d[t]).sum(axis=1)
        ok = np.isfinite(gt)
        eg += float(np.sum(mass[ok] * gt[ok] * dr[ok]))
    _, _, value = _diagnostics(prob, cache)
    kl = ea + eg - prob.sign * value / eps - cache["logz"]
    return prob.sign * (prob.sign * value + eps * kl)


def _expand(prob: _Problem, cache: dict, eps: float):
    kern, h, joint = [], [], list(cache["joint"])
    for t in range(prob.T):
        p = prob.pairs[t]
        kf = np.zeros((prob.m, prob.n[t], prob.m))
        kf[p[:, 0], p[:, 1]] = cache["kern"][t]
        kern.append(kf)
        hf = np.full((prob.m, prob.n[t]), np.nan)
        hf[p[:, 0], p[:, 1]] = eps * cache["gs"][t]
        h.append(hf)
    return kern, h, joint


# ----------------------------------------------------------------------------- bounds
def entropic_bounds(
    marginals: Marginals,
    payoff: Payoff,
    eps: float,
    *,
    reference="product",
    tol: float = 1e-6,
    max_iter: int = 5000,
    eps0: float | None = None,
    eps_factor: float = 0.25,
    sum_grid_size: int | None = None,
    sum_mode: str = "auto",
    chain: AugmentedChain | None = None,
    lp=None,
    warn: bool = True,
):
    """Entropic lower and upper bounds of ``payoff`` on the augmented chain.

    Each side solves ``solve_chain_entropic`` (sign +1 and -1) and reports the transport cost
    <f, pi_eps> of its entropic plan: an inner estimate of [LP min, LP max] whose bias vanishes
    as eps -> 0 (measured rate in docs/benchmarks-model.md).

    Parameters
    ----------
    marginals : Marginals
        In convex order on the grid up to the payoff's last date (checked: ``ValueError``).
    payoff : Payoff
        Any payoff with ``terminal(x, s)`` (European, forward start, Asian, lookback, barrier).
    eps : float
        Regularisation (> 0) in payoff units (moneyness).
    reference, tol, max_iter, eps0, eps_factor
        See ``solve_chain_entropic``.
    sum_grid_size, sum_mode
        Passed to ``build_chain`` (ignored when ``chain`` is given).
    chain : AugmentedChain, optional
        A chain already built for (marginals, payoff).
    lp : BoundsResult or True, optional
        LP bounds to compare with (``True``: solve them with ``lp.lp_bounds`` on the same chain
        options): the entropic bias lower - LP lower (>= 0 up to residuals) and LP upper -
        upper go into ``info`` (``bias_lower``, ``bias_upper``, ``lp_lower``, ``lp_upper``).

    Returns
    -------
    BoundsResult
        ``method="entropic"``, ``eps``; ``lower_side``/``upper_side`` carry the potentials as
        ``Duals(u, h, phi=[])`` (the entropic dual has no flow multipliers) and the plans;
        ``info`` holds per side ``nit``, ``marginal_error``, ``drift``, ``objective``,
        ``history``, ``moves`` (E|dX| per period) and, with ``lp``, the bias.
    """
    from deepquant.mmot.lp import check_convex_order
    from deepquant.mmot.result import BoundSide, BoundsResult, Duals

    # no martingale plan exists otherwise: the Sinkhorn-Newton sweeps would run to max_iter
    check_convex_order(marginals, range(1, payoff.last_date(marginals.n_dates) + 1))
    start = time.perf_counter()
    if chain is None:
        chain = build_chain(marginals, payoff, sum_grid_size=sum_grid_size, sum_mode=sum_mode)
    build_s = time.perf_counter() - start
    sides = {}
    info: dict = dict(n_states=chain.n_states, build_seconds=build_s)
    for name, sign in (("lower", 1), ("upper", -1)):
        sol = solve_chain_entropic(chain, marginals, eps, sign=sign, reference=reference, tol=tol,
                                   max_iter=max_iter, eps0=eps0, eps_factor=eps_factor,
                                   warn=warn)
        duals = Duals(u=sol.u, h=sol.h, phi=[])
        side = BoundSide(value=sol.value, success=sol.success,
                         status="converged" if sol.success else "not_converged",
                         message=sol.message, seconds=sol.seconds,
                         primal_residual=max(sol.marginal_error, sol.drift), duals=duals,
                         plan=[sol.plan(t) for t in range(chain.last_date)])
        sides[name] = (side, sol)
        info[name] = dict(nit=sol.nit, nfev=sol.nfev, marginal_error=sol.marginal_error,
                          drift=sol.drift, objective=sol.objective, history=sol.history,
                          moves=sol.moves.tolist(), solution=sol)
    lo_side, lo_sol = sides["lower"]
    up_side, up_sol = sides["upper"]
    if lp is True:
        from deepquant.mmot.lp import lp_bounds

        lp = lp_bounds(marginals, payoff, sum_mode=sum_mode, sum_grid_size=sum_grid_size)
    if lp is not None:
        info["lp_lower"], info["lp_upper"] = float(lp.lower), float(lp.upper)
        info["bias_lower"] = lo_sol.value - float(lp.lower)
        info["bias_upper"] = float(lp.upper) - up_sol.value
    ok = lo_sol.success and up_sol.success
    msg = "; ".join(f"{n}: {s[1].message}" for n, s in sides.items())
    return BoundsResult(
        lower=lo_sol.value, upper=up_sol.value, method="entropic",
        status="converged" if ok else "not_converged", success=ok, message=msg,
        seconds=dict(lower=lo_sol.seconds, upper=up_sol.seconds, build=build_s),
        sizes=dict(states=int(sum(len(chain.pairs(t)) for t in range(chain.last_date + 1))),
                   variables=int(sum(np.count_nonzero(marginals.weights[t] > 0)
                                     for t in range(chain.last_date + 1)))),
        lower_side=lo_side, upper_side=up_side, eps=eps, exact=chain.exact,
        structure="augmented", info=info)
