"""Prices converged in the time grid and in the exercise dates, with error estimates.

The bounds of one ``BermudanPricer`` run hold for the DISCRETISED model: rough Bergomi on the
simulation grid (hybrid scheme + log-Euler, ``steps_per_date`` steps per exercise period) with
``n_dates`` exercise dates. Two limits are estimated here by Richardson extrapolation
(Richardson 1911; for Bermudan -> American e.g. Geske & Johnson 1984, J. Finance 39(5),
and Chang, Chung & Stapleton 2007, J. Futures Markets 27(3)):

* **time grid** (``price_converged``): runs with h and h/2, error model P(h) = P + c h^p + ...;
  the extrapolation is P(h/2) + (P(h/2) - P(h)) / (2^p - 1) and the error estimate is the size
  of that correction (with three or more grids: the difference of the last two
  extrapolations). The rate p defaults to ``TIME_STEP_RATE``, the rate measured in
  ``benchmarks/rough_convergence.py steps`` (docs/benchmarks-rough.md); the rate observed on
  the given levels, log2(|P_2 - P_1| / |P_3 - P_2|), is reported when there are three.
* **exercise dates** (``price_american``): Bermudan prices with N, 2N, 4N dates on ONE
  simulation grid (the same discretised model) and first-order extrapolation (p = 1) to the
  American price; the grid error of that model is estimated by a second, coarser grid at N
  dates (or several: the difference of two extrapolations, as above) and added.

Each level is one independent run, so the statistical error of an extrapolation is the
propagated standard error of the midpoints; ``error`` is the discretisation estimate plus two
standard errors plus half the finest run's duality gap (the midpoint is not a bound), a
conservative total.

A precision target ``tol`` (relative to the price) refines the grid until the relative error
estimate and the finest relative duality gap are both below it, or says which one failed.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field, replace

import numpy as np

from deepquant.payoffs import Payoff
from deepquant.results import check_callback, check_count, result_dict, warn_failure
from deepquant.rough.coupling import price_levels
from deepquant.rough.engine import BermudanPricer, BermudanResult, check_model, exercise_payoff
from deepquant.rough.qmc import RngLike, as_seed_sequence
from deepquant.rough.rbergomi import RoughBergomi

__all__ = ["TIME_STEP_RATE", "FEATURE_STEPS", "LEVEL_FIELDS", "Extrapolation", "ConvergedResult",
           "richardson", "price_converged", "scaled_level_options", "price_american"]

TIME_STEP_RATE = 0.7
"""Weak rate in the time step used by default: the rate fitted jointly to the Bermudan
midpoints at K = 70, 100, 120 with 4..32 steps per period (and 64 at K = 100), 0.69 +- 0.13
(``benchmarks/rough_convergence.py steps``, docs/benchmarks-rough.md)."""


FEATURE_STEPS = 2
"""Feature points per exercise period used by default for the time-grid runs
(``BermudanPricer.feature_steps``): the regression features see the path twice per period
whatever the simulation grid, which makes a run with 16 steps per period cost about what one
with 8 cost with features on every step (docs/benchmarks-rough.md)."""


@dataclass(frozen=True)
class Extrapolation:
    """Richardson extrapolation of ``values`` at ``levels`` (refined by a constant ratio).

    value : the extrapolated limit; error : discretisation error estimate (>= 0); stderr : its
    statistical standard error; error_stderr : the standard error of the signed quantity
    whose size is ``error`` (the correction, or the difference of two extrapolations); rate :
    the rate used; observed_rate : from the last three levels (nan with two); levels, values,
    stderrs : the inputs; weights, error_weights : ``value`` and the signed error as linear
    combinations of ``values`` (with a covariance of the values, their variances are
    w' C w).
    """

    value: float
    error: float
    stderr: float
    rate: float
    observed_rate: float
    levels: tuple
    values: tuple
    stderrs: tuple
    error_stderr: float = math.nan
    weights: tuple = ()
    error_weights: tuple = ()


def _pair_weights(k: int, i: int, n: np.ndarray, rate: float) -> np.ndarray:
    """Weights of P(n_{i+1}) + c (P(n_{i+1}) - P(n_i)), c = 1 / ((n_{i+1}/n_i)^rate - 1)."""
    c = 1.0 / ((n[i + 1] / n[i]) ** rate - 1.0)
    w = np.zeros(k)
    w[i + 1], w[i] = 1.0 + c, -c
    return w


def richardson(levels, values, stderrs=None, *, rate: float, cov=None) -> Extrapolation:
    """Extrapolate P(N) = P + c N^(-rate) + ... from levels N_1 < N_2 < ... (ratio constant).

    ``levels``: grid sizes (steps or dates), increasing; ``values``: the estimates; ``stderrs``:
    their standard errors (independent runs); ``cov``: instead, the covariance matrix of the
    values (runs on common random numbers, ``deepquant.rough.coupling``). Two levels give the
    extrapolation of the last pair and the size of the correction as the error (the rate is
    assumed, not checked); three or more give the difference between the last two pairs'
    extrapolations (which checks the rate: it vanishes for an exact power law and is about
    three times the remaining error for rate 1 with a second-order term, tested).
    """
    n = np.asarray(levels, dtype=float)
    v = np.asarray(values, dtype=float)
    if cov is not None:
        C = np.atleast_2d(np.asarray(cov, dtype=float))
        if C.shape != (v.size, v.size) or not np.all(np.isfinite(C)):
            raise ValueError(f"cov must be a finite ({v.size}, {v.size}) matrix, got shape "
                             f"{C.shape}")
        s = np.sqrt(np.maximum(np.diag(C), 0.0))
    else:
        s = np.zeros_like(v) if stderrs is None else np.asarray(stderrs, dtype=float)
    if n.ndim != 1 or n.size < 2 or v.shape != n.shape or s.shape != n.shape:
        raise ValueError(f"levels, values and stderrs must be 1-D of equal length >= 2, got "
                         f"{n.shape}, {v.shape}, {s.shape}")
    if np.any(np.diff(n) <= 0) or n[0] <= 0:
        raise ValueError(f"levels must be positive and increasing, got {list(levels)}")
    if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(s))):
        raise ValueError(f"values and stderrs must be finite, got {list(values)}, "
                         f"{list(s)}")
    if np.any(s < 0):
        raise ValueError(f"stderrs must be >= 0, got {list(stderrs)}")
    if cov is None:
        C = np.diag(s**2)
    k = n.size
    w = _pair_weights(k, k - 2, n, rate)
    u = w.copy()
    u[k - 1] -= 1.0                       # the correction c (P_k - P_{k-1})
    observed = math.nan
    if k >= 3:
        u = w - _pair_weights(k, k - 3, n, rate)   # difference of the last two extrapolations
        d1, d2 = abs(v[-2] - v[-3]), abs(v[-1] - v[-2])
        if d1 > 0 and d2 > 0:
            observed = math.log(d1 / d2) / math.log(n[-1] / n[-2])
    value, signed = float(w @ v), float(u @ v)
    return Extrapolation(value=value, error=abs(signed),
                         stderr=math.sqrt(max(float(w @ C @ w), 0.0)),
                         rate=float(rate), observed_rate=float(observed),
                         levels=tuple(float(x) for x in n), values=tuple(float(x) for x in v),
                         stderrs=tuple(float(x) for x in s),
                         error_stderr=math.sqrt(max(float(u @ C @ u), 0.0)),
                         weights=tuple(float(x) for x in w),
                         error_weights=tuple(float(x) for x in u))


@dataclass(frozen=True)
class ConvergedResult:
    """An extrapolated price with its error budget (see the module docstring).

    value : the extrapolated midpoint; lower, upper : the extrapolated lower and upper bounds
        (estimates of the limit's bracket, no longer guaranteed bounds)
    discretisation_error : the Richardson error estimate (time grid and, for American prices,
        exercise dates, added); stderr : statistical standard error of ``value``
    gap : duality gap of the finest run (upper - lower); error : discretisation_error +
        2 stderr + gap / 2, the total error estimate of ``value``
    model : what ``value`` estimates; runs : the ``BermudanResult`` of each level
    time_grid, dates : the ``Extrapolation`` objects (None where not used)
    discretisation_stderr : standard error of the signed quantity behind
        ``discretisation_error`` (small when the levels share their random numbers)
    coupled : the levels ran on common random numbers (``deepquant.rough.coupling``)
    share_fit : every grid used the finest grid's fit (``coupling.price_levels``)
    cpu_seconds : process time of all levels
    midpoint_cov : covariance of the runs' midpoints, in the order of ``runs`` (rows of a
        tuple; paired across coupled runs, diagonal otherwise): the standard error of any
        combination w of the midpoints is sqrt(w' C w)
    success : the precision target (if any) was met and no run's bracket is invalid (else a
        ``ConvergenceWarning``); status : "converged", "tol_not_met", "no_target", or
        "crossed" when a run is ``crossed`` (``BermudanResult``); message : one line (which
        target failed and why, or which runs crossed and the first one's message)
    """

    value: float
    lower: float
    upper: float
    discretisation_error: float
    stderr: float
    gap: float
    error: float
    model: str
    success: bool
    status: str
    message: str
    seconds: float
    time_grid: Extrapolation | None = None
    dates: Extrapolation | None = None
    runs: list = field(default_factory=list)
    discretisation_stderr: float = math.nan
    coupled: bool = False
    cpu_seconds: float = math.nan
    share_fit: bool = False
    midpoint_cov: tuple = ()

    @property
    def relative_error(self) -> float:
        return self.error / abs(self.value) if self.value else math.inf

    def to_dict(self) -> dict:
        """JSON-safe fields plus ``relative_error``; the runs through their ``to_dict``."""
        return result_dict(self, relative_error=self.relative_error)


def _midpoint_se(r: BermudanResult) -> float:
    return 0.5 * math.hypot(r.lower_stderr, r.upper_stderr)


def _rows(C: np.ndarray) -> tuple:
    return tuple(tuple(float(x) for x in row) for row in np.asarray(C))


def _check(model, pricer, tol, rate, callback=None):
    check_model(model)
    check_callback(callback, "callback")
    if not isinstance(pricer, BermudanPricer):
        raise ValueError(f"pricer must be a BermudanPricer, got {pricer!r}")
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0 (relative to the price), got "
                         f"{tol!r}")
    if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0, got {rate!r}")


def _doubling(levels, name: str) -> list[int]:
    """At least two positive integers, each twice the previous (Richardson with ratio 2)."""
    try:
        out = [int(x) for x in levels]
        whole = all(x == o for x, o in zip(levels, out, strict=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be integers, got {levels!r}") from exc
    if not whole:           # int() truncated: 1.5 read as 1
        raise ValueError(f"{name} must be integers, got {list(levels)!r}")
    if len(out) < 2 or out[0] < 1 or any(b != 2 * a for a, b in zip(out, out[1:],
                                                                    strict=False)):
        raise ValueError(f"{name} must be >= 2 positive integers, each twice the previous, "
                         f"got {out}")
    return out


def _verdict(value, gap, disc, tol, extra=""):
    if tol <= 0:
        return True, "no_target", "no precision target (tol = 0)" + extra
    rel_gap, rel_disc = gap / abs(value), disc / abs(value)
    failed = []
    if rel_gap > tol:
        failed.append(f"duality gap {100 * rel_gap:.2f}% > tol {100 * tol:.2f}% (more "
                      "regression paths or inner paths narrow it)")
    if rel_disc > tol:
        failed.append(f"discretisation error estimate {100 * rel_disc:.2f}% > tol "
                      f"{100 * tol:.2f}% (a finer grid is needed)")
    if failed:
        return False, "tol_not_met", "; ".join(failed) + extra
    return True, "converged", (f"gap {100 * rel_gap:.2f}% and discretisation error "
                               f"{100 * rel_disc:.2f}% within tol {100 * tol:.2f}%" + extra)


def _with_crossed(runs, verdict):
    """``verdict`` (ok, status, message), failed with status "crossed" when a run's bracket is
    invalid (``BermudanResult.crossed``): an extrapolation of it is no price either."""
    bad = [i for i, r in enumerate(runs) if r.crossed]
    if not bad:
        return verdict
    return False, "crossed", (f"{len(bad)} of {len(runs)} runs have an invalid bracket (runs "
                              f"{bad}); the first: {runs[bad[0]].message}; {verdict[2]}")


def _run_levels(model, payoff, pricers: list, coupled: bool, root, callback,
                share_fit: bool = False):
    """Runs of ``pricers`` and the covariances of their midpoints, lower and upper bounds:
    coupled (one ``price_levels`` call, ``share_fit`` passed on) or independent (one seed
    each, diagonal)."""
    if share_fit and not coupled:
        raise ValueError("share_fit needs coupled grids (coupled=True)")
    if coupled:
        (seed,) = root.spawn(1)
        cr = price_levels(model, payoff, pricers, rng=seed, callback=callback,
                          share_fit=share_fit)
        return cr.runs, {w: cr.covariance(w) for w in ("midpoint", "lower", "upper")}
    runs = []
    for p in pricers:
        (seed,) = root.spawn(1)
        res = p(model, payoff, rng=seed)
        runs.append(res)
        if callback:
            callback(res)
    cov = {"midpoint": np.diag([_midpoint_se(r) ** 2 for r in runs]),
           "lower": np.diag([r.lower_stderr ** 2 for r in runs]),
           "upper": np.diag([r.upper_stderr ** 2 for r in runs])}
    return runs, cov


def price_converged(model: RoughBergomi, payoff: Payoff | float, *, option: str = "put",
                    pricer: BermudanPricer | None = None, steps=(8, 16),
                    rate: float = TIME_STEP_RATE, tol: float = 0.0,
                    max_steps_per_date: int = 32, coupled: bool = True,
                    share_fit: bool = False, rng: RngLike = None,
                    callback=None) -> ConvergedResult:
    """Bermudan price extrapolated in the time step (see the module docstring).

    ``steps``: steps per exercise period of the runs, each twice the previous (>= 2 entries;
    default 8 and 16); ``pricer``: the other settings (default
    ``BermudanPricer(feature_steps=FEATURE_STEPS)``; its ``steps_per_date`` is replaced).
    ``coupled`` (default): the grids share their Brownian paths and pricing batches
    (``deepquant.rough.coupling.price_levels``), so the difference of the grids' prices, and
    with it the error estimate and the extrapolated value, has a much smaller standard error
    (taken from the paired batches); False: independent runs. With ``tol`` > 0 (relative),
    further grids (doubling, up to ``max_steps_per_date``) are added until the
    discretisation error estimate is <= tol x price (coupled: the levels are rerun together
    with the new grid); the finest run's duality gap must be <= tol x price too.
    ``share_fit`` (coupled only): every grid uses the finest grid's policy, martingales and
    value function (``coupling.price_levels``); each bracket still holds for its own grid,
    the grids' difference is then that of one stopping rule, and the coarse fits are saved.
    ``callback(result)`` after each run.
    """
    pricer = pricer or BermudanPricer(feature_steps=FEATURE_STEPS)
    _check(model, pricer, tol, rate, callback)
    steps = _doubling(steps, "steps")
    # NaN or inf would never stop the doubling below while tol is not met
    check_count(max_steps_per_date, "max_steps_per_date")
    payoff = exercise_payoff(payoff, option)
    t0 = time.perf_counter()
    c0 = time.process_time()
    root = as_seed_sequence(rng)
    runs, cov = _run_levels(model, payoff, [replace(pricer, steps_per_date=s) for s in steps],
                            coupled, root, callback, share_fit)
    while True:
        levels = [r.n_dates * s for r, s in zip(runs, steps, strict=True)]
        ex = richardson(levels, [r.value for r in runs], rate=rate, cov=cov["midpoint"])
        if tol <= 0 or ex.error <= tol * abs(ex.value) or 2 * steps[-1] > max_steps_per_date:
            break
        steps.append(2 * steps[-1])
        if coupled:
            runs, cov = _run_levels(model, payoff,
                                    [replace(pricer, steps_per_date=s) for s in steps],
                                    True, root, callback, share_fit)
        else:
            more, c = _run_levels(model, payoff, [replace(pricer, steps_per_date=steps[-1])],
                                  False, root, callback)
            runs += more
            cov = {k: np.diag(np.append(np.diag(cov[k]), np.diag(c[k]))) for k in cov}
    lo = richardson(ex.levels, [r.lower for r in runs], rate=rate, cov=cov["lower"]).value
    up = richardson(ex.levels, [r.upper for r in runs], rate=rate, cov=cov["upper"]).value
    fine = runs[-1]
    disc = ex.error
    extra = "" if tol <= 0 or ex.error <= tol * abs(ex.value) else (
        f" (stopped at max_steps_per_date={max_steps_per_date})")
    ok, status, message = _with_crossed(runs, _verdict(ex.value, fine.gap, disc, tol, extra))
    shared = "; the finest grid's fit (policy, martingales) on every grid" if share_fit else ""
    model_text = (f"the Bermudan price of the continuous-time model ({fine.n_dates} exercise "
                  f"dates), extrapolated (rate {rate:g}) from the discretised models with "
                  f"{', '.join(str(s) for s in steps)} steps per period"
                  f"{' (coupled: one Brownian path per sample)' if coupled else ''}"
                  f"{shared}; each "
                  f"run's bracket holds for its discretised model: {fine.model}")
    out = ConvergedResult(value=ex.value, lower=lo, upper=up, discretisation_error=disc,
                          stderr=ex.stderr, gap=fine.gap,
                          error=disc + 2.0 * ex.stderr + 0.5 * fine.gap, model=model_text,
                          success=ok, status=status, message=message,
                          seconds=time.perf_counter() - t0, time_grid=ex, runs=runs,
                          discretisation_stderr=ex.error_stderr, coupled=coupled,
                          cpu_seconds=time.process_time() - c0, share_fit=share_fit,
                          midpoint_cov=_rows(cov["midpoint"]))
    warn_failure(out, "price_converged")
    return out


LEVEL_FIELDS = ("n_regression", "subsim_inner", "subsim_outer", "dual")
"""``BermudanPricer`` fields that ``price_american(level_options=...)`` may set per level (the
batch sizes and stopping rule are shared by the coupled runs)."""


def scaled_level_options(pricer: BermudanPricer, dates) -> dict:
    """The default per-level budgets of ``price_american`` (``level_options="scaled"``): twice
    ``pricer``'s regression paths for every run after ``dates[0]``, and twice its
    sub-simulation inner paths for the finest. The bracket widens with the dates (48
    regressions on the same paths, inner noise biasing max_j (Z_j - M_j) upwards on more
    dates); measured at K = 70 (docs/benchmarks-rough.md): total error 11.9% -> 4.9% for
    157 -> 194 CPU s."""
    out = {int(nd): {"n_regression": 2 * pricer.n_regression} for nd in dates[1:]}
    out[int(dates[-1])]["subsim_inner"] = 2 * pricer.subsim_inner
    return out


def _level_options(options, pricer: BermudanPricer, dates: list[int]) -> dict:
    """``level_options`` checked: "scaled", None, or a dict with keys among ``dates`` and
    values dicts of ``LEVEL_FIELDS``."""
    if options is None:
        return {}
    if isinstance(options, str) and options == "scaled":
        return scaled_level_options(pricer, dates)
    if not isinstance(options, dict):
        raise ValueError(f"level_options must be 'scaled', a dict {{n_dates: {{field: value}}}} "
                         f"or None, got {options!r}")
    for nd, fields in options.items():
        if isinstance(nd, bool) or nd not in dates:
            raise ValueError(f"level_options keys must be numbers of dates among {dates}, "
                             f"got {nd!r}")
        if not isinstance(fields, dict) or not set(fields) <= set(LEVEL_FIELDS):
            raise ValueError(f"level_options[{nd}] must be a dict with keys among "
                             f"{LEVEL_FIELDS}, got {fields!r}")
        try:   # the pricer's own checks, before any run, under the argument's name
            replace(pricer, **fields)
        except ValueError as exc:
            raise ValueError(f"level_options[{nd}]: {exc}") from None
    return {int(nd): dict(f) for nd, f in options.items()}


def _coarse_grids(coarse_total_steps, total_steps: int, n_dates: int) -> list[int]:
    """``coarse_total_steps`` checked, as a list of total steps increasing: None -> [], an
    integer -> [it], a sequence as given; the list followed by ``total_steps`` must double at
    each step, and every entry must be a multiple of ``n_dates``."""
    if coarse_total_steps is None:
        return []
    items = (coarse_total_steps if isinstance(coarse_total_steps, list | tuple)
             else [coarse_total_steps])
    chain = [*items, total_steps]
    if not items or not all(isinstance(n, int | np.integer) and not isinstance(n, bool)
                            for n in items) \
            or any(b != 2 * a for a, b in zip(chain, chain[1:], strict=False)) \
            or any(n % n_dates for n in items):
        raise ValueError(f"coarse_total_steps must be total_steps / 2 = {total_steps / 2:g} "
                         f"(or a list of grids, each half the next, ending there), each a "
                         f"multiple of {n_dates}, or None; got {coarse_total_steps!r}")
    return [int(n) for n in items]


def price_american(model: RoughBergomi, payoff: Payoff | float, *, option: str = "put",
                   pricer: BermudanPricer | None = None, dates=(12, 24, 48),
                   total_steps: int = 96, coarse_total_steps: int | tuple | None = 48,
                   rate: float = TIME_STEP_RATE, tol: float = 0.0, coupled: bool = True,
                   share_fit: bool = False, level_options: dict | str | None = "scaled",
                   rng: RngLike = None, callback=None) -> ConvergedResult:
    """American price: Bermudan runs with ``dates`` exercise dates (each twice the previous) on
    one grid of ``total_steps`` steps, extrapolated with rate 1 in the number of dates; with
    ``coarse_total_steps`` (half of ``total_steps``) one more run at ``dates[0]`` dates on the
    coarse grid estimates the time-grid error (rate ``rate``), which is added to the value and
    to the error; a list of coarser grids (each half the next, e.g. ``(48, 96)`` with
    ``total_steps=192``) gives a three-grid extrapolation at ``dates[0]``, whose error is the
    difference of the last two extrapolations (``richardson``) and whose ``observed_rate``
    checks ``rate``. ``coupled`` (default): all runs share their paths (the coarse grid's by
    coarsening, ``deepquant.rough.coupling``), and every standard error comes from the paired
    batches. ``share_fit`` (coupled only): the coarse grid's run uses the fit of the fine
    grid's run with the same dates (``coupling.price_levels``). ``tol``: relative target,
    checked (not iterated: each level is a full run). ``level_options``: per number of dates
    (a key of ``dates``), fields of ``pricer`` replaced for that run (``LEVEL_FIELDS``: path
    budgets and the dual), e.g. ``{48: {"n_regression": 2**16, "subsim_inner": 512}}``; the
    coarse-grid run takes those of ``dates[0]``; "scaled" (default): ``scaled_level_options``
    (more paths for the runs with more dates); None: ``pricer`` on every run. Every run's bracket still holds for its
    discretised model (the fields change only the fit and the inner sample).
    """
    pricer = pricer or BermudanPricer()
    _check(model, pricer, tol, rate, callback)
    dates = _doubling(dates, "dates")
    level_options = _level_options(level_options, pricer, dates)
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) \
            or total_steps < 1 or total_steps % dates[-1]:   # numpy integers are integers
        raise ValueError(f"total_steps must be a multiple of the largest number of dates "
                         f"{dates[-1]} (an integer >= 1), got {total_steps!r}")
    total_steps = int(total_steps)
    coarse = _coarse_grids(coarse_total_steps, total_steps, dates[0])
    payoff = exercise_payoff(payoff, option)
    t0 = time.perf_counter()
    c0 = time.process_time()
    root = as_seed_sequence(rng)
    pricers = [replace(pricer, n_dates=nd, steps_per_date=total_steps // nd,
                       **level_options.get(nd, {})) for nd in dates]
    pricers += [replace(pricer, n_dates=dates[0], steps_per_date=n // dates[0],
                        **level_options.get(dates[0], {})) for n in coarse]
    runs, cov = _run_levels(model, payoff, pricers, coupled, root, callback, share_fit)
    nd_ = len(dates)
    C = cov["midpoint"]
    mids = np.array([r.value for r in runs])
    ex = richardson(dates, mids[:nd_], rate=1.0, cov=C[:nd_, :nd_])
    lo = richardson(dates, [r.lower for r in runs[:nd_]], rate=1.0,
                    cov=cov["lower"][:nd_, :nd_]).value
    up = richardson(dates, [r.upper for r in runs[:nd_]], rate=1.0,
                    cov=cov["upper"][:nd_, :nd_]).value
    weights = np.zeros(len(runs))
    weights[:nd_] = ex.weights
    disc, disc_se = ex.error, ex.error_stderr
    grid = None
    if coarse:
        idx = [*range(nd_, nd_ + len(coarse)), 0]    # coarse grids, then the fine (dates[0])
        grid = richardson([*coarse, total_steps], mids[idx], rate=rate,
                          cov=C[np.ix_(idx, idx)])
        shift = grid.value - runs[0].value
        weights[idx] += grid.weights
        weights[0] -= 1.0
        lo, up = lo + shift, up + shift
        disc = disc + grid.error
        disc_se = math.hypot(disc_se, grid.error_stderr)
    value = float(weights @ mids)
    se = math.sqrt(max(float(weights @ C @ weights), 0.0))
    finest = runs[nd_ - 1]
    ok, status, message = _with_crossed(runs, _verdict(value, finest.gap, disc, tol))
    model_text = (f"the American price of the continuous-time model, extrapolated in the "
                  f"number of exercise dates ({', '.join(map(str, dates))}, rate 1) on "
                  f"{total_steps} steps" + (f" plus the time-grid correction from "
                                            f"{', '.join(map(str, coarse))} steps "
                                            f"(rate {rate:g})"
                                            if grid else " (exact scheme, no time-grid error)"
                                            if model.is_black_scholes else
                                            " (time-grid error not included)")
                  + ("; coupled runs (one Brownian path per sample)" if coupled else "")
                  + ("; the coarse grid uses the fine grid's fit" if share_fit else ""))
    out = ConvergedResult(value=value, lower=lo, upper=up, discretisation_error=disc,
                          stderr=se, gap=finest.gap, error=disc + 2.0 * se + 0.5 * finest.gap,
                          model=model_text, success=ok, status=status, message=message,
                          seconds=time.perf_counter() - t0, time_grid=grid, dates=ex,
                          runs=runs, discretisation_stderr=disc_se, coupled=coupled,
                          cpu_seconds=time.process_time() - c0, share_fit=share_fit,
                          midpoint_cov=_rows(C))
    warn_failure(out, "price_american")
    return out
