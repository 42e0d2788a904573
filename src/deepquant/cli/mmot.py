"""CLI commands of the mmot engine (see deepquant.cli)."""

from __future__ import annotations

import click

from deepquant.cli.output import ENTROPIC_TOL, FINITE, LEVEL, FiniteFloat

COMMANDS: list[click.Command] = []


# ---------------------------------------------------------------------------- solve (entropic)
@click.command("solve")
@click.argument("marginals_path", metavar="MARGINALS.npz", type=click.Path(dir_okay=False))
@click.option("--eps", type=FINITE, required=True, help="Entropic regularisation (cost units).")
@click.option("--reference", type=click.Choice(["product", "lognormal"]), default="product",
              show_default=True, help="Reference kernel q(y|x).")
@click.option("--tol", type=ENTROPIC_TOL, default=1e-9, show_default=True,
              help="Target of the L1 marginal error and of the drift (< 2: two laws are at "
                   "most 2 apart in L1).")
@click.option("--max-iter", type=int, default=100, show_default=True,
              help="Newton iterations per eps stage.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="BLAS threads.")
@click.option("--period", type=int, default=None,
              help="Period whose plan is plotted, 0..N-1 (default: the last).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a figure (png, pdf or svg) with the transport-plan heatmap and the "
                   "convergence curve.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def solve_command(marginals_path, eps, reference, tol, max_iter, threads, period, plot_path,
                  as_json):
    """Entropic martingale transport of MARGINALS.npz (c = 0): the calibrated Markov chain."""
    from deepquant.cli.output import (
        check_figure,
        console,
        fail,
        fail_option,
        print_json,
        reported_failures,
        table,
    )
    from deepquant.market.marginals import Marginals
    from deepquant.mmot.entropic import solve_entropic

    plot_format = check_figure(plot_path, "--plot")
    try:
        marginals = Marginals.load(marginals_path)
    except ValueError as exc:
        fail(str(exc))
    if marginals.n_dates < 2:
        fail(f"{marginals_path!r} holds a single date; solve needs at least two")
    if period is not None and not 0 <= period < marginals.n_periods:
        fail(f"--period {period} out of range for {marginals.n_periods} period(s) "
             f"(0..{marginals.n_periods - 1})")
    with reported_failures():
        try:
            res = solve_entropic(marginals, eps, reference=reference, tol=tol,
                                 max_iter=max_iter, threads=threads)
        except ValueError as exc:
            fail_option(exc, {"eps": "--eps", "tol": "--tol", "max_iter": "--max-iter"})
    summary = res.to_dict()
    summary.update(marginals=str(marginals_path), reference=reference, tol=tol)
    if plot_path is not None:
        summary["plot"] = str(_plot_solve(res, marginals, plot_path, plot_format, period))
    if as_json:
        print_json(summary)
    else:
        rows = [(k, summary[k]) for k in ("success", "message", "nit", "sweeps", "seconds",
                                          "marginal_error", "drift", "eps", "dual_value",
                                          "n_periods", "grid_size", "pinned_rows")]
        console.print(table(f"entropic MMOT: {marginals_path}", ["name", "value"], rows))
        if plot_path is not None:
            console.print(f"plot written to {summary['plot']}")
    if not res.success:
        raise SystemExit(1)


def _plot_solve(res, marginals, path, fmt, period):
    """Heatmap of one period's plan and the residual history, in format ``fmt`` (checked by
    ``check_figure``); written atomically (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from deepquant.atomic import atomic_path

    t = res.n_periods - 1 if period is None else period
    grid = marginals.grid
    plan = res.plans[t]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5))
    with np.errstate(divide="ignore"):
        img = np.log10(np.where(plan > 0, plan, np.nan))
    im = ax0.imshow(img, origin="lower", aspect="auto", cmap="viridis",
                    extent=(grid[0], grid[-1], grid[0], grid[-1]),
                    vmin=np.nanmax(img) - 12 if np.isfinite(img).any() else None)
    fig.colorbar(im, ax=ax0, label="log10 pi(x, y)")
    ax0.set_xlabel(f"y = X at date {t + 1}")
    ax0.set_ylabel(f"x = X at date {t}")
    ax0.set_title(f"transport plan, period {t}")
    it = np.arange(1, len(res.history) + 1)
    err = [max(h["marginal_error"], 1e-17) for h in res.history]
    drift = [max(h["drift"], 1e-17) for h in res.history]
    ax1.semilogy(it, err, "o-", label="L1 marginal error")
    ax1.semilogy(it, drift, "s-", label="drift max|E[dX|x]|")
    for i, h in enumerate(res.history):
        if h["kind"] == "sinkhorn":
            ax1.axvspan(i + 0.5, i + 1.5, color="0.9")
    ax1.axhline(res.marginal_error, color="0.6", lw=0.5)
    ax1.set_xlabel("iteration (shaded: Sinkhorn sweeps, then Newton)")
    ax1.set_ylabel("residual (max over periods still iterating)")
    ax1.set_title(f"convergence: {res.nit} Newton iterations, {res.seconds * 1e3:.1f} ms")
    ax1.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)
    plt.close(fig)
    return path


COMMANDS.append(solve_command)


# ---------------------------------------------------------------------------- demo (main job)
_DEMO_OPTIONS = {"expiries": "--expiries", "grid_step": "--grid-step", "n_paths": "--paths",
                 "grid_sizes": "--grid-sizes", "resolution_seconds": "--max-seconds"}
"""DemoConfig fields set from the command line, and their options (named in the errors)."""

@click.command("demo")
@click.option("--chain", "chain_path", type=click.Path(dir_okay=False), default=None,
              metavar="CHAIN.csv",
              help="Option chain CSV (Cboe or normalized). Default: built-in synthetic Heston.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="report",
              show_default=True, help="Report folder (figures, report.md, results.json).")
@click.option("--expiries", default="30d,60d,90d,120d,150d", show_default=True,
              help="Comma-separated tenors picked from the chain.")
@click.option("--grid-step", type=FINITE, default=None,
              help="Spacing of the uniform bounds grid (default 0.075).")
@click.option("--paths", "n_paths", type=int, default=None,
              help="Paths per hedging backtest (default 20000).")
@click.option("--grid-sizes", default="25,50,100,150,300", show_default=True,
              metavar="M1,M2,...|none",
              help="Also bound every payoff on uniform grids of these sizes (exact LP while "
                   "small, certified bounds with their gaps beyond): by default from 25 points "
                   "to twice the calibration's resolution (150), to show how far the grid moves "
                   "the bounds; 'none' skips it.")
@click.option("--max-seconds", type=FINITE, default=10.0, show_default=True,
              help="Time budget per side of each certified solve of --grid-sizes.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed.")
@click.option("--pricer", "pricer_specs", multiple=True, metavar="NAME=MODULE:FUNC",
              help="Extra pricer f(marginals, payoff) -> float shown beside the calibrated "
                   "price, with its timing (repeatable), e.g. neural=deepquant.neural.pricer:f.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def demo_command(chain_path, out_dir, expiries, grid_step, n_paths, grid_sizes, max_seconds,
                 seed, pricer_specs, as_json):
    """The main job: chain -> calibrated marginals -> exact bounds, calibrated price, widenings
    and a delta-hedge backtest for an Asian call, a lookback and a forward-start straddle."""
    import importlib
    from dataclasses import replace

    from deepquant.cli.output import (
        MAX_GRID_SIZE,
        activity,
        console,
        fail,
        fail_option,
        parse_list,
        print_json,
        table,
    )
    from deepquant.demo import DemoConfig, run_demo

    try:
        cfg = DemoConfig(expiries=tuple(parse_list(expiries, "--expiries",
                                                   what="tenors or dates", noun="expiry")),
                         seed=seed)
        if grid_step is not None:
            cfg = replace(cfg, grid_step=grid_step)
        if n_paths is not None:
            cfg = replace(cfg, n_paths=n_paths)
        if grid_sizes.strip().lower() in ("", "none"):
            cfg = replace(cfg, grid_sizes=())
        else:
            sizes = tuple(parse_list(grid_sizes, "--grid-sizes", int, what="integers",
                                     noun="size"))
            if max(sizes) > MAX_GRID_SIZE:
                fail(f"--grid-sizes must be at most {MAX_GRID_SIZE}, got {grid_sizes!r}")
            cfg = replace(cfg, grid_sizes=sizes, resolution_seconds=max_seconds)
    except ValueError as exc:
        fail_option(exc, _DEMO_OPTIONS)
    pricers = {}
    for spec in pricer_specs:
        name, _, target = spec.partition("=")
        mod_name, _, attr = target.partition(":")
        if not (name and mod_name and attr):
            fail(f"--pricer must look like NAME=MODULE:FUNC, got {spec!r}")
        try:
            pricers[name] = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            fail(f"--pricer {spec!r}: cannot load {target!r}: {exc}")
        if not callable(pricers[name]):  # before the market and calibration steps
            fail(f"--pricer {spec!r}: {target!r} is a {type(pricers[name]).__name__}, not a "
                 "function f(marginals, payoff) -> float")
    try:
        # a spinner with the current step; on a log, each step and a heartbeat line
        with activity("deepquant demo", disable=as_json) as status:
            res = run_demo(chain_path, out_dir, config=cfg, pricers=pricers,
                           progress=lambda msg: status.update(f"deepquant demo: {msg}"))
    except (ValueError, FileNotFoundError) as exc:
        fail_option(exc, {"pricer": "--pricer"})   # a pricer's bad answer names the option
    if as_json:
        print_json(res.to_dict())
        return
    extra = sorted({k for r in res.rows for k in r.extra})
    console.print(table(
        "MMOT bounds and calibrated price (undiscounted, fraction of forward)",
        ["payoff", "lower", "calibrated", "upper",
         *[c for k in extra for c in (k, f"{k} s")], "LP"],
        [[r.label, r.lower, r.calibrated, r.upper,
          *[r.extra[k][f] for k in extra for f in ("price", "seconds")],
          r.lp_status + (f" (tol {r.martingale_tol:g})" if r.martingale_tol else "")]
         for r in res.rows]))
    console.print(table(
        "Widenings in bp of the forward: transaction costs (Gamma), calibration (epsilon)",
        ["payoff", "Gamma lo bp", "Gamma up bp", "epsilon bp", "widened lower",
         "widened upper"],
        [[r.label, round(1e4 * r.gamma_lower, 3), round(1e4 * r.gamma_upper, 3),
          round(1e4 * r.epsilon, 3), r.widened_lower, r.widened_upper] for r in res.rows]))
    if res.quotes:
        from deepquant.demo import RANGE_NAMES, range_rows

        q = res.quotes
        console.print(table(
            "Three ranges: fitted marginals; fitted +- epsilon (seed calibration widening); "
            f"bid-ask quotes ({q['quotes']} quotes, {q['no_bid']} with a zero bid, "
            f"{q['no_ask']} with no ask; {q['widened_quotes']} bands widened to the fitted "
            "prices)",
            ["range", *(r.label for r in res.rows)],
            [*([name, *(f"{r[i]:.4g}..{r[i + 1]:.4g}" for r in range_rows(res.rows))]
               for name, i in zip(RANGE_NAMES, (1, 3, 5))),
             ["fitted inside", *(r[7] for r in range_rows(res.rows))]]))
    bt = {k: v for k, v in res.backtest.items() if isinstance(v, dict)}
    console.print(table("Asian call delta hedge: tracking error",
                        ["paths from", "mean", "std", "RMSE", "unhedged std"],
                        [[k, v["mean"], v["std"], v["rmse"], v["unhedged_std"]]
                         for k, v in bt.items()]))
    if res.neural is not None:
        from deepquant.demo_report import NEURAL_HYBRID_NOTE, neural_rows

        sec, drift = res.neural["seconds"], res.neural["drift"]
        console.print(table(
            f"Neural surrogate, calibrated prices (s: neural {sec['neural']:.3g}, classical "
            f"{sec['classical']:.3g}; drift: neural {drift['neural']:.1e}, classical "
            f"{drift['classical']:.1e})",
            ["payoff", "neural", "classical", "neural - classical"], neural_rows(res.neural)))
        console.print(NEURAL_HYBRID_NOTE)
    if res.resolution:
        from deepquant.demo_report import bounds_from

        console.print(table(
            "Bounds against the grid (exact LP while small, certified beyond; gap = bound "
            "- inner estimate)",
            ["payoff", "M", "lower", "upper", "method", "gap lower", "gap upper", "s",
             "bound from"],
            [[e["label"], e["size"], f"{e['lower']:.6f}", f"{e['upper']:.6f}", e["method"],
              f"{e['lower_gap']:.1e}", f"{e['upper_gap']:.1e}", f"{e['seconds']:.1f}",
              bounds_from(e) or "-"] for e in res.resolution]))
    console.print(f"calibration: {100 * res.calibration['fraction_inside']:.1f}% of quotes "
                  f"inside bid-ask; model drift {res.model.drift():.1e}; "
                  f"total {res.timings['total']:.1f} s")
    console.print(f"report: {res.out_dir / 'report.md'}")


COMMANDS.append(demo_command)


# ---------------------------------------------------------------------------- bounds (LP)
def _payoff_names():
    from deepquant.payoffs import PAYOFF_NAMES

    return list(PAYOFF_NAMES)


@click.command("bounds")
@click.argument("marginals_path", metavar="MARGINALS.npz", type=click.Path(dir_okay=False))
@click.option("--payoff", "payoff_name", required=True, type=click.Choice(_payoff_names()),
              help="Payoff name.")
@click.option("--strike", type=LEVEL, default=None,
              help="Strike > 0 (moneyness units of the grid; relative strike k for forward "
                   "starts).")
@click.option("--t1", type=int, default=None, help="Forward-start date (row index).")
@click.option("--t2", type=int, default=None, help="Forward-start maturity (row index).")
@click.option("--barrier", type=LEVEL, default=None,
              help="Barrier level > 0 (barrier payoffs).")
@click.option("--method",
              type=click.Choice(["auto", "lp", "certified", "ipm", "entropic", "path-lp"]),
              default="auto", show_default=True,
              help="auto: the interior point method for pairwise payoffs on large grids, the "
                   "exact LP when small, else certified bounds (a checked dual and its gap); or "
                   "force one: exact LP, certified, interior point (pairwise payoffs), entropic "
                   "plans, path-space LP.")
@click.option("--rtol", type=FiniteFloat(0.0, 1.0, min_open=True, max_open=True), default=1e-4,
              show_default=True,
              help="Certified and interior point methods: target relative gap between the "
                   "certified bound and the inner value.")
@click.option("--max-seconds", type=FiniteFloat(0.0, min_open=True, allow_inf=True),
              default=600.0, show_default=True,
              help="Certified method: time budget per side (the best certificate is kept).")
@click.option("--workers", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Certified and interior point methods: processes per bound. 2: the "
                   "interior point method solves both sides at once; the certified method "
                   "runs the inner value's path passes beside the polish of the certificate, "
                   "then a second polish, and keeps the tighter bound.")
@click.option("--eps", type=FINITE, default=None, help="Entropic regularisation (entropic only).")
@click.option("--martingale-tol", type=FINITE, default=0.0, show_default=True,
              help="Relaxed LP: tolerance on |E[dX | X, S]| (marginals not in convex order).")
@click.option("--sum-grid-size", type=click.IntRange(min=2), default=None,
              help="Running-sum grid size when sums do not fall on a lattice (Asian).")
@click.option("--grid-check", is_flag=True,
              help="Also compute the bounds with the laws moved onto every other grid point "
                   "(mass, mean and convex order kept) and show the change: the grid's own "
                   "effect on the bounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def bounds_command(marginals_path, payoff_name, strike, t1, t2, barrier, method, rtol,
                   max_seconds, workers, eps, martingale_tol, sum_grid_size, grid_check,
                   as_json):
    """Model-free lower and upper bounds of a payoff over martingales with MARGINALS.npz."""
    import math
    import time

    from deepquant.cli import output
    from deepquant.cli.output import (
        activity,
        console,
        err_console,
        fail,
        fail_option,
        print_json,
        refuse_unused,
        reported_failures,
        table,
    )
    from deepquant.market.marginals import Marginals
    from deepquant.mmot.bounds import bounds
    from deepquant.mmot.resolution import halved_bounds, halved_marginals
    from deepquant.payoffs import make_payoff, payoff_params, required_params

    params = dict(strike=strike, t1=t1, t2=t2, barrier=barrier)
    missing = [f"--{p}" for p in required_params(payoff_name) if params[p] is None]
    if missing:
        fail(f"--payoff {payoff_name} needs {' and '.join(missing)} (no default is assumed)")
    refuse_unused(method, {"rtol": ("auto", "certified", "ipm"),
                           "max_seconds": ("auto", "certified"),
                           "workers": ("auto", "certified", "ipm")})
    if sum_grid_size is not None and method == "path-lp":
        fail(f"--sum-grid-size {sum_grid_size} is not used by --method path-lp (it enumerates "
             "the paths, whose running sums are exact)")
    try:
        marginals = Marginals.load(marginals_path, check_convex=martingale_tol == 0)
        payoff = make_payoff(payoff_name, **params)
        payoff.last_date(marginals.n_dates)  # validates dates against the file
        if grid_check:   # before the work: a grid that halving leaves whole is no check
            try:
                halved_marginals(marginals)
            except ValueError as exc:
                fail(f"--grid-check: {exc}")
        options = {}
        if sum_grid_size is not None:
            options.update(sum_grid_size=sum_grid_size)
        if method in ("lp", "auto") and martingale_tol:
            options.update(martingale_tol=martingale_tol)
        if method in ("certified", "auto", "ipm"):
            options.update(workers=workers)
        if method in ("certified", "auto"):
            options.update(rtol=rtol, max_seconds=max_seconds)
            if not as_json:
                last = [-math.inf]

                def show(p):
                    # every stage on a terminal; on a log at most one per PLAIN_PROGRESS_SECONDS
                    if not err_console.is_terminal:
                        if time.monotonic() - last[0] < output.PLAIN_PROGRESS_SECONDS:
                            return
                        last[0] = time.monotonic()
                    if p.eps == 0.0:  # a column-generation round of the exact LP
                        err_console.print(
                            f"certified {p.side}: LP round {p.stage}  restricted value "
                            f"{p.inner:.6g}  {p.seconds:.1f} s", highlight=False)
                        return
                    err_console.print(
                        f"certified {p.side}: eps {p.eps:.2e}  bound {p.outer:.6g}  inner "
                        f"{p.inner:.6g}  marginal error {p.marginal_error:.1e}  "
                        f"{p.seconds:.1f} s", highlight=False)

                options.update(progress=show)
        if method == "ipm":
            options.update(rtol=rtol)
        if martingale_tol and method not in ("lp", "auto"):
            fail("--martingale-tol is only used by --method lp")
        # the LP and the entropic method report no iterations: a spinner while they run (on a
        # log, a heartbeat line every PLAIN_PROGRESS_SECONDS, the certified stages beside it)
        quiet = as_json or (err_console.is_terminal and "progress" in options)
        with activity(f"deepquant bounds: {method} on {marginals.size} points x "
                      f"{marginals.n_dates} dates", disable=quiet), reported_failures():
            res = bounds(marginals, payoff, method, eps=eps, **options)
        half = None
        if grid_check:
            with activity(f"deepquant bounds: grid check on every other of {marginals.size} "
                          "points", disable=quiet), reported_failures():
                half_marginals, half = halved_bounds(marginals, payoff, method, eps=eps,
                                                     **options)
    except ValueError as exc:
        fail_option(exc, {**output.PAYOFF_OPTIONS, "eps": "--eps"})
    out = res.to_dict()
    out.update(payoff=payoff_name, marginals=str(marginals_path), params=payoff_params(payoff))
    if half is not None:
        out["grid_check"] = dict(size=half_marginals.size, lower=half.lower, upper=half.upper,
                                 method=half.method, status=half.status, success=half.success,
                                 lower_change=res.lower - half.lower,
                                 upper_change=res.upper - half.upper)
    if as_json:
        print_json(out)
    else:
        rows = [("lower", res.lower), ("upper", res.upper), ("status", res.status),
                *([("message", res.message)] if not res.success else []),
                ("method", res.method), ("seconds lower", res.timings.get("lower")),
                ("seconds upper", res.timings.get("upper"))]
        if res.sizes:
            rows += [(f"{'LP' if res.method == 'lp' else 'chain'} {k}", v)
                     for k, v in res.sizes.items()]
        if res.method in ("certified", "ipm"):
            for name, side in (("lower", res.lower_side), ("upper", res.upper_side)):
                rows += [(f"{name} inner estimate", side.info.get("inner")),
                         (f"{name} certified gap", side.gap),
                         (f"{name} inner marginal error (L1)", side.primal_residual),
                         *([(f"{name} bound from", side.bound_from)] if side.bound_from
                           else [])]
        elif res.method != "entropic":
            rows += [("primal residual", res.primal_residual), ("gap", res.gap)]
        if res.martingale_tol:
            rows.append(("martingale tol", res.martingale_tol))
        if not res.exact:
            rows.append(("exact", "no (running-sum grid with splitting)"))
        if half is not None:
            k, n = half_marginals.size, marginals.size
            rows += [(f"lower on {k} points", half.lower), (f"upper on {k} points", half.upper),
                     (f"grid effect {k} -> {n} points, lower", res.lower - half.lower),
                     (f"grid effect {k} -> {n} points, upper", res.upper - half.upper),
                     *([(f"status on {k} points", half.status)] if not half.success else [])]
        console.print(table(f"bounds: {payoff_name} on {marginals_path}", ["name", "value"],
                            rows))
    if not res.success:
        raise SystemExit(1)


COMMANDS.append(bounds_command)
