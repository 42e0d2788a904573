"""Where the neural sweep's time goes, per stage, under several chunk settings side by side.

    python benchmarks/neural_sweep_stages.py [--num 256] [--checkpoint broad] [--rounds 4]
        [--settings 8:8,2:2]

The scenarios of ``benchmarks/neural_sweep.py`` (ATM Asian call, N = 10, bumped term
structures, seed 0). Each setting ``a:b`` runs ``sweep(..., classical=False, chunk=a)`` with
``ChainPlan.CHUNK = b`` (scenarios per stacked projection and price; instances per pass of the
exact recursion); the settings alternate whole sweeps in one process, ``--rounds`` times, so
that they share the machine's load. Printed per setting: the median CPU ms per scenario of the
network forward pass (``NeuralPricer.predict``), the exact row projection with the guard's
residuals (``NeuralPricer._project``), the exact pricing (``price_batch``) and the whole sweep,
and the largest relative gap of its prices to the first setting's (the chunking does not enter
the arithmetic: 0).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--settings", default="8:8,2:2",
                    help="comma-separated sweep_chunk:recursion_chunk pairs")
    args = ap.parse_args(argv)
    settings = [tuple(int(v) for v in item.split(":")) for item in args.settings.split(",")]

    import torch
    from threadpoolctl import threadpool_limits

    import deepquant.mmot.model as model
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import bumped_scenarios, sweep
    from deepquant.payoffs import AsianCall

    threadpool_limits(1)
    torch.set_num_threads(1)
    pricer = NeuralPricer(args.checkpoint, threads=1)
    times = np.linspace(0.0, 0.5, 11)
    scen = bumped_scenarios(times, np.linspace(0.30, 0.20, 10), pricer.grid,
                            np.random.default_rng(0).uniform(-0.1, 0.1, (args.num, 10)))
    payoff = AsianCall(strike=1.0)
    sweep(scen[:4], payoff, pricer=pricer, classical=False)        # chain, compiled kernels
    spent: dict[str, float] = {}

    def timed(name, fn):
        def call(*a, **kw):
            t0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - t0
        return call

    pricer.predict = timed("network", pricer.predict)
    pricer._project = timed("projection", pricer._project)
    plain_price = model.price_batch
    model.price_batch = timed("pricing", plain_price)
    old_chunk = model.ChainPlan.CHUNK
    rows = {s: [] for s in settings}
    prices = {}
    try:
        for _ in range(args.rounds):
            for s in settings:
                model.ChainPlan.CHUNK = s[1]
                spent.clear()
                t0 = time.process_time()
                res = sweep(scen, payoff, pricer=pricer, classical=False, chunk=s[0])
                rows[s].append([spent["network"], spent["projection"], spent["pricing"],
                                time.process_time() - t0])
                prices[s] = res.neural
    finally:
        model.ChainPlan.CHUNK = old_chunk
        model.price_batch = plain_price
    first = prices[settings[0]]
    out = {"num": args.num, "rounds": args.rounds, "load_average": os.getloadavg(),
           "settings": {}}
    for s in settings:
        ms = np.median(np.array(rows[s]), axis=0) / args.num * 1e3
        gap = float(np.max(np.abs(prices[s] / first - 1)))
        out["settings"][f"{s[0]}:{s[1]}"] = dict(zip(
            ("network", "projection", "pricing", "total"), ms.tolist())) | {"max_rel_gap": gap}
        print(f"chunk {s[0]:3d}, recursion chunk {s[1]:3d}: network {ms[0]:.2f}  projection "
              f"{ms[1]:.2f}  pricing {ms[2]:.2f}  total {ms[3]:.2f} ms per scenario (CPU, "
              f"median of {args.rounds}); max rel gap {gap:.1e}", flush=True)
    print(f"load average {out['load_average']}")
    return out


if __name__ == "__main__":
    main()
