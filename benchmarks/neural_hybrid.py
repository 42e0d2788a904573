"""Did the hybrid start pay for itself? Neural warm start + Newton polish vs a cold solve.

    python benchmarks/neural_hybrid.py [--num 30] [--seed 1] [--families gbm,merton,heston]
        [--json out.json]

Instances ``0..num-1`` with seed ``--seed`` of ``--families`` drawn in turn (default: the
training distribution, the issue's test seed 1: GBM / Merton / Heston, N in
{2, 3, 5, 10, 20, 30, 50}, T in [0.1, 0.5]; out of family: ``termvol,svi,chain,spx``, see
``deepquant.neural.data.ALL_FAMILIES``; ``spx`` reads ``$DEEPQUANT_SPX_DATA``, default
``<repo>/../shared/data/spx_20230609``) on the model grid. For each instance, in the same process and one thread, alternating the order:
the cold classical solve (``solve_entropic``, tol 1e-9 on the L1 marginal error and the drift)
and the hybrid (``common.neural_warm_polish``: forward pass, exact row multipliers, Newton
polish to the same tol, falling back to a cold solve if the polish fails). Reported:
per-instance times, the median of the per-instance ratios hybrid / cold overall and per
family, the share of hybrid solves that needed the cold fallback, and both results' residuals.
The hybrid was worth keeping only if the median ratio was <= 0.5; it measured 1.31x and was
removed from ``NeuralPricer`` (docs/benchmarks-neural.md). This script keeps the measurement
reproducible: the hybrid is rebuilt here from the public network and solver pieces (the same
steps as the removed ``solve(hybrid=True)``, without its out-of-distribution guard).
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
from common import emit, neural_warm_polish  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--families", default="gbm,merton,heston")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    os.environ.setdefault("DEEPQUANT_SPX_DATA", str(
        Path(__file__).resolve().parents[2] / "shared" / "data" / "spx_20230609"))

    import torch
    from threadpoolctl import threadpool_limits

    from deepquant.mmot.entropic import solve_entropic
    from deepquant.neural.data import build_marginals, instance_spec, model_grid
    from deepquant.neural.pricer import NeuralPricer

    threadpool_limits(1)
    torch.set_num_threads(1)
    pricer = NeuralPricer(threads=1, ood_drift=float("inf"), ood_marginal_error=float("inf"))
    grid = model_grid(150)
    rows = []
    for i in range(args.num):
        spec = instance_spec(i, args.seed, families=families)
        marg = build_marginals(spec, grid)
        pricer.solve(marg)    # trace for this shape outside the timing

        def cold(m=marg):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = solve_entropic(m, 1.0, tol=1e-9)
            return time.perf_counter() - t0, res

        def hybrid(m=marg):
            return neural_warm_polish(pricer, m, tol=1e-9)

        if i % 2:
            (t_h, sol, fb), (t_c, res) = hybrid(), cold()
        else:
            (t_c, res), (t_h, sol, fb) = cold(), hybrid()
        rows.append({"index": i, "family": spec.family, "n_periods": spec.n_periods,
                     "cold_s": t_c, "hybrid_s": t_h, "ratio": t_h / t_c,
                     "cold_success": bool(res.success), "cold_drift": float(res.drift),
                     "hybrid_success": bool(sol.success), "hybrid_drift": float(sol.drift),
                     "hybrid_marginal_error": float(sol.marginal_error),
                     "hybrid_cold_fallback": fb,
                     "hybrid_nit": int(sol.nit)})
        r = rows[-1]
        print(f"{i:3d} {spec.family:6s} N={spec.n_periods:2d}  cold {1e3 * t_c:8.1f} ms  "
              f"hybrid {1e3 * t_h:8.1f} ms  ratio {r['ratio']:5.2f}  "
              f"{'fallback' if r['hybrid_cold_fallback'] else ''}", flush=True)

    def summary(sel):
        return {"n": len(sel), "median_ratio": statistics.median(r["ratio"] for r in sel),
                "median_cold_ms": 1e3 * statistics.median(r["cold_s"] for r in sel),
                "median_hybrid_ms": 1e3 * statistics.median(r["hybrid_s"] for r in sel),
                "hybrid_success_pct": 100 * sum(r["hybrid_success"] for r in sel) / len(sel),
                "cold_fallback_pct": 100 * sum(r["hybrid_cold_fallback"] for r in sel) / len(sel),
                "max_hybrid_drift": max(r["hybrid_drift"] for r in sel)}

    out = {"seed": args.seed, "num": args.num, "families_drawn": list(families), "threads": 1,
           "load_average": os.getloadavg(),
           "all": summary(rows),
           "families": {f: summary([r for r in rows if r["family"] == f])
                        for f in families if any(r["family"] == f for r in rows)},
           "instances": rows}
    return emit(out, ("all", "families"), args.json)


if __name__ == "__main__":
    main()
