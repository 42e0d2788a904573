"""Sparse grids (seed 001 Algorithm 3): speed-up AT EQUAL ACCURACY against uniform grids.

Statistic: S = sum_t E|X_{t+1} - X_t| under the calibrated chain (c = 0 entropic solution,
product reference, eps = 1e-3, tol 1e-9), a strip of forward-start straddles. Marginals:
lognormal (sigma = 0.2, T = 1, N periods) discretised on a grid by interpolating Black–Scholes
calls (exactly convex-ordered); the sparse marginals are the projection of a fine uniform grid onto
the adaptive points, which equals the same construction on those points.

Reference value: Richardson extrapolation of S on uniform grids of F and 2F - 1 points (the error
of S is O(h^2) on uniform grids, measured below); errors are relative to it. For each sparse grid
(one tau) the time of a uniform grid with the SAME error is interpolated (log-log) from the uniform
curve; the speed-up is that time over the sparse grid's time. Timings are medians of interleaved
repeats on a shared machine.

Usage: python benchmarks/mmot_entropic_sparse.py [--n 4] [--fine 801] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
from common import lognormal_rows  # noqa: E402

from deepquant.market.marginals import Marginals
from deepquant.mmot.entropic import solve_entropic
from deepquant.mmot.sparse import sparse_marginals
from deepquant.results import ConvergenceWarning


def lognormal(grid: np.ndarray, n: int, sigma: float = 0.2) -> Marginals:
    return Marginals(grid, lognormal_rows(grid, sigma**2 * np.arange(1, n + 2) / n))


def statistic(res, mg) -> float:
    x = mg.grid
    return float((res.plans * np.abs(x[None, None, :] - x[None, :, None])).sum())


def timed(mg, repeats):
    secs = []
    for _ in range(repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            res = solve_entropic(mg, 1e-3)
            secs.append(time.perf_counter() - t0)
    return res, float(np.median(secs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--fine", type=int, default=801)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n, f = args.n, args.fine
    lo, hi = 0.5, 2.0
    fine = lognormal(np.linspace(lo, hi, f), n)
    half = lognormal(np.linspace(lo, hi, (f + 1) // 2), n)
    s_f = statistic(solve_entropic(fine, 1e-3), fine)
    s_h = statistic(solve_entropic(half, 1e-3), half)
    truth = s_f + (s_f - s_h) / 3.0                        # Richardson, O(h^2)
    print(f"reference {truth:.10f} (fine {s_f:.10f}, half {s_h:.10f})", file=sys.stderr)
    uniform = []
    for m in (41, 61, 81, 121, 161, 241, 321, 401):
        mg = lognormal(np.linspace(lo, hi, m), n)
        res, sec = timed(mg, args.repeats)
        err = abs(statistic(res, mg) / truth - 1)
        uniform.append({"M": m, "rel_error": err, "seconds": sec, "success": res.success,
                        "nit": res.nit})
        print(f"  uniform M={m}: err {err:.2e}, {sec:.3f} s", file=sys.stderr, flush=True)
    sparse = []
    for tau in (2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5):
        sp = sparse_marginals(fine, tau=tau)
        res, sec = timed(sp.marginals, args.repeats)
        err = abs(statistic(res, sp.marginals) / truth - 1)
        sparse.append({"tau": tau, "M": sp.size, "rel_error": err, "seconds": sec,
                       "success": res.success, "nit": res.nit})
        print(f"  sparse tau={tau:g} M={sp.size}: err {err:.2e}, {sec:.3f} s", file=sys.stderr,
              flush=True)
    # uniform time and size at the same error (log-log interpolation along the uniform curve)
    ue = np.array([u["rel_error"] for u in uniform])
    ut = np.array([u["seconds"] for u in uniform])
    um = np.array([u["M"] for u in uniform], float)
    order = np.argsort(ue)
    for s in sparse:
        e = s["rel_error"]
        if ue.min() <= e <= ue.max():
            t_eq = float(np.exp(np.interp(np.log(e), np.log(ue[order]), np.log(ut[order]))))
            m_eq = float(np.exp(np.interp(np.log(e), np.log(ue[order]), np.log(um[order]))))
            s["uniform_seconds_at_same_error"] = t_eq
            s["uniform_M_at_same_error"] = m_eq
            s["speedup_at_equal_accuracy"] = t_eq / s["seconds"]
        else:
            s["speedup_at_equal_accuracy"] = None   # outside the measured uniform range
    order_fit = np.polyfit(np.log(um), np.log(ue), 1)[0]
    out = {"problem": {"N": n, "fine": f, "grid": [lo, hi], "eps": 1e-3, "statistic":
                       "sum_t E|X_{t+1}-X_t| under the calibrated chain"},
           "reference": truth, "uniform_error_order_in_M": float(order_fit),
           "uniform": uniform, "sparse": sparse, "loadavg": os.getloadavg()}
    text = json.dumps(out, indent=2)
    if args.out:
        from deepquant.atomic import write_text

        write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
