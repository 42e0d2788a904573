"""The demo report's text: tables, captions and the markdown/HTML report writer of
``deepquant.demo`` (the steps that compute the numbers stay in ``demo``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RANGE_NAMES = ("fitted", "fitted +- epsilon", "bid-ask")
"""The three ranges of each payoff compared by the demo (``DemoRow.ranges``)."""


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


def bounds_from(entry: dict) -> str:
    """Which bounds of a resolution entry (``ResolutionEntry.to_dict``) did not come from its
    method's own solve, and where from (``BoundSide.bound_from``), e.g. ``"both: relaxation to
    dates 1, 5"``; ``""`` when both did."""
    lo, up = entry.get("lower_from", ""), entry.get("upper_from", "")
    if lo and lo == up:
        return f"both: {lo}"
    return "; ".join(f"{name}: {src}" for name, src in (("lower", lo), ("upper", up)) if src)


def resolution_markdown(resolution: list[dict], report, demo_size: int) -> str:
    """The report section of the bounds at the calibration's resolution and against the grid."""
    rows = [[e["label"], e["size"], e["lower"], e["upper"], e["method"], e["lower_gap"],
             e["upper_gap"], round(e["seconds"], 1), bounds_from(e) or "-"] for e in resolution]
    tab = report.markdown_table(["payoff", "M", "lower", "upper", "method", "gap lower",
                                 "gap upper", "seconds", "bound from"], rows)
    return ("The same calibrated laws moved onto uniform grids of M points (1 on the grid) and "
            "bounded again: by the exact LP while it is small, by the certified method beyond. "
            "Certified ``lower``/``upper`` are valid bounds for their grid: a dual checked on "
            "every path of the grid chain, whatever the solver reached. The gap is the distance "
            "to an inner estimate (a martingale chain's value, on a coarser grid when the time "
            "budget ended there: an estimate, not a bound). \"Bound from\" names a bound "
            "that came from the relaxation to a forward start's own two dates (its exact "
            "one-period bound, certified on the whole chain: the dates in between do not move "
            "it), \"-\" one from the method's own solve. The change with M is the "
            "discretisation error of the bounds on the coarser grids, the demo grid's "
            f"({demo_size} points) included.\n\n{tab}\n\n"
            "![bounds against the grid](resolution.png)\n\n*Figure: lower and upper bounds of "
            "each payoff against the number of grid points M (log scale): the demo grid's exact "
            "LP bounds and the table above (filled: exact LP; hollow: certified).*")


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


def write_report(out, marg, model, rows, sweep, bt, bt_summary, calibration, timings, cfg,
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
         "marginals; the neural section works on the network's own grid; the section on the "
         "calibration's resolution repeats the bounds on finer uniform grids (by default "
         "25 and 150 points). The "
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
        demo_grid = [dict(label=r.label, size=g.size, lower=r.lower, upper=r.upper)
                     for r in rows]
        files.append(report.plot_bounds_vs_grid(demo_grid + list(resolution),
                                                out / "resolution.png"))
        # right after the demo grid's bounds: how far the grid alone moves them
        sections.insert(3, ("Bounds at the calibration's resolution and against the grid",
                            resolution_markdown(resolution, report, g.size)))
    files.append(report.write_markdown(out / "report.md", sections,
                                       title="deep-quant demo: exotic bounds from an option "
                                             "chain"))
    return files
