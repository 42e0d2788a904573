"""Inner values on the chain's own grid from Markov martingale chains (DESIGN §2.8).

A Markov chain X whose one-period plans pi_t are martingale couplings of (mu_t, mu_{t+1}) has
exactly the marginals mu_0, ..., mu_T, so E[f] under it is a feasible value of the chain LP: a
rigorous inner value (>= the LP minimum, <= the LP maximum) on the grid itself, whatever its
size. Here it is computed in the layout of the sweep (``sweep._Sweeper``), exactly by one
forward pass of the joint law of (X_t, S_t).

With the other periods fixed, E[f] is linear in one period's plan: with m_t(s, x) the joint
law of (S_t, X_t) under the earlier kernels and G_t(s, y) the expected terminal payoff given
(S_t, X_{t+1}) = (s, y) under the later ones,

    E[f] = sum_{x, y} pi_t(x, y) c_t(x, y),   c_t(x, y) = sum_s m_t(s, x) G_t(s, y) / mu_t(x),

so the best plan of that period is a one-period martingale transport LP (n_x n_y columns, kept
in one HiGHS model per period and re-solved from its last basis; the model holds the pairs
near x and those that pricing against all pairs asks for, so each solve is exact on all of
them: delayed column generation), and cycling over the periods never lowers the value (block
coordinate ascent). The chain starts from the couplings that are best, period by period,
against the continuation values of a certified dual's superhedge (``dual_value_to_go``: what
the dual says the rest of the path is worth), or without a dual from the glued chain whose
every coupling minimises E|X_{t+1} - X_t|.

Markov chains are a subset of the martingale laws, so the value stays on its side of the LP
optimum; it can be far from it where the optimum needs kernels that depend on the path. The
marginal error of the chain (the LP's row tolerance) and its martingale drift are measured and
returned (``residual``, ``drift``), so the caller decides whether the plan counts as feasible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["MarkovInner", "adopt_markov_inner", "chain_value", "dual_value_to_go", "markov_inner"]

MARGINAL_TOL = 1e-7
"""Largest L1 error of the chain's laws (summed over dates 1..T) for its value to count as an
inner value; the martingale row residual must be within ``certified.POLISH_RESIDUAL``
(measured at 150 points: 1e-10-3e-9 and 1e-13-6e-11, the one-period LPs' tolerance)."""

START_TIE = 0.01
"""Weight, in units of the payoff scale, of E|X_{t+1} - X_t| added to the start's costs from
the dual's continuation values (``dual_value_to_go``): where those values are affine in y many
couplings tie, and the LP's vertex among them can be far spread. Measured (Heston, N = 5,
M = 150, the Markov stage alone for 4 s, load 4.5-5): with 0 the straddle's lower side ends at
0.058729 (0.058492 from the least-spread start), with 0.01 at 0.058402, with 0.03 at 0.058798;
0.003 and 0.03 leave the lookback's upper side lower (0.08053, 0.08139 against 0.08147)."""


@dataclass(frozen=True)
class MarkovInner:
    """A Markov martingale chain on the grid and its value.

    ``value``: E[sign * f] (the sweep's sign convention); ``kernels``: per period the (X, Y)
    transition matrix between the supports; ``residual``: L1 error of its laws against the
    marginals, summed over dates 1..T; ``drift``: largest martingale row residual
    mu_t(x) |E[X_{t+1} | X_t = x] - x|; ``cycles``: full passes of coordinate ascent done (from
    both starts, when the least-spread one ran after the dual's); ``status`` (of the last
    ascent): ``"converged"`` (a cycle gained less than ``tol`` of the payoff scale),
    ``"max_cycles"``, ``"time_budget"`` or
    ``"no_coupling"`` (HiGHS found no one-period coupling; ``value`` is NaN)."""

    value: float
    kernels: list | None
    residual: float
    drift: float
    cycles: int
    seconds: float
    status: str


def _advance(sw, t: int, mass: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The joint law of (S_{t+1}, X_{t+1}) from that of (S_t, X_t) (``mass``) and period t's
    kernel."""
    n_next = sw.periods[t + 1].n_s if t + 1 < sw.T else sw.g_term.shape[0]
    return sw.periods[t].scatter(mass @ kernel, n_next)


def _coefficient(sw, t: int, mass: np.ndarray, w_next: np.ndarray) -> np.ndarray:
    """c_t(x, y) = sum_s m_t(s, x) G_t(s, y) / mu_t(x) (module docstring): E[f] is
    sum_{x, y} pi_t(x, y) c_t(x, y) for period t's plan pi_t, with ``mass`` the law m_t and
    ``w_next`` the value to go at t + 1."""
    per = sw.periods[t]
    return (mass.T @ per.gather(w_next)) / sw.mu[t, per.xs][:, None]


def chain_value(sw, kernels: list) -> tuple[float, list, float]:
    """(E[sign * f], laws of X_1..X_T on the supports, largest martingale row residual) of the Markov
    chain with per-period kernels ``kernels[t]`` (X_t, Y_t) in the layout of ``sw``."""
    mass = sw.mass0
    laws = []
    drift = 0.0
    for t, per in enumerate(sw.periods):
        k = kernels[t]
        # the plan's martingale row residual mu_t(x) |E[X_{t+1} | x] - x| (a kernel row of
        # mass below the LP's tolerance may drift by O(1) and carries no weight)
        drift = max(drift, float(np.max(sw.mu[t, per.xs] * np.abs(k @ per.yv - per.xv
                                                                    * k.sum(axis=1)),
                                        initial=0.0)))
        mass = _advance(sw, t, mass, k)
        laws.append(mass.sum(axis=0))
    value = float(np.sum(mass * np.where(sw.live_T, sw.g_term, 0.0)))
    return value, laws, drift


def dual_value_to_go(sw, uvec: np.ndarray) -> list:
    """w[t] (n_t, X_t), t = 0..T: the continuation values of the superhedge of the potentials
    ``uvec`` (flat over the supports of dates 1..T, the sweep's sign), i.e. the envelopes V_t of
    the exact sweep ``sw.hard(uvec)``, with w[T] the terminal payoff.

    V_t(s, x) is the best expected sign * f - sum_{r > t} u_r(X_r) over the martingale
    continuations from (S_t, X_t) = (s, x) that the dual allows; it stands in for ``_backward``'s
    value under later kernels in the first cycle's costs. Leaving out the potentials shifts
    each w[t] by a function of X_t alone, which moves the cost of period t - 1 by a function of
    y alone: a constant on its couplings (their law of y is fixed), so the same plans. A pair
    with no martingale move (x outside the next support's hull: V = -inf) gets 0, as do the
    pairs that cannot be reached."""
    _, out, _ = sw.hard(np.asarray(uvec, dtype=float))
    w = [np.where(per.live & np.isfinite(val), val, 0.0)
         for per, (val, *_rest) in zip(sw.periods, out)]
    return w + [np.where(sw.live_T, sw.g_term, 0.0)]


def _backward(sw, kernels: list) -> list:
    """w[t] (n_t, X_t): expected sign * f given (S_t, X_t) under the kernels from t on; w[T]
    the terminal payoff."""
    w = [None] * (sw.T + 1)
    w[sw.T] = np.where(sw.live_T, sw.g_term, 0.0)
    for t in range(sw.T - 1, -1, -1):
        w[t] = sw.periods[t].gather(w[t + 1]) @ kernels[t].T
    return w


class _PeriodLP:
    """The one-period martingale transport LP of period t (rows: the mass of each x, the law of
    each y, the martingale condition of each x; one column per pair (x, y)) kept in one HiGHS
    model, so that a new cost is solved from the previous optimal basis.

    The model holds only some of the pairs (at first ``_start_pairs``); every solve is priced
    against all of them: the pairs whose reduced cost c(x, y) - a(x) - b(y) - h(x) (y - x)
    under the LP's duals is below ``-PRICE_TOL`` times the cost scale are added and the LP
    re-solved, until none is (column generation; the plan is then optimal for the full LP up
    to HiGHS's own dual tolerance). A restricted LP with no feasible plan gets every pair."""

    NEAR = 6
    PRICE_TOL = 1e-10

    def __init__(self, sw, t: int):
        import highspy

        from deepquant.mmot.colgen import _quiet_highs

        per = sw.periods[t]
        self.per = per
        nx, ny = per.xs.size, per.ys.size
        self.shape = (nx, ny)
        self.a = np.repeat(np.arange(nx), ny)
        self.j = np.tile(np.arange(ny), nx)
        self.dx = per.yv[self.j] - per.xv[self.a]
        b = np.concatenate([sw.mu[t, per.xs], sw.mu[t + 1, per.ys], np.zeros(nx)])
        h = _quiet_highs()
        h.setOptionValue("presolve", "off")
        h.setOptionValue("primal_feasibility_tolerance", 1e-10)
        h.setOptionValue("dual_feasibility_tolerance", 1e-10)
        h.addRows(b.size, b, b, 0, np.zeros(b.size, np.int32), np.zeros(0, np.int32),
                  np.zeros(0))
        self.h = h
        self.inf = highspy.kHighsInf
        self.optimal = highspy.HighsModelStatus.kOptimal
        self.infeasible = highspy.HighsModelStatus.kInfeasible
        self.cols = np.zeros(0, dtype=np.int64)  # the pairs in the model, in its column order
        self.present = np.zeros(nx * ny, dtype=bool)
        self._add(self._start_pairs(), np.zeros(nx * ny))

    def _start_pairs(self) -> np.ndarray:
        """Flat indices x * n_y + y of the pairs the model starts with: the ``NEAR`` nearest y
        of each x and x of each y, and the y at index distances 1, 2, 4, 8, ... on both sides
        of each x (so that every x reaches every part of the next law: the nearest pairs alone
        may hold no martingale coupling)."""
        nx, ny = self.shape
        dist = np.abs(self.dx).reshape(nx, ny)
        near = np.zeros((nx, ny), dtype=bool)
        np.put_along_axis(near, np.argsort(dist, axis=1)[:, :self.NEAR], True, axis=1)
        np.put_along_axis(near, np.argsort(dist, axis=0)[:self.NEAR, :], True, axis=0)
        pos = np.searchsorted(self.per.yv, self.per.xv)
        for step in 2 ** np.arange(1, int(np.log2(max(ny, 2))) + 1):
            for q in (pos - step, pos + step - 1):
                ok = (q >= 0) & (q < ny)
                near[np.flatnonzero(ok), q[ok]] = True
        return np.flatnonzero(near.ravel())

    def _add(self, pairs: np.ndarray, cost: np.ndarray):
        nx, ny = self.shape
        a, j, dx = self.a[pairs], self.j[pairs], self.dx[pairs]
        rows = np.stack([a, nx + j, nx + ny + a], axis=1)
        vals = np.stack([np.ones(a.size), np.ones(a.size), dx], axis=1)
        keep = vals != 0.0
        counts = keep.sum(axis=1)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
        n = pairs.size
        self.h.addCols(n, cost[pairs], np.zeros(n), np.full(n, self.inf), int(counts.sum()),
                       start, rows[keep].astype(np.int32), vals[keep])
        self.cols = np.concatenate([self.cols, pairs])
        self.present[pairs] = True

    def kernel(self, cost: np.ndarray, seconds: float):
        """Kernel (X, Y) of the coupling minimising <cost, pi>; when ``seconds`` run out after a
        pricing round, that of the last restricted optimum (a coupling with the exact marginals,
        no worse than any plan on the model's pairs, so no worse than the period's last
        kernel); None if HiGHS finds none in time."""
        from deepquant.mmot.lp import plan_kernel

        nx, ny = self.shape
        cost = np.ravel(cost).astype(float)
        t_end = time.perf_counter() + max(seconds, 1e-3)
        self.h.changeColsCost(self.cols.size, np.arange(self.cols.size, dtype=np.int32),
                              cost[self.cols])
        plan = None  # the last restricted optimum: a coupling no worse than the kernel before
        while True:
            # HiGHS's run clock accumulates over the re-solves
            self.h.setOptionValue("time_limit", self.h.getRunTime()
                                  + max(t_end - time.perf_counter(), 1e-3))
            self.h.run()
            status = self.h.getModelStatus()
            if status == self.infeasible and not self.present.all():
                self._add(np.flatnonzero(~self.present), cost)
                continue
            if status != self.optimal:
                break
            plan = np.zeros(nx * ny)
            plan[self.cols] = np.asarray(self.h.getSolution().col_value)
            y = np.asarray(self.h.getSolution().row_dual)
            rc = cost - y[self.a] - y[nx + self.j] - y[nx + ny + self.a] * self.dx
            new = np.flatnonzero((rc < -self.PRICE_TOL * max(1.0, np.max(np.abs(cost))))
                                 & ~self.present)
            if new.size == 0 or time.perf_counter() >= t_end:
                break
            self._add(new, cost)
        if plan is None:
            return None
        return plan_kernel(plan.reshape(self.shape), self.per.xs, self.per.ys)


def markov_inner(sw, *, max_seconds: float = 600.0, max_cycles: int = 20,
                 tol: float = 1e-9, start_values: list | None = None) -> MarkovInner:
    """The best Markov martingale chain found by block coordinate ascent (module docstring)
    within ``max_seconds`` (checked before every one-period LP, each LP cut by HiGHS at what is
    left), for the side of ``sw``.

    ``tol``: stop when a cycle over the periods gains less than ``tol`` times the payoff
    scale. ``start_values``: T + 1 arrays (n_t, X_t) of approximate values to go of sign * f
    (``dual_value_to_go``, or ``_backward`` of some kernels) that the first chain is built
    against, period by period; None: the least-spread couplings. Only the costs depend on them:
    the chain is always valid and its value computed from its own kernels. The chain found so
    far is returned when the time runs out (``"time_budget"``; NaN if not even the first start
    was built)."""
    if not np.isfinite(max_seconds) or max_seconds < 0:
        raise ValueError(f"max_seconds must be a finite number >= 0, got {max_seconds!r}")
    if isinstance(max_cycles, bool) or not isinstance(max_cycles, int | np.integer) \
            or max_cycles < 0:
        raise ValueError(f"max_cycles must be an integer >= 0, got {max_cycles!r}")
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if start_values is not None:
        want = [(per.n_s, per.xs.size) for per in sw.periods] + [sw.g_term.shape]
        got = [np.shape(w) for w in start_values]
        if got != want:
            raise ValueError(f"start_values must have the shapes {want} (dates 0..T), got {got}")
    t0 = time.perf_counter()

    def done(kernels, cycles, status):
        if kernels is None:
            return MarkovInner(np.nan, None, np.inf, np.inf, cycles,
                               time.perf_counter() - t0, status)
        value, laws, drift = chain_value(sw, kernels)
        resid = float(sum(np.abs(law - sw.mu[t + 1, per.ys]).sum()
                          for t, (per, law) in enumerate(zip(sw.periods, laws))))
        return MarkovInner(value, kernels, resid, drift, cycles, time.perf_counter() - t0,
                           status)

    def left():
        return max_seconds - (time.perf_counter() - t0)

    # the first start: with ``start_values`` the dual's; the least-spread one after it when the
    # ascent from it converges in time (the better chain is kept: no worse than the least-spread
    # start alone, given the time for both)
    lps: list = []
    best, cycles, status = None, 0, "time_budget"
    for values in [start_values] + ([None] if start_values is not None else []):
        kernels, status = _start(sw, lps, values, left)
        if kernels is None:
            if status == "no_coupling":  # HiGHS failed on these costs: the next start may do
                continue
            break
        kernels, done_cycles, status = _ascend(sw, lps, kernels, left, max_cycles, tol)
        cycles += done_cycles
        value = chain_value(sw, kernels)[0]
        if best is None or value > best[0]:
            best = (value, kernels)
        if status != "converged":
            break
    return done(None if best is None else best[1], cycles, status)


def _start(sw, lps: list, values: list | None, left) -> tuple[list | None, str]:
    """(kernels of the start, status): period by period the best coupling against ``values``
    (the law the kernels already built give, ties broken towards the least spread by
    ``START_TIE``), or with ``values`` None the coupling least spread (min E|X_{t+1} - X_t|),
    in every period. The one-period models ``lps`` are built on first use. The most spread
    start was dropped: its LP took 4-7 s per period at 150 points (0.3-0.5 s for the least
    spread one) and the ascent from it ended no better on four of six sides."""
    kernels = []
    mass = sw.mass0
    for t, per in enumerate(sw.periods):
        if left() <= 0:
            return None, "time_budget"
        if len(lps) <= t:
            lps.append(_PeriodLP(sw, t))
        spread = np.abs(per.yv[None, :] - per.xv[:, None])
        if values is None:
            cost = spread
        else:
            cost = START_TIE * sw.scale * spread - _coefficient(sw, t, mass, values[t + 1])
        k = lps[t].kernel(cost, left())
        if k is None:
            return None, "time_budget" if left() <= 0 else "no_coupling"
        kernels.append(k)
        mass = _advance(sw, t, mass, k)
    return kernels, "started"


def _ascend(sw, lps: list, kernels: list, left, max_cycles: int, tol: float
            ) -> tuple[list, int, str]:
    """(kernels, cycles done, status) of block coordinate ascent from ``kernels``: per cycle
    every period's best coupling against the forward law under the new kernels before it and
    the value under the old ones after it (``_backward``)."""
    best_val = chain_value(sw, kernels)[0]
    for cycle in range(max_cycles):
        w = _backward(sw, kernels)
        mass = sw.mass0
        for t in range(sw.T):
            if left() <= 0:
                return kernels, cycle, "time_budget"
            k = lps[t].kernel(-_coefficient(sw, t, mass, w[t + 1]), left())
            if k is not None:  # else (cut by the time limit) the period keeps its kernel
                kernels[t] = k
            mass = _advance(sw, t, mass, kernels[t])
        val = chain_value(sw, kernels)[0]
        gain, best_val = val - best_val, max(val, best_val)
        if gain < tol * sw.scale:
            return kernels, cycle + 1, "converged"
    return kernels, max_cycles, "max_cycles"


def adopt_markov_inner(side, chain, marginals, sense: str, *, max_seconds: float,
                       inner_resid_tol: float, rtol: float):
    """``side`` (a certified ``BoundSide`` of ``chain``) with the Markov chain's value as its
    inner value when one is found within ``max_seconds`` that fits the marginals and is
    preferred by ``certified.better_inner`` (a fitted chain over one that misses the marginals,
    e.g. a coarse level's, else the tighter value); the attempt is reported in
    ``info["markov"]`` either way. Skipped (``side`` returned as is) when there is no time."""
    import dataclasses

    from deepquant.mmot.certified import POLISH_RESIDUAL, better_inner, clip_inner, within_rtol
    from deepquant.mmot.sweep import _Sweeper

    t0 = time.perf_counter()
    if max_seconds <= 0:
        return side
    sign = 1.0 if sense == "upper" else -1.0
    sw = _Sweeper(chain, marginals, sign)
    u = side.info.get("u_sweep")  # the certified potentials (the sweep's sign), if any
    start = None if u is None else dual_value_to_go(sw, sw.flatten(u))
    res = markov_inner(sw, max_seconds=max(max_seconds - (time.perf_counter() - t0), 0.0),
                       start_values=start)
    fits = (np.isfinite(res.value) and res.residual <= MARGINAL_TOL
            and res.drift <= POLISH_RESIDUAL)
    report = dict(value=sign * res.value, marginal_error=res.residual, drift=res.drift,
                  cycles=res.cycles, status=res.status, seconds=time.perf_counter() - t0,
                  adopted=False)
    if not fits or not better_inner(res.value, res.residual, sign * side.info["inner"],
                                    side.primal_residual, inner_resid_tol):
        return dataclasses.replace(side, info=dict(side.info, markov=report))
    outer = sign * side.value
    inner, excess = clip_inner(res.value, outer)
    gap = outer - inner
    report["adopted"] = True
    info = dict(side.info, inner=sign * inner, inner_excess=excess, markov=report,
                inner_kind=f"Markov chain ({res.cycles} cycles, {res.status})",
                inner_marginal_bound=res.residual,
                inner_level=dict(marginals=marginals, resid=res.residual),
                relative_gap=gap / max(abs(outer), 1e-300))
    within = within_rtol(gap, outer, sw.scale, rtol)
    return dataclasses.replace(side, gap=float(gap), primal_residual=res.residual, info=info,
                               status="certified" if within else side.status)
