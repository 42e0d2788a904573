"""Bermudan pricing engine under rough Bergomi (and Heston): lower and upper bounds with
confidence intervals for one run (DESIGN §4, seed 004 §3–4).

One run (``BermudanPricer.__call__``), with independent random streams spawned from ``rng``:

1. **Regression paths** (n_regression, one scramble): fit the Longstaff–Schwartz policy
   (``lsm.fit_lsm``) and the dual martingale. The martingale is first fitted by least squares
   (``dual.least_squares_martingale``: for each interval j, regress the policy's discounted cash flow from t_{j+1} on the
   F_{t_j}-measurable exercise basis and the interval's martingale increments B_j; the
   coefficients of B_j approximate the increment of the policy's value process, as in the
   Andersen–Broadie martingale but without nested simulation); with ``dual_fit="pathwise"``
   (default) it is then refined by minimising the smoothed sample mean of max_j (Z_j - M_j)
   from that start (``dual.fit_dual``, ridge ``dual_ridge`` towards the start), and the
   refinement is kept only if it lowers that mean on independent validation paths by more than
   two standard errors and has the mean 0 of a martingale there (``dual.MARTINGALE_MEAN_STDERRS``).
2. **Pricing batches** (batch_size each, an independent scramble per batch) until the adaptive
   rule of ``qmc.adaptive_mean`` stops: per batch, the lower bound is the mean of Z_tau over the
   policy's stopping times tau, computed as mean(Z_tau - M_tau) with the least-squares
   martingale as a control variate (``control_variate=True``; E[M_tau] = 0 by optional stopping, so the
   estimator stays unbiased for E[Z_tau] <= V_0); the upper bound is the mean of
   max_j (Z_j - M_j) >= V_0. The plain estimator mean(Z_tau) is reported too.
3. **Verdict**: the bracket is invalid (``crossed``, success=False, status "crossed") when the
   upper estimate lies below the lower one or below ``exercise.price_floor`` by more than
   sampling noise explains (``result.bracket_failures``).

With ``dual="subsim"`` the upper bound comes instead from the Doob martingale of the
regression value function max(Z_j, C_j), with its one-period conditional means estimated by
``subsim_inner`` inner paths per outer path and period (``deepquant.rough.subsim``); it is
evaluated on the first ``subsim_outer`` paths of each pricing batch (a balanced subset: the
first Sobol points and their antithetic partners). The least-squares signature martingale is
still fitted (control variate of the lower bound); the pathwise refinement is skipped.

Payoffs (``deepquant.rough.exercise``): exercising at t_j pays the payoff of
``deepquant.payoffs`` truncated at t_j, on the payoff grid of ``payoff_dates`` + 1 dates i T / N
(default: the exercise dates): g(S_{t_j}) for a put or call (``EuropeanPut`` / ``EuropeanCall``
with ``date=None``, or a strike with ``option``), the running average of the payoff dates so far
for an Asian, the running max / min for a lookback, the barrier flag so far for a barrier
option. The payoff's statistic is part of the regression features, of the signature
martingale's integrand and of the sub-simulation dual's inner paths (which continue it from
the outer path), so both bounds hold for path-dependent payoffs too. Forward starts and the sum
of squared increments are rejected with a ``ValueError`` naming them and why.

The bounds are valid for the DISCRETISED model (the simulation grid with ``steps_per_date``
steps between exercise dates); the grid bias of the hybrid scheme is not part of the intervals.

Ensembles of runs: ``deepquant.rough.ensemble``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import NamedTuple

import numpy as np

from deepquant.payoffs import Payoff
from deepquant.results import check_count, warn_failure
from deepquant.rough.dual import (
    MARTINGALE_MEAN_STDERRS,
    DualMartingale,
    MartingaleBasis,
    fit_dual,
    least_squares_martingale,
    martingale_increments,
    martingale_mean_stderrs,
)
from deepquant.rough.exercise import (
    check_payoff_dates,
    exercise_payoff,
    option_name,
    payoff_label,
    price_floor,
)
from deepquant.rough.heston import Heston
from deepquant.rough.lsm import (
    ExerciseBasis,
    LSMPolicy,
    exercise_features,
    exercise_values,
    fit_lsm,
)
from deepquant.rough.qmc import (
    SOBOL_MAX_DIM,
    RngLike,
    adaptive_mean,
    as_seed_sequence,
    variance_of_mean,
)
from deepquant.rough.rbergomi import RoughBergomi, RoughPaths, torch_device
from deepquant.rough.result import BermudanResult, bracket_failures, run_message
from deepquant.rough.subsim import ValueFunction, fit_value_function, subsim_pathwise

__all__ = [
    "BermudanPricer",
    "BermudanResult",
    "exercise_payoff",
    "lower_columns",
]


_SQRT_MAX = math.sqrt(np.finfo(np.float64).max)
"""Largest regression feature whose square is finite (about 1.3e154)."""

BATCH_COLUMNS = 8
"""Columns of a pricing batch's estimates (``BermudanPricer._batch_estimates``): lower, upper,
plain lower, gap (upper - lower), the path-level variances of the batch means of the gap and of
the upper estimate, then the gap to the plain lower and its path-level variance."""


def lower_columns(control_variate: bool) -> tuple[int, int]:
    """(the lower estimate's column, the gap's column) of ``BATCH_COLUMNS`` for a run whose
    lower bound uses the control variate or not (the gap's path-level variance is the column
    after the gap's)."""
    return (0, 3) if control_variate else (2, 6)


def monitored_half_width(h: np.ndarray) -> float:
    """The half-width the adaptive stop watches, from the 95% half-widths ``h`` of one run's
    ``BATCH_COLUMNS``: the wider of the two bounds', the lower one the narrower of its
    estimates with and without the control variate (``_result`` reports the one with the
    smaller variance)."""
    return float(max(min(h[0], h[2]), h[1]))


def check_model(model) -> None:
    """The engine prices under ``RoughBergomi`` (and its Black-Scholes limit) or ``Heston``."""
    if not isinstance(model, RoughBergomi | Heston):
        raise ValueError(f"model must be a RoughBergomi or a Heston, got {model!r}")


class _Fitted(NamedTuple):
    """What the regression paths give: the policy, the dual martingale used for the upper
    bound (signature dual), the least-squares martingale (control variate), the dual method,
    and the sub-simulation value function (or None)."""

    policy: LSMPolicy
    dual: DualMartingale
    cv: DualMartingale
    method: str
    value_fn: ValueFunction | None


@dataclass(frozen=True)
class BermudanPricer:
    """Configured pricer; call it as ``pricer(model, strike, option="put", rng=...)``.

    Exercise dates are t_j = j T / n_dates, j = 1..n_dates, plus t_0 = 0 when
    ``exercise_at_zero``. The simulation grid has ``steps_per_date`` steps per exercise period.
    Path counts for RQMC must be powers of two (antithetic pairs included).

    ``dual``: "signature" (default; the fitted signature martingale, ``dual_fit`` chooses
    least squares or the pathwise refinement) or "subsim" (Doob martingale of the regression
    value function with one-period sub-simulation: ``subsim_inner`` inner paths per outer path
    and period, on ``subsim_outer`` outer paths per pricing batch).
    ``martingale_targets``: refit the LSM policy (and the sub-simulation value function) with
    the regression targets Z_tau - (M_tau - M_j), M the least-squares martingale of a first
    pass (``lsm.fit_lsm(martingale=...)``), then refit M for the new policy.
    ``feature_steps``: the regression features (exercise-basis signatures, the martingale
    integrand, the sub-simulation's inner signatures) see the path at this many points per
    exercise period (a divisor of ``steps_per_date``; the payoff increments of the martingale
    basis are taken on the last simulation step of each feature cell); None or a value
    >= ``steps_per_date``: every simulation step. The bounds stay valid for any feature grid
    (the lower bound is a stopping rule's value, the upper bound uses a martingale of the
    discretised model); a coarse one is cheaper and costs only tightness (docs/benchmarks-rough.md).
    ``payoff_dates``: N, the payoff's dates 0..N are the times i T / N (``deepquant.rough.
    exercise``); None: the exercise dates (N = n_dates). A multiple of n_dates dividing the
    number of simulation steps: e.g. n_dates=1, payoff_dates=12 is a European Asian on 12 dates.
    ``device``: None (numpy) or "cpu", "cuda", "cuda:N", "auto" for the torch path map
    (``rbergomi.torch_device``: a ``ValueError`` naming it when CUDA is not usable).
    """

    _: KW_ONLY
    n_dates: int = 12
    T: float = 1.0
    steps_per_date: int = 8
    exercise_at_zero: bool = True
    n_regression: int = 2**15
    batch_size: int = 2**13
    min_batches: int = 4
    max_batches: int = 16
    patience: int = 3
    min_improvement: float = 0.02
    tol: float = 0.0
    method: str = "rqmc"
    antithetic: bool = True
    bridge: bool = True
    exercise_basis: ExerciseBasis = field(default_factory=ExerciseBasis)
    martingale_basis: MartingaleBasis = field(default_factory=MartingaleBasis)
    dual_fit: str = "pathwise"
    dual_max_iter: int = 150
    dual_ridge: float = 1e-3
    martingale_ridge: float = 1e-6
    control_variate: bool = True
    dual: str = "signature"
    subsim_inner: int = 256
    subsim_outer: int = 2**9
    martingale_targets: bool = False
    feature_steps: int | None = None
    payoff_dates: int | None = None
    device: str | None = None
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        if self.device is not None:
            torch_device(self.device)  # ValueError naming it (CUDA asked for, none usable)
        for name in ("exercise_at_zero", "antithetic", "bridge", "control_variate",
                     "martingale_targets"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if check_count(self.feature_steps, "feature_steps", allow_none=True) is not None:
            fs = self.feature_steps
            if fs < self.steps_per_date and self.steps_per_date % fs:
                raise ValueError(f"feature_steps={fs} must divide steps_per_date="
                                 f"{self.steps_per_date}")
        for name in ("n_dates", "steps_per_date", "n_regression", "batch_size", "min_batches",
                     "max_batches", "patience", "dual_max_iter", "subsim_inner",
                     "subsim_outer"):
            check_count(getattr(self, name), name)
        N = self.payoff_dates
        if N is not None and (not isinstance(N, int | np.integer) or isinstance(N, bool) or N < 1
                              or N % self.n_dates or self.n_steps % N):
            raise ValueError(f"payoff_dates must be a multiple of n_dates={self.n_dates} that "
                             f"divides the {self.n_steps} simulation steps (every exercise date "
                             f"a payoff date, every payoff date a grid point), got {N!r}")
        if not (isinstance(self.T, int | float) and math.isfinite(self.T) and self.T > 0):
            raise ValueError(f"T must be a finite number > 0, got {self.T!r}")
        if self.min_batches < 2:
            raise ValueError(f"min_batches must be >= 2, got {self.min_batches}")
        if self.max_batches < self.min_batches:
            raise ValueError(
                f"max_batches must be >= min_batches={self.min_batches}, got {self.max_batches}")
        if self.method not in ("rqmc", "mc"):
            raise ValueError(f"method must be 'rqmc' or 'mc', got {self.method!r}")
        for name, kind in (("exercise_basis", ExerciseBasis),
                           ("martingale_basis", MartingaleBasis)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")
        for name in ("martingale_ridge", "dual_ridge", "tol"):  # NaN passed a bare `< 0` test
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.dual_fit not in ("regression", "pathwise"):
            raise ValueError(f"dual_fit must be 'regression' or 'pathwise', got {self.dual_fit!r}")
        if self.dual not in ("signature", "subsim"):
            raise ValueError(f"dual must be 'signature' or 'subsim', got {self.dual!r}")
        if self.subsim_inner < 4 or self.subsim_inner & (self.subsim_inner - 1):
            raise ValueError(f"subsim_inner must be a power of 2 >= 4, got {self.subsim_inner}")
        if self.dual == "subsim":
            if self.subsim_outer > self.batch_size or self.subsim_outer < 2 or (
                    self.subsim_outer & (self.subsim_outer - 1)):
                raise ValueError(f"subsim_outer must be a power of 2 in [2, batch_size="
                                 f"{self.batch_size}], got {self.subsim_outer}")
        if self.method == "rqmc":
            for name in ("n_regression", "batch_size"):
                value = getattr(self, name)
                if value & (value - 1):
                    raise ValueError(f"{name} must be a power of 2 for RQMC, got {value}")
            if 3 * self.n_steps > SOBOL_MAX_DIM:  # checked here, not after the regression
                raise ValueError(
                    f"steps_per_date x n_dates = {self.steps_per_date} x {self.n_dates} steps "
                    f"need {3 * self.n_steps} Sobol dimensions, more than the {SOBOL_MAX_DIM} "
                    "of RQMC; use fewer steps or method='mc'")

    # ------------------------------------------------------------------ helpers
    @property
    def n_steps(self) -> int:
        return self.n_dates * self.steps_per_date

    @property
    def n_payoff(self) -> int:
        """N: the payoff's dates are 0..N at the times i T / N."""
        return self.n_dates if self.payoff_dates is None else int(self.payoff_dates)

    @property
    def payoff_stride(self) -> int:
        """Simulation steps between payoff dates."""
        return self.n_steps // self.n_payoff

    def prepare_payoff(self, payoff: Payoff | float, option: str = "put") -> Payoff:
        """The exercise payoff (``exercise.exercise_payoff``) with its dates checked against
        this pricer's payoff grid (``exercise.check_payoff_dates``)."""
        return check_payoff_dates(exercise_payoff(payoff, option), self.n_payoff)

    @property
    def feature_stride(self) -> int:
        """Simulation steps per feature cell (1: features on every step)."""
        fs = self.feature_steps
        return 1 if fs is None or fs >= self.steps_per_date else self.steps_per_date // fs

    @property
    def dates(self) -> list[int]:
        first = 0 if self.exercise_at_zero else self.steps_per_date
        return list(range(first, self.n_steps + 1, self.steps_per_date))

    @property
    def _martingale_dates(self) -> list[int]:
        # intervals between consecutive exercise dates, starting at t = 0 in any case
        return list(range(0, self.n_steps + 1, self.steps_per_date))

    def simulate(self, model: RoughBergomi, n: int, seed) -> RoughPaths:
        """``n`` paths of ``model``; ``ValueError`` naming ``T`` and the model's parameters
        when a price leaves the floating-point range (0 or inf: far too long a maturity or too
        extreme parameters), since every estimate on such paths would be NaN or a division by
        zero."""
        paths = model.simulate(n, T=self.T, n_steps=self.n_steps, method=self.method,
                               antithetic=self.antithetic, bridge=self.bridge, rng=seed,
                               device=self.device, dtype=self.dtype)
        # rough Bergomi's variance is positive (Heston's may touch 0 under full truncation)
        v_ok = isinstance(model, Heston) or np.all((paths.V > 0) & (paths.V < np.inf))
        if not (v_ok and np.all((paths.S > 0) & (paths.S < np.inf))):
            raise ValueError(f"the simulated prices or variances leave the floating-point range (0 "
                             f"or inf) with T={self.T!r} and {model!r}: far too long a maturity or "
                             "too extreme model parameters")
        return paths

    def exercise_arrays(self, model: RoughBergomi, payoff: Payoff, paths: RoughPaths):
        """Z (n, n_dates+1) discounted exercise values and F (n, n_dates+1, F) exercise
        features; column 0 is t = 0 (Z = -inf there when ``exercise_at_zero`` is False)."""
        Z = exercise_values(paths, payoff, self.dates, self.payoff_stride)
        F = exercise_features(paths, model, payoff, self.dates, self.exercise_basis,
                              stride=self.feature_stride, payoff_stride=self.payoff_stride)
        if not self.exercise_at_zero:
            Z = np.concatenate([np.full((Z.shape[0], 1), -np.inf), Z], axis=1)
            F = np.concatenate([F[:, :1] * 0.0, F], axis=1)
        return Z, F

    def _arrays(self, model, payoff, paths):
        Z, F = self.exercise_arrays(model, payoff, paths)
        B = martingale_increments(paths, model, payoff, self._martingale_dates,
                                  self.martingale_basis, stride=self.feature_stride,
                                  payoff_stride=self.payoff_stride)
        return Z, F, B

    def fit(self, model: RoughBergomi, payoff: Payoff | float, *, option: str = "put",
            rng: RngLike = None) -> tuple[LSMPolicy, DualMartingale]:
        """Fit the exercise policy and the dual martingale only (same streams as a run)."""
        payoff = self.prepare_payoff(payoff, option)
        seed_reg, seed_val, _ = as_seed_sequence(rng).spawn(3)
        fitted = self._fit(model, payoff, seed_reg, seed_val, {})
        return fitted.policy, fitted.dual

    def _fit(self, model, payoff, seed_reg, seed_val, timings) -> _Fitted:
        t0 = time.perf_counter()
        reg = self.simulate(model, self.n_regression, seed_reg)
        timings["regression_paths"] = time.perf_counter() - t0
        return self._fit_paths(model, payoff, reg, lambda: self.simulate(
            model, max(self.batch_size, self.n_regression // 4), seed_val), timings)

    def _fit_paths(self, model, payoff, reg: RoughPaths, validation: Callable[[], RoughPaths],
                   timings) -> _Fitted:
        """Policy, martingales and value function from the regression paths ``reg``;
        ``validation()`` gives independent paths (only drawn for the pathwise dual check)."""
        t0 = time.perf_counter()
        Z, F, B = self._arrays(model, payoff, reg)
        del reg
        extremes = (F.max(initial=0.0), -F.min(initial=0.0), B.max(initial=0.0),
                    -B.min(initial=0.0))  # no temporary array; a NaN fails the test below
        if np.isnan(Z).any() or np.isposinf(Z).any() or not all(
                x < _SQRT_MAX for x in extremes):
            # least squares on them (squares in the normal equations) would fail deep in
            # LAPACK: "SVD did not converge", with its own lines on stdout
            raise ValueError(f"the regression features overflow (inf, NaN or a square beyond "
                             f"the floating-point range) for {model!r} and the strike "
                             f"{float(payoff.strike):g}: the spot, strike or model parameters "
                             "are too extreme")
        timings["regression_paths"] = timings.get("regression_paths", 0.0) + (
            time.perf_counter() - t0)
        t1 = time.perf_counter()
        policy = fit_lsm(Z, F, has_zero_date=True)
        dual = cv = least_squares_martingale(Z, F, B, policy, ridge=self.martingale_ridge)
        Mreg = None
        if self.martingale_targets:
            # second pass: regress Z_tau - (M_tau - M_j) with the least-squares martingale
            # (same conditional mean, much less noise), then refit that martingale
            policy = fit_lsm(Z, F, has_zero_date=True, martingale=dual.values(B))
            dual = cv = least_squares_martingale(Z, F, B, policy, ridge=self.martingale_ridge)
            Mreg = dual.values(B)
        method = "regression"
        value_fn = None
        if self.dual == "subsim":
            value_fn = fit_value_function(Z, F, policy, martingale=Mreg)
            method = "subsim"
        elif self.dual_fit == "pathwise":
            refined = fit_dual(Z, B, theta0=dual.theta, taus=(0.01,), tau_min=0.003,
                               max_iter=self.dual_max_iter, ridge=self.dual_ridge)
            # keep the refinement only if it is better on independent validation paths by
            # more than two standard errors of the difference (guards against overfitting to
            # rare events) and has the mean 0 of a martingale there (at sigma = 12 the fit
            # made M ~ 99 on every path: an upper estimate of 0.4 for a price of 98.75)
            Zv, _, Bv = self._arrays(model, payoff, validation())
            diff = dual.pathwise(Zv, Bv) - refined.pathwise(Zv, Bv)
            if diff.mean() > 2.0 * diff.std(ddof=1) / math.sqrt(diff.size) and (
                    martingale_mean_stderrs(refined.values(Bv), antithetic=self.antithetic)
                    <= MARTINGALE_MEAN_STDERRS):
                dual, method = refined, "pathwise"
        timings["fit"] = time.perf_counter() - t1
        return _Fitted(policy, dual, cv, method, value_fn)

    def _subsim_upper(self, model: RoughBergomi, payoff: Payoff, paths: RoughPaths,
                      Z: np.ndarray, F: np.ndarray, value_fn: ValueFunction, inner_seed,
                      inner_refine: int = 1, inner_share=None) -> np.ndarray:
        """Sub-simulation dual on the first ``subsim_outer`` paths of a batch (with
        antithetic pairs: the first subsim_outer / 2 points and their partners); the inner
        noise from ``inner_seed`` (drawn on a grid ``inner_refine`` times finer and coarsened:
        coupled grids, ``deepquant.rough.coupling``)."""
        n = Z.shape[0]
        k = self.subsim_outer
        if self.antithetic:
            rows = np.concatenate([np.arange(k // 2), n // 2 + np.arange(k // 2)])
        else:
            rows = np.arange(k)
        sub = paths.take(rows)
        return subsim_pathwise(model, payoff, sub, Z[rows], F[rows], value_fn,
                               basis=self.exercise_basis, steps_per_date=self.steps_per_date,
                               n_inner=self.subsim_inner, rng=inner_seed,
                               feature_stride=self.feature_stride, inner_refine=inner_refine,
                               inner_share=inner_share, payoff_stride=self.payoff_stride)

    # ------------------------------------------------------------------ one run
    def describe(self, model: RoughBergomi) -> str:
        """One line naming the discretised model whose Bermudan price the bounds bracket."""
        zero = " and t = 0" if self.exercise_at_zero else ""
        if isinstance(model, Heston):
            name = (f"Heston (v0={model.v0:g}, kappa={model.kappa:g}, theta={model.theta:g}, "
                    f"sigma={model.sigma:g}, rho={model.rho:g}), full-truncation Euler + "
                    "log-Euler")
        elif model.is_black_scholes:
            name = f"Black-Scholes (sigma={math.sqrt(model.xi0):g}), exact log-Euler"
        else:
            step = ("log-Euler" if model.perp_variance == "left" else
                    "log-Euler with the forward variance for W_perp")
            name = (f"rough Bergomi (H={model.H:g}, eta={model.eta:g}, rho={model.rho:g}, "
                    f"xi0={model.xi0:g}), hybrid scheme + {step}")
        feats = ("" if self.feature_stride == 1 else
                 f", features every {self.feature_stride} steps")
        return (f"{name} on {self.n_steps} steps ({self.steps_per_date} per exercise period), "
                f"{self.n_dates} exercise dates{zero}, T={self.T:g}{feats}")

    def check_model(self, model) -> None:
        """A model this configuration can price (ValueError otherwise)."""
        check_model(model)
        if isinstance(model, Heston) and self.dual == "subsim":
            raise ValueError("dual='subsim' is specific to the rough Bergomi scheme; use "
                             "dual='signature' (preset 'heston') for a Heston model")
        # (a device is refused by the model's own path map, at the first simulation)
        if (getattr(model, "perp_variance", "left") != "left" and not model.is_black_scholes
                and self.dual == "subsim"):
            raise ValueError("dual='subsim' simulates its inner paths with the left-point "
                             "step; use perp_variance='left' or dual='signature'")

    def __call__(self, model: RoughBergomi, payoff: Payoff | float, *, option: str = "put",
                 rng: RngLike = None,
                 callback: Callable[[int, float], None] | None = None) -> BermudanResult:
        """One run for the exercise payoff ``payoff`` (a payoff of ``deepquant.payoffs``,
        truncated at each exercise date, or a strike with ``option``)."""
        self.check_model(model)
        payoff = self.prepare_payoff(payoff, option)
        root = as_seed_sequence(rng)
        seed_reg, seed_val, seed_price = root.spawn(3)
        t0 = time.perf_counter()
        c0 = time.process_time()
        timings: dict[str, float] = {}
        fitted = self._fit(model, payoff, seed_reg, seed_val, timings)
        t2 = time.perf_counter()

        def batch(b: int, seed) -> np.ndarray:
            p = self.simulate(model, self.batch_size, seed)
            (inner,) = seed.spawn(1)
            return self._batch_estimates(model, payoff, fitted, p, inner, timings=timings)

        from deepquant.results import ConvergenceWarning

        with warnings.catch_warnings():   # the run's own warning below names the pricer
            warnings.simplefilter("ignore", ConvergenceWarning)
            ad = adaptive_mean(batch, seed_price, min_batches=self.min_batches,
                               max_batches=self.max_batches, tol=self.tol,
                               patience=self.patience, min_improvement=self.min_improvement,
                               monitor=monitored_half_width, callback=callback)
        timings["pricing"] = time.perf_counter() - t2
        out = self._result(model, payoff, fitted, ad, slice(0, BATCH_COLUMNS),
                           seconds=time.perf_counter() - t0,
                           cpu_seconds=time.process_time() - c0, timings=timings)
        if not out.crossed:   # a crossed run has warned already (RuntimeWarning)
            warn_failure(out, "Bermudan pricer")
        return out

    def _batch_estimates(self, model, payoff: Payoff, fitted: _Fitted, p: RoughPaths,
                         inner_seed, *, inner_refine: int = 1, inner_share=None,
                         timings=None) -> np.ndarray:
        """One pricing batch on the paths ``p``: (lower with control variate, upper, plain
        lower, upper - lower), each the batch mean, the path-level variances of the batch means
        of upper - lower and of upper, then upper - plain lower and its path-level variance
        (``BATCH_COLUMNS``)."""
        Zb, Fb, Bb = self._arrays(model, payoff, p)
        tau = fitted.policy.stopping_index(Zb, Fb)
        rows = np.arange(Zb.shape[0])
        plain = Zb[rows, tau]
        if fitted.value_fn is not None:
            ts = time.perf_counter()
            upper = self._subsim_upper(model, payoff, p, Zb, Fb, fitted.value_fn, inner_seed,
                                       inner_refine, inner_share)
            if timings is not None:
                timings["subsim"] = timings.get("subsim", 0.0) + time.perf_counter() - ts
        else:
            upper = fitted.dual.pathwise(Zb, Bb)
        if self.control_variate:
            # the least-squares martingale: the pathwise fit minimises max_j (Z_j - M_j),
            # not Var(M_tau), and was measured to be a worse control variate
            cv_mart = fitted.cv
            m = np.einsum("nip,ip->ni", Bb, cv_mart.theta / cv_mart.scale)
            cv = plain - np.concatenate([np.zeros((Zb.shape[0], 1)), np.cumsum(m, axis=1)],
                                        axis=1)[rows, tau]
        else:
            cv = plain
        anti = self.antithetic

        def var_gap(low):
            if upper.shape[0] == low.shape[0]:   # the same paths: the paired difference
                return variance_of_mean(upper - low, antithetic=anti)
            # sub-simulation subset: as if independent (0.8-1.1x the paired one, measured)
            return variance_of_mean(upper, antithetic=anti) + variance_of_mean(low,
                                                                               antithetic=anti)

        return np.array([cv.mean(), upper.mean(), plain.mean(), upper.mean() - cv.mean(),
                         var_gap(cv), variance_of_mean(upper, antithetic=anti),
                         upper.mean() - plain.mean(), var_gap(plain)])

    def _result(self, model, payoff: Payoff, fitted: _Fitted, ad, sl: slice, *,
                seconds: float, cpu_seconds: float, timings: dict) -> BermudanResult:
        """The run's result from the batch statistics ``ad`` (columns ``sl``, ``BATCH_COLUMNS``
        of them); an invalid bracket (``result.bracket_failures``) fails with status "crossed",
        its crossing first in the message, and a ``RuntimeWarning``."""
        mean, se, hw = ad.mean[sl], ad.stderr[sl], ad.half_width[sl]
        up, up_se, up_hw, var_up = mean[1], se[1], hw[1], mean[5]
        plain, plain_se = mean[2], se[2]
        vr = float(plain_se**2 / se[0]**2) if se[0] > 0 else math.inf
        # the control variate is kept where it lowers the variance of the batch means; where
        # it raises it (heavy-tailed martingale increments: at sigma = 8 the lower estimate
        # was -164 +- 195 for a put worth 98.4) the plain estimate is the lower bound, and the
        # gap its paired difference with the upper one (columns 6, 7)
        control = bool(self.control_variate and not vr < 1.0)
        c, g = lower_columns(control)
        lo, lo_se, lo_hw = mean[c], se[c], hw[c]
        gap, gap_se, var_gap = mean[g], se[g], mean[g + 1]
        gap_pse = math.sqrt(max(var_gap, 0.0) / ad.n_batches)   # path-level standard errors
        up_pse = math.sqrt(max(var_up, 0.0) / ad.n_batches)
        floor, floor_name = price_floor(model, payoff, T=self.T, n_dates=self.n_dates,
                                        exercise_at_zero=self.exercise_at_zero)
        failures = bracket_failures(lower=lo, upper=up, gap=gap, gap_stderr=gap_se,
                                    upper_stderr=up_se, n_batches=ad.n_batches,
                                    gap_path_stderr=gap_pse, upper_path_stderr=up_pse,
                                    price_floor=floor, floor_name=floor_name)
        crossed, reached = bool(failures), not (self.tol > 0 and ad.reason != "tol")
        message = run_message(ad.reason, ad.n_batches, lo_hw, up_hw, gap, gap_se, gap_pse,
                              level=lo)
        if not reached:
            message += f"; the target tol={self.tol:g} was not reached (raise max_batches)"
        if crossed:
            message = (f"invalid bracket: {'; '.join(failures)}, so the bracket is not to be "
                       f"trusted and its midpoint is no price; {message}")
            warnings.warn(f"Bermudan pricer: {message}", RuntimeWarning, stacklevel=3)
        return BermudanResult(
            value=float(0.5 * (lo + up)), lower=float(lo), upper=float(up),
            lower_stderr=float(lo_se), upper_stderr=float(up_se),
            lower_ci=(float(lo - lo_hw), float(lo + lo_hw)),
            upper_ci=(float(up - up_hw), float(up + up_hw)),
            gap=float(gap), gap_stderr=float(gap_se), lower_plain=float(plain),
            lower_plain_stderr=float(plain_se), variance_reduction=vr, control_variate=control,
            n_paths=ad.n_batches * self.batch_size, n_batches=ad.n_batches,
            stop_reason=ad.reason, n_regression=self.n_regression,
            dual_in_sample=fitted.dual.in_sample, dual_method=fitted.method,
            exercise_at_zero=fitted.policy.exercise_at_zero, strike=float(payoff.strike),
            option=option_name(payoff), payoff=payoff_label(payoff), n_dates=self.n_dates,
            seconds=seconds,
            cpu_seconds=cpu_seconds, timings=timings, success=reached and not crossed,
            status="crossed" if crossed else ad.reason, message=message,
            model=self.describe(model), crossed=crossed, gap_path_stderr=gap_pse,
            upper_path_stderr=up_pse, price_floor=floor)
