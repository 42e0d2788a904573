"""The main job: from an option chain to exact bounds, a calibrated price and a report.

``run_demo(chain=None, out_dir="report")`` (behind ``deepquant demo``):

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

import datetime as dt
import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepquant.atomic import to_jsonable, write_json
from deepquant.market.marginals import Marginals
from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall, Payoff

__all__ = ["DemoConfig", "DemoRow", "DemoResult", "run_demo", "demo_grid", "coarsen_marginals",
           "demo_payoffs", "range_rows", "RANGE_NAMES"]

Pricer = Callable[[Marginals, Payoff], float]

RANGE_NAMES = ("fitted", "fitted +- epsilon", "bid-ask")
"""The three ranges of each payoff compared by the demo (``DemoRow.ranges``)."""

QUOTE_LP_METHOD = "highs-ipm"
"""LP method of the bid-ask bounds: measured 2x faster than HiGHS's default choice on the demo's
Asian chain, same bounds (``bounds_from_quotes(lp_method=)``)."""

QUOTE_FIT_RANGE = (0.3, 2.0)
"""K/F range of the quotes read for the bid-ask bounds (the calibration's default); the bounds
keep those strictly inside the demo grid."""


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the main job (defaults chosen to run in < 60 s on 2 cores).

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
        their gaps) and add a bounds-against-grid table and figure to the report.
    resolution_seconds : float
        Time budget per side of each certified solve of ``grid_sizes``.
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
    grid_sizes: tuple[int, ...] = ()
    resolution_seconds: float = 120.0
    quote_bounds: bool = True

    def __post_init__(self) -> None:
        if not (np.isfinite(self.grid_step) and self.grid_step > 0):
            raise ValueError(f"grid_step must be > 0, got {self.grid_step!r}")
        lo, hi = self.grid_range
        if not (0 < lo < 1 < hi):
            raise ValueError(f"grid_range must satisfy 0 < lo < 1 < hi, got {self.grid_range!r}")
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
def demo_grid(step: float, lo: float, hi: float) -> np.ndarray:
    """Uniform grid 1 + step * k covering [lo, hi] (contains 1 exactly)."""
    k_lo = int(np.ceil((lo - 1.0) / step - 1e-9))
    k_hi = int(np.floor((hi - 1.0) / step + 1e-9))
    return np.round(1.0 + step * np.arange(k_lo, k_hi + 1), 12)


def coarsen_marginals(fine: Marginals, grid: np.ndarray, *, with_spot: bool = True) -> Marginals:
    """Move calibrated marginals onto ``grid`` through their call prices (convex order kept).

    Calls C_t(k) at the coarse nodes are taken from the fine laws; the greatest convex minorant
    with C(g_0) = 1 - g_0, C(g_{M-1}) = 0 gives the coarse weights
    (``synthetic.marginals_from_call_prices``). With ``with_spot`` a first date t = 0 with
    X_0 = 1 (call curve (1 - k)^+) is prepended.
    """
    from deepquant.market.synthetic import marginals_from_call_prices

    grid = np.asarray(grid, dtype=float)
    calls = fine.call_prices(grid)
    times = np.asarray(fine.times, dtype=float)
    if with_spot:
        calls = np.vstack([np.maximum(1.0 - grid, 0.0)[None, :], calls])
        times = np.concatenate([[0.0], times])
    return marginals_from_call_prices(grid, calls, times)


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


def _moves(side, marginals: Marginals, model) -> np.ndarray:
    """E|dX| per period under a side's optimal plan (the model's if no plan is available)."""
    from deepquant.mmot.widening import expected_abs_moves

    plan = getattr(side, "plan", None) if side is not None else None
    if plan:
        try:
            mv = expected_abs_moves(list(plan), grid=marginals.grid)
            out = np.zeros(marginals.n_periods)
            out[: mv.size] = mv
            return out
        except ValueError:
            pass
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
    if chain is not None and not Path(chain).exists():
        raise ValueError(f"chain file {str(chain)!r} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, out, progress or (lambda _msg: None))
    market = _load_and_calibrate(run, chain)
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


@dataclass
class _Market:
    """Output of the market step: the chain, its calibration and the demo-grid marginals."""

    chain_path: str
    fit: Any                   # CalibrationResult on the fine calibration grid
    grid: np.ndarray           # the demo grid
    marginals: Marginals       # the fitted laws moved onto the demo grid, date 0 prepended
    calibration: dict          # JSON summary of the calibration


def _load_and_calibrate(run: _Run, chain) -> _Market:
    """Steps 1-3: the chain (built-in synthetic or the user's), the calibration on the fine
    grid, and the fitted laws moved onto the demo grid."""
    from deepquant.market.calibrate import calibrate_chain

    cfg, out = run.cfg, run.out
    run.say("market data")
    t0 = time.perf_counter()
    if chain is None:
        from deepquant.market.chain import synthetic_chain

        qd = dt.date(2024, 1, 2)
        days = [int(round(float(e.rstrip("d")))) for e in cfg.expiries if e.endswith("d")]
        if len(days) != len(cfg.expiries):
            raise ValueError(f"the synthetic chain needs tenors in days ('30d'), got "
                             f"{cfg.expiries!r}")
        syn = synthetic_chain("heston", seed=cfg.seed, quote_date=qd,
                              expiries=[qd + dt.timedelta(days=d) for d in days])
        chain_path = str(syn.to_csv(out / "chain.csv"))
    else:
        chain_path = str(chain)
    run.timings["chain"] = time.perf_counter() - t0
    run.say("calibration")
    t0 = time.perf_counter()
    cal = calibrate_chain(chain_path, expiries=list(cfg.expiries),
                          grid_size=cfg.calibration_grid_size)
    run.timings["calibration"] = time.perf_counter() - t0
    grid = demo_grid(cfg.grid_step, *cfg.grid_range)
    marg = coarsen_marginals(cal.marginals, grid)
    calibration = dict(success=bool(cal.success), fraction_inside=float(cal.fraction_inside),
                       max_violation=float(cal.max_violation),
                       seconds=run.timings["calibration"],
                       fine_grid_size=int(cal.marginals.size),
                       slices=[r.as_dict() for r in cal.slices],
                       coarse_grid=[float(grid[0]), float(grid[-1]), int(grid.size)],
                       coarse_call_error=float(np.max(np.abs(
                           marg.call_prices(grid)[1:] - cal.marginals.call_prices(grid)))))
    return _Market(chain_path, cal, grid, marg, calibration)


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


def _bounds(run: _Run, market: _Market, model, pricers: Mapping[str, Pricer]
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
        g_lo = transaction_cost_widening(_moves(lp.lower_side, marg, model), cfg.cost_rate)
        g_up = transaction_cost_widening(_moves(lp.upper_side, marg, model), cfg.cost_rate)
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
            val = float(fn(marg, payoff))
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


def _quote_bounds(run: _Run, market: _Market, rows: list[DemoRow]) -> dict:
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
            g_lo = transaction_cost_widening(_moves(lp.lower_side, marg, model), cfg.cost_rate)
            g_up = transaction_cost_widening(_moves(lp.upper_side, marg, model), cfg.cost_rate)
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


def _resolution(run: _Run, market: _Market) -> list[dict]:
    """The bounds against the grid size (``DemoConfig.grid_sizes``; none by default)."""
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


def _report(run: _Run, market: _Market, model, rows, lp_results, quotes, sweep, backtests,
            backtest_summary, neural, resolution) -> DemoResult:
    """Step 9: figures, report.md and results.json in the report folder."""
    from deepquant import report

    run.say("report")
    t0 = time.perf_counter()
    files = _write_report(run.out, market.marginals, model, rows, sweep, backtests,
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


NEURAL_HYBRID_NOTE = ("The hybrid (network warm start + Newton polish) was removed: it measured a "
                      "median 1.31x the cold classical solve time (30 instances, against a "
                      "0.5x bar; docs/benchmarks-neural.md).")


def neural_rows(neural: dict) -> list[list]:
    """Rows (payoff, neural, classical, neural - classical) of ``demo_prices`` output."""
    return [[name, v["neural"], v["classical"], v["neural"] - v["classical"]]
            for name, v in neural["prices"].items()]


def neural_markdown(neural: dict, report) -> str:
    """The report section comparing the neural and classical calibrated prices."""
    sec, drift = neural["seconds"], neural["drift"]
    tab = report.markdown_table(["payoff", "neural", "classical", "neural - classical"],
                                neural_rows(neural))
    return ("Calibrated (c = 0) model prices on the calibrated marginals moved onto the "
            "network's grid (through their call prices), by the shipped checkpoint alone "
            "(neural) and by the classical solver from a cold start."
            f"\n\n{tab}\n\nSeconds: neural {sec['neural']:.3g}, classical "
            f"{sec['classical']:.3g}. Drift: neural {drift['neural']:.2e}, classical "
            f"{drift['classical']:.2e}. Out of distribution for the guard: {neural['ood']}. "
            + NEURAL_HYBRID_NOTE)


def resolution_markdown(resolution: list[dict], report) -> str:
    """The report section of the bounds against the grid size."""
    rows = [[e["label"], e["size"], e["lower"], e["upper"], e["method"], e["lower_gap"],
             e["upper_gap"], round(e["seconds"], 1)] for e in resolution]
    tab = report.markdown_table(["payoff", "M", "lower", "upper", "method", "gap lower",
                                 "gap upper", "seconds"], rows)
    return ("The same calibrated laws moved onto uniform grids of M points (1 on the grid) and "
            "bounded again: by the exact LP while it is small, by the certified method beyond "
            "(``lower``/``upper`` are then bounds certified by a dual checked on every path of "
            "the grid chain; the gap is the distance to an inner estimate from a martingale "
            "chain with nearly the same marginals). The change with M is the discretisation "
            f"error of the bounds on the coarser grids.\n\n{tab}\n\n"
            "![bounds against the grid](resolution.png)\n\n*Figure: lower and upper bounds of "
            "each payoff against the number of grid points M (log scale), from the table "
            "above.*")


RANGE_TOL = 1e-8
"""Tolerance of "the fitted range lies inside the bid-ask range": both are exact LPs solved by
HiGHS to feasibility tolerances of 1e-9, and the repaired bands contain the fitted prices with
1e-9 of room."""


def range_rows(rows) -> list[list]:
    """Rows [payoff, then lower and upper of each of ``RANGE_NAMES``, fitted inside bid-ask]
    of the three-range comparison (inside: up to ``RANGE_TOL``; None when no bid-ask range)."""
    out = []
    for r in rows:
        rg = r.ranges()
        (fl, fu), (ql, qu) = rg[RANGE_NAMES[0]], rg[RANGE_NAMES[2]]
        inside = (bool(ql <= fl + RANGE_TOL and fu <= qu + RANGE_TOL)
                  if np.isfinite(ql) and np.isfinite(qu) else None)
        out.append([r.label, *(v for name in RANGE_NAMES for v in rg[name]), inside])
    return out


RANGES_CAPTION = (
    "*Figure: three ranges of each payoff's undiscounted price (fraction of the forward) on the "
    "demo grid. **fitted**: the exact LP bounds over martingale laws with the fitted "
    "(calibrated) marginals. **fitted +- epsilon**: the same widened by the seed's calibration "
    "uncertainty epsilon = L C max_t delta(s_t, alpha, M_t) (Cor. 6.3). **bid-ask**: the exact "
    "LP bounds over every martingale law on the grid that prices each listed quote inside its "
    "bid-ask band, with no fitted marginals (bands the fitted laws miss on this grid widened "
    "to the fitted prices, so fitted lies inside bid-ask). Dotted line: the calibrated "
    "model's price.*")


def ranges_markdown(rows, quotes: dict, report, cfg) -> str:
    """The report section comparing the fitted, seed-widened and bid-ask ranges."""
    tab = report.markdown_table(
        ["payoff", "fitted lower", "fitted upper", "+-eps lower", "+-eps upper",
         "bid-ask lower", "bid-ask upper", "fitted inside bid-ask"], range_rows(rows))
    q = quotes
    return (
        "Three answers to \"what can this payoff be worth?\" on the demo grid. (a) **fitted**: "
        "the bounds over every martingale law with the calibrated marginals (table above). "
        "(b) **fitted +- epsilon**: (a) widened by the seed's calibration-uncertainty formula "
        f"alone (``deepquant.mmot.widening.calibration_widening``, alpha = {cfg.alpha:g}, "
        f"C = {cfg.stability:g}), which models the calibration error as a sampling error of "
        "the quotes. (c) **bid-ask**: the bounds over every martingale law on the grid whose "
        "prices of the listed options lie inside their bid-ask bands "
        "(``deepquant.mmot.quotes_bounds.bounds_from_quotes``, exact LP): the marginals are "
        "not fixed, so (c) shows how much the quotes themselves leave open.\n\n"
        f"Quotes for (c): {q['quotes']} at {len(q['expiries'])} expiries with K/F inside the "
        f"grid, thinned to the quotes nearest each grid node ({q['left_out']} others left "
        f"out: outside the grid or not nearest a node); {q['no_bid']} have a zero bid (an "
        "upper constraint only, worth between 0 "
        f"and the ask) and {q['no_ask']} no ask (a lower constraint only). The fitted laws on "
        "this coarse grid (call curves linear between nodes) miss some bands; those "
        f"{q['widened_quotes']} bands were widened to the fitted prices (total "
        f"{q['band_widening']:.3g}, ``repair='calibration'``), so the fitted laws are among "
        "the laws of (c) and (a) lies inside (c) up to the LP tolerance "
        f"({RANGE_TOL:g}).\n\n{tab}\n\n![ranges](ranges.png)\n\n{RANGES_CAPTION}")


def _write_report(out, marg, model, rows, sweep, bt, bt_summary, calibration, timings, cfg,
                  chain_path, lp_results, report, neural=None, resolution=None,
                  quotes=None) -> list[Path]:
    files: list[Path] = []
    days = [f"t={t * 365:.0f}d" for t in marg.times]
    files.append(report.plot_marginals(marg.grid, marg.weights, days, out / "marginals.png",
                                       title="Calibrated marginals on the demo grid"))
    n = marg.n_periods
    periods = sorted({1, n - 1}) if n > 1 else [0]
    files.append(report.plot_plan(marg.grid, [model.plans[t] for t in periods],
                                  [f"calibrated plan {days[t]} -> {days[t + 1]}"
                                   for t in periods], out / "plan.png"))
    hist = getattr(model.solve, "history", None) or []
    curves = {"marginal error (L1)": [h.get("marginal_error", np.nan) for h in hist],
              "drift": [h.get("drift", np.nan) for h in hist]}
    files.append(report.plot_convergence(
        curves, out / "convergence.png",
        title=f"Calibrated model: entropic solver ({model.reference} reference)"))
    files.append(report.plot_strike_sweep(
        np.array(sweep["strikes"]), np.array(sweep["lower"]), np.array(sweep["upper"]),
        np.array(sweep["calibrated"]), out / "strikes.png",
        widened_lower=np.array(sweep["widened_lower"]),
        widened_upper=np.array(sweep["widened_upper"]),
        title="Asian call: bounds and calibrated price against strike"))
    files.append(report.plot_tracking_errors({k: v.errors for k, v in bt.items()},
                                             out / "hedge.png"))
    extra_names = sorted({k for r in rows for k in r.extra})
    extra_cols = [c for k in extra_names for c in (k, f"{k} s")]
    cols = ["payoff", "lower", "calibrated", "calibrated s", "upper", *extra_cols, "Gamma lo",
            "Gamma up", "epsilon", "widened lower", "widened upper", "LP status", "LP s"]
    table = report.markdown_table(cols, [
        [r.label, r.lower, r.calibrated, r.price_seconds, r.upper,
         *[r.extra[k][f] for k in extra_names for f in ("price", "seconds")],
         r.gamma_lower, r.gamma_upper, r.epsilon, r.widened_lower, r.widened_upper,
         r.lp_status + (f" (martingale_tol {r.martingale_tol:g})" if r.martingale_tol else ""),
         r.lp_seconds] for r in rows])
    sizes = report.markdown_table(["payoff", "LP rows", "LP cols", "nnz", "states per date"], [
        [r.label, r.lp_sizes.get("rows", ""), r.lp_sizes.get("cols", ""),
         r.lp_sizes.get("nnz", ""), lp_results[r.label].info.get("states", "")] for r in rows])
    cal_tab = report.markdown_table(
        ["slice", "days", "quotes", "inside bid-ask", "mean spread", "delta (Cor. 6.3)"],
        [[s["label"], s["days"], s["n_quotes"], s["fraction_inside"], s["mean_spread"],
          s["half_width"]] for s in calibration["slices"]])
    bt_tab = report.markdown_table(
        ["paths from", "mean", "std err", "std", "RMSE", "1%", "99%", "unhedged std",
         "seed Thm 8.1 scale"],
        [[k, v["mean"], v["stderr"], v["std"], v["rmse"], v["quantiles"]["0.01"],
          v["quantiles"]["0.99"], v["unhedged_std"], v["seed_bound"]]
         for k, v in bt_summary.items() if isinstance(v, dict)])
    tim = report.markdown_table(["stage", "seconds"], [[k, v] for k, v in timings.items()])
    g = marg.grid
    sections = [
        ("How to read this report",
         "Every price is undiscounted and in units of the forward of its payoff's expiry. "
         "Each number says where it was computed: the **demo grid** "
         f"({g.size} points, step {cfg.grid_step:g}) carries the exact LP bounds, the "
         "calibrated model's prices, the widenings, the bid-ask bounds, the strike sweep and "
         "the hedge; the "
         f"**calibration grid** ({calibration['fine_grid_size']} points) carries the fitted "
         "marginals; the neural section works on the network's own grid; the bounds-against-"
         "the-grid section (when asked for) repeats the bounds on finer uniform grids. The "
         "same payoff therefore has one calibrated price per grid, and the differences "
         "between grids are discretisation, not disagreement between methods. Bounds are "
         "valid over every martingale law with the marginals of their grid (the bid-ask "
         "bounds: with any marginals on the grid that price the quotes inside their bands); "
         "the LP ones are "
         "exact (residuals and duality gaps below 1e-9), the certified ones are valid bounds "
         "with a stated gap to an inner estimate. Widenings are added outside the bounds, "
         "each reported separately."),
        ("Inputs", f"Chain: `{chain_path}`. Expiries: {', '.join(cfg.expiries)}. Calibration "
                   f"(``calibrate_chain``, {calibration['fine_grid_size']} points): "
                   f"{100 * calibration['fraction_inside']:.1f}% of quotes inside bid-ask, "
                   f"largest violation {calibration['max_violation']:.3g}.\n\n{cal_tab}\n\n"
                   f"Demo grid: uniform, step {cfg.grid_step:g}, [{g[0]:g}, {g[-1]:g}] "
                   f"({g.size} points, contains 1; running sums on a lattice, so the Asian "
                   f"chain is exact). Calibrated marginals were moved onto it through their "
                   f"call prices (convex order kept); largest call-price change at the nodes "
                   f"{calibration['coarse_call_error']:.2e}. Date 0 is X_0 = 1."),
        ("Bounds, calibrated price and widenings",
         "Undiscounted prices in units of the forward (multiply by D(0,T) F(0,T) for "
         f"currency). Gamma: transaction costs {1e4 * cfg.cost_rate:g} bp per period under each "
         "side's optimal LP plan (seed Thm 6.4). epsilon: calibration uncertainty "
         f"L C max_t delta(s_t, alpha={cfg.alpha:g}, M_t) (seed Cor. 6.3, C = {cfg.stability:g},"
         " L = payoff Lipschitz constant: 1 for the Asian and the lookback, 2 for the "
         "straddle). Each widening is reported separately; widened = [lower - Gamma lo - "
         f"epsilon, upper + Gamma up + epsilon].\n\n{table}\n\nLP sizes:\n\n{sizes}"),
        ("Calibrated model",
         f"c = 0 entropic MMOT (``CalibratedModel``, reference `{model.reference}`): measured "
         f"marginal error {model.marginal_error():.2e}, drift {model.drift():.2e}, solver "
         f"success {getattr(model.solve, 'success', True)}. Every calibrated price lies "
         "inside its LP bounds: "
         f"{all(r.inside for r in rows)}.\n\n![marginals](marginals.png)\n\n"
         "*Figure: the calibrated laws of X_t on the demo grid, one curve per expiry (date 0 "
         "is the point mass at 1).*\n\n![plan](plan.png)\n\n*Figure: the calibrated "
         "model's transition plans pi_t(x, y) of the first and last periods (darker = more "
         "mass); every row is a martingale move.*\n\n![convergence](convergence.png)\n\n"
         "*Figure: the entropic solver's measured residuals (L1 marginal error and drift) "
         "per iteration, Sinkhorn sweeps then Newton steps.*"),
        ("Asian call against strike",
         "![strikes](strikes.png)\n\n*Figure: exact LP bounds (lines), the widened bounds "
         "(dashed) and the calibrated price (dots) of the Asian call at each strike of the "
         "sweep, on the demo grid.*"),
        ("Delta hedge backtest",
         "Minimum-variance delta of the Asian call from the calibrated model (discrete form of "
         f"seed eq. 8.1), {cfg.n_paths} paths per scenario. Tracking error = V_0 + sum Delta dX"
         " - payoff. Model-implied std (exact): "
         f"{bt_summary['model_error_std']:.4g}. The seed's Thm 8.1 scale L_Delta sqrt(dt) "
         "log(1/dt) (constant C = 1, stated without proof in the seed) is shown for "
         f"comparison only.\n\n{bt_tab}\n\n![hedge](hedge.png)\n\n*Figure: histograms "
         "of the tracking error of the delta hedge on paths of each model.*"),
        ("Timings", f"{tim}\n\nReproduce: `deepquant demo --out {out}`."),
    ]
    if quotes:
        files.append(report.plot_ranges(
            [r.label for r in rows],
            {name: [r.ranges()[name] for r in rows] for name in RANGE_NAMES},
            out / "ranges.png", points={"calibrated": [r.calibrated for r in rows]},
            title="Fitted, seed-widened and bid-ask ranges"))
        sections.insert(3, ("Fitted, seed-widened and bid-ask ranges",
                            ranges_markdown(rows, quotes, report, cfg)))
    if neural is not None:
        sections.insert(-1, ("Neural surrogate", neural_markdown(neural, report)))
    if resolution:
        files.append(report.plot_bounds_vs_grid(resolution, out / "resolution.png"))
        sections.insert(-1, ("Bounds against the grid", resolution_markdown(resolution, report)))
    files.append(report.write_markdown(out / "report.md", sections,
                                       title="deep-quant demo: exotic bounds from an option "
                                             "chain"))
    return files
