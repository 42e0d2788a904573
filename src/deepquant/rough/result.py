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
        ``crossed_threshold(n_batches)`` (below) standard errors of their paired difference
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


CROSSED_STDERRS = 3.0
"""Normal standard errors of the paired difference (upper - lower) by which the lower estimate
may lie above the upper one as sampling noise (both are sample means: on few batches they can
cross); on n batches the threshold is the Student-t quantile with n - 1 degrees of freedom at
the same one-sided level (P = 0.135%, ``crossed_threshold``), as the 95% half-widths use t.
Beyond it the two estimates disagree: a run is flagged ``crossed`` with a
``RuntimeWarning``, its numbers kept."""


def crossed_threshold(n_batches: int) -> float:
    """Standard errors of the paired difference beyond which a crossing of n batches is not
    sampling noise: the t quantile (n - 1 degrees of freedom) at the one-sided tail of
    ``CROSSED_STDERRS`` normal standard errors; 2 batches: 236, 4: 9.2, 32: 3.3; inf for one
    batch (no standard error)."""
    from scipy import stats

    if n_batches < 2:
        return math.inf
    return float(stats.t.ppf(stats.norm.cdf(CROSSED_STDERRS), n_batches - 1))


def crossing_stderrs(gap: float, gap_stderr: float) -> float:
    """By how many standard errors of their paired difference the lower estimate lies above
    the upper one (``gap`` = upper - lower < 0); 0 when it does not, inf with no standard
    error."""
    if not gap < 0:
        return 0.0
    return -gap / gap_stderr if gap_stderr > 0 else math.inf


def is_crossed(gap: float, gap_stderr: float, n_batches: int) -> bool:
    """Whether the lower estimate lies above the upper one by more than sampling noise
    explains: more than ``crossed_threshold(n_batches)`` standard errors of their difference."""
    return bool(crossing_stderrs(gap, gap_stderr) > crossed_threshold(n_batches))


def run_message(reason: str, n_batches: int, lower_hw: float, upper_hw: float, gap: float,
                gap_stderr: float) -> str:
    """The one-line message of a run: why it stopped, the 95% half-widths, and, when the lower
    estimate lies above the upper one, by how much in standard errors of their paired
    difference, and whether that is sampling noise (within ``crossed_threshold(n_batches)``)."""
    message = (f"stopped on {reason} after {n_batches} batches; 95% half-widths "
               f"{lower_hw:.3g} (lower), {upper_hw:.3g} (upper)")
    if gap < 0:
        sds = crossing_stderrs(gap, gap_stderr)
        limit = crossed_threshold(n_batches)
        message += f"; the lower estimate is above the upper one by {-gap:.3g} ({sds:.1f} "
        if not is_crossed(gap, gap_stderr, n_batches):
            message += (f"standard errors of their difference: sampling noise below about "
                        f"{limit:.3g} on {n_batches} batches, so run more batches or paths to "
                        "separate them)")
        else:
            message += (f"standard errors of their difference, more than the {limit:.3g} "
                        f"sampling noise explains on {n_batches} batches: one estimate is biased "
                        "(e.g. a dual fitted on too few paths), so the bracket is not to be "
                        "trusted)")
    return message
