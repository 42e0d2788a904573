"""Entropic bias on the augmented chain against the exact LP, as eps -> 0.

Usage: python benchmarks/mmot_augmented_entropic.py [--quick]

Cases: (a) the DESIGN §2.3 three-date random walk (X_0 = 100, steps uniform on {-2..2}; exact
path-space LP values from DESIGN), eps in price units; (b) Heston marginals (synthetic.py, DESIGN
§3 parameters) at 0, 30, ..., 150 days on a uniform grid (step 0.075, [0.7, 1.3], 9 points), eps in
moneyness, against E's augmented LP. Prints bias_lower = entropic lower - LP lower and
bias_upper = LP upper - entropic upper per eps, the local log-log slopes, wall time (median of
``--repeat`` runs) and the measured residuals.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepquant.market.marginals import Marginals  # noqa: E402
from deepquant.market.synthetic import heston_marginals  # noqa: E402
from deepquant.mmot.augmented_entropic import entropic_bounds  # noqa: E402
from deepquant.mmot.lp import lp_bounds  # noqa: E402
from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall  # noqa: E402
from tests.conftest import random_walk_marginals  # noqa: E402


def run_case(name, marginals, payoff, lp_lo, lp_up, eps_list, repeat):
    print(f"\n### {name}  (LP: [{lp_lo:.8f}, {lp_up:.8f}])")
    print("| eps | lower | upper | bias lower | bias upper | slope lo | slope up | seconds "
          "(median) | L1 marginal error | drift | nit lo/up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    prev = None
    for eps in eps_list:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = entropic_bounds(marginals, payoff, eps)
            times.append(time.perf_counter() - t0)
        b_lo, b_up = r.lower - lp_lo, lp_up - r.upper
        if prev is not None and b_lo > 0 and b_up > 0 and prev[1] > 0 and prev[2] > 0:
            s_lo = np.log(prev[1] / b_lo) / np.log(prev[0] / eps)
            s_up = np.log(prev[2] / b_up) / np.log(prev[0] / eps)
        else:
            s_lo = s_up = float("nan")
        prev = (eps, b_lo, b_up)
        merr = max(r.info["lower"]["marginal_error"], r.info["upper"]["marginal_error"])
        drift = max(r.info["lower"]["drift"], r.info["upper"]["drift"])
        print(f"| {eps:g} | {r.lower:.8f} | {r.upper:.8f} | {b_lo:.2e} | {b_up:.2e} | "
              f"{s_lo:.2f} | {s_up:.2f} | {np.median(times):.2f} | {merr:.1e} | {drift:.1e} | "
              f"{r.info['lower']['nit']}/{r.info['upper']['nit']} |{'' if r.success else ' FAIL'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer eps values")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    grid, w = random_walk_marginals()
    rw = Marginals(grid, w)
    design = [("random walk: Asian ((X1+X2+X3)/3 - 100)+", AsianCall(strike=100.0, dates=(1, 2, 3)),
               0.639111, 0.794667),
              ("random walk: lookback (max X - 100)+", LookbackCall(strike=100.0), 1.020570,
               1.450667),
              ("random walk: |X3 - X1|", ForwardStartStraddle(strike=1.0, t1=1, t2=3), 0.910667,
               1.934222)]
    eps_rw = [0.3, 0.1, 0.03, 0.01] if args.quick else [1.0, 0.3, 0.1, 0.03, 0.01, 0.003]
    for name, p, lo, up in design:
        lp = lp_bounds(rw, p)  # exact values to more digits than DESIGN's 6 decimals
        assert abs(lp.lower - lo) < 1e-6 and abs(lp.upper - up) < 1e-6
        run_case(name, rw, p, lp.lower, lp.upper, eps_rw, args.repeat)
    g = np.round(1.0 + 0.075 * np.arange(-4, 5), 12)
    hm = heston_marginals(np.array([0, 30, 60, 90, 120, 150]) / 365, grid=g)
    eps_h = [1e-2, 1e-3] if args.quick else [1e-2, 3e-3, 1e-3, 3e-4]
    for name, p in [("Heston 9-point grid: Asian call K=1", AsianCall(strike=1.0)),
                    ("Heston 9-point grid: lookback call K=1", LookbackCall(strike=1.0))]:
        lp = lp_bounds(hm, p)
        if not lp.success:
            lp = lp_bounds(hm, p, martingale_tol=1e-9)
        run_case(f"{name} (LP {lp.status}, martingale_tol {lp.martingale_tol:g})", hm, p,
                 lp.lower, lp.upper, eps_h, args.repeat)


if __name__ == "__main__":
    main()
