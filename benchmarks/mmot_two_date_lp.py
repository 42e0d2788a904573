"""How far the relaxation to a forward start's own dates is from the multi-period optimum.

For a payoff f(X_t1, X_t2) the chain LP's states carry X_t1 through every period; the same
problem can be written over the conditional laws nu_t^i of X_t given X_t1 = x_i alone: each
nu_t^i has mean x_i, consecutive ones are in convex order (then, by Strassen's theorem, a
martingale with kernels in (X_t, X_t1) joins them), and mu_t1(x_i) nu_t^i summed over i is
mu_t. Convex order on the grid is the order of the call prices at the grid's points, written
here with the tail masses F and call prices C of each law as variables (two sparse rows per
point), so the LP is small where the chain LP is not. Each law is kept to the hull of the
relaxation's optimal plan from x_i (``--margin`` more points each side): a restriction, so
the value is a primal value, and when it equals the relaxation's bound the relaxation is the
multi-period optimum. Rows of mu_t1 lighter than ``LIGHT`` follow a Markov chain's kernels
(``markov_inner``, 3 s), taken off the aggregate laws, as the path passes treat them.

With ``--chain`` the LP is solved to HiGHS tolerances of 1e-9 and its laws are joined into a
chain: per period one block-diagonal LP of martingale couplings from each law to the next
(the target rows with slacks, since the laws are in convex order to the LP's tolerance only;
the chain goes on from the laws the couplings reach), kernels of (X_t, X_t1), valued exactly
with its marginal and martingale residuals by ``path_inner.bucket_chain_value`` and judged by
``markov_inner.fits_marginals`` as the library's inner values are. Usage:

    python benchmarks/mmot_two_date_lp.py --case n5 --side lower [--margin 0] [--chain]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import optimize, sparse

from deepquant.market.synthetic import heston_marginals
from deepquant.mmot.augment import build_chain
from deepquant.mmot.certified import nest_supports
from deepquant.mmot.lp import lp_bounds
from deepquant.mmot.markov_inner import fits_marginals, markov_inner
from deepquant.mmot.path_inner import bucket_chain_value
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import ForwardStartStraddle

LIGHT = 1e-8
CASES = {"n5": (np.arange(6) * 30 / 365, (0.55, 1.45), 1, 5),
         "m12": (np.arange(13) / 12, (0.4, 1.8), 1, 12)}


class _Rows:
    """Sparse rows (equalities or inequalities) in COO form."""

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), default="n5")
    ap.add_argument("--side", choices=("lower", "upper"), default="lower")
    ap.add_argument("--margin", type=int, default=0)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--chain", action="store_true", help="join the laws into a chain")
    args = ap.parse_args()
    times, (lo, hi), t1, t2 = CASES[args.case]
    m, _ = nest_supports(heston_marginals(times, grid=np.linspace(lo, hi, args.size)), t2)
    g, mu = m.grid, np.asarray(m.weights)
    size = g.size
    payoff = ForwardStartStraddle(t1=t1, t2=t2)
    sign = 1.0 if args.side == "upper" else -1.0
    rel = lp_bounds(m.select([t1, t2]), payoff.on_dates((t1, t2)), return_plan=True,
                    decompose=False, sides=(args.side,))
    rside = rel.lower_side if args.side == "lower" else rel.upper_side
    plan = np.asarray(rside.plan[0]).sum(axis=1)  # (x_t1, x_t2)
    heavy = np.flatnonzero(mu[t1] >= LIGHT)
    light = np.flatnonzero((mu[t1] > 0) & (mu[t1] < LIGHT))
    sw = _Sweeper(build_chain(m, payoff), m, sign)
    mk = markov_inner(sw, max_seconds=3)
    kern = []
    for t, per in enumerate(sw.periods):
        k = np.zeros((size, size))
        k[np.ix_(per.xs, per.ys)] = mk.kernels[t]
        kern.append(k)
    taken = {t: np.zeros(size) for t in range(t1 + 1, t2 + 1)}
    light_value = 0.0
    for i in light:
        law = np.zeros(size)
        law[i] = mu[t1, i]
        for t in range(t1, t2):
            law = law @ kern[t]
            taken[t + 1] += law
        light_value += float(law @ payoff.terminal(g, g[i]))
    t0 = time.perf_counter()
    window = {}
    for i in heavy:
        sup = np.flatnonzero(plan[i] > 0)
        a = min(sup.min(initial=i), i) - args.margin
        b = max(sup.max(initial=i), i) + args.margin
        window[i] = np.arange(max(a, 0), min(b, size - 1) + 1)
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
        for y in np.flatnonzero(mu[t] > 0):
            cols, vals = [], []
            for i in heavy:
                n0, ys = law_col[t, i]
                j = int(np.searchsorted(ys, y))
                if j < ys.size and ys[j] == y:
                    cols.append(n0 + j)
                    vals.append(mu[t1, i])
            eq.add(cols, vals, max(mu[t, y] - taken[t][y], 0.0))
    cost = np.zeros(n)
    for i in heavy:
        n0, ys = law_col[t2, i]
        cost[n0:n0 + ys.size] = mu[t1, i] * payoff.terminal(g[ys], g[i])
    a_eq, b_eq = eq.matrix(n)
    a_ub, b_ub = ub.matrix(n)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    tol = dict(primal_feasibility_tolerance=1e-9, dual_feasibility_tolerance=1e-9) \
        if args.chain else {}
    res = optimize.linprog(-sign * cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                           bounds=(0, None), method="highs-ipm", options=tol)
    solve = time.perf_counter() - t0
    value = -sign * res.fun + light_value if res.status == 0 else float("nan")
    print(f"{args.case} {args.side}, M = {size}, margin {args.margin}: relaxation "
          f"{rside.value:.9f}; conditional-law LP {value:.9f} ({res.message[:60]}); "
          f"{n} variables, {a_eq.nnz + a_ub.nnz} nonzeros; build {build:.1f} s, "
          f"solve {solve:.1f} s; Markov chain {sign * mk.value:.7f}")
    if args.chain and res.status == 0:
        t0 = time.perf_counter()
        laws = {k: (ys, np.maximum(res.x[n0:n0 + ys.size], 0.0)) for k, (n0, ys) in
                law_col.items()}
        value, resid, drift = _chain(sw, mk.kernels, laws, heavy, t1)
        print(f"chain: value {sign * value:.9f}, L1 marginal error {resid:.1e}, martingale "
              f"residual {drift:.1e}, fits {fits_marginals(value, resid, drift)}, "
              f"{time.perf_counter() - t0:.1f} s")


def _chain(sw, markov, laws, heavy, t1):
    """(value, marginal error, drift) of the chain joining the conditional ``laws`` (t, i) ->
    (points, weights) by martingale couplings, period by period; Markov kernels before t1 and
    for the light rows."""
    g = sw.chain.grid
    state = {int(np.flatnonzero(np.isclose(g, v))[0]): s
             for s, v in enumerate(sw.chain.states[t1])}
    classes, kernels, reached = [], [], {}
    for t, per in enumerate(sw.periods):
        if t < t1:
            classes.append(np.zeros((per.n_s, per.xs.size), np.int64))
            kernels.append(np.asarray(markov[t], float)[None])
            continue
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
            for r, j in zip(targets, range(m)):
                eq.r.extend([r, r])
                eq.c.extend([n + j, n + m + j])
                eq.v.extend([1.0, -1.0])
            a_eq, b_eq = eq.matrix(n + 2 * m)
            res = optimize.linprog(np.r_[np.zeros(n), np.ones(2 * m)], A_eq=a_eq, b_eq=b_eq,
                                   bounds=(0, None), method="highs-ds")
            if res.status != 0:
                return float("nan"), float("inf"), float("inf")
            for i, xs, ys, n0 in blocks:
                plan = res.x[n0:n0 + xs.size * ys.size].reshape(xs.size, ys.size)
                reached[t + 1, i] = (ys, plan.sum(axis=0))
                cols = [ypos[int(y)] for y in ys]
                for a, x in enumerate(xs):
                    if plan[a].sum() > 0:
                        k[state[i], xpos[int(x)]] = 0.0
                        k[state[i], xpos[int(x)], cols] = plan[a] / plan[a].sum()
        classes.append(np.broadcast_to(np.arange(per.n_s)[:, None],
                                       (per.n_s, per.xs.size)).copy())
        kernels.append(k)
    value, _, resid, drift = bucket_chain_value(sw, classes, kernels)
    return value, resid, drift


if __name__ == "__main__":
    main()
