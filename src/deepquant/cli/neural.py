"""CLI commands of the neural engine (see deepquant.cli): generate, validate-data, train,
refit-head,
evaluate. torch and the neural modules are imported inside the commands only."""

from __future__ import annotations

import click

from deepquant.cli.output import (
    ENTROPIC_TOL,
    FINITE,
    LEVEL,
    MAX_GRID_SIZE,
    FiniteFloat,
    activity,
    check_memory,
    check_workers,
    check_writable,
    console,
    err_console,
    fail,
    fail_option,
    parse_list,
    print_json,
    progress,
    reported_failures,
    table,
    tail_warnings,
)
from deepquant.neural.threads import max_torch_threads

TORCH_THREADS = click.IntRange(1, max_torch_threads())
"""``--threads`` of the commands that run torch (``refit-head``, ``evaluate``, ``sweep``): at
least 1, at most ``deepquant.neural.threads.MAX_THREADS_PER_CORE`` per core (a million
threads failed to start)."""

_GENERATE_OPTIONS = {"eps": "--eps", "tol": "--tol", "n_choices": "--n-choices",
                     "families": "--families", "support_scale": "--support-scale",
                     "backend": "--backend", "n_workers": "--workers"}
"""Parameters of ``generate_dataset`` and the options that set them (named in the errors)."""

_CHECKPOINT_HELP = ("Checkpoint folder or file, or 'broad' (shipped: fine-tuned on broader "
                    "families; docs/benchmarks-neural-training.md) [default: the shipped one].")

_FIT_OPTIONS = {"per_instance": "--per-instance", "iterations": "--iterations",
                "ridge": "--ridge", "device": "--device"}
"""The same for ``refit_head`` and ``leave_one_family_out``."""


@click.command("generate")
@click.option("--num", type=int, default=12000, show_default=True, help="Instances 0..num-1.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HDF5 output file.")
@click.option("--backend", default="local", show_default=True,
              help="serial | local | ray | auto | a Ray address.")
@click.option("--workers", type=int, default=0, show_default=True, help="Local workers (0 = all).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--eps", type=FINITE, default=1.0, show_default=True,
              help="Entropic eps (with c = 0 the plan is eps-free; potentials stored / eps).")
@click.option("--tol", type=ENTROPIC_TOL, default=1e-9,
              show_default=True,
              help="Teacher tolerance on the L1 marginal error and the drift (< 2: two laws are "
                   "at most 2 apart in L1, so any plan would meet 2).")
@click.option("--grid-size", type=click.IntRange(3, MAX_GRID_SIZE), default=150,
              show_default=True)
@click.option("--chunk", type=click.IntRange(min=1), default=16, show_default=True,
              help="Instances per crash-safe shard.")
@click.option("--n-choices", default="2,3,5,10,20,30,50", show_default=True,
              help="Allowed numbers of periods N (>= 1; the shipped network takes N <= 63).")
@click.option("--families", default="gbm,merton,heston", show_default=True,
              help="Families drawn in turn by index (also: termvol, a per-period vol term "
                   "structure; svi, SSVI smiles; chain, calibrations of the synthetic chain "
                   "with random parameters; spx, perturbed calibrations of the SPX chain at "
                   "$DEEPQUANT_SPX_DATA; rbergomi, rough Bergomi at random dates).")
@click.option("--support-scale", default=None,
              help="LO,HI: supports of random widths, X_t -> 1 + s (X_t - 1) with s uniform "
                   "in [LO, HI], tails below 1e-12 cut (e.g. 0.3,1).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def generate_cmd(num, out, backend, workers, seed, eps, tol, grid_size, chunk, n_choices,
                 families, support_scale, as_json):
    """Generate (or resume) the training set: GBM/Merton/Heston marginals and their entropic
    MMOT potentials. Rerunning after a kill keeps finished instances (none duplicated)."""
    from deepquant.neural.config import ModelConfig
    from deepquant.neural.data import generate_dataset, model_grid

    choices = tuple(parse_list(n_choices, "--n-choices", int,
                               what="integers >= 1 (e.g. 2,3,5)", noun="number of dates"))
    if num < 1:
        fail(f"--num must be >= 1, got {num}")
    # the network of `train` (ModelConfig, the shipped ones' too) takes at most max_dates dates
    max_periods = ModelConfig.max_dates - 1
    if any(n > max_periods for n in choices):
        fail(f"--n-choices {n_choices} has {max(choices)} periods, more than the model's "
             f"{max_periods} (ModelConfig.max_dates = {ModelConfig.max_dates} dates): train "
             "would refuse the data")
    scale = None
    if support_scale is not None:
        scale = _floats(support_scale, "--support-scale")
        if len(scale) != 2:
            fail(f"--support-scale must be LO,HI, got {support_scale!r}")
    check_writable(out, "--out")
    check_workers(backend)
    with progress(disable=as_json) as bar:
        task = bar.add_task("instances", total=num)

        def cb(done, total):
            bar.update(task, completed=done, total=total)

        try:
            summary = generate_dataset(out, num, seed=seed, eps=eps, tol=tol,
                                       grid=model_grid(grid_size), backend=backend,
                                       workers=workers, chunk=chunk, progress=cb,
                                       n_choices=choices,
                                       families=tuple(parse_list(families, "--families",
                                                                 noun="family")),
                                       support_scale=scale)
        except ValueError as exc:
            fail_option(exc, _GENERATE_OPTIONS)
        except RuntimeError as exc:  # a Ray cluster that does not answer (deepquant.parallel)
            raise click.ClickException(f"--backend {backend}: {exc}") from None
    if as_json:
        print_json(summary)
    else:
        console.print(f"{summary['instances']} instances in {out} ({summary['new']} new, "
                      f"{summary['seconds']:.1f} s)")


@click.command("validate-data")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--residual-tol", type=FiniteFloat(min=0), default=1e-6, show_default=True)
@click.option("--drift-tol", type=FiniteFloat(min=0), default=1e-6, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def validate_data_cmd(path, residual_tol, drift_tol, as_json):
    """Check a data file: NaNs, convex order, solver residuals, drift of the stored potentials."""
    from deepquant.neural.dataset_io import validate_dataset

    try:
        rep = validate_dataset(path, residual_tol=residual_tol, drift_tol=drift_tol)
    except ValueError as exc:
        fail(str(exc))
    summary = {"instances": rep.instances, "ok": rep.ok, "failures": len(rep.failures),
               "max_marginal_error": rep.max_marginal_error, "max_live_drift": rep.max_drift,
               "max_recomputed_drift": rep.max_recomputed_drift,
               "convex_violations": rep.convex_violations, "nan_count": rep.nan_count,
               "duplicates": rep.duplicates, "failed_periods_masked": rep.failed_periods,
               "periods": rep.periods, "first_failures": rep.failures[:10]}
    if as_json:
        print_json(summary)
    else:
        console.print(table(f"validate-data {path}", ["check", "value"],
                            [(k, v) for k, v in summary.items() if k != "first_failures"]))
        for line in rep.failures[:10]:
            err_console.print(f"[red]{line}")
    if not rep.ok:
        raise SystemExit(1)


@click.command("train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              required=True)
@click.option("--data", multiple=True,
              help="Override data.train (repeat for a mix of files read as one set).")
@click.option("--init", "init_from", default=None,
              help="Override train.init_from: start from this checkpoint's weights "
                   "(fine-tuning; an exported folder or a .pt).")
@click.option("--out-dir", default=None, help="Override train.out_dir.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Override train.max_steps.")
@click.option("--max-minutes", type=FiniteFloat(0.0, min_open=True), default=None,
              help="Override train.max_minutes.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if last.pt exists.")
@click.option("--export", "export_dir", default=None,
              help="After training, export best.pt (safetensors + config.json) here.")
@click.option("--device", default=None,
              help="Override train.device: cpu | cuda | cuda:N | auto.")
@click.option("--json", "as_json", is_flag=True)
def train_cmd(config_path, data, init_from, out_dir, max_steps, max_minutes, no_resume,
              export_dir, device, as_json):
    """Train the surrogate from a YAML config (resumes from <out_dir>/last.pt)."""
    import time

    import yaml

    from deepquant.cli import output
    from deepquant.neural.config import load_config
    from deepquant.neural.model import SEED_PARAMETER_COUNT
    from deepquant.neural.train import export_checkpoint, train

    over = {}
    check_writable(out_dir or None, "--out-dir", folder=True)
    check_writable(export_dir or None, "--export", folder=True)
    if data:
        over["data.train"] = data[0] if len(data) == 1 else list(data)
    if init_from:
        over["train.init_from"] = init_from
    if out_dir:
        over["train.out_dir"] = out_dir
    if max_steps is not None:  # 0 used to be dropped as falsy (the config's value ran)
        over["train.max_steps"] = max_steps
    if max_minutes is not None:
        over["train.max_minutes"] = max_minutes
    if no_resume:
        over["train.resume"] = False
    if device:
        over["train.device"] = device
    try:
        cfg = load_config(config_path, **over)
        last_step = [time.monotonic()]

        def cb(ev):
            if as_json:
                return
            if ev["kind"] == "step":  # between evaluations, at most one per PLAIN_PROGRESS_SECONDS
                if time.monotonic() - last_step[0] >= output.PLAIN_PROGRESS_SECONDS:
                    last_step[0] = time.monotonic()
                    err_console.print(f"step {ev['step']:6d}/{cfg.train.max_steps}  loss "
                                      f"{ev['loss']:.4g}", highlight=False)
            elif ev["kind"] == "data":
                err_console.print(f"unlabelled instances {ev['done']}/{ev['total']}")
            elif ev["kind"] == "eval":
                v = ev["val"]
                gap = (f", path KL {v['kl']:.3g}, sqrt KL {v['sqrt_kl']:.3g}, "
                       f"hcons {v['hcons']:.2g}" if "kl" in v else "")
                err_console.print(
                    f"step {ev['step']:6d}  val {v['total']:.4g} (dist {v['dist']:.3g}, "
                    f"mart {v['mart']:.3g}, h {v['hpen']:.2g}, max drift {v['drift_max']:.3g}"
                    f"{gap})  best {ev['best']:.4g}")

        res = train(cfg, callback=cb)
        if export_dir:
            export_checkpoint(f"{res.out_dir}/best.pt", export_dir,
                              note=f"deepquant train --config {config_path}")
    except ValueError as exc:
        fail(str(exc))
    except yaml.YAMLError as exc:  # a syntax error of the config file (multi-line from yaml)
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        fail(f"--config {config_path!r} is not valid YAML{where}: {problem}")
    summary = res.to_dict()
    summary.pop("history")
    summary["seed_n_params"] = SEED_PARAMETER_COUNT
    if as_json:
        print_json(summary)
    else:
        console.print(f"{cfg.model.kind}: {res.n_params:,} parameters (seed 001 §9.2 claims "
                      f"{SEED_PARAMETER_COUNT:,})")
        console.print(table("train", ["key", "value"], summary.items()))


@click.command("refit-head")
@click.option("--checkpoint", default=None,
              help="Starting checkpoint, or 'broad' [default: the shipped one].")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False),
              required=True, help="Labelled HDF5 data (deepquant generate).")
@click.option("--out", "out_dir", required=True, help="Output folder (safetensors + config).")
@click.option("--metric", type=click.Choice(["call", "kl"]), default="call", show_default=True)
@click.option("--per-instance", type=int, default=2, show_default=True,
              help="Random periods per instance in the fit.")
@click.option("--iterations", type=int, default=300, show_default=True, help="CG iterations.")
@click.option("--ridge", type=FINITE, default=1e-3, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-instances", type=click.IntRange(min=1), default=None)
@click.option("--threads", type=TORCH_THREADS, default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def refit_head_cmd(checkpoint, data_path, out_dir, metric, per_instance, iterations, ridge, seed,
                   max_instances, threads, as_json):
    """Refit the network's v-head under the projected model's error metric (Gauss-Newton)."""
    from deepquant.neural.pricer import default_checkpoint
    from deepquant.neural.refit import refit_head

    checkpoint = checkpoint or default_checkpoint()
    check_writable(out_dir, "--out", folder=True)
    try:
        with progress(disable=as_json) as bar, reported_failures():
            tasks: dict[str, int] = {}

            def cb(stage, done, total):
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            res = refit_head(checkpoint, data_path, out_dir, metric=metric,
                             per_instance=per_instance, iterations=iterations, ridge=ridge,
                             seed=seed, max_instances=max_instances, threads=threads,
                             progress=cb, note=f"deepquant refit-head --data {data_path} "
                             f"--metric {metric} --per-instance {per_instance} --iterations "
                             f"{iterations} --ridge {ridge} --seed {seed}")
    except ValueError as exc:
        fail_option(exc, _FIT_OPTIONS)
    full = res.to_dict()
    summary = {k: v for k, v in full.items() if k != "history"}
    if as_json:
        print_json(full)
    else:
        console.print(table("refit-head", ["key", "value"], summary.items()))


@click.command("evaluate")
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP)
@click.option("--test", "test_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--max-instances", type=click.IntRange(min=1), default=None)
@click.option("--threads", type=TORCH_THREADS, default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True,
              help="Where the network runs: cpu | cuda | cuda:N | auto.")
@click.option("--lofo-train", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Leave-one-family-out: refit the v-head on this labelled data file without "
                   "each family in turn and test on that family (beside the in-family table).")
@click.option("--lofo-dir", type=click.Path(file_okay=False), default=None,
              help="Where the leave-one-family-out checkpoints go (with --lofo-train).")
@click.option("--lofo-families", default=None,
              help="Families to hold out, comma-separated (default: all in both files).")
@click.option("--iterations", type=int, default=300, show_default=True,
              help="CG steps of each v-head refit (with --lofo-train).")
@click.option("--per-instance", type=int, default=3, show_default=True,
              help="Periods per instance in each v-head refit (with --lofo-train).")
@click.option("--ridge", type=FINITE, default=1e-3, show_default=True,
              help="Pull of each v-head refit towards the starting head (with --lofo-train).")
@click.option("--json", "as_json", is_flag=True)
def evaluate_cmd(checkpoint, test_path, max_instances, threads, device, lofo_train, lofo_dir,
                 lofo_families, iterations, per_instance, ridge, as_json):
    """Per-family table: ATM Asian, lookback and forward-start straddle price errors vs
    classical, marginal error, OOD-guard rate, timings (pure neural with exact row multipliers).
    With --lofo-train: the leave-one-family-out tables (v-head refits, trunk fixed)."""
    from deepquant.neural.evaluate import evaluate, leave_one_family_out

    if (lofo_train is None) != (lofo_dir is None):
        fail("--lofo-train and --lofo-dir go together")
    check_writable(lofo_dir, "--lofo-dir", folder=True)
    try:
        if lofo_train is None:
            rep = evaluate(test_path, checkpoint=checkpoint, max_instances=max_instances,
                           threads=threads, device=device)
        else:
            fams = (parse_list(lofo_families, "--lofo-families", noun="family")
                    if lofo_families else None)
            rep = leave_one_family_out(
                lofo_train, test_path, lofo_dir, checkpoint=checkpoint, families=fams,
                max_instances=max_instances, per_instance=per_instance, iterations=iterations,
                ridge=ridge,
                threads=threads, device=device,
                progress=lambda stage, fam: err_console.print(f"{stage}: {fam}"))
    except ValueError as exc:
        fail_option(exc, {**_FIT_OPTIONS, "families": "--lofo-families"})
    if as_json:
        print_json(rep)
        return
    tables = ([("", rep["families"])] if lofo_train is None else
              [(" - start", rep["start"]), (" - in family (head refit on all)", rep["in_family"]),
               (" - held out (head refit without the family)", rep["held_out"])])
    cols = ["family", "held out", "n", "asian % mean/max", "lookback %", "fwd-start %",
            "marg. err", "OOD %", "neural ms", "classical ms"]
    for title, fams in tables:
        rows = [[r["family"], "yes" if r["held_out"] else "", r["n"],
                 f"{r['mean_err_pct']:.3f}/{r['max_err_pct']:.2f}",
                 f"{r['mean_err_lookback_pct']:.3f}", f"{r['mean_err_fwdstart_pct']:.3f}",
                 f"{r['mean_marginal_error']:.4f}", f"{r['ood_pct']:.0f}",
                 f"{r['neural_ms']:.0f}", f"{r['classical_ms']:.0f}"] for r in fams]
        console.print(table(f"neural MMOT on {test_path}{title} ({rep['checkpoint']})",
                            cols, rows))


def _floats(text: str, name: str) -> list[float]:
    return parse_list(text, name, float, what="numbers", noun="number")


@click.command("sweep")
@click.option("--payoff", "payoff_name", default="asian-call", show_default=True,
              help="Payoff name (deepquant bounds --help lists them).")
@click.option("--strike", type=LEVEL, default=None,
              help="Strike (forward moneyness, > 0: the underlying is positive, so a call "
                   "struck at or below 0 is the linear forward and a put is worth 0).")
@click.option("--barrier", type=LEVEL, default=None, help="Barrier > 0 (barrier payoffs).")
@click.option("--maturity", type=FINITE, default=0.5, show_default=True,
              help="Last date in years; dates are equally spaced from 0.")
@click.option("--periods", type=int, default=10, show_default=True, help="Number of periods N.")
@click.option("--vols", default="0.2", show_default=True,
              help="Base forward volatility per period (one value, or N comma-separated).")
@click.option("--num", type=int, default=100, show_default=True, help="Scenarios K.")
@click.option("--bump", type=FINITE, default=0.1, show_default=True,
              help="Relative volatility bumps drawn uniformly in [-bump, bump] per period.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--classical/--no-classical", default=True, show_default=True,
              help="Also calibrate every scenario classically (errors, speed-up).")
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP)
@click.option("--device", default="cpu", show_default=True,
              help="Where the network runs: cpu | cuda | cuda:N | auto.")
@click.option("--threads", type=TORCH_THREADS, default=1, show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the per-scenario prices as JSON here.")
@click.option("--json", "as_json", is_flag=True)
def sweep_cmd(payoff_name, strike, barrier, maturity, periods, vols, num, bump, seed, classical,
              checkpoint, device, threads, out, as_json):
    """Price one payoff on NUM bumped volatility term structures (lognormal marginals per
    period on the model grid) with the neural pricer in one batched call, and classically."""
    import numpy as np

    from deepquant.atomic import write_json
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import bumped_scenarios, scenario_tail_bounds, sweep
    from deepquant.payoffs import PAYOFF_NAMES, make_payoff, payoff_params, required_params

    if payoff_name not in PAYOFF_NAMES:
        fail(f"--payoff must be one of {', '.join(PAYOFF_NAMES)}, got {payoff_name!r}")
    params = {"strike": strike, "barrier": barrier}
    missing = [f"--{p}" for p in required_params(payoff_name) if params.get(p) is None]
    if missing:
        fail(f"--payoff {payoff_name} needs {' and '.join(missing)} (no default is assumed)")
    for name, val, lo in (("--num", num, 1), ("--periods", periods, 1)):
        if val < lo:
            fail(f"{name} must be >= {lo}, got {val}")
    if not (np.isfinite(maturity) and maturity > 0):
        fail(f"--maturity must be > 0, got {maturity}")
    if not (np.isfinite(bump) and 0 <= bump < 1):
        fail(f"--bump must be in [0, 1), got {bump}")
    base = _floats(vols, "--vols")
    if not all(np.isfinite(v) and v > 0 for v in base):
        fail(f"--vols must be finite volatilities > 0, got {vols!r}")
    if len(base) not in (1, periods):
        fail(f"--vols needs 1 or --periods={periods} values, got {len(base)}")
    check_writable(out, "--out")
    try:
        payoff = make_payoff(payoff_name, **params)
        pricer = NeuralPricer(checkpoint, threads=threads, device=device)
        if periods + 1 > pricer.max_dates:  # each scenario would be a classical solve
            fail(f"--periods {periods} exceeds the model's {pricer.max_dates - 1} periods "
                 f"(max_dates={pricer.max_dates}); the sweep prices with the neural model")
        # every scenario's bumped laws and the network's calibrated ones are kept to the end
        m = pricer.grid.size
        check_memory(2.0 * num * (periods + 1) * m * 8, "--num", num,
                     f"2 x {periods + 1} dates x {m} grid points x 8 bytes per scenario: its "
                     "laws and the calibrated ones")
        times = np.linspace(0.0, maturity, periods + 1)
        rng = np.random.default_rng(seed)
        bumps = rng.uniform(-bump, bump, (num, periods))
        scen = bumped_scenarios(times, base, pricer.grid, bumps)
        # each scenario's last (widest) law against the network's fixed grid: the widest one
        # is warned about, and a result whose tails moved too far says success=False
        tails = scenario_tail_bounds(times, base, pricer.grid, bumps)
        warnings = tail_warnings(pricer.grid, [maturity], [float(tails.max())],
                                 "the network's grid is fixed: lower --vols or --maturity")
        for line in warnings:
            err_console.print(f"[bold red]warning[/]: {line}")
        with reported_failures(), activity(f"deepquant sweep: {num} scenarios", disable=as_json):
            res = sweep(scen, payoff, pricer=pricer, classical=classical, tail_bounds=tails)
    except ValueError as exc:
        fail(str(exc))
    summary = res.summary()
    summary.update(params=payoff_params(payoff), vols=base, maturity=maturity,
                   periods=periods, bump=bump, seed=seed, device=device, warnings=warnings)
    if out:
        write_json(out, {**summary, "neural": res.neural.tolist(), "modes": res.modes,
                         "classical": None if res.classical is None
                         else res.classical.tolist()})
    if as_json:
        print_json(summary)
    else:
        console.print(table(f"sweep: {payoff_name} on {num} bumped term structures", ["key",
                            "value"], summary.items()))
    if not res.success:  # the table or the JSON holds the status and the reason
        raise SystemExit(1)


COMMANDS: list[click.Command] = [generate_cmd, validate_data_cmd, train_cmd, refit_head_cmd,
                                 evaluate_cmd, sweep_cmd]
