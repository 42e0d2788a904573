"""Result objects of the MMOT engines: the bounds (``deepquant.mmot.bounds``: ``BoundsResult``
and its sides) and the entropic solve (``deepquant.mmot.entropic``: ``EntropicResult``). The
results follow the package's result protocol (``deepquant.results``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepquant.results import result_dict, total_seconds

__all__ = ["Duals", "BoundSide", "BoundsResult", "EntropicResult", "HIGHS_STATUS", "check_sides",
           "failed_side"]

HIGHS_STATUS = {0: "optimal", 1: "iteration_limit", 2: "infeasible", 3: "unbounded",
                4: "numerical"}
"""The status codes of ``scipy.optimize.linprog`` (HiGHS) as the words of the result protocol;
any other code is ``"failed"``."""


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
    status : str
        A code of the result protocol (``deepquant.results``): for an LP, HiGHS's outcome as a
        word (``HIGHS_STATUS``: ``"optimal"``, ``"iteration_limit"``, ``"infeasible"``, ...;
        the integer in ``info["highs_status"]``; for a decomposed payoff, the code of the first
        sub-problem that failed); ``"certified"`` / ``"certified-wide"`` for a certified side
        (gap within / above its target); ``"converged"`` / ``"not_converged"`` for an entropic
        side; ``"not_requested"`` for a side that was not asked for.
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
    status: str
    message: str
    seconds: float
    primal_residual: float = float("nan")
    dual_residual: float = float("nan")
    gap: float = float("nan")
    duals: Duals | None = field(default=None, repr=False)
    plan: list[np.ndarray] | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def bound_from(self) -> str:
        """Where the bound came from when not from the method's own solve: ``"relaxation to
        dates t1, t2"`` when the relaxation to the payoff's own dates (``relaxed``) gave it,
        otherwise ``""``."""
        relaxation = self.info.get("relaxation") or {}
        if not relaxation.get("adopted"):
            return ""
        return "relaxation to dates {}, {}".format(*relaxation["dates"])


def check_sides(sides: Any) -> None:
    """ValueError naming ``sides`` unless it is a non-empty tuple (or list) of distinct
    ``"lower"`` and ``"upper"``: an empty one would return NaN bounds marked a success."""
    if isinstance(sides, str) or not isinstance(sides, tuple | list) or not sides \
            or any(s not in ("lower", "upper") for s in sides) or len(set(sides)) != len(sides):
        raise ValueError(f"sides must be a non-empty tuple of distinct 'lower' and 'upper', got "
                         f"{sides!r}")


def failed_side(highs_status: int, message: str, seconds: float) -> BoundSide:
    """The side of an LP that HiGHS did not solve: NaN value, ``success=False``, ``status`` the
    word for ``highs_status`` (``HIGHS_STATUS``), the integer in ``info["highs_status"]``."""
    code = int(highs_status)
    return BoundSide(float("nan"), False, HIGHS_STATUS.get(code, "failed"), message, seconds,
                     info={"highs_status": code})


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
        from deepquant.payoffs import Payoff, payoff_params

        plain = {k: v for k, v in self.options.items()
                 if isinstance(v, (bool, int, float, str)) or v is None}
        params = payoff_params(self.payoff) if isinstance(self.payoff, Payoff) else None
        return to_jsonable(dict(payoff=getattr(self.payoff, "name", str(self.payoff)),
                                params=params,
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
                if "inner_kind" in side.info:
                    extra[f"{name}_inner_kind"] = side.info["inner_kind"]
        if self.problem is not None:
            extra["problem"] = self.problem.to_dict()
        return result_dict(self, skip=("lower_side", "upper_side", "info", "problem"), **extra)


def _worst(a: BoundSide | None, b: BoundSide | None, name: str) -> float:
    vals = [getattr(s, name) for s in (a, b) if s is not None]
    vals = [v for v in vals if np.isfinite(v)]
    return float(max(vals)) if vals else float("nan")


@dataclass(frozen=True, eq=False)
class EntropicResult:
    """Output of ``solve_entropic`` (one-period plans of a Markov martingale chain).

    Attributes
    ----------
    u, v, h : ndarray, shape (N, M)
        Dual potentials of period t (rows: x = grid at date t, columns: y = grid at date t+1),
        gauge-fixed as described in ``deepquant.mmot.entropic``. Units of the cost
        (v = eps * phi).
    kernels : ndarray, shape (N, M, M)
        Row-stochastic transition kernels P(X_{t+1} = y | X_t = x). Rows without mass and pinned
        rows are point masses at x.
    grid : ndarray, shape (M,)
    weights : ndarray, shape (N+1, M)
        The marginals solved for.
    eps : float
        Regularisation of the last stage.
    nit : int
        Newton iterations over all eps stages (periods iterate as one batch, so this is the
        count of the slowest period; the maximum over chunks of periods, a restarted period
        counting both of its solves, a retried solve counting both tries). For
        ``method="sinkhorn"``, the number of sweeps.
    sweeps : int
        Martingale-Sinkhorn sweeps used (warm start, or all iterations of the baseline).
    marginal_error : float
        max over periods of the measured L1 errors sum|row sums - mu| + sum|column sums - nu|.
    drift : float
        max over periods and rows x with mu(x) > 0 of |E[X_{t+1} - X_t | X_t = x]|.
    marginal_errors, drifts : ndarray, shape (N,)
        The same per period.
    success : bool
        Both measured residuals of every period are at most ``tol``.
    status : str
        ``"converged"``; else ``"iteration_limit"`` (``max_iter`` reached above ``tol``) or
        ``"line_search_failed"`` (a Newton line search found no ascent: numerical breakdown);
        ``"not_converged"`` for an incremental update above ``tol``.
    message : str
    seconds : float
        Wall time of the solve.
    history : list of dict
        One entry per iteration: ``stage``, ``eps``, ``kind`` ("sinkhorn" or "newton"),
        ``marginal_error`` (column L1 error of the Gibbs plans, rows being exact by
        construction) and ``drift``, both max over the periods still iterating, and ``step``
        (the smallest line-search step of the iteration). A ``"restart"`` entry (with
        ``periods``, and the residuals of those periods) precedes the second solve of the
        periods that missed the tolerance; a ``"coarse"`` entry summarises the solve on the
        half grid of the multiscale start.
    transport_cost : float
        sum_t <c_t, pi_t> (0 without a cost): an inner estimate of the LP value.
    dual_value : float
        sum_t <u_t, mu_t> + <v_t, nu_t>; at convergence equal to ``entropic_objective``.
    entropic_objective : float
        sum_t <c_t, pi_t> + eps KL(pi_t | R_t) (for the signed cost, -c when ``maximize``), from
        the Gibbs form with the measured row sums, column sums and drifts (see ``_objectives``).
    pinned : ndarray of bool, shape (N, M)
        Rows pinned to a point mass (touching points of the call-price curves, grid-edge rows,
        rows whose reachable columns lie on one side only).
    timings : dict
        Wall seconds per phase: ``"coarse"`` (the multiscale start), ``"solve"`` (all periods
        along the eps schedule, with the measured residuals), ``"restart"`` (the periods that
        missed ``tol``, solved again); after a retry (a cold start or a finer eps schedule),
        ``"first_attempt"`` (the try it replaced) and the retry's phases.
    """

    u: np.ndarray
    v: np.ndarray
    h: np.ndarray
    kernels: np.ndarray
    grid: np.ndarray
    weights: np.ndarray
    eps: float
    nit: int
    sweeps: int
    marginal_error: float
    drift: float
    marginal_errors: np.ndarray
    drifts: np.ndarray
    success: bool
    status: str
    message: str
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    transport_cost: float = 0.0
    dual_value: float = float("nan")
    entropic_objective: float = float("nan")
    pinned: np.ndarray | None = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def plans(self) -> np.ndarray:
        """Transport plans pi_t(x, y) = mu_t(x) P(y | x), shape (N, M, M)."""
        return self.weights[:-1, :, None] * self.kernels

    @property
    def n_periods(self) -> int:
        return int(self.kernels.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: the scalars, the per-period residuals ``marginal_errors`` and
        ``drifts``, ``timings``, ``n_periods``, ``grid_size`` and ``pinned_rows`` (no
        potentials, kernels or history)."""
        pinned = int(self.pinned.sum()) if self.pinned is not None else 0
        return result_dict(self, skip=("u", "v", "h", "kernels", "grid", "weights", "history",
                                       "pinned"),
                           n_periods=self.n_periods, grid_size=int(self.grid.size),
                           pinned_rows=pinned)
