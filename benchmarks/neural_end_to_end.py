"""End to end, marginals -> ATM Asian price (N = 10, M = 150): neural vs classical, single and batched.

    python benchmarks/neural_end_to_end.py [--num 24] [--batch 1000] [--threads 1]
        [--batch-threads 2] [--row-threads 1] [--price-threads 1] [--check 4] [--seed 1]
        [--json out.json]

Instances ``0..`` of seed ``--seed`` (GBM / Merton / Heston in turn, N = 10, T in [0.1, 0.5],
on the model grid: the shipped checkpoint's own distribution).

Single (``--num`` instances, one process, neural and classical alternating in order; the
network's trace, the full-support chain and the compiled kernels warmed up first, their one-off
cost reported as ``warm_up_ms``):

* neural: ``NeuralPricer.solve`` (guard and classical fallback as shipped) then
  ``NeuralSolution.price(AsianCall(1))`` (the full-support chain, ``price_batch(support="full")``);
* classical: ``solve_entropic`` (tol 1e-9) then the same full-support pricing.

Exactness (``--check`` instances): the fast price against the dense reference recursion
(``ChainPlan._expectation_dense``, no entry skipped) on the same kernels; max relative gap.

Batched: ``sweep(..., classical=False)`` on ``--batch`` instances (one forward pass per 64,
then one stacked row projection and one batched pricing per 2), once with ``--threads`` and once
with ``--batch-threads`` threads; ``instances/s`` = batch / seconds. Medians throughout.
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
    ap.add_argument("--num", type=int, default=24)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-threads", type=int, default=2)
    ap.add_argument("--row-threads", type=int, default=1,
                    help="single: threads of the row projection (NeuralPricer row_threads)")
    ap.add_argument("--price-threads", type=int, default=1,
                    help="single: threads of the price (the two halves of the meeting in the "
                         "middle side by side)")
    ap.add_argument("--check", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from deepquant.mmot.entropic import solve_entropic
    from deepquant.mmot.model import _CHAINS, chain_plan, price_batch
    from deepquant.neural.data import build_marginals, instance_spec, model_grid
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import sweep
    from deepquant.payoffs import AsianCall

    threadpool_limits(1)
    torch.set_num_threads(args.threads)
    grid = model_grid(150)
    payoff = AsianCall(strike=1.0)
    margs = [build_marginals(instance_spec(i, args.seed, n_choices=(10,)), grid)
             for i in range(max(args.num, args.batch))]
    pricer = NeuralPricer(threads=args.threads, row_threads=args.row_threads)
    t0 = time.perf_counter()
    pricer.solve(margs[0]).price(payoff, threads=args.price_threads)  # trace, chain, compiled kernels: once
    sweep(margs[:2], payoff, pricer=pricer, classical=False)
    warm_up = time.perf_counter() - t0

    def neural(m):
        t0 = time.perf_counter()
        sol = pricer.solve(m)
        t1 = time.perf_counter()
        p = sol.price(payoff, threads=args.price_threads)
        t2 = time.perf_counter()
        return {"neural_solve_s": t1 - t0, "neural_price_s": t2 - t1, "neural_s": t2 - t0,
                "price_neural": p, "mode": sol.mode, "_sol": sol}

    def classical(m):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = solve_entropic(m, 1.0, tol=1e-9)
        t1 = time.perf_counter()
        p = float(price_batch(m, res.kernels[None], payoff, support="full")[0])
        t2 = time.perf_counter()
        return {"classical_solve_s": t1 - t0, "classical_s": t2 - t0, "price_classical": p}

    rows, gaps = [], []
    for i, m in enumerate(margs[:args.num]):
        a, b = (neural(m), classical(m)) if i % 2 == 0 else (classical(m), neural(m))[::-1]
        sol = a.pop("_sol")
        row = {"index": i, **a, **b}
        row["err_pct"] = 100 * abs(row["price_neural"] - row["price_classical"]) / \
            row["price_classical"]
        if i < args.check and sol.mode == "neural":
            plan = chain_plan(next(reversed(_CHAINS.values())))
            ref = plan._expectation_dense(sol.kernels[None], sol.marginals.weights[0][None])[0]
            gaps.append(abs(row["price_neural"] / ref - 1))
        rows.append(row)
        print(f"{i:3d} {row['mode']:9s} neural {1e3 * row['neural_s']:6.1f} ms "
              f"(solve {1e3 * row['neural_solve_s']:5.1f}, price {1e3 * row['neural_price_s']:5.1f})"
              f"  classical {1e3 * row['classical_s']:7.1f} ms  err {row['err_pct']:.3f}%",
              flush=True)

    def med(key):
        return statistics.median(r[key] for r in rows)

    single = {k: 1e3 * med(k) for k in rows[0] if k.endswith("_s")}
    single["warm_up_ms"] = 1e3 * warm_up
    single["classical_over_neural"] = statistics.median(
        r["classical_s"] / r["neural_s"] for r in rows)
    single["mean_err_pct"] = float(np.mean([r["err_pct"] for r in rows]))
    single["fallback_pct"] = 100 * float(np.mean([r["mode"] != "neural" for r in rows]))
    single["max_rel_gap_vs_dense_reference"] = float(max(gaps, default=float("nan")))

    batch = margs[:args.batch]
    batched = {"batch": len(batch)}
    for th in dict.fromkeys((args.threads, args.batch_threads)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sweep(batch, payoff, pricer=pricer, classical=False, threads=th)
        batched[f"threads_{th}"] = {
            "seconds": res.neural_seconds, "instances_per_s": len(batch) / res.neural_seconds,
            "pricing_s": res.neural_pricing_seconds,
            "fallbacks": int(sum(m != "neural" for m in res.modes))}
        print(f"batched {len(batch)} on {th} thread(s): {res.neural_seconds:.1f} s, "
              f"{len(batch) / res.neural_seconds:.0f} instances/s", flush=True)
    out = {"num": args.num, "seed": args.seed, "threads": args.threads,
           "row_threads": args.row_threads, "price_threads": args.price_threads,
           "load_average": os.getloadavg(), "single_ms": single, "batched": batched,
           "instances": rows}
    return emit(out, ("single_ms", "batched"), args.json)


if __name__ == "__main__":
    main()
