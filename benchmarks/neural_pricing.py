"""Pricing a solved chain: the banded recursion against the dense plan and the sparse one.

    python benchmarks/neural_pricing.py [--repeats 7] [--batch 16] [--json out.json]

Instance: Heston marginals (kappa 2, theta 0.04, sigma_v 0.3, rho -0.5, v0 0.04), N = 10
periods to T = 0.5 on the neural model's 150-point grid, calibrated by the classical solver
(``CalibratedModel.calibrate``). For each payoff (ATM Asian call, lookback call, up-and-out
call with barrier 1.2, forward-start straddle 2 -> 5) the script reports, side by side in one
process with one BLAS thread (medians over ``--repeats``):

* ``build_ms``: building the augmented chain (``augment.build_chain``), which ``price`` now
  caches per grid, support and payoff;
* ``sparse_ms``: the forward recursion as it was written before (one scipy sparse matrix built
  per step; reproduced here verbatim as the baseline);
* ``dense_ms`` (before): ``ChainPlan._expectation_dense`` for one instance, the plan's dense
  recursion (one batched matmul on the full reachable-rows x support-columns rectangle per
  date, then the CSR statistic map), as ``expectation`` was before the banded kernel;
* ``plan_ms`` (after): ``ChainPlan.expectation`` for one instance (the banded numba step:
  kernel bands at 1e-14 of the row, joint entries above 1e-18 of the mass, BLAS per block);
* ``price_ms``: ``CalibratedModel.price`` on a warm cache (what a user calls, after);
* ``batch_dense_ms_per_instance`` / ``batch_ms_per_instance``: the dense and the banded
  recursion on ``--batch`` kernel sets at once, divided by the batch size;
* ``max_abs_diff``: |plan - sparse| (exact reference), ``bound``: the banded recursion's own
  bound on it (dropped mass x max |payoff|), ``dense_diff``: |dense - sparse|;
* ``cpu``: CPU time (``process_time``, the steadier figure on a shared machine), median and
  fastest call in ms, of ``price`` (the classical model on its own support) and of
  ``NeuralSolution.price`` (the shipped network's kernels, dense on the full support, priced
  on the full-support chain), timed interleaved.

Before and after are timed interleaved in the same process (each repeat runs both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def sparse_expectation(chain, kernels, law0):
    """The per-step sparse forward recursion (the implementation before ChainPlan)."""
    from scipy import sparse

    m = chain.size
    joint = chain.initial.multiply(law0[:, None]).toarray()
    for t in range(chain.last_date):
        q = joint.T @ kernels[t]
        n_t = q.shape[0]
        sel = sparse.csr_matrix(
            (q.ravel(), (np.tile(np.arange(m), n_t), np.arange(n_t * m))), shape=(m, n_t * m))
        joint = np.asarray((sel @ chain.transitions[t]).todense())
    return float(np.sum(joint * chain.terminal))


def _median_ms(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(out)


def _paired(fns, repeats, clock=time.perf_counter):
    """Samples in ms of several callables timed interleaved (one call of each per repeat)."""
    out = [[] for _ in fns]
    for _ in range(repeats):
        for o, fn in zip(out, fns):
            t0 = clock()
            fn()
            o.append(1e3 * (clock() - t0))
    return out


def _paired_ms(fns, repeats):
    """Wall-clock medians of several callables timed interleaved."""
    return [statistics.median(o) for o in _paired(fns, repeats)]


def _paired_cpu_ms(fns, repeats):
    """(median, fastest) CPU ms of several callables timed interleaved."""
    return [(statistics.median(o), min(o)) for o in _paired(fns, repeats, time.process_time)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from deepquant.market.synthetic import heston_marginals
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.model import CalibratedModel, ChainPlan
    from deepquant.neural.data import model_grid
    from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall, make_payoff

    threadpool_limits(1)
    marg = heston_marginals(np.linspace(0.0, 0.5, 11), grid=model_grid(150), v0=0.04,
                            kappa=2.0, theta=0.04, sigma_v=0.3, rho=-0.5)
    model = CalibratedModel.calibrate(marg)
    kernels, law0 = model.kernels, marg.weights[0]
    import warnings

    import torch

    from deepquant.neural.pricer import NeuralPricer

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        neural = NeuralPricer(threads=1).solve(marg)
    payoffs = {"asian": AsianCall(strike=1.0), "lookback": LookbackCall(strike=1.0),
               "up-and-out": make_payoff("up-and-out-call", strike=1.0, barrier=1.2),
               "forward-start": ForwardStartStraddle(t1=2, t2=5)}
    rows = {}
    for name, pay in payoffs.items():
        chain = build_chain(marg, pay)
        build = _median_ms(lambda pay=pay: build_chain(marg, pay), max(3, args.repeats // 2))
        sparse_ms = _median_ms(lambda c=chain: sparse_expectation(c, kernels, law0), args.repeats)
        plan = ChainPlan(chain)
        k1, l1 = kernels[None], law0[None]
        plan.expectation(k1, l1)            # compile the numba step (cached on disk)
        model.price(pay)   # warm the chain cache
        dense_ms, plan_ms, price_ms = _paired_ms(
            [lambda p=plan, k=k1, w=l1: p._expectation_dense(k, w),
             lambda p=plan, k=k1, w=l1: p.expectation(k, w),
             lambda pay=pay: model.price(pay)], args.repeats)
        kb = np.broadcast_to(kernels, (args.batch, *kernels.shape)).copy()
        lb = np.broadcast_to(law0, (args.batch, law0.size)).copy()
        batch_dense, batch_ms = _paired_ms(
            [lambda p=plan, k=kb, w=lb: p._expectation_dense(k, w),
             lambda p=plan, k=kb, w=lb: p.expectation(k, w)], max(3, args.repeats // 2))
        neural.price(pay)    # warm the full-support chain
        (cpu_med, cpu_min), (ncpu_med, ncpu_min) = _paired_cpu_ms(
            [lambda pay=pay: model.price(pay), lambda pay=pay: neural.price(pay)],
            args.repeats)
        ref = sparse_expectation(chain, kernels, law0)
        vals, bound = plan.expectation_bound(k1, l1)
        got = float(vals[0])
        dense = float(plan._expectation_dense(k1, l1)[0])
        rows[name] = {"n_states": chain.n_states, "exact": chain.exact, "build_ms": build,
                      "sparse_ms": sparse_ms, "dense_ms": dense_ms, "plan_ms": plan_ms,
                      "price_ms": price_ms,
                      "batch_dense_ms_per_instance": batch_dense / args.batch,
                      "batch_ms_per_instance": batch_ms / args.batch,
                      "speedup_plan_vs_sparse": sparse_ms / plan_ms,
                      "speedup_plan_vs_dense": dense_ms / plan_ms,
                      "price": got, "max_abs_diff": abs(got - ref),
                      "max_rel_diff": abs(got - ref) / abs(ref), "bound": float(bound[0]),
                      "dense_diff": abs(dense - ref),
                      "cpu": {"price_median_ms": cpu_med, "price_fastest_ms": cpu_min,
                              "neural_price_median_ms": ncpu_med,
                              "neural_price_fastest_ms": ncpu_min}}
        print(f"{name:14s} states<= {max(chain.n_states):5d}  build {build:7.1f} ms  "
              f"sparse {sparse_ms:7.2f} ms  dense {dense_ms:7.2f} ms  plan {plan_ms:7.2f} ms  "
              f"price {price_ms:7.2f} ms  batch/inst {batch_dense / args.batch:7.2f} -> "
              f"{batch_ms / args.batch:7.2f} ms  |diff| {abs(got - ref):.1e} "
              f"(rel {abs(got - ref) / abs(ref):.1e}, bound {bound[0]:.1e})\n{'':14s} CPU ms "
              f"price median {cpu_med:6.2f} fastest {cpu_min:6.2f}, neural kernels median "
              f"{ncpu_med:6.2f} fastest {ncpu_min:6.2f}", flush=True)
    out = {"instance": "heston N=10 T=0.5 M=150 (model grid), classical kernels; cpu: also "
                       "the shipped network's kernels",
           "repeats": args.repeats, "batch": args.batch, "threads": 1,
           "load_average": os.getloadavg(), "payoffs": rows}
    if args.json:
        from deepquant.atomic import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
