"""CLI commands for calibrating marginals to option chains (see deepquant.cli)."""

from __future__ import annotations

from pathlib import Path

import click

from deepquant.cli.output import MAX_GRID_SIZE, FiniteFloat, fail, parse_list

COMMANDS: list[click.Command] = []


def _parse_range(text: str) -> tuple[float, float]:
    bounds = parse_list(text, "--fit-range", float, what="numbers LO,HI (e.g. 0.3,2.0)")
    if len(bounds) != 2 or not 0 <= bounds[0] < 1 < bounds[1]:
        fail(f"--fit-range: need 0 <= LO < 1 < HI (two numbers), got {text!r}")
    return bounds[0], bounds[1]


def _parse_rates(text: str) -> tuple[float, float]:
    bounds = parse_list(text, "--rate-range", float, what="numbers LO,HI (e.g. -0.05,0.25)")
    if len(bounds) != 2 or not bounds[0] < bounds[1]:
        fail(f"--rate-range: need LO < HI (two numbers), got {text!r}")
    return bounds[0], bounds[1]


_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _parse_duration(text: str, option: str) -> float:
    """'90s', '5m', '5min', '1h' or a number of seconds -> seconds."""
    t = text.strip().lower()
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if t.endswith(u)), "")
    try:
        value = float(t[:len(t) - len(unit)]) * _UNITS.get(unit, 1.0)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value < float("inf")):
        raise click.BadParameter(f"{option}: expected a duration like 90s, 5m or 1h, got "
                                 f"{text!r}")
    return value


@click.command("calibrate")
@click.argument("chain", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--expiries", default="30d,60d,90d,120d,150d", show_default=True,
              help="Comma-separated tenors (30d, 6w, 3m, 1y: nearest available expiry), dates "
                   "YYYY-MM-DD[:ROOT], or ranges like 7d..1y (every expiry in it).")
@click.option("--grid-size", default=150, show_default=True, type=click.IntRange(10, MAX_GRID_SIZE),
              help="Points of the common moneyness grid.")
@click.option("--out", "out", default="marginals.npz", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Marginals file (.npz: grid, marginals, times).")
@click.option("--figures", "figures", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for densities.png and implied_vols.png.")
@click.option("--fit-range", default="0.3,2.0", show_default=True,
              help="Only quotes with LO <= K/F <= HI enter the program.")
@click.option("--reg", default=1e-2, show_default=True, type=FiniteFloat(min=0),
              help="Weight of the density-smoothness term (band violations count in "
                   "half-spreads; at most 1e6).")
@click.option("--window", default=0.4, show_default=True, type=FiniteFloat(min=0),
              help="Acceptance window |K/F - 1| <= WINDOW for the 'inside' columns.")
@click.option("--alpha", default=0.05, show_default=True,
              type=FiniteFloat(0, 1, min_open=True, max_open=True),
              help="Confidence level of the seed Cor. 6.3 half-width.")
@click.option("--rate-range", default="-0.05,0.25", show_default=True,
              help="Plausible annual rates LO,HI: an expiry whose put-call parity implies a rate "
                   "outside is an error (scaled or stale quotes).")
@click.option("--max-quote-spread", default="5m", show_default=True,
              help="Widest span of quote times in a chain merged from snapshots (e.g. 90s, 5m, "
                   "1h); the latest quote of a contract seen twice is kept.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead.")
def calibrate_command(chain: tuple[Path, ...], expiries: str, grid_size: int, out: Path,
                      figures: Path | None, fit_range: str, reg: float, window: float,
                      alpha: float, rate_range: str, max_quote_spread: str,
                      as_json: bool) -> None:
    """Calibrate arbitrage-free marginals to the bid-ask quotes of an option CHAIN (CSV; several
    files are snapshots of one chain, merged within --max-quote-spread).

    Reads a Cboe delayed-quotes CSV or a normalized CSV, fits forwards and discount factors by
    put-call parity, solves one convex program over all chosen expiries (probabilities with
    mean 1, increasing in convex order, prices inside bid-ask wherever possible) and writes the
    marginals in forward moneyness to OUT.
    """
    import warnings

    from deepquant.cli.output import (
        check_writable,
        console,
        fail_option,
        print_json,
        reported_failures,
        table,
    )
    from deepquant.market.calibrate import CalibrationWarning, calibrate_chain
    from deepquant.plots import calibration_figures

    specs = parse_list(expiries, "--expiries", what="tenors or dates", noun="expiry")
    rates = _parse_rates(rate_range)
    spread = _parse_duration(max_quote_spread, "--max-quote-spread")
    check_writable(out, "--out")
    if figures is not None:
        check_writable(figures, "--figures", folder=True)
    try:
        with warnings.catch_warnings(), reported_failures():
            warnings.simplefilter("ignore", CalibrationWarning)  # reported from quote_checks
            res = calibrate_chain(chain[0] if len(chain) == 1 else list(chain), specs, grid_size=grid_size,
                                  fit_range=_parse_range(fit_range), reg=reg, window=window,
                                  alpha=alpha, rate_range=rates, max_quote_spread=spread)
    except (ValueError, RuntimeError) as exc:  # bad input; a solver that returned nothing
        fail_option(exc, {"reg": "--reg", "window": "--window", "alpha": "--alpha",
                          "grid_size": "--grid-size"})
    res.marginals.save(out)
    written = [str(out)]
    if figures is not None:
        written += [str(p) for p in calibration_figures(res, figures)]
    if as_json:
        summary = res.to_dict()
        summary["written"] = written
        print_json(summary)
        return
    c = res.cleaning
    if c is not None:
        console.print(f"[bold]{c.path}[/]: {c.n_rows} contracts, dropped {c.n_expired} expired, "
                      f"{c.n_zero_bid} zero-bid, {c.n_crossed} crossed"
                      + (f", {c.n_negative} corrupt (negative bid or ask)" if c.n_negative
                         else "")
                      + (f", {c.n_superseded} superseded by a later snapshot"
                         if c.n_superseded else "")
                      + f"; kept {c.n_kept} two-sided; quote times span {c.quote_spread:g} s "
                      f"(--max-quote-spread {c.max_quote_spread:g} s)")
    rows = []
    for r in res.slices:
        price = r.discount * r.forward
        rows.append([r.label, f"{r.days:.1f}", f"{r.forward:.1f}", f"{r.discount:.4f}",
                     r.n_quotes, f"{100 * r.fraction_inside:.2f}",
                     f"{100 * r.fraction_inside_window:.2f}", f"{r.max_violation * price:.3g}",
                     f"{r.max_violation_spreads:.2f}", f"{r.half_width:.1e}"])
    console.print(table(
        f"Calibration: {res.marginals.n_dates} expiries, grid {res.marginals.size} points "
        f"[{res.marginals.grid[0]:.3g}, {res.marginals.grid[-1]:.3g}]",
        ["expiry", "days", "F", "D", "n", "in %", f"in % ±{100 * window:g}%", "viol pts",
         "viol spr", "δ(6.3)"], rows))
    if any(q.quote_spread > 0 for q in res.quotes):
        console.print("quote times span per expiry: " + ", ".join(
            f"{q.label} {q.quote_spread:g} s" for q in res.quotes))
    for msg in res.quote_checks:
        console.print(f"[bold yellow]quotes[/]: {msg}")
    if not res.success:
        console.print(f"[bold red]warning[/]: the solver did not reach an optimum ({res.message});"
                      " the marginals are valid but the fit may be poor")
    co = res.marginals.check_convex_order()
    console.print(f"solver {res.message} (primal residual {res.primal_residual:.1e}, cleaning "
                  f"moved {res.cleanup_l1.max():.1e} in L1); solve {res.solve_time:.2f} s, total "
                  f"{res.total_time:.2f} s; convex-order check: worst C_t - C_t+1 = "
                  f"{co.violation:.2e} ({'ok' if co.ok or co.violation <= 1e-9 else 'FAILED'})")
    console.print("wrote " + ", ".join(written))


COMMANDS.append(calibrate_command)
