"""End to end, marginals -> ATM Asian price (N = 10, M = 150): neural vs classical, single and batched.

    python benchmarks/neural_end_to_end.py [--num 32] [--batch 32] [--repeats 3] [--seed 1]
        [--threads 1] [--json out.json]

Instances ``0..num-1`` of seed ``--seed`` (GBM / Merton / Heston in turn, N = 10, T in
[0.1, 0.5], on the model grid: the shipped checkpoint's own distribution).

Single (per instance, in one process, neural and classical alternating in order):

* neural: ``NeuralPricer.solve`` (guard and classical fallback as shipped) then
  ``NeuralSolution.price(AsianCall(1))``, which prices on the full-support chain of the
  network's grid (``price_batch(support="full")``): built once per payoff and N (timed apart,
  ``chain_build_once_ms``), then shared by every fresh model. ``union chain`` is the previous
  default for comparison: the chain of the instance's own support, built for each fresh
  model (its cache never hits on fresh marginals);
* classical: ``solve_entropic`` (tol 1e-9) then the same full-support pricing.

Batched: ``sweep(..., classical=False)`` on ``--batch`` instances at once (one forward pass,
row projections, one ``price_batch`` on the union chain), best of ``--repeats``;
``instances/s`` = batch / seconds. The classical batched figure is the same sweep's classical
side (solves one by one, one ``price_batch``). Medians throughout; 1 thread unless
``--threads``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from deepquant.mmot.entropic import solve_entropic
    from deepquant.mmot.model import _CHAINS, price_batch
    from deepquant.neural.data import build_marginals, instance_spec, model_grid
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import sweep
    from deepquant.payoffs import AsianCall

    threadpool_limits(args.threads)
    torch.set_num_threads(args.threads)
    grid = model_grid(150)
    payoff = AsianCall(strike=1.0)
    margs = [build_marginals(instance_spec(i, args.seed, n_choices=(10,)), grid)
             for i in range(max(args.num, args.batch))]
    pricer = NeuralPricer(threads=args.threads)
    sol0 = pricer.solve(margs[0])                   # trace the N = 10 shape outside the timing
    t0 = time.perf_counter()
    sol0.price(payoff)                              # the full-support chain, once
    chain_build_once = time.perf_counter() - t0

    def neural(m):
        t0 = time.perf_counter()
        sol = pricer.solve(m)
        t1 = time.perf_counter()
        p = sol.price(payoff)
        t2 = time.perf_counter()
        union = {k: v for k, v in _CHAINS.items()}
        price_batch(sol.marginals, sol.kernels[None], payoff, support="union")
        t3 = time.perf_counter()
        _CHAINS.clear()
        _CHAINS.update(union)                       # drop the union chain again
        return {"neural_solve_s": t1 - t0, "neural_price_s": t2 - t1, "neural_s": t2 - t0,
                "neural_price_union_chain_s": t3 - t2,
                "neural_union_chain_s": (t1 - t0) + (t3 - t2), "price_neural": p,
                "mode": sol.mode}

    def classical(m):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = solve_entropic(m, 1.0, tol=1e-9)
        t1 = time.perf_counter()
        p = float(price_batch(m, res.kernels[None], payoff, support="full")[0])
        t2 = time.perf_counter()
        return {"classical_solve_s": t1 - t0, "classical_s": t2 - t0, "price_classical": p}

    rows = []
    for i, m in enumerate(margs[:args.num]):
        a, b = (neural(m), classical(m)) if i % 2 == 0 else (classical(m), neural(m))[::-1]
        row = {"index": i, **a, **b}
        row["err_pct"] = 100 * abs(row["price_neural"] - row["price_classical"]) / \
            row["price_classical"]
        rows.append(row)
        print(f"{i:3d} {row['mode']:9s} neural {1e3 * row['neural_s']:7.1f} ms "
              f"(solve {1e3 * row['neural_solve_s']:5.1f}, price {1e3 * row['neural_price_s']:5.1f}"
              f"; union chain {1e3 * row['neural_price_union_chain_s']:6.1f})  classical "
              f"{1e3 * row['classical_s']:7.1f} ms  err {row['err_pct']:.3f}%", flush=True)

    def med(key):
        return statistics.median(r[key] for r in rows)

    single = {k: 1e3 * med(k) for k in rows[0] if k.endswith("_s")}
    single["chain_build_once_ms"] = 1e3 * chain_build_once
    single["classical_over_neural"] = statistics.median(
        r["classical_s"] / r["neural_s"] for r in rows)
    single["union_chain_over_full"] = statistics.median(
        r["neural_union_chain_s"] / r["neural_s"] for r in rows)
    single["mean_err_pct"] = float(np.mean([r["err_pct"] for r in rows]))
    single["fallback_pct"] = 100 * float(np.mean([r["mode"] != "neural" for r in rows]))

    batch = margs[:args.batch]
    best_n, best_c, res = np.inf, np.inf, None
    for _ in range(args.repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sweep(batch, payoff, pricer=pricer, classical=True)
        best_n, best_c = min(best_n, res.neural_seconds), min(best_c, res.classical_seconds)
    batched = {"batch": len(batch), "neural_s": best_n, "classical_s": best_c,
               "neural_pricing_s": res.neural_pricing_seconds,
               "neural_instances_per_s": len(batch) / best_n,
               "classical_instances_per_s": len(batch) / best_c,
               "speedup": best_c / best_n,
               "mean_err_pct": float(np.mean(res.errors_pct))}
    out = {"num": args.num, "seed": args.seed, "threads": args.threads,
           "load_average": os.getloadavg(), "single_ms": single, "batched": batched,
           "instances": rows}
    return emit(out, ("single_ms", "batched"), args.json)


if __name__ == "__main__":
    main()
