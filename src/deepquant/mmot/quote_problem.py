"""The problem of the bounds from bid-ask quotes (``deepquant.mmot.quotes_bounds``): the bands,
the grid, the chain and the maps between option positions and static potentials, with the
semi-static hedge a set of positions defines and its pathwise check.

Positions a (units per quote) define the static potentials u_t = sum_i a_i c_i of the chain's
sweep (``deepquant.mmot.sweep``); their exact sweep gives the cash, hence a valid bound
option cost + cash, long units at the ask and short units at the bid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import build_chain
from deepquant.mmot.hedge import SemiStaticHedge, StaticStrip, verify_hedge
from deepquant.mmot.quote_bands import QuoteBands
from deepquant.mmot.result import BoundSide, BoundsResult
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import Payoff

__all__ = ["QuoteHedge", "verify_quote_hedge"]


def _full_support_law(x: np.ndarray) -> np.ndarray:
    """A law with positive weight at every grid point and mean 1 (exponential tilt)."""
    def mean(theta):
        w = np.exp(theta * (x - 1.0))
        return float(w @ x / w.sum()) - 1.0
    span = x[-1] - x[0]
    theta = optimize.brentq(mean, -200.0 / span, 200.0 / span, xtol=1e-14)
    w = np.exp(theta * (x - 1.0))
    w /= w.sum()
    w[np.argmin(np.abs(x - 1.0))] += 1.0 - w.sum()
    return w


def _reference(grid: np.ndarray, times: np.ndarray, fitted: np.ndarray | None) -> Marginals:
    """Date 0 a point mass at 1, dates 1..S full-support laws of mean 1 (the fitted laws mixed
    with a tilted uniform law when given): the chain's supports and the smoothing's kernel."""
    base = _full_support_law(grid)
    rows = np.tile(base, (times.size, 1))
    if fitted is not None:
        rows = 0.8 * fitted + 0.2 * rows
        rows += np.outer(1.0 - rows.sum(axis=1), np.eye(grid.size)[np.argmin(np.abs(grid - 1))])
    delta = (np.abs(grid - 1.0) < 1e-12).astype(float)
    return Marginals(grid, np.vstack([delta, rows]), np.concatenate([[0.0], times]),
                     check_convex=False, mean_tol=1e-8)


@dataclass(frozen=True, eq=False)
class QuoteHedge:
    """The semi-static hedge of one side: ``positions`` (units per quote, one array per
    expiry) of the portfolio that dominates sign * f (sign = +1 upper, -1 lower) together with
    ``cash`` and ``h`` (per period, (M, n_t), the sweep's slopes); long units cost the ask and
    short units earn the bid; ``cost`` = option cost + cash = the side's bound times sign."""

    side: str
    positions: tuple[np.ndarray, ...]
    cash: float
    option_cost: float
    h: list[np.ndarray]
    violation: float
    semistatic: SemiStaticHedge = field(repr=False)

    @property
    def bound(self) -> float:
        sign = 1.0 if self.side == "upper" else -1.0
        return sign * (self.option_cost + self.cash)


class _Problem:
    """Bands, grid, chain and the position <-> potential maps of one payoff."""

    def __init__(self, bands: QuoteBands, grid: np.ndarray, payoff: Payoff, fitted, sum_mode,
                 sum_grid_size, *, closest: np.ndarray | None = None):
        self.bands = bands
        self.grid = grid
        self.payoff = payoff
        # laws on the grid, one row per expiry, that may lie inside the bands (the calibrated
        # ones and the band check's closest ones): the marginals of the rigorous inner value
        self.fitted = fitted
        self.closest = closest
        self.sum_mode, self.sum_grid_size = sum_mode, sum_grid_size
        self.ref = _reference(grid, bands.times, fitted)
        self.chain = build_chain(self.ref, payoff, sum_mode=sum_mode,
                                 sum_grid_size=sum_grid_size)
        self.T = self.chain.last_date
        self.used = list(range(self.T))  # expiry indices s = date - 1 in the chain
        self.mats = [bands.payoffs(s, grid) for s in self.used]  # (Q_s, M)
        self.sizes = [mt.shape[0] for mt in self.mats]
        self.off = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.bid = np.concatenate([bands.bid[s] for s in self.used]) if self.used else np.zeros(0)
        self.ask = np.concatenate([bands.ask[s] for s in self.used]) if self.used else np.zeros(0)
        self._sweepers: dict[float, _Sweeper] = {}

    def sweeper(self, sign: float) -> _Sweeper:
        if sign not in self._sweepers:
            self._sweepers[sign] = _Sweeper(self.chain, self.ref, sign)
        return self._sweepers[sign]

    def split(self, a: np.ndarray) -> list[np.ndarray]:
        return [a[self.off[i]:self.off[i + 1]] for i in range(len(self.used))]

    def uvec(self, a: np.ndarray) -> np.ndarray:
        """Concatenated u_1..u_T on the (full) supports: u_t = sum_i a_i c_i."""
        return np.concatenate([a_s @ mt for a_s, mt in zip(self.split(a), self.mats)])

    def prices(self, laws: np.ndarray) -> np.ndarray:
        """Model prices of the quotes used (flat, as ``bid`` and ``ask``) under ``laws`` (T, M),
        the laws of dates 1..T on the grid."""
        return np.concatenate([mt @ law for mt, law in zip(self.mats, laws)])

    def band_violation(self, prices: np.ndarray) -> float:
        """Largest distance of ``prices`` (flat, as ``bid``) outside the bands (0 inside)."""
        return float(np.max(np.maximum(np.maximum(self.bid - prices, prices - self.ask), 0.0),
                            initial=0.0))

    def option_cost(self, a: np.ndarray) -> float:
        long = np.where(a > 0, a * np.where(np.isfinite(self.ask), self.ask, 0.0), 0.0)
        return float(np.sum(long) + np.sum(np.where(a < 0, a * self.bid, 0.0)))

    def certify(self, a: np.ndarray, sign: float) -> tuple[float, float, float]:
        """(bound of sign*f, cash, worst rounding violation) of positions ``a`` (exact sweep)."""
        if np.any((a > 0) & ~np.isfinite(self.ask)):
            raise ValueError("positions buy a quote that has no ask")
        sw = self.sweeper(sign)
        u = self.uvec(a)
        value, _, viol = sw.hard(u, verify=True)
        cash = value - float(u @ sw.mu_flat) + float(viol.sum())
        return self.option_cost(a) + cash, cash, float(viol.sum())


def _quote_hedge(prob: _Problem, a: np.ndarray, side: str) -> QuoteHedge:
    """The semi-static hedge of positions ``a`` (in the sign-flipped problem of ``side``)."""
    sign = 1.0 if side == "upper" else -1.0
    total, cash, viol = prob.certify(a, sign)
    sw = prob.sweeper(sign)
    _, per_t, _ = sw.hard(prob.uvec(a))
    m = prob.grid.size
    hs = []
    for t in range(prob.T):
        per = sw.periods[t]
        h = np.full((m, per.n_s), np.nan)
        h[per.xs] = np.where(per.live, per_t[t][1], np.nan).T
        hs.append(sign * h)
    strips = [StaticStrip(0, 1.0, sign * cash, 0.0, *([np.zeros(0)] * 4))]
    for t, (a_s, s) in enumerate(zip(prob.split(a), prob.used), start=1):
        c = prob.bands.is_call[s]
        k = prob.bands.k[s]
        strips.append(StaticStrip(t, 1.0, 0.0, 0.0, k[~c], sign * a_s[~c], k[c], sign * a_s[c]))
    cost = prob.option_cost(a) + cash
    semi = SemiStaticHedge(side, strips, hs, prob.chain, None, sign * cost, sign * total)
    return QuoteHedge(side, tuple(prob.split(a)), cash, prob.option_cost(a), hs, viol, semi)


def verify_quote_hedge(hedge: QuoteHedge, prob_or_result, *, atol: float = 1e-9):
    """Pathwise check (``deepquant.mmot.hedge.verify_hedge``) of a quote hedge on every path of
    the grid chain; the hedge's cost is its price at the quotes."""
    prob = prob_or_result.info["problem"] if isinstance(prob_or_result, BoundsResult) \
        else prob_or_result
    return verify_hedge(hedge.semistatic, prob.ref, prob.payoff, atol=atol)


def with_positions(fine: BoundSide, prob: _Problem, side: str, best, *, rtol: float,
                   band_tol: float, info: dict, note: str | None = None) -> BoundSide:
    """``fine`` (a certified side of the bounds from quotes) with the positions of ``best`` =
    (outer bound in the side's sign, positions, violation; ``_Problem.certify``) as its bound
    and hedge when they are tighter, else ``fine`` (with ``info`` either way: the caller's
    report of the attempt). Certified only when the gap is within ``rtol`` and the inner
    value's chain prices the bands within ``band_tol`` (``fine.primal_residual``, as the stages
    ask): the bound may otherwise have closed on an inner value beyond the optimum. ``note``
    is added to the message of adopted positions."""
    from deepquant.mmot.certified import clip_inner, within_rtol

    sign = 1.0 if side == "upper" else -1.0
    outer, a, viol = best
    if not outer < sign * fine.value:
        return dataclasses.replace(fine, info=info)
    hedge = _quote_hedge(prob, a, side)
    inner, excess = clip_inner(sign * fine.info["inner"], outer)
    info = dict(info, hedge=hedge, positions=hedge.positions, violation=viol,
                inner_excess=excess)
    within = (within_rtol(outer - inner, outer, prob.sweeper(sign).scale, rtol)
              and fine.primal_residual <= band_tol)
    return dataclasses.replace(fine, value=sign * outer, gap=float(outer - inner), info=info,
                               status="certified" if within else fine.status,
                               message=fine.message if note is None
                               else f"{fine.message}; {note}")
