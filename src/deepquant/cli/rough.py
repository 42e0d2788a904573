"""CLI commands of the rough engine (see deepquant.cli): ``deepquant american``.

The exercise payoff is ``--option put|call`` with ``--strike`` (the plain Bermudan), or
``--payoff NAME`` with ``--strike`` (and ``--barrier`` for the barrier payoffs), a payoff of
``deepquant.payoffs`` truncated at each exercise date (``deepquant.rough.exercise``), as in
``deepquant bounds --payoff``; ``--payoff-dates N`` puts its dates at i T / N.
"""

from __future__ import annotations

import warnings

import click

from deepquant.cli.output import (
    FINITE,
    LEVEL,
    RATE,
    FiniteFloat,
    check_workers,
    check_writable,
    console,
    err_console,
    fail_option,
    given,
    print_json,
    progress,
    reported_failures,
    table,
)

__all__ = ["american", "COMMANDS"]


def _power_of_two(value: int, option: str, low: int) -> None:
    if value < low or value & (value - 1):
        raise ValueError(f"{option} must be a power of 2 >= {low}, got {value}")


_LIBRARY_OPTIONS = {"H": "--hurst", "eta": "--eta", "rho": "--rho", "xi0": "--xi0",
                    "r": "--rate", "S0": "--spot", "T": "--maturity", "v0": "--v0",
                    "kappa": "--kappa", "theta": "--theta", "strike": "--strike",
                    "barrier": "--barrier", "n_dates": "--dates",
                    "payoff_dates": "--payoff-dates", "sig_level": "--sig-level",
                    "steps_per_date": "--steps-per-date",
                    "n_workers": "--workers", "device": "--device"}
"""Parameters of the models and pricers and the options that set them (named in the errors)."""


def _options_of(model: str) -> dict[str, str]:
    """``_LIBRARY_OPTIONS`` with ``sigma``: Black-Scholes ``--sigma``, Heston ``--vol-of-vol``."""
    return {**_LIBRARY_OPTIONS, "sigma": "--vol-of-vol" if model == "heston" else "--sigma"}


_MODEL_PARAMETERS = {"rbergomi": ("H", "eta", "rho", "xi0"), "bs": ("sigma",),
                     "heston": ("v0", "kappa", "theta", "vol_of_vol", "rho")}
"""The model options each ``--model`` reads (the ``american`` parameters' names)."""

_FLAGS = {"H": "--hurst", "eta": "--eta", "rho": "--rho", "xi0": "--xi0", "sigma": "--sigma",
          "v0": "--v0", "kappa": "--kappa", "theta": "--theta", "vol_of_vol": "--vol-of-vol",
          "grid_rate": "--grid-rate", "independent": "--independent", "grids": "--grids",
          "backend": "--backend", "workers": "--workers", "dual_fit": "--dual"}


def _check_unused(given: set, model: str, plan: dict, runs: int, dual: str) -> None:
    """Refuse an option given on the command line that this command would ignore (ValueError,
    one line naming it and what it needs): ``given`` holds the parameters' names."""
    used = set(_MODEL_PARAMETERS[model])
    for name in sorted(given - used, key=list(_FLAGS).index):
        owners = [m for m, names in _MODEL_PARAMETERS.items() if name in names]
        if owners:
            raise ValueError(f"{_FLAGS[name]} is a parameter of --model "
                             f"{' / '.join(owners)}, not of --model {model}")
    extrapolated = plan["american"] or plan["grids"] > 1
    for name in ("grid_rate", "independent"):
        if name in given and not extrapolated:
            raise ValueError(f"{_FLAGS[name]} needs several grids (--grids >= 2, --tol or "
                             f"--american); with --grids 1 it would be ignored")
    for name in ("backend", "workers"):
        if name in given and runs == 1:
            raise ValueError(f"{_FLAGS[name]} is for ensembles (--runs >= 2); one run would "
                             "ignore it")
    if "dual_fit" in given and dual == "subsim":
        raise ValueError("--dual fits the signature martingale (--upper signature); the "
                         "sub-simulation upper bound of this run would ignore it")


ROUGH_PAYOFFS = ("european-put", "european-call", "asian-call", "asian-put", "lookback-call",
                 "lookback-put", *(f"{k}-{o}" for k in ("up-and-out", "up-and-in",
                                                        "down-and-out", "down-and-in")
                                   for o in ("call", "put")))


def _payoff(name, option, strike, barrier):
    """The exercise payoff from --payoff/--option, --strike, --barrier (ValueError naming the
    option otherwise)."""
    from deepquant.payoffs import make_payoff, required_params
    from deepquant.rough import exercise_payoff

    if name is None:
        if barrier is not None:
            raise ValueError("--barrier needs a barrier --payoff (e.g. --payoff up-and-out-put)")
        return exercise_payoff(strike, option or "put")
    if option is not None:
        raise ValueError(f"--option is for the plain put/call; --payoff {name} names its side "
                         "(give one of them)")
    if barrier is None and "barrier" in required_params(name):
        raise ValueError(f"--payoff {name} needs --barrier (no default is assumed)")
    if barrier is not None and "barrier" not in required_params(name):
        raise ValueError(f"--barrier is for the barrier payoffs, not --payoff {name}")
    return exercise_payoff(make_payoff(name, strike=strike, barrier=barrier))


def _build(model, strike, n_dates, runs, T, S0, r, sigma, H, eta, rho, xi0, heston,
           steps_per_date, feature_steps,
           grids, grid_rate, american, tol, device, float32, sig_level, n_regression, batch_size,
           max_batches, patience, upper, dual_fit, mc, no_zero, resume, payoff_dates=None,
           payoff_name=None):
    """Validate the options (messages name the CLI option) and build (model, pricer, plan)."""
    from dataclasses import replace

    from deepquant.rough import (
        FEATURE_STEPS,
        TIME_STEP_RATE,
        Heston,
        RoughBergomi,
        preset_pricer,
    )

    if max_batches < 2:
        raise ValueError(f"--max-batches must be >= 2 (a confidence interval needs two "
                         f"batches), got {max_batches}")
    if patience < 1:
        raise ValueError(f"--patience must be >= 1, got {patience}")
    if not mc:
        _power_of_two(batch_size, "--batch-size", 16)
        if n_regression is not None:
            _power_of_two(n_regression, "--paths", 16)
    elif batch_size < 16 or batch_size % 2:
        raise ValueError(f"--batch-size must be an even number >= 16, got {batch_size}")
    if runs < 1:
        raise ValueError(f"--runs must be >= 1, got {runs}")
    if resume is not None and runs == 1:
        raise ValueError("--resume needs an ensemble (--runs >= 2)")
    if not (tol >= 0 and tol < 1):
        raise ValueError(f"--tol must be in [0, 1) (relative to the price), got {tol}")
    if float32 and device is None:
        raise ValueError("--float32 needs --device (the numpy simulator is float64)")
    if model == "bs":
        m = RoughBergomi.black_scholes(sigma=sigma, r=r, S0=S0)
    elif model == "heston":
        m = Heston(**heston)
    else:
        m = RoughBergomi(H=H, eta=eta, rho=rho, xi0=xi0, r=r, S0=S0)
    bs = model == "bs"
    if model == "heston" and upper == "subsim":
        raise ValueError("--upper subsim is specific to rough Bergomi; use --upper signature "
                         "(the default) for --model heston")
    if upper == "auto":
        # Black-Scholes: the signature dual is tight for a put or call, the sub-simulation one
        # for a path-dependent payoff (docs/benchmarks-rough.md, "Path-dependent payoffs")
        path_dep = payoff_name is not None and not payoff_name.startswith("european-")
        upper = "signature" if (bs and not path_dep) or model == "heston" else "subsim"
    preset = "bs" if bs else ("heston" if model == "heston" else
                              "rbergomi" if upper == "subsim" else "rbergomi-signature")
    opts = dict(n_dates=n_dates, T=T, exercise_at_zero=not no_zero, batch_size=batch_size,
                max_batches=max_batches, min_batches=min(4, max_batches), patience=patience,
                method="mc" if mc else "rqmc", dual_fit=dual_fit, device=device,
                dtype="float32" if float32 else "float64",
                subsim_outer=min(2**9, batch_size))
    if steps_per_date is not None:
        if steps_per_date < 1:
            raise ValueError(f"--steps-per-date must be >= 1, got {steps_per_date}")
        opts["steps_per_date"] = steps_per_date
    if n_regression is not None:
        opts["n_regression"] = n_regression
    if payoff_dates is not None:
        opts["payoff_dates"] = payoff_dates
    if bs and upper == "subsim":
        opts.update(dual="subsim")
    pricer = preset_pricer(preset, **opts)
    if sig_level is not None:
        pricer = replace(pricer, exercise_basis=replace(pricer.exercise_basis,
                                                        sig_level=sig_level))
    if grids is None:
        grids = 1 if bs or runs > 1 else 2
    if grids < 1:
        raise ValueError(f"--grids must be >= 1, got {grids}")
    if american and steps_per_date is None and pricer.steps_per_date % 4:
        # Black-Scholes: the scheme is exact, 4 steps per period let 4x the dates share it
        pricer = replace(pricer, steps_per_date=4)
    spd = pricer.steps_per_date
    if grids > 1 and (grids - 1 > spd.bit_length() or spd % 2 ** (grids - 1)):
        power = 2 ** (grids - 1) if grids <= 64 else f"2^{grids - 1}"  # no 300000-digit number
        raise ValueError(f"--steps-per-date must be divisible by 2^(grids-1) = {power} for "
                         f"--grids {grids}, got {spd}")
    if american and spd % 4:
        raise ValueError(f"--american runs --dates x 1, 2, 4 on one grid: --steps-per-date "
                         f"must be a multiple of 4, got {spd}")
    if runs > 1 and (grids > 1 or american or tol > 0):
        raise ValueError("--runs >= 2 (ensembles) needs --grids 1 and no --american/--tol")
    if grid_rate is None:  # Euler for Heston: weak order 1
        grid_rate = 1.0 if model == "heston" else TIME_STEP_RATE
    if not grid_rate > 0:
        raise ValueError(f"--grid-rate must be > 0, got {grid_rate}")
    check_writable(resume, "--resume")  # before the work, one line naming it
    if tol > 0 and not american:
        grids = max(grids, 2)
    if feature_steps is not None and feature_steps < 1:
        raise ValueError(f"--feature-steps must be >= 1, got {feature_steps}")
    if model == "rbergomi" and grids > 1 and not american:
        # time-grid runs: features twice per period buy grids of 8 and 16 steps
        if steps_per_date is None:
            pricer = replace(pricer, steps_per_date=16)
        if feature_steps is None:
            feature_steps = FEATURE_STEPS
    if feature_steps is not None:
        spd = pricer.steps_per_date
        # steps per period of every run: the grids, and with --american also the runs with
        # 2x and 4x the dates on the finest grid (a 24-step grid gives them 12 and 6)
        per_run = {spd // 2 ** k for k in range(grids if grids > 1 else 1)}
        if american:
            per_run |= {spd // 2, spd // 4}
        if any(feature_steps < n and n % feature_steps for n in per_run):
            raise ValueError(f"--feature-steps {feature_steps} must divide the steps per "
                             f"period of every run ({', '.join(map(str, sorted(per_run)[::-1]))})"
                             " or exceed them")
        pricer = replace(pricer, feature_steps=feature_steps)
    plan = dict(grids=grids, rate=grid_rate, american=american, tol=tol, bs=bs)
    return m, pricer, plan


@click.command("american")
@click.option("--model", type=click.Choice(["rbergomi", "bs", "heston"]), default="rbergomi",
              show_default=True,
              help="rough Bergomi, its Black-Scholes limit (eta = 0), or Heston (--v0, "
                   "--kappa, --theta, --vol-of-vol, --rho; signature dual)")
@click.option("--strike", type=LEVEL, required=True, help="strike K > 0")
@click.option("--dates", "n_dates", type=int, default=12, show_default=True,
              help="exercise dates j T / dates, j = 1..dates (plus t = 0 unless --no-zero)")
@click.option("--runs", type=int, default=1, show_default=True,
              help="independent runs; >= 2 gives the ensemble t-intervals (seed 004 §3.3)")
@click.option("--option", type=click.Choice(["put", "call"]), default=None,
              help="the plain Bermudan put or call [default: put]; or --payoff")
@click.option("--payoff", "payoff_name", type=click.Choice(ROUGH_PAYOFFS), default=None,
              help="exercise payoff of deepquant.payoffs, truncated at each exercise date: "
                   "the Asian on the average of the payoff dates so far, the lookback on the "
                   "running max/min, the barrier option on the barrier flag so far")
@click.option("--barrier", type=LEVEL, default=None,
              help="barrier level > 0 (barrier payoffs)")
@click.option("--payoff-dates", "payoff_dates", type=int, default=None,
              help="N: the payoff's dates are i T / N, i = 0..N (a multiple of --dates that "
                   "divides the simulation steps) [default: the exercise dates]")
@click.option("--maturity", "T", type=FINITE, default=1.0, show_default=True)
@click.option("--spot", "S0", type=FINITE, default=100.0, show_default=True)
@click.option("--rate", "r", type=RATE, default=0.05, show_default=True,
              help="interest rate, a decimal: 0.05 = 5%, |rate| <= 1")
@click.option("--sigma", type=FINITE, default=0.2, show_default=True, help="volatility (bs)")
@click.option("--hurst", "H", type=FINITE, default=0.07, show_default=True)
@click.option("--eta", type=FINITE, default=1.9, show_default=True)
@click.option("--rho", type=FINITE, default=-0.9, show_default=True)
@click.option("--xi0", type=FINITE, default=0.09, show_default=True)
@click.option("--v0", type=FINITE, default=0.04, show_default=True, help="Heston V_0")
@click.option("--kappa", type=FINITE, default=1.5, show_default=True, help="Heston mean reversion")
@click.option("--theta", type=FINITE, default=0.04, show_default=True,
              help="Heston long-run variance")
@click.option("--vol-of-vol", type=FINITE, default=0.5, show_default=True,
              help="Heston volatility of the variance")
@click.option("--steps-per-date", type=int, default=None,
              help="simulation steps per exercise period of the finest grid [default: 16 "
                   "rbergomi with several grids, 8 rbergomi with one, 1 bs]")
@click.option("--feature-steps", type=int, default=None,
              help="points per exercise period at which the regression features see the path "
                   "(a divisor of the steps per period) [default: 2 for rbergomi with several "
                   "grids, else every step]")
@click.option("--grids", type=int, default=None,
              help="time grids for the discretisation error estimate: the finest one and "
                   "coarser ones with half the steps each, Richardson-extrapolated; with "
                   "--american the coarser grids carry --dates dates, and with 3 or more the "
                   "error is the difference of the last two extrapolations "
                   "[default: 2 rbergomi, 1 bs (its scheme is exact)]")
@click.option("--grid-rate", "grid_rate", type=FiniteFloat(0.0, min_open=True), default=None,
              help="weak rate of the time-step extrapolation [default: 1 for heston, else the "
                   "measured rough Bergomi rate, "
                   "deepquant.rough.TIME_STEP_RATE]")
@click.option("--independent", is_flag=True,
              help="run the grids (and, with --american, the date counts) on independent "
                   "random numbers instead of one shared Brownian path per sample")
@click.option("--share-fit", is_flag=True,
              help="coupled grids: fit the policy and martingales on the finest grid only and "
                   "use them on every grid (each bracket still holds for its own grid; needs "
                   "--feature-steps <= the coarsest steps per period)")
@click.option("--american", is_flag=True,
              help="American price: Bermudan runs with --dates, 2x and 4x as many dates on one "
                   "grid, extrapolated in the number of dates, plus a time-grid correction")
@click.option("--tol", type=FINITE, default=0.0, show_default=True,
              help="precision target relative to the price (e.g. 0.005): add finer grids until "
                   "the discretisation error estimate is below it, and report whether the "
                   "duality gap is")
@click.option("--device", default=None,
              help="torch device for the path simulation (cpu, cuda, ...); default numpy")
@click.option("--float32", "float32", is_flag=True,
              help="simulate in float32 (with --device)")
@click.option("--sig-level", type=int, default=None,
              help="signature level of the exercise basis [default: 2 rbergomi, 0 bs]")
@click.option("--paths", "n_regression", type=int, default=None,
              help="regression paths (power of 2) [default: 2^16 rbergomi with the "
                   "sub-simulation dual, else 2^15]")
@click.option("--batch-size", type=int, default=2**13, show_default=True,
              help="pricing paths per RQMC batch (a power of 2 >= 16)")
@click.option("--max-batches", type=int, default=8, show_default=True,
              help="most pricing batches per run (>= 2)")
@click.option("--patience", type=int, default=3, show_default=True,
              help="stop after this many batches without a narrower interval (>= 1)")
@click.option("--upper", type=click.Choice(["auto", "subsim", "signature"]), default="auto",
              show_default=True,
              help="upper bound: sub-simulation Doob martingale of the regression value "
                   "function, or the fitted signature martingale; auto = subsim for rbergomi, "
                   "signature for bs (subsim for bs with a path-dependent --payoff; "
                   "docs/benchmarks-rough.md)")
@click.option("--dual", "dual_fit", type=click.Choice(["pathwise", "regression"]),
              default="pathwise", show_default=True,
              help="signature martingale: least squares only, or refined by pathwise "
                   "minimisation")
@click.option("--mc", is_flag=True, help="plain Monte Carlo instead of randomized QMC")
@click.option("--no-zero", is_flag=True, help="no exercise at t = 0")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="random seed (default: fresh entropy)")
@click.option("--backend", default="local", show_default=True,
              help="ensemble executor: serial, local, ray, auto or a Ray address")
@click.option("--workers", type=int, default=0, show_default=True, help="0 = all cores")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="ensemble state file (JSON, rewritten after every finished run): rerun the "
                   "same command after an interruption to keep the finished runs")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def american(model, strike, n_dates, runs, option, payoff_name, barrier, payoff_dates, T, S0, r, sigma, H, eta, rho, xi0, v0,
             kappa, theta, vol_of_vol, steps_per_date, feature_steps, grids, grid_rate,
             independent, share_fit, american, tol, device, float32, sig_level,
             n_regression, batch_size, max_batches, patience, upper, dual_fit, mc, no_zero,
             seed, backend, workers, resume, as_json):
    """Bermudan/American option under rough Bergomi: LSM lower and dual upper bounds per run;
    by default two time grids and a Richardson-extrapolated price with a discretisation error
    estimate (--grids 1: one run), --american for the American price."""
    from deepquant.rough import ensemble, price_american, price_converged

    try:
        heston = dict(v0=v0, kappa=kappa, theta=theta, sigma=vol_of_vol, rho=rho, r=r, S0=S0)
        m, pricer, plan = _build(model, strike, n_dates, runs, T, S0, r, sigma, H, eta, rho,
                                 xi0, heston, steps_per_date, feature_steps, grids, grid_rate, american, tol, device,
                                 float32, sig_level, n_regression, batch_size, max_batches,
                                 patience, upper, dual_fit, mc, no_zero, resume,
                                 payoff_dates, payoff_name)
        _check_unused({name for name in _FLAGS if given(name)}, model, plan, runs, pricer.dual)
        check_workers(backend)
        payoff = pricer.prepare_payoff(_payoff(payoff_name, option, strike, barrier))
        if share_fit and (independent or not (plan["american"] or plan["grids"] > 1)):
            raise ValueError("--share-fit needs coupled grids: --grids >= 2 or --american, "
                             "without --independent")
    except ValueError as exc:
        fail_option(exc, _options_of(model))

    name = {"bs": f"Black-Scholes sigma={sigma:g}", "heston": "Heston"}.get(model,
                                                                          "rough Bergomi")
    from deepquant.rough.exercise import option_name, payoff_label

    option = option_name(payoff)
    title = (f"{payoff_label(payoff)} K={strike:g}"
             + (f" barrier={barrier:g}" if barrier is not None else "")
             + f", {n_dates} dates, T={T:g}, {name}")
    try:
        with reported_failures(), warnings.catch_warnings():  # success and message are in
            # the output; an invalid bracket ends the command with its message (below)
            warnings.filterwarnings("ignore", message=".*invalid bracket",
                                    category=RuntimeWarning)
            if plan["american"] or plan["grids"] > 1:
                from threadpoolctl import threadpool_limits

                spd = pricer.steps_per_date
                with progress(disable=as_json) as bar, threadpool_limits(1):
                    task = bar.add_task("runs", total=None)
                    done = [0]

                    def tick(_):
                        done[0] += 1
                        bar.update(task, completed=done[0])

                    if plan["american"]:
                        res = price_american(m, payoff, pricer=pricer,
                                             dates=(n_dates, 2 * n_dates, 4 * n_dates),
                                             total_steps=n_dates * spd,
                                             coarse_total_steps=tuple(
                                                 n_dates * spd // 2**k
                                                 for k in range(plan["grids"] - 1, 0, -1))
                                             or None, rate=plan["rate"],
                                             tol=plan["tol"], coupled=not independent,
                                             share_fit=share_fit, rng=seed, callback=tick)
                    else:
                        steps = [spd // 2**k for k in range(plan["grids"] - 1, -1, -1)]
                        res = price_converged(m, payoff, pricer=pricer, steps=steps,
                                              rate=plan["rate"], tol=plan["tol"],
                                              max_steps_per_date=max(32, spd),
                                              coupled=not independent,
                                              share_fit=share_fit, rng=seed, callback=tick)
                out = res.to_dict()
                rows = [(f"{r.n_dates} dates, {r.model.split(' on ')[-1].split(' (')[0]}",
                         r.lower, r.upper, *r.lower_ci[:1], r.upper_ci[1]) for r in res.runs]
                rows += [("extrapolated", res.lower, res.upper, "", ""),
                         ("price (midpoint)", res.value, "", "", ""),
                         ("discretisation error", res.discretisation_error,
                          f"+- {res.discretisation_stderr:.2g}", "", ""),
                         ("total error", res.error, "", "", "")]
                columns = ["run", "lower", "upper", "95% CI low", "95% CI high"]
                note = (f"estimates {res.model}. {res.message}. Total error = discretisation + "
                        f"2 stderr + gap/2 = {res.error:.4g} ({100 * res.relative_error:.2f}%), "
                        f"{res.seconds:.1f} s")
                invalid = res.message if res.status == "crossed" else None
            elif runs == 1:
                from threadpoolctl import threadpool_limits

                # one BLAS thread: small dense least squares are slower with 2 (DESIGN §7)
                with progress(disable=as_json) as bar, threadpool_limits(1):
                    task = bar.add_task("pricing batches", total=max_batches)
                    res = pricer(m, payoff, rng=seed,
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
                columns = ["bound", "estimate", "stderr", "95% CI low", "95% CI high"]
                note = (f"{res.n_paths} pricing paths in {res.n_batches} batches "
                        f"({res.stop_reason}), {res.n_regression} regression paths, gap "
                        f"{res.gap:.4g} ({100 * res.relative_gap:.2f}%), {res.seconds:.1f} s; "
                        f"brackets {res.model} (no discretisation error estimate: --grids 1)"
                        + ("" if res.success or res.crossed else f"; {res.message}"))
                invalid = res.message if res.crossed else None   # the error line below
            else:
                with progress(disable=as_json) as bar:
                    task = bar.add_task("ensemble runs", total=runs)
                    ens = ensemble(m, payoff, runs=runs, pricer=pricer, rng=seed,
                                   backend=backend, n_workers=workers, resume=resume,
                                   progress=lambda done, _: bar.update(task, completed=done))
                out = ens.to_dict()
                rows = [("lower", ens.lower, "", *ens.lower_ci),
                        ("upper", ens.upper, "", *ens.upper_ci),
                        ("midpoint", ens.midpoint, "", *ens.midpoint_ci)]
                columns = ["bound", "estimate", "stderr", "95% CI low", "95% CI high"]
                note = f"{ens.message}, {ens.seconds:.1f} s"
                invalid = ens.message if any(r.crossed for r in ens.runs) else None
    except (ValueError, RuntimeError) as exc:
        fail_option(exc, _options_of(model))

    out.update(model=model, model_description=out.get("model", ""), strike=strike,
               option=option, payoff=payoff_label(payoff), barrier=barrier, n_dates=n_dates)
    if as_json:
        print_json(out)
    else:
        console.print(table(title, columns, rows))
        err_console.print(note)
    if invalid is not None:
        # an upper estimate below a lower bound of the price beyond sampling noise: the
        # numbers are printed for diagnosis, the command fails with the crossing (one line)
        click.echo(f"Error: {invalid}", err=True)
        raise SystemExit(1)


COMMANDS: list[click.Command] = [american]
