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
payoff (``augment.expectation``); pairwise payoffs are priced as sum_t <c_t, pi_t>.
``sample(n_paths, rng)`` draws grid paths of shape (n_paths, N+1) from the kernels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.payoffs import Payoff, SumSquaredIncrements

__all__ = ["CalibratedModel", "ModelPrice", "calibrate_model"]


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
        Wall time of the pricing (chain build + recursion).
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
        g = self.grid
        d = self.kernels @ g - g[None, :]
        live = self.marginals.weights[:-1] > 0
        return float(np.max(np.abs(d[live]))) if live.any() else 0.0

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
        from deepquant.mmot.augment import build_chain, expectation

        if not isinstance(payoff, Payoff):
            raise TypeError(f"payoff must be a Payoff, got {type(payoff).__name__}")
        t0 = time.perf_counter()
        n = self.marginals.n_dates
        if isinstance(payoff, SumSquaredIncrements):
            terms = payoff.pairwise(n)
            g = self.grid
            val = 0.0
            for t, c in terms:
                cm = np.asarray(c(g[:, None], g[None, :]), dtype=float)
                val += float(np.sum(self.plans[t] * cm))
            return ModelPrice(val, True, time.perf_counter() - t0, [])
        chain = build_chain(self.marginals, payoff, sum_mode=sum_mode,
                            sum_grid_size=sum_grid_size)
        val = expectation(chain, self.kernels, law0=np.asarray(self.marginals.weights[0]))
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
        if isinstance(n_paths, bool) or int(n_paths) != n_paths or int(n_paths) < 1:
            raise ValueError(f"n_paths must be an integer >= 1, got {n_paths!r}")
        n_paths = int(n_paths)
        gen = np.random.default_rng(rng)
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


def calibrate_model(marginals: Marginals, *, reference="product", **options) -> CalibratedModel:
    """Convenience: ``CalibratedModel.calibrate(marginals, reference=..., **options)``."""
    return CalibratedModel.calibrate(marginals, reference=reference, **options)
