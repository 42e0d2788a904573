"""Delta hedges from the calibrated model and their backtest (seed 001 §8, DESIGN §2.6).

Value function. Under the calibrated Markov chain (kernels k_t(x, y)) and the payoff's augmented
chain (X_t, S_t) (``deepquant.mmot.augment``), the model value is the backward recursion

    V_T(x, s) = f(x, s),
    W_t(s, y) = sum_{s'} K_t(s' | s, y) V_{t+1}(y, s')        (statistic update, maybe split),
    V_t(x, s) = sum_y k_t(x, y) W_t(s, y).

Hedge ratio. Seed eq. 8.1 writes Delta_t(x) = d/dx E[V_{t+1}(X_{t+1}) | X_t = x]; on a discrete
chain the market is incomplete and the derivative is not defined, so we use its discrete
analogue, the one-period minimum-variance (local risk-minimising, Föllmer–Schweizer) hedge

    Delta_t(x, s) = Cov(W_t(s, X_{t+1}), X_{t+1} | X_t = x) / Var(X_{t+1} | X_t = x),

which equals the slope of V_{t+1} when X_{t+1} takes two values (binomial case) and is the
regression slope in general; ``method="fd"`` gives the seed's literal finite-difference slope
dV_t/dx (central differences of V_t along the grid at fixed s) for comparison. Because V is a
martingale and X is one, the hedging error telescopes into orthogonal increments,

    e = V_0 + sum_t Delta_t (X_{t+1} - X_t) - f = -sum_t [V_{t+1} - V_t - Delta_t (X_{t+1} - X_t)],

so E[e] = 0 under the model and Var[e] = sum_t E[Var_t(V_{t+1} - Delta_t X_{t+1})], minimised
state by state by the min-variance delta (``expected_error_variance`` evaluates it exactly for
exact chains).

Backtest. ``backtest(hedge, paths)`` runs the self-financing hedge along given paths (from the
model's ``sample`` or from another model on the same grid), with the statistic computed exactly
along each path and V, Delta interpolated linearly in s between the chain's statistic values.
It reports the tracking error e per path (mean, std, RMSE, quantiles) beside the seed's Thm 8.1
reference value L_Delta sqrt(dt) log(1/dt) (eq. 8.3 with its unspecified constant C = 1, dt the
mean period length in years, L_Delta the largest |dDelta/dx| over states with mass): the seed
states that bound without proof, so it is printed as a scale, not checked as a guarantee.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.payoffs import Payoff, check_payoff
from deepquant.results import result_dict

__all__ = ["DeltaHedge", "BacktestResult", "delta_hedge", "backtest"]


@dataclass(frozen=True, eq=False)
class DeltaHedge:
    """Model values and hedge ratios on the augmented chain of one payoff.

    Attributes
    ----------
    price : float
        V_0 averaged over mu_0 (the model price of the payoff).
    values : list of ndarray
        ``values[t]`` of shape (M, n_t): V_t(grid[x], states[t][s]), t = 0..T.
    deltas : list of ndarray
        ``deltas[t]`` of shape (M, n_t): hedge ratio held over (t, t+1], t = 0..T-1.
    method : str
        ``"mv"`` (minimum variance) or ``"fd"`` (finite difference of V_t in x).
    chain : AugmentedChain
    kernels : ndarray, shape (N, M, M)
    payoff : Payoff
    law0 : ndarray, shape (M,)
    times : ndarray, shape (N+1,)
    """

    price: float
    values: list[np.ndarray]
    deltas: list[np.ndarray]
    method: str
    chain: object
    kernels: np.ndarray
    payoff: Payoff
    law0: np.ndarray
    times: np.ndarray

    @property
    def grid(self) -> np.ndarray:
        return self.chain.grid

    def joint_laws(self) -> list[np.ndarray]:
        """P(X_t = x, S_t = s), shape (M, n_t), t = 0..T, under the model (forward recursion)."""
        ch = self.chain
        m = ch.size
        joint = [ch.initial.multiply(self.law0[:, None]).toarray()]
        for t in range(ch.last_date):
            q = joint[-1].T @ self.kernels[t]  # (n_t, M): P(S_t = s, X_{t+1} = y)
            coo = ch.transitions[t].tocoo()
            s_idx, y_idx = coo.row // m, coo.row % m
            nxt = np.zeros((m, ch.transitions[t].shape[1]))
            np.add.at(nxt, (y_idx, coo.col), q[s_idx, y_idx] * coo.data)
            joint.append(nxt)
        return joint

    def expected_error_variance(self) -> float:
        """Var[e] under the model, sum_t E[Var_t(V_{t+1} - Delta_t X_{t+1})] (exact chains).

        With a split statistic (interpolated running sums) the variance of V_{t+1} given
        (S_t, X_{t+1}) is included as well, through the split weights.
        """
        ch = self.chain
        m = ch.size
        g = ch.grid
        joint = self.joint_laws()
        total = 0.0
        for t in range(ch.last_date):
            coo = ch.transitions[t].tocoo()
            y_idx = coo.row % m
            v_next = self.values[t + 1][y_idx, coo.col]
            n_t = ch.transitions[t].shape[0] // m
            w1 = np.zeros(n_t * m)
            w2 = np.zeros(n_t * m)
            np.add.at(w1, coo.row, coo.data * v_next)
            np.add.at(w2, coo.row, coo.data * v_next**2)
            w1 = w1.reshape(n_t, m)  # E[V_{t+1} | s, y]
            w2 = w2.reshape(n_t, m)  # E[V_{t+1}^2 | s, y]
            k = self.kernels[t]  # (M, M)
            d = self.deltas[t]  # (M, n_t)
            v = self.values[t]  # (M, n_t)
            # e_t = V_{t+1} - V_t - Delta (y - x): E[e_t^2 | x, s] = sum_y k(x,y) E[(.)^2 | s, y]
            lin = v[:, :, None] + d[:, :, None] * (g[None, None, :] - g[:, None, None])
            sq = (w2[None, :, :] - 2.0 * lin * w1[None, :, :] + lin**2)
            var = np.einsum("xy,xsy->xs", k, sq)
            total += float(np.sum(joint[t] * np.maximum(var, 0.0)))
        return total

    def lookup(self, t: int, x: np.ndarray, s: np.ndarray, what: str = "delta") -> np.ndarray:
        """Delta_t (or V_t with ``what="value"``) at grid values ``x`` and statistic values ``s``,
        linear in s between the chain's statistic values (constant beyond the ends)."""
        arr = (self.deltas if what == "delta" else self.values)[t]
        states = self.chain.states[t]
        xi = np.searchsorted(self.grid, x)
        xi = np.clip(xi, 0, self.grid.size - 1)
        if states.size == 1:
            return arr[xi, 0]
        j = np.clip(np.searchsorted(states, s, side="right") - 1, 0, states.size - 2)
        lam = np.clip((s - states[j]) / (states[j + 1] - states[j]), 0.0, 1.0)
        return (1.0 - lam) * arr[xi, j] + lam * arr[xi, j + 1]

    def delta_lipschitz(self) -> float:
        """max |Delta_t(x', s) - Delta_t(x, s)| / |x' - x| over neighbouring reachable states."""
        out = 0.0
        g = self.grid
        for t in range(len(self.deltas)):
            d = self.deltas[t]
            live = self.chain.reach[t]
            both = live[1:] & live[:-1]
            if both.any():
                slope = np.abs(np.diff(d, axis=0)) / np.diff(g)[:, None]
                out = max(out, float(slope[both].max()))
        return out


def delta_hedge(model, payoff: Payoff, *, method: str = "mv", sum_mode: str = "auto",
                sum_grid_size: int | None = None) -> DeltaHedge:
    """Model values and delta hedges of ``payoff`` under a calibrated model.

    Parameters
    ----------
    model : CalibratedModel
        Provides ``marginals`` and ``kernels`` (N, M, M).
    payoff : Payoff
        Any payoff with ``terminal(x, s)``.
    method : {"mv", "fd"}
        Minimum-variance hedge (default) or finite difference of V_t in x (seed eq. 8.1).
    sum_mode, sum_grid_size
        Passed to ``build_chain``.
    """
    from deepquant.mmot.augment import build_chain

    if method not in ("mv", "fd"):
        raise ValueError(f"method must be 'mv' or 'fd', got {method!r}")
    check_payoff(payoff)
    if not isinstance(getattr(model, "marginals", None), Marginals) \
            or getattr(model, "kernels", None) is None:
        raise TypeError(f"model must be a calibrated model with marginals and kernels "
                        f"(CalibratedModel, NeuralSolution), got {type(model).__name__}")
    marg = model.marginals
    chain = build_chain(marg, payoff, sum_mode=sum_mode, sum_grid_size=sum_grid_size)
    kern = np.asarray(model.kernels, dtype=float)
    g = chain.grid
    m = chain.size
    T = chain.last_date
    values: list[np.ndarray] = [None] * (T + 1)  # type: ignore[list-item]
    deltas: list[np.ndarray] = [None] * T  # type: ignore[list-item]
    values[T] = np.asarray(chain.terminal, dtype=float)
    for t in range(T - 1, -1, -1):
        coo = chain.transitions[t].tocoo()
        n_t = chain.transitions[t].shape[0] // m
        w = np.zeros(n_t * m)
        np.add.at(w, coo.row, coo.data * values[t + 1][coo.row % m, coo.col])
        w = w.reshape(n_t, m)  # W_t(s, y)
        k = kern[t]
        values[t] = k @ w.T  # (M, n_t)
        if method == "mv":
            mean = k @ g  # (M,)
            c = g[None, :] - mean[:, None]  # (M, M) centred moves
            var = np.einsum("xy,xy->x", k, c * c)
            cov = np.einsum("xy,xy,sy->xs", k, c, w)
            with np.errstate(invalid="ignore", divide="ignore"):
                deltas[t] = np.where(var[:, None] > 0, cov / var[:, None], 0.0)
        else:
            deltas[t] = np.gradient(values[t], g, axis=0) if m > 1 else np.zeros_like(values[t])
    law0 = np.asarray(marg.weights[0], dtype=float)
    j0 = chain.initial.multiply(law0[:, None]).toarray()
    price = float(np.sum(j0 * values[0]))
    return DeltaHedge(price, values, deltas, method, chain, kern, payoff, law0,
                      np.asarray(marg.times, dtype=float))


@dataclass(frozen=True)
class BacktestResult:
    """Tracking errors e = V_0 + sum_t Delta_t dX_t - f along paths.

    Attributes
    ----------
    errors : ndarray, shape (n_paths,)
    mean, std, rmse : float
    stderr : float
        std / sqrt(n_paths), the Monte Carlo error of ``mean``.
    quantiles : dict
        Quantiles 1%, 5%, 50%, 95%, 99% of e.
    unhedged_std : float
        std of V_0 - f (no hedge), for scale.
    price : float
        V_0 (the model price charged).
    l_delta : float
        L_Delta, the largest |dDelta/dx| over reachable neighbouring states.
    dt : float
        Mean period length in years.
    seed_bound : float
        L_Delta sqrt(dt) log(1/dt) (seed eq. 8.3 with C = 1; a scale, not a guarantee).
    method : str
    n_paths : int
    success, status, message, seconds
        The result protocol (``deepquant.results``): a backtest has no stopping criterion, so
        ``success`` is True and ``status`` is ``"done"``; ``seconds`` is the wall time.
    """

    errors: np.ndarray
    mean: float
    std: float
    rmse: float
    stderr: float
    quantiles: dict = field(default_factory=dict)
    unhedged_std: float = float("nan")
    price: float = float("nan")
    l_delta: float = float("nan")
    dt: float = float("nan")
    seed_bound: float = float("nan")
    method: str = "mv"
    n_paths: int = 0
    success: bool = True
    status: str = "done"
    message: str = ""
    seconds: float = float("nan")

    def to_dict(self) -> dict:
        """JSON-safe scalars (the per-path ``errors`` left out)."""
        return result_dict(self, skip=("errors",))

    def summary(self) -> dict:
        """Same as ``to_dict``."""
        return self.to_dict()


def backtest(hedge: DeltaHedge, paths: np.ndarray) -> BacktestResult:
    """Run the delta hedge along ``paths`` and report the tracking error.

    Parameters
    ----------
    hedge : DeltaHedge
    paths : ndarray, shape (n_paths, N+1)
        Paths of X on the hedge's grid (e.g. ``CalibratedModel.sample``), same number of dates.

    Returns
    -------
    BacktestResult
    """
    t0 = time.perf_counter()
    if not isinstance(hedge, DeltaHedge):
        raise TypeError(f"hedge must be a DeltaHedge (from delta_hedge), got "
                        f"{type(hedge).__name__}")
    paths = np.asarray(paths, dtype=float)
    n_dates = hedge.kernels.shape[0] + 1
    if paths.ndim != 2 or paths.shape[1] != n_dates or paths.shape[0] < 2:
        raise ValueError(f"paths must have shape (n_paths >= 2, {n_dates}), got {paths.shape}")
    g = hedge.grid
    on_grid = np.isin(paths, g)
    if not on_grid.all():
        i, t = np.argwhere(~on_grid)[0]
        raise ValueError(f"paths must lie on the hedge's grid: path {i}, date {t} has "
                         f"{paths[i, t]:.6g}")
    T = hedge.chain.last_date
    stat = hedge.payoff.statistic(n_dates)
    x0 = paths[:, 0]
    v0 = hedge.lookup(0, x0, stat.evaluate(paths, 0), what="value")
    wealth = v0.copy()
    for t in range(T):
        s_t = stat.evaluate(paths, t)
        wealth += hedge.lookup(t, paths[:, t], s_t) * (paths[:, t + 1] - paths[:, t])
    f = hedge.payoff.evaluate(paths)
    err = wealth - f
    n = err.size
    qs = (0.01, 0.05, 0.5, 0.95, 0.99)
    times = hedge.times[: T + 1]
    dt = float(np.mean(np.diff(times))) if T > 0 else float("nan")
    l_delta = hedge.delta_lipschitz()
    bound = l_delta * np.sqrt(dt) * np.log(1.0 / dt) if 0 < dt < 1 else float("nan")
    rmse = float(np.sqrt(np.mean(err**2)))
    return BacktestResult(
        errors=err, mean=float(err.mean()), std=float(err.std(ddof=1)), rmse=rmse,
        stderr=float(err.std(ddof=1) / np.sqrt(n)),
        quantiles={f"{q:g}": float(np.quantile(err, q)) for q in qs},
        unhedged_std=float((v0 - f).std(ddof=1)), price=hedge.price, l_delta=l_delta, dt=dt,
        seed_bound=float(bound), method=hedge.method, n_paths=n,
        message=f"{n} paths, tracking error rmse {rmse:.3g}",
        seconds=time.perf_counter() - t0)
