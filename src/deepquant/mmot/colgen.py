"""Exact chain LP by column generation, priced by the envelope sweep's layout (DESIGN §2.8).

The chain LP of ``deepquant.mmot.lp`` has one column per move (t, x, s) -> y: at M = 150 points
and 5 periods that is 5-30 million columns, while an optimal plan uses a few per state. Here the
LP is solved on a small column set and grown until no column of the full LP prices out:

1. start from the moves closest to the supporting lines of the exact envelopes for some
   potentials u (a coarse grid's solution interpolated, or a smoothed solution), plus the
   support of a glued one-period martingale coupling (so the restricted LP is feasible);
2. solve the restricted LP (HiGHS, warm-started simplex after the first solve);
3. sweep the restricted LP's potentials u exactly (``_Sweeper.certify``): that is a valid outer
   bound, and once it meets the restricted value (within ``pricing_tol``) the LP is solved;
4. otherwise price EVERY move with the duals (phi_t(x, s), h_t(x, s), u_{t+1}(y)) in O(M) per
   state, add the violated ones (and, with ``contact_k``, the sweep's own best response to u:
   the moves nearest its supporting lines), repeat.

The outer test in step 3 is what ends a degenerate LP early: states that carry no mass have
arbitrary LP duals, and pricing with those keeps finding "violated" moves that cannot change
the value (measured: the forward-start straddle at M = 25 ends at round 4 instead of 16).

The restricted plan is feasible for the full LP, so its value is a rigorous **inner** bound; its
potentials u, swept exactly (``_Sweeper.hard`` with the violation check), give the **outer**
bound. At convergence the two agree to the LP tolerance.

The LP is posed in the sweep's sign convention (maximise sign * payoff) and in its layout:
states (s, a) of ``_Period.live`` at each date, moves to the points ``ys`` of the next support.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from deepquant.results import result_dict

__all__ = ["ColgenResult", "band_moves", "solve_chain_colgen"]


@dataclass(frozen=True)
class ColgenResult:
    """Restricted-LP solution (the package's result protocol, ``deepquant.results``).

    ``value`` (sign convention of the sweep), ``u`` (the potentials in the sweep's flat layout;
    None when no restricted LP was solved), ``residual`` (max |A x - b| of the plan over all
    rows of the chain LP), ``violation`` (largest reduced-cost violation left), ``nit`` (LP
    rounds), ``columns``, ``status``: ``"optimal"`` (no column prices out), ``"restricted"``
    (one restricted solve, as asked), ``"max_rounds"``, ``"time_budget"``, ``"infeasible"``,
    ``"too_large"`` or ``"lp_failed"``. A building block of ``certified``, which reports its
    outcome, so a partial solve does not warn here."""

    value: float
    u: np.ndarray | None
    residual: float
    violation: float
    nit: int
    columns: int
    seconds: float
    status: str
    message: str
    lp_seconds: float

    @property
    def success(self) -> bool:
        return self.status in ("optimal", "restricted")

    @property
    def rounds(self) -> int:
        return self.nit

    def to_dict(self) -> dict:
        return result_dict(self, skip=("u",))


class _Layout:
    """Row numbering of the chain LP in the sweep's layout."""

    def __init__(self, sw):
        T = sw.T
        self.T = T
        lives = [sw.periods[t].live for t in range(T)]
        self.idx = []
        self.n_live = []
        self.states = [np.nonzero(live) for live in lives]  # (s, a) of each live state, in order
        for live in lives:
            tab = -np.ones(live.shape, dtype=np.int64)
            n = int(live.sum())
            tab[live] = np.arange(n)
            self.idx.append(tab)
            self.n_live.append(n)
        r = 0
        self.state_row, self.marg_row, self.mart_row = [], [], []
        for t in range(T):
            self.state_row.append(r)
            r += self.n_live[t]
        for t in range(T):
            self.marg_row.append(r)
            r += sw.periods[t].ys.size
        for t in range(T):
            self.mart_row.append(r)
            r += self.n_live[t]
        self.n_rows = r
        b = np.zeros(r)
        per0 = sw.periods[0]
        b[self.state_row[0]:self.state_row[0] + self.n_live[0]] = sw.mass0[per0.live]
        for t in range(T):
            ys = sw.periods[t].ys
            b[self.marg_row[t]:self.marg_row[t] + ys.size] = sw.mu[t + 1, ys]
        self.b = b


def _columns(sw, lay: _Layout, t: int, s: np.ndarray, a: np.ndarray, j: np.ndarray):
    """Sparse entries (rows, cols-local, vals) and min-form costs of the moves (t, s, a) -> j."""
    per = sw.periods[t]
    n = s.size
    k = np.arange(n)
    st = lay.idx[t][s, a]
    rows = [lay.state_row[t] + st, lay.marg_row[t] + j, lay.mart_row[t] + st]
    cols = [k, k, k]
    vals = [np.ones(n), np.ones(n), per.yv[j] - per.xv[a]]
    nidx, nw = per.nidx[s, j], per.nw[s, j]  # (n, 2)
    if t + 1 < lay.T:
        for slot in range(2):
            ok = nw[:, slot] > 0
            nxt = lay.idx[t + 1][nidx[ok, slot], j[ok]]
            if np.any(nxt < 0):
                raise RuntimeError("augmented chain reach masks are inconsistent")  # internal
            rows.append(lay.state_row[t + 1] + nxt)
            cols.append(k[ok])
            vals.append(-nw[ok, slot])
        cost = np.zeros(n)
    else:
        g = sw.g_term
        cost = -(nw[:, 0] * g[nidx[:, 0], j] + np.where(nw[:, 1] > 0, nw[:, 1]
                                                        * g[nidx[:, 1], j], 0.0))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), cost


def _near_contact(sw, uvec: np.ndarray, k: int):
    """Per period, boolean (n_s, X, Y) masks of the k moves of each state closest to the
    supporting line of the exact envelope for ``uvec`` (the contact points when u is optimal)."""
    u = sw.split(uvec)
    w = np.where(sw.live_T, sw.g_term - u[sw.T - 1][None, :], 0.0)
    masks = [None] * sw.T
    for t in range(sw.T - 1, -1, -1):
        per = sw.periods[t]
        G = per.gather(w)
        val, slope, j1, j2, _, _ = per.hull(G)
        ss, aa = np.nonzero(per.live)
        kk = min(k, per.ys.size)
        picks = []
        for c in range(0, ss.size, 20_000):
            s_, a_ = ss[c:c + 20_000], aa[c:c + 20_000]
            gap = (val[s_, a_][:, None] + slope[s_, a_][:, None]
                   * (per.yv[None, :] - per.xv[a_][:, None]) - G[s_])
            picks.append(np.argpartition(gap, kk - 1, axis=1)[:, :kk])
        near = np.concatenate(picks) if picks else np.zeros((0, kk), np.int64)
        sel = np.concatenate([near, j1[ss, aa][:, None], j2[ss, aa][:, None]], axis=1)
        masks[t] = (np.repeat(ss, sel.shape[1]), np.repeat(aa, sel.shape[1]), sel.ravel())
        w = np.where(per.live, val - (u[t - 1][None, :] if t > 0 else 0.0), 0.0)
    return masks


def _coupling_moves(sw):
    """Moves of a glued one-period martingale coupling of (mu_t, mu_{t+1}) applied to every
    state at t: with them the restricted LP is feasible."""
    from deepquant.mmot.lp import _feasible_martingale_plan

    out = []
    for t in range(sw.T):
        per = sw.periods[t]
        plan = _feasible_martingale_plan(per.xv, per.yv, sw.mu[t, per.xs], sw.mu[t + 1, per.ys])
        if plan is None:
            raise ValueError(f"marginals {t} and {t + 1} admit no martingale coupling on the "
                             "grid (not in convex order)")
        aa, jj = np.nonzero(plan > 0)
        ss_all, aa_all = np.nonzero(per.live)
        # every live state (s, a) gets the moves of its point a
        order = np.argsort(aa, kind="stable")
        aa, jj = aa[order], jj[order]
        start = np.searchsorted(aa, np.arange(per.xs.size))
        stop = np.searchsorted(aa, np.arange(per.xs.size), side="right")
        cnt = (stop - start)[aa_all]
        rep_s = np.repeat(ss_all, cnt)
        rep_a = np.repeat(aa_all, cnt)
        offs = np.repeat(start[aa_all] - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))
        out.append((rep_s, rep_a, jj[offs]))
    return out


def _duals(sw, lay: _Layout, y: np.ndarray):
    """Row duals of the min-form LP -> (phi per period (n_s, X), u per period (Y,), h per
    period (n_s, X)) in the max-form sign."""
    phi, u, h = [], [], []
    for t in range(sw.T):
        per = sw.periods[t]
        p = np.zeros(per.live.shape)
        p[per.live] = -y[lay.state_row[t]:lay.state_row[t] + lay.n_live[t]]
        hh = np.zeros(per.live.shape)
        hh[per.live] = -y[lay.mart_row[t]:lay.mart_row[t] + lay.n_live[t]]
        phi.append(p)
        h.append(hh)
        u.append(-y[lay.marg_row[t]:lay.marg_row[t] + per.ys.size])
    return phi, u, h


def _price(sw, lay, phi, u, h, in_model, tol, per_state):
    """Violated moves: G_{t+1}(s, y) - phi_t(s, a) - u_{t+1}(y) - h_t(s, a)(y - x_a) > tol,
    at most ``per_state`` per state (the most violated). Returns the new moves per period and
    the largest violation."""
    new = []
    worst = 0.0
    for t in range(sw.T):
        per = sw.periods[t]
        w_next = phi[t + 1] if t + 1 < sw.T else np.where(sw.live_T, sw.g_term, 0.0)
        G = per.gather(w_next)
        ss, aa = lay.states[t]
        adds = []
        for c in range(0, ss.size, 20_000):
            s_, a_ = ss[c:c + 20_000], aa[c:c + 20_000]
            v = (G[s_] - phi[t][s_, a_][:, None] - u[t][None, :]
                 - h[t][s_, a_][:, None] * (per.yv[None, :] - per.xv[a_][:, None]))
            v[in_model[t][lay.idx[t][s_, a_]]] = -np.inf
            worst = max(worst, float(v.max(initial=0.0)))
            kk = min(per_state, per.ys.size)
            top = np.argpartition(-v, kk - 1, axis=1)[:, :kk]
            tv = np.take_along_axis(v, top, axis=1)
            ok = tv > tol
            r = np.nonzero(ok)[0]
            adds.append((s_[r], a_[r], top[ok]))
        new.append(tuple(np.concatenate(z) for z in zip(*adds)) if adds else None)
    return new, worst


def _quiet_highs():
    """A silent ``highspy.Highs``: its first construction in a process prints a banner on the
    C-level stdout (which would corrupt JSON output), so stdout is pointed at /dev/null
    around it."""
    import os
    import sys

    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    h.setOptionValue("output_flag", False)
    return h


def band_moves(sw):
    """Per period, the moves inside the bands of the last smoothed sweep of ``sw`` (the support
    of the smoothed plan), as (s, a, j) arrays."""
    out = []
    for t in range(sw.T):
        per = sw.periods[t]
        if sw.bands[t] is None:
            out.append(None)
            continue
        ss, aa = np.nonzero(per.live)
        lo, hi = sw.bands[t][0][ss, aa], sw.bands[t][1][ss, aa]
        n = np.maximum(hi - lo + 1, 0)
        first = np.repeat(lo - np.cumsum(n) + n, n)
        out.append((np.repeat(ss, n), np.repeat(aa, n), first + np.arange(int(n.sum()))))
    return out


def solve_chain_colgen(sw, uvec: np.ndarray, *, k: int = 4, extra=None,
                       pricing_tol: float = 1e-9, per_state: int = 2, max_rounds: int = 500,
                       max_seconds: float = 600.0, max_columns: int | None = None,
                       solver: str = "simplex", feasibility_tol: float = 1e-9,
                       contact_k: int = 1, certify_stop: bool = True,
                       log=None) -> ColgenResult:
    """Solve the chain LP of ``sw`` (a ``sweep._Sweeper``) exactly by column generation,
    starting from the near-contact moves of the potentials ``uvec`` (see the module docstring).

    ``extra``: more starting moves per period ((s, a, j) arrays or None, e.g. ``band_moves``).
    ``max_rounds=1`` solves the restricted LP once (a feasible plan: an inner value).
    ``max_columns``: give up (status ``"too_large"``) when the starting set is larger. ``solver``: HiGHS's
    ``"simplex"`` or ``"ipm"`` (with crossover; better for one large cold solve).
    ``certify_stop``: end when the round's outer bound meets its value (step 3; False keeps
    pricing until no move violates, the textbook rule, kept for the benchmark).
    ``contact_k``: each round also adds the ``contact_k`` moves of every state nearest the
    supporting lines of the exact sweep of the round's potentials.
    ``pricing_tol`` is relative to the payoff scale ``sw.scale``; ``log``, if given, is called
    after every round with (round, seconds so far, columns, value, largest violation, outer
    bound of the round's potentials)."""
    import highspy

    t0 = time.perf_counter()
    lay = _Layout(sw)
    T = sw.T
    n_y = [sw.periods[t].ys.size for t in range(T)]
    in_model = [np.zeros((lay.n_live[t], n_y[t]), dtype=bool) for t in range(T)]

    h = _quiet_highs()
    h.setOptionValue("presolve", "off")
    h.setOptionValue("solver", solver)
    h.setOptionValue("primal_feasibility_tolerance", feasibility_tol)
    h.setOptionValue("dual_feasibility_tolerance", feasibility_tol)
    inf = highspy.kHighsInf
    h.addRows(lay.n_rows, lay.b, lay.b, 0, np.zeros(lay.n_rows, np.int32),
              np.zeros(0, np.int32), np.zeros(0))
    # elastic columns +-e_i at a prohibitive cost: the restricted LP stays feasible when HiGHS
    # would call the glued coupling infeasible by tail masses below its tolerance; a plan that
    # still uses them at the end is rejected by its measured residual
    big = 1e4 * (1.0 + float(np.max(np.abs(sw.g_term), initial=0.0)))
    eye = np.arange(lay.n_rows, dtype=np.int32)
    for sgn in (1.0, -1.0):
        h.addCols(lay.n_rows, np.full(lay.n_rows, big), np.zeros(lay.n_rows),
                  np.full(lay.n_rows, inf), lay.n_rows, eye, eye, np.full(lay.n_rows, sgn))
    n_elastic = 2 * lay.n_rows
    blocks: list[sparse.csc_matrix] = []  # the model's columns, in order
    n_cols = 0

    def add(t, s, a, j):
        nonlocal n_cols
        st = lay.idx[t][s, a]
        key = st * n_y[t] + j
        key = np.unique(key[~in_model[t].ravel()[key]])
        if key.size == 0:
            return 0
        st, j = key // n_y[t], key % n_y[t]
        live_s, live_a = lay.states[t]
        rows, cols, vals, cost = _columns(sw, lay, t, live_s[st], live_a[st], j)
        m = sparse.csc_matrix((vals, (rows, cols)), shape=(lay.n_rows, key.size))
        h.addCols(key.size, cost, np.zeros(key.size), np.full(key.size, inf), m.nnz,
                  m.indptr[:-1].astype(np.int32), m.indices.astype(np.int32),
                  m.data.astype(float))
        in_model[t].ravel()[key] = True
        blocks.append(m)
        n_cols += key.size
        return key.size

    for t, (s, a, j) in enumerate(_coupling_moves(sw)):
        add(t, s, a, j)
    for t, (s, a, j) in enumerate(_near_contact(sw, uvec, k)):
        add(t, s, a, j)
    for t, mv in enumerate(extra or []):
        if mv is not None:
            add(t, *mv)
    if max_columns is not None and n_cols > max_columns:
        return ColgenResult(value=np.nan, u=None, residual=np.inf, violation=np.inf, nit=0,
                            columns=n_cols, seconds=time.perf_counter() - t0, status="too_large",
                            message=f"{n_cols} starting columns > max_columns={max_columns}",
                            lp_seconds=0.0)
    tol = pricing_tol * sw.scale
    rounds = 0
    lp_seconds = 0.0
    status, message = "max_rounds", "round limit reached"
    worst = np.inf
    sol = None
    u = None
    while True:
        t_lp = time.perf_counter()
        # HiGHS's run clock accumulates over the re-solves, so the limit is that clock plus
        # what is left of the budget
        h.setOptionValue("time_limit",
                         h.getRunTime() + max(1.0, max_seconds - (t_lp - t0)))
        h.run()
        lp_seconds += time.perf_counter() - t_lp
        rounds += 1
        ms = h.getModelStatus()
        if ms != highspy.HighsModelStatus.kOptimal:
            if sol is None:
                code = ("infeasible" if ms == highspy.HighsModelStatus.kInfeasible else
                        "time_budget" if ms == highspy.HighsModelStatus.kTimeLimit else
                        "lp_failed")
                return ColgenResult(value=np.nan, u=None, residual=np.inf, violation=np.inf,
                                    nit=rounds, columns=n_cols,
                                    seconds=time.perf_counter() - t0, status=code,
                                    message=f"HiGHS: {h.modelStatusToString(ms)}",
                                    lp_seconds=lp_seconds)
            status = "time_budget" if ms == highspy.HighsModelStatus.kTimeLimit else "lp_failed"
            message = f"stopped: HiGHS {h.modelStatusToString(ms)} (last optimal round kept)"
            break
        sol = h.getSolution()
        value = -float(h.getInfo().objective_function_value)
        x_cols = np.asarray(sol.col_value, dtype=float)
        blocks_done = len(blocks)
        y = np.asarray(sol.row_dual, dtype=float)
        phi, u, hh = _duals(sw, lay, y)
        if max_rounds <= 1:
            status, message = "restricted", "restricted LP solved once (no pricing)"
            worst = np.nan
            break
        outer = sw.certify(np.concatenate(u))[0]
        new, worst = _price(sw, lay, phi, u, hh, in_model, tol, per_state)
        if log is not None:
            log(rounds, time.perf_counter() - t0, n_cols, value, worst, outer)
        if certify_stop and outer - value <= tol:
            # the exact sweep of the LP's potentials meets the plan's value: the LP optimum
            # is reached; the remaining violations are duals of states that carry no mass
            status, message = "optimal", "the swept potentials certify the plan's value"
            break
        if not any(nw is not None and nw[0].size for nw in new):
            status, message = "optimal", "no column prices out"
            break
        if rounds >= max_rounds or time.perf_counter() - t0 > max_seconds:
            status, message = (("max_rounds", "round limit reached") if rounds >= max_rounds
                               else ("time_budget", "time budget spent"))
            break
        added = sum(add(t, *nw) for t, nw in enumerate(new) if nw is not None and nw[0].size)
        if contact_k:
            # the exact sweep's best response to the LP's potentials, at every state
            added += sum(add(t, *mv) for t, mv in
                         enumerate(_near_contact(sw, np.concatenate(u), contact_k)))
        if added == 0:
            status, message = "optimal", "no new column prices out"
            break
    elastic = float(x_cols[:n_elastic].sum())
    x = x_cols[n_elastic:]
    # residual of the plan on every row (columns not in the model are zero)
    resid_vec = -lay.b.copy()
    pos = 0
    for m in blocks[:blocks_done]:
        resid_vec += m @ x[pos:pos + m.shape[1]]
        pos += m.shape[1]
    residual = max(float(np.max(np.abs(resid_vec), initial=0.0)),
                   float(max(0.0, -x.min(initial=0.0))))
    if elastic > feasibility_tol * max(1.0, float(np.abs(lay.b).sum())):
        status = "infeasible"
        message = f"elastic mass {elastic:.3e} left: the restricted LP is infeasible ({message})"
    return ColgenResult(value=value, u=np.concatenate(u), residual=residual, violation=worst,
                        nit=rounds, columns=n_cols, seconds=time.perf_counter() - t0,
                        status=status, message=message, lp_seconds=lp_seconds)
