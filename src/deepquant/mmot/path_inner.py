"""Inner values from martingale chains whose kernels see the path (DESIGN §2.8).

A Markov chain (``markov_inner``) moves from X_t by a kernel of X_t alone. The optimum of a
path-dependent payoff often needs kernels that depend on the running statistic S_t as well:
measured against exact bounds (Heston, N = 5), the best Markov chain is 0.9-3.6% off the
optimum on the Asian's two sides and the lookback's upper side. Here the kernel of period t is
a function of (X_t, b_t(S_t, X_t)), with ``b_t`` one of ``buckets`` classes of S_t given X_t
(equal-mass quantiles of the law of S_t given X_t under the chain built so far).

The chain is built by one forward pass of policy improvement against values to go
w_{t+1}(s, y) of the rest of the path (those of a Markov chain, ``markov_inner._backward``,
or the certified dual's, ``markov_inner.dual_value_to_go``): with m_t the law of (S_t, X_t)
under the kernels already chosen, the sources of period t are the pairs (x, b) with mass
P(x, b) = sum_{s in b} m_t(s, x), and the kernel is the one-period martingale transport of
those sources onto mu_{t+1} maximising

    sum_{x, b, y} pi(x, b, y) c(x, b, y),   c(x, b, y) = sum_{s in b} m_t(s, x) G_t(s, y) / P(x, b),

with G_t(s, y) the value to go w_{t+1} gathered at the next state. Each source's row is a
martingale kernel and the sources' law of y is the one the Markov chain's kernel gives them
(mu_{t+1} up to the one-period LPs' tolerance), so the chain has the Markov chain's marginals
whatever the values to go were: its value (computed exactly by a forward pass of
the joint law of (S_t, X_t)) is a rigorous inner value of the chain LP. Against a Markov
chain's own values to go the pass is a policy improvement: that chain's kernel is feasible in
every period's LP, so the new chain is never worse than it (also when the pass is cut short
and the Markov kernels finish the path). ``improve`` adds a pass against the dual's values and
one against a mix of the two (``MIX``). The pass is not iterated, because a later period's
bucket kernel, solved for one law of its sources, breaks the marginals under another
(measured: a second pass from the chain's own values loses 0.5-3% at M = 25-49; at M = 150,
N = 5, passes against those values mixed with the dual's gained 0.07-0.19% on the Asian's
lower side (one or two such passes) and lost 0.06-3% on the other five sides).

Measured (Heston N = 5 on [0.55, 1.45]; docs/benchmarks-certified.md, "Kernels that see the
path"): at M = 25 the Asian's lower side from 3.4% off the exact optimum (Markov) to 0.67%, its
upper side 0.88% -> 0.13%; at M = 49 the lookback's upper side 1.6% -> 0.70%; at M = 150 the
lookback's upper side 0.081432 -> 0.082244 from the dual's values and the Asian's lower side
0.028681 -> 0.028560 from the Markov chain's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from deepquant.mmot._transport_lp import TransportLP, near_pairs
from deepquant.mmot.markov_inner import (
    _backward,
    check_seconds,
    check_values_to_go,
    fits_marginals,
)

__all__ = ["PathInner", "bucket_chain_value", "classes_per_point", "improve", "path_inner"]

BUCKETS = 4
"""Classes of the running statistic per grid point. Measured at M = 150 (Heston, N = 5, best
pass per side): 4 classes against 2 tighten the lookback's upper side 0.082139 -> 0.082244 and
the Asian's lower side 0.028586 -> 0.028560, the other sides by less than 3e-5, at about the
same time per pass (0.2-7 s); 8 classes gain 1e-5 on the Asian's lower side (0.028549) and
lose on the lookback's upper (the dual's pass 0.079758: one greedy pass is not monotone in the
classes). A remembered value gets a second round with ``VALUE_BUCKETS``."""

LIGHT_SOURCE = 1e-9
"""Sources (x, b) lighter than this keep the Markov kernel of x (their law of y is taken off
the LP's target): a kernel read from pi / P of so light a source is noise at HiGHS's 1e-10
feasibility tolerance, and the earlier periods' plans, feasible to that tolerance, can leave
such mass where the marginal has none (measured: 1e-11-1e-10 at x = 1.8 on the 12-period Asian
at M = 150, beyond the hull of the next law, which made the period's LP infeasible with 1e-12
here). At most one source per point and class, so at most 1e-9 * B * M of mass keeps its
Markov kernel."""

VALUE_BUCKETS = 32
"""Classes per grid point of a second round of passes when the statistic is a remembered value
(``kind == "value"``: the forward start's X_t1, whose law given X_t stays as wide as X_t1's
own, where a running sum or maximum given X_t is narrow and a few classes resolve it); the
passes with ``BUCKETS`` classes run first, since one greedy pass is not monotone in the
classes (held out, 13 monthly dates, 20 s per side: 32 classes alone took the straddle's upper
side from 0.170015 to 0.169844). Measured at M = 150, Heston, N = 5, 10 s per side,
``workers=2`` (pipeline, two rounds): the forward-start straddle's upper side 0.107491 with 4
classes (the Markov values' pass), 0.107559 with 16, 0.107583 with 32 and 64 (the dual's pass,
1.1-1.8 s), against the certificate 0.107686: gap 0.18% -> 0.12% -> 0.096%; its lower side
0.058121-0.058138 -> 0.058094-0.058096 -> 0.058089-0.058090 (64: 0.058094-0.058098). The
Asian's and the lookback's sides do not move with 16-64 classes (offline, captured N = 5
sides: within 1e-6 but the Asian's lower, 0.028586 -> 0.028585), and at 13 monthly dates 32
classes for the Asian cost 4-10x the passes' time (the upper side's dual pass 32 s against
3 s), which the second polish needed: [0.040190, 0.053398] -> [0.040152, 0.053448] in 60 s.
So only the remembered value gets them."""


MIX = 0.25
"""Weight of the Markov chain's values to go in the third pass of ``improve``, against the
dual's (``"mixed"``). The Markov values are a chain's own (a pass against them is a policy
improvement) but those of a worse chain; the dual's are optimistic where the superhedge does
not touch. Measured offline on the captured sides (Heston, M = 150; weights 1 / 0.5 / 0.25 /
0 in the payoff's sign, the best in bold where the mix wins): N = 5, the Asian's lower side
0.028586 / 0.028572 / **0.028551** / 0.028751 (0.15: 0.028555, 0.1: 0.028564), the straddle's
lower side (32 classes) 0.058091 / 0.058077 / **0.058063** / 0.058127, its upper side
0.107267 / 0.107301 / 0.107337 / 0.107612, the lookback's upper side 0.081921 / 0.081959 /
0.081985 / 0.082232, the other two sides within 2e-6; 13 monthly dates, the straddle's lower
side (32 classes) 0.113226 / 0.113203 / **0.113158** / 0.114440, the Asian's lower side
0.040547 / 0.040502 / 0.040421 / 0.040357 and upper side 0.053317 / 0.053295 / 0.053284 /
0.053215. A pass costs 0.1-1.3 s at N = 5, 1-3 s at 12 periods."""


def classes_per_point(kind: str) -> tuple[int, ...]:
    """Classes of the statistic per grid point of the passes, in their order, for a chain of
    statistic ``kind``: ``BUCKETS``, then ``VALUE_BUCKETS`` for a remembered value."""
    return (BUCKETS, VALUE_BUCKETS) if kind == "value" else (BUCKETS,)


NEAR = 4
"""Nearest y of each source in a period LP's first pairs (with the Markov kernel's support)."""


@dataclass(frozen=True)
class PathInner:
    """A chain with kernels of (X_t, class of S_t) and its value.

    ``value``: E[sign * f] (the sweep's sign); ``residual``: L1 error of its laws against the
    marginals, summed over dates 1..T; ``drift``: largest martingale residual
    P(x, b) |E[X_{t+1} | x, b] - x|; ``start``: which values to go built it (``"markov"`` or
    ``"dual"``); ``status``: ``"done"``, or ``"time_budget"`` / ``"no_coupling"`` (HiGHS gave
    no plan) for the first pass cut short (``value`` NaN if no pass did a period);
    ``tried``: by pass (the start, with ", b classes" for a later round), the value, seconds,
    number of periods and classes of every pass (a pass cut short keeps the Markov kernels
    from there on); ``buckets``: the kept pass's classes per point; ``classes``: per period
    the class (n_s, X) of every state (s, x); ``kernels``: per period the kernels (buckets, X,
    Y) of the classes; ``laws``: its laws of X_1..X_T on the supports (None when no pass
    finished)."""

    value: float
    residual: float
    drift: float
    seconds: float
    status: str
    start: str | None
    tried: dict
    buckets: int
    classes: list | None = None
    kernels: list | None = None
    laws: list | None = None


def bucket_classes(mass: np.ndarray, buckets: int) -> np.ndarray:
    """(n_s, X) class in 0..buckets-1 of every state (s, x): the equal-mass quantile of s
    (states in their order, by value of the statistic) in the law ``mass`` of S given x."""
    cum = np.cumsum(mass, axis=0)
    total = cum[-1:, :]
    frac = np.where(total > 0, (cum - 0.5 * mass) / np.where(total > 0, total, 1.0), 0.0)
    return np.minimum((frac * buckets).astype(np.int64), buckets - 1)


def _advance(sw, t: int, mass: np.ndarray, classes: np.ndarray, kern: np.ndarray) -> np.ndarray:
    """The law of (S_{t+1}, X_{t+1}) from that of (S_t, X_t) under class kernels ``kern``
    (B, X, Y)."""
    per = sw.periods[t]
    q = np.zeros((mass.shape[0], per.ys.size))
    for b in range(kern.shape[0]):
        q += np.where(classes == b, mass, 0.0) @ kern[b]
    return per.scatter(q)


def bucket_chain_value(sw, classes: list, kerns: list) -> tuple[float, list, float, float]:
    """(E[sign * f], laws of X_1..X_T on the supports, their L1 error against the marginals
    summed over the dates, largest martingale residual) of the chain with class maps
    ``classes[t]`` (n_s, X) and kernels ``kerns[t]`` (B, X, Y)."""
    mass = sw.mass0
    laws, resid, drift = [], 0.0, 0.0
    for t, per in enumerate(sw.periods):
        for b in range(kerns[t].shape[0]):
            pb = np.where(classes[t] == b, mass, 0.0).sum(axis=0)
            k = kerns[t][b]
            drift = max(drift, float(np.max(pb * np.abs(k @ per.yv - per.xv * k.sum(axis=1)),
                                            initial=0.0)))
        mass = _advance(sw, t, mass, classes[t], kerns[t])
        laws.append(mass.sum(axis=0))
        resid += float(np.abs(laws[-1] - sw.mu[t + 1, per.ys]).sum())
    value = float(np.sum(mass * np.where(sw.live_T, sw.g_term, 0.0)))
    return value, laws, resid, drift


def _period(sw, t: int, mass: np.ndarray, markov: np.ndarray, w_next: np.ndarray,
            buckets: int, seconds: float, moves=None):
    """(classes (n_s, X), kernels (B, X, Y)) of period t against the values to go ``w_next``,
    or None when HiGHS gives no plan in ``seconds``."""
    per = sw.periods[t]
    classes = bucket_classes(mass, buckets)
    G = per.gather(w_next)
    P = np.stack([np.where(classes == b, mass, 0.0).sum(axis=0) for b in range(buckets)])
    kern = np.repeat(markov[None], buckets, axis=0)  # light sources keep the Markov kernel
    heavy = P > LIGHT_SOURCE
    bb, xx = np.nonzero(heavy)
    # the heavy sources' law of y under the Markov kernel: so that kernel is a feasible plan
    # (its rows' martingale residual apart), also when the law of X_t under the kernels already
    # chosen is off mu_t by the LPs' tolerance (mu_{t+1} itself as the target then leaves the
    # sources' mean 1e-10 off its own, and HiGHS reads the LP as infeasible: measured on the
    # 12-period Asian at M = 150, period 5)
    nu = np.einsum("bx,bxy->y", np.where(heavy, P, 0.0), kern)
    C = np.stack([np.where(classes == b, mass, 0.0).T @ G for b in range(buckets)])
    pv = P[bb, xx]
    start = near_pairs(per.xv[xx], per.yv, NEAR) | (markov[xx] > 0)
    if moves is not None:  # the dual's moves (j1, j2) from every state with mass
        row = np.full(P.shape, -1)
        row[bb, xx] = np.arange(bb.size)
        si, ai = np.nonzero((mass > 0) & per.live)
        r = row[classes[si, ai], ai]
        for j in moves:
            start[r[r >= 0], j[si, ai][r >= 0]] = True
    lp = TransportLP(per.xv[xx], pv, per.yv, nu, np.flatnonzero(start))
    plan = lp.solve(-(C[bb, xx] / pv[:, None]), seconds)
    if plan is None:
        return None
    rows = plan.sum(axis=1, keepdims=True)
    kern[bb, xx] = np.where(rows > 0, plan / np.where(rows > 0, rows, 1.0), markov[xx])
    return classes, kern


def path_inner(sw, markov_kernels: list, values: dict, *, buckets=None,
               max_seconds: float = 600.0, moves: dict | None = None) -> PathInner:
    """The best chain with kernels of (X_t, class of S_t) from one forward pass (module
    docstring) per entry of ``values`` (name -> T + 1 arrays (n_t, X_t) of values to go of
    sign * f: ``markov_inner._backward`` of a Markov chain, ``markov_inner.dual_value_to_go``
    of the certified potentials), in their order, within ``max_seconds`` (checked before every
    one-period LP; a pass cut by it keeps the Markov kernels from there on, and no later pass
    runs; a pass cut short because HiGHS gave no plan keeps them too, and the next pass still
    runs: its costs, and from its second period its sources, differ). ``markov_kernels``: a
    Markov martingale chain on the grid (its supports start each LP, and the sources lighter
    than ``LIGHT_SOURCE`` keep its kernels). ``moves``: name -> per period the pairs (j1, j2)
    of next-support positions the values' own superhedge moves to from each state
    (``dual_value_to_go(..., moves=True)``), added to the LP's first pairs: the same optimum,
    found in fewer pricing rounds (measured, the dual's pass at M = 150: 1.0-1.2 s against
    2.6-2.9 s on the lookback's upper side, 2.7-3.4 s against 9.6-10.8 s on the straddle's).
    ``buckets``: classes of the statistic per point, an integer or a sequence of them (every
    entry of ``values`` with the first, then with the next, ...; ``tried`` names the later
    ones' passes "name, b classes"); None: ``classes_per_point`` of the chain's statistic."""
    counts = classes_per_point(sw.chain.kind) if buckets is None else buckets
    counts = tuple(counts) if isinstance(counts, list | tuple) else (counts,)
    if not counts or any(isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1
                         for b in counts):
        raise ValueError(f"buckets must be None, an integer >= 1 or a sequence of them, got "
                         f"{buckets!r}")
    check_seconds(max_seconds)
    if not isinstance(values, dict):
        raise ValueError(f"values must be a dict name -> values to go, got "
                         f"{type(values).__name__}")
    values = {name: check_values_to_go(sw, w, f"values[{name!r}]")
              for name, w in values.items()}
    t0 = time.perf_counter()
    best, tried, status = None, {}, "done"
    passes = [(name if k == 0 else f"{name}, {b} classes", name, int(b))
              for k, b in enumerate(counts) for name in values]
    for key, name, b in passes:
        w = values[name]
        t_pass = time.perf_counter()
        mass, classes, kerns = sw.mass0, [], []
        for t in range(sw.T):
            left = max_seconds - (time.perf_counter() - t0)
            got = None if left <= 0 else _period(
                sw, t, mass, markov_kernels[t], w[t + 1], b, left,
                None if moves is None or name not in moves else moves[name][t])
            if got is None:
                break
            classes.append(got[0])
            kerns.append(got[1])
            mass = _advance(sw, t, mass, *got)
        done = len(kerns)
        out_of_time = time.perf_counter() - t0 >= max_seconds
        if done < sw.T and status == "done":  # the first pass cut short names the status
            status = "time_budget" if out_of_time else "no_coupling"
        if done == 0:
            if out_of_time:
                break
            continue  # HiGHS gave no plan on these values' costs: the next values may do
        # a pass cut short ends with the Markov kernels: the law of X_t is mu_t whatever the
        # classes, so the chain keeps its marginals (and, against the Markov values, its
        # improvement over the Markov chain)
        for t in range(done, sw.T):
            classes.append(np.zeros((sw.periods[t].n_s, sw.periods[t].xs.size), np.int64))
            kerns.append(np.asarray(markov_kernels[t], dtype=float)[None])
        value, laws, resid, drift = bucket_chain_value(sw, classes, kerns)
        tried[key] = dict(value=value, seconds=time.perf_counter() - t_pass, periods=done,
                          buckets=b)
        if best is None or value > best[0]:
            best = (value, resid, drift, name, b, classes, kerns, laws)
        if done < sw.T and out_of_time:
            break
    secs = time.perf_counter() - t0
    if best is None:
        return PathInner(np.nan, np.inf, np.inf, secs, status, None, tried, int(counts[0]))
    value, resid, drift, name, b, classes, kerns, laws = best
    return PathInner(value, resid, drift, secs, status, name, tried, b, classes, kerns, laws)


def improve(sw, markov_kernels: list, sign: float, *, max_seconds: float,
            dual: list | None = None, moves: list | None = None, dual_name: str = "dual",
            buckets=None) -> tuple[PathInner, dict]:
    """(``path_inner`` of the Markov chain ``markov_kernels`` against its own values to go,
    then against ``dual`` (a superhedge's values to go, ``dual_value_to_go``, named
    ``dual_name``, its LPs started from ``moves``), then against ``MIX`` times the first plus
    1 - ``MIX`` times the second (``"mixed"``, its LPs started from ``moves`` too), its
    report): value (times ``sign``, the payoff's own sign), marginal error, drift, start,
    status, seconds, every pass tried, ``fits`` (``markov_inner.fits_marginals``) and
    ``adopted`` (False; the caller sets it). ``buckets``: as for ``path_inner``."""
    values = dict(markov=_backward(sw, markov_kernels))
    if dual is not None:
        values[dual_name] = dual
        values["mixed"] = [MIX * a + (1.0 - MIX) * np.asarray(b, dtype=float)
                           for a, b in zip(values["markov"], dual)]
    path = path_inner(sw, markov_kernels, values, max_seconds=max_seconds, buckets=buckets,
                      moves=None if moves is None else {dual_name: moves, "mixed": moves})
    report = dict(value=sign * path.value, marginal_error=path.residual, drift=path.drift,
                  start=path.start, status=path.status, seconds=path.seconds,
                  tried={k: dict(v, value=sign * v["value"]) for k, v in path.tried.items()},
                  fits=fits_marginals(path.value, path.residual, path.drift), adopted=False)
    return path, report
