"""One-period martingale transport by column generation in HiGHS (DESIGN §2.8).

Sources at points x_i with masses p_i go to the law nu on the points y_j: a plan pi >= 0 with
sum_j pi_ij = p_i, sum_i pi_ij = nu_j and sum_j pi_ij (y_j - x_i) = 0 (rows: each source's mass,
each y's law, each source's martingale condition; one column per pair). Used by the Markov
chains of ``markov_inner`` (one source per grid point) and the path-dependent chains of
``path_inner`` (one source per grid point and class of the running statistic).
"""

from __future__ import annotations

import time

import numpy as np

PRICE_TOL = 1e-10
"""Reduced cost, relative to the cost scale, below which a pair is added to the model."""


def near_pairs(xv: np.ndarray, yv: np.ndarray, near: int, *, both: bool = False,
               doubling: bool = False) -> np.ndarray:
    """(n_x, n_y) mask of the ``near`` nearest y of each source (with ``both`` also the
    nearest sources of each y), and with ``doubling`` the y at index distances 1, 2, 4, 8, ...
    on both sides of each source (so that every source reaches every part of the law: the
    nearest pairs alone may hold no martingale coupling)."""
    dist = np.abs(yv[None, :] - xv[:, None])
    mask = np.zeros(dist.shape, dtype=bool)
    np.put_along_axis(mask, np.argsort(dist, axis=1)[:, :near], True, axis=1)
    if both:
        np.put_along_axis(mask, np.argsort(dist, axis=0)[:near, :], True, axis=0)
    if doubling:
        ny = yv.size
        pos = np.searchsorted(yv, xv)
        for step in 2 ** np.arange(1, int(np.log2(max(ny, 2))) + 1):
            for q in (pos - step, pos + step - 1):
                ok = (q >= 0) & (q < ny)
                mask[np.flatnonzero(ok), q[ok]] = True
    return mask


class TransportLP:
    """The LP of the module docstring kept in one HiGHS model, holding only some pairs, so that a new cost is solved from the last
    optimal basis (``start``: flat indices i * n_y + j of the first pairs). Every solve is priced against all pairs: those whose reduced cost
    c - a_i - b_j - h_i (y_j - x_i) under the LP's duals is below ``-PRICE_TOL`` times the cost
    scale are added and the LP re-solved, until none is (the plan is then optimal for the full
    LP up to HiGHS's own dual tolerance). A restricted LP with no feasible plan gets every
    pair."""

    def __init__(self, xv: np.ndarray, mass: np.ndarray, yv: np.ndarray, nu: np.ndarray,
                 start: np.ndarray):
        import highspy

        from deepquant.mmot.colgen import _quiet_highs

        nx, ny = xv.size, yv.size
        self.shape = (nx, ny)
        self.a = np.repeat(np.arange(nx), ny)
        self.j = np.tile(np.arange(ny), nx)
        self.dx = yv[self.j] - xv[self.a]
        b = np.concatenate([mass, nu, np.zeros(nx)])
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
        self._add(np.unique(np.asarray(start, dtype=np.int64)), np.zeros(nx * ny))

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

    def solve(self, cost: np.ndarray, seconds: float) -> np.ndarray | None:
        """The plan (n_x, n_y) minimising <cost, pi>; when ``seconds`` run out after a pricing
        round, the last restricted optimum (a plan with the exact marginals, no worse than any
        plan on the model's pairs); None if HiGHS finds none in time."""
        nx, ny = self.shape
        cost = np.ravel(cost).astype(float)
        t_end = time.perf_counter() + max(seconds, 1e-3)
        self.h.changeColsCost(self.cols.size, np.arange(self.cols.size, dtype=np.int32),
                              cost[self.cols])
        scale = max(1.0, float(np.max(np.abs(cost), initial=0.0)))
        plan = None
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
            sol = self.h.getSolution()
            plan = np.zeros(nx * ny)
            plan[self.cols] = np.asarray(sol.col_value)
            y = np.asarray(sol.row_dual)
            rc = cost - y[self.a] - y[nx + self.j] - y[nx + ny + self.a] * self.dx
            new = np.flatnonzero((rc < -PRICE_TOL * scale) & ~self.present)
            if new.size == 0 or time.perf_counter() >= t_end:
                break
            self._add(new, cost)
        return None if plan is None else np.maximum(plan.reshape(nx, ny), 0.0)
