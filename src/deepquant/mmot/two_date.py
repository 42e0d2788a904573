"""Inner values of a payoff of two dates, f(X_t1, X_t2), from its conditional laws (DESIGN
§2.8).

The chain LP of such a payoff carries X_t1 through every period from t1 to t2. The same
problem can be written over the conditional laws nu_t^i of X_t given X_t1 = x_i alone: each
nu_t^i has mean x_i, consecutive ones are in convex order (then, by Strassen's theorem, a
martingale with kernels in (X_t, X_t1) joins them), and mu_t1(x_i) nu_t^i summed over i is
mu_t. Convex order on the grid is the order of the call prices at the grid's points, written
with the tail masses F and call prices C of each law as variables (two sparse rows per point),
so this LP is small where the chain LP is not. Each law is kept to the hull of the
relaxation's optimal plan from x_i (``relaxed``; a restriction, so its value is a primal
value). Rows of mu_t1 lighter than a threshold (``LIGHTS``) follow the Markov chain's kernels,
their laws taken off the aggregate ones.

The LP's laws are then joined into a chain: per period one block-diagonal LP of martingale
couplings from each law to the next (slacks on the targets, since the laws are in convex order
to the LP's tolerance only; the chain goes on from the laws the couplings reach), the kernels
of (X_t, X_t1) read from them, and the chain valued exactly with its marginal and martingale
residuals (``path_inner.bucket_chain_value``), so it is an inner value by the same test as
every other (``markov_inner.fits_marginals``), whatever the LPs reached.

Measured (Heston, N = 5, M = 150, the forward-start straddle's lower side): 26,080 variables,
2.1 s for the LP and 0.4 s for the couplings; the chain 0.057965809 (L1 marginal error 1.3e-8,
martingale residual 2.9e-10) against the relaxation's certified bound 0.0579658074, where the
best path chain is 0.17% off; the upper side needs wider windows than the plan's hull and
minutes, so the LP runs only up to ``MAX_VARIABLES`` (docs/benchmarks-certified.md, "Where the
straddle's optimum lies").
"""

from __future__ import annotations

import time

import numpy as np
from scipy import optimize, sparse

from deepquant.mmot.markov_inner import fits_marginals
from deepquant.mmot.path_inner import bucket_chain_value

__all__ = ["LIGHTS", "MAX_VARIABLES", "conditional_law_chain"]

LIGHTS = (1e-8, 1e-6)
"""Rows of mu_t1 below this mass follow the Markov chain's kernels, the next threshold tried
when HiGHS reads the LP as infeasible. HiGHS drops matrix coefficients below 1e-9 (with every
row the LP reads as infeasible), and rows of a few 1e-7 can need more slack than its
tolerances give (a 25-point grid on [0.6, 1.4], whose truncated tails pile mass on the grid's
ends: infeasible with 1e-8, solved with 1e-6); at 150 points on [0.55, 1.45] it is the other
way round."""

MAX_VARIABLES = 40_000
"""Largest conditional-law LP run: 26,080 variables solved in 2.1 s (the N = 5 straddle's
lower side); 69,312 ran 9 s to read as infeasible (its upper side, which needs wider windows)."""

TOL = dict(primal_feasibility_tolerance=1e-9, dual_feasibility_tolerance=1e-9)


class _Rows:
    """Sparse rows in COO form."""

    def __init__(self):
        self.r, self.c, self.v, self.b = [], [], [], []

    def add(self, cols, vals, rhs):
        self.r.extend([len(self.b)] * len(cols))
        self.c.extend(cols)
        self.v.extend(vals)
        self.b.append(rhs)

    def matrix(self, n):
        return sparse.csr_matrix((self.v, (self.r, self.c)), shape=(len(self.b), n)), \
            np.array(self.b)


def conditional_law_chain(sw, markov_kernels: list, plan: np.ndarray, t1: int, *,
                          max_seconds: float, margin: int = 0) -> dict:
    """The chain of the conditional laws (module docstring) for the side of ``sw`` (a sweeper
    of a chain whose statistic is X_t1, ``kind == "value"``), within ``max_seconds``: a dict
    with ``status`` ("done", "too_large", "no_lp", "no_coupling"), and when done its
    ``value`` (E[sign * f]), ``residual`` (L1 marginal error summed over dates), ``drift``,
    ``fits``, ``classes`` / ``kernels`` (``path_inner`` layout), ``variables``, ``seconds``.
    ``markov_kernels``: a Markov martingale chain of ``sw`` (its kernels before t1 and for the
    light rows); ``plan``: the relaxation's optimal plan (M, M) of (X_t1, X_t2) on the grid."""
    t0 = time.perf_counter()
    mu, g = sw.mu, sw.chain.grid
    size, t2 = g.size, sw.T
    window = {}
    for i in np.flatnonzero(mu[t1] > 0):
        sup = np.flatnonzero(plan[i] > 0)
        a = min(sup.min(initial=i), i) - margin
        b = max(sup.max(initial=i), i) + margin
        window[i] = np.arange(max(a, 0), min(b, size - 1) + 1)
    heavy = np.flatnonzero(mu[t1] >= LIGHTS[0])
    variables = sum(3 * window[i].size for i in heavy) * (t2 - t1)
    out = dict(status="too_large", variables=int(variables), seconds=0.0)
    if variables > MAX_VARIABLES:
        return out
    grid_kernels = []
    for t, per in enumerate(sw.periods):
        k = np.zeros((size, size))
        k[np.ix_(per.xs, per.ys)] = markov_kernels[t]
        grid_kernels.append(k)
    laws = None
    for light in LIGHTS:
        heavy = np.flatnonzero(mu[t1] >= light)
        taken = {t: np.zeros(size) for t in range(t1 + 1, t2 + 1)}
        for i in np.flatnonzero((mu[t1] > 0) & (mu[t1] < light)):
            law = np.zeros(size)
            law[i] = mu[t1, i]
            for t in range(t1, t2):
                law = law @ grid_kernels[t]
                taken[t + 1] += law
        laws = _laws(sw, heavy, window, taken, t1,
                     max(max_seconds - (time.perf_counter() - t0), 0.0))
        if laws is not None:
            break
    if laws is None:
        return dict(out, status="no_lp", seconds=time.perf_counter() - t0)
    got = _join(sw, markov_kernels, laws, heavy, t1,
                max(max_seconds - (time.perf_counter() - t0), 0.0))
    if got is None:
        return dict(out, status="no_coupling", seconds=time.perf_counter() - t0)
    classes, kernels = got
    value, _, resid, drift = bucket_chain_value(sw, classes, kernels)
    return dict(out, status="done", value=value, residual=resid, drift=drift,
                fits=fits_marginals(value, resid, drift), classes=classes, kernels=kernels,
                light=light, seconds=time.perf_counter() - t0)


def _laws(sw, heavy, window, taken, t1, seconds):
    """The conditional laws (t, i) -> (points, weights) of the LP's optimum for the side of
    ``sw``, or None when HiGHS gives none in ``seconds``."""
    mu, g, t2 = sw.mu, sw.chain.grid, sw.T
    state = _state_of(sw, t2)
    terminal = sw.g_term  # (n_T, X_T), the sweep's sign
    xs_t2 = {int(x): a for a, x in enumerate(np.flatnonzero(sw.chain.support[t2]))}
    n, law_col, tail_col, call_col = 0, {}, {}, {}
    for t in range(t1 + 1, t2 + 1):
        for i in heavy:
            ks = window[i]
            law_col[t, i] = (n, ks[mu[t, ks] > 0])
            n += law_col[t, i][1].size
            tail_col[t, i] = n
            n += ks.size
            call_col[t, i] = n  # C(k) for the window's points but its last (C = 0 there)
            n += ks.size - 1
    eq, ub = _Rows(), _Rows()
    cost = np.zeros(n)
    for t in range(t1 + 1, t2 + 1):
        for i in heavy:
            n0, ys = law_col[t, i]
            f0, c0, ks = tail_col[t, i], call_col[t, i], window[i]
            eq.add(list(range(n0, n0 + ys.size)), [1.0] * ys.size, 1.0)
            eq.add(list(range(n0, n0 + ys.size)), list(g[ys] - g[i]), 0.0)
            at = {int(y): n0 + j for j, y in enumerate(ys)}
            w = ks.size
            for j in range(w - 1, -1, -1):  # F(k) = F(k + 1) + nu(k)
                cols, vals = [f0 + j], [1.0]
                if j < w - 1:
                    cols.append(f0 + j + 1)
                    vals.append(-1.0)
                if int(ks[j]) in at:
                    cols.append(at[int(ks[j])])
                    vals.append(-1.0)
                eq.add(cols, vals, 0.0)
                if j < w - 1:  # C(k) = C(k + 1) + (x_{k+1} - x_k) F(k + 1)
                    cols, vals = [c0 + j, f0 + j + 1], [1.0, -(g[ks[j + 1]] - g[ks[j]])]
                    if j + 1 < w - 1:
                        cols.append(c0 + j + 1)
                        vals.append(-1.0)
                    eq.add(cols, vals, 0.0)
            if t < t2:  # convex order: C_t(k) <= C_{t+1}(k)
                c1 = call_col[t + 1, i]
                for j in range(w - 1):
                    ub.add([c0 + j, c1 + j], [1.0, -1.0], 0.0)
            else:  # the payoff (sweep's sign) at (X_t2, X_t1 = x_i), maximised
                cost[n0:n0 + ys.size] = -mu[t1, i] * terminal[state[i],
                                                              [xs_t2[int(y)] for y in ys]]
        for y in np.flatnonzero(mu[t] > 0):
            cols, vals = [], []
            for i in heavy:
                n0, ys = law_col[t, i]
                j = int(np.searchsorted(ys, y))
                if j < ys.size and ys[j] == y:
                    cols.append(n0 + j)
                    vals.append(mu[t1, i])
            eq.add(cols, vals, max(mu[t, y] - taken[t][y], 0.0))
    a_eq, b_eq = eq.matrix(n)
    a_ub, b_ub = ub.matrix(n)
    if seconds <= 0:
        return None
    res = optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                           method="highs-ipm", options=dict(TOL, time_limit=seconds))
    if res.status != 0:
        return None
    return {k: (ys, np.maximum(res.x[n0:n0 + ys.size], 0.0)) for k, (n0, ys) in law_col.items()}


def _state_of(sw, t) -> dict:
    """Grid index of x_i -> index of the state X_t1 = x_i at date t (>= t1)."""
    g = sw.chain.grid
    return {int(np.flatnonzero(np.isclose(g, v))[0]): s
            for s, v in enumerate(sw.chain.states[t])}


def _join(sw, markov, laws, heavy, t1, seconds):
    """(classes, kernels) of the chain joining the conditional ``laws`` by martingale
    couplings, period by period (Markov kernels before t1 and for the light rows), or None
    when HiGHS gives no coupling in ``seconds``."""
    t0 = time.perf_counter()
    g = sw.chain.grid
    classes, kernels, reached = [], [], {}
    for t, per in enumerate(sw.periods):
        if t < t1:
            classes.append(np.zeros((per.n_s, per.xs.size), np.int64))
            kernels.append(np.asarray(markov[t], float)[None])
            continue
        state = _state_of(sw, t)
        k = np.repeat(np.asarray(markov[t], float)[None], per.n_s, axis=0)
        xpos = {int(x): a for a, x in enumerate(per.xs)}
        ypos = {int(y): b for b, y in enumerate(per.ys)}
        if t == t1:  # from X_t1 = x_i straight to its law at t1 + 1
            for i in heavy:
                ys, w = laws[t + 1, i]
                k[state[i], xpos[i]] = 0.0
                k[state[i], xpos[i], [ypos[int(y)] for y in ys]] = w / w.sum()
        else:
            eq, blocks, n, targets = _Rows(), [], 0, []
            for i in heavy:
                xs, wx = reached.get((t, i), laws[t, i])
                xs, wx = xs[wx > 1e-15], wx[wx > 1e-15]
                ys, wy = laws[t + 1, i]
                blocks.append((i, xs, ys, n))
                for a, x in enumerate(xs):
                    cols = list(n + a * ys.size + np.arange(ys.size))
                    eq.add(cols, [1.0] * ys.size, wx[a])
                    eq.add(cols, list(g[ys] - g[x]), 0.0)
                for j in range(ys.size):
                    targets.append(len(eq.b))
                    eq.add(list(n + np.arange(xs.size) * ys.size + j), [1.0] * xs.size, wy[j])
                n += xs.size * ys.size
            m = len(targets)  # slacks s+ - s- on the targets, their sum minimised
            for j, r in enumerate(targets):
                eq.r.extend([r, r])
                eq.c.extend([n + j, n + m + j])
                eq.v.extend([1.0, -1.0])
            a_eq, b_eq = eq.matrix(n + 2 * m)
            left = seconds - (time.perf_counter() - t0)
            if left <= 0:
                return None
            res = optimize.linprog(np.r_[np.zeros(n), np.ones(2 * m)], A_eq=a_eq, b_eq=b_eq,
                                   bounds=(0, None), method="highs-ds",
                                   options=dict(time_limit=left))
            if res.status != 0:
                return None
            for i, xs, ys, n0 in blocks:
                coupling = res.x[n0:n0 + xs.size * ys.size].reshape(xs.size, ys.size)
                reached[t + 1, i] = (ys, coupling.sum(axis=0))
                cols = [ypos[int(y)] for y in ys]
                for a, x in enumerate(xs):
                    if coupling[a].sum() > 0:
                        k[state[i], xpos[int(x)]] = 0.0
                        k[state[i], xpos[int(x)], cols] = coupling[a] / coupling[a].sum()
        classes.append(np.broadcast_to(np.arange(per.n_s)[:, None],
                                       (per.n_s, per.xs.size)).copy())
        kernels.append(k)
    return classes, kernels
