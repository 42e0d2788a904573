"""Neural MMOT surrogate: inference latency / throughput, and hybrid vs cold classical times.

    python benchmarks/neural_inference.py [--checkpoint DIR] [--threads 1] [--repeats 50]
        [--instances 10] [--json out.json]

Instances: GBM / Merton / Heston marginals with N = 10 periods, M = 150 (model grid), maturity
0.3, from ``deepquant.market.synthetic``. Reported (medians over repeats, same process, same
threads):

* single: one forward pass (potentials) for one instance through ``NeuralPricer.predict`` (a
  per-shape TorchScript trace), the eager module on the same input, and forward + Gibbs kernels
  (float64), with ``--threads`` torch threads (default 1), and the whole pure-neural
  ``NeuralPricer.solve`` (forward pass + exact row multipliers, the default ``project=True``);
* batched: forward passes of a batch of 256 instances with ``--batch-threads`` (default 2, the
  machine's two cores), instances per second;
* hybrid: neural warm start + Newton polish to tol 1e-9 (``common.neural_warm_polish``; removed
  from the API at 1.31x the cold solve, see benchmarks/neural_hybrid.py) vs the cold classical
  solve, on the same instances in the same run (ratio of medians and median of per-instance
  ratios);
* peak resident memory of the process (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import neural_warm_polish  # noqa: E402


def _instances(k: int):
    from deepquant.market.synthetic import synthetic_marginals
    from deepquant.neural.data import model_grid

    grid = model_grid()
    times = np.linspace(0.0, 0.3, 11)
    rng = np.random.default_rng(123)
    out = []
    for i in range(k):
        fam = ("gbm", "merton", "heston")[i % 3]
        if fam == "heston":
            p = {"v0": float(rng.uniform(0.02, 0.09)), "rho": float(rng.uniform(-0.7, 0))}
        else:
            p = {"sigma": float(rng.uniform(0.15, 0.35))}
        out.append((fam, synthetic_marginals(fam, times, grid=grid, **p)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-threads", type=int, default=2,
                    help="torch threads for the batched throughput (the machine's 2 cores)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--instances", type=int, default=9)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("--spec-model", action="store_true",
                    help="Also time the forward pass of the full-width seed §9.2 model (2.67M "
                         "parameters, random weights: latency only).")
    args = ap.parse_args()

    import torch

    from deepquant.mmot.entropic import solve_entropic
    from deepquant.neural.pricer import EPS, NeuralPricer

    torch.set_num_threads(args.threads)
    pricer = NeuralPricer(args.checkpoint, threads=args.threads)
    inst = _instances(args.instances)
    w1 = inst[0][1].weights[None]
    for _ in range(5):
        pricer.predict(w1)
    fwd = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pricer.predict(w1)
        fwd.append(time.perf_counter() - t0)
    eager = []                                   # the eager module, same input, same run
    x1 = torch.as_tensor(np.asarray(w1, dtype=np.float32))
    with torch.inference_mode():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pricer.model(x1)
            eager.append(time.perf_counter() - t0)
    full = []
    for _ in range(args.repeats // 2):
        t0 = time.perf_counter()
        v, h = pricer.predict(w1)
        pricer.kernels(w1[0], v[0], h[0])
        full.append(time.perf_counter() - t0)
    solve_ms = []                                # pure-neural solve: forward + exact h rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(max(3, args.repeats // 5)):
            sol = pricer.solve(inst[0][1])
            solve_ms.append(1e3 * sol.seconds)
    wb = np.stack([inst[i % len(inst)][1].weights for i in range(args.batch)])
    torch.set_num_threads(args.batch_threads)
    pricer.predict(wb)
    bt = []
    for _ in range(max(3, args.repeats // 10)):
        t0 = time.perf_counter()
        pricer.predict(wb)
        bt.append(time.perf_counter() - t0)
    torch.set_num_threads(args.threads)
    cold, hyb, ratios, hyb_drift, cold_drift = [], [], [], [], []
    for _fam, m in inst:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            c = solve_entropic(m, EPS, tol=1e-9)
            tc = time.perf_counter() - t0
        th, hs, _ = neural_warm_polish(pricer, m, tol=1e-9)
        cold.append(tc)
        hyb.append(th)
        ratios.append(th / tc)
        hyb_drift.append(float(hs.drift))
        cold_drift.append(float(c.drift))
    spec = {}
    if args.spec_model:
        from deepquant.neural.config import ModelConfig
        from deepquant.neural.model import build_model, count_parameters

        sm = build_model(ModelConfig(), pricer.grid).eval()
        x1 = torch.as_tensor(np.array(w1, dtype=np.float32))
        xb = torch.as_tensor(np.array(wb, dtype=np.float32))
        with torch.inference_mode():
            for _ in range(5):
                sm(x1)
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                sm(x1)
                ts.append(time.perf_counter() - t0)
            tb = []
            for _ in range(3):
                t0 = time.perf_counter()
                sm(xb)
                tb.append(time.perf_counter() - t0)
        spec = {"spec_model_params": count_parameters(sm),
                "spec_single_forward_ms": 1e3 * statistics.median(ts),
                "spec_batched_instances_per_s": args.batch / statistics.median(tb)}
    res = {
        "threads": args.threads, "checkpoint": str(pricer.checkpoint),
        "params": sum(p.numel() for p in pricer.model.parameters()), **spec,
        "single_forward_ms": 1e3 * statistics.median(fwd),
        "single_forward_eager_ms": 1e3 * statistics.median(eager),
        "single_forward_plus_kernels_ms": 1e3 * statistics.median(full),
        "pure_neural_solve_ms": statistics.median(solve_ms),
        "batch": args.batch, "batch_threads": args.batch_threads,
        "batched_instances_per_s": args.batch / statistics.median(bt),
        "cold_classical_ms_median": 1e3 * statistics.median(cold),
        "hybrid_ms_median": 1e3 * statistics.median(hyb),
        "hybrid_over_cold_ratio_of_medians": statistics.median(hyb) / statistics.median(cold),
        "hybrid_over_cold_median_ratio": statistics.median(ratios),
        "hybrid_max_drift": max(hyb_drift), "cold_max_drift": max(cold_drift),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(res, indent=2))
    if args.json:
        from deepquant.atomic import write_json

        write_json(args.json, res)


if __name__ == "__main__":
    main()
