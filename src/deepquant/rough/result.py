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
    control_variate : whether ``lower`` uses the control variate (the least-squares
        martingale at the stopping time, mean 0): False when it was switched off or raised the
        variance of the batch means (``variance_reduction`` < 1), and then ``lower`` is
        ``lower_plain`` and ``gap`` its paired difference with ``upper``
    n_paths : pricing paths used; n_batches ; stop_reason : "tol", "patience", "max_batches"
    n_regression : regression paths; dual_in_sample : training value of the dual objective
        (with dual="subsim": of the least-squares signature martingale, a diagnostic only)
    dual_method : "regression" or "pathwise" (whichever was kept), or "subsim"
    exercise_at_zero : the policy exercises at t = 0
    seconds : wall time of the run; cpu_seconds : CPU time of this process (stable on a shared
        machine); timings : wall seconds per phase
    success : False when a precision target ``tol`` > 0 was set and not reached (the bounds
        are valid either way; a ``ConvergenceWarning`` says so), or when the bracket is
        invalid (``crossed``); status : the stop reason, or "crossed"; message : one line,
        starting with the crossing and its size when ``crossed``; nit : n_batches (the result
        protocol, ``deepquant.results``)
    payoff : the payoff's name (``deepquant.payoffs``; truncated at each exercise date)
    model : what the bounds bracket: the Bermudan price of the DISCRETISED model (scheme and
        grid named), not its continuous-time limit (see ``deepquant.rough.extrapolate``)
    gap_path_stderr, upper_path_stderr : standard errors of ``gap`` and ``upper`` from the
        spread of the paths within the batches (``qmc.variance_of_mean``: antithetic pairs as
        units, n_paths / 2 - n_batches degrees of freedom; with dual="subsim", whose upper
        estimate sees a subset of the paths, the gap's from the two variances as if
        independent), a second error estimate next to the batch ones (n_batches - 1)
    price_floor : a known lower bound of the price that no upper bound can lie below
        (``exercise.price_floor``): the exercise value at t = 0 (when exercisable there) and,
        in the Black-Scholes limit of a put or call (exact scheme), the largest European price
        to an exercise date, whichever is larger; NaN if none
    crossed : the bracket is invalid: the upper estimate lies below a lower bound of the price
        -- the run's lower estimate or ``price_floor`` -- by more than sampling noise explains
        (``beyond_noise``): more than ``crossed_threshold(n_batches)`` batch standard errors
        (of the paired difference ``gap_stderr``, or of the upper estimate ``upper_stderr``
        against the floor; the t quantile at the one-sided level of ``CROSSED_STDERRS`` normal
        ones) or more than ``PATH_CROSSED_STDERRS`` path-level ones (``gap_path_stderr``,
        ``upper_path_stderr``). Then ``success`` is False, ``status`` "crossed", the message
        says which bound is crossed and by how much, a ``RuntimeWarning`` repeats it, and the
        numbers are kept for diagnosis (``value`` is then no price estimate). A crossing within
        sampling noise (both bounds are Monte Carlo estimates: few batches can cross two
        sample means) leaves ``success`` as it is and is only described in the message.
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
    gap_path_stderr: float = math.nan
    upper_path_stderr: float = math.nan
    price_floor: float = math.nan
    control_variate: bool = True

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
"""Normal standard errors by which an upper estimate may lie below a lower bound of the price
(the run's lower estimate, or ``price_floor``) as sampling noise (both are sample means: on few
batches they can cross). Against the batch standard errors (n_batches - 1 degrees of freedom)
the threshold is the Student-t quantile at the same one-sided level (P = 0.135%,
``crossed_threshold``), as the 95% half-widths use t; against the path-level ones it is
``PATH_CROSSED_STDERRS``. Beyond either, the run is flagged ``crossed``."""

PATH_CROSSED_STDERRS = 4.0
"""The same limit against the path-level standard errors (``qmc.variance_of_mean``: hundreds
of degrees of freedom, so no t correction; on 2 batches the batch test alone lets a crossing
of 235 standard errors pass). They treat a scrambled Sobol batch as independent points, which
it is not: the batch-to-batch standard errors were measured at 0.76-1.32 times them (21 runs:
Black-Scholes and rough Bergomi, strikes 80-120, both duals), so 4 of them are at least
3 / 1.32 ~ 3 batch-spread ones."""

ROUNDING = 1e-9
"""Relative rounding allowed in a crossing (of the price level): an upper estimate whose every
path equals the exercise value at t = 0, or the lower estimate, averages to it up to rounding,
with no standard error."""


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
    """By how many standard errors ``gap_stderr`` the lower estimate lies above the upper one
    (``gap`` = upper - lower < 0); 0 when it does not, inf with a zero standard error, NaN
    with an unknown (NaN) one."""
    if not gap < 0:
        return 0.0
    if math.isnan(gap_stderr):
        return math.nan
    return -gap / gap_stderr if gap_stderr > 0 else math.inf


def beyond_noise(excess: float, stderr: float, n_batches: int,
                 path_stderr: float = math.nan, *, level: float = 1.0) -> bool:
    """Whether an upper estimate that lies ``excess`` > 0 below a lower bound of the price does
    so by more than sampling noise explains: more than ``crossed_threshold(n_batches)`` batch
    standard errors ``stderr``, or more than ``PATH_CROSSED_STDERRS`` path-level ones
    ``path_stderr`` (NaN: not known, that test is skipped). A zero standard error makes any
    excess beyond rounding (``ROUNDING`` x max(1, |level|), ``level`` the price level)
    significant (with two batches or more)."""
    if not excess > ROUNDING * max(1.0, abs(level)):
        return False
    if crossing_stderrs(-excess, stderr) > crossed_threshold(n_batches):
        return True
    return bool(crossing_stderrs(-excess, path_stderr) > PATH_CROSSED_STDERRS)


def is_crossed(gap: float, gap_stderr: float, n_batches: int,
               gap_path_stderr: float = math.nan, *, level: float = 1.0) -> bool:
    """Whether the lower estimate lies above the upper one by more than sampling noise
    explains (``beyond_noise`` of -gap with the paired standard errors)."""
    return beyond_noise(-gap, gap_stderr, n_batches, gap_path_stderr, level=level)


def _why(excess: float, stderr: float, path_stderr: float, n_batches: int) -> str:
    """'(k standard errors ..., more than the noise ...)' for an excess ``beyond_noise``."""
    sds, psd = crossing_stderrs(-excess, stderr), crossing_stderrs(-excess, path_stderr)
    limit = crossed_threshold(n_batches)
    if sds > limit:
        return (f"{sds:.3g} standard errors, more than the {limit:.3g} sampling noise explains "
                f"on {n_batches} batches")
    return (f"{sds:.3g} standard errors over {n_batches} batches, within their {limit:.3g}, but "
            f"{psd:.3g} path-level ones, more than the {PATH_CROSSED_STDERRS:g} sampling noise "
            "explains")


def bracket_failures(*, lower: float, upper: float, gap: float, gap_stderr: float,
                     upper_stderr: float, n_batches: int, gap_path_stderr: float = math.nan,
                     upper_path_stderr: float = math.nan, price_floor: float = math.nan,
                     floor_name: str = "the price floor") -> list[str]:
    """Why the bracket [lower, upper] is invalid, one clause per crossed bound (empty: valid):
    the upper estimate below the lower one (``is_crossed``, paired standard errors), or below
    ``price_floor`` (named ``floor_name``; the upper estimate's standard errors), by more than
    sampling noise explains (``beyond_noise``, rounding of the price level allowed); each
    clause gives the size in price units and in standard errors."""
    out = []
    if is_crossed(gap, gap_stderr, n_batches, gap_path_stderr, level=lower):
        out.append(f"the lower estimate {lower:.6g} is above the upper one {upper:.6g} by "
                   f"{-gap:.3g} ({_why(-gap, gap_stderr, gap_path_stderr, n_batches)}): one "
                   "estimate is biased (e.g. a dual fitted on too few paths or a heavy-tailed "
                   "upper estimator)")
    excess = price_floor - upper
    if beyond_noise(excess, upper_stderr, n_batches, upper_path_stderr, level=price_floor):
        out.append(f"the upper estimate {upper:.6g} is below {floor_name} {price_floor:.6g} by "
                   f"{excess:.3g} ({_why(excess, upper_stderr, upper_path_stderr, n_batches)}),"
                   " which no upper bound of the price can be")
    return out


def run_message(reason: str, n_batches: int, lower_hw: float, upper_hw: float, gap: float,
                gap_stderr: float, gap_path_stderr: float = math.nan, *,
                level: float = 1.0) -> str:
    """The one-line message of a run: why it stopped, the 95% half-widths, and, when the lower
    estimate lies above the upper one within sampling noise (not ``is_crossed``), by how much
    in standard errors of their paired difference (a crossing beyond it is a clause of
    ``bracket_failures``, which the engine puts first; ``level``: the price level, for the
    rounding allowance of ``beyond_noise``)."""
    message = (f"stopped on {reason} after {n_batches} batches; 95% half-widths "
               f"{lower_hw:.3g} (lower), {upper_hw:.3g} (upper)")
    if gap < 0 and not is_crossed(gap, gap_stderr, n_batches, gap_path_stderr, level=level):
        sds = crossing_stderrs(gap, gap_stderr)
        psd = crossing_stderrs(gap, gap_path_stderr)
        path = ("" if math.isnan(psd) else
                f", {psd:.1f} path-level ones (noise below {PATH_CROSSED_STDERRS:g})")
        message += (f"; the lower estimate is above the upper one by {-gap:.3g} ({sds:.1f} "
                    f"standard errors of their difference: sampling noise below about "
                    f"{crossed_threshold(n_batches):.3g} on {n_batches} batches{path}, so run "
                    "more batches or paths to separate them)")
    return message
