"""The augmented Markov chain (X_t, S_t) of a path-dependent payoff (DESIGN §2.3).

A payoff ``f(X_T, S_T)`` (T its last date) with a statistic ``S_{t+1} = g_t(S_t, X_{t+1})`` is a
function of the chain (X_t, S_t). Bounds over all martingale laws with the given marginals equal
bounds over laws that are Markov in (X, S) with the martingale condition
E[X_{t+1} - X_t | X_t, S_t] = 0 (multipliers h_t(x, s)), which IS the full martingale property of
X for such a chain. This module builds the finite state space of S and its update rule:

* ``"none"``       one dummy state at every date;
* ``"max"/"min"``  running max / min, exact (values stay on the grid);
* ``"value"``      X_{d_0} remembered (forward start between non-adjacent dates), exact;
* ``"hit"``        barrier flag in {0, 1}, exact;
* ``"sum"``        running weighted sum: exact enumeration of the distinct sums when they fall on a
  lattice (uniform grid, equal weights: at most k(M-1)+1 values after k dates), otherwise an
  interpolated sum grid with linear splitting of S_{t+1} between the two neighbouring sum-grid
  points (mean-preserving, so E[S] is exact; the strike is put ON the last sum grid).

Before the first statistic date the state is a single dummy value 0. Only grid points with
positive weight in the marginals are used (rows of other points are empty), and states that no
path reaches are pruned.

Layout of ``transitions[t]``: a sparse matrix of shape (n_t * M, n_{t+1}); row ``s * M + y`` is the
law of S_{t+1} given S_t = ``states[t][s]`` and X_{t+1} = ``grid[y]`` (rows sum to 1 for y in the
support of mu_{t+1}, empty otherwise). The statistic update never needs X_t itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from deepquant.market.marginals import Marginals
from deepquant.payoffs import Payoff, Statistic

__all__ = ["AugmentedChain", "build_chain", "trivial_chain", "expectation", "SUM_MODES"]

SUM_MODES = ("auto", "lattice", "grid")


@dataclass(frozen=True, eq=False)
class AugmentedChain:
    """The finite augmented chain (X_t, S_t), t = 0..T, of one payoff on one set of marginals.

    Attributes
    ----------
    grid : ndarray, shape (M,)
        The X grid.
    last_date : int
        T, the payoff's last date. Later dates are irrelevant (Markov gluing extends any plan).
    states : list of ndarray
        ``states[t]`` holds the values of S_t, shape (n_t,), sorted; a single 0.0 before the
        statistic starts.
    initial : scipy.sparse.csr_matrix, shape (M, n_0)
        Row x is the (deterministic) law of S_0 given X_0 = grid[x].
    transitions : list of scipy.sparse.csr_matrix
        ``transitions[t]`` has shape (n_t * M, n_{t+1}); row ``s * M + y`` is the law of S_{t+1}
        given S_t = states[t][s], X_{t+1} = grid[y]. Empty rows for y outside supp(mu_{t+1}).
    terminal : ndarray, shape (M, n_T)
        The payoff f(grid[x], states[T][s]).
    exact : bool
        False when a sum grid with linear splitting was used (the chain then approximates S).
    kind : str
        The statistic kind.
    law0 : ndarray, shape (M,)
        The law of X_0 (marginals row 0), used by ``expectation``.
    support : ndarray of bool, shape (T+1, M)
        The grid points used at each date (positive weight).
    reach : list of ndarray of bool
        ``reach[t]`` has shape (M, n_t): True where the pair (X_t, S_t) = (grid[x], states[t][s])
        is reachable by some path through the supports.
    """

    grid: np.ndarray
    last_date: int
    states: list[np.ndarray]
    initial: sparse.csr_matrix
    transitions: list[sparse.csr_matrix]
    terminal: np.ndarray
    exact: bool
    kind: str
    law0: np.ndarray
    support: np.ndarray
    reach: list[np.ndarray]

    @property
    def size(self) -> int:
        """Number of grid points M."""
        return int(self.grid.size)

    @property
    def n_states(self) -> list[int]:
        """Number of S values n_t per date."""
        return [int(s.size) for s in self.states]

    def pairs(self, t: int) -> np.ndarray:
        """Reachable pairs at date t as an int array of shape (P_t, 2): (x index, s index),
        ordered by x then s."""
        return np.argwhere(self.reach[t])

    def next_state(self, t: int, s: np.ndarray, y: np.ndarray) -> sparse.csr_matrix:
        """Rows of ``transitions[t]`` for state indices ``s`` and X_{t+1} indices ``y``."""
        return self.transitions[t][np.asarray(s) * self.size + np.asarray(y)]


def _dedupe(values: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values (merged within 1e-10 * scale) and the inverse index."""
    tol = 1e-10 * max(scale, 1e-300)
    keys = np.round(values / tol).astype(np.int64)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return values.reshape(-1)[first], inverse.reshape(values.shape)


def _deterministic(n_rows: int, n_cols: int, rows: np.ndarray, cols: np.ndarray
                   ) -> sparse.csr_matrix:
    return sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_rows, n_cols))


def _sum_grid(lo: float, hi: float, size: int, anchor: float | None) -> np.ndarray:
    """Uniform grid covering [lo, hi] with about ``size`` points, containing ``anchor`` if inside."""
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.array([0.5 * (lo + hi)])
    step = (hi - lo) / (size - 1)
    if anchor is None or not lo < anchor < hi:
        return np.linspace(lo, hi, size)
    below = int(np.ceil((anchor - lo) / step - 1e-9))
    above = int(np.ceil((hi - anchor) / step - 1e-9))
    return anchor + step * np.arange(-below, above + 1)


def _lattice_ok(grid: np.ndarray, support: np.ndarray, stat: Statistic) -> bool:
    """True if sums fall on a lattice: equal weights and used grid points on x0 + d Z."""
    w = np.asarray(stat.weights)
    if not np.allclose(w, w[0], rtol=1e-12, atol=0.0):
        return False
    pts = grid[support.any(axis=0)]
    if pts.size < 2:
        return True
    d = np.min(np.diff(pts))
    k = (pts - pts[0]) / d
    return bool(np.all(np.abs(k - np.round(k)) < 1e-8))


def build_chain(
    marginals: Marginals,
    payoff: Payoff,
    *,
    sum_grid_size: int | None = None,
    sum_mode: str = "auto",
    strike: float | None = None,
    max_states: int = 200_000,
) -> AugmentedChain:
    """Build the augmented chain of ``payoff`` on ``marginals`` (DESIGN §2.3).

    Parameters
    ----------
    marginals : Marginals
        Laws of X_0..X_N; only points with positive weight are used.
    payoff : Payoff
        A payoff with ``terminal(x, s)`` (pairwise-only payoffs such as the sum of squared
        increments are rejected: decompose them per period instead).
    sum_grid_size : int, optional
        Number of points of each running-sum grid in ``"grid"`` mode (default 4M + 1); an
        integer >= 2 (checked in every mode).
    sum_mode : {"auto", "lattice", "grid"}
        ``"lattice"``: exact distinct sums (requires equal weights and a lattice grid);
        ``"grid"``: interpolated sum grids with linear splitting; ``"auto"``: lattice when it
        applies, else grid.
    strike : float, optional
        A kink of the terminal payoff in S to put on the last sum grid (default: the payoff's
        ``strike`` attribute if any).
    max_states : int
        Upper bound on n_t; exceeding it is a ``ValueError``.

    Returns
    -------
    AugmentedChain
    """
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    if sum_mode not in SUM_MODES:
        raise ValueError(f"sum_mode must be one of {SUM_MODES}, got {sum_mode!r}")
    if sum_grid_size is not None and (isinstance(sum_grid_size, bool) or not isinstance(
            sum_grid_size, int | np.integer) or sum_grid_size < 2):
        # checked whatever the mode: a lattice chain ignores it, so a bad one went unseen
        raise ValueError(f"sum_grid_size must be an integer >= 2 or None, got "
                         f"{sum_grid_size!r}")
    if strike is not None and (isinstance(strike, bool)
                               or not isinstance(strike, int | float | np.number)
                               or not np.isfinite(strike)):
        raise ValueError(f"strike must be a finite number or None, got {strike!r}")
    if isinstance(payoff, _pairwise_only_types()):
        raise ValueError(
            f"payoff {payoff.name!r} is pairwise only (no terminal(x, s)); decompose it per "
            "period (deepquant.mmot.lp) instead of building an augmented chain"
        )
    n_dates = marginals.n_dates
    grid = np.asarray(marginals.grid, dtype=float)
    m = grid.size
    T = payoff.last_date(n_dates)
    stat = payoff.statistic(n_dates)
    support = np.asarray(marginals.weights[: T + 1] > 0)
    scale = float(np.max(np.abs(grid)))
    first = stat.first_date
    if stat.kind == "none":
        first = None
    exact = True
    mode = None
    if stat.kind == "sum":
        lattice = _lattice_ok(grid, support[[d for d in stat.dates if d <= T]], stat)
        if sum_mode == "lattice" and not lattice:
            raise ValueError(
                "sum_mode='lattice' needs equal averaging weights and grid points on a lattice "
                f"x0 + d*Z; got weights {stat.weights} on a non-lattice grid. Use sum_mode='grid'"
            )
        mode = "lattice" if (sum_mode == "lattice" or (sum_mode == "auto" and lattice)) else "grid"
        if mode == "grid":
            g = 4 * m + 1 if sum_grid_size is None else int(sum_grid_size)
            anchor = strike if strike is not None else getattr(payoff, "strike", None)

    lo_hi = None  # range of the running sum (grid mode)
    states: list[np.ndarray] = []
    transitions: list[sparse.csr_matrix] = []
    # date 0
    if first == 0:
        s0_vals, s0_idx = _dedupe(stat.initial(grid[support[0]]), scale)
        idx = np.zeros(m, dtype=np.int64)
        idx[support[0]] = s0_idx
        rows = np.flatnonzero(support[0])
        initial = _deterministic(m, s0_vals.size, rows, idx[rows])
        states.append(s0_vals)
        if stat.kind == "sum":
            lo_hi = (float(s0_vals.min()), float(s0_vals.max()))
    else:
        rows = np.flatnonzero(support[0])
        initial = _deterministic(m, 1, rows, np.zeros(rows.size, dtype=np.int64))
        states.append(np.zeros(1))
    for t in range(T):
        cur = states[-1]
        n_t = cur.size
        ys = np.flatnonzero(support[t + 1])
        ss = np.repeat(np.arange(n_t), ys.size)
        yy = np.tile(ys, n_t)
        rows = ss * m + yy
        d = t + 1
        if first is None or d < first:
            states.append(np.zeros(1))
            transitions.append(_deterministic(n_t * m, 1, rows, np.zeros(rows.size, np.int64)))
            continue
        if d == first:
            vals = stat.initial(grid[yy])
        elif d not in stat.dates or stat.kind == "value":
            states.append(cur.copy())
            transitions.append(_deterministic(n_t * m, n_t, rows, ss))
            continue
        else:
            vals = stat.update(d, cur[ss], grid[yy])
        if stat.kind == "sum" and mode == "grid" and d != first:
            w = stat.weights[stat.dates.index(d)]
            lo, hi = lo_hi
            ext = w * grid[ys]
            lo, hi = lo + ext.min(), hi + ext.max()
            is_last = d == max(x for x in stat.dates if x <= T)
            new = _sum_grid(lo, hi, g, anchor if is_last else None)
            lo_hi = (lo, hi)
            j = np.clip(np.searchsorted(new, vals, side="right") - 1, 0, max(new.size - 2, 0))
            if new.size == 1:
                mat = _deterministic(n_t * m, 1, rows, np.zeros(rows.size, np.int64))
            else:
                lam = np.clip((vals - new[j]) / (new[j + 1] - new[j]), 0.0, 1.0)
                mat = sparse.csr_matrix(
                    (np.concatenate([1.0 - lam, lam]),
                     (np.concatenate([rows, rows]), np.concatenate([j, j + 1]))),
                    shape=(n_t * m, new.size))
                mat.eliminate_zeros()
                exact = False
            states.append(new)
            transitions.append(mat)
        else:
            new, inv = _dedupe(vals, scale)
            if new.size > max_states:
                raise ValueError(
                    f"the statistic has {new.size} distinct values at date {d} (> max_states "
                    f"{max_states}); use sum_mode='grid' with a smaller sum_grid_size"
                )
            if stat.kind == "sum":
                lo_hi = (float(new.min()), float(new.max()))
            states.append(new)
            transitions.append(_deterministic(n_t * m, new.size, rows, inv))
    states, initial, transitions, reach = _prune(states, initial, transitions, support, m)
    s_t = states[-1]
    if stat.kind == "none":
        terminal = payoff.on_grid(payoff.terminal, grid[:, None], np.zeros((1, 1)))
    else:
        terminal = payoff.on_grid(payoff.terminal, grid[:, None], s_t[None, :])
    terminal = np.broadcast_to(terminal, (m, s_t.size)).copy()
    return AugmentedChain(grid=grid, last_date=T, states=states, initial=initial,
                          transitions=transitions, terminal=terminal, exact=exact,
                          kind=stat.kind, law0=np.asarray(marginals.weights[0], dtype=float),
                          support=support, reach=reach)


def _pairwise_only_types() -> tuple[type, ...]:
    from deepquant.payoffs import SumSquaredIncrements

    return (SumSquaredIncrements,)


def _prune(states, initial, transitions, support, m):
    """Drop states that no path reaches; return the reach masks (M, n_t) per date."""
    reach0 = (initial.toarray() > 0) & support[0][:, None]
    reach = [reach0]
    for t, mat in enumerate(transitions):
        live_s = reach[-1].any(axis=0)  # (n_t,)
        n_t = live_s.size
        rowmask = np.zeros(n_t * m, dtype=bool)
        rowmask[(np.flatnonzero(live_s)[:, None] * m + np.arange(m)[None, :]).ravel()] = True
        sub = mat[np.flatnonzero(rowmask)].tocoo()
        r = np.flatnonzero(rowmask)[sub.row]
        y = r % m
        nxt = np.zeros((m, mat.shape[1]), dtype=bool)
        nxt[y[sub.data > 0], sub.col[sub.data > 0]] = True
        reach.append(nxt & support[t + 1][:, None])
    keep = [r.any(axis=0) for r in reach]
    for k in keep:
        if not k.any():
            k[0] = True  # degenerate; keep one state
    new_states = [s[k] for s, k in zip(states, keep)]
    new_initial = initial[:, np.flatnonzero(keep[0])].tocsr()
    new_trans = []
    for t, mat in enumerate(transitions):
        ks = np.flatnonzero(keep[t])
        rows = (ks[:, None] * m + np.arange(m)[None, :]).ravel()
        new_trans.append(mat[rows][:, np.flatnonzero(keep[t + 1])].tocsr())
    new_reach = [r[:, k] for r, k in zip(reach, keep)]
    return new_states, new_initial, new_trans, new_reach


def expectation(chain: AugmentedChain, kernels: np.ndarray, *, law0: np.ndarray | None = None
                ) -> float:
    """E[payoff] for the Markov chain X with transition kernels ``kernels``.

    Forward recursion on the joint law m_t(x, s) of (X_t, S_t):
    m_0 = law0(x) * initial(x, s),  m_{t+1}(y, s') = sum_{x, s} m_t(x, s) k_t(x, y) K_t(s, y; s'),
    E = sum_{x, s} m_T(x, s) terminal(x, s). Exact on the chain (no sampling). The index arrays
    of the statistic map are precomputed once per chain (``deepquant.mmot.model.ChainPlan``,
    which also prices many kernel sets in one batched call).

    Parameters
    ----------
    chain : AugmentedChain
    kernels : ndarray, shape (T', M, M) with T' >= T
        ``kernels[t, x, y]`` = P(X_{t+1} = grid[y] | X_t = grid[x]).
    law0 : ndarray, shape (M,), optional
        Law of X_0 (default ``chain.law0``).
    """
    from deepquant.mmot.model import chain_plan

    kernels = np.asarray(kernels, dtype=float)
    m = chain.size
    T = chain.last_date
    if kernels.ndim != 3 or kernels.shape[1:] != (m, m) or kernels.shape[0] < T:
        raise ValueError(f"kernels must have shape (>= {T}, {m}, {m}), got {kernels.shape}")
    p0 = chain.law0 if law0 is None else np.asarray(law0, dtype=float)
    if p0.shape != (m,):
        raise ValueError(f"law0 must have shape ({m},), got {p0.shape}")
    return float(chain_plan(chain).expectation(kernels[None], p0[None])[0])


def trivial_chain(marginals: Marginals, last_date: int | None = None) -> AugmentedChain:
    """The chain with no statistic (one dummy state) over dates 0..``last_date`` (default N),
    with a zero terminal payoff; used for pairwise payoffs and plain martingale plans."""
    n_dates = marginals.n_dates
    T = n_dates - 1 if last_date is None else int(last_date)
    if not 0 <= T < n_dates:
        raise ValueError(f"last_date={last_date} out of range for {n_dates} dates")
    grid = np.asarray(marginals.grid, dtype=float)
    m = grid.size
    support = np.asarray(marginals.weights[: T + 1] > 0)
    rows = np.flatnonzero(support[0])
    initial = _deterministic(m, 1, rows, np.zeros(rows.size, np.int64))
    transitions = []
    for t in range(T):
        rows = np.flatnonzero(support[t + 1])
        transitions.append(_deterministic(m, 1, rows, np.zeros(rows.size, np.int64)))
    return AugmentedChain(grid=grid, last_date=T, states=[np.zeros(1)] * (T + 1),
                          initial=initial, transitions=transitions, terminal=np.zeros((m, 1)),
                          exact=True, kind="none",
                          law0=np.asarray(marginals.weights[0], dtype=float), support=support,
                          reach=[s[:, None].copy() for s in support])
