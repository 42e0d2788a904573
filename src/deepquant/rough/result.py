"""The result of one Bermudan run (``BermudanPricer.__call__``): bounds, confidence intervals,
diagnostics and the result protocol of ``deepquant.results``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from deepquant.results import result_dict

__all__ = ["BermudanResult"]


@dataclass(frozen=True)
class BermudanResult:
    """One run's bounds (discounted to t = 0, in price units).

    value : midpoint (lower + upper) / 2
    lower, upper : bound estimates; lower_stderr, upper_stderr : their standard errors over the
        pricing batches; lower_ci, upper_ci : 95% t-intervals (lower end of lower_ci, upper end
        of upper_ci bracket the price with >= 95% confidence each)
    gap : upper - lower; gap_stderr from the paired batch differences
    lower_plain, lower_plain_stderr : the lower bound without the control variate
    variance_reduction : var(plain) / var(control variate) of the batch means
    n_paths : pricing paths used; n_batches ; stop_reason : "tol", "patience", "max_batches"
    n_regression : regression paths; dual_in_sample : training value of the dual objective
        (with dual="subsim": of the least-squares signature martingale, a diagnostic only)
    dual_method : "regression" or "pathwise" (whichever was kept), or "subsim"
    exercise_at_zero : the policy exercises at t = 0
    seconds : wall time of the run; cpu_seconds : CPU time of this process (stable on a shared
        machine); timings : wall seconds per phase
    success : False only when a precision target ``tol`` > 0 was set and not reached (the
        bounds are valid either way; a ``ConvergenceWarning`` says so); status : the stop
        reason; message : one line; nit : n_batches (the result protocol, ``deepquant.results``)
    payoff : the payoff's name (``deepquant.payoffs``; truncated at each exercise date)
    model : what the bounds bracket: the Bermudan price of the DISCRETISED model (scheme and
        grid named), not its continuous-time limit (see ``deepquant.rough.extrapolate``)
    crossed : the lower estimate lies above the upper one by more than
        ``engine.crossed_threshold(n_batches)`` standard errors of their paired difference
        (``gap_stderr``; the t quantile at the one-sided level of 3 normal ones):
        more than sampling noise explains, so the bracket is not to be trusted (a
        ``RuntimeWarning`` says so; the message gives the number). A small crossing stays
        unflagged: few batches can cross two sample means.
    """

    value: float
    lower: float
    upper: float
    lower_stderr: float
    upper_stderr: float
    lower_ci: tuple[float, float]
    upper_ci: tuple[float, float]
    gap: float
    gap_stderr: float
    lower_plain: float
    lower_plain_stderr: float
    variance_reduction: float
    n_paths: int
    n_batches: int
    stop_reason: str
    n_regression: int
    dual_in_sample: float
    dual_method: str
    exercise_at_zero: bool
    strike: float
    option: str
    n_dates: int
    seconds: float
    cpu_seconds: float = float("nan")
    timings: dict = field(default_factory=dict)
    success: bool = True
    status: str = ""
    message: str = ""
    model: str = ""
    payoff: str = ""
    crossed: bool = False

    @property
    def relative_gap(self) -> float:
        return self.gap / self.value if self.value else math.inf

    @property
    def nit(self) -> int:
        return self.n_batches

    def to_dict(self) -> dict:
        """JSON-safe fields plus ``midpoint``, ``relative_gap`` and ``nit`` (NaN and infinities
        as None; ``dataclasses.asdict`` keeps them, for a state file that must round-trip)."""
        return result_dict(self, midpoint=self.value, relative_gap=self.relative_gap)

    @classmethod
    def from_dict(cls, d: dict) -> BermudanResult:
        """Inverse of ``to_dict`` or of ``dataclasses.asdict`` (derived keys ignored; CIs back to
        tuples; a float field that JSON holds as None back to NaN)."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for f in fields(cls):
            if f.type == "float" and f.name in kw and kw[f.name] is None:
                kw[f.name] = math.nan
        for k in ("lower_ci", "upper_ci"):
            kw[k] = tuple(math.nan if x is None else float(x) for x in kw[k])
        return cls(**kw)
