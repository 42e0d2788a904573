"""Exact LP bounds on the augmented chain: timings, LP sizes, scaling and peak memory.

Usage:
    python benchmarks/mmot_lp.py [--quick] [--repeat R] [--repeat-scaling R]
                                 [--algorithm direct]
    python benchmarks/mmot_lp.py --one N M [--payoff asian-call]   (one config, JSON on stdout)

Marginals: X_0 = 1 and X_{t+1} | X_t = x spread by a 9-node Gauss-Hermite law with standard
deviation 0.2 x / sqrt(N) (shrunk near the grid edges), split linearly onto the uniform grid
1 + 0.04 (j - 11), j = 0..M-1: an exact martingale kernel, so the rows are in convex order on the
grid and the running sums fall on a lattice (exact augmented LP). Tail masses reach 1e-8..1e-10.

Main case: Asian call (strike 1, average of X_1..X_N), N = 5, M = 24, both sides.
Scaling: N in {2, 3, 4, 5} at M = 16, and M in {12, 16, 20, 24} at N = 4, with growth exponents
fitted by least squares on log(seconds) against log(N) or log(M). Every configuration runs in a
fresh process; peak memory is that process's maximum resident set size (ru_maxrss), which
includes HiGHS and the Python interpreter (~85 MB baseline). Timings are medians of ``--repeat``
runs (main case) and ``--repeat-scaling`` runs (scaling); BLAS threads at 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from deepquant.market.marginals import Marginals, split_onto_grid  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "mmot_lp.json"


def gaussian_martingale_marginals(n_periods: int, m: int, *, sigma: float = 0.2,
                                  step: float = 0.04) -> Marginals:
    """See the module docstring."""
    grid = 1.0 + step * (np.arange(m) - (m // 2 - 1))
    z, wz = np.polynomial.hermite_e.hermegauss(9)
    wz = wz / wz.sum()
    law = split_onto_grid(np.array([1.0]), np.array([1.0]), grid)
    rows = [law]
    s = sigma / np.sqrt(n_periods)
    for _ in range(n_periods):
        nxt = np.zeros(m)
        for j in np.flatnonzero(law > 0):
            x = grid[j]
            sc = min(s * x, (x - grid[0]) / z.max(), (grid[-1] - x) / z.max())
            nxt += split_onto_grid(x + sc * z, law[j] * wz, grid)
        rows.append(nxt)
        law = nxt
    return Marginals(grid, np.vstack(rows))


def run_one(n: int, m: int, payoff_name: str, repeat: int, algorithm: str) -> dict:
    from deepquant.mmot.lp import lp_bounds
    from deepquant.payoffs import make_payoff

    mg = gaussian_martingale_marginals(n, m)
    payoff = make_payoff(payoff_name, strike=1.0)
    lo_t, up_t, build_t = [], [], []
    res = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = lp_bounds(mg, payoff, algorithm=algorithm)
        build_t.append(res.timings["build"])
        lo_t.append(res.timings["lower"])
        up_t.append(res.timings["upper"])
        del t0
    pos = mg.weights[mg.weights > 0]
    return dict(
        N=n, M=m, payoff=payoff_name, algorithm=algorithm, lower=res.lower, upper=res.upper,
        status=res.status, seconds_lower=float(np.median(lo_t)),
        seconds_upper=float(np.median(up_t)), seconds_build=float(np.median(build_t)),
        rows=res.sizes["rows"], cols=res.sizes["cols"], nnz=res.sizes["nnz"],
        states=res.info.get("states"), primal_residual=res.primal_residual, gap=res.gap,
        dual_residual=max(res.lower_side.dual_residual, res.upper_side.dual_residual),
        min_mass=float(pos.min()),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )


def spawn(n: int, m: int, payoff: str, repeat: int, algorithm: str) -> dict:
    cmd = [sys.executable, __file__, "--one", str(n), str(m), "--payoff", payoff,
           "--repeat", str(repeat), "--algorithm", algorithm]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", nargs=2, type=int, metavar=("N", "M"))
    ap.add_argument("--payoff", default="asian-call")
    ap.add_argument("--repeat", type=int, default=3, help="runs per config of the main case")
    ap.add_argument("--repeat-scaling", type=int, default=1, help="runs per scaling config")
    ap.add_argument("--algorithm", default="direct", choices=["direct"])
    ap.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.payoff, args.repeat, args.algorithm)))
        return
    rows = []

    def show(r):
        print(f"| {r['payoff']} | {r['N']} | {r['M']} | {r['seconds_lower']:.3f} | "
              f"{r['seconds_upper']:.3f} | {r['seconds_build']:.3f} | {r['rows']} | {r['cols']} | "
              f"{r['nnz']} | {r['primal_residual']:.1e} | {r['gap']:.1e} | "
              f"{r['peak_rss_mb']:.0f} | {r['lower']:.8f} | {r['upper']:.8f} |", flush=True)

    print("| payoff | N | M | s lower | s upper | s build | rows | cols | nnz | primal res | gap |"
          " peak RSS MB | lower | upper |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    main_cfg = [(3, 12)] if args.quick else [(5, 24)]
    ns = [2, 3] if args.quick else [2, 3, 4, 5]
    ms = [8, 12] if args.quick else [12, 16, 20, 24]
    m_for_n = 8 if args.quick else 16
    n_for_m = 3 if args.quick else 4
    for n, m in main_cfg:
        r = spawn(n, m, args.payoff, args.repeat, args.algorithm)
        r["table"] = "main"
        rows.append(r)
        show(r)
    for n in ns:
        r = spawn(n, m_for_n, args.payoff, args.repeat_scaling, args.algorithm)
        r["table"] = "N"
        rows.append(r)
        show(r)
    for m in ms:
        r = spawn(n_for_m, m, args.payoff, args.repeat_scaling, args.algorithm)
        r["table"] = "M"
        rows.append(r)
        show(r)
    sn = [r for r in rows if r["table"] == "N"]
    sm = [r for r in rows if r["table"] == "M"]
    exps = {}
    for name, sel, key in (("N", sn, "N"), ("M", sm, "M")):
        xs = [r[key] for r in sel]
        exps[name] = dict(
            seconds=fit(xs, [r["seconds_lower"] + r["seconds_upper"] for r in sel]),
            cols=fit(xs, [r["cols"] for r in sel]),
            peak_rss=fit(xs, [r["peak_rss_mb"] for r in sel]),
        )
    print(f"\nfitted exponents (log-log least squares): {json.dumps(exps)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        RESULTS.write_text(json.dumps(dict(rows=rows, exponents=exps, algorithm=args.algorithm,
                                           repeat=args.repeat,
                                           repeat_scaling=args.repeat_scaling,
                                           load=os.getloadavg()),
                                      indent=2) + "\n")
        print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
