"""The exact and the smoothed backward sweeps of one side of the augmented chain (DESIGN §2.8).

``_Sweeper`` holds the chain in the layout of the numba kernels (``deepquant.mmot.envelope``):
per period t -> t+1 the live states (s, x) and the points y of the next support. For static
potentials u (flat over the supports of dates 1..T) ``hard`` computes the superhedging value
F(u) with its positions and the worst violation of the superhedging inequality, ``soft`` the
entropic smoothing F_eps with its gradient and the smoothed chain's laws. ``duals_of`` and
``hull_backward`` turn potentials into the grid-indexed hedge (u_t, h_t, V_t).

The sign convention: a sweep maximises sign * payoff (``sign=+1`` the upper side, ``-1`` the
lower side as the upper side of -f).
"""

from __future__ import annotations

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import AugmentedChain
from deepquant.mmot.envelope import kernels
from deepquant.mmot.result import Duals

__all__ = ["duals_of", "hull_backward"]


class _Period:
    """Arrays of one period t -> t+1 in the layout of the kernels (state-major)."""

    def __init__(self, chain: AugmentedChain, t: int, mu_next: np.ndarray):
        m = chain.size
        g = chain.grid
        self.xs = np.flatnonzero(chain.support[t])
        self.ys = np.flatnonzero(chain.support[t + 1])
        self.xv = np.ascontiguousarray(g[self.xs])
        self.yv = np.ascontiguousarray(g[self.ys])
        self.live = np.ascontiguousarray(chain.reach[t][self.xs].T)  # (n_s, X)
        n_s = chain.states[t].size
        n_y = self.ys.size
        coo = chain.transitions[t].tocoo()
        keep = chain.support[t + 1][coo.row % m]
        rows, cols, vals = coo.row[keep], coo.col[keep], coo.data[keep]
        s_idx = rows // m
        jpos = np.searchsorted(self.ys, rows % m)
        order = np.lexsort((cols, jpos, s_idx))
        s_idx, jpos, cols, vals = s_idx[order], jpos[order], cols[order], vals[order]
        flat = s_idx * n_y + jpos
        first = np.ones(flat.size, dtype=bool)
        first[1:] = flat[1:] != flat[:-1]
        slot = np.where(first, 0, 1)
        if flat.size and np.any(np.diff(np.flatnonzero(first), append=flat.size) > 2):
            raise ValueError("the statistic update splits a state over more than two points")
        self.nidx = np.zeros((n_s, n_y, 2), dtype=np.int64)
        self.nw = np.zeros((n_s, n_y, 2))
        self.nidx[s_idx, jpos, slot] = cols
        self.nw[s_idx, jpos, slot] = vals
        # the compiled gather / scatter index without bounds checks: every move must land on a
        # state of date t+1
        self.n_next = chain.states[t + 1].size
        if cols.size and not (0 <= cols.min() and cols.max() < self.n_next):
            raise ValueError(f"the statistic's moves of period {t} leave the {self.n_next} "
                             f"states of date {t + 1}")
        self.logq = np.log(mu_next[self.ys])
        self.n_s = n_s
        self.dead = ~self.live
        self.k = kernels()
        self._scratch = None

    def scratch(self) -> dict:
        """This period's work arrays for the sweeps that reuse them (``_Sweeper.hard`` and
        ``polish.moves_laws`` with ``scratch=True``), allocated on first use. Why: a 12-period
        exact sweep keeps every period's outputs until its end (about 80 MB at M = 150 on the
        Asian's lattice), and fresh arrays of that size are new pages for the kernel to fault
        in on every call: 13 of the sweep's 42 ms (measured, 13 monthly dates)."""
        if self._scratch is None:
            xs, ys = (self.n_s, self.xv.size), (self.n_s, self.ys.size)
            self._scratch = dict(
                G=np.empty(ys), val=np.empty(xs), slope=np.empty(xs), lam=np.empty(xs),
                j1=np.empty(xs, np.int64), j2=np.empty(xs, np.int64),
                vert=np.empty(ys, np.bool_), w=np.empty(xs), q=np.empty(ys),
                mass=np.empty((self.n_next, self.ys.size)))
        return self._scratch

    def hull(self, G: np.ndarray, *, scratch: bool = False):
        """Exact envelopes of the rows of G at the current points: (val, slope, j1, j2, lam,
        vert), see ``envelope.hull_sweep_period``; with ``scratch`` in this period's work arrays
        (``scratch()``: overwritten by the next such call)."""
        shape = (self.n_s, self.xv.size)
        if scratch:
            b = self.scratch()
            val, slope, lam, j1, j2, vert = (b[k] for k in ("val", "slope", "lam", "j1", "j2",
                                                            "vert"))
        else:
            val, slope, lam = np.empty(shape), np.empty(shape), np.empty(shape)
            j1, j2 = np.empty(shape, np.int64), np.empty(shape, np.int64)
            vert = np.empty(G.shape, dtype=np.bool_)
        self.k["hull_sweep_period"](G, self.yv, self.xv, self.live, val, slope, j1, j2, lam, vert)
        return val, slope, j1, j2, lam, vert

    def gather(self, w_next: np.ndarray, *, scratch: bool = False) -> np.ndarray:
        """G[s, j] = sum_k K(s, y_j; s'_k) W_{t+1}(y_j, s'_k); w_next is (n_{t+1}, Y). With
        ``scratch`` in this period's work array (``scratch()``)."""
        if w_next.shape[0] < self.n_next or w_next.shape[1] != self.ys.size:
            raise ValueError(f"gather needs w_next with >= {self.n_next} rows and "
                             f"{self.ys.size} columns, got {w_next.shape}")
        out = self.scratch()["G"] if scratch else np.empty(self.nw.shape[:2])
        self.k["gather_period"](self.nidx, self.nw, np.ascontiguousarray(w_next, dtype=float),
                                out)
        return out

    def scatter(self, q: np.ndarray, n_next: int | None = None, *, scratch: bool = False
                ) -> np.ndarray:
        """Mass (n_{t+1}, Y) at t+1 from q[s, j] = mass of (S_t = s, X_{t+1} = y_j); ``n_next``
        rows (default: the states of date t+1). With ``scratch`` (``n_next`` the default) in
        this period's work array (``scratch()``)."""
        n_next = self.n_next if n_next is None else n_next
        if n_next < self.n_next or q.shape != self.nw.shape[:2]:
            raise ValueError(f"scatter needs q of shape {self.nw.shape[:2]} and n_next >= "
                             f"{self.n_next}, got {q.shape} and {n_next}")
        if scratch and n_next != self.n_next:
            raise ValueError(f"scatter with scratch needs n_next = {self.n_next}, got {n_next}")
        out = self.scratch()["mass"] if scratch else np.empty((n_next, self.ys.size))
        self.k["scatter_period"](self.nidx, self.nw, np.ascontiguousarray(q, dtype=float), out)
        return out

    def moves(self, mass: np.ndarray, j1: np.ndarray, j2: np.ndarray, lam: np.ndarray, *,
              scratch: bool = False) -> np.ndarray:
        """q[s, j] (n_s, Y) = mass of (S_t = s, X_{t+1} = y_j) when the live states of ``mass``
        (n_s, X) move as the exact sweep's envelopes say (``hull``'s j1, j2, lam), see
        ``envelope.moves_period``. With ``scratch`` in this period's work array
        (``scratch()``)."""
        shape = (self.n_s, self.xv.size)
        if mass.shape != shape or j1.shape != shape or j2.shape != shape or lam.shape != shape:
            raise ValueError(f"moves needs mass, j1, j2 and lam of shape {shape}, got "
                             f"{mass.shape}, {j1.shape}, {j2.shape}, {lam.shape}")
        ny = self.ys.size
        lo, hi = min(j1.min(), j2.min()), max(j1.max(), j2.max())
        if lo < 0 or hi >= ny:
            raise ValueError(f"moves needs j1 and j2 in [0, {ny}) (positions of date t+1's "
                             f"points), got [{lo}, {hi}]")
        q = self.scratch()["q"] if scratch else np.empty((self.n_s, ny))
        self.k["moves_period"](np.ascontiguousarray(mass, dtype=float), self.live,
                               np.ascontiguousarray(j1, dtype=np.int64),
                               np.ascontiguousarray(j2, dtype=np.int64),
                               np.ascontiguousarray(lam, dtype=float), q)
        return q


class _Sweeper:
    """Exact and smoothed sweeps of one side of one chain."""

    def __init__(self, chain: AugmentedChain, marginals: Marginals, sign: float):
        self.chain = chain
        self.sign = sign
        self.T = chain.last_date
        mu = np.asarray(marginals.weights, dtype=float)
        self.mu = mu
        self.periods = [_Period(chain, t, mu[t + 1]) for t in range(self.T)]
        xs_T = np.flatnonzero(chain.support[self.T])
        self.g_term = np.ascontiguousarray(sign * chain.terminal[xs_T].T)  # (n_T, X_T)
        self.live_T = chain.reach[self.T][xs_T].T
        xs0 = np.flatnonzero(chain.support[0])
        init = chain.initial.toarray()[xs0]  # (X_0, n_0)
        self.mass0 = np.ascontiguousarray((init * mu[0, xs0][:, None]).T)  # (n_0, X_0)
        self.supp = [np.flatnonzero(chain.support[t]) for t in range(self.T + 1)]
        self.sizes = [s.size for s in self.supp[1:]]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.mu_flat = np.concatenate([mu[t, self.supp[t]] for t in range(1, self.T + 1)])
        self.h_warm: list = [None] * self.T
        self.bands: list = [None] * self.T  # (lo, hi) of the last smoothed sweep, per period
        self.scale = float(np.max(np.abs(self.g_term[self.live_T]), initial=0.0)) or 1.0

    def flatten(self, u: np.ndarray) -> np.ndarray:
        """Grid-indexed potentials u (T+1, M) (u_0 ignored, NaN read as 0) as the flat vector
        over the supports of dates 1..T that the sweeps take (the inverse of ``split``)."""
        return np.concatenate([np.nan_to_num(u[t, self.supp[t]]) for t in range(1, self.T + 1)])

    def unflatten(self, uvec: np.ndarray) -> np.ndarray:
        """The flat potentials ``uvec`` as grid-indexed ones (T+1, M), NaN off the supports and
        at date 0 (the inverse of ``flatten``)."""
        u = np.full((self.T + 1, self.chain.size), np.nan)
        for t, piece in enumerate(self.split(uvec), start=1):
            u[t, self.supp[t]] = piece
        return u

    def split(self, uvec: np.ndarray) -> list[np.ndarray]:
        return [uvec[self.offsets[t - 1]:self.offsets[t]] for t in range(1, self.T + 1)]

    def certify(self, uvec: np.ndarray, lowered: np.ndarray | None = None):
        """The certificate of ``uvec``: (outer bound, u, violation per period), the exact sweep
        of ``lower_to_lines(u)`` (``lowered`` if given) with the constant shifted by the
        measured worst violation of every period.

        The tuple keeps ``uvec`` itself (the point the smoothed stages and the finer levels go
        on from: measured, Heston Asian M = 150, lower side, carrying the lowered potentials up
        ends lower, 0.02726 against 0.02799), and ``duals_of`` lowers it again for the hedge."""
        if lowered is None:
            lowered = self.lower_to_lines(uvec)[1]
        value, _, viol = self.hard(lowered, verify=True, scratch=True)
        return value + float(viol.sum()), uvec, viol

    def lower_to_lines(self, uvec: np.ndarray) -> tuple[float, np.ndarray]:
        """(F of the lowered u, u lowered by its slack under the supporting lines, see
        ``hard``): the same envelopes, a bound lower by sum mu_{t+1}(y) slack(y). The value is
        not verified (``certify`` is)."""
        value, _, _, drop = self.hard(uvec, slack=True, scratch=True)
        return value - float(drop @ self.mu_flat), uvec - drop

    def hard(self, uvec: np.ndarray, *, verify: bool = False, slack: bool = False,
             scratch: bool = False):
        """Exact sweep: (F(u), per-period (val, slope, moves), worst violation per period), and
        with ``slack`` the slack of each u_{t+1}(y) (a list over periods, >= 0, 0 where not
        finite). With ``scratch`` the per-period arrays are the periods' work arrays
        (``_Period.scratch``), valid until the next sweep with ``scratch``: for callers that
        read them at once (the polish's steps, the certificates); the numbers are the same.
        One scratch sweep at a time per sweeper (no two threads on one ``_Sweeper``).

        Lowering u_{t+1}(y) by its slack, the smallest gap between the supporting lines of
        period t (the sweep's envelopes) and G_{t,s}(y) over all live pairs, keeps every line
        above its G (the transition rows of the statistic sum to 1, so G moves by the same
        amount in every state s): the envelopes of all periods stay the same and F(u) drops by
        sum mu_{t+1}(y) slack(y). It is the exact minimiser in u of the dual with the positions
        fixed (a c-transform); measured on the potentials carried up from a coarse grid, where
        points between the coarse ones are left above the lines (DESIGN §2.8)."""
        u = self.split(uvec)
        w = np.where(self.live_T, self.g_term - u[self.T - 1][None, :], 0.0)
        out = [None] * self.T
        viol = np.zeros(self.T)
        drops = [None] * self.T
        for t in range(self.T - 1, -1, -1):
            per = self.periods[t]
            G = per.gather(w, scratch=scratch)
            val, slope, j1, j2, lam, _ = per.hull(G, scratch=scratch)
            if verify:
                viol[t] = float(np.max(per.k["hedge_violation_period"](
                    G, per.yv, per.xv, per.live, val, slope), initial=0.0))
            if slack:
                d = per.k["point_slack_period"](G, per.yv, per.xv, per.live, val, slope)
                drops[t] = np.where(np.isfinite(d), np.maximum(d, 0.0), 0.0)
            out[t] = (val, slope, j1, j2, lam)
            if scratch:  # np.where(per.live, val - u_t, 0.0) in place
                w = per.scratch()["w"]
                np.subtract(val, u[t - 1][None, :] if t > 0 else 0.0, out=w)
                np.copyto(w, 0.0, where=per.dead)
            else:
                w = np.where(per.live, val - (u[t - 1][None, :] if t > 0 else 0.0), 0.0)
        value = float(np.sum(self.mass0 * w)) + float(uvec @ self.mu_flat)
        if slack:
            return value, out, viol, np.concatenate(drops)
        return value, out, viol

    def soft(self, uvec: np.ndarray, eps: float, band: float):
        """Smoothed sweep and forward pass: (F_eps, gradient, E[f] of the chain, laws, drift)."""
        eps, band = float(eps), float(band)  # the kernels' signatures (envelope.warm_kernels)
        u = self.split(uvec)
        w = np.where(self.live_T, self.g_term - u[self.T - 1][None, :], 0.0)
        store = [None] * self.T
        drift = 0.0
        for t in range(self.T - 1, -1, -1):
            per = self.periods[t]
            G = per.gather(w) + eps * per.logq[None, :]
            hv, hs, _, _, _, vert = per.hull(G)
            shape = hv.shape
            val, hh, dr = np.empty(shape), np.empty(shape), np.empty(shape)
            lo, hi = np.empty(shape, np.int64), np.empty(shape, np.int64)
            warm = self.h_warm[t]
            use = warm is not None
            per.k["soft_sweep_period"](G, per.yv, per.xv, per.live, hv, hs, vert, eps, band,
                              warm if use else hs, use, val, hh, lo, hi, dr)
            self.h_warm[t] = hh
            drift = max(drift, float(np.max(dr, initial=0.0)))
            store[t] = (G, val, hh, lo, hi)
            self.bands[t] = (lo, hi)
            w = np.where(per.live, val - (u[t - 1][None, :] if t > 0 else 0.0), 0.0)
        value = float(np.sum(self.mass0 * w)) + float(uvec @ self.mu_flat)
        mass = self.mass0
        laws = []
        for t in range(self.T):
            per = self.periods[t]
            G, val, hh, lo, hi = store[t]
            q = np.empty(G.shape)
            per.k["soft_forward_period"](G, per.yv, per.xv, np.ascontiguousarray(mass), hh, lo, hi, val,
                                eps, q)
            mass = per.scatter(q)
            laws.append(mass.sum(axis=0))
        expected = float(np.sum(mass * np.where(self.live_T, self.g_term, 0.0)))
        law = np.concatenate(laws)
        return value, self.mu_flat - law, expected, law, drift


def duals_of(sw: _Sweeper, uvec: np.ndarray) -> Duals:
    """The superhedge of ``uvec`` lowered to its lines (``_Sweeper.lower_to_lines``, the
    potentials whose bound ``_Sweeper.certify`` reports) in the Duals layout (grid-indexed, NaN
    off the supports)."""
    chain = sw.chain
    m = chain.size
    T = sw.T
    uvec = sw.lower_to_lines(uvec)[1]
    _, per_t, _ = sw.hard(uvec)
    u = np.full((T + 1, m), np.nan)
    for t, piece in enumerate(sw.split(uvec), start=1):
        u[t, sw.supp[t]] = piece
    hs, phis = [], []
    for t in range(T):
        val, slope = per_t[t][0], per_t[t][1]
        per = sw.periods[t]
        h = np.full((m, per.n_s), np.nan)
        h[per.xs] = np.where(per.live, slope, np.nan).T
        phi = np.full((m, per.n_s), np.nan)
        phi[per.xs] = np.where(per.live, val, np.nan).T
        hs.append(sw.sign * h)
        phis.append(sw.sign * phi)
    # u_0 absorbs the value at date 0 (the static payoff bought at date 0)
    u[0, sw.supp[0]] = np.nansum(chain.initial.toarray()[sw.supp[0]]
                                 * np.nan_to_num(phis[0][sw.supp[0]], nan=0.0) * sw.sign, axis=1)
    u = sw.sign * u
    phis.append(np.where(chain.reach[T], chain.terminal, np.nan))
    return Duals(u=u, h=hs, phi=phis)


def hull_backward(chain: AugmentedChain, marginals: Marginals, g_sign: float, u: np.ndarray):
    """The exact sweep for grid-indexed potentials ``u`` (T+1, M) (u_0 ignored) on the side
    ``g_sign`` (+1 upper, -1 lower, in the sign-flipped convention of the sweep).

    Returns ``(value, h, phi)``: F(u) of the sign-flipped problem, positions h_t (M, n_t) and
    envelopes V_t (M, n_t), NaN off the reachable pairs."""
    sw = _Sweeper(chain, marginals, g_sign)
    uvec = sw.flatten(u)
    value, per_t, _ = sw.hard(uvec)
    m = chain.size
    hs, phis = [], []
    for t in range(sw.T):
        per = sw.periods[t]
        h = np.full((m, per.n_s), np.nan)
        h[per.xs] = np.where(per.live, per_t[t][1], np.nan).T
        phi = np.full((m, per.n_s), np.nan)
        phi[per.xs] = np.where(per.live, per_t[t][0], np.nan).T
        hs.append(h)
        phis.append(phi)
    return value, hs, phis
