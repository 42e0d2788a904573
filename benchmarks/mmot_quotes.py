"""Bounds from the SPX bid-ask quotes against the fitted-marginal bounds and the seed's widening.

    python benchmarks/mmot_quotes.py --config lp            # small grid, exact LP
    python benchmarks/mmot_quotes.py --config certified     # 40 points, certified sweep

Chain: ``../shared/data/spx_20230609`` (or ``$DEEPQUANT_SPX_DATA``), expiries 30d, 60d, 90d,
120d, 150d (1-5 months), forwards and discounts by put-call parity, quotes with K/F in
``--fit-range``. Date 0 is today (X_0 = 1). Per payoff (Asian call, lookback call, forward-start
straddle |X_5 - X_1|, all at strike 1) and per config:

* fitted: ``deepquant.mmot.bounds`` on the calibrated marginals (``calibrate_chain`` on the
  same uniform grid, date 0 a point mass at 1 prepended);
* quotes: ``bounds_from_quotes`` over every martingale law on the grid pricing each quote
  inside its band (``repair="calibration"``: bands the grid cannot meet are widened to the
  calibrated prices, so the fitted laws are feasible; the widening is reported);
* widening: the seed's epsilon = L C max_s delta(s_s, alpha, M_s) (``calibration_widening``,
  C = 1, alpha = 0.05, L = 1 for the Asian and the lookback, 2 for the straddle) around the
  fitted bounds;
* buckets: for each side, the spread cost of the optimal option positions a at each quote,
  a^+ (ask - p) + a^- (p - bid) with p the calibrated price, summed by strike bucket and expiry:
  how much of (quote bound - fitted bound) each bucket's bid-ask spread accounts for.

Results go to ``benchmarks/results/mmot_quotes.json`` (written atomically, one entry per config).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from deepquant.atomic import write_json
from deepquant.market.calibrate import calibrate_chain
from deepquant.market.marginals import Marginals
from deepquant.market.quotes import load_chain
from deepquant.mmot import bounds
from deepquant.mmot.quote_bands import load_bands, quote_grid
from deepquant.mmot.quotes_bounds import bounds_from_quotes, verify_quote_hedge
from deepquant.mmot.widening import calibration_widening
from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall

OUT = Path(__file__).parent / "results" / "mmot_quotes.json"
DATA = Path(os.environ.get("DEEPQUANT_SPX_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "spx_20230609"))
EXPIRIES = ("30d", "60d", "90d", "120d", "150d")
PAYOFFS = dict(asian=(AsianCall(strike=1.0), 1.0), lookback=(LookbackCall(strike=1.0), 1.0),
               fss=(ForwardStartStraddle(t1=1, t2=5), 2.0))
BUCKETS = (0.0, 0.8, 0.9, 0.97, 1.03, 1.1, np.inf)
CONFIGS = dict(lp=dict(grid_size=13, fit_range=(0.75, 1.3), method="lp", thin=True),
               certified=dict(grid_size=40, fit_range=(0.5, 1.6), method="certified",
                              thin=True))
CERTIFIED = dict(eps_start=1e-3, eps_factor=0.1)
"""Schedule of the quotes' certified solves (two decades fewer stages than the default)."""


def with_today(m: Marginals) -> Marginals:
    """The calibrated laws with date 0 (X_0 = 1, time 0) prepended."""
    delta = (np.abs(m.grid - 1.0) < 1e-12).astype(float)
    return Marginals(m.grid, np.vstack([delta, m.weights]), np.concatenate([[0.0], m.times]))


def buckets(res, side: str, laws: np.ndarray) -> list[dict]:
    """Spread cost of the side's positions by strike bucket and expiry (prices p under the
    calibrated ``laws``, one row per expiry)."""
    prob = res.info["problem"]
    bands = prob.bands
    fitted_prices = [bands.payoffs(s, prob.grid) @ laws[s] for s in range(bands.n_expiries)]
    hedge = getattr(res, f"{side}_side").info["hedge"]
    rows = []
    for s, a in enumerate(hedge.positions):
        k, p = bands.k[s], fitted_prices[s]
        ask = np.where(np.isfinite(bands.ask[s]), bands.ask[s], p)
        cost = np.where(a > 0, a * (ask - p), -a * (p - bands.bid[s]))
        for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
            sel = (k >= lo) & (k < hi)
            rows.append(dict(expiry=bands.labels[s], bucket=f"[{lo:g}, {hi:g})",
                             spread_cost=float(cost[sel].sum()),
                             n_binding=int(np.sum(np.abs(a[sel]) > 1e-9)),
                             gross_units=float(np.abs(a[sel]).sum())))
    return rows


def run(config: str, payoffs: list[str], max_seconds: float) -> dict:
    cfg = CONFIGS[config]
    chain = load_chain(DATA / "spx_options_normalized.csv")
    bands0, _ = load_bands(chain, EXPIRIES, fit_range=cfg["fit_range"])
    grid = quote_grid(bands0, cfg["grid_size"])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = calibrate_chain(chain, EXPIRIES, grid=grid, fit_range=cfg["fit_range"])
    t_cal = time.perf_counter() - t0
    fitted = with_today(cal.marginals)
    entry = dict(config=config, expiries=[q.label for q in cal.quotes], grid_size=int(grid.size),
                 grid=[float(grid[0]), float(grid[-1])], fit_range=list(cfg["fit_range"]),
                 n_quotes=[int(q.n) for q in cal.quotes], calibration_seconds=t_cal,
                 calibration_fraction_inside=cal.fraction_inside,
                 calibration_max_violation=cal.max_violation, payoffs={})
    method = cfg["method"]
    for name in payoffs:
        payoff, lip = PAYOFFS[name]
        opts = dict(max_seconds=max_seconds) if method == "certified" else {}
        t0 = time.perf_counter()
        fb = bounds(fitted, payoff, method=method, **opts)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        qb = bounds_from_quotes(cal, payoff, grid=grid, method=method, repair="calibration",
                                thin=cfg["thin"], **opts,
                                **(CERTIFIED if method == "certified" else {}))
        t_q = time.perf_counter() - t0
        eps = max(calibration_widening(s.mean_spread, 0.05, s.n_quotes, lip, 1.0).epsilon
                  for s in cal.slices)
        widened = float(qb.info["band_widening"])
        row = dict(
            fitted=dict(lower=fb.lower, upper=fb.upper, status=fb.status, seconds=t_fit,
                        lower_inner=fb.lower_side.info.get("inner"),
                        upper_inner=fb.upper_side.info.get("inner")),
            quotes=dict(lower=qb.lower, upper=qb.upper, status=qb.status, seconds=t_q,
                        seconds_per_side=qb.timings, dropped_quotes=qb.info["dropped_quotes"],
                        band_widening_total=widened,
                        lower_gap=qb.lower_side.gap, upper_gap=qb.upper_side.gap,
                        lower_inner=qb.lower_side.info.get("inner"),
                        upper_inner=qb.upper_side.info.get("inner")),
            widening=dict(epsilon=eps, lower=fb.lower - eps, upper=fb.upper + eps),
            fitted_inside=bool(qb.lower <= fb.lower + 1e-7 and fb.upper <= qb.upper + 1e-7),
            hedges_dominate={s: bool(verify_quote_hedge(
                getattr(qb, f"{s}_side").info["hedge"], qb).ok) for s in ("lower", "upper")},
            buckets={s: buckets(qb, s, cal.marginals.weights) for s in ("lower", "upper")},
        )
        if method == "lp":  # the certified sweep on the same problem, against the LP
            t0 = time.perf_counter()
            cb = bounds_from_quotes(cal, payoff, grid=grid, method="certified",
                                    repair="calibration", thin=cfg["thin"],
                                    max_seconds=max_seconds)
            row["quotes_certified"] = dict(
                lower=cb.lower, upper=cb.upper, status=cb.status,
                seconds=time.perf_counter() - t0,
                contains_lp=bool(cb.lower <= qb.lower + 1e-8 and cb.upper >= qb.upper - 1e-8),
                lower_excess=qb.lower - cb.lower, upper_excess=cb.upper - qb.upper)
        entry["payoffs"][name] = row
        print(f"{config} {name}: fitted [{fb.lower:.6f}, {fb.upper:.6f}] ({t_fit:.1f} s)  "
              f"quotes [{qb.lower:.6f}, {qb.upper:.6f}] ({t_q:.1f} s, {qb.status})  "
              f"widening +-{eps:.6f}", flush=True)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="lp")
    ap.add_argument("--payoffs", nargs="+", choices=sorted(PAYOFFS), default=sorted(PAYOFFS))
    ap.add_argument("--max-seconds", type=float, default=40.0,
                    help="Time budget per certified side.")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"SPX data not found at {DATA} (set DEEPQUANT_SPX_DATA)")
    entry = run(args.config, args.payoffs, args.max_seconds)
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    old[args.config] = entry
    write_json(OUT, old)
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
