"""Pairwise bounds by the interior point method (``deepquant.mmot.ipm``) against the exact LP
(HiGHS), on the one-period forward-start straddle |X_2 - X_1| with Black-Scholes marginals
(sigma = 0.2 at t = 1, 2, S0 = 1, grid [0.2, 3.0] of M points).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/mmot_ipm.py --sizes 100 200 400 800
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/mmot_ipm.py --sizes 800 --full

For each M: both sides by ``ipm_bounds`` (``--repeats`` runs, medians; sides one after the other,
and with ``--workers 2`` also both sides at once on two threads), the certified bounds, each
side's bracket width |outer - inner| and iterations; the exact LP by ``bounds(method="lp")``
beside it up to M = 400 (``--full``: every M), ``--lp-repeats`` runs. The growth exponent of
the IPM's CPU time in M is the least-squares slope of log(CPU seconds) on log(M) (CPU, not
wall: on a shared machine the wall time depends on the other jobs). Results go to
``benchmarks/results/mmot_ipm.json`` (or ``--out``; written atomically, one entry per M, merged
with earlier runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from deepquant.atomic import write_json
from deepquant.market.synthetic import gbm_marginals
from deepquant.mmot.bounds import bounds
from deepquant.mmot.ipm import ipm_bounds
from deepquant.payoffs import ForwardStartStraddle

OUT = Path(__file__).parent / "results" / "mmot_ipm.json"
PAYOFF = ForwardStartStraddle(t1=1, t2=2)


def marginals(size: int):
    return gbm_marginals([0.0, 1.0, 2.0], grid=np.linspace(0.2, 3.0, size), sigma=0.2)


def run_ipm(size: int, repeats: int, workers: int, rtol: float) -> dict:
    m = marginals(size)
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        r = ipm_bounds(m, PAYOFF, rtol=rtol, workers=workers)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append(dict(wall=wall, cpu=cpu, lower_seconds=r.timings["lower"],
                         upper_seconds=r.timings["upper"], lower=r.lower, upper=r.upper,
                         status=r.status,
                         lower_width=r.lower_side.gap, upper_width=r.upper_side.gap,
                         lower_iterations=r.lower_side.info["iterations"],
                         upper_iterations=r.upper_side.info["iterations"],
                         lower_residual=r.lower_side.primal_residual,
                         upper_residual=r.upper_side.primal_residual))
    last = runs[-1]
    return dict(workers=workers, repeats=repeats, runs=runs,
                wall_median=statistics.median(x["wall"] for x in runs),
                cpu_median=statistics.median(x["cpu"] for x in runs),
                lower_seconds_median=statistics.median(x["lower_seconds"] for x in runs),
                upper_seconds_median=statistics.median(x["upper_seconds"] for x in runs),
                **{k: last[k] for k in ("lower", "upper", "status", "lower_width",
                                        "upper_width", "lower_iterations", "upper_iterations",
                                        "lower_residual", "upper_residual")})


def run_lp(size: int, repeats: int) -> dict:
    m = marginals(size)
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        r = bounds(m, PAYOFF, method="lp")
        runs.append(dict(wall=time.perf_counter() - t0, cpu=time.process_time() - c0,
                         lower=r.lower, upper=r.upper,
                         status=r.status))
    return dict(repeats=repeats, runs=runs, lower=runs[-1]["lower"], upper=runs[-1]["upper"],
                wall_median=statistics.median(x["wall"] for x in runs),
                cpu_median=statistics.median(x["cpu"] for x in runs))


def growth(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) on log(M)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[100, 200, 400, 800])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lp-repeats", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rtol", type=float, default=1e-7)
    ap.add_argument("--full", action="store_true", help="the LP at every size (M = 800: minutes)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out = args.out
    old = json.loads(out.read_text()) if out.exists() else {}
    env = dict(omp_threads=os.environ.get("OMP_NUM_THREADS"), cpus=os.cpu_count(),
               load_average=os.getloadavg(), machine=platform.machine())
    for size in args.sizes:
        # warm-up: compile (or load) the numba kernels outside the timings
        ipm_bounds(marginals(40), PAYOFF)
        entry = dict(size=size, rtol=args.rtol, env=env,
                     ipm={str(w): run_ipm(size, args.repeats, w, args.rtol)
                          for w in args.workers})
        if size <= 400 or args.full:
            entry["lp"] = run_lp(size, args.lp_repeats)
        old[f"bs-fss/{size}"] = entry
        write_json(out, old)
        ipm = entry["ipm"][str(args.workers[0])]
        lp = entry.get("lp", {})
        print(f"M={size:5d} IPM lower {ipm['lower']:.10f} upper {ipm['upper']:.10f} widths "
              f"{ipm['lower_width']:.1e} {ipm['upper_width']:.1e} (relative "
              f"{ipm['lower_width'] / abs(ipm['lower']):.1e} "
              f"{ipm['upper_width'] / abs(ipm['upper']):.1e}) iterations "
              f"{ipm['lower_iterations']}+{ipm['upper_iterations']} sides "
              f"{ipm['lower_seconds_median']:.2f}+{ipm['upper_seconds_median']:.2f} s"
              + "".join(f"  workers={w}: wall {entry['ipm'][str(w)]['wall_median']:.2f} s, "
                        f"CPU {entry['ipm'][str(w)]['cpu_median']:.2f} s" for w in args.workers)
              + (f"  LP {lp['lower']:.10f} {lp['upper']:.10f} wall {lp['wall_median']:.1f} s,"
                 f" CPU {lp['cpu_median']:.1f} s" if lp else ""), flush=True)
    done = sorted((v["size"], v["ipm"][str(args.workers[0])]["cpu_median"])
                  for k, v in old.items() if k.startswith("bs-fss/")
                  and str(args.workers[0]) in v["ipm"])
    if len(done) >= 2:
        slope = growth([s for s, _ in done], [t for _, t in done])
        old["growth_exponent"] = dict(workers=args.workers[0], sizes=[s for s, _ in done],
                                      exponent=slope, of="cpu_median")
        write_json(out, old)
        print(f"IPM CPU time ~ M^{slope:.2f} over M = {[s for s, _ in done]}")


if __name__ == "__main__":
    main()
