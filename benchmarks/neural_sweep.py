"""Scenario sweep: one payoff on K bumped volatility term structures, neural vs classical.

    python benchmarks/neural_sweep.py [--num 1000] [--periods 10] [--payoffs asian,lookback]
        [--threads 2] [--json out.json]

Scenarios (``deepquant.neural.sweep.bumped_scenarios``): lognormal marginals of a forward
volatility term structure 0.30 -> 0.20 over N periods to T = 0.5 on the model grid, each
period's vol bumped by an independent uniform relative shift in [-10%, +10%] (seed 0). For the
payoff (ATM Asian call by default, ``--payoffs asian,lookback`` for both) the script runs
``sweep`` (one forward pass per 64 scenarios, then per chunk of 2 one stacked exact row
projection and one batched pricing on the shared chain; then the classical solver per scenario
and the same pricing in the same chunks) on one thread for both paths, side by side, and
reports the wall times, the pricing part of each, the speed-up and the errors of the neural
prices against the classical ones (mean / median / max %). The neural path alone is timed
again on ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--periods", type=int, default=10)
    ap.add_argument("--payoffs", default="asian")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--checkpoint", default=None,
                    help="checkpoint folder or packaged name ('broad'); default: the shipped one")
    args = ap.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import bumped_scenarios, sweep
    from deepquant.payoffs import AsianCall, LookbackCall

    threadpool_limits(1)
    torch.set_num_threads(1)
    pricer = NeuralPricer(args.checkpoint, threads=1)
    times = np.linspace(0.0, 0.5, args.periods + 1)
    vols = np.linspace(0.30, 0.20, args.periods)
    rng = np.random.default_rng(0)
    scen = bumped_scenarios(times, vols, pricer.grid,
                            rng.uniform(-0.1, 0.1, (args.num, args.periods)))
    sweep(scen[:2], AsianCall(strike=1.0), pricer=pricer, classical=False)   # warm up
    out = {"num": args.num, "periods": args.periods, "checkpoint": str(pricer.checkpoint),
           "threads": 1, "neural_threads": args.threads,
           "load_average": os.getloadavg(), "payoffs": {}}
    known = {"asian": AsianCall(strike=1.0), "lookback": LookbackCall(strike=1.0)}
    for pay in (known[name] for name in args.payoffs.split(",")):
        res = sweep(scen, pay, pricer=pricer)
        s = res.summary()
        if args.threads > 1:
            fast = sweep(scen, pay, pricer=pricer, classical=False, threads=args.threads)
            s[f"neural_seconds_{args.threads}_threads"] = fast.neural_seconds
            s[f"speedup_{args.threads}_threads"] = s["classical_seconds"] / fast.neural_seconds
            s["max_rel_gap_threaded"] = float(np.max(np.abs(fast.neural / res.neural - 1)))
        out["payoffs"][pay.name] = s
        print(f"{pay.name:14s} neural {s['neural_seconds']:7.2f} s (pricing "
              f"{s['neural_pricing_seconds']:6.2f})  classical {s['classical_seconds']:7.2f} s "
              f"(pricing {s['classical_pricing_seconds']:6.2f})  x{s['speedup']:5.2f}  err % "
              f"mean {s['mean_err_pct']:.3f} median {s['median_err_pct']:.3f} max "
              f"{s['max_err_pct']:.3f}  fallbacks {s['fallbacks']}\n{'':14s} neural outside "
              f"pricing {s['neural_outside_pricing_ms']:.2f} ms per scenario; pricing-only "
              f"bound x{s['speedup_bound']:5.2f}", flush=True)
        if args.threads > 1:
            print(f"{'':14s} neural on {args.threads} threads "
                  f"{s[f'neural_seconds_{args.threads}_threads']:7.2f} s  x"
                  f"{s[f'speedup_{args.threads}_threads']:5.2f}", flush=True)
    if args.json:
        from deepquant.atomic import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
