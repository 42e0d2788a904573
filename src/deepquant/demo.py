"""The main job: from an option chain to exact bounds, a calibrated price and a report.

``run_demo(chain=None, out_dir="report")`` (behind ``deepquant demo``); steps 1-3 live in
``deepquant.demo_market``, the report's text in ``deepquant.demo_report``:

1. **Market.** The built-in synthetic Heston chain (``deepquant.market.chain.synthetic_chain``,
   DESIGN §3 parameters, expiries 30..150 days, written to ``out_dir/chain.csv``), or a chain
   CSV given by the user (Cboe or normalized layout).
2. **Calibration.** ``deepquant.market.calibrate.calibrate_chain`` fits arbitrage-free marginals
   inside the bid–ask bands on a fine grid (``calibration_grid_size`` points).
3. **Demo grid.** The LP on the augmented chain grows like M^2 times the number of statistic
   values, so the bounds use a coarser *uniform* grid containing 1 (running sums then fall on a
   lattice and the Asian chain is exact). The fine marginals are moved onto it by their call
   prices at the coarse nodes (``synthetic.marginals_from_call_prices``: the greatest convex
   minorant, mean 1, convex order preserved exactly; interior call prices unchanged, tail mass
   beyond the grid folded onto the end vertices). Date 0 is X_0 = 1.
4. **Bounds.** Exact LP bounds (``deepquant.mmot.bounds``, HiGHS) of an Asian call (average of
   X over the expiries), a lookback call (max over all dates) and a forward-start straddle
   |X_{t_N} - X_{t_1}|, all at strike 1 (ATM). If HiGHS declares the exact LP infeasible (a
   touching call curve, e.g. at the grid ends, is one rounding error from infeasible), the LP is
   re-solved in the relaxed mode with ``martingale_tol`` and the tolerance is reported.
5. **Calibrated price.** ``CalibratedModel`` (c = 0 entropic, reference ``"product"``), priced
   exactly on the augmented chain.
6. **Widenings** (seed 001 §6–7), reported separately: transaction costs Gamma at
   ``cost_rate`` per period under each side's optimal LP plan; calibration uncertainty
   epsilon = L C max_t delta(s_t, alpha, M_t) with s_t the mean bid–ask spread and M_t the quote
   count of slice t, L the payoff's Lipschitz constant (sup norm), C = ``stability``.
7. **Bid-ask bounds.** ``deepquant.mmot.quotes_bounds.bounds_from_quotes`` (exact LP on the
   demo grid): the bounds over every martingale law on the grid that prices each quote inside
   its bid-ask band, with no fitted marginals (zero bids as upper constraints only, one-sided
   quotes as one-sided constraints; bands the fitted laws miss on the coarse grid widened to
   them, so the fitted range lies inside). The printed summary, the JSON and the report set
   three ranges side by side: fitted, fitted +- epsilon (step 6) and bid-ask.
8. **Hedging.** Minimum-variance delta hedge of the Asian call from the calibrated model,
   backtested on paths of the model itself and of a second model fitting the same marginals
   (lognormal reference).
9. **Report.** PNG figures and ``report.md`` + ``results.json`` in ``out_dir``, all written
   atomically.

Prices are undiscounted and in units of the forward (multiply by D(0,T) F(0,T) for currency).

Hook for other pricers: ``pricers={"neural": f, "mine": g}`` with
``f(marginals, payoff) -> float``; each is timed and shown beside the classical price (with its
seconds) in the CLI table, the JSON and the report. On the command line:
``deepquant demo --pricer neural=MODULE:FUNC --pricer mine=MODULE:FUNC``.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepquant.atomic import to_jsonable, write_json
from deepquant.demo_market import Market, coarsen_marginals, demo_grid, load_market
from deepquant.demo_report import RANGE_NAMES, range_rows, write_report
from deepquant.market.marginals import Marginals
from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall, Payoff

__all__ = ["DemoConfig", "DemoRow", "DemoResult", "run_demo", "demo_grid", "coarsen_marginals",
           "demo_payoffs", "range_rows", "RANGE_NAMES"]

Pricer = Callable[[Marginals, Payoff], float]


QUOTE_LP_METHOD = "highs-ipm"
"""LP method of the bid-ask bounds: measured 2x faster than HiGHS's default choice on the demo's
Asian chain, same bounds (``bounds_from_quotes(lp_method=)``)."""

QUOTE_FIT_RANGE = (0.3, 2.0)
"""K/F range of the quotes read for the bid-ask bounds (the calibration's default); the bounds
keep those strictly inside the demo grid."""


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the main job (defaults: about 2 minutes on 2 cores, half of it the 150-point
    certified bounds).

    Attributes
    ----------
    expiries : tuple of str
        Tenors picked from the chain (seed 001 §7.2: 30..150 days).
    grid_step : float
        Spacing of the uniform demo grid in moneyness.
    grid_range : (float, float)
        Range of the demo grid (snapped to multiples of ``grid_step`` around 1).
    calibration_grid_size : int
        Points of the fine calibration grid.
    cost_rate : float
        Proportional transaction cost per rebalancing date (seed §7.2: 0.05%).
    alpha : float
        Confidence parameter of the calibration widening (seed Cor. 6.3).
    stability : float
        The constant C of the calibration widening.
    reference : str
        Reference kernel of the calibrated model.
    sweep_strikes : tuple of float
        Strikes of the Asian-call sweep figure.
    n_paths : int
        Paths per hedging backtest.
    seed : int
        Seed of the synthetic chain's jitter and of the path simulations.
    lp_retry_tol : float
        martingale_tol of the relaxed LP when the exact one is declared infeasible.
    neural : bool
        Also price with the shipped neural checkpoint (pure neural) beside the classical
        solver on the fine calibrated marginals, when torch is installed (extra ``neural``).
    grid_sizes : tuple of int
        Also compute the bounds of every payoff on uniform grids of these sizes
        (``deepquant.mmot.resolution``: the exact LP while small, certified bounds beyond, with
        their gaps) and add a bounds-against-grid table and figure to the report. The default
        bounds each payoff on 25 to 300 points, the calibration's resolution (150) and twice
        it included, beside the demo grid, so the report shows how far the grid alone moves
        the bounds (measured on the built-in chain: 150 -> 300 points moves the straddle's
        bounds by 2e-5, less than the certified gaps at 300 points in 10 s per side); ``()``
        skips it.
    resolution_seconds : float
        Time budget per side of each certified solve of ``grid_sizes``. With 10 s the coarse
        start (a level solved exactly, carried up to 150 points) gave, on the Heston benchmark
        chain, bounds within 1-9% of what 60 s per side gives (docs/benchmarks-certified.md).
    quote_bounds : bool
        Also bound every payoff from the bid-ask quotes themselves
        (``deepquant.mmot.quotes_bounds.bounds_from_quotes``, exact LP on the demo grid) and
        show the fitted, the seed-widened and the bid-ask ranges side by side.
    """

    expiries: tuple[str, ...] = ("30d", "60d", "90d", "120d", "150d")
    grid_step: float = 0.075
    grid_range: tuple[float, float] = (0.55, 1.5)
    calibration_grid_size: int = 150
    cost_rate: float = 5e-4
    alpha: float = 0.05
    stability: float = 1.0
    reference: str = "product"
    sweep_strikes: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
    n_paths: int = 20_000
    seed: int = 0
    lp_retry_tol: float = 1e-9
    neural: bool = True
    grid_sizes: tuple[int, ...] = (25, 50, 100, 150, 300)
    resolution_seconds: float = 10.0
    quote_bounds: bool = True

    def __post_init__(self) -> None:
        if not (np.isfinite(self.grid_step) and self.grid_step > 0):
            raise ValueError(f"grid_step must be > 0, got {self.grid_step!r}")
        lo, hi = self.grid_range
        if not (0 < lo < 1 < hi):
            raise ValueError(f"grid_range must satisfy 0 < lo < 1 < hi, got {self.grid_range!r}")
        from deepquant.demo_market import demo_grid

        if demo_grid(self.grid_step, lo, hi).size < 3:
            raise ValueError(f"grid_step must leave at least 3 points of the demo grid in "
                             f"grid_range [{lo:g}, {hi:g}], got {self.grid_step!r}")
        if len(self.expiries) < 2:
            raise ValueError(f"expiries needs at least 2 tenors, got {self.expiries!r}")
        if int(self.n_paths) < 2:
            raise ValueError(f"n_paths must be >= 2, got {self.n_paths!r}")
        if not self.sweep_strikes:
            raise ValueError("sweep_strikes must not be empty")
        if any(int(g) < 3 for g in self.grid_sizes):
            raise ValueError(f"grid_sizes must be >= 3, got {self.grid_sizes!r}")
        if not (np.isfinite(self.resolution_seconds) and self.resolution_seconds > 0):
            raise ValueError(f"resolution_seconds must be > 0, got {self.resolution_seconds!r}")


@dataclass
class DemoRow:
    """One payoff of the demo: bounds, calibrated price and widenings (fractions of forward).

    The three ranges of the report's comparison: [lower, upper] (the fitted marginals),
    [epsilon_lower, epsilon_upper] = [lower - epsilon, upper + epsilon] (the seed's calibration
    widening alone) and [quote_lower, quote_upper] (every martingale law on the demo grid that
    prices the quotes inside their bid-ask bands; NaN when not computed).
    """

    label: str
    payoff: str
    lower: float
    upper: float
    calibrated: float
    gamma_lower: float
    gamma_upper: float
    epsilon: float
    widened_lower: float
    widened_upper: float
    lp_status: str
    martingale_tol: float
    lp_seconds: float
    price_seconds: float
    lipschitz: float
    lp_sizes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    epsilon_lower: float = float("nan")
    epsilon_upper: float = float("nan")
    quote_lower: float = float("nan")
    quote_upper: float = float("nan")
    quote_status: str = ""
    quote_seconds: float = 0.0

    @property
    def inside(self) -> bool:
        """lower <= calibrated <= upper (up to 1e-9)."""
        return self.lower - 1e-9 <= self.calibrated <= self.upper + 1e-9

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The three ranges (fitted, seed widening, bid-ask), keyed as ``RANGE_NAMES``."""
        return dict(zip(RANGE_NAMES, ((self.lower, self.upper),
                                      (self.epsilon_lower, self.epsilon_upper),
                                      (self.quote_lower, self.quote_upper))))


@dataclass
class DemoResult:
    """Everything the demo computed; ``files`` lists what it wrote into ``out_dir``."""

    rows: list[DemoRow]
    marginals: Marginals
    model: Any
    calibration: dict
    sweep: dict
    backtest: dict
    timings: dict
    config: DemoConfig
    out_dir: Path
    files: list[Path]
    chain_path: str
    neural: dict | None = None
    resolution: list[dict] = field(default_factory=list)
    quotes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return dict(
            rows=[{**asdict(r), "inside": r.inside} for r in self.rows],
            calibration=self.calibration, sweep=self.sweep, backtest=self.backtest,
            timings=self.timings, config=asdict(self.config), out_dir=str(self.out_dir),
            files=[str(f) for f in self.files], chain=self.chain_path, neural=self.neural,
            resolution=self.resolution, quotes=self.quotes,
            grid=[float(self.marginals.grid[0]), float(self.marginals.grid[-1]),
                  int(self.marginals.size)],
            times=self.marginals.times.tolist(),
            model=dict(success=bool(getattr(self.model.solve, "success", True)),
                       marginal_error=self.model.marginal_error(), drift=self.model.drift(),
                       reference=self.model.reference),
        )


# ----------------------------------------------------------------------------- building blocks
def demo_payoffs(n_dates: int) -> list[tuple[str, Payoff, float]]:
    """(label, payoff, Lipschitz constant in sup norm) of the three demo payoffs.

    Asian call (mean of X_1..X_N - 1)^+, lookback call (max of X_0..X_N - 1)^+ and forward-start
    straddle |X_N - X_1|, all at the money.
    """
    last = n_dates - 1
    return [
        ("Asian call", AsianCall(strike=1.0), 1.0),
        ("Lookback call", LookbackCall(strike=1.0), 1.0),
        ("Fwd-start straddle", ForwardStartStraddle(strike=1.0, t1=1, t2=last), 2.0),
    ]


def _lp(marginals: Marginals, payoff: Payoff, retry_tol: float):
    from deepquant.mmot.bounds import bounds

    res = bounds(marginals, payoff, method="lp", return_plan=True)
    if not res.success and "nfeasible" in res.message and retry_tol > 0:
        res = bounds(marginals, payoff, method="lp", return_plan=True, martingale_tol=retry_tol)
    return res


def _moves(lp, side: str, model) -> np.ndarray:
    """E|dX| per period under a side's optimal plan (the model's if the side has no plan: a
    failed side, or a pairwise payoff solved as one-period LPs)."""
    from deepquant.mmot.widening import plan_moves

    try:
        return plan_moves(lp, side)
    except ValueError:
        return model.expected_abs_moves()


# ----------------------------------------------------------------------------- main job
def run_demo(chain: str | os.PathLike[str] | None = None,
             out_dir: str | os.PathLike[str] = "report", *,
             config: DemoConfig | None = None,
             pricers: Mapping[str, Pricer] | None = None,
             progress: Callable[[str], None] | None = None) -> DemoResult:
    """Run the main job and write the report folder (module docstring).

    Parameters
    ----------
    chain : path-like, optional
        A chain CSV (Cboe or normalized layout). Default: the built-in synthetic Heston chain.
    out_dir : path-like
        Report folder (created; files replaced atomically).
    config : DemoConfig, optional
    pricers : mapping of name -> callable(marginals, payoff) -> float, optional
        Extra pricers shown beside the calibrated price (e.g. a neural pricer).
    progress : callable(str), optional
        Called with a short description before each stage (the CLI shows it; the library
        never prints).

    Returns
    -------
    DemoResult
    """
    cfg = config or DemoConfig()
    for name, fn in (pricers or {}).items():
        if not callable(fn):
            raise ValueError(f"pricers[{name!r}] must be a function f(marginals, payoff) -> "
                             f"float, got {type(fn).__name__}")
    if chain is not None and not Path(chain).exists():
        raise ValueError(f"chain file {str(chain)!r} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, out, progress or (lambda _msg: None))
    market = load_market(chain, run.out, cfg, say=run.say, timings=run.timings)
    model = _calibrated_model(run, market.marginals)
    rows, lp_results = _bounds(run, market, model, pricers or {})
    quotes = _quote_bounds(run, market, rows)
    sweep = _strike_sweep(run, market.marginals, model, rows[0])
    backtests, backtest_summary = _backtest(run, market.marginals, model)
    neural = _neural(run, market.fit)
    resolution = _resolution(run, market)
    return _report(run, market, model, rows, lp_results, quotes, sweep, backtests,
                   backtest_summary, neural, resolution)


@dataclass
class _Run:
    """What every step of ``run_demo`` shares: settings, report folder, progress callback and
    the stage timings (seconds, in the order the stages ran)."""

    cfg: DemoConfig
    out: Path
    say: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


def _calibrated_model(run: _Run, marg: Marginals):
    """Step 5: the calibrated c = 0 entropic model on the demo grid."""
    from deepquant.mmot.model import CalibratedModel

    run.say("calibrated model")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported through model.solve.success
        model = CalibratedModel.calibrate(marg, reference=run.cfg.reference)
    run.timings["model"] = time.perf_counter() - t0
    return model


def _bounds(run: _Run, market: Market, model, pricers: Mapping[str, Pricer]
            ) -> tuple[list[DemoRow], dict]:
    """Steps 4 and 6: exact LP bounds, calibrated prices, the extra pricers and the widenings
    of each payoff (``timings["bounds"]`` counts the LP solves only)."""
    from deepquant.mmot.widening import calibration_widening, transaction_cost_widening, widen

    cfg, marg = run.cfg, market.marginals
    slices = market.calibration["slices"]
    rows: list[DemoRow] = []
    lp_results = {}
    t_lp = 0.0
    for label, payoff, lip in demo_payoffs(marg.n_dates):
        run.say(f"bounds: {label}")
        t0 = time.perf_counter()
        lp = _lp(marg, payoff, cfg.lp_retry_tol)
        lp_s = time.perf_counter() - t0
        t_lp += lp_s
        lp_results[label] = lp
        pr = model.price_result(payoff)
        g_lo = transaction_cost_widening(_moves(lp, "lower", model), cfg.cost_rate)
        g_up = transaction_cost_widening(_moves(lp, "upper", model), cfg.cost_rate)
        eps_cal = max((calibration_widening(s["mean_spread"], cfg.alpha, s["n_quotes"], lip,
                                            cfg.stability) for s in slices),
                      key=lambda c: c.epsilon)
        if lp.success:
            wb = widen(lp.lower, lp.upper, transaction=(g_lo, g_up), calibration=eps_cal)
            wl, wu = wb.widened_lower, wb.widened_upper
            el, eu = wb.with_calibration
        else:
            wl = wu = el = eu = float("nan")
        extra = {}
        for name, fn in pricers.items():
            t1 = time.perf_counter()
            val = _pricer_value(name, fn(marg, payoff), label)
            extra[name] = dict(price=val, seconds=time.perf_counter() - t1)
        rows.append(DemoRow(
            label=label, payoff=payoff.name, lower=float(lp.lower), upper=float(lp.upper),
            calibrated=pr.value, gamma_lower=g_lo.gamma, gamma_upper=g_up.gamma,
            epsilon=eps_cal.epsilon, widened_lower=wl, widened_upper=wu,
            lp_status=lp.status, martingale_tol=float(lp.martingale_tol), lp_seconds=lp_s,
            price_seconds=pr.seconds, lipschitz=lip, lp_sizes=dict(lp.sizes), extra=extra,
            epsilon_lower=el, epsilon_upper=eu))
    run.timings["bounds"] = t_lp
    return rows, lp_results


def _pricer_value(name: str, value: Any, label: str) -> float:
    """A pricer's answer as a float; a ``ValueError`` naming the pricer, the payoff and the
    value when it is not a real number (a string, a bool, an array, None)."""
    if isinstance(value, bool | str | bytes) or not isinstance(value, numbers.Real | np.ndarray):
        raise ValueError(f"pricer {name!r} returned {value!r} ({type(value).__name__}) for the "
                         f"{label}, not a real number")
    if isinstance(value, np.ndarray) and (value.ndim or value.dtype.kind not in "iuf"):
        raise ValueError(f"pricer {name!r} returned an array of shape {value.shape} (dtype "
                         f"{value.dtype}) for the {label}, not a real number")
    return float(value)


def _quote_bounds(run: _Run, market: Market, rows: list[DemoRow]) -> dict:
    """Step 7: bounds from the bid-ask quotes (``bounds_from_quotes``, exact LP on the demo
    grid), filled into each row's ``quote_lower``/``quote_upper``.

    The bands are the chain's quotes at the demo's expiries with the calibration's forwards and
    discounts (the same put-call parity fit), zero bids and one-sided quotes included as
    one-sided constraints, restricted to strikes inside the grid and thinned to the quote
    nearest each grid node (the grid is coarse). Bands that the fitted laws on the demo grid
    miss (their call curves are linear between nodes) are widened to the fitted prices
    (``repair="calibration"``), so the fitted laws are feasible and the fitted-marginal range
    lies inside the bid-ask range; the widening is reported. Returns the JSON summary
    (``{}`` when ``DemoConfig.quote_bounds`` is off).
    """
    if not run.cfg.quote_bounds:
        return {}
    from deepquant.mmot.quote_bands import load_bands
    from deepquant.mmot.quotes_bounds import bounds_from_quotes

    t_all = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quote checks are reported by the calibration
        bands, quotes = load_bands(market.chain_path, list(run.cfg.expiries),
                                   fit_range=QUOTE_FIT_RANGE)
    forward_gap = max(abs(q.forward / s.forward - 1.0)
                      for q, s in zip(quotes, market.fit.slices))
    res = None
    for row, (label, payoff, _) in zip(rows, demo_payoffs(market.marginals.n_dates)):
        run.say(f"quote bounds: {label}")
        t0 = time.perf_counter()
        res = bounds_from_quotes(bands, payoff, grid=market.grid, method="lp", thin=True,
                                 repair="calibration", fitted=market.marginals,
                                 lp_method=QUOTE_LP_METHOD)
        row.quote_lower, row.quote_upper = float(res.lower), float(res.upper)
        row.quote_status = res.status
        row.quote_seconds = time.perf_counter() - t0
    run.timings["quote_bounds"] = time.perf_counter() - t_all
    info = res.info if res is not None else {}
    return dict(method="lp", lp_method=QUOTE_LP_METHOD, thin=True, repair="calibration",
                fit_range=list(QUOTE_FIT_RANGE),
                expiries=list(bands.labels), quotes=int(res.sizes["quotes"]) if res else 0,
                no_bid=int(info.get("no_bid", 0)), no_ask=int(info.get("no_ask", 0)),
                left_out=int(info.get("dropped_quotes", 0)),
                widened_quotes=int(info.get("widened_quotes", 0)),
                band_widening=float(info.get("band_widening", 0.0)),
                forward_mismatch=float(forward_gap), seconds=run.timings["quote_bounds"])


def _strike_sweep(run: _Run, marg: Marginals, model, asian_row: DemoRow) -> dict:
    """The Asian call's bounds, calibrated price and widened bounds against strike."""
    from deepquant.mmot.widening import transaction_cost_widening

    cfg = run.cfg
    run.say("strike sweep")
    t0 = time.perf_counter()
    sweep: dict[str, list] = dict(strikes=[], lower=[], upper=[], calibrated=[],
                                  widened_lower=[], widened_upper=[])
    for k in cfg.sweep_strikes:
        if abs(k - 1.0) < 1e-12:
            lo, up, c = asian_row.lower, asian_row.upper, asian_row.calibrated
            wl, wu = asian_row.widened_lower, asian_row.widened_upper
        else:
            p = AsianCall(strike=float(k))
            lp = _lp(marg, p, cfg.lp_retry_tol)
            lo, up, c = float(lp.lower), float(lp.upper), model.price(p)
            g_lo = transaction_cost_widening(_moves(lp, "lower", model), cfg.cost_rate)
            g_up = transaction_cost_widening(_moves(lp, "upper", model), cfg.cost_rate)
            wl = lo - g_lo.gamma - asian_row.epsilon
            wu = up + g_up.gamma + asian_row.epsilon
        for key, v in zip(("strikes", "lower", "upper", "calibrated", "widened_lower",
                           "widened_upper"), (float(k), lo, up, c, wl, wu)):
            sweep[key].append(float(v))
    run.timings["sweep"] = time.perf_counter() - t0
    return sweep


def _backtest(run: _Run, marg: Marginals, model) -> tuple[dict, dict]:
    """Step 8: the Asian call's delta hedge backtested on paths of the calibrated model and of
    a second model with the same marginals (lognormal reference)."""
    from deepquant.mmot.delta import backtest, delta_hedge
    from deepquant.mmot.model import CalibratedModel

    cfg = run.cfg
    run.say("delta-hedge backtest")
    t0 = time.perf_counter()
    asian = demo_payoffs(marg.n_dates)[0][1]
    hedge = delta_hedge(model, asian)
    rng = np.random.default_rng(cfg.seed)
    bt = {"calibrated model": backtest(hedge, model.sample(cfg.n_paths, rng))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = CalibratedModel.calibrate(marg, reference="lognormal")
    if getattr(other.solve, "success", False):
        bt["lognormal-reference model"] = backtest(hedge, other.sample(cfg.n_paths, rng))
    summary = {k: v.summary() for k, v in bt.items()}
    summary["model_error_std"] = float(np.sqrt(hedge.expected_error_variance()))
    run.timings["backtest"] = time.perf_counter() - t0
    return bt, summary


def _neural(run: _Run, cal) -> dict | None:
    """The shipped checkpoint's prices beside the classical solver (when torch is installed)."""
    if not (run.cfg.neural and importlib.util.find_spec("torch") is not None):
        return None
    run.say("neural pricer")
    t0 = time.perf_counter()
    from deepquant.neural.pricer import NeuralPricer, demo_prices

    # the fine calibrated marginals moved onto the network's grid through their call prices
    # (mass, mean and convex order kept), as for the demo grid above
    fine = coarsen_marginals(cal.marginals, NeuralPricer().grid)
    neural = demo_prices(fine, {label: p for label, p, _ in demo_payoffs(fine.n_dates)})
    run.timings["neural"] = time.perf_counter() - t0
    return neural


def _resolution(run: _Run, market: Market) -> list[dict]:
    """The bounds against the grid size (``DemoConfig.grid_sizes``; 25 and 150 points by
    default)."""
    cfg = run.cfg
    if not cfg.grid_sizes:
        return []
    from deepquant.mmot.resolution import resolution_study

    t0 = time.perf_counter()
    entries = resolution_study(
        market.fit.marginals,
        {label: p for label, p, _ in demo_payoffs(market.marginals.n_dates)},
        cfg.grid_sizes, grid_range=cfg.grid_range, progress=run.say, rtol=1e-3,
        max_seconds=cfg.resolution_seconds)
    run.timings["resolution"] = time.perf_counter() - t0
    return [e.to_dict() for e in entries]


def _report(run: _Run, market: Market, model, rows, lp_results, quotes, sweep, backtests,
            backtest_summary, neural, resolution) -> DemoResult:
    """Step 9: figures, report.md and results.json in the report folder."""
    from deepquant import report

    run.say("report")
    t0 = time.perf_counter()
    files = write_report(run.out, market.marginals, model, rows, sweep, backtests,
                          backtest_summary, market.calibration, run.timings, run.cfg,
                          market.chain_path, lp_results, report, neural, resolution, quotes)
    run.timings["report"] = time.perf_counter() - t0
    run.timings["total"] = time.perf_counter() - run.started
    result = DemoResult(rows=rows, marginals=market.marginals, model=model,
                        calibration=market.calibration, sweep=sweep, backtest=backtest_summary,
                        timings=run.timings, config=run.cfg, out_dir=run.out, files=files,
                        chain_path=market.chain_path, neural=neural, resolution=resolution,
                        quotes=quotes)
    files.append(write_json(run.out / "results.json", to_jsonable(result.to_dict())))
    return result
