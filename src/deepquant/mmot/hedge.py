"""Semi-static superhedges from the LP dual, and a pathwise verifier (DESIGN §2.6).

The upper-bound hedge holds static payoffs u_t(X_t) (bought at date 0 as a strip of puts and
calls on the grid strikes, cash and a forward) and trades h_t(X_t, S_t) units of the underlying
between t and t+1:

    Pi(path) = sum_{t=0}^T u_t(X_t) + sum_{t<T} h_t(X_t, S_t) (X_{t+1} - X_t)  >=  f(path)

on every path through the supports (the lower-bound hedge has <=). Its cost is
sum_t E_{mu_t}[u_t(X_t)] (the forward position costs nothing: mean = forward).

Construction: the static parts u_t (t >= 1) are taken from the LP duals of the marginal rows;
u_0 and h are then recomputed by the superhedging recursion of ``deepquant.mmot.lp``

    W_T = f - u_T,  W_t(x, s) = conc_y [ sum_s' K_t(s, y; s') W_{t+1}(y, s') ] (x) - u_t(x),

with h_t(x, s) a supergradient of the concave envelope at x, so dominance holds by construction
(up to rounding) and the cost equals the LP bound up to the LP's dual accuracy. Pairwise payoffs
keep their per-period duals. With a running-sum grid (linear splitting) the chain's S is random
given the X path and dominance holds in expectation over the split (the approximate chain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import AugmentedChain, build_chain, trivial_chain
from deepquant.mmot.result import BoundsResult
from deepquant.mmot.sweep import hull_backward
from deepquant.payoffs import Payoff, check_payoff

__all__ = ["StaticStrip", "SemiStaticHedge", "HedgeCheck", "superhedge", "verify_hedge"]


@dataclass(frozen=True, eq=False)
class StaticStrip:
    """A static payoff u(X_t) = cash + delta (X_t - F) + sum puts + sum calls on grid strikes.

    Puts are used for strikes below the forward F (the mean of mu_t), calls at or above it.
    The strip equals u at the support points of mu_t and interpolates linearly between them.
    """

    date: int
    forward: float
    cash: float
    delta: float
    put_strikes: np.ndarray
    put_weights: np.ndarray
    call_strikes: np.ndarray
    call_weights: np.ndarray

    def value(self, x: np.ndarray) -> np.ndarray:
        """Payoff at X_t = x (any shape)."""
        x = np.asarray(x, dtype=float)
        out = self.cash + self.delta * (x - self.forward)
        out = out + np.sum(self.put_weights * np.maximum(self.put_strikes - x[..., None], 0.0),
                           axis=-1)
        out = out + np.sum(self.call_weights * np.maximum(x[..., None] - self.call_strikes, 0.0),
                           axis=-1)
        return out

    def price(self, marginals: Marginals) -> float:
        """Cost at date 0: cash + puts and calls priced on mu_t (the forward costs nothing)."""
        put = marginals.put_prices(self.put_strikes)[self.date] if self.put_strikes.size else []
        call = marginals.call_prices(self.call_strikes)[self.date] \
            if self.call_strikes.size else []
        return float(self.cash + np.dot(self.put_weights, put) + np.dot(self.call_weights, call))

    @classmethod
    def from_values(cls, date: int, points: np.ndarray, values: np.ndarray,
                    forward: float) -> StaticStrip:
        """The strip interpolating ``values`` at the sorted ``points`` (support of mu_t)."""
        z = np.asarray(points, dtype=float)
        v = np.asarray(values, dtype=float)
        if z.size == 1:
            e = np.zeros(0)
            return cls(date, forward, float(v[0]), 0.0, e, e, e, e)
        sl = np.diff(v) / np.diff(z)
        a, b = v[0] - sl[0] * z[0], sl[0]
        k = z[1:-1]
        w = np.diff(sl)
        puts = k < forward
        a -= float(np.sum(w[puts] * k[puts]))
        b += float(np.sum(w[puts]))
        return cls(date, forward, float(a + b * forward), float(b), k[puts], w[puts],
                   k[~puts], w[~puts])


@dataclass(frozen=True, eq=False)
class SemiStaticHedge:
    """A semi-static hedge of one side of the bounds.

    Attributes
    ----------
    side : str
        ``"upper"`` (portfolio >= payoff) or ``"lower"`` (portfolio <= payoff).
    strips : list of StaticStrip
        Static payoff per date 0..T.
    h : list of ndarray
        ``h[t]`` of shape (M, n_t): units of X held from t to t+1 at (X_t, S_t); NaN where the
        pair is unreachable.
    chain : AugmentedChain
        The state space the positions refer to.
    costs : list of ndarray or None
        Per-period payoff terms (pairwise payoffs), shape (M, M).
    cost : float
        Price of the static strips, sum_t E_{mu_t}[u_t].
    bound : float
        The LP bound of this side, for comparison.
    marginals, payoff : Marginals, Payoff or None
        The problem the hedge was built for (``verify_hedge``'s defaults).
    """

    side: str
    strips: list[StaticStrip]
    h: list[np.ndarray]
    chain: AugmentedChain
    costs: list[np.ndarray] | None
    cost: float
    bound: float
    marginals: Marginals | None = field(default=None, repr=False)
    payoff: Payoff | None = field(default=None, repr=False)

    def static_values(self) -> np.ndarray:
        """u_t on the grid, shape (T+1, M)."""
        return np.vstack([s.value(self.chain.grid) for s in self.strips])


@dataclass(frozen=True)
class HedgeCheck:
    """Result of ``verify_hedge``.

    Attributes
    ----------
    ok : bool
        Dominance holds on every path within ``atol`` and the cost matches the bound.
    margin : float
        min over paths of (portfolio - payoff) for the upper side, (payoff - portfolio) for the
        lower one; >= -atol when the hedge dominates.
    cost, bound : float
    cost_error : float
        |cost - bound|.
    n_paths : int
        Number of grid paths covered (prod of support sizes over dates 0..T).
    """

    ok: bool
    margin: float
    cost: float
    bound: float
    cost_error: float
    n_paths: int


def _require_same(marginals: Any, payoff: Any, own_marginals: Any, own_payoff: Any,
                  what: str, grid: np.ndarray | None = None) -> None:
    """A ``ValueError`` when ``marginals`` or ``payoff`` (given) are not ``what``'s own (the
    potentials and the chain belong to those; a check or a hedge on others would not hold for
    them). Without own marginals, the given ones must at least be on ``grid``."""
    hint = "solve bounds(marginals, payoff) for them and take its superhedge"
    if marginals is not None:
        if not isinstance(marginals, Marginals):
            raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
        if own_marginals is not None:
            same = (np.array_equal(marginals.grid, own_marginals.grid)
                    and np.array_equal(marginals.weights, own_marginals.weights))
        else:
            same = grid is None or np.array_equal(marginals.grid, grid)
        if not same:
            raise ValueError(f"marginals {marginals!r} are not the ones {what} was built on "
                             f"({own_marginals!r}); {hint}")
    if payoff is not None:
        check_payoff(payoff)
        if own_payoff is not None and payoff != own_payoff:
            raise ValueError(f"payoff {payoff!r} is not the one {what} was built for "
                             f"({own_payoff!r}); {hint}")


def _problem_inputs(result, marginals, payoff, where: str):
    """``marginals`` and ``payoff``, defaulting to the ones ``result.problem`` carries (other
    ones than those are refused)."""
    problem = getattr(result, "problem", None)
    _require_same(marginals, payoff, getattr(problem, "marginals", None),
                  getattr(problem, "payoff", None), "the result")
    if marginals is None:
        marginals = getattr(problem, "marginals", None)
    if payoff is None:
        payoff = getattr(problem, "payoff", None)
    if marginals is None or payoff is None:
        raise ValueError(f"{where}: pass marginals and payoff (this result carries no problem; "
                         "results of deepquant.mmot.bounds do)")
    return marginals, payoff


def superhedge(result: BoundsResult, marginals: Marginals | None = None,
               payoff: Payoff | None = None, side: str = "upper") -> SemiStaticHedge:
    """The semi-static hedge of ``side`` from a ``BoundsResult`` of the LP or the certified
    method: the static potentials u_t of the dual, and the cheapest positions h_t(x, s) and
    date-0 payoff for them by the exact concave-envelope sweep (DESIGN §2.8).

    ``marginals`` and ``payoff`` default to the result's ``problem`` (set by ``bounds``), so
    ``superhedge(bounds(m, f), side="lower")`` is enough. The hedge keeps them for
    ``verify_hedge``."""
    if side not in ("lower", "upper"):
        raise ValueError(f"side must be 'lower' or 'upper', got {side!r}")
    marginals, payoff = _problem_inputs(result, marginals, payoff, "superhedge")
    if result.martingale_tol:
        raise ValueError(
            f"this result is from the relaxed LP (martingale_tol={result.martingale_tol:g}): its "
            "dual is not a semi-static hedge in the underlying; use martingale_tol=0")
    bs = result.upper_side if side == "upper" else result.lower_side
    if bs is None or not bs.success or bs.duals is None:
        raise ValueError(f"the {side} side of this result has no dual solution "
                         f"(method={result.method!r}, status={result.status!r})")
    sign = 1.0 if side == "upper" else -1.0
    d = bs.duals
    mu = np.asarray(marginals.weights, dtype=float)
    grid = np.asarray(marginals.grid, dtype=float)
    if d.costs is not None:  # pairwise: per-period duals, tightened per period
        T = len(d.h)
        chain = trivial_chain(marginals, T)
        costs = [np.asarray(c, dtype=float) for c in d.costs]
        u = np.nan_to_num(np.asarray(d.u, dtype=float) * sign, nan=0.0)
        h = [sign * np.nan_to_num(hh, nan=0.0) for hh in d.h]
        u0 = _tighten_pairwise(chain, costs, u, h, sign)
        u[0] = u0
        h = [np.where(chain.reach[t], hh, np.nan) for t, hh in enumerate(h)]
    else:
        chain = result.info.get("chain") if result.info else None
        if chain is None:
            chain = build_chain(marginals, payoff)
        T = chain.last_date
        p = np.nan_to_num(np.asarray(d.u, dtype=float) * sign, nan=0.0)
        p[0] = 0.0
        _, H, V = hull_backward(chain, marginals, sign, p)
        u = p.copy()
        u[0] = np.sum(chain.initial.toarray() * np.nan_to_num(V[0], nan=0.0), axis=1)
        h = [np.where(chain.reach[t], H[t], np.nan) for t in range(T)]
        costs = None
    strips = []
    for t in range(T + 1):
        pts = np.flatnonzero(mu[t] > 0)
        strips.append(StaticStrip.from_values(t, grid[pts], sign * u[t, pts], float(mu[t] @ grid)))
    h = [sign * hh for hh in h]
    cost = float(sum(s.price(marginals) for s in strips))
    bound = result.upper if side == "upper" else result.lower
    return SemiStaticHedge(side=side, strips=strips, h=h, chain=chain, costs=costs, cost=cost,
                           bound=float(bound), marginals=marginals, payoff=payoff)


def _tighten_pairwise(chain, costs, u, h, sign):
    """u_0 as the smallest value keeping per-path dominance given u_t (t >= 1) and h."""
    grid = chain.grid
    T = len(h)
    sup = chain.support
    # need_t(x): what u_t(x) must cover; need_T = 0,
    # need_t(x) = max_y [sign c_t(x, y) - h_t(x)(y - x) - u_{t+1}(y) + need_{t+1}(y)]
    need = np.zeros(grid.size)
    for t in range(T - 1, -1, -1):
        ys = np.flatnonzero(sup[t + 1])
        rhs = (sign * costs[t][:, ys] - h[t][:, [0]] * (grid[ys][None, :] - grid[:, None])
               - u[t + 1, ys][None, :] + need[ys][None, :])
        need = rhs.max(axis=1)
    return np.where(sup[0], need, 0.0)


def verify_hedge(hedge: SemiStaticHedge, marginals: Marginals | None = None,
                 payoff: Payoff | None = None, *, atol: float = 1e-9) -> HedgeCheck:
    """Check pathwise dominance of ``hedge`` on every path of the augmented grid chain.

    The minimum over all paths (x_0..x_T) through the supports of portfolio - payoff (upper side;
    payoff - portfolio for the lower side) is computed exactly by a backward recursion over the
    chain's (x, s) states (S is a function of the path, so this is a minimum over all
    prod_t |supp mu_t| paths without enumerating them). Also checks cost == bound within
    ``atol * max(1, |bound|)``. ``marginals`` and ``payoff`` default to the ones the hedge
    was built for; other ones are refused (the check runs on the hedge's own chain, so it would
    say nothing about them).
    """
    if not (isinstance(atol, int | float) and not isinstance(atol, bool) and np.isfinite(atol)
            and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    _require_same(marginals, payoff, hedge.marginals, hedge.payoff, "the hedge",
                  grid=hedge.chain.grid)
    marginals = hedge.marginals if marginals is None else marginals
    payoff = hedge.payoff if payoff is None else payoff
    if marginals is None or payoff is None:
        raise ValueError("verify_hedge: pass marginals and payoff (this hedge carries none)")
    chain = hedge.chain
    grid = chain.grid
    m = grid.size
    T = chain.last_date
    sign = 1.0 if hedge.side == "upper" else -1.0
    u = hedge.static_values()  # (T+1, M)
    sup = chain.support
    # margin_t(x, s) = min over continuations of sign * (sum_{r>=t} u_r + sum h dX - f)
    if hedge.costs is None:
        cur = np.where(chain.reach[T], sign * (u[T][:, None] - chain.terminal), np.inf)
    else:
        cur = np.where(chain.reach[T], sign * u[T][:, None], np.inf)
    for t in range(T - 1, -1, -1):
        n_t = chain.states[t].size
        ys = np.flatnonzero(sup[t + 1])
        k = chain.transitions[t]
        # expected next margin given (s, y): sum_s' K(s, y; s') cur(y, s')
        coo = k.tocoo()
        keep = np.isin(coo.row % m, ys)
        r, c, v = coo.row[keep], coo.col[keep], coo.data[keep]
        nxt = np.bincount(r, v * np.where(np.isfinite(cur[r % m, c]), cur[r % m, c], 0.0),
                          minlength=n_t * m).reshape(n_t, m)[:, ys]  # (n_t, Y)
        xs = np.flatnonzero(sup[t])
        hh = np.nan_to_num(hedge.h[t][xs], nan=0.0)  # (n_x, n_t)
        dx = grid[ys][None, :] - grid[xs][:, None]  # (n_x, Y)
        tot = sign * hh[:, :, None] * dx[:, None, :] + nxt[None, :, :]
        if hedge.costs is not None:
            tot = tot - sign * hedge.costs[t][np.ix_(xs, ys)][:, None, :]
        best = tot.min(axis=2) + sign * u[t][xs][:, None]
        new = np.full((m, n_t), np.inf)
        new[xs] = np.where(chain.reach[t][xs], best, np.inf)
        cur = new
    margin = float(np.min(cur[chain.reach[0]]))
    n_paths = int(np.prod([int(s.sum()) for s in sup]))
    err = abs(hedge.cost - hedge.bound)
    ok = margin >= -atol and err <= atol * max(1.0, abs(hedge.bound))
    return HedgeCheck(ok=bool(ok), margin=margin, cost=hedge.cost, bound=hedge.bound,
                      cost_error=float(err), n_paths=n_paths)
