"""Error of the interpolated running-sum grid against the exact lattice (DESIGN §2.3).

    python benchmarks/mmot_sum_grid.py --sizes 13 25 --factors 1 2 4 8

Asian call K = 1 on the Heston marginals at 0, 30, ..., 150 days (grid [0.55, 1.45], uniform,
so the exact lattice of running sums exists). For each grid size M the exact LP bounds on the
lattice (``sum_mode="lattice"``) are compared with those on interpolated sum grids of
``factor * M + 1`` points (``sum_mode="grid"``, linear splitting, the strike on the last grid):
the table gives each side's error relative to the lattice value. Results go to
``benchmarks/results/mmot_sum_grid.json`` (atomic write, merged with earlier runs by M and
sum-grid size).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deepquant.atomic import write_json
from deepquant.market.synthetic import heston_marginals
from deepquant.mmot.bounds import bounds
from deepquant.payoffs import AsianCall

OUT = Path(__file__).parent / "results" / "mmot_sum_grid.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[13, 25])
    ap.add_argument("--factors", nargs="+", type=int, default=[1, 2, 4, 8])
    args = ap.parse_args()
    payoff = AsianCall(strike=1.0)
    old = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    rows = {(r["size"], r["sum_grid_size"]): r for r in old}
    for m in args.sizes:
        marg = heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, m))
        t0 = time.perf_counter()
        exact = bounds(marg, payoff, method="lp", sum_mode="lattice")
        print(f"M={m} lattice: [{exact.lower:.6f}, {exact.upper:.6f}] "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        for f in args.factors:
            t0 = time.perf_counter()
            res = bounds(marg, payoff, method="lp", sum_mode="grid", sum_grid_size=f * m + 1)
            row = dict(size=m, sum_grid_size=f * m + 1, lower=res.lower, upper=res.upper,
                       lattice_lower=exact.lower, lattice_upper=exact.upper,
                       lower_rel_error=(res.lower - exact.lower) / exact.lower,
                       upper_rel_error=(res.upper - exact.upper) / exact.upper,
                       seconds=time.perf_counter() - t0)
            rows[(m, f * m + 1)] = row
            write_json(OUT, dict(rows=[rows[k] for k in sorted(rows)]))
            print(f"M={m} sum grid {f}M+1: [{res.lower:.6f}, {res.upper:.6f}] errors "
                  f"{row['lower_rel_error']:+.2%} / {row['upper_rel_error']:+.2%} "
                  f"({row['seconds']:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
