"""Exact MMOT bounds by linear programming on the augmented chain (DESIGN §2.2, §2.3, §7).

Variables pi_t(x, s, y) >= 0 for t = 0..T-1 over reachable pairs (X_t, S_t) = (x, s) and points
y of supp(mu_{t+1}): the mass of (X_t, S_t, X_{t+1}). Constraints (multipliers in brackets):

* start       sum_y pi_0(x, s_0(x), y) = mu_0(x)                                   [phi_0(x, s)]
* marginals   sum_{x,s} pi_t(x, s, y) = mu_{t+1}(y),  t = 0..T-1                      [u_{t+1}(y)]
* flow        sum_y' pi_{t+1}(y, s', y') = sum_{x,s} pi_t(x, s, y) K_t(s, y; s')       [phi_{t+1}(y, s')]
* martingale  sum_y pi_t(x, s, y) (y - x) = 0  for every reachable (x, s)              [h_t(x, s)]

and the objective sum pi_{T-1}(x, s, y) sum_s' K_{T-1}(s, y; s') f(y, s'). The martingale rows per
(x, s) make X a martingale in its own filtration (the chain is Markov in (X, S)); the seeds' rows
per x only (``martingale="one-step"``, kept for comparison) are weaker and give wider bounds.

Pairwise payoffs sum_t c_t(X_t, X_{t+1}) decompose into independent one-period LPs (gluing).

Every solve is checked: the primal residual max|A pi - b|, the dual residual (reduced costs of
the wrong sign) and the primal-dual gap are measured on the returned solution and reported.
Only grid points with positive weight enter the LP (zero-weight points are pruned, exactly); no
positive mass is dropped or merged. Solver: HiGHS through ``scipy.optimize.linprog`` with sparse
(CSR) constraint matrices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import AugmentedChain, build_chain, trivial_chain
from deepquant.mmot.highs import DEFAULT_HIGHS_OPTIONS, check_highs_options, cost_scale
from deepquant.mmot.result import BoundSide, BoundsResult, Duals, check_sides, failed_side
from deepquant.payoffs import Payoff, SumSquaredIncrements, check_payoff
from deepquant.results import warn_failure

__all__ = ["ChainLP", "build_chain_lp", "solve_side", "lp_bounds", "check_convex_order",
           "DEFAULT_HIGHS_OPTIONS", "check_highs_options"]  # the last two from ``highs``

MARTINGALE_MODES = ("full", "one-step")
ALGORITHMS = ("direct",)


@dataclass(frozen=True, eq=False)
class ChainLP:
    """The LP of one payoff on one augmented chain (data only; see module docstring).

    Attributes
    ----------
    chain : AugmentedChain
    a_eq : scipy.sparse.csr_matrix, shape (rows_eq, cols)
    b_eq : ndarray, shape (rows_eq,)
    a_ub, b_ub : sparse matrix and ndarray or None
        The relaxed martingale rows (``martingale_tol > 0``).
    cost : ndarray, shape (cols,)
        Objective coefficients (payoff of each variable).
    margs : ndarray, shape (N+1, M)
        The marginal weights.
    pairs : list of ndarray
        ``pairs[t]`` (P_t, 2): (x index, s index) of the variables' rows at t.
    ys : list of ndarray
        ``ys[t]``: grid indices of supp(mu_{t+1}).
    offsets : ndarray, shape (T+1,)
        Variables of period t are ``offsets[t]:offsets[t+1]``, ordered (pair, y).
    rows : dict
        Row offsets of the blocks: ``"start"``, ``"marg"`` (list per t+1), ``"flow"`` (list per
        t, None at 0), ``"mart"`` (list per t).
    martingale : str
    martingale_tol : float
    """

    chain: AugmentedChain
    a_eq: sparse.csr_matrix
    b_eq: np.ndarray
    a_ub: sparse.csr_matrix | None
    b_ub: np.ndarray | None
    cost: np.ndarray
    margs: np.ndarray
    marginals: Marginals
    pairs: list[np.ndarray]
    ys: list[np.ndarray]
    offsets: np.ndarray
    rows: dict
    martingale: str
    martingale_tol: float

    def redundant_rows(self) -> np.ndarray:
        """Equality rows implied by the others (dropped before the solve; see ``solve_side``).

        Per period t the rows are linearly dependent twice: summed over y, the marginal rows of
        date t+1 equal the total outflow at t (given by the start or flow rows), and their
        y-weighted sum equals sum_x x mu_t(x) plus the sum of the martingale rows (X_{t+1} has
        the mean of X_t). So the marginal rows of the two heaviest points y_a != y_b of
        supp(mu_{t+1}) are implied by the rest (two equations in their two values). With
        relaxed (inequality) martingale rows only the first dependency holds: one row.
        Returns the indices (sorted) of the rows to drop.
        """
        drop = []
        per_date = 1 if self.martingale_tol > 0 else 2
        for t, r0 in enumerate(self.rows["marg"]):
            ny = self.ys[t].size
            k = min(per_date, ny)
            if k:
                drop.append(r0 + np.argsort(self.b_eq[r0:r0 + ny], kind="stable")[ny - k:])
        return np.sort(np.concatenate(drop)) if drop else np.zeros(0, dtype=np.int64)

    @property
    def sizes(self) -> dict[str, int]:
        """rows, cols, nnz of the constraint matrix (equalities plus inequalities)."""
        rows = self.a_eq.shape[0] + (0 if self.a_ub is None else self.a_ub.shape[0])
        nnz = self.a_eq.nnz + (0 if self.a_ub is None else self.a_ub.nnz)
        return dict(rows=int(rows), cols=int(self.a_eq.shape[1]), nnz=int(nnz))


def check_convex_order(marginals: Marginals, dates: range | None = None) -> None:
    """Raise ``Marginals.require_convex_order``'s ``ValueError`` for the pairs of ``dates`` not
    in convex order on the grid (tolerance at least 1e-12 relative, for round-off)."""
    m = marginals.with_options(check_convex=False, convex_tol=max(marginals.convex_tol, 1e-12))
    m.require_convex_order(dates=dates, hint=(
        "no martingale has these marginals. Repair them (Marginals.repair_convex_order) or pass "
        "martingale_tol > 0 for the relaxed LP (Guo-Obloj)"))


def build_chain_lp(
    chain: AugmentedChain,
    marginals: Marginals,
    *,
    costs: list[np.ndarray | None] | None = None,
    martingale: str = "full",
    martingale_tol: float = 0.0,
) -> ChainLP:
    """Assemble the sparse LP of the augmented chain.

    Parameters
    ----------
    chain : AugmentedChain
        From ``build_chain`` (or ``trivial_chain`` with ``costs``).
    marginals : Marginals
    costs : list of (M, M) arrays or None, optional
        Extra per-period costs c_t(x, y) added to the objective (pairwise payoffs).
    martingale : {"full", "one-step"}
        ``"full"``: rows per (t, x, s) (exact); ``"one-step"``: rows per (t, x) only (the seeds'
        weaker formulation, for comparison).
    martingale_tol : float
        0: equality rows. > 0: |sum_y pi (y - x)| <= tol * sum_y pi (relaxed mode).
    """
    if martingale not in MARTINGALE_MODES:
        raise ValueError(f"martingale must be one of {MARTINGALE_MODES}, got {martingale!r}")
    if not (np.isfinite(martingale_tol) and martingale_tol >= 0):
        raise ValueError(f"martingale_tol must be a finite number >= 0, got {martingale_tol!r}")
    m = chain.size
    T = chain.last_date
    grid = chain.grid
    width = float(grid[-1] - grid[0])
    if martingale_tol > width:  # |E[dX | x]| <= width always: the rows would bind nothing
        raise ValueError(f"martingale_tol must be at most the grid's width {width:.6g} (no "
                         f"coupling drifts more; beyond it no martingale condition is left), "
                         f"got {martingale_tol!r}")
    mu = np.asarray(marginals.weights, dtype=float)
    pairs = [chain.pairs(t) for t in range(T + 1)]
    pid = []
    for t in range(T + 1):
        tab = -np.ones(chain.reach[t].shape, dtype=np.int64)
        tab[pairs[t][:, 0], pairs[t][:, 1]] = np.arange(len(pairs[t]))
        pid.append(tab)
    ys = [np.flatnonzero(chain.support[t + 1]) for t in range(T)]
    nv = [len(pairs[t]) * ys[t].size for t in range(T)]
    offsets = np.concatenate([[0], np.cumsum(nv)]).astype(np.int64)
    # row blocks
    r = 0
    start = r
    r += len(pairs[0])
    marg = []
    for t in range(T):
        marg.append(r)
        r += ys[t].size
    flow: list[int | None] = [None]
    for t in range(1, T):
        flow.append(r)
        r += len(pairs[t])
    mart_keys = []
    for t in range(T):
        if martingale == "full":
            mart_keys.append(np.arange(len(pairs[t])))
        else:
            _, inv = np.unique(pairs[t][:, 0], return_inverse=True)
            mart_keys.append(inv.reshape(-1))
    relaxed = martingale_tol > 0
    mart = []
    r_ub = 0
    for t in range(T):
        n_rows = int(mart_keys[t].max()) + 1 if mart_keys[t].size else 0
        if relaxed:
            mart.append(r_ub)
            r_ub += 2 * n_rows
        else:
            mart.append(r)
            r += n_rows
    n_rows_eq = r
    b_eq = np.zeros(n_rows_eq)
    x0 = pairs[0][:, 0]
    b_eq[start:start + len(pairs[0])] = mu[0, x0]
    for t in range(T):
        b_eq[marg[t]:marg[t] + ys[t].size] = mu[t + 1, ys[t]]
    ri, ci, vi = [], [], []
    ui, uc, uv = [], [], []
    cost = np.zeros(offsets[-1])
    for t in range(T):
        P = pairs[t]
        n_p, n_y = len(P), ys[t].size
        pp = np.repeat(np.arange(n_p), n_y)
        jj = np.tile(np.arange(n_y), n_p)
        v = offsets[t] + np.arange(n_p * n_y)
        yv = ys[t][jj]
        dx = grid[yv] - grid[P[pp, 0]]
        ri += [(start if t == 0 else flow[t]) + pp, marg[t] + jj]
        ci += [v, v]
        vi += [np.ones(v.size), np.ones(v.size)]
        key = mart_keys[t][pp]
        if relaxed:
            ui += [mart[t] + 2 * key, mart[t] + 2 * key + 1]
            uc += [v, v]
            uv += [dx - martingale_tol, -dx - martingale_tol]
        else:
            ri.append(mart[t] + key)
            ci.append(v)
            vi.append(dx)
        k = chain.transitions[t][P[pp, 1] * m + yv].tocoo()
        if t + 1 < T:
            q = pid[t + 1][yv[k.row], k.col]
            if np.any(q < 0):
                raise RuntimeError("augmented chain reach masks are inconsistent")  # internal
            ri.append(flow[t + 1] + q)
            ci.append(v[k.row])
            vi.append(-k.data)
        else:
            cost[v] += np.bincount(k.row, k.data * chain.terminal[yv[k.row], k.col],
                                   minlength=v.size)
        if costs is not None and costs[t] is not None:
            cost[v] += np.asarray(costs[t])[P[pp, 0], yv]
    if not vi:  # T = 0: no variables
        ri, ci, vi = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    a_eq = sparse.csr_matrix((np.concatenate(vi), (np.concatenate(ri), np.concatenate(ci))),
                             shape=(n_rows_eq, offsets[-1]))
    a_ub = b_ub = None
    if relaxed:
        a_ub = sparse.csr_matrix((np.concatenate(uv), (np.concatenate(ui), np.concatenate(uc))),
                                 shape=(r_ub, offsets[-1]))
        b_ub = np.zeros(r_ub)
    return ChainLP(chain=chain, a_eq=a_eq, b_eq=b_eq, a_ub=a_ub, b_ub=b_ub, cost=cost, margs=mu,
                   marginals=marginals,
                   pairs=pairs, ys=ys, offsets=offsets,
                   rows=dict(start=start, marg=marg, flow=flow, mart=mart),
                   martingale=martingale, martingale_tol=float(martingale_tol))


def _constant_value(chain: AugmentedChain) -> float:
    """E[f] when T = 0 (no variables)."""
    s0 = chain.initial.toarray()
    return float(np.sum(chain.law0[:, None] * s0 * chain.terminal))


def solve_side(lp: ChainLP, sense: str, *, highs_options: dict | None = None,
               return_plan: bool = False, method: str = "highs-ipm",
               algorithm: str = "direct") -> BoundSide:
    """Solve one side (``"lower"`` = min, ``"upper"`` = max) of ``lp`` with HiGHS.

    Returns the value, status, measured residuals, gap, the duals mapped to (u_t, h_t, phi_t)
    with the sign convention of the side (upper: the portfolio dominates the payoff), and
    optionally the plan.

    ``algorithm="direct"`` (default) passes the whole sparse LP to
    ``scipy.optimize.linprog(method=method)`` (HiGHS interior point with crossover by default).
    Column generation on the chain LP (without building it) lives in ``deepquant.mmot.colgen``,
    used by the certified method.
    Grids beyond the reach of one LP go to ``deepquant.mmot.multiscale`` (certified bounds by
    the concave-envelope sweep, DESIGN §2.8).
    """
    if sense not in ("lower", "upper"):
        raise ValueError(f"sense must be 'lower' or 'upper', got {sense!r}")
    chain = lp.chain
    T = chain.last_date
    sign = 1.0 if sense == "lower" else -1.0
    t0 = time.perf_counter()
    if T == 0 or lp.a_eq.shape[1] == 0:
        val = _constant_value(chain)
        return BoundSide(val, True, "optimal", "no free variables (payoff known at date 0)",
                         time.perf_counter() - t0, 0.0, 0.0, 0.0)
    opts = check_highs_options(highs_options)
    c = sign * lp.cost
    scale = cost_scale(c)  # solved on c / scale, its duals scaled back
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r} (column "
                         "generation: bounds(..., method='certified'))")
    info: dict = {}
    # drop the rows implied by the others: the full system is rank deficient by two per
    # period, which made HiGHS's interior point finish "imprecise" and fall back to a long
    # simplex clean-up (10-12 s -> 7-8 s per side on the benchmark case); the dropped rows
    # get zero duals (a valid dual of the full LP) and the residuals below are measured on
    # ALL rows
    keep = np.ones(lp.a_eq.shape[0], dtype=bool)
    keep[lp.redundant_rows()] = False
    res = optimize.linprog(c / scale, A_eq=lp.a_eq[keep], b_eq=lp.b_eq[keep], A_ub=lp.a_ub,
                           b_ub=lp.b_ub, bounds=(0, None), method=method, options=opts)
    status, message, x = int(res.status), str(res.message), res.x
    if x is not None and status == 0:
        y_eq = np.zeros(lp.a_eq.shape[0])
        y_eq[keep] = np.asarray(res.eqlin.marginals) * scale
        y_ub = None if lp.a_ub is None else np.asarray(res.ineqlin.marginals) * scale
    seconds = time.perf_counter() - t0
    if status != 0 or x is None:
        msg = f"HiGHS status {status}: {message}"
        if status == 2:
            msg += (" (infeasible: the marginals admit no martingale coupling on the grid"
                    + (f" within martingale_tol={lp.martingale_tol:g}" if lp.martingale_tol
                       else "") + ")")
        return failed_side(status, msg, seconds)
    resid = lp.a_eq @ x - lp.b_eq
    primal = max(float(np.max(np.abs(resid))) if resid.size else 0.0, float(max(0.0, -x.min())))
    reduced = c - lp.a_eq.T @ y_eq
    dual_obj = float(lp.b_eq @ y_eq)
    if lp.a_ub is not None:
        primal = max(primal, float(np.max(lp.a_ub @ x - lp.b_ub, initial=0.0)))
        reduced = reduced - lp.a_ub.T @ y_ub
        dual_obj += float(lp.b_ub @ y_ub)
        dual_res = max(float(max(0.0, -reduced.min())), float(max(0.0, y_ub.max(initial=0.0))))
    else:
        dual_res = float(max(0.0, -reduced.min()))
    primal_obj = float(c @ x)
    gap = abs(primal_obj - dual_obj)
    duals = _map_duals(lp, sign * y_eq, None if y_ub is None else sign * y_ub)
    plan = _plan(lp, x) if return_plan else None
    value = sign * primal_obj
    return BoundSide(value, True, "optimal", message, seconds, primal, dual_res, gap, duals,
                     plan, info)


def _map_duals(lp: ChainLP, y: np.ndarray, y_ub: np.ndarray | None) -> Duals:
    chain = lp.chain
    m, T = chain.size, chain.last_date
    u = np.full((T + 1, m), np.nan)
    phi = [np.full(r.shape, np.nan) for r in chain.reach]
    h = [np.full(r.shape, np.nan) for r in chain.reach[:T]]
    P0 = lp.pairs[0]
    st = lp.rows["start"]
    phi[0][P0[:, 0], P0[:, 1]] = y[st:st + len(P0)]
    u[0, P0[:, 0]] = y[st:st + len(P0)]
    for t in range(T):
        mg = lp.rows["marg"][t]
        u[t + 1, lp.ys[t]] = y[mg:mg + lp.ys[t].size]
        P = lp.pairs[t]
        if t >= 1:
            fl = lp.rows["flow"][t]
            phi[t][P[:, 0], P[:, 1]] = y[fl:fl + len(P)]
        if lp.martingale == "full" and y_ub is None:
            mt = lp.rows["mart"][t]
            h[t][P[:, 0], P[:, 1]] = y[mt:mt + len(P)]
        elif lp.martingale == "full":
            mt = lp.rows["mart"][t]
            k = np.arange(len(P))
            # relaxed rows: y_ub[2k] on (dx - tol), y_ub[2k+1] on (-dx - tol)
            h[t][P[:, 0], P[:, 1]] = y_ub[mt + 2 * k] - y_ub[mt + 2 * k + 1]
        else:
            _, inv = np.unique(P[:, 0], return_inverse=True)
            mt = lp.rows["mart"][t]
            if y_ub is None:
                h[t][P[:, 0], P[:, 1]] = y[mt + inv.reshape(-1)]
            else:
                k = inv.reshape(-1)
                h[t][P[:, 0], P[:, 1]] = y_ub[mt + 2 * k] - y_ub[mt + 2 * k + 1]
    # u_T is absorbed into the last marginal rows; phi_T = payoff
    phi[T] = np.where(chain.reach[T], chain.terminal, np.nan)
    return Duals(u=u, h=h, phi=phi)


def _plan(lp: ChainLP, x: np.ndarray) -> list[np.ndarray]:
    chain = lp.chain
    m = chain.size
    out = []
    for t in range(chain.last_date):
        P = lp.pairs[t]
        block = x[lp.offsets[t]:lp.offsets[t + 1]].reshape(len(P), lp.ys[t].size)
        arr = np.zeros((m, chain.reach[t].shape[1], m))
        arr[P[:, 0][:, None], P[:, 1][:, None], lp.ys[t][None, :]] = block
        out.append(arr)
    return out


def _status(lo: BoundSide, up: BoundSide) -> tuple[str, bool, str]:
    ok = lo.success and up.success
    if ok:
        return "optimal", True, "both sides optimal"
    bad = [f"{n}: {s.message}" for n, s in (("lower", lo), ("upper", up)) if not s.success]
    return "failed", False, "; ".join(bad)


def lp_bounds(
    marginals: Marginals,
    payoff: Payoff,
    *,
    decompose: bool = True,
    sum_mode: str = "auto",
    sum_grid_size: int | None = None,
    martingale: str = "full",
    martingale_tol: float = 0.0,
    highs_options: dict | None = None,
    return_plan: bool = False,
    sides: tuple[str, ...] = ("lower", "upper"),
    algorithm: str = "direct",
) -> BoundsResult:
    """Lower and upper bounds of E[payoff] over martingale laws with ``marginals`` (exact LP).

    Parameters
    ----------
    marginals : Marginals
    payoff : Payoff
    decompose : bool
        Use independent one-period LPs when the payoff is pairwise (default True).
    sum_mode, sum_grid_size
        Running-sum state (see ``deepquant.mmot.augment.build_chain``).
    martingale : {"full", "one-step"}
        ``"one-step"`` is the seeds' weaker formulation (wider bounds), for comparison only.
    martingale_tol : float
        0 (exact) or the relaxed-mode tolerance on |E[X_{t+1} - X_t | X_t, S_t]|.
    highs_options : dict, optional
        Passed to ``scipy.optimize.linprog(method="highs")`` over ``DEFAULT_HIGHS_OPTIONS``
        (names checked by ``check_highs_options``).
    return_plan : bool
        Keep the optimal plans pi_t(x, s, y).
    sides : tuple of str
        Which sides to solve.
    algorithm : {"direct"}
        One direct HiGHS solve of the full sparse LP (column generation on the chain:
        ``method="certified"`` of ``bounds``).
    """
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    check_payoff(payoff)
    check_sides(sides)
    check_highs_options(highs_options)
    n = marginals.n_dates
    terms = payoff.pairwise(n)
    if terms is None and isinstance(payoff, SumSquaredIncrements):
        raise ValueError("sum-squared-increments needs at least two dates")
    pairwise = terms is not None and (decompose or isinstance(payoff, SumSquaredIncrements))
    if martingale_tol == 0:
        last = payoff.last_date(n) if not pairwise else max(t for t, _ in terms) + 1
        check_convex_order(marginals, range(1, last + 1))
    t_build = time.perf_counter()
    if pairwise:
        return _pairwise_bounds(marginals, payoff.pairwise_costs(n, marginals.grid),
                                martingale_tol=martingale_tol,
                                highs_options=highs_options, sides=sides, t_build=t_build,
                                algorithm=algorithm)
    chain = build_chain(marginals, payoff, sum_mode=sum_mode, sum_grid_size=sum_grid_size)
    lp = build_chain_lp(chain, marginals, martingale=martingale, martingale_tol=martingale_tol)
    build = time.perf_counter() - t_build
    res = {s: solve_side(lp, s, highs_options=highs_options, return_plan=return_plan,
                         algorithm=algorithm) for s in sides}
    missing = BoundSide(float("nan"), True, "not_requested", "not requested", 0.0)
    lo, up = res.get("lower", missing), res.get("upper", missing)
    status, ok, msg = _status(lo, up)
    result = BoundsResult(
        lower=lo.value, upper=up.value, method="lp", status=status, success=ok, message=msg,
        seconds=dict(lower=lo.seconds, upper=up.seconds, build=build), sizes=lp.sizes,
        lower_side=lo if "lower" in res else None, upper_side=up if "upper" in res else None,
        exact=chain.exact, martingale_tol=float(martingale_tol), structure="augmented",
        info=dict(states=chain.n_states, kind=chain.kind, martingale=martingale,
                  support=[int(s.sum()) for s in chain.support], chain=chain),
    )
    warn_failure(result, "LP bounds")
    return result


def _pairwise_bounds(marginals, by_t, *, martingale_tol, highs_options, sides, t_build,
                     algorithm):
    m = marginals.size
    T = max(by_t) + 1
    costs = [by_t[t] if t in by_t else np.zeros((m, m)) for t in range(T)]
    sizes = dict(rows=0, cols=0, nnz=0)
    out = {}
    build = time.perf_counter() - t_build
    lps = []
    for t in sorted(by_t):
        t0 = time.perf_counter()
        sub = marginals.select([t, t + 1]).with_options(check_convex=False)
        chain = trivial_chain(sub, 1)
        lp = build_chain_lp(chain, sub, costs=[costs[t]], martingale_tol=martingale_tol)
        build += time.perf_counter() - t0
        lps.append((t, lp))
        for k, v in lp.sizes.items():
            sizes[k] += v
    for s in sides:
        u = np.zeros((T + 1, m))
        h = [np.zeros((m, 1)) for _ in range(T)]
        value, secs, ok, status, msgs = 0.0, 0.0, True, "optimal", []
        primal = dual = gap = 0.0
        for t, lp in lps:
            side = solve_side(lp, s, highs_options=highs_options, algorithm=algorithm)
            secs += side.seconds
            if not side.success:
                ok, status = False, side.status if ok else status   # the first failure
                msgs.append(f"period {t}: {side.message}")
                continue
            value += side.value
            primal, dual, gap = (max(primal, side.primal_residual),
                                 max(dual, side.dual_residual), gap + side.gap)
            d = side.duals
            u[t] += np.nan_to_num(d.u[0])
            u[t + 1] += np.nan_to_num(d.u[1])
            h[t] = d.h[0]
        supp = marginals.weights[: T + 1] > 0
        u = np.where(supp, u, np.nan)
        duals = Duals(u=u, h=h, phi=[np.where(sp[:, None], 0.0, np.nan) for sp in supp],
                      costs=costs)
        out[s] = BoundSide(value if ok else float("nan"), ok, status,
                           "; ".join(msgs) if msgs else "optimal", secs, primal, dual, gap,
                           duals if ok else None)
    missing = BoundSide(float("nan"), True, "not_requested", "not requested", 0.0)
    lo, up = out.get("lower", missing), out.get("upper", missing)
    status, ok, msg = _status(lo, up)
    result = BoundsResult(
        lower=lo.value, upper=up.value, method="lp", status=status, success=ok, message=msg,
        seconds=dict(lower=lo.seconds, upper=up.seconds, build=build), sizes=sizes,
        lower_side=out.get("lower"), upper_side=out.get("upper"), exact=True,
        martingale_tol=float(martingale_tol), structure="pairwise",
        info=dict(periods=sorted(by_t), last_date=T),
    )
    warn_failure(result, "LP bounds")
    return result


def _glued_kernels(chain: AugmentedChain, margs: np.ndarray) -> np.ndarray | None:
    """Kernels (T, M, M) of one-period martingale couplings (LP vertices) of mu_t, mu_{t+1}:
    glued, a feasible start of the master. None if a coupling is not found."""
    m = chain.size
    grid = chain.grid
    out = np.zeros((chain.last_date, m, m))
    for t in range(chain.last_date):
        xs = np.flatnonzero(chain.support[t])
        ys = np.flatnonzero(chain.support[t + 1])
        plan = _feasible_martingale_plan(grid[xs], grid[ys], margs[t, xs], margs[t + 1, ys])
        if plan is None:
            return None
        out[t][np.ix_(xs, ys)] = plan_kernel(plan, xs, ys)
    return out


def plan_kernel(plan: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Row-normalised kernel (n_x, n_y) of a one-period plan from the points ``xs`` to ``ys``
    (grid indices); a row the solver left empty (mass below its tolerance) stays put where
    its point is in ``ys``."""
    plan = np.maximum(plan, 0.0)
    rs = plan.sum(axis=1, keepdims=True)
    ker = np.where(rs > 0, plan / np.where(rs > 0, rs, 1.0), 0.0)
    for a in np.flatnonzero(rs[:, 0] <= 0):
        pos = np.flatnonzero(ys == xs[a])
        if pos.size:
            ker[a, pos[0]] = 1.0
    return ker


def _feasible_martingale_plan(x: np.ndarray, y: np.ndarray, mu: np.ndarray, nu: np.ndarray
                              ) -> np.ndarray | None:
    """Some one-period martingale plan (n_x, n_y) from ``mu`` on ``x`` to ``nu`` on ``y`` (a
    feasibility LP by HiGHS dual simplex), or None if HiGHS finds none.

    The martingale rows are divided by the largest |point|, so that HiGHS's absolute
    feasibility tolerance means the same on every grid scale (measured on a 40-point
    Black-Scholes pair: with the rows in grid units the plan's largest martingale residual,
    relative to the scale, was 0.027 on a grid scaled by 1e-9 and 2e-8 by 1e-6; scaled rows:
    at most 2e-10 from 1e-9 to 1e9)."""
    n_x, n_y = x.size, y.size
    scale = float(max(np.max(np.abs(x), initial=0.0), np.max(np.abs(y), initial=0.0))) or 1.0
    dx = (y[None, :] - x[:, None]) / scale
    rows = sparse.vstack([
        sparse.kron(sparse.identity(n_x), np.ones((1, n_y))),
        sparse.kron(np.ones((1, n_x)), sparse.identity(n_y)),
        sparse.csr_matrix((dx.ravel(), (np.repeat(np.arange(n_x), n_y),
                                        np.arange(n_x * n_y))), shape=(n_x, n_x * n_y)),
    ]).tocsr()
    b = np.concatenate([mu, nu, np.zeros(n_x)])
    for opts in (dict(presolve=False, primal_feasibility_tolerance=1e-10),
                 dict(presolve=True, primal_feasibility_tolerance=1e-10)):
        # presolve can report false infeasibility with tiny masses (DESIGN §7)
        res = optimize.linprog(np.zeros(n_x * n_y), A_eq=rows, b_eq=b, bounds=(0, None),
                               method="highs-ds", options=opts)
        if res.status == 0:
            return res.x.reshape(n_x, n_y)
    return None
