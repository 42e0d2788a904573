"""Robust widening of MMOT price bounds: transaction costs and calibration uncertainty.

Two widenings from seed 001 §6–7 (DESIGN §2.5), each reported separately:

* **Transaction costs** (seed Thm 6.4, eq. 6.6). With proportional costs k_t on rebalancing the
  underlying at date t, the no-arbitrage interval widens to [P_lo - Gamma_lo, P_up + Gamma_up] with

      Gamma = sum_{t=1}^{N} k_t E_P[|X_t - X_{t-1}|]            (moneyness units),

  the expectation taken under the optimal plan P of the side being widened (the minimiser for
  the lower bound, the maximiser for the upper one). Multiply by ``scale`` = D(0,T) F_ref to get
  currency. The seed states the theorem without a proof; E|X_t - X_{t-1}| is the expected
  traded notional per unit of a delta-one position, so this is the cost of a one-share
  rebalancing per period, a heuristic of the right order rather than a sharp bound.

* **Calibration uncertainty** (seed Cor. 6.3, eqs. 6.3–6.4). With M quotes per maturity and a
  bid–ask spread s (in the units of the calibrated prices), the marginal error satisfies with
  probability >= 1 - alpha

      delta(s, alpha, M) = (s / 2) sqrt(2 (1 + log(2 / alpha)) / M),

  and the bounds widen by epsilon = L C delta, with L the payoff's Lipschitz constant and C the
  stability constant of the bounds in the marginals (seed §7.1 step 4: widen by C max_t delta_t).
  We use the seed's form exactly. It dominates Hoeffding's bound for the mean of M independent
  errors bounded in a band of width s, (s/2) sqrt(2 log(2/alpha) / M), by the extra ``1 +``
  inside the root (factor sqrt(1 + 1/log(2/alpha)) ~ 1.14 at alpha = 0.05), so it is the more
  conservative of the two. C is not derived in the seed; ``C = 1`` is the default and a stated
  modelling choice (multi-period MOT values are not Lipschitz in W1 in general).

References: seed 001 Thm 6.4, Cor. 6.3, §7.1; DESIGN §2.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TransactionCostWidening",
    "CalibrationWidening",
    "WidenedBounds",
    "expected_abs_moves",
    "transaction_cost_widening",
    "calibration_delta",
    "calibration_widening",
    "widen",
    "plan_moves",
    "widen_bounds",
]


def _finite_nonneg(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from exc
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def expected_abs_moves(source, *, grid: np.ndarray | None = None,
                       weights: np.ndarray | None = None) -> np.ndarray:
    """E[|X_{t+1} - X_t|] per period under a plan or a model, shape (N,).

    Parameters
    ----------
    source
        One of:

        * an object with a method ``expected_abs_moves()`` (``CalibratedModel``, the
          ``ChainSolution`` of the augmented entropic solver), which is called;
        * an object with attributes ``kernels`` (N, M, M), row-stochastic
          P(X_{t+1} = y | X_t = x), and either ``marginals`` (a ``Marginals``) or ``weights``
          (N+1, M) and ``grid`` (M,), e.g. an ``EntropicResult``;
        * an array of joint plans pi_t(x, y), shape (N, M, M), each summing to 1 (needs ``grid``);
        * an array of kernels (N, M, M) with ``weights`` (N+1, M) and ``grid`` (M,);
        * a list of augmented joint plans pi_t(x, s, y) of shape (M, n_t, M) (the ``plan`` of an
          LP or entropic ``BoundSide``), with ``grid``.
    grid, weights
        Grid points and marginal weights when ``source`` is a bare array.

    Returns
    -------
    ndarray, shape (N,)
        sum_{x,y} P(X_t = x, X_{t+1} = y) |y - x| for t = 0..N-1.
    """
    if hasattr(source, "expected_abs_moves"):
        return np.asarray(source.expected_abs_moves(), dtype=float)
    if hasattr(source, "kernels") and hasattr(source, "marginals"):
        m = source.marginals
        return _moves_from_kernels(np.asarray(source.kernels, float), m.weights, m.grid)
    if all(hasattr(source, a) for a in ("kernels", "weights", "grid")):
        return _moves_from_kernels(np.asarray(source.kernels, float),
                                   np.asarray(source.weights, float),
                                   np.asarray(source.grid, float))
    if isinstance(source, list | tuple) and source and all(np.ndim(p) == 3 for p in source):
        if grid is None:
            raise ValueError("grid is required when source is a list of augmented plans")
        grid = np.asarray(grid, dtype=float)
        dist = np.abs(grid[None, :] - grid[:, None])
        out = []
        for t, p in enumerate(source):
            p = np.asarray(p, dtype=float)
            if p.shape[0] != grid.size:
                raise ValueError(f"plan {t} has shape {p.shape}; expected ({grid.size}, n_t, "
                                 f"{grid.size})")
            out.append(float(np.einsum("xsy,xy->", p, dist)))
        return np.array(out)
    arr = np.asarray(source, dtype=float)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"plans/kernels must have shape (N, M, M), got {arr.shape}")
    if grid is None:
        raise ValueError("grid is required when source is an array of plans or kernels")
    grid = np.asarray(grid, dtype=float)
    if grid.shape != (arr.shape[1],):
        raise ValueError(f"grid must have shape ({arr.shape[1]},), got {grid.shape}")
    if weights is not None:
        return _moves_from_kernels(arr, np.asarray(weights, float), grid)
    if np.any(arr < -1e-12) or not np.all(np.isfinite(arr)):
        raise ValueError("plans must be finite and non-negative")
    sums = arr.sum(axis=(1, 2))
    if np.any(np.abs(sums - 1.0) > 1e-8):
        t = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"plan {t} sums to {sums[t]:.12g}, not 1 (pass weights= for kernels)")
    dist = np.abs(grid[None, :] - grid[:, None])
    return np.einsum("txy,xy->t", arr, dist)


def _moves_from_kernels(kernels: np.ndarray, weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
    n = kernels.shape[0]
    if weights.shape != (n + 1, grid.size) or kernels.shape[1:] != (grid.size, grid.size):
        raise ValueError(
            f"kernels {kernels.shape}, weights {weights.shape} and grid {grid.shape} disagree"
        )
    dist = np.abs(grid[None, :] - grid[:, None])
    return np.einsum("tx,txy,xy->t", weights[:-1], kernels, dist)


@dataclass(frozen=True)
class TransactionCostWidening:
    """Gamma = scale * sum_t k_t E|X_{t+1} - X_t| (seed Thm 6.4).

    Attributes
    ----------
    gamma : float
        The widening in price units (``scale`` times moneyness units).
    per_period : ndarray, shape (N,)
        scale * k_t * E|X_{t+1} - X_t|, summing to ``gamma``.
    costs : ndarray, shape (N,)
        The proportional cost rates k_t used.
    expected_moves : ndarray, shape (N,)
        E|X_{t+1} - X_t| under the plan (moneyness units).
    scale : float
        Conversion factor from moneyness to price units (D(0,T) F_ref; 1 for moneyness).
    """

    gamma: float
    per_period: np.ndarray
    costs: np.ndarray
    expected_moves: np.ndarray
    scale: float


def transaction_cost_widening(source, k, *, scale: float = 1.0, grid: np.ndarray | None = None,
                              weights: np.ndarray | None = None) -> TransactionCostWidening:
    """Transaction-cost widening Gamma = scale * sum_t k_t E_P[|X_t - X_{t-1}|] (seed eq. 6.6).

    Parameters
    ----------
    source
        The plan or model P (see ``expected_abs_moves``), or an array of E|X_{t+1} - X_t|
        of shape (N,) already computed.
    k : float or array_like, shape (N,)
        Proportional cost rate per period (e.g. 5e-4 for 5 bp), >= 0.
    scale : float
        Price units per moneyness unit (D(0,T) F_ref), > 0.
    """
    scale_v = _finite_nonneg("scale", scale)
    if scale_v == 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    arr = None if hasattr(source, "kernels") or hasattr(source, "expected_abs_moves") else (
        np.asarray(source, dtype=float))
    if arr is not None and arr.ndim == 1:
        moves = arr
        if not np.all(np.isfinite(moves)) or np.any(moves < 0):
            raise ValueError(f"expected moves must be finite and >= 0, got {moves}")
    else:
        moves = expected_abs_moves(source, grid=grid, weights=weights)
    costs = np.asarray(k, dtype=float)
    if costs.ndim == 0:
        costs = np.full(moves.shape, float(costs))
    if costs.shape != moves.shape:
        raise ValueError(f"k must be a scalar or have shape {moves.shape} (one per period), "
                         f"got shape {costs.shape}")
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        bad = float(costs[~(np.isfinite(costs) & (costs >= 0))][0])
        raise ValueError(f"k must be finite and >= 0, got {bad!r}")
    per = scale_v * costs * moves
    return TransactionCostWidening(float(per.sum()), per, costs, moves, scale_v)


def calibration_delta(s: float, alpha: float, m: int) -> float:
    """delta(s, alpha, M) = (s/2) sqrt(2 (1 + log(2/alpha)) / M) (seed Cor. 6.3, eq. 6.3).

    Parameters
    ----------
    s : float
        Bid–ask spread (>= 0), in the units of the calibrated prices.
    alpha : float
        Confidence level parameter in (0, 1): the bound holds with probability >= 1 - alpha.
    m : int
        Number of quotes per maturity (>= 1).
    """
    s_v = _finite_nonneg("s", s)
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if isinstance(m, bool) or int(m) != m or int(m) < 1:
        raise ValueError(f"M (number of quotes) must be an integer >= 1, got {m!r}")
    return 0.5 * s_v * math.sqrt(2.0 * (1.0 + math.log(2.0 / a)) / int(m))


@dataclass(frozen=True)
class CalibrationWidening:
    """epsilon = L * C * delta(s, alpha, M) * scale (seed eq. 6.4).

    Attributes
    ----------
    epsilon : float
        The widening in price units.
    delta : float
        delta(s, alpha, M) of seed eq. 6.3 (units of s).
    s, alpha, m, lipschitz, stability, scale : float
        The inputs, recorded.
    """

    epsilon: float
    delta: float
    s: float
    alpha: float
    m: int
    lipschitz: float
    stability: float
    scale: float


def calibration_widening(s: float, alpha: float, M: int, L: float, C: float = 1.0, *,
                         scale: float = 1.0) -> CalibrationWidening:
    """Calibration-uncertainty widening epsilon = scale * L * C * delta(s, alpha, M).

    Parameters
    ----------
    s, alpha, M
        See ``calibration_delta``.
    L : float
        Lipschitz constant of the payoff (sup-norm over the path), >= 0.
    C : float
        Stability constant of the bounds in the marginals, >= 0 (default 1, a modelling choice).
    scale : float
        Price units per unit of s (1 when s is already in price units), > 0.
    """
    delta = calibration_delta(s, alpha, M)
    lv = _finite_nonneg("L", L)
    cv = _finite_nonneg("C", C)
    sc = _finite_nonneg("scale", scale)
    if sc == 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    return CalibrationWidening(sc * lv * cv * delta, delta, float(s), float(alpha), int(M), lv, cv,
                               sc)


@dataclass(frozen=True)
class WidenedBounds:
    """Bounds [lower, upper] and their widenings, each reported separately.

    ``widened_lower = lower - gamma_lower - epsilon`` and
    ``widened_upper = upper + gamma_upper + epsilon``.
    """

    lower: float
    upper: float
    gamma_lower: float
    gamma_upper: float
    epsilon: float
    widened_lower: float
    widened_upper: float
    transaction_lower: TransactionCostWidening | None = None
    transaction_upper: TransactionCostWidening | None = None
    calibration: CalibrationWidening | None = None

    @property
    def with_costs(self) -> tuple[float, float]:
        """[lower - Gamma_lo, upper + Gamma_up]: transaction costs only."""
        return self.lower - self.gamma_lower, self.upper + self.gamma_upper

    @property
    def with_calibration(self) -> tuple[float, float]:
        """[lower - epsilon, upper + epsilon]: calibration uncertainty only."""
        return self.lower - self.epsilon, self.upper + self.epsilon


def widen(lower: float, upper: float, *,
          transaction: TransactionCostWidening | tuple | None = None,
          calibration: CalibrationWidening | None = None) -> WidenedBounds:
    """Widen [lower, upper] by transaction costs and calibration uncertainty.

    Parameters
    ----------
    lower, upper : float
        The bounds (lower <= upper up to 1e-12 relative).
    transaction : TransactionCostWidening or (lower_side, upper_side), optional
        One widening for both sides, or a pair computed under the minimising and the
        maximising plan respectively.
    calibration : CalibrationWidening, optional
    """
    lo, up = float(lower), float(upper)
    if not (math.isfinite(lo) and math.isfinite(up)):
        raise ValueError(f"bounds must be finite, got lower={lower!r}, upper={upper!r}")
    if lo > up + 1e-12 * max(1.0, abs(up)):
        raise ValueError(f"lower={lo!r} exceeds upper={up!r}")
    if transaction is None:
        t_lo = t_up = None
    elif isinstance(transaction, TransactionCostWidening):
        t_lo = t_up = transaction
    else:
        try:
            t_lo, t_up = transaction
        except (TypeError, ValueError) as exc:
            raise ValueError("transaction must be a TransactionCostWidening or a pair of them, "
                             f"got {transaction!r}") from exc
    g_lo = 0.0 if t_lo is None else t_lo.gamma
    g_up = 0.0 if t_up is None else t_up.gamma
    e = 0.0 if calibration is None else calibration.epsilon
    return WidenedBounds(lo, up, g_lo, g_up, e, lo - g_lo - e, up + g_up + e, t_lo, t_up,
                         calibration)


def plan_moves(result, side: str) -> np.ndarray:
    """E|X_{t+1} - X_t| per period under the optimal plan of one side of a bounds result.

    Parameters
    ----------
    result : BoundsResult
        From ``deepquant.mmot.bounds(..., return_plan=True)``: it carries the side's plan and
        its problem (the marginals give the grid and the number of periods N).
    side : {"lower", "upper"}

    Returns
    -------
    ndarray, shape (N,)
        The moves of the side's plan; 0 for the periods after the payoff's last date (the plan
        stops there, and so does the hedge).
    """
    if side not in ("lower", "upper"):
        raise ValueError(f"side must be 'lower' or 'upper', got {side!r}")
    problem = getattr(result, "problem", None)
    if problem is None:
        raise ValueError("result carries no problem (pass a BoundsResult returned by bounds)")
    bound = getattr(result, f"{side}_side", None)
    plan = getattr(bound, "plan", None) if bound is not None else None
    if not plan:
        raise ValueError(f"the {side} side of the result has no plan (solve with "
                         f"return_plan=True; the {side} status is "
                         f"{getattr(bound, 'status', 'missing')!r})")
    marginals = problem.marginals
    moves = expected_abs_moves(list(plan), grid=marginals.grid)
    out = np.zeros(marginals.n_periods)
    out[: moves.size] = moves
    return out


def widen_bounds(result, *, cost_rate=0.0, calibration: CalibrationWidening | None = None,
                 scale: float = 1.0) -> WidenedBounds:
    """Widen the bounds of a result by transaction costs and calibration uncertainty.

    The lower bound's Gamma is taken under the minimising plan, the upper bound's under the
    maximising plan (``plan_moves``), at ``cost_rate`` k (scalar or one per period, see
    ``transaction_cost_widening``); ``calibration`` (``calibration_widening``) widens both
    sides by its epsilon. Needs a successful ``BoundsResult`` solved with
    ``return_plan=True``; the arithmetic is ``widen``'s.
    """
    if not getattr(result, "success", False):
        raise ValueError(f"cannot widen a failed bounds result (status "
                         f"{getattr(result, 'status', None)!r})")
    t_lo = transaction_cost_widening(plan_moves(result, "lower"), cost_rate, scale=scale)
    t_up = transaction_cost_widening(plan_moves(result, "upper"), cost_rate, scale=scale)
    return widen(result.lower, result.upper, transaction=(t_lo, t_up), calibration=calibration)
