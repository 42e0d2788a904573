"""CLI command ``quote-bounds``: model-free bounds from the bid-ask quotes of a chain."""

from __future__ import annotations

import click

from deepquant.cli.output import (
    LEVEL,
    MAX_GRID_SIZE,
    PAYOFF_OPTIONS,
    FiniteFloat,
    fail,
    fail_option,
    parse_list,
)

COMMANDS: list[click.Command] = []


def _payoff_names():
    from deepquant.payoffs import PAYOFF_NAMES

    return list(PAYOFF_NAMES)


def _range(text: str) -> tuple[float, float]:
    bounds = parse_list(text, "--fit-range", float, what="numbers LO,HI")
    if len(bounds) != 2 or not 0 < bounds[0] < 1 < bounds[1]:
        fail(f"--fit-range must be two numbers 0 < LO < 1 < HI, got {text!r}")
    return bounds[0], bounds[1]


@click.command("quote-bounds")
@click.option("--quotes", "chain_path", required=True, type=click.Path(dir_okay=False),
              help="Option chain CSV (Cboe or normalized layout).")
@click.option("--expiries", required=True,
              help="Comma-separated tenors or dates, e.g. 30d,60d,90d (dates 1..S; date 0 is "
                   "today, X_0 = 1).")
@click.option("--payoff", "payoff_name", required=True, type=click.Choice(_payoff_names()),
              help="Payoff name.")
@click.option("--strike", type=LEVEL, default=None,
              help="Strike > 0 (forward moneyness; relative strike k for forward starts).")
@click.option("--t1", type=int, default=None, help="Forward-start date (0 = today).")
@click.option("--t2", type=int, default=None, help="Forward-start maturity date.")
@click.option("--barrier", type=LEVEL, default=None,
              help="Barrier level > 0 (barrier payoffs).")
@click.option("--grid-size", type=click.IntRange(5, MAX_GRID_SIZE), default=15,
              show_default=True,
              help="Points of the uniform moneyness grid (1 on it).")
@click.option("--method", type=click.Choice(["lp", "certified"]), default="lp",
              show_default=True, help="Exact LP (small grids) or the certified sweep.")
@click.option("--fit-range", default="0.5,1.6", show_default=True,
              help="Quotes with K/F in LO,HI are used.")
@click.option("--thin", is_flag=True,
              help="Keep per expiry and type only the quote nearest each grid point.")
@click.option("--repair", type=click.Choice(["none", "minimal", "calibration"]), default="none",
              show_default=True,
              help="Bands no law on the grid meets: fail (none), widen them to the closest "
                   "arbitrage-free prices (minimal) or to the calibrated marginals' prices.")
@click.option("--max-seconds", type=FiniteFloat(0.0, min_open=True, allow_inf=True),
              default=600.0, show_default=True,
              help="Certified method: time budget per side (inf: no limit).")
@click.option("--coarse", default="25", show_default=True, metavar="N|none",
              help="Certified method on grids of at least 2N points: start each side from "
                   "the positions of the same side on an N-point subgrid (none: off).")
@click.option("--workers", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Certified method: processes per side (2: the inner value's path passes "
                   "run beside the polish of the positions).")
@click.option("--top", type=click.IntRange(min=0), default=5, show_default=True,
              help="Largest option positions shown per side.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def quote_bounds_command(chain_path, expiries, payoff_name, strike, t1, t2, barrier, grid_size,
                         method, fit_range, thin, repair, max_seconds, coarse, workers, top,
                         as_json):
    """Bounds of a payoff over every martingale law pricing each quote inside its bid-ask band,
    with the static option positions of each side's hedge (long at the ask, short at the bid)."""
    import warnings

    import numpy as np

    from deepquant.cli.output import console, fail, print_json, refuse_unused, table
    from deepquant.market.calibrate import calibrate_chain
    from deepquant.market.quotes import load_chain
    from deepquant.mmot.quote_bands import check_grid_span, load_bands, quote_grid
    from deepquant.mmot.quotes_bounds import bounds_from_quotes, verify_quote_hedge
    from deepquant.payoffs import make_payoff, payoff_params, required_params

    params = dict(strike=strike, t1=t1, t2=t2, barrier=barrier)
    missing = [f"--{p}" for p in required_params(payoff_name) if params[p] is None]
    if missing:
        fail(f"--payoff {payoff_name} needs {' and '.join(missing)} (no default is assumed)")
    refuse_unused(method, {"workers": ("certified",)})
    frange = _range(fit_range)
    if coarse.strip().lower() == "none":
        coarse_size = None
    else:
        try:
            coarse_size = int(coarse)
        except ValueError:
            fail(f"--coarse must be an integer or 'none', got {coarse!r}")
    specs = parse_list(expiries, "--expiries", what="tenors or dates", noun="expiry")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chain = load_chain(chain_path)
            bands, _ = load_bands(chain, specs, fit_range=frange)
            payoff = make_payoff(payoff_name, **params)
            payoff.last_date(bands.n_expiries + 1)
            grid = quote_grid(bands, grid_size)
            try:  # the grid spans the strikes --fit-range keeps: it must carry the laws
                check_grid_span(bands, grid, advice="widen --fit-range: the grid spans the "
                                "quoted strikes with K/F in it")
            except ValueError as exc:
                fail(f"--fit-range {fit_range}: {exc}")
            fitted = None
            if repair == "calibration" and bands.n_expiries < 2:
                fail("--repair calibration needs at least 2 expiries (the calibration fits "
                     "marginals in convex order across expiries); with one expiry use "
                     "--repair minimal")
            if repair == "calibration":  # the bands keep the zero-bid and one-sided quotes
                fitted = calibrate_chain(chain, specs, grid=grid, fit_range=frange).marginals
            options = dict(max_seconds=max_seconds, coarse=coarse_size, workers=workers) \
                if method == "certified" else {}
            res = bounds_from_quotes(bands, payoff, grid=grid, method=method, thin=thin,
                                     repair=None if repair == "none" else repair,
                                     fitted=fitted, **options)
    except (ValueError, RuntimeError) as exc:  # bad input; a solver that returned nothing
        hint = (" (here: --repair minimal or --repair calibration, --thin on coarse grids)"
                if "no arbitrage-free law" in str(exc) else "")
        fail_option(ValueError(f"{exc}{hint}"), PAYOFF_OPTIONS)
    out = res.to_dict()
    prob = res.info["problem"]
    positions = {}
    for side in ("lower", "upper"):
        s = getattr(res, f"{side}_side")
        hedge = s.info.get("hedge")
        if hedge is None:  # the side failed: its status and message say why
            positions[side] = None
            continue
        rows = []
        for e, a in enumerate(hedge.positions):
            b = prob.bands
            for i in np.flatnonzero(np.abs(a) > 1e-9):
                rows.append(dict(expiry=b.labels[e], type="C" if b.is_call[e][i] else "P",
                                 k=float(b.k[e][i]), units=float(a[i]),
                                 price=float(b.ask[e][i] if a[i] > 0 else b.bid[e][i])))
        rows.sort(key=lambda r: -abs(r["units"]))
        positions[side] = dict(cash=hedge.cash, option_cost=hedge.option_cost,
                               dominates=bool(verify_quote_hedge(hedge, res).ok),
                               positions=rows)
    out.update(payoff=payoff_name, params=payoff_params(payoff), chain=str(chain_path),
               expiries=list(prob.bands.labels), grid=[float(grid[0]), float(grid[-1])],
               dropped_quotes=res.info["dropped_quotes"], no_bid=res.info["no_bid"],
               no_ask=res.info["no_ask"], repaired=res.info["repaired"],
               band_widening=res.info["band_widening"],
               band_widening_share=res.info["band_widening_share"], hedges=positions)
    if method == "certified":
        out["coarse"] = {side: getattr(res, f"{side}_side").info.get("coarse")
                         for side in ("lower", "upper")}
    if as_json:
        print_json(out)
    else:
        rows = [("lower", res.lower), ("upper", res.upper), ("status", res.status),
                *([("message", res.message)] if not res.success else []),
                ("method", res.method), ("expiries", ", ".join(prob.bands.labels)),
                ("quotes used", res.sizes["quotes"]),
                ("  with no bid (ask only)", out["no_bid"]),
                ("  with no ask (bid only)", out["no_ask"]),
                ("quotes left out", out["dropped_quotes"]),
                ("bands widened by", out["band_widening"]),
                ("  share of the quotes' price", out["band_widening_share"]),
                ("seconds lower", res.timings["lower"]), ("seconds upper", res.timings["upper"])]
        if method == "certified":
            for name in ("lower", "upper"):
                side = getattr(res, f"{name}_side")
                rows += [(f"{name} inner estimate", side.info.get("inner")),
                         (f"{name} inner from", side.info.get("inner_kind")),
                         (f"{name} certified gap", side.gap),
                         *([(f"{name} bound from", side.bound_from)] if side.bound_from
                           else [])]
                if side.info.get("coarse"):
                    c = side.info["coarse"]
                    rows.append((f"{name} coarse start", f"{c['size']} points, bound "
                                 f"{c['bound']:.6g} in {c['seconds']:.1f} s"))
        console.print(table(f"quote-bounds: {payoff_name} on {chain_path}", ["name", "value"],
                            rows))
        for side in ("lower", "upper"):
            h = positions[side]
            if h is None:
                continue
            console.print(table(
                f"{side} hedge of {'' if side == 'upper' else '-'}payoff (dominates: "
                f"{h['dominates']}, cash {h['cash']:.6g}; long at the ask, short at the bid)",
                ["expiry", "type", "k", "units", "price"],
                [(r["expiry"], r["type"], r["k"], r["units"], r["price"])
                 for r in h["positions"][:top]]))
    if not res.success:
        raise SystemExit(1)


COMMANDS.append(quote_bounds_command)
