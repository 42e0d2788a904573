"""CLI commands of the market engine (see deepquant.cli): ``marginals`` and ``chain``.

Thin wrappers: parse, call ``deepquant.market.synthetic`` / ``deepquant.market.chain``, print a
rich summary (or JSON with ``--json``) and write files atomically.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from deepquant.cli.output import (
    FINITE,
    MAX_GRID_SIZE,
    check_figure,
    check_writable,
    console,
    err_console,
    fail,
    fail_option,
    parse_list,
    print_json,
    table,
    tail_warnings,
)

COMMANDS: list[click.Command] = []

_MODELS = click.Choice(["heston", "gbm", "merton"], case_sensitive=False)


def _parse_dates(text: str) -> np.ndarray:
    dates = np.array(parse_list(text, "--dates", float, what="year fractions like 0.25,0.5,1",
                                noun="date"))
    if np.any(dates < 0) or not np.any(dates > 0):
        fail(f"--dates must be finite year fractions >= 0 with at least one > 0, got {text!r}")
    return dates


def _parse_params(items: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--param must look like NAME=VALUE (e.g. rho=-0.5), got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            fail(f"--param {key.strip()} must be a number, got {value!r}")
    if "n_terms" in out:
        out["n_terms"] = int(out["n_terms"])
    return out


def _params_dict(params) -> dict[str, float]:
    return {k: v for k, v in vars(params).items() if not k.startswith("_")}


def _save_figure(m, model_calls, path: Path, fmt: str, title: str) -> None:
    """Densities (weights / cell width) and call curves per date in format ``fmt`` (checked by
    ``check_figure``); Agg canvas, atomic write."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deepquant.atomic import atomic_path

    grid = m.grid
    width = np.gradient(grid)  # (g_{j+1} - g_{j-1}) / 2 inside, one-sided at the ends
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_d, ax_c, ax_v = fig.subplots(1, 3)
    calls = m.call_prices()
    intrinsic = np.maximum(1.0 - grid, 0.0)
    colors = [f"C{i % 10}" for i in range(m.n_dates)]
    for t, w, c, mc, col in zip(m.times, m.weights, calls, model_calls, colors):
        ax_d.plot(grid, w / width, color=col, lw=1.2, label=f"t = {t:g}")
        ax_c.plot(grid, c, color=col, lw=1.2, label=f"t = {t:g}")
        tv = c - intrinsic
        ax_v.semilogy(grid[tv > 0], tv[tv > 0], color=col, lw=1.2, label=f"t = {t:g}")
        mtv = mc - intrinsic
        ax_v.semilogy(grid[mtv > 0], mtv[mtv > 0], color=col, lw=0.8, ls=":")
    ax_c.plot(grid, intrinsic, color="k", lw=0.8, ls="--", label="(1 - k)+")
    ax_d.set(xlabel="forward moneyness x", ylabel="weight / cell width", title="densities")
    ax_c.set(xlabel="strike k (moneyness)", ylabel="E[(X_t - k)+]", title="call curves")
    ax_v.set(xlabel="strike k (moneyness)", ylabel="C_t(k) - (1 - k)+",
             title="time value, log scale (dotted: model)")
    ax_v.set_ylim(bottom=1e-12)
    for ax in (ax_d, ax_c, ax_v):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)


@click.command("marginals")
@click.option("--model", type=_MODELS, default="heston", show_default=True,
              help="Synthetic model.")
@click.option("--dates", default="0.25,0.5,1", show_default=True,
              help="Comma-separated dates in years (increasing).")
@click.option("--grid-size", type=click.IntRange(3, MAX_GRID_SIZE), default=150,
              show_default=True,
              help="Number of moneyness grid points M.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Model parameter, repeatable (gbm: sigma; merton: sigma, jump_intensity, "
                   "jump_mean, jump_std; heston: kappa, theta, sigma_v, rho, v0).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("marginals.npz"), show_default=True,
              help="Output .npz (keys grid, marginals, times).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a figure of the densities and call curves (png, pdf or svg).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def marginals_command(model: str, dates: str, grid_size: int, params: tuple[str, ...],
                      out: Path, plot: Path | None, as_json: bool) -> None:
    """Synthetic marginals (exactly in convex order on the grid) from GBM, Merton or Heston."""
    from deepquant.market.synthetic import (
        default_grid,
        marginals_from_call_prices,
        model_params,
        tail_bounds,
    )

    times = _parse_dates(dates)
    check_writable(out, "--out")
    plot_format = check_figure(plot, "--plot")
    try:
        p = model_params(model, **_parse_params(params))
        grid = default_grid(p, float(np.max(times)), grid_size)
        model_calls = p.call_prices(times, grid)
        m = marginals_from_call_prices(grid, model_calls, times)
    except ValueError as exc:
        fail(str(exc))
    m.save(out)
    if plot is not None:
        _save_figure(m, model_calls, plot, plot_format, f"{model} marginals, M = {m.size}")
    tail_bound = tail_bounds(p, times, grid)
    moved = np.max(model_calls - m.call_prices(), axis=1)
    # one date has no pair to compare: no violation (the report's maximum over none is -inf)
    violation = float(m.check_convex_order().violation) if m.n_dates > 1 else 0.0
    rows = [
        {"t": float(t), "mean": float(mu), "variance": float(v),
         "support_min": float(grid[np.flatnonzero(w > 0)[0]]),
         "support_max": float(grid[np.flatnonzero(w > 0)[-1]]),
         "tail_bound": float(tb), "max_call_change": float(mv)}
        for t, mu, v, w, tb, mv in zip(m.times, m.means, m.variances(), m.weights, tail_bound,
                                       moved)
    ]
    warnings = tail_warnings(grid, m.times, tail_bound, "lower the volatility or the dates")
    summary = {
        "model": model, "params": _params_dict(p), "out": str(out),
        "plot": None if plot is None else str(plot), "grid_size": m.size,
        "grid_min": float(grid[0]), "grid_max": float(grid[-1]),
        "convex_order_violation": violation, "dates": rows, "warnings": warnings,
    }
    for line in warnings:
        err_console.print(f"[bold red]warning[/]: {line}")
    if as_json:
        print_json(summary)
        return
    console.print(
        f"[bold]{model}[/] marginals: {m.n_dates} dates on {m.size} points "
        f"[{grid[0]:.4g}, {grid[-1]:.4g}], worst convex-order violation {violation:.2e}"
    )
    console.print(table(
        "marginals (forward moneyness)",
        ["t", "mean", "variance", "support", "tail bound", "max call change"],
        [(r["t"], r["mean"], r["variance"], f"[{r['support_min']:.4g}, {r['support_max']:.4g}]",
          f"{r['tail_bound']:.2e}", f"{r['max_call_change']:.2e}") for r in rows],
    ))
    console.print(f"wrote {out}" + (f" and {plot}" if plot is not None else ""))


@click.command("chain")
@click.option("--model", type=_MODELS, default="heston", show_default=True,
              help="Pricing model.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the quote jitter, open interest and volume.")
@click.option("--quote-date", default="2024-01-02", show_default=True, help="ISO quote date.")
@click.option("--spot", type=FINITE, default=4750.0, show_default=True,
              help="Spot level (currency; at most 1e12, the quotes are in cents; at least what "
                   "keeps bids at every expiry, about 10 for the default models).")
@click.option("--rate", type=FINITE, default=0.045, show_default=True,
              help="Continuously compounded rate.")
@click.option("--dividend-yield", type=FINITE, default=0.015, show_default=True)
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Model parameter, repeatable (see `deepquant marginals --help`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("chain.csv"), show_default=True,
              help="Output CSV in the normalized Cboe long format.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def chain_command(model: str, seed: int, quote_date: str, spot: float, rate: float,
                  dividend_yield: float, params: tuple[str, ...], out: Path,
                  as_json: bool) -> None:
    """A synthetic Cboe-style option chain (bid/ask on SPX ticks); the built-in market data."""
    from deepquant.market.chain import synthetic_chain

    check_writable(out, "--out")
    try:
        ch = synthetic_chain(model, seed=seed, quote_date=quote_date, spot=spot, rate=rate,
                             dividend_yield=dividend_yield, params=_parse_params(params))
    except ValueError as exc:
        fail_option(exc, {"spot": "--spot", "rate": "--rate", "dividend_yield":
                          "--dividend-yield", "quote_date": "--quote-date"})
    ch.to_csv(out)
    rows = ch.summary()
    if as_json:
        print_json({"model": ch.model, "params": _params_dict(ch.params), "seed": seed,
                    "quote_date": ch.quote_date.isoformat(), "spot": ch.spot, "rate": ch.rate,
                    "dividend_yield": ch.dividend_yield, "n_quotes": len(ch), "out": str(out),
                    "expiries": rows})
        return
    console.print(f"[bold]{ch.model}[/] chain on {ch.quote_date.isoformat()}: spot {ch.spot:g}, "
                  f"r = {ch.rate:g}, q = {ch.dividend_yield:g}, {len(ch)} quotes")
    console.print(table(
        "expiries",
        ["expiry", "T", "forward", "strikes", "quotes", "ATM call", "ATM iv"],
        [(r["expiry"], f"{r['t']:.3f}", f"{r['forward']:.1f}",
          f"{r['strike_min']:g}-{r['strike_max']:g}", r["n_quotes"],
          f"{r['atm_call_bid']:.1f}/{r['atm_call_ask']:.1f}", f"{r['atm_iv']:.3f}")
         for r in rows],
    ))
    console.print(f"wrote {out}")


COMMANDS.extend([marginals_command, chain_command])
