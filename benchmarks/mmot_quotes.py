"""Bounds from the SPX bid-ask quotes against the fitted-marginal bounds and the seed's widening.

    python benchmarks/mmot_quotes.py --config lp            # 13 points, exact LP
    python benchmarks/mmot_quotes.py --config lp --two-sided --no-certified-check
    python benchmarks/mmot_quotes.py --config certified     # 40 points, certified sweep
    python benchmarks/mmot_quotes.py --config grid --grid-sizes 25 50 100 150 --max-seconds 10
    python benchmarks/mmot_quotes.py --config grid --grid-sizes 150 --max-seconds 10 --coarse none

Chain: ``../shared/data/spx_20230609`` (or ``$DEEPQUANT_SPX_DATA``), expiries 30d, 60d, 90d,
120d, 150d (1-5 months), forwards and discounts by put-call parity, quotes with K/F in the
config's fit range. Date 0 is today (X_0 = 1). Per payoff (Asian call, lookback call,
forward-start straddle |X_5 - X_1|, all at strike 1) and per config:

* fitted: ``deepquant.mmot.bounds`` on the calibrated marginals (``calibrate_chain`` on the
  same uniform grid, date 0 a point mass at 1 prepended);
* quotes: ``bounds_from_quotes`` over every martingale law on the grid pricing each quote
  inside its band. The bands come from ``load_bands`` as in the library and the CLI: the
  two-sided quotes plus the zero-bid quotes (an upper constraint only) and the bid-only quotes
  (a lower constraint only); ``--two-sided`` leaves the one-sided ones out (the calibration's
  filter) for comparison. ``repair="calibration"`` with ``fitted=`` the calibrated marginals:
  bands the grid cannot meet are widened to the calibrated prices, so the fitted laws are
  feasible; the widening is reported;
* widening: the seed's epsilon = L C max_s delta(s_s, alpha, M_s) (``calibration_widening``,
  C = 1, alpha = 0.05, L = 1 for the Asian and the lookback, 2 for the straddle) around the
  fitted bounds;
* buckets: for each side, the spread cost of the optimal option positions a at each quote,
  a^+ (ask - p) + a^- (p - bid) with p the calibrated price, summed by strike bucket and expiry:
  how much of (quote bound - fitted bound) each bucket's bid-ask spread accounts for.

``--config grid`` measures the certified method alone on the quotes at several grid sizes
(``--grid-sizes``, the same chain and fit range as ``certified``) with a time budget per side
(``--max-seconds``): per side the certified bound, the inner estimate of the smoothed chain,
the certified gap (bound - inner, meaningful when the band violation of the inner chain is
small), the seconds, the smoothed sweeps and the seconds of one smoothed sweep. Grids of at
least twice ``--coarse`` points (default the library's, 25) start each side from the
positions of the same side on a coarse subgrid (``info["coarse"]``); ``--coarse none`` turns
that off, for comparison.

Results go to ``benchmarks/results/mmot_quotes.json`` (written atomically, one entry per config,
keys ``lp``, ``certified`` and ``grid-<max seconds>s``, with ``-two-sided`` appended for
``--two-sided``; a run with ``--payoffs`` or ``--grid-sizes`` updates only those parts of an
entry with the same settings).
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
from deepquant.mmot.quotes_bounds import COARSE, bounds_from_quotes, verify_quote_hedge
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
                              thin=True),
               grid=dict(fit_range=(0.5, 1.6), method="certified", thin=True))
CERTIFIED = dict(eps_start=1e-3, eps_factor=0.1)
"""Schedule of the quotes' certified solves (two decades fewer stages than the default)."""


def with_today(m: Marginals) -> Marginals:
    """The calibrated laws with date 0 (X_0 = 1, time 0) prepended."""
    delta = (np.abs(m.grid - 1.0) < 1e-12).astype(float)
    return Marginals(m.grid, np.vstack([delta, m.weights]), np.concatenate([[0.0], m.times]))


def buckets(res, side: str, laws: np.ndarray) -> list[dict]:
    """Spread cost of the side's positions by strike bucket and expiry (prices p under the
    calibrated ``laws``, one row per expiry; a zero bid earns nothing, a quote with no ask is
    never bought)."""
    prob = res.info["problem"]
    bands = prob.bands
    fitted_prices = [bands.payoffs(s, prob.grid) @ laws[s] for s in range(bands.n_expiries)]
    hedge = getattr(res, f"{side}_side").info["hedge"]
    rows = []
    for s, a in enumerate(hedge.positions):
        k, p = bands.k[s], fitted_prices[s]
        ask = np.where(np.isfinite(bands.ask[s]), bands.ask[s], p)
        cost = np.where(a > 0, a * (ask - p), -a * (p - bands.bid[s]))
        one_sided = (bands.bid[s] <= 0) | ~np.isfinite(bands.ask[s])
        for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
            sel = (k >= lo) & (k < hi)
            bind = sel & (np.abs(a) > 1e-9)
            rows.append(dict(expiry=bands.labels[s], bucket=f"[{lo:g}, {hi:g})",
                             spread_cost=float(cost[sel].sum()),
                             n_binding=int(np.sum(bind)),
                             n_binding_one_sided=int(np.sum(bind & one_sided)),
                             gross_units=float(np.abs(a[sel]).sum())))
    return rows


def market(chain, grid_size: int, fit_range, two_sided: bool):
    """(bands, grid, calibration, calibration seconds) on the uniform quote grid."""
    bands, _ = load_bands(chain, EXPIRIES, fit_range=fit_range, one_sided=not two_sided)
    grid = quote_grid(bands, grid_size)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = calibrate_chain(chain, EXPIRIES, grid=grid, fit_range=fit_range)
    return bands, grid, cal, time.perf_counter() - t0


def quote_counts(bands) -> dict:
    """Quotes in the bands: two-sided, zero bid (ask only), no ask (bid only)."""
    bid = np.concatenate(bands.bid)
    ask = np.concatenate(bands.ask)
    return dict(total=int(bid.size), zero_bid=int(np.sum(bid <= 0)),
                no_ask=int(np.sum(~np.isfinite(ask))),
                two_sided=int(np.sum((bid > 0) & np.isfinite(ask))))


def side_row(side) -> dict:
    info = side.info
    return dict(bound=side.value, inner=info.get("inner"), gap=side.gap, status=side.status,
                seconds=side.seconds, band_violation=info.get("band_violation"),
                stages=info.get("stages"), iterations=info.get("iterations"),
                evaluations=info.get("evaluations"), message=side.message,
                coarse=info.get("coarse"), inner_kind=info.get("inner_kind"),
                markov={k: v for k, v in info.get("markov", {}).items() if k != "laws"},
                polish=info.get("polish"))


def run(config: str, payoffs: list[str], max_seconds: float, two_sided: bool,
        check_certified: bool) -> dict:
    cfg = CONFIGS[config]
    chain = load_chain(DATA / "spx_options_normalized.csv")
    bands, grid, cal, t_cal = market(chain, cfg["grid_size"], cfg["fit_range"], two_sided)
    fitted = with_today(cal.marginals)
    entry = dict(config=config, two_sided=two_sided, expiries=[q.label for q in cal.quotes],
                 grid_size=int(grid.size), grid=[float(grid[0]), float(grid[-1])],
                 fit_range=list(cfg["fit_range"]), quotes_in_range=quote_counts(bands),
                 n_quotes=[int(q.n) for q in cal.quotes], calibration_seconds=t_cal,
                 calibration_fraction_inside=cal.fraction_inside,
                 calibration_max_violation=cal.max_violation, max_seconds=max_seconds,
                 payoffs={})
    method = cfg["method"]
    certified = dict(max_seconds=max_seconds, **CERTIFIED)
    for name in payoffs:
        payoff, lip = PAYOFFS[name]
        opts = dict(max_seconds=max_seconds) if method == "certified" else {}
        t0 = time.perf_counter()
        fb = bounds(fitted, payoff, method=method, **opts)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        qb = bounds_from_quotes(bands, payoff, grid=grid, method=method, repair="calibration",
                                fitted=cal.marginals, thin=cfg["thin"],
                                **(certified if method == "certified" else {}))
        t_q = time.perf_counter() - t0
        eps = max(calibration_widening(s.mean_spread, 0.05, s.n_quotes, lip, 1.0).epsilon
                  for s in cal.slices)
        row = dict(
            fitted=dict(lower=fb.lower, upper=fb.upper, status=fb.status, seconds=t_fit,
                        lower_inner=fb.lower_side.info.get("inner"),
                        upper_inner=fb.upper_side.info.get("inner")),
            quotes=dict(lower=qb.lower, upper=qb.upper, status=qb.status, seconds=t_q,
                        seconds_per_side=qb.timings, dropped_quotes=qb.info["dropped_quotes"],
                        used=qb.sizes["quotes"], no_bid=qb.info["no_bid"],
                        no_ask=qb.info["no_ask"],
                        band_widening_total=float(qb.info["band_widening"]),
                        widened_quotes=qb.info["widened_quotes"],
                        lower_gap=qb.lower_side.gap, upper_gap=qb.upper_side.gap,
                        lower_inner=qb.lower_side.info.get("inner"),
                        upper_inner=qb.upper_side.info.get("inner")),
            widening=dict(epsilon=eps, lower=fb.lower - eps, upper=fb.upper + eps),
            fitted_inside=bool(qb.lower <= fb.lower + 1e-7 and fb.upper <= qb.upper + 1e-7),
            hedges_dominate={s: bool(verify_quote_hedge(
                getattr(qb, f"{s}_side").info["hedge"], qb).ok) for s in ("lower", "upper")},
            buckets={s: buckets(qb, s, cal.marginals.weights) for s in ("lower", "upper")},
        )
        if method == "lp" and check_certified:  # the certified sweep on the same problem
            t0 = time.perf_counter()
            cb = bounds_from_quotes(bands, payoff, grid=grid, method="certified",
                                    repair="calibration", fitted=cal.marginals,
                                    thin=cfg["thin"], max_seconds=max_seconds)
            row["quotes_certified"] = dict(
                lower=cb.lower, upper=cb.upper, status=cb.status,
                seconds=time.perf_counter() - t0,
                contains_lp=bool(cb.lower <= qb.lower + 1e-8 and cb.upper >= qb.upper - 1e-8),
                lower_excess=qb.lower - cb.lower, upper_excess=cb.upper - qb.upper)
        entry["payoffs"][name] = row
        print(f"{config} {name}: fitted [{fb.lower:.6f}, {fb.upper:.6f}] ({t_fit:.1f} s)  "
              f"quotes [{qb.lower:.6f}, {qb.upper:.6f}] ({t_q:.1f} s, {qb.status}, "
              f"{qb.sizes['quotes']} quotes, {qb.info['no_bid']} no bid, "
              f"{qb.info['no_ask']} no ask)  widening +-{eps:.6f}", flush=True)
    return entry


def run_grid(sizes: list[int], payoffs: list[str], max_seconds: float,
             two_sided: bool, coarse: int | None, workers: int = 1) -> dict:
    """The certified quote bounds at each grid size, with a time budget per side."""
    cfg = CONFIGS["grid"]
    chain = load_chain(DATA / "spx_options_normalized.csv")
    entry = dict(config="grid", two_sided=two_sided, fit_range=list(cfg["fit_range"]),
                 max_seconds=max_seconds, certified=CERTIFIED, coarse=coarse, workers=workers,
                 sizes={})
    for size in sizes:
        bands, grid, cal, t_cal = market(chain, size, cfg["fit_range"], two_sided)
        per = dict(grid=[float(grid[0]), float(grid[-1])], calibration_seconds=t_cal,
                   quotes_in_range=quote_counts(bands), payoffs={})
        for name in payoffs:
            payoff, _ = PAYOFFS[name]
            t0 = time.perf_counter()
            qb = bounds_from_quotes(bands, payoff, grid=grid, method="certified",
                                    repair="calibration", fitted=cal.marginals,
                                    thin=cfg["thin"], max_seconds=max_seconds, coarse=coarse,
                                    workers=workers, **CERTIFIED)
            wall = time.perf_counter() - t0
            sides = {s: side_row(getattr(qb, f"{s}_side")) for s in ("lower", "upper")}
            prob = qb.info["problem"]  # one smoothed sweep at the last stage's eps, timed
            sw = prob.sweeper(1.0)
            u = prob.uvec(np.zeros(prob.off[-1]))
            t1 = time.perf_counter()
            sw.soft(u, 1e-4 * sw.scale, 40.0)
            sweep = time.perf_counter() - t1
            per["payoffs"][name] = dict(
                lower=qb.lower, upper=qb.upper, status=qb.status, wall_seconds=wall,
                build_seconds=qb.timings["build"], quotes=qb.sizes["quotes"],
                states=qb.sizes["states"], no_bid=qb.info["no_bid"], no_ask=qb.info["no_ask"],
                band_widening_total=float(qb.info["band_widening"]),
                smoothed_sweep_seconds=sweep, sides=sides)
            lo, up = sides["lower"], sides["upper"]
            print(f"grid {size} {name}: [{qb.lower:.6f}, {qb.upper:.6f}] gaps "
                  f"{lo['gap']:.2e} / {up['gap']:.2e}  band viol {lo['band_violation']:.1e} / "
                  f"{up['band_violation']:.1e}  {lo['seconds']:.1f} + {up['seconds']:.1f} s "
                  f"(build {qb.timings['build']:.1f} s, {lo['evaluations']} + "
                  f"{up['evaluations']} sweeps of {sweep:.2f} s)", flush=True)
            for side, row in sides.items():
                path = row["markov"].get("path")
                if path is not None:
                    tried = ", ".join(f"{k} {v['value']:.6f} ({v['seconds']:.2f} s)"
                                      for k, v in path["tried"].items())
                    print(f"    {side}: inner {row['inner']:.6f} (Markov "
                          f"{row['markov'].get('markov_value', float('nan')):.6f}); path "
                          f"passes: {tried or path['status']}", flush=True)
                if row["polish"] is not None:
                    po = row["polish"]
                    print(f"    {side}: polish {po['start']:.6f} -> {po['value']:.6f}, "
                          f"{po['steps']} steps, {po['seconds']:.2f} s", flush=True)
        entry["sizes"][str(size)] = per
    return entry


def merge(old: dict | None, new: dict) -> dict:
    """``new``, keeping the payoffs of ``old`` that ``new`` did not run when the settings
    (everything but the payoffs and the timings) agree."""
    if not old:
        return new
    keys = ("config", "two_sided", "fit_range", "max_seconds", "grid_size", "coarse")
    if any(old.get(k) != new.get(k) for k in keys):
        return new
    if new["config"] == "grid":
        sizes = dict(old.get("sizes", {}))
        for size, per in new["sizes"].items():
            merged = dict(per)
            merged["payoffs"] = {**sizes.get(size, {}).get("payoffs", {}), **per["payoffs"]}
            sizes[size] = merged
        return {**new, "sizes": sizes}
    return {**new, "payoffs": {**old.get("payoffs", {}), **new["payoffs"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="lp")
    ap.add_argument("--payoffs", nargs="+", choices=sorted(PAYOFFS), default=sorted(PAYOFFS))
    ap.add_argument("--max-seconds", type=float, default=40.0,
                    help="Time budget per certified side.")
    ap.add_argument("--two-sided", action="store_true",
                    help="Leave the zero-bid and bid-only quotes out (the calibration's filter).")
    ap.add_argument("--no-certified-check", dest="check_certified", action="store_false",
                    help="Config lp: skip the certified sweep on the same problems.")
    ap.add_argument("--grid-sizes", nargs="+", type=int, default=[25, 50, 100, 150],
                    help="Config grid: the grid sizes.")
    ap.add_argument("--coarse", default=str(COARSE),
                    help="Config grid: size of the coarse start of the certified sides "
                         "('none': no coarse start).")
    ap.add_argument("--workers", type=int, choices=(1, 2), default=1,
                    help="Config grid: processes per certified side (2: the inner value's "
                         "path passes beside the positions' polish).")
    args = ap.parse_args()
    coarse = None if args.coarse == "none" else int(args.coarse)
    if not DATA.exists():
        raise SystemExit(f"SPX data not found at {DATA} (set DEEPQUANT_SPX_DATA)")
    if args.config == "grid":
        entry = run_grid(args.grid_sizes, args.payoffs, args.max_seconds, args.two_sided,
                         coarse, args.workers)
    else:
        entry = run(args.config, args.payoffs, args.max_seconds, args.two_sided,
                    args.check_certified)
    key = args.config + (f"-{args.max_seconds:g}s" if args.config == "grid" else "") \
        + ("-two-sided" if args.two_sided else "") \
        + (f"-coarse-{args.coarse}" if args.config == "grid" and coarse != COARSE else "") \
        + ("-workers-2" if args.workers == 2 else "")
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    old[key] = merge(old.get(key), entry)
    write_json(OUT, old)
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
