"""The full path-space LP: the test oracle for tiny problems (DESIGN §2.3).

Variables p(omega) >= 0 for every path omega = (x_0, ..., x_N) through the supports of the
marginals (prod_t |supp mu_t| paths, all N+1 dates). Constraints:

* marginals   sum_{omega: x_t = y} p(omega) = mu_t(y)  for every t, y;
* martingale  sum_{omega extends (x_0..x_t)} p(omega) (x_{t+1} - x_t) = 0  for every prefix
  (natural filtration of X), t = 0..N-1.

The objective is ``payoff.evaluate`` on the paths, so the oracle shares no code with the
augmented chain. ``filtration="one-step"`` replaces the prefix rows by rows per (t, x_t) only,
the seeds' weaker constraint E[X_{t+1} - X_t | X_t] = 0, for comparison.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import optimize, sparse

from deepquant.market.marginals import Marginals
from deepquant.mmot.highs import check_highs_options
from deepquant.mmot.lp import check_convex_order
from deepquant.mmot.result import BoundSide, BoundsResult, failed_side
from deepquant.payoffs import Payoff
from deepquant.results import warn_failure

__all__ = ["path_lp_bounds", "FILTRATIONS"]

FILTRATIONS = ("natural", "one-step")


def path_lp_bounds(
    marginals: Marginals,
    payoff: Payoff,
    *,
    filtration: str = "natural",
    max_paths: int = 200_000,
    highs_options: dict | None = None,
    return_plan: bool = False,
) -> BoundsResult:
    """Bounds of E[payoff] by the LP over all grid paths (tiny problems only).

    Parameters
    ----------
    marginals : Marginals
    payoff : Payoff
    filtration : {"natural", "one-step"}
        ``"natural"``: the martingale property (exact); ``"one-step"``: the weaker seed rows.
    max_paths : int
        Refuse (``ValueError``) problems with more paths.
    highs_options : dict, optional
    return_plan : bool
        Put the paths (n_paths, N+1) and their optimal masses per side in ``info``.
    """
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    if filtration not in FILTRATIONS:
        raise ValueError(f"filtration must be one of {FILTRATIONS}, got {filtration!r}")
    check_convex_order(marginals)
    t_build = time.perf_counter()
    grid = np.asarray(marginals.grid, dtype=float)
    w = np.asarray(marginals.weights, dtype=float)
    supports = [np.flatnonzero(row > 0) for row in w]
    n_paths = int(np.prod([s.size for s in supports], dtype=np.float64))
    if n_paths > max_paths:
        raise ValueError(
            f"path-lp needs {n_paths} paths (prod of support sizes "
            f"{[int(s.size) for s in supports]}) > max_paths={max_paths}; use method='lp'"
        )
    n_dates = len(supports)
    mesh = np.meshgrid(*[np.arange(s.size) for s in supports], indexing="ij")
    local = np.stack([g.ravel() for g in mesh], axis=1)  # (n_paths, N+1) support positions
    idx = np.stack([supports[t][local[:, t]] for t in range(n_dates)], axis=1)
    paths = grid[idx]
    cost = payoff.on_grid(payoff.evaluate, paths)
    cols = np.arange(n_paths)
    ri, ci, vi, b = [], [], [], []
    r = 0
    for t in range(n_dates):
        ri.append(r + local[:, t])
        ci.append(cols)
        vi.append(np.ones(n_paths))
        b.append(w[t, supports[t]])
        r += supports[t].size
    for t in range(n_dates - 1):
        if filtration == "natural":
            key = np.ravel_multi_index(local[:, : t + 1].T, [s.size for s in supports[: t + 1]])
        else:
            key = local[:, t]
        _, inv = np.unique(key, return_inverse=True)
        inv = inv.reshape(-1)
        ri.append(r + inv)
        ci.append(cols)
        vi.append(paths[:, t + 1] - paths[:, t])
        b.append(np.zeros(int(inv.max()) + 1))
        r += int(inv.max()) + 1
    a_eq = sparse.csr_matrix((np.concatenate(vi), (np.concatenate(ri), np.concatenate(ci))),
                             shape=(r, n_paths))
    b_eq = np.concatenate(b)
    build = time.perf_counter() - t_build
    opts = check_highs_options(highs_options)
    sides = {}
    plans = {}
    for name, sign in (("lower", 1.0), ("upper", -1.0)):
        t0 = time.perf_counter()
        res = optimize.linprog(sign * cost, A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                               method="highs", options=opts)
        secs = time.perf_counter() - t0
        if res.status != 0 or res.x is None:
            sides[name] = failed_side(res.status, f"HiGHS status {res.status}: {res.message}",
                                      secs)
            continue
        x = res.x
        y = np.asarray(res.eqlin.marginals)
        primal = max(float(np.max(np.abs(a_eq @ x - b_eq))), float(max(0.0, -x.min())))
        reduced = sign * cost - a_eq.T @ y
        gap = abs(float(sign * cost @ x) - float(b_eq @ y))
        sides[name] = BoundSide(float(cost @ x), True, "optimal", str(res.message), secs,
                                primal, float(max(0.0, -reduced.min())), gap)
        plans[name] = x
    lo, up = sides["lower"], sides["upper"]
    ok = lo.success and up.success
    msg = "both sides optimal" if ok else "; ".join(
        f"{n}: {s.message}" for n, s in sides.items() if not s.success)
    info: dict = dict(n_paths=n_paths, filtration=filtration)
    if return_plan:
        info.update(paths=paths, plans=plans)
    out = BoundsResult(
        lower=lo.value, upper=up.value, method="path-lp", status="optimal" if ok else "failed",
        success=ok, message=msg, seconds=dict(lower=lo.seconds, upper=up.seconds, build=build),
        sizes=dict(rows=int(a_eq.shape[0]), cols=int(a_eq.shape[1]), nnz=int(a_eq.nnz)),
        lower_side=lo, upper_side=up, exact=True, structure="paths", info=info,
    )
    warn_failure(out, "path LP")
    return out
