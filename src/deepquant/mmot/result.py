"""Result objects of the MMOT bounds (``deepquant.mmot.bounds``); ``BoundsResult`` follows the
package's result protocol (``deepquant.results``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepquant.results import result_dict, total_seconds

__all__ = ["Duals", "BoundSide", "BoundsResult"]


@dataclass(frozen=True, eq=False)
class Duals:
    """Dual variables of one side of the LP on the augmented chain (DESIGN §2.3, §2.6).

    The semi-static portfolio is ``sum_t u_t(X_t) + sum_{t<T} h_t(X_t, S_t) (X_{t+1} - X_t)``;
    ``phi_t(x, s)`` are the (untraded) value functions of the flow constraints, with
    ``phi_T = payoff``. For pairwise payoffs, ``costs[t]`` holds c_t(x, y) of shape (M, M) and
    the payoff is their sum along the path.

    Attributes
    ----------
    u : ndarray, shape (T+1, M)
        Static payoffs on the grid; NaN off the support of mu_t.
    h : list of ndarray
        ``h[t]`` has shape (M, n_t): dynamic position at (X_t, S_t) = (grid[x], states[t][s]);
        NaN where the pair is not reachable.
    phi : list of ndarray
        ``phi[t]`` of shape (M, n_t), the flow multipliers (value of the rest of the hedge).
    costs : list of ndarray or None
        Per-period costs c_t(x, y), shape (M, M), for pairwise payoffs; None otherwise.
    """

    u: np.ndarray
    h: list[np.ndarray]
    phi: list[np.ndarray]
    costs: list[np.ndarray] | None = None


@dataclass(frozen=True, eq=False)
class BoundSide:
    """One side (lower or upper) of the bounds.

    Attributes
    ----------
    value : float
        The bound (objective of the LP), NaN on failure.
    success : bool
    status : int
        HiGHS status through ``scipy.optimize.linprog`` (0 = optimal), or the maximum over the
        sub-problems of a decomposed payoff.
    message : str
    seconds : float
        Wall time of the solve(s) of this side.
    primal_residual : float
        max |A pi - b| (and the most negative pi) measured on the returned plan.
    dual_residual : float
        Largest violation of the dual constraints (reduced costs of the wrong sign).
    gap : float
        |primal objective - dual objective|.
    duals : Duals or None
    plan : list of ndarray or None
        ``plan[t]`` of shape (M, n_t, M): pi_t(x, s, y), if requested.
    info : dict
        Solver details (column-generation rounds and columns, ...).
    """

    value: float
    success: bool
    status: int
    message: str
    seconds: float
    primal_residual: float = float("nan")
    dual_residual: float = float("nan")
    gap: float = float("nan")
    duals: Duals | None = field(default=None, repr=False)
    plan: list[np.ndarray] | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class MMOTProblem:
    """What a bounds computation was asked: the marginals, the payoff, the method that ran
    and the options passed (validated by the solver that took them). Carried by the
    ``BoundsResult`` of ``bounds`` so that hedges and checks take the result alone."""

    marginals: Any
    payoff: Any
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: the payoff's name and parameters, the grid and the options that
        are plain values."""
        from deepquant.atomic import to_jsonable

        plain = {k: v for k, v in self.options.items()
                 if isinstance(v, (bool, int, float, str)) or v is None}
        return to_jsonable(dict(payoff=getattr(self.payoff, "name", str(self.payoff)),
                                params=getattr(self.payoff, "params", None),
                                n_dates=int(self.marginals.n_dates),
                                grid_size=int(self.marginals.size), method=self.method,
                                options=plain))


@dataclass(frozen=True, eq=False)
class BoundsResult:
    """Lower and upper price bounds over martingale laws with the given marginals.

    Attributes
    ----------
    lower, upper : float
        The bounds (undiscounted, in the units of the payoff on the grid).
    method : str
        ``"lp"``, ``"certified"``, ``"path-lp"`` or ``"entropic"`` (the method that ran).
    status : str
        ``"optimal"`` (LP), ``"certified"`` (certified method, both gaps within rtol),
        ``"certified-wide"`` (valid bounds, a gap above rtol), or a short description of the
        failure.
    success : bool
    message : str
    seconds : float
        Total wall seconds: the sum of ``timings``. (A dict passed here, the older form, is
        taken as ``timings``.)
    sizes : dict
        LP sizes: ``rows``, ``cols``, ``nnz`` (summed over sub-problems of a decomposed payoff).
    lower_side, upper_side : BoundSide or None
        Full per-side information (residuals, gap, duals, plan).
    eps : float or None
        Entropic regularisation (``method="entropic"``).
    exact : bool
        False when the statistic was approximated (running-sum grid with splitting).
    martingale_tol : float
        Tolerance on |E[X_{t+1} - X_t | X_t, S_t]| (0 = exact martingale; > 0: relaxed mode).
    structure : str
        ``"pairwise"`` (independent one-period LPs), ``"augmented"`` or ``"paths"``.
    info : dict
        Other diagnostics (states per date, pruned points, ...).
    timings : dict
        Wall seconds per phase, keys ``"lower"``, ``"upper"`` (and ``"build"`` for the LP).
    problem : MMOTProblem or None
        The marginals, payoff, method and options (set by ``bounds``): ``superhedge`` and
        ``verify_hedge`` then need the result alone.
    """

    lower: float
    upper: float
    method: str
    status: str
    success: bool
    message: str
    seconds: float
    sizes: dict[str, int] = field(default_factory=dict)
    lower_side: BoundSide | None = field(default=None, repr=False)
    upper_side: BoundSide | None = field(default=None, repr=False)
    eps: float | None = None
    exact: bool = True
    martingale_tol: float = 0.0
    structure: str = ""
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    problem: MMOTProblem | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.seconds, Mapping):   # per-side seconds: the breakdown, summed
            timings = {str(k): float(v) for k, v in self.seconds.items()}
            object.__setattr__(self, "timings", {**timings, **self.timings})
            object.__setattr__(self, "seconds", total_seconds(timings))
        else:
            object.__setattr__(self, "seconds", float(self.seconds))

    @property
    def width(self) -> float:
        """upper - lower."""
        return self.upper - self.lower

    @property
    def primal_residual(self) -> float:
        """Largest primal residual over both sides."""
        return _worst(self.lower_side, self.upper_side, "primal_residual")

    @property
    def gap(self) -> float:
        """Largest primal-dual gap over both sides."""
        return _worst(self.lower_side, self.upper_side, "gap")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no arrays, no sides' duals or plans, no ``info``)."""
        extra: dict[str, Any] = {}
        for name, side in (("lower", self.lower_side), ("upper", self.upper_side)):
            if side is not None:
                extra[f"{name}_primal_residual"] = side.primal_residual
                extra[f"{name}_dual_residual"] = side.dual_residual
                extra[f"{name}_gap"] = side.gap
                if "inner" in side.info:
                    extra[f"{name}_inner"] = side.info["inner"]
        if self.problem is not None:
            extra["problem"] = self.problem.to_dict()
        return result_dict(self, skip=("lower_side", "upper_side", "info", "problem"), **extra)


def _worst(a: BoundSide | None, b: BoundSide | None, name: str) -> float:
    vals = [getattr(s, name) for s in (a, b) if s is not None]
    vals = [v for v in vals if np.isfinite(v)]
    return float(max(vals)) if vals else float("nan")
