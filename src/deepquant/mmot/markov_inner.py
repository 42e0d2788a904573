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

import numbers
import time
from dataclasses import dataclass

import numpy as np

from deepquant.mmot._transport_lp import TransportLP, near_pairs

__all__ = ["InnerSearch", "MarkovInner", "adopt_markov_inner", "chain_value", "dual_value_to_go",
           "markov_inner"]

MARGINAL_TOL = 1e-7
"""Largest L1 error of the chain's laws (summed over dates 1..T) for its value to count as an
inner value; the martingale row residual must be within ``certified.POLISH_RESIDUAL``
(measured at 150 points: 1e-10-3e-9 and 1e-13-6e-11, the one-period LPs' tolerance)."""

MARKOV_SHARE = 0.6
"""Share of the inner value's time (``adopt_markov_inner``) for the Markov chain's ascent; the
rest goes to the chain whose kernels see the running statistic (``path_inner``), which starts
from it."""

MARKOV_STALL = 1e-3
"""The Markov stage of ``adopt_markov_inner`` ends when a cycle of its ascent gains less than
this share of the chain's value (``markov_inner``'s ``stall``), and the path passes get the
rest of its time. Why: past its first cycles the ascent gains little (13 monthly dates,
M = 150, Asian, lower side: 0.041655 from the dual's start, 0.040951 after one cycle, 0.040914
after nine), while the pass against the dual's values to go, which needs about 7-10 s there
and ends at 0.040357 whatever the Markov chain it starts from (0, 1 or 9 cycles), was cut short
after 10 of the 12 periods (0.040471). Measured in the pipeline (60 s per side, two rounds
beside the rule before, load 0.8-1.1): the Markov stage stalls after 3 cycles (6-9 s instead of
11.3 s), the dual's pass finishes, the lower inner value 0.040476-0.040533 -> 0.040357-0.040358,
the lower gap 1.6-1.7% -> 1.3%; the upper side's unchanged (0.45%). At N = 5 (10 s per side)
the stage is cut by its time first on most sides; the bounds within their run-to-run spread.
The bounds from quotes (``quote_inner.quote_markov_inner``) use it too: at 150 points on the
SPX quotes the Asian's two sides and the lookback's upper side came out tighter in both rounds
(docs/benchmarks-certified.md)."""

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
    return sw.periods[t].scatter(mass @ kernel)


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


def dual_value_to_go(sw, uvec: np.ndarray, *, moves: bool = False):
    """w[t] (n_t, X_t), t = 0..T: the continuation values of the superhedge of the potentials
    ``uvec`` (flat over the supports of dates 1..T, the sweep's sign), i.e. the envelopes V_t of
    the exact sweep ``sw.hard(uvec)``, with w[T] the terminal payoff.

    V_t(s, x) is the best expected sign * f - sum_{r > t} u_r(X_r) over the martingale
    continuations from (S_t, X_t) = (s, x) that the dual allows; it stands in for ``_backward``'s
    value under later kernels in the first cycle's costs. Leaving out the potentials shifts
    each w[t] by a function of X_t alone, which moves the cost of period t - 1 by a function of
    y alone: a constant on its couplings (their law of y is fixed), so the same plans. A pair
    with no martingale move (x outside the next support's hull: V = -inf) gets 0, as do the
    pairs that cannot be reached. With ``moves``: (w, per period the superhedge's moves (j1, j2),
    each (n_t, X_t) positions in the next support: where the dual says the optimum goes)."""
    _, out, _ = sw.hard(np.asarray(uvec, dtype=float))
    w = [np.where(per.live & np.isfinite(val), val, 0.0)
         for per, (val, *_rest) in zip(sw.periods, out)]
    w.append(np.where(sw.live_T, sw.g_term, 0.0))
    return (w, [(j1, j2) for _, _, j1, j2, _ in out]) if moves else w


def _backward(sw, kernels: list) -> list:
    """w[t] (n_t, X_t): expected sign * f given (S_t, X_t) under the kernels from t on; w[T]
    the terminal payoff."""
    w = [None] * (sw.T + 1)
    w[sw.T] = np.where(sw.live_T, sw.g_term, 0.0)
    for t in range(sw.T - 1, -1, -1):
        w[t] = sw.periods[t].gather(w[t + 1]) @ kernels[t].T
    return w


class _PeriodLP(TransportLP):
    """The one-period martingale transport LP of period t (``_transport_lp.TransportLP``: one
    source per point of X_t with mass mu_t) kept in one HiGHS model, so that a new cost is
    solved from the previous optimal basis; it starts from ``_start_pairs``."""

    NEAR = 6

    def __init__(self, sw, t: int):
        per = sw.periods[t]
        self.per = per
        self.shape = (per.xs.size, per.ys.size)
        super().__init__(per.xv, sw.mu[t, per.xs], per.yv, sw.mu[t + 1, per.ys],
                         self._start_pairs())

    def _start_pairs(self) -> np.ndarray:
        """Flat indices x * n_y + y of the pairs the model starts with: the ``NEAR`` nearest y
        of each x and x of each y, and the y at index distances 1, 2, 4, 8, ... on both sides
        of each x (``_transport_lp.near_pairs``)."""
        return np.flatnonzero(near_pairs(self.per.xv, self.per.yv, self.NEAR, both=True,
                                         doubling=True))

    def kernel(self, cost: np.ndarray, seconds: float):
        """Kernel (X, Y) of the coupling minimising <cost, pi>; when ``seconds`` run out after a
        pricing round, that of the last restricted optimum (a coupling with the exact marginals,
        no worse than any plan on the model's pairs, so no worse than the period's last
        kernel); None if HiGHS finds none in time."""
        from deepquant.mmot.lp import plan_kernel

        plan = self.solve(cost, seconds)
        return None if plan is None else plan_kernel(plan, self.per.xs, self.per.ys)


def fits_marginals(value: float, residual: float, drift: float) -> bool:
    """Whether a chain counts as an inner value on its grid: a finite value, laws within
    ``MARGINAL_TOL`` of the marginals and martingale rows within ``certified.POLISH_RESIDUAL``."""
    from deepquant.mmot.certified import POLISH_RESIDUAL

    return bool(np.isfinite(value) and residual <= MARGINAL_TOL and drift <= POLISH_RESIDUAL)


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_seconds(max_seconds) -> None:
    """A ``ValueError`` unless ``max_seconds`` is a finite real number >= 0."""
    if not _real(max_seconds) or not np.isfinite(max_seconds) or max_seconds < 0:
        raise ValueError(f"max_seconds must be a finite number >= 0, got {max_seconds!r}")


def check_values_to_go(sw, values, name: str) -> list:
    """``values`` (T + 1 arrays (n_t, X_t) of values to go, dates 0..T, in the layout of
    ``sw``) as float arrays, or a ``ValueError`` naming ``name``: not real arrays (text,
    complex), other shapes, NaN or inf (a NaN cost kept HiGHS's one-period LP past every time
    limit)."""
    want = [(per.n_s, per.xs.size) for per in sw.periods] + [sw.g_term.shape]
    try:
        if any(np.iscomplexobj(w) for w in values):
            raise TypeError("complex values")
        values = [np.asarray(w, dtype=float) for w in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a list of T + 1 = {len(want)} real arrays (dates "
                         f"0..T), got {type(values).__name__}: {exc}") from None
    got = [w.shape for w in values]
    if got != want:
        raise ValueError(f"{name} must have the shapes {want} (dates 0..T), got {got}")
    bad = [t for t, w in enumerate(values) if not np.all(np.isfinite(w))]
    if bad:
        raise ValueError(f"{name} must be finite, got NaN or inf at dates {bad}")
    return values


def markov_inner(sw, *, max_seconds: float = 600.0, max_cycles: int = 20,
                 tol: float = 1e-9, stall: float = 0.0,
                 start_values: list | None = None) -> MarkovInner:
    """The best Markov martingale chain found by block coordinate ascent (module docstring)
    within ``max_seconds`` (checked before every one-period LP, each LP cut by HiGHS at what is
    left), for the side of ``sw``.

    ``tol``: stop when a cycle over the periods gains less than ``tol`` times the payoff
    scale (``"converged"``). ``stall``: stop the ascent, and the stage, when a cycle gains
    less than ``stall`` times the chain's |value| (``"stalled"``: no second start), leaving
    the time to the caller's next stage. ``start_values``: T + 1 arrays (n_t, X_t) of approximate values to go of sign * f
    (``dual_value_to_go``, or ``_backward`` of some kernels) that the first chain is built
    against, period by period; None: the least-spread couplings. Only the costs depend on them:
    the chain is always valid and its value computed from its own kernels. The chain found so
    far is returned when the time runs out (``"time_budget"``; NaN if not even the first start
    was built)."""
    check_seconds(max_seconds)
    if isinstance(max_cycles, bool) or not isinstance(max_cycles, int | np.integer) \
            or max_cycles < 0:
        raise ValueError(f"max_cycles must be an integer >= 0, got {max_cycles!r}")
    if not _real(tol) or not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not _real(stall) or not np.isfinite(stall) or stall < 0:
        raise ValueError(f"stall must be a finite number >= 0, got {stall!r}")
    if start_values is not None:
        start_values = check_values_to_go(sw, start_values, "start_values")
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
            if status == "no_coupling":  # HiGHS failed on these costs (or they overflow): the next start may do
                continue
            break
        kernels, done_cycles, status = _ascend(sw, lps, kernels, left, max_cycles, tol, stall)
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
            if not np.all(np.isfinite(cost)):   # finite values too large: try the next start
                return None, "no_coupling"
        k = lps[t].kernel(cost, left())
        if k is None:
            return None, "time_budget" if left() <= 0 else "no_coupling"
        kernels.append(k)
        mass = _advance(sw, t, mass, k)
    return kernels, "started"


def _ascend(sw, lps: list, kernels: list, left, max_cycles: int, tol: float,
            stall: float = 0.0) -> tuple[list, int, str]:
    """(kernels, cycles done, status) of block coordinate ascent from ``kernels``: per cycle
    every period's best coupling against the forward law under the new kernels before it and
    the value under the old ones after it (``_backward``); ``tol`` and ``stall`` as in
    ``markov_inner``."""
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
        if gain < stall * abs(best_val):
            return kernels, cycle + 1, "stalled"
    return kernels, max_cycles, "max_cycles"


def adopt_markov_inner(side, chain, marginals, sense: str, *, max_seconds: float,
                       inner_resid_tol: float, rtol: float, two_date: tuple | None = None):
    """``side`` (a certified ``BoundSide`` of ``chain``) with the best chain found within
    ``max_seconds`` as its inner value, when it fits the marginals and is preferred by
    ``certified.better_inner`` (a fitted chain over one that misses the marginals, e.g. a
    coarse level's, else the tighter value): the Markov chain (``markov_inner``, started from
    the certified dual, in ``MARKOV_SHARE`` of the time) or, in what is left, a chain whose
    kernels also see the running statistic (``path_inner.improve``: passes against the
    Markov chain's values to go, the dual's and a mix of the two); with ``two_date`` = (the
    relaxation's optimal plan, t1), between the two, the chain of the conditional laws of a
    payoff of (X_t1, X_t2) (``InnerSearch.two_date``). The attempts are reported in
    ``info["markov"]``, ``info["path"]`` (and ``info["two_date"]``) either way. Skipped
    (``side`` returned as is) when there is no time."""
    t0 = time.perf_counter()
    if max_seconds <= 0:
        return side
    search = InnerSearch(side, chain, marginals, sense)
    found = search.markov(MARKOV_SHARE * max_seconds)
    left = max(max_seconds - (time.perf_counter() - t0), 0.0)
    if search.kernels is not None and two_date is not None and left > 0:
        found += search.two_date(left, *two_date)
        left = max(max_seconds - (time.perf_counter() - t0), 0.0)
    if search.kernels is not None and left > 0:
        found += search.path(left)
    return search.adopt(side, found, inner_resid_tol=inner_resid_tol, rtol=rtol)


class InnerSearch:
    """The stages of ``adopt_markov_inner`` on one side, so that a caller can run them apart
    (the path passes in another process, ``beside.inner_beside_polish``): ``markov`` and
    ``path`` return the chains found that fit the marginals, as (value in the sweep's sign,
    marginal error, kind, report), and record their reports in ``info``; ``adopt`` puts the
    best into a side."""

    def __init__(self, side, chain, marginals, sense: str):
        from deepquant.mmot.sweep import _Sweeper

        self.sign = 1.0 if sense == "upper" else -1.0
        self.marginals = marginals
        self.sw = _Sweeper(chain, marginals, self.sign)
        u = side.info.get("u_sweep")  # the certified potentials (the sweep's sign), if any
        self.dual, self.moves = (None, None) if u is None else dual_value_to_go(
            self.sw, self.sw.flatten(u), moves=True)
        self.kernels = None  # the Markov chain's, once ``markov`` ran
        self.info = {}

    def markov(self, seconds: float) -> list:
        res = markov_inner(self.sw, max_seconds=seconds, stall=MARKOV_STALL,
                           start_values=self.dual)
        report = dict(value=self.sign * res.value, marginal_error=res.residual, drift=res.drift,
                      cycles=res.cycles, status=res.status, seconds=res.seconds, adopted=False)
        self.info["markov"] = report
        self.kernels = res.kernels
        if not fits_marginals(res.value, res.residual, res.drift):
            return []
        return [(res.value, res.residual, f"Markov chain ({res.cycles} cycles, {res.status})",
                 report)]

    def path(self, seconds: float, buckets=None) -> list:
        """The path passes (``path_inner.improve``; ``buckets`` as for ``path_inner``)."""
        from deepquant.mmot.path_inner import improve

        path, report = improve(self.sw, self.kernels, self.sign, max_seconds=seconds,
                               dual=self.dual, moves=self.moves, buckets=buckets)
        self.info["path"] = report
        if not report["fits"]:
            return []
        return [(path.value, path.residual,
                 f"path-dependent chain ({path.buckets} classes of the statistic per point, "
                 f"from the {path.start} values to go)", report)]

    def two_date(self, seconds: float, plan, t1: int) -> list:
        """The chain of the conditional laws (``two_date.conditional_law_chain``; a payoff of
        (X_t1, X_t2) whose relaxation's optimal plan is ``plan``) within ``seconds``."""
        from deepquant.mmot.two_date import conditional_law_chain

        out = conditional_law_chain(self.sw, self.kernels, plan, t1, max_seconds=seconds)
        report = {k: out[k] for k in ("status", "variables", "seconds")}
        if out["status"] == "done":
            report.update(value=self.sign * out["value"], marginal_error=out["residual"],
                          drift=out["drift"], fits=out["fits"])
        report["adopted"] = False
        self.info["two_date"] = report
        if out["status"] != "done" or not out["fits"]:
            return []
        return [(out["value"], out["residual"],
                 f"chain of the conditional laws given X_{t1} (dates {t1} and {self.sw.T})",
                 report)]

    def adopt(self, side, found: list, *, inner_resid_tol: float, rtol: float):
        """``side`` with ``info`` (the attempts' reports) and, when ``certified.better_inner``
        prefers it, the best of ``found`` as its inner value (clipped to the outer bound),
        with the gap and status that follow."""
        import dataclasses

        from deepquant.mmot.certified import better_inner, clip_inner, within_rtol

        sign = self.sign
        info = dict(side.info, **self.info)
        best = max(found, key=lambda c: c[0], default=None)
        if best is None or not better_inner(best[0], best[1], sign * side.info["inner"],
                                            side.primal_residual, inner_resid_tol):
            return dataclasses.replace(side, info=info)
        value, resid, kind, chosen = best
        outer = sign * side.value
        inner, excess = clip_inner(value, outer)
        gap = outer - inner
        for report in (info.get("markov"), info.get("path"), info.get("two_date")):
            # one chain is the inner value
            if report is not None:
                report["adopted"] = False
        chosen["adopted"] = True
        info.update(inner=sign * inner, inner_excess=excess, inner_kind=kind,
                    inner_marginal_bound=resid,
                    inner_level=dict(marginals=self.marginals, resid=resid),
                    relative_gap=gap / max(abs(outer), 1e-300))
        within = within_rtol(gap, outer, self.sw.scale, rtol)
        return dataclasses.replace(side, gap=float(gap), primal_residual=resid, info=info,
                                   status="certified" if within else side.status)
