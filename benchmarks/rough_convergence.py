"""Time-step and exercise-date convergence of the rough Bergomi engine (docs/benchmarks-rough.md).

Usage (one process, one BLAS thread; results are appended case by case to the JSON file)::

    python benchmarks/rough_convergence.py steps [--steps 4 8 16 32] [--strikes 70 100 120]
        [--regression-paths 32768] [--max-batches 4] [--seed 7]
        [--out benchmarks/results/rough_convergence_steps.json] [--summary-only]
    python benchmarks/rough_convergence.py american [--dates 12 24 48] [--total-steps 96]
        [--coarse-steps 48] [--strikes 70 100 120]
        [--out benchmarks/results/rough_convergence_american.json]
    python benchmarks/rough_convergence.py dates [--dates 12 24 48] [--total-steps 96]
        [--strikes 100] [--out benchmarks/results/rough_convergence_dates.json]

``steps``: the ``rbergomi`` preset with ``steps_per_date`` in ``--steps`` (12 exercise dates),
each strike and step count one run; the table gives lower and upper bounds with 95% intervals,
and the observed rate p of the midpoint from consecutive differences,
p = log2(|P(s) - P(s/2)| / |P(2s) - P(s)|).
``converged``: ``price_converged`` per strike for each named configuration (``--configs``,
see ``CONFIGS``: earlier defaults, the coupled default, three coupled grids), alternating
configurations strike by strike so that they share the machine's load; the table gives the
extrapolated price, the discretisation error estimate against half the finest gap, and the CPU
seconds per strike.
``american``: ``price_american`` per strike (Bermudans with ``--dates`` on one grid of
``--total-steps`` steps plus a 12-date run on half the steps, or on each of
``--coarse-steps``, all coupled; the consecutive 12-date grid differences with their paired
standard errors are stored and printed; features
``--feature-steps`` times per period; per-level budgets: the library's "scaled" default,
``--level DATES FIELD VALUE`` instead, or ``--uniform-levels``).
``dates``: the same fine grid (``--total-steps`` steps over [0, T]) with 12, 24, 48 exercise
dates (``steps_per_date`` = total / dates), the Bermudan bounds and the Richardson extrapolation
in the number of dates (``deepquant.rough.extrapolate.richardson``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from deepquant.rough import RoughBergomi, preset_pricer


def _load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"cases": []}


def _save(path: Path, data: dict) -> None:
    from deepquant.atomic import write_json

    write_json(path, data)


def _row(res, cpu: float, **key) -> dict:
    return dict(key, lower=res.lower, upper=res.upper, lower_ci=list(res.lower_ci),
                upper_ci=list(res.upper_ci), lower_stderr=res.lower_stderr,
                upper_stderr=res.upper_stderr, midpoint=res.value,
                relative_gap=res.relative_gap, n_paths=res.n_paths, cpu_seconds=cpu,
                seconds=res.seconds)


def _run_cases(args, cases) -> dict:
    out = Path(args.out)
    data = _load(out)
    data["config"] = {"preset": "rbergomi", "regression_paths": args.regression_paths,
                      "batch_size": args.batch_size, "max_batches": args.max_batches,
                      "seed": args.seed, "model": "RoughBergomi(H=0.07, eta=1.9, rho=-0.9, "
                      "xi0=0.09, r=0.05, S0=100), put, T=1"}
    done = {(c["strike"], c["steps_per_date"], c["n_dates"]) for c in data["cases"]}
    model = RoughBergomi()
    for K, spd, nd in cases:
        if (K, spd, nd) in done or args.summary_only:
            continue
        pricer = preset_pricer("rbergomi", steps_per_date=spd, n_dates=nd,
                               n_regression=args.regression_paths, batch_size=args.batch_size,
                               min_batches=min(4, args.max_batches),
                               max_batches=args.max_batches)
        c0 = time.process_time()
        res = pricer(model, K, rng=args.seed)
        cpu = time.process_time() - c0
        data["cases"].append(_row(res, cpu, strike=K, steps_per_date=spd, n_dates=nd))
        _save(out, data)
        print(f"K={K:g} dates={nd} steps/date={spd}: [{res.lower:.4f}, {res.upper:.4f}] "
              f"+-({res.lower_stderr:.4f}, {res.upper_stderr:.4f}) cpu {cpu:.0f} s", flush=True)
    return data


def observed_rates(values: list[float]) -> list[float]:
    """p_i = log2(|P_i - P_{i-1}| / |P_{i+1} - P_i|) for grids refined by 2."""
    out = []
    for a, b, c in zip(values, values[1:], values[2:], strict=False):
        d1, d2 = abs(b - a), abs(c - b)
        out.append(math.log2(d1 / d2) if d1 > 0 and d2 > 0 else float("nan"))
    return out


def fit_rate(groups: list[list[dict]]) -> dict:
    """Weighted least squares fit of P_K(h) = A_K + c_K h^p, h = 1 / steps_per_date, with ONE
    rate p shared by the strikes (weights 1 / stderr of the midpoints); p with its standard
    error from the Gauss-Newton covariance, and A_K (the extrapolated limits)."""
    from scipy.optimize import least_squares

    h = [np.array([1.0 / c["steps_per_date"] for c in g]) for g in groups]
    y = [np.array([c["midpoint"] for c in g]) for g in groups]
    se = [np.array([0.5 * math.hypot(c["lower_stderr"], c["upper_stderr"]) for c in g])
          for g in groups]

    def resid(x):
        p = x[0]
        return np.concatenate([(y[i] - x[1 + 2 * i] - x[2 + 2 * i] * h[i] ** p) / se[i]
                               for i in range(len(groups))])

    x0 = [0.7] + [v for i in range(len(groups)) for v in (y[i][-1], -1.0)]
    sol = least_squares(resid, x0)
    J = sol.jac
    dof = max(J.shape[0] - J.shape[1], 1)
    cov = np.linalg.pinv(J.T @ J) * max(1.0, float(sol.fun @ sol.fun) / dof)
    return {"rate": float(sol.x[0]), "rate_stderr": float(math.sqrt(cov[0, 0])),
            "limits": [float(sol.x[1 + 2 * i]) for i in range(len(groups))],
            "limits_stderr": [float(math.sqrt(cov[1 + 2 * i, 1 + 2 * i]))
                              for i in range(len(groups))],
            "chi2_per_dof": float(sol.fun @ sol.fun) / dof}


def cmd_steps(args) -> None:
    data = _run_cases(args, [(float(K), s, 12) for K in args.strikes for s in args.steps])
    print("| K | steps/period | lower (95% CI) | upper (95% CI) | midpoint | CPU s |")
    print("|---|---|---|---|---|---|")
    for K in args.strikes:
        rows = sorted((c for c in data["cases"] if c["strike"] == float(K)),
                      key=lambda c: c["steps_per_date"])
        for c in rows:
            print(f"| {K:g} | {c['steps_per_date']} | {c['lower']:.4f} [{c['lower_ci'][0]:.4f},"
                  f" {c['lower_ci'][1]:.4f}] | {c['upper']:.4f} [{c['upper_ci'][0]:.4f}, "
                  f"{c['upper_ci'][1]:.4f}] | {c['midpoint']:.4f} | {c['cpu_seconds']:.0f} |")
        print(f"observed rates K={K:g}: {observed_rates([c['midpoint'] for c in rows])}")
    groups = [sorted((c for c in data["cases"] if c["strike"] == float(K)),
                     key=lambda c: c["steps_per_date"]) for K in args.strikes]
    fit = fit_rate(groups)
    data["fit"] = dict(fit, strikes=[float(K) for K in args.strikes])
    _save(Path(args.out), data)
    print(f"common rate p = {fit['rate']:.2f} +- {fit['rate_stderr']:.2f}; limits "
          + ", ".join(f"K={K:g}: {a:.4f} +- {e:.4f}" for K, a, e in
                      zip(args.strikes, fit["limits"], fit["limits_stderr"], strict=True))
          + f"; chi2/dof {fit['chi2_per_dof']:.2f}")


def cmd_dates(args) -> None:
    from deepquant.rough.extrapolate import richardson

    cases = [(float(K), args.total_steps // d, d) for K in args.strikes for d in args.dates]
    data = _run_cases(args, cases)
    for K in args.strikes:
        rows = sorted((c for c in data["cases"] if c["strike"] == float(K)),
                      key=lambda c: c["n_dates"])
        mids = [c["midpoint"] for c in rows]
        ses = [0.5 * math.hypot(c["lower_stderr"], c["upper_stderr"]) for c in rows]
        ex = richardson([c["n_dates"] for c in rows], mids, ses, rate=1.0)
        print(f"K={K:g}: Bermudan midpoints {mids} -> American {ex.value:.4f} "
              f"+- {ex.error:.4f} (Richardson, rate 1)")


CONFIGS = {
    # the previous default: two grids (4, 8 steps per period), features on every step
    "before": dict(steps=(4, 8), feature_steps=None, coupled=False),
    # features on a coarse grid (2 points per period), grids of 8 and 16 steps, independent
    "after": dict(steps=(8, 16), feature_steps=2, coupled=False),
    # the same grids on common random numbers (the current default)
    "coupled": dict(steps=(8, 16), feature_steps=2, coupled=True),
    # three coupled grids: the difference of two extrapolations and the observed rate
    "coupled3": dict(steps=(4, 8, 16), feature_steps=2, coupled=True),
}
"""Configurations of ``converged``; the pricer is the ``rbergomi`` preset with the scaled-down
sizes of the other commands."""


def cmd_converged(args) -> None:
    from deepquant.rough.extrapolate import price_converged

    out = Path(args.out)
    data = _load(out)
    done = {(c["config"], c["strike"]) for c in data["cases"]}
    model = RoughBergomi()
    for K in args.strikes:
        for name in args.configs:
            if (name, float(K)) in done or args.summary_only:
                continue
            cfg = CONFIGS[name]
            pricer = preset_pricer("rbergomi", n_regression=args.regression_paths,
                                   batch_size=args.batch_size,
                                   min_batches=min(4, args.max_batches),
                                   max_batches=args.max_batches,
                                   feature_steps=cfg["feature_steps"])
            c0 = time.process_time()
            res = price_converged(model, float(K), pricer=pricer, steps=cfg["steps"],
                                  coupled=cfg["coupled"], rng=args.seed)
            cpu = time.process_time() - c0
            tg = res.time_grid
            # the same runs' correction stderr if they had been independent
            unpaired = math.sqrt(sum((w * s) ** 2 for w, s in
                                     zip(tg.error_weights, tg.stderrs, strict=True)))
            row = dict(config=name, strike=float(K), steps=list(cfg["steps"]),
                       feature_steps=cfg["feature_steps"], coupled=cfg["coupled"],
                       value=res.value, lower=res.lower,
                       upper=res.upper, discretisation_error=res.discretisation_error,
                       discretisation_stderr=res.discretisation_stderr,
                       discretisation_stderr_unpaired=unpaired,
                       observed_rate=tg.observed_rate,
                       stderr=res.stderr, gap=res.gap, error=res.error, cpu_seconds=cpu,
                       runs=[_row(r, r.cpu_seconds, steps_per_date=s) for r, s in
                             zip(res.runs, cfg["steps"], strict=True)])
            data["cases"].append(row)
            _save(out, data)
            print(f"{name} K={K:g}: {res.value:.4f} disc {res.discretisation_error:.4f} "
                  f"+- {res.discretisation_stderr:.4f} (independent: +- {unpaired:.4f}) gap "
                  f"{res.gap:.4f} cpu {cpu:.0f} s", flush=True)
    print("| K | config | grids | extrapolated +- stderr | disc. error +- stderr (unpaired) | "
          "finest gap | disc <= gap/2 | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for c in sorted(data["cases"], key=lambda c: (c["strike"], c["config"])):
        if c["config"] not in args.configs:
            continue
        v = c["value"]
        se = c.get("discretisation_stderr")
        se_txt = "" if se is None else (f" +- {se:.4f} ({c['discretisation_stderr_unpaired']:.4f})")
        print(f"| {c['strike']:g} | {c['config']} | {', '.join(map(str, c['steps']))} "
              f"(features: {c['feature_steps'] or 'every step'}) | {v:.4f} +- "
              f"{c['stderr']:.4f} | "
              f"{c['discretisation_error']:.4f} ({100 * c['discretisation_error'] / v:.2f}%)"
              f"{se_txt} | {c['gap']:.4f} ({100 * c['gap'] / v:.2f}%) | "
              f"{'yes' if c['discretisation_error'] <= 0.5 * c['gap'] else 'no'} | "
              f"{c['cpu_seconds']:.0f} |")


def _level_options(items, uniform: bool):
    """``--level DATES FIELD VALUE`` triples as ``price_american(level_options=...)``; none:
    the library default ("scaled"), or None with ``--uniform-levels``."""
    if not items:
        return None if uniform else "scaled"
    out: dict = {}
    for nd, name, value in items:
        out.setdefault(int(nd), {})[name] = value if name == "dual" else int(value)
    return out


def _case_key(c: dict) -> tuple:
    """What identifies an ``american`` case besides the strike (older rows: one coarse grid of
    half the steps)."""
    lo = c.get("level_options", "scaled")
    return (c["total_steps"], tuple(c.get("coarse_total_steps", [c["total_steps"] // 2])),
            json.dumps(lo if isinstance(lo, list) else []), lo == "uniform")


def _difference_stderrs(res) -> list[float]:
    """Paired standard errors of the consecutive grid differences P(2n) - P(n) at the first
    dates (from the coupled batches' covariance of the midpoints)."""
    nd = len(res.dates.levels)
    idx = [*range(nd, len(res.runs)), 0]
    out = []
    for a, b in zip(idx, idx[1:], strict=False):
        w = np.zeros(len(res.runs))
        w[b], w[a] = 1.0, -1.0
        out.append(float(np.sqrt(max(w @ np.array(res.midpoint_cov) @ w, 0.0))))
    return out


def cmd_american(args) -> None:
    """``price_american`` per strike (coupled runs, features twice per period)."""
    from dataclasses import replace

    from deepquant.rough.extrapolate import price_american

    out = Path(args.out)
    data = _load(out)
    coarse = args.coarse_steps or [args.total_steps // 2]
    levels = _level_options(args.level, args.uniform_levels)
    key = (args.total_steps, tuple(coarse), json.dumps(args.level or [],), args.uniform_levels)
    done = {c["strike"] for c in data["cases"] if _case_key(c) == key}
    model = RoughBergomi()
    for K in args.strikes:
        if float(K) in done or args.summary_only:
            continue
        pricer = preset_pricer("rbergomi", n_regression=args.regression_paths,
                               batch_size=args.batch_size, min_batches=min(4, args.max_batches),
                               max_batches=args.max_batches)
        if args.feature_steps:
            pricer = replace(pricer, feature_steps=args.feature_steps)
        c0 = time.process_time()
        res = price_american(model, float(K), pricer=pricer, dates=tuple(args.dates),
                             total_steps=args.total_steps,
                             coarse_total_steps=coarse[0] if len(coarse) == 1 else coarse,
                             level_options=levels, rng=args.seed)
        cpu = time.process_time() - c0
        tg = res.time_grid
        row = dict(strike=float(K), dates=list(args.dates), total_steps=args.total_steps,
                   coarse_total_steps=coarse, grid_levels=list(tg.levels),
                   grid_midpoints=list(tg.values), grid_error_stderr=tg.error_stderr,
                   grid_observed_rate=tg.observed_rate,
                   grid_differences=list(np.diff(tg.values)),
                   grid_differences_stderr=_difference_stderrs(res),
                   midpoint_cov=[list(row) for row in res.midpoint_cov],
                   level_options=[list(x) for x in args.level or []] or
                   ("uniform" if args.uniform_levels else "scaled"),
                   feature_steps=args.feature_steps, value=res.value, lower=res.lower,
                   upper=res.upper, discretisation_error=res.discretisation_error,
                   discretisation_stderr=res.discretisation_stderr,
                   date_error=res.dates.error, date_error_stderr=res.dates.error_stderr,
                   grid_correction=res.time_grid.value - res.runs[0].value,
                   grid_error=res.time_grid.error, stderr=res.stderr, gap=res.gap,
                   error=res.error, relative_error=res.relative_error, cpu_seconds=cpu,
                   runs=[_row(r, r.cpu_seconds, n_dates=r.n_dates) for r in res.runs])
        data["cases"].append(row)
        _save(out, data)
        print(f"K={K:g}: American {res.value:.4f} error {res.error:.4f} "
              f"({100 * res.relative_error:.2f}%) cpu {cpu:.0f} s", flush=True)
    print("| K | Bermudan midpoints [lower, upper] (dates..., coarse grid) | American +- stderr | "
          "date error | grid correction | disc. error +- stderr | total error | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for c in sorted(data["cases"], key=lambda c: c["strike"]):
        runs = " / ".join(f"{r['midpoint']:.4f} [{r['lower']:.4f}, {r['upper']:.4f}]"
                          for r in c["runs"])
        v = c["value"]
        print(f"| {c['strike']:g} | {runs} | {v:.4f} +- {c['stderr']:.4f} | "
              f"{c['date_error']:.4f} | {c['grid_correction']:+.4f} (error "
              f"{c['grid_error']:.4f}) | {c['discretisation_error']:.4f} +- "
              f"{c['discretisation_stderr']:.4f} | {c['error']:.4f} "
              f"({100 * c['relative_error']:.2f}%) | {c['cpu_seconds']:.0f} |")
    for c in sorted(data["cases"], key=lambda c: c["strike"]):
        if "grid_differences" in c:
            diffs = ", ".join(f"{d:+.4f} +- {e:.4f}" for d, e in
                              zip(c["grid_differences"], c["grid_differences_stderr"],
                                  strict=True))
            print(f"K={c['strike']:g} 12 dates on {c['grid_levels']} steps: midpoints "
                  f"{', '.join(f'{v:.4f}' for v in c['grid_midpoints'])}; differences "
                  f"{diffs}; observed rate {c['grid_observed_rate']:.2f}; grid error "
                  f"{c['grid_error']:.4f} +- {c['grid_error_stderr']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("steps", "dates", "converged", "american"):
        q = sub.add_parser(name)
        q.add_argument("--strikes", type=float, nargs="+", default=[70.0, 100.0, 120.0])
        q.add_argument("--regression-paths", type=int, default=2**15)
        q.add_argument("--batch-size", type=int, default=2**13)
        q.add_argument("--max-batches", type=int, default=4)
        q.add_argument("--seed", type=int, default=7)
        q.add_argument("--out", default=f"benchmarks/results/rough_convergence_{name}.json")
        q.add_argument("--summary-only", action="store_true",
                       help="run nothing; tables and fit from the cases already in --out")
    sub.choices["steps"].add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32])
    sub.choices["dates"].add_argument("--dates", type=int, nargs="+", default=[12, 24, 48])
    sub.choices["dates"].add_argument("--total-steps", type=int, default=96)
    sub.choices["converged"].add_argument("--configs", nargs="+", choices=sorted(CONFIGS),
                                          default=["coupled"])
    sub.choices["american"].add_argument("--dates", type=int, nargs="+", default=[12, 24, 48])
    sub.choices["american"].add_argument("--total-steps", type=int, default=96)
    sub.choices["american"].add_argument("--feature-steps", type=int, default=2)
    sub.choices["american"].add_argument(
        "--coarse-steps", type=int, nargs="+", default=None,
        help="coarse grids of the 12-date time-grid runs, each half the next, the last half "
             "of --total-steps (default: one, --total-steps / 2)")
    sub.choices["american"].add_argument(
        "--level", nargs=3, action="append", metavar=("DATES", "FIELD", "VALUE"),
        help="a pricer field for the run with DATES dates (price_american level_options), "
             "e.g. --level 48 subsim_inner 512; repeatable (default: the scaled budgets)")
    sub.choices["american"].add_argument("--uniform-levels", action="store_true",
                                         help="the same pricer for every run (the earlier "
                                              "default)")
    args = p.parse_args()
    with threadpool_limits(1):
        {"steps": cmd_steps, "dates": cmd_dates, "converged": cmd_converged,
         "american": cmd_american}[args.cmd](args)


if __name__ == "__main__":
    main()
