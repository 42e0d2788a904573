"""CLI commands of the rough engine (see deepquant.cli): ``deepquant american``."""

from __future__ import annotations

import click

from deepquant.cli.output import console, err_console, print_json, progress, table

__all__ = ["american", "COMMANDS"]


@click.command("american")
@click.option("--model", type=click.Choice(["rbergomi", "bs"]), default="rbergomi",
              show_default=True, help="rough Bergomi, or its Black-Scholes limit (eta = 0).")
@click.option("--strike", type=float, required=True, help="strike K")
@click.option("--dates", "n_dates", type=int, default=12, show_default=True,
              help="exercise dates j T / dates, j = 1..dates (plus t = 0 unless --no-zero)")
@click.option("--runs", type=int, default=1, show_default=True,
              help="independent runs; >= 2 gives the ensemble t-intervals (seed 004 §3.3)")
@click.option("--option", type=click.Choice(["put", "call"]), default="put", show_default=True)
@click.option("--maturity", "T", type=float, default=1.0, show_default=True)
@click.option("--spot", "S0", type=float, default=100.0, show_default=True)
@click.option("--rate", "r", type=float, default=0.05, show_default=True)
@click.option("--sigma", type=float, default=0.2, show_default=True, help="volatility (bs)")
@click.option("--hurst", "H", type=float, default=0.07, show_default=True)
@click.option("--eta", type=float, default=1.9, show_default=True)
@click.option("--rho", type=float, default=-0.9, show_default=True)
@click.option("--xi0", type=float, default=0.09, show_default=True)
@click.option("--steps-per-date", type=int, default=None,
              help="simulation steps per exercise period [default: 8 rbergomi, 1 bs]")
@click.option("--sig-level", type=int, default=None,
              help="signature level of the exercise basis [default: 2 rbergomi, 0 bs]")
@click.option("--paths", "n_regression", type=int, default=None,
              help="regression paths (power of 2) [default: 2^16 rbergomi with the "
                   "sub-simulation dual, else 2^15]")
@click.option("--batch-size", type=int, default=2**13, show_default=True,
              help="pricing paths per RQMC batch (power of 2)")
@click.option("--max-batches", type=int, default=8, show_default=True)
@click.option("--patience", type=int, default=3, show_default=True)
@click.option("--upper", type=click.Choice(["auto", "subsim", "signature"]), default="auto",
              show_default=True,
              help="upper bound: sub-simulation Doob martingale of the regression value "
                   "function, or the fitted signature martingale; auto = subsim for rbergomi, "
                   "signature for bs (docs/benchmarks-rough.md)")
@click.option("--dual", "dual_fit", type=click.Choice(["pathwise", "regression"]),
              default="pathwise", show_default=True,
              help="signature martingale: least squares only, or refined by pathwise "
                   "minimisation")
@click.option("--mc", is_flag=True, help="plain Monte Carlo instead of randomized QMC")
@click.option("--no-zero", is_flag=True, help="no exercise at t = 0")
@click.option("--seed", type=int, default=None, help="random seed (default: fresh entropy)")
@click.option("--backend", default="local", show_default=True,
              help="ensemble executor: serial, local, ray, auto or a Ray address")
@click.option("--workers", type=int, default=0, show_default=True, help="0 = all cores")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="ensemble state file (JSON, rewritten after every finished run): rerun the "
                   "same command after an interruption to keep the finished runs")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def american(model, strike, n_dates, runs, option, T, S0, r, sigma, H, eta, rho, xi0,
             steps_per_date, sig_level, n_regression, batch_size, max_batches, patience, upper,
             dual_fit, mc, no_zero, seed, backend, workers, resume, as_json):
    """Bermudan/American option bounds under rough Bergomi (LSM lower, dual upper bound)."""
    from dataclasses import replace

    from deepquant.rough import RoughBergomi, ensemble, preset_pricer

    try:
        if model == "bs":
            m = RoughBergomi.black_scholes(sigma=sigma, r=r, S0=S0)
        else:
            m = RoughBergomi(H=H, eta=eta, rho=rho, xi0=xi0, r=r, S0=S0)
        bs = model == "bs"
        if upper == "auto":
            upper = "signature" if bs else "subsim"
        preset = "bs" if bs else ("rbergomi" if upper == "subsim" else "rbergomi-signature")
        opts = dict(n_dates=n_dates, T=T, exercise_at_zero=not no_zero,
                    batch_size=batch_size, max_batches=max_batches,
                    min_batches=min(4, max_batches), patience=patience,
                    method="mc" if mc else "rqmc", dual_fit=dual_fit)
        if steps_per_date is not None:
            opts["steps_per_date"] = steps_per_date
        if n_regression is not None:
            opts["n_regression"] = n_regression
        if bs and upper == "subsim":
            opts.update(dual="subsim", subsim_outer=min(2**9, batch_size))
        pricer = preset_pricer(preset, **opts)
        if sig_level is not None:
            pricer = replace(pricer, exercise_basis=replace(pricer.exercise_basis,
                                                            sig_level=sig_level))
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        if resume is not None and runs == 1:
            raise ValueError("--resume needs an ensemble (--runs >= 2)")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    title = (f"{option} K={strike:g}, {n_dates} dates, T={T:g}, "
             f"{'Black-Scholes sigma=' + format(sigma, 'g') if model == 'bs' else 'rough Bergomi'}")
    try:
        if runs == 1:
            from threadpoolctl import threadpool_limits

            # one BLAS thread: small dense least squares are slower with 2 (DESIGN §7)
            with progress(disable=as_json) as bar, threadpool_limits(1):
                task = bar.add_task("pricing batches", total=max_batches)
                res = pricer(m, strike, option=option, rng=seed,
                             callback=lambda b, h: bar.update(task, completed=b))
                bar.update(task, total=res.n_batches, completed=res.n_batches)
            out = res.to_dict()
            # one run: [low end of the lower CI, high end of the upper CI] holds the price
            # with >= 90% confidence (two one-sided 97.5% statements)
            out["price_ci"] = [res.lower_ci[0], res.upper_ci[1]]
            rows = [("lower", res.lower, res.lower_stderr, *res.lower_ci),
                    ("upper", res.upper, res.upper_stderr, *res.upper_ci),
                    ("midpoint", res.value, "", "", ""),
                    ("price interval", "", "", *out["price_ci"])]
            note = (f"{res.n_paths} pricing paths in {res.n_batches} batches ({res.stop_reason}),"
                    f" {res.n_regression} regression paths, gap {res.gap:.4g} "
                    f"({100 * res.relative_gap:.2f}%), {res.seconds:.1f} s")
        else:
            with progress(disable=as_json) as bar:
                task = bar.add_task("ensemble runs", total=runs)
                ens = ensemble(m, strike, runs=runs, option=option, pricer=pricer, rng=seed,
                               backend=backend, n_workers=workers, resume=resume,
                               progress=lambda done, _: bar.update(task, completed=done))
            out = ens.to_dict()
            rows = [("lower", ens.lower, "", *ens.lower_ci),
                    ("upper", ens.upper, "", *ens.upper_ci),
                    ("midpoint", ens.midpoint, "", *ens.midpoint_ci)]
            note = f"{runs} independent runs, {ens.seconds:.1f} s"
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    out.update(model=model, strike=strike, option=option, n_dates=n_dates)
    if as_json:
        print_json(out)
        return
    console.print(table(title, ["bound", "estimate", "stderr", "95% CI low", "95% CI high"],
                        rows))
    err_console.print(note)


COMMANDS: list[click.Command] = [american]
