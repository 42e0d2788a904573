"""The calibrated martingale model: the c = 0 entropic MMOT solution (DESIGN §2.4).

With zero cost and a Markov reference q_t(y | x), the entropic problem

    minimise KL(P | R) over martingale laws P with marginals mu_0, ..., mu_N

is solved by a Markov chain (gluing lemma, DESIGN §2.2) whose transition plans are the N
independent one-period KL projections; ``deepquant.mmot.entropic.solve_entropic`` computes them as
one batch. Without a cost the regularisation eps only scales the potentials (the minimiser of
eps KL does not depend on eps), so the default ``eps = 1`` is a units choice, not an
approximation. The result is the KL-closest martingale model to the reference that reprices
every vanilla on the grid (a discrete martingale Schrödinger bridge).

References ``"product"`` (q_t = mu_{t+1}) and ``"lognormal"`` (a lognormal random-walk kernel
in moneyness with the marginals' variance increments; ``entropic.reference_kernels``).

``price(payoff)`` runs the exact forward recursion on the augmented state (X_t, S_t) of the
payoff (``ChainPlan``: the statistic map's index arrays precomputed once per chain, the chain
itself cached per grid, support and payoff; ``price_batch`` prices one payoff under many kernel
sets in one batched recursion); pairwise payoffs are priced as sum_t <c_t, pi_t>.
``sample(n_paths, rng)`` draws grid paths of shape (n_paths, N+1) from the kernels.
"""

from __future__ import annotations

import math
import numbers
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot._chainplan_kernels import (
    _DGEMM,
    _forward,
    _hinge_terminal,
    _last_step_hinge,
    _pack_steps,
    _scratch,
    _transposed_map,
)
from deepquant.mmot._chainplan_meet import _meet_plan, backward_laws_started
from deepquant.mmot._plans import measure
from deepquant.payoffs import Payoff, SumSquaredIncrements, check_payoff
from deepquant.results import check_count
from deepquant.seeds import as_generator

__all__ = ["CalibratedModel", "ModelPrice", "ChainPlan", "chain_plan",
           "cached_chain", "price_batch"]


@dataclass(frozen=True)
class ModelPrice:
    """A price under the calibrated model.

    Attributes
    ----------
    value : float
        E[payoff] (undiscounted, payoff units).
    exact : bool
        False when the payoff's statistic was approximated (interpolated running-sum grid).
    seconds : float
        Wall time of the pricing (chain build, or cache hit, + recursion).
    n_states : list of int
        Number of statistic values per date of the augmented chain ([] for pairwise payoffs).
    """

    value: float
    exact: bool
    seconds: float
    n_states: list[int]


@dataclass(frozen=True, eq=False)
class CalibratedModel:
    """A Markov martingale chain on the grid fitting every marginal.

    Attributes
    ----------
    marginals : Marginals
        The marginals the model fits (N+1 dates, M points).
    kernels : ndarray, shape (N, M, M)
        P(X_{t+1} = grid[y] | X_t = grid[x]), row-stochastic; martingale rows (drift <= the
        solver's tolerance) for every x with mu_t(x) > 0.
    reference : str
        ``"product"``, ``"lognormal"`` or ``"array"``.
    eps : float
        The regularisation the potentials are expressed in (irrelevant to the kernels at c=0).
    solve : EntropicResult or None
        The solver output (potentials, ``nit``, measured ``marginal_error`` and ``drift``,
        ``history`` for the convergence curve).
    """

    marginals: Marginals
    kernels: np.ndarray
    reference: str = "product"
    eps: float = 1.0
    solve: object | None = None

    def __post_init__(self) -> None:
        k = np.asarray(self.kernels, dtype=float)
        n, m = self.marginals.n_periods, self.marginals.size
        if k.shape != (n, m, m):
            raise ValueError(f"kernels must have shape (N, M, M) = {(n, m, m)}, got {k.shape}")
        if not np.all(np.isfinite(k)) or np.any(k < 0):
            raise ValueError("kernels must be finite and non-negative")
        rows = k.sum(axis=2)
        live = self.marginals.weights[:-1] > 0
        if np.any(np.abs(rows[live] - 1.0) > 1e-8):
            t, x = np.argwhere(live & (np.abs(rows - 1.0) > 1e-8))[0]
            raise ValueError(f"kernels[{t}] row x={self.marginals.grid[x]:.6g} sums to "
                             f"{rows[t, x]:.12g}, not 1")
        k.flags.writeable = False
        object.__setattr__(self, "kernels", k)

    # ------------------------------------------------------------------ construction
    @classmethod
    def calibrate(cls, marginals: Marginals, *, reference="product", eps: float = 1.0,
                  tol: float = 1e-9, **solver_options) -> CalibratedModel:
        """Solve the c = 0 entropic problem with ``solve_entropic`` and wrap the kernels.

        Parameters
        ----------
        marginals : Marginals
        reference : "product", "lognormal" or ndarray (N, M, M)
        eps : float
            Units of the potentials (the kernels do not depend on it at c = 0).
        tol : float
            Target of the measured L1 marginal error and drift.
        **solver_options
            Passed to ``solve_entropic`` (``max_iter``, ``threads``, ``warn``, ...).
        """
        from deepquant.mmot.entropic import solve_entropic

        if not isinstance(marginals, Marginals):
            raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
        res = solve_entropic(marginals, eps, None, reference, tol=tol, **solver_options)
        name = reference if isinstance(reference, str) else "array"
        return cls(marginals, res.kernels, name, float(eps), res)

    # ------------------------------------------------------------------ properties
    @property
    def grid(self) -> np.ndarray:
        return self.marginals.grid

    @property
    def n_periods(self) -> int:
        return self.marginals.n_periods

    @property
    def plans(self) -> np.ndarray:
        """Joint laws pi_t(x, y) = mu_t(x) k_t(x, y), shape (N, M, M)."""
        return self.marginals.weights[:-1, :, None] * self.kernels

    def model_marginals(self) -> np.ndarray:
        """Laws of X_t propagated through the kernels from mu_0, shape (N+1, M)."""
        out = [np.asarray(self.marginals.weights[0])]
        for t in range(self.n_periods):
            out.append(out[-1] @ self.kernels[t])
        return np.vstack(out)

    def drift(self) -> float:
        """max over t and x with mu_t(x) > 0 of |E[X_{t+1} - X_t | X_t = x]| (measured)."""
        _, drifts = measure(self.grid, self.marginals.weights, self.kernels)
        return float(np.max(drifts, initial=0.0))

    def marginal_error(self) -> float:
        """max_t ||mu_t propagated - mu_t||_1 (measured)."""
        return float(np.max(np.abs(self.model_marginals() - self.marginals.weights).sum(axis=1)))

    def expected_abs_moves(self) -> np.ndarray:
        """E|X_{t+1} - X_t| per period, shape (N,)."""
        g = self.grid
        return np.einsum("txy,xy->t", self.plans, np.abs(g[None, :] - g[:, None]))

    # ------------------------------------------------------------------ pricing
    def price(self, payoff: Payoff, *, sum_mode: str = "auto",
              sum_grid_size: int | None = None) -> float:
        """E[payoff] under the model (exact forward recursion on the augmented chain)."""
        return self.price_result(payoff, sum_mode=sum_mode, sum_grid_size=sum_grid_size).value

    def price_result(self, payoff: Payoff, *, sum_mode: str = "auto",
                     sum_grid_size: int | None = None) -> ModelPrice:
        """``price`` with the chain's exactness flag and timing."""
        check_payoff(payoff)
        t0 = time.perf_counter()
        n = self.marginals.n_dates
        if isinstance(payoff, SumSquaredIncrements):
            val = 0.0
            for t, cm in payoff.pairwise_costs(n, self.grid).items():
                val += float(np.sum(self.plans[t] * cm))
            return ModelPrice(val, True, time.perf_counter() - t0, [])
        chain = cached_chain(self.marginals, payoff, sum_mode=sum_mode,
                             sum_grid_size=sum_grid_size)
        val = float(chain_plan(chain).expectation(self.kernels[None],
                                                  np.asarray(self.marginals.weights[0])[None])[0])
        return ModelPrice(val, chain.exact, time.perf_counter() - t0, chain.n_states)

    # ------------------------------------------------------------------ sampling
    def sample(self, n_paths: int, rng=None, *, return_indices: bool = False) -> np.ndarray:
        """Draw paths of the chain: X_0 ~ mu_0, X_{t+1} ~ kernels[t][X_t].

        Parameters
        ----------
        n_paths : int
            Number of paths (>= 1).
        rng : int, numpy.random.Generator or None
        return_indices : bool
            Return grid indices (int) instead of grid values.

        Returns
        -------
        ndarray, shape (n_paths, N+1)
            Grid values (or indices) of X_0, ..., X_N along each path.
        """
        n_paths = check_n_paths(n_paths)
        gen = as_generator(rng)
        m = self.marginals.size
        idx = np.empty((n_paths, self.n_periods + 1), dtype=np.int64)
        cdf0 = np.cumsum(self.marginals.weights[0])
        idx[:, 0] = np.minimum(np.searchsorted(cdf0, gen.random(n_paths) * cdf0[-1],
                                               side="right"), m - 1)
        for t in range(self.n_periods):
            cdf = np.cumsum(self.kernels[t], axis=1)
            u = gen.random(n_paths)
            cur = idx[:, t]
            nxt = np.empty(n_paths, dtype=np.int64)
            order = np.argsort(cur, kind="stable")
            bounds = np.searchsorted(cur[order], np.arange(m + 1))
            for x in range(m):
                sel = order[bounds[x]:bounds[x + 1]]
                if sel.size:
                    nxt[sel] = np.searchsorted(cdf[x], u[sel] * cdf[x, -1], side="right")
            idx[:, t + 1] = np.minimum(nxt, m - 1)
        return idx if return_indices else self.grid[idx]


# ---------------------------------------------------------------------- fast forward recursion
class ChainPlan:
    """Precomputed index arrays of the forward recursion on an augmented chain.

    The joint law of (X_t, S_t) is kept dense on the reachable grid rows ``rows[t]`` of each
    date, transposed: shape (B, |rows[t]|, n_t) for B instances, states s contiguous. One step is

        q(y, s)           = sum_x k_t(x, y) m_t(x, s)              (BLAS per block of s)
        m_{t+1}(y', s')   = sum_s q(y, s) K_t(s, y; s')            (precomputed sparse map)

    with x over ``rows[t]``, y over the support of mu_{t+1}; K_t (from ``chain.transitions[t]``,
    once) sends column y of q to row y' = y of m_{t+1}; where it shifts every state of a column
    by one offset with weight 1 (a running-sum lattice) the product is added in place. The same
    sum as ``deepquant.mmot.augment.expectation`` (exact on the chain), restricted to entries
    that can carry mass. ``expectation`` runs it banded (``expectation_bound``);
    ``_expectation_dense`` is the full dense product, no entry skipped.

    Call- and put-like payoffs end in closed form (``CLOSED_FORM``; ``_chainplan_kernels``):
    the last date as prefix sums of each kernel row times the lines of the payoff pulled back
    through the last map (``_last``), or, on a running-sum lattice (with holes in the support
    or not), a meeting in the middle (``_meet``; ``_chainplan_meet``): the forward recursion
    stops at the date T - round(``MEET`` T), the law of the rest of the sum given X at that
    date comes backwards (banded like the forward steps, its dropped mass propagated as a
    per-row bound), and the two meet in the same closed form.

    Attributes
    ----------
    rows : list of ndarray of int
        ``rows[t]``: grid indices x with a reachable pair (x, s) at date t.
    cols : list of ndarray of int
        ``cols[t]``: grid indices y of the support of mu_{t+1} (period t's kernel columns).
    maps : list of scipy.sparse.csr_matrix
        ``maps[t]`` of shape (n_{t+1} |rows[t+1]|, n_t |cols[t]|), flattened (s, y) to (s', y')
        (the dense reference's layout).
    initial : ndarray, shape (n_0, |rows[0]|)
        initial(x, s) transposed on the reachable rows.
    terminal : ndarray, shape (n_T, |rows[T]|)
    """

    def __init__(self, chain) -> None:
        from scipy import sparse

        m, T = chain.size, chain.last_date
        self.size, self.last_date = m, T
        self.rows = [np.flatnonzero(r.any(axis=1)) for r in chain.reach]
        self.cols = [np.flatnonzero(chain.support[t + 1]) for t in range(T)]
        self.initial = np.ascontiguousarray(chain.initial.toarray()[self.rows[0]].T)
        self.terminal = np.ascontiguousarray(chain.terminal[self.rows[T]].T)
        self.maps, self._steps = [], []
        for t in range(T):
            coo = chain.transitions[t].tocoo()
            s, y = coo.row // m, coo.row % m
            ypos = np.full(m, -1, dtype=np.int64)
            ypos[self.cols[t]] = np.arange(self.cols[t].size)
            xpos = np.full(m, -1, dtype=np.int64)
            xpos[self.rows[t + 1]] = np.arange(self.rows[t + 1].size)
            keep = (ypos[y] >= 0) & (coo.data != 0)
            if np.any(xpos[y[keep]] < 0):   # cannot happen on a pruned chain
                raise RuntimeError("chain maps mass onto an unreachable grid point")
            s, y, s1, data = s[keep], y[keep], coo.col[keep], coo.data[keep]
            c, n, r1 = self.cols[t].size, chain.states[t].size, self.rows[t + 1].size
            n1 = chain.states[t + 1].size
            self.maps.append(sparse.csr_matrix(
                (data, (s1 * r1 + xpos[y], s * c + ypos[y])), shape=(n1 * r1, n * c)))
            self._steps.append(_transposed_map(ypos[y] * n + s, xpos[y] * n1 + s1, data,
                                               c * n, n1 * r1, n, n1))
        self._sizes: dict = {}      # scratch sizes per number of forward dates
        self._packed = _pack_steps(self.rows, self.cols, self._steps,
                                   [x.size for x in chain.states])
        self.max_abs_payoff = float(np.max(np.abs(self.terminal), initial=0.0))
        self._last = None            # the last date in closed form (call- and put-like payoffs)
        if T > 0:
            g = self.maps[T - 1].T @ self.terminal.ravel()         # payoff pulled back: (s, y)
            self._last = _hinge_terminal(g.reshape(chain.states[T - 1].size,
                                                   self.cols[T - 1].size))
        self._meet = _meet_plan(self._steps, [s.size for s in chain.states], self.terminal,
                                T - max(1, int(round(self.MEET * T))))

    def expectation(self, kernels: np.ndarray, law0: np.ndarray, *,
                    threads: int = 1) -> np.ndarray:
        """E[payoff] for B chains at once (the banded recursion, ``expectation_bound``)."""
        return self.expectation_bound(kernels, law0, threads=threads)[0]

    def expectation_bound(self, kernels: np.ndarray, law0: np.ndarray, *,
                          threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """E[payoff] for B chains at once, with a bound on its distance to the exact sum.

        Each date is two numba steps (``_trim_step``, ``_advance_step``: one BLAS product
        per block of ``BLOCK`` states, instances in chunks of ``CHUNK``, the chunks spread
        over ``threads`` threads), all the forward dates in one compiled call (``_forward``,
        on the chain's index arrays packed once, ``_pack_steps``; its buffers kept per thread
        between calls, ``_scratch``), that skip what cannot matter at double precision: kernel
        entries outside each row's band (the columns between the first and the last entry
        above ``BAND_EPS`` = 1e-14 times the row's largest) and, per grid point x, the joint
        entries m(x, s) before the first and after the last one above ``MASS_EPS`` = 1e-18
        times the instance's mass (states of the statistic, such as running sums, that no path
        reaches with more probability). The dropped mass is counted exactly; kernels are
        stochastic and the statistic maps conserve mass, so |value - exact| <= dropped x
        max |payoff|, returned as ``bound`` (about 1e-14 and below on the benchmark chains),
        plus the round-off of the closed form's lines times the mass where one is used, plus,
        when the chain meets in the middle, sum_x |m(x)|_1 e(x) max |payoff| with e(x) the
        backward half's bound on the L1 error of the law of the rest of the sum given x
        (``_chainplan_meet._backward_laws``).

        Parameters
        ----------
        kernels : ndarray, shape (B, T', M, M) with T' >= T
            ``kernels[b, t, x, y]`` = P(X_{t+1} = grid[y] | X_t = grid[x]) of instance b.
        law0 : ndarray, shape (B, M)
            Law of X_0 per instance.

        Returns
        -------
        values, bound : ndarray, shape (B,)
        """
        kernels = np.asarray(kernels, dtype=float)
        law0 = np.asarray(law0, dtype=float)
        b = kernels.shape[0]
        values, lost = np.empty(b), np.empty(b)
        chunks = [slice(i, min(b, i + self.CHUNK)) for i in range(0, b, self.CHUNK)]

        # one chunk on several threads: its two halves side by side where the chain meets in
        # the middle (the forward dates here, the backward ones on a helper thread)
        split = threads > 1 and len(chunks) == 1

        def run(idx):
            values[idx], lost[idx] = self._recursion(kernels[idx], law0[idx], split=split)

        if threads > 1 and len(chunks) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(threads, len(chunks))) as pool:
                list(pool.map(run, chunks))
        else:
            for idx in chunks:
                run(idx)
        return values, np.maximum(lost, 0.0) * self.max_abs_payoff

    def _recursion(self, kernels: np.ndarray, law0: np.ndarray, *, split: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """``expectation_bound`` for one chunk of instances: (values, dropped mass). With
        ``split`` and a meeting in the middle, the backward half runs on this thread's helper
        thread (``_helper``) while the forward dates run here (both release the GIL)."""
        b = kernels.shape[0]
        law = law0[:, self.rows[0]]
        thr = self.MASS_EPS * np.abs(law).sum(axis=1)
        lost = np.zeros(b)
        last = self._last if self.CLOSED_FORM else None
        meet = self._meet if self.CLOSED_FORM else None
        steps = meet[0][-1][0] if meet is not None else self.last_date - (last is not None)
        n = self._packed[-1]
        if steps not in self._sizes:        # per instance: law, kernel bands, rows; last law
            r, nl = [x.size for x in self.rows[:steps + 1]], n.tolist()
            self._sizes[steps] = (max(ri * ni for ri, ni in zip(r, nl)),
                                  max([ri * c.size for ri, c in zip(r, self.cols)], default=0),
                                  max(r), r[-1], nl[steps])
        size, size_kb, r_max, r_last, n_last = self._sizes[steps]
        back = None if meet is None else backward_laws_started(
            meet[0], kernels, self.rows, self.cols, band_eps=self.BAND_EPS,
            mass_eps=self.MASS_EPS, on_helper=split)
        bufs = _scratch("bufs", (2, b * size))
        kb = _scratch("kb", (b * size_kb,))
        ranges = _scratch("ranges", (6, b, r_max), np.int64)     # lo, hi, sa, se, na, ne
        ranges[2], ranges[3] = 0, n[0]                           # rows' written ranges
        np.multiply(law[:, :, None], self.initial.T[None],       # joint law of (X_0, S_0)
                    out=bufs[0, :b * law.shape[1] * n[0]].reshape(b, law.shape[1], n[0]))
        lost += _forward(_DGEMM, kernels, *self._packed[:-1], n, steps, thr, self.BAND_EPS,
                         self.BLOCK, self.TILE, bufs, kb, ranges)
        joint = bufs[steps % 2, :b * r_last * n_last].reshape(b, r_last, n_last)
        if last is None and meet is None:
            return np.einsum("bxs,sx->b", joint, self.terminal), lost
        t = steps
        mass = np.empty(joint.shape[:2])                   # sum_s |joint(x, s)| per row
        written = ranges[2, :, :r_last], ranges[3, :, :r_last]   # rows' nonzero ranges
        if meet is None:
            perm, alpha, beta, count, err = last
            values = _last_step_hinge(joint, kernels[:, t], self.rows[t], self.cols[t], perm,
                                      alpha, beta, count, mass, *written)
        else:
            perm, alpha, beta, count, err = meet[1]
            w, werr = back.result()
            ids = np.arange(max(w.shape[1], w.shape[2]))
            values = _last_step_hinge(joint, w, ids, ids[:w.shape[2]], perm, alpha, beta, count,
                                      mass, *written)
            lost = lost + np.einsum("bx,bx->b", mass, werr)
        # the lines' round-off, in units of the dropped mass of the bound
        return values, lost + mass.sum(axis=1) * err / max(self.max_abs_payoff, 1e-300)

    BLOCK = 128
    TILE = 16
    CLOSED_FORM = True
    MEET = 0.3
    CHUNK = 2
    """Instances per pass of the recursion: each date's step runs over a chunk's instances
    before the next date, so the chunk's two laws are what a date streams through (some 2.5
    MB per instance for the exact Asian at N = 10, M = 150). Two keep that within reach of
    the core's cache: 8 (20 MB) made the Asian price 1.5x slower with other jobs on the
    machine (bit for bit the same values; lookback and barrier unchanged)."""
    BAND_EPS = 1e-14
    MASS_EPS = 1e-18

    def _expectation_dense(self, kernels: np.ndarray, law0: np.ndarray) -> np.ndarray:
        """The dense recursion (one batched matmul per date on the full rectangle, then the
        CSR statistic map): no entry dropped. Kept as the exact in-package reference and for
        the benchmark's before column."""
        b = kernels.shape[0]
        joint = law0[:, None, self.rows[0]] * self.initial[None]          # (B, n_0, |rows_0|)
        for t in range(self.last_date):
            k = kernels[:, t, self.rows[t][:, None], self.cols[t]]         # (B, |rows_t|, |cols_t|)
            q = np.matmul(joint, k).reshape(b, -1)                         # (B, n_t |cols_t|)
            nxt = np.empty((b, self.maps[t].shape[0]))
            for i in range(b):       # one CSR mat-vec per instance: no transposed copies
                nxt[i] = self.maps[t] @ q[i]
            joint = nxt.reshape(b, -1, self.rows[t + 1].size)
        return np.einsum("bsx,sx->b", joint, self.terminal)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def chain_plan(chain) -> ChainPlan:
    """The ``ChainPlan`` of an augmented chain, built once per chain object (weakly cached)."""
    plan = _PLANS.get(chain)
    if plan is None:
        plan = ChainPlan(chain)
        _PLANS[chain] = plan
    return plan


_CHAINS: OrderedDict = OrderedDict()
_CHAIN_CACHE_SIZE = 8
"""Chains kept (least recently used dropped): an exact Asian chain at N = 10, M = 150 holds
about 1 million transition entries, some 25 MB with its ``ChainPlan``."""


def cached_chain(marginals: Marginals, payoff: Payoff, **chain_options):
    """``augment.build_chain(marginals, payoff, **chain_options)``, reused across calls.

    The chain depends on the marginals only through the grid, the number of dates and the
    support (weights > 0), so models that share them (one solved chain priced many times, a
    scenario sweep on one grid) share the chain and its ``ChainPlan``. A small LRU cache.
    """
    w = np.asarray(marginals.weights)
    return _cached_chain(np.asarray(marginals.grid), w > 0, payoff, lambda: marginals,
                         chain_options)


def _cached_chain(grid, support, payoff, make, chain_options):
    """``cached_chain`` keyed by the support pattern (bool (N+1, M)); ``make()`` gives the
    marginals to build from on a miss."""
    from deepquant.mmot.augment import build_chain

    key = (payoff, grid.tobytes(), support.shape, np.packbits(support).tobytes(),
           tuple(sorted(chain_options.items())))
    try:
        hash(key)
    except TypeError:  # an unhashable payoff or option: no caching
        return build_chain(make(), payoff, **chain_options)
    chain = _CHAINS.get(key)
    if chain is None:
        chain = build_chain(make(), payoff, **chain_options)
        _CHAINS[key] = chain
        if len(_CHAINS) > _CHAIN_CACHE_SIZE:
            _CHAINS.popitem(last=False)
    else:
        _CHAINS.move_to_end(key)
    return chain


def _full_support(margs: list[Marginals], pos: np.ndarray, full: np.ndarray) -> Marginals:
    """The union (mixture) of ``margs`` with weight 1e-300 added on ``full`` outside their
    supports ``pos``: only the support pattern reaches the chain."""
    first = margs[0]
    w = np.mean([m.weights for m in margs], axis=0)
    return Marginals(first.grid, np.where(full & ~pos, 1e-300, w), first.times,
                     check_convex=False)


def check_n_paths(n_paths: object) -> int:
    """``n_paths`` as an int >= 1 (an integral float such as 1e4 is taken); a ``ValueError``
    naming it for a bool, a string, NaN, a fraction or a count below 1."""
    if isinstance(n_paths, bool) or not isinstance(n_paths, numbers.Real) \
            or not math.isfinite(n_paths) or int(n_paths) != n_paths or n_paths < 1:
        raise ValueError(f"n_paths must be an integer >= 1, got {n_paths!r}")
    return int(n_paths)


def price_batch(marginals, kernels: np.ndarray, payoff: Payoff, *, support: str = "union",
                threads: int = 1, **chain_options) -> np.ndarray:
    """Prices of one payoff under B Markov chains on one grid, in one batched recursion.

    Parameters
    ----------
    marginals : Marginals or sequence of Marginals
        One set per instance (all on the same grid with the same number of dates), or one set
        shared by all. The chain is built on the union of the supports (a mixture of the
        marginals, still in convex order), which prices every instance exactly: a kernel puts
        no mass where its own marginals have none, and the extra states then carry zero mass.
    kernels : ndarray, shape (B, N, M, M) or (N, M, M)
    payoff : Payoff
    support : {"union", "full"}
        The support the chain is built on. ``"union"``: the union of the instances' supports.
        ``"full"``: every grid point at every date where the union holds more than one point;
        the chain then depends only on the grid, the number of dates and the payoff, so it is
        built once and reused by every later call on that grid (a fresh model on the network's
        grid otherwise pays a new chain, 0.3-0.4 s for the exact Asian at N = 10, M = 150).
        Both are exact: states outside an instance's support carry zero mass, and the banded
        recursion skips them. ``"full"`` suits near-full supports (the network's grid); on
        narrow supports it enlarges the running-sum lattice.
    threads : int
        Threads of the recursion (``ChainPlan.expectation_bound``): chunks of instances side
        by side, or, for a single chunk, the two halves of a meeting in the middle.
    **chain_options
        Passed to the augmented chain (``sum_mode``, ``sum_grid_size``).

    Returns
    -------
    ndarray, shape (B,)
        E[payoff] per instance (undiscounted, moneyness units).
    """
    check_payoff(payoff)
    kernels = np.asarray(kernels, dtype=float)
    if kernels.ndim == 3:
        kernels = kernels[None]
    if kernels.ndim != 4 or kernels.shape[2] != kernels.shape[3]:
        raise ValueError(f"kernels must have shape (B, N, M, M), got {kernels.shape}")
    margs = [marginals] if isinstance(marginals, Marginals) else list(marginals)
    if not margs or not all(isinstance(m, Marginals) for m in margs):
        raise TypeError("marginals must be a Marginals or a non-empty sequence of Marginals")
    if len(margs) not in (1, kernels.shape[0]):
        raise ValueError(f"got {len(margs)} marginals for {kernels.shape[0]} kernel sets")
    first = margs[0]
    for i, m in enumerate(margs[1:], 1):
        if m.weights.shape != first.weights.shape or not np.array_equal(m.grid, first.grid):
            raise ValueError(f"marginals[{i}] has shape {m.weights.shape} on another grid than "
                             f"marginals[0] {first.weights.shape}; price_batch needs one grid")
    if support not in ("union", "full"):
        raise ValueError(f"support must be 'union' or 'full', got {support!r}")
    check_count(threads, "threads")
    law0 = (np.broadcast_to(first.weights[0], (kernels.shape[0], first.size))
            if len(margs) == 1 else np.stack([m.weights[0] for m in margs]))
    pos = first.weights > 0
    for m in margs[1:]:
        pos = pos | (m.weights > 0)
    if support == "full":   # every point of each date whose union holds more than one
        full = pos | (pos.sum(axis=1) > 1)[:, None]
        chain = _cached_chain(first.grid, full, payoff,
                              lambda: _full_support(margs, pos, full), chain_options)
    else:
        chain = _cached_chain(first.grid, pos, payoff, lambda: first if len(margs) == 1 else
                              Marginals(first.grid, np.mean([m.weights for m in margs], axis=0),
                                        first.times, check_convex=False), chain_options)
    if kernels.shape[1] < chain.last_date or kernels.shape[2] != chain.size:
        raise ValueError(f"kernels must have shape (B, >= {chain.last_date}, {chain.size}, "
                         f"{chain.size}), got {kernels.shape}")
    return chain_plan(chain).expectation(kernels, np.asarray(law0, dtype=float),
                                         threads=threads)
