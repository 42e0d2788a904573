"""Before / after on one machine: the single-instance and batched neural path of a checkout.

    PYTHONPATH=<checkout>/src python benchmarks/neural_speed_ab.py [--num 12] [--batch 64]
        [--repeats 1]

Instances ``0..num-1`` of seed 1 (GBM / Merton / Heston, N = 10, M = 150 model grid). Single:
``NeuralPricer.solve`` + ``NeuralSolution.price(AsianCall(1))`` per instance after a warm-up
(``--repeats`` passes over the instances), median wall and CPU (process) milliseconds of the
whole and of the solve and the price apart (``*_min_ms``: the fastest call); batched: ``sweep(classical=False)`` on ``--batch``
instances, one thread, wall and CPU seconds. Prints one JSON line; meant to be run for the old
and the new checkout in alternation (the machine is shared: CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from deepquant.neural.data import build_marginals, instance_spec, model_grid
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import sweep
    from deepquant.payoffs import AsianCall

    torch.set_num_threads(1)
    grid = model_grid(150)
    payoff = AsianCall(strike=1.0)
    margs = [build_marginals(instance_spec(i, 1, n_choices=(10,)), grid)
             for i in range(max(args.num, args.batch))]
    pricer = NeuralPricer(threads=1)
    pricer.solve(margs[0]).price(payoff)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep(margs[:2], payoff, pricer=pricer, classical=False)
    wall, cpu, prices = [], [], []
    parts = {"solve_wall": [], "solve_cpu": [], "price_wall": [], "price_cpu": []}
    for r in range(max(args.repeats, 1)):
        for m in margs[:args.num]:
            t0, c0 = time.perf_counter(), time.process_time()
            sol = pricer.solve(m)
            t1, c1 = time.perf_counter(), time.process_time()
            p = sol.price(payoff)
            t2, c2 = time.perf_counter(), time.process_time()
            if r == 0:
                prices.append(p)
            wall.append(t2 - t0)
            cpu.append(c2 - c0)
            for k, v in (("solve_wall", t1 - t0), ("solve_cpu", c1 - c0),
                         ("price_wall", t2 - t1), ("price_cpu", c2 - c1)):
                parts[k].append(v)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sweep(margs[:args.batch], payoff, pricer=pricer, classical=False)
    out = {"single_wall_ms": 1e3 * statistics.median(wall),
           "single_cpu_ms": 1e3 * statistics.median(cpu),
           "single_wall_min_ms": 1e3 * min(wall), "single_cpu_min_ms": 1e3 * min(cpu),
           **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in parts.items()},
           **{f"{k}_min_ms": 1e3 * min(v) for k, v in parts.items()},
           "batch": args.batch, "batch_wall_s": time.perf_counter() - t0,
           "batch_cpu_s": time.process_time() - c0,
           "batch_instances_per_s": args.batch / res.neural_seconds,
           "prices": prices, "batch_prices": res.neural.tolist(),
           "load_average": os.getloadavg()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
