"""The result of a calibration (``deepquant.market.calibrate``): the arbitrage-free marginals
and, per slice, how well they fit the bid-ask quotes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepquant.atomic import to_jsonable
from deepquant.market.marginals import Marginals
from deepquant.market.parity import SliceQuotes
from deepquant.market.quotes import DAYS_PER_YEAR, CleaningReport

__all__ = ["CalibrationResult", "SliceReport"]


@dataclass(frozen=True)
class SliceReport:
    """Fit of one calibrated slice to its bid–ask band (prices in forward-moneyness units).

    Attributes
    ----------
    label : str
    t : float
        Year fraction; ``days`` = 365 t.
    forward, discount : float
    n_quotes : int
        Quotes in the program.
    n_inside : int
        Quotes with model price within [bid - tol, ask + tol] (``inside_tol``).
    fraction_inside : float
    max_violation : float
        max_i max(bid_i - model_i, model_i - ask_i, 0), normalized units (divide by D F).
    max_violation_spreads : float
        The same in units of each quote's full spread, max_i violation_i / (ask_i - bid_i).
    n_window, n_inside_window, fraction_inside_window, max_violation_window :
        The same restricted to |k - 1| <= window (the acceptance window, default 40%).
    mean_spread : float
        s, the mean normalized spread (ask - bid) / (D F) of the slice's quotes.
    half_width : float
        Seed 001 Cor. 6.3: delta(s, alpha, n_quotes), moneyness units.
    half_width_price : float
        delta times D F, in currency.
    alpha : float
    """

    label: str
    t: float
    forward: float
    discount: float
    n_quotes: int
    n_inside: int
    fraction_inside: float
    max_violation: float
    max_violation_spreads: float
    n_window: int
    n_inside_window: int
    fraction_inside_window: float
    max_violation_window: float
    mean_spread: float
    half_width: float
    half_width_price: float
    alpha: float

    @property
    def days(self) -> float:
        return self.t * DAYS_PER_YEAR

    def as_dict(self) -> dict[str, float | int | str]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["days"] = self.days
        return d


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """Output of ``calibrate``: arbitrage-free marginals and how well they fit the quotes.

    Attributes
    ----------
    marginals : Marginals
        S rows on the common grid, times = the slices' year fractions; passes validation with the
        default tolerances (1e-9) including the convex-order check.
    slices : tuple of SliceReport
    quotes : tuple of SliceQuotes
        The normalized quotes that entered the program.
    model : tuple of ndarray
        Model prices at each slice's quotes, shape (Q_s,) each (normalized units).
    value : float
        Objective value at the solution.
    band_penalty, smoothness : float
        The two parts of the objective (violations in half-spreads; lam times roughness).
    success : bool
        The solver reported an optimal solution (otherwise a ``ConvergenceWarning`` was
        issued).
    status : str
        The solver's status as cvxpy reports it (``"optimal"``, ``"optimal_inaccurate"``,
        ``"infeasible"``, ...).
    message : str
    solver : str
    nit : int
        Solver iterations (-1 when the solver does not say).
    primal_residual : float
        Largest violation of the hard constraints (W >= 0, convex order, C(x_0) = 1 - x_0,
        C(x_{M-1}) = 0) by the solver's point before cleaning, in moneyness units.
    solve_time, total_time : float
        Seconds in ``Problem.solve`` (cvxpy compilation plus the solver) and overall.
    cleanup_l1 : ndarray, shape (S,)
        L1 change of each row by the post-solve cleaning (should be ~1e-9 or less).
    reg : float
        lam.
    chain_path : str
    cleaning : CleaningReport or None
        Loader counts when the result comes from ``calibrate_chain``.
    quote_checks : tuple of str
        Problems found in the quotes before the fit (``calibrate_chain``): calendar arbitrage
        between expiries, put-call parity outliers (``deepquant.market.parity``).
    seconds : float
        ``total_time`` (the result protocol, ``deepquant.results``); ``timings`` holds
        ``{"solve": solve_time}``.
    """

    marginals: Marginals
    slices: tuple[SliceReport, ...]
    quotes: tuple[SliceQuotes, ...]
    model: tuple[np.ndarray, ...]
    value: float
    band_penalty: float
    smoothness: float
    success: bool
    status: str
    message: str
    solver: str
    nit: int
    primal_residual: float
    solve_time: float
    total_time: float
    cleanup_l1: np.ndarray
    reg: float
    chain_path: str = ""
    cleaning: CleaningReport | None = None
    quote_checks: tuple[str, ...] = ()

    @property
    def fraction_inside(self) -> float:
        """Fraction of all quotes inside bid–ask."""
        return sum(r.n_inside for r in self.slices) / max(1, sum(r.n_quotes for r in self.slices))

    @property
    def fraction_inside_window(self) -> float:
        """Fraction of quotes with |k - 1| <= window inside bid–ask."""
        n = sum(r.n_window for r in self.slices)
        return sum(r.n_inside_window for r in self.slices) / max(1, n)

    @property
    def max_violation(self) -> float:
        return max(r.max_violation for r in self.slices)

    @property
    def seconds(self) -> float:
        """Total wall seconds (``total_time``)."""
        return self.total_time

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per phase: ``{"solve": solve_time}``."""
        return {"solve": self.solve_time}

    def summary(self) -> dict:
        """Same as ``to_dict``."""
        return self.to_dict()

    def to_dict(self) -> dict:
        """JSON-safe summary (the marginals' grid range and per-slice reports, no weights)."""
        return to_jsonable(dict(
            chain=self.chain_path, success=self.success, status=self.status,
            message=self.message, seconds=self.seconds, timings=self.timings,
            solver=self.solver, nit=self.nit, primal_residual=self.primal_residual,
            value=self.value, band_penalty=self.band_penalty,
            smoothness=self.smoothness, solve_time=self.solve_time, total_time=self.total_time,
            grid_size=self.marginals.size, grid=[float(self.marginals.grid[0]),
                                                  float(self.marginals.grid[-1])],
            fraction_inside=self.fraction_inside,
            fraction_inside_window=self.fraction_inside_window,
            max_violation=self.max_violation, cleanup_l1=self.cleanup_l1,
            convex_order_violation=self.marginals.check_convex_order().violation,
            slices=[r.as_dict() for r in self.slices],
            cleaning=self.cleaning.as_dict() if self.cleaning else None,
            quote_checks=list(self.quote_checks),
            parity=[dict(label=q.label, rate=q.parity.rate, rate_stderr=q.parity.rate_stderr,
                         n_pairs=q.parity.n_pairs,
                         outlier_strikes=q.parity.outlier_strikes.tolist(),
                         quote_spread=q.quote_spread)
                    for q in self.quotes if q.parity is not None],
        ))
