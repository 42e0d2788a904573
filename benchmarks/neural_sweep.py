"""Scenario sweep: one payoff on K bumped volatility term structures, neural vs classical.

    python benchmarks/neural_sweep.py [--num 100] [--periods 10] [--json out.json]

Scenarios (``deepquant.neural.sweep.bumped_scenarios``): lognormal marginals of a forward
volatility term structure 0.30 -> 0.20 over N periods to T = 0.5 on the model grid, each
period's vol bumped by an independent uniform relative shift in [-10%, +10%] (seed 0). For the
ATM Asian call and the lookback call the script runs ``sweep`` (one batched forward pass, exact
row multipliers per scenario, batched pricing on the shared chain; then the classical solver
per scenario and the same batched pricing) with one thread, and reports the wall times of both
paths, the pricing part of each, the speed-up and the errors of the neural prices against the
classical ones (mean / median / max %).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--periods", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import bumped_scenarios, sweep
    from deepquant.payoffs import AsianCall, LookbackCall

    threadpool_limits(1)
    torch.set_num_threads(1)
    pricer = NeuralPricer(threads=1)
    times = np.linspace(0.0, 0.5, args.periods + 1)
    vols = np.linspace(0.30, 0.20, args.periods)
    rng = np.random.default_rng(0)
    scen = bumped_scenarios(times, vols, pricer.grid,
                            rng.uniform(-0.1, 0.1, (args.num, args.periods)))
    sweep(scen[:2], AsianCall(strike=1.0), pricer=pricer, classical=False)   # warm up
    out = {"num": args.num, "periods": args.periods, "threads": 1,
           "load_average": os.getloadavg(), "payoffs": {}}
    for pay in (AsianCall(strike=1.0), LookbackCall(strike=1.0)):
        res = sweep(scen, pay, pricer=pricer)
        s = res.summary()
        out["payoffs"][pay.name] = s
        print(f"{pay.name:14s} neural {s['neural_seconds']:7.2f} s (pricing "
              f"{s['neural_pricing_seconds']:6.2f})  classical {s['classical_seconds']:7.2f} s "
              f"(pricing {s['classical_pricing_seconds']:6.2f})  x{s['speedup']:5.2f}  err % "
              f"mean {s['mean_err_pct']:.3f} median {s['median_err_pct']:.3f} max "
              f"{s['max_err_pct']:.3f}  fallbacks {s['fallbacks']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
