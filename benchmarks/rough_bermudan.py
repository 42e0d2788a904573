"""Benchmarks of the rough engine; results go to docs/benchmarks-rough.md.

Usage (2 cores, one BLAS thread per process):

    python benchmarks/rough_bermudan.py rbergomi [--strikes 70 80 90 100 110 120] [--seed 1]
        [--dual signature|subsim] [--subsim-inner 256] [--subsim-outer 512]
        [--regression-paths N]
    python benchmarks/rough_bermudan.py bs
    python benchmarks/rough_bermudan.py ls-table1
    python benchmarks/rough_bermudan.py rqmc
    python benchmarks/rough_bermudan.py nested

Each prints a Markdown table (and a JSON line per case on stderr). Wall and CPU seconds are
reported per case; the machine is shared, so CPU seconds are the more stable number.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from deepquant.rough import (
    BermudanPricer,
    RoughBergomi,
    andersen_broadie,
    preset_pricer,
)

PUBLISHED = {70: 1.88, 80: 3.22, 90: 5.30, 100: 8.50, 110: 13.2, 120: 20.0}


def rbergomi_pricer(**kw) -> BermudanPricer:
    """Signature-martingale dual (``preset_pricer("rbergomi-signature")``)."""
    return preset_pricer("rbergomi-signature", **kw)


def rbergomi_subsim_pricer(**kw) -> BermudanPricer:
    """The sub-simulation dual (``preset_pricer("rbergomi")``, see its docstring)."""
    return preset_pricer("rbergomi", **kw)


def bs_pricer(**kw) -> BermudanPricer:
    """Black-Scholes limit (``preset_pricer("bs")``)."""
    return preset_pricer("bs", **kw)


def run(pricer, model, strike, seed):
    c0 = time.process_time()
    res = pricer(model, strike, rng=seed)
    return res, time.process_time() - c0


def fmt_ci(ci):
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def cmd_rbergomi(args):
    model = RoughBergomi(H=0.07, eta=1.9, rho=-0.9, xi0=0.09, r=0.05, S0=100.0)
    paths = {} if args.regression_paths is None else {"n_regression": args.regression_paths}
    if args.dual == "subsim":
        pricer = rbergomi_subsim_pricer(steps_per_date=args.steps_per_date,
                                        subsim_inner=args.subsim_inner,
                                        subsim_outer=args.subsim_outer,
                                        **paths)
    else:
        pricer = rbergomi_pricer(steps_per_date=args.steps_per_date, **paths)
    print("| K | lower (95% CI) | upper (95% CI) | midpoint | gap % | published | wall s | "
          "CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for K in args.strikes:
        res, cpu = run(pricer, model, float(K), args.seed)
        print(f"| {K:g} | {res.lower:.4f} {fmt_ci(res.lower_ci)} | {res.upper:.4f} "
              f"{fmt_ci(res.upper_ci)} | {res.value:.4f} | {100 * res.relative_gap:.2f} | "
              f"{PUBLISHED.get(int(K), float('nan'))} | {res.seconds:.1f} | {cpu:.1f} |",
              flush=True)
        print(json.dumps({**res.to_dict(), "cpu_seconds": cpu}), file=sys.stderr, flush=True)


def cmd_bs(args):
    model = RoughBergomi.black_scholes(sigma=0.2, r=0.05, S0=100.0)
    for fit in ("regression", "pathwise"):
        res, cpu = run(bs_pricer(dual_fit=fit, dual_ridge=1e-2), model, 100.0, args.seed)
        print(f"[{fit}, kept {res.dual_method}] BS limit, K=100, 12 dates: lower {res.lower:.4f} {fmt_ci(res.lower_ci)}, upper "
          f"{res.upper:.4f} {fmt_ci(res.upper_ci)}, gap {100 * res.relative_gap:.3f}%, "
          f"control-variate variance ratio {res.variance_reduction:.0f}, "
              f"{res.seconds:.1f} s wall, {cpu:.1f} s CPU (QuantLib FD: 6.0428)", flush=True)


def cmd_ls(args):
    from pathlib import Path

    data = json.loads((Path(__file__).resolve().parents[1] / "tests" / "rough" / "data"
                       / "longstaff_schwartz_2001_table1.json").read_text())
    print("| S0 | sigma | T | LS FD | LS LSM (se) | lower (95% CI) | upper (95% CI) | gap % | "
          "CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for S0, sigma, T, fd, _eur, lsm, se in data["rows"]:
        if S0 not in (36, 40, 44) or T not in args.maturities:
            continue
        pricer = bs_pricer(n_dates=int(50 * T), T=float(T), dual_fit="regression")
        model = RoughBergomi.black_scholes(sigma=sigma, r=data["rate"], S0=float(S0))
        res, cpu = run(pricer, model, data["strike"], args.seed)
        print(f"| {S0} | {sigma} | {T} | {fd} | {lsm} ({se}) | {res.lower:.4f} "
              f"{fmt_ci(res.lower_ci)} | {res.upper:.4f} {fmt_ci(res.upper_ci)} | "
              f"{100 * res.relative_gap:.2f} | {cpu:.1f} |", flush=True)


def cmd_rqmc(args):
    """Variance of batch means: RQMC (Sobol + bridge + antithetics) vs plain MC, same sizes."""
    out = []
    for name, model, spd in (("bs", RoughBergomi.black_scholes(sigma=0.2), 1),
                             ("rbergomi", RoughBergomi(), 8)):
        for method in ("rqmc", "mc"):
            pricer = (bs_pricer if name == "bs" else rbergomi_pricer)(
                method=method, n_regression=2**14, batch_size=2**12, min_batches=8,
                max_batches=8, steps_per_date=spd, dual_fit="regression")
            res, cpu = run(pricer, model, 100.0, args.seed)
            out.append((name, method, res))
            print(f"| {name} | {method} | {res.lower_plain_stderr:.5f} | {res.lower_stderr:.5f} "
                  f"| {res.upper_stderr:.5f} | {cpu:.1f} |", flush=True)
    for name in ("bs", "rbergomi"):
        q = next(r for n, m, r in out if n == name and m == "rqmc")
        p = next(r for n, m, r in out if n == name and m == "mc")
        print(f"{name}: variance ratio MC/RQMC plain lower {p.lower_plain_stderr**2 / q.lower_plain_stderr**2:.2f}, "
              f"lower with CV {p.lower_stderr**2 / q.lower_stderr**2:.2f}, upper "
              f"{p.upper_stderr**2 / q.upper_stderr**2:.2f}")


def cmd_nested(args):
    for name, model, pricer in (
        ("bs", RoughBergomi.black_scholes(sigma=0.2),
         bs_pricer(n_regression=2**14, dual_fit="regression")),
        ("rbergomi", RoughBergomi(), rbergomi_pricer(steps_per_date=4, n_regression=2**14,
                                                     dual_fit="regression")),
    ):
        policy, _ = pricer.fit(model, 100.0, rng=args.seed)
        res, _ = run(pricer, model, 100.0, args.seed)
        ab = andersen_broadie(pricer, model, 100.0, policy, n_outer=args.outer,
                              n_inner=args.inner, rng=args.seed + 1)
        print(f"{name}: least-squares signature dual upper {res.upper:.4f} ± {res.upper_stderr:.4f}; "
              f"Andersen-Broadie upper {ab.upper:.4f} ± {ab.upper_stderr:.4f} "
              f"({ab.n_outer} x {ab.n_inner} paths, {ab.seconds:.0f} s); lower {res.lower:.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["rbergomi", "bs", "ls-table1", "rqmc", "nested"])
    ap.add_argument("--strikes", type=float, nargs="*", default=[70, 80, 90, 100, 110, 120])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps-per-date", type=int, default=8)
    ap.add_argument("--outer", type=int, default=256)
    ap.add_argument("--inner", type=int, default=128)
    ap.add_argument("--maturities", type=float, nargs="*", default=[1, 2])
    ap.add_argument("--dual", choices=["signature", "subsim"], default="signature")
    ap.add_argument("--subsim-inner", type=int, default=256)
    ap.add_argument("--subsim-outer", type=int, default=2**9)
    ap.add_argument("--regression-paths", type=int, default=None,
                    help="default: the preset's (2^16 subsim, 2^15 signature)")
    args = ap.parse_args()
    with threadpool_limits(1):
        {"rbergomi": cmd_rbergomi, "bs": cmd_bs, "ls-table1": cmd_ls, "rqmc": cmd_rqmc,
         "nested": cmd_nested}[args.what](args)


if __name__ == "__main__":
    math.isfinite(0.0)
    np.seterr(all="ignore")
    main()
