"""Incremental update (seed 001 Algorithm 2) against a full solve, side by side in one run.

Chain: lognormal marginals (see ``benchmarks/mmot_entropic.py``) with N periods on M points.
Variants, interleaved over ``--repeats`` (medians reported):

* ``full``    ``solve_entropic`` on the N+1-period chain;
* ``append``  ``append_date``: the previous N-period solution plus one new last date;
* ``insert``  ``insert_date`` in the middle: two new periods replace one;
* ``update``  ``update_date``: one marginal moved (total variance x 1.02), its two periods
              re-solved from their previous potentials.

Each update is checked against the full solve of the same chain (max kernel difference).

Usage: python benchmarks/mmot_entropic_incremental.py [--n 20] [--m 150] [--repeats 5]
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
from deepquant.mmot.incremental import append_date, insert_date, update_date
from deepquant.results import ConvergenceWarning


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="periods of the updated chain")
    ap.add_argument("--m", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n, m = args.n, args.m
    grid = np.linspace(0.5, 2.0, m)
    sigma2 = 0.04
    tv = [sigma2 * (k + 1) / n for k in range(n + 1)]       # N+1 dates, T = 1
    new = Marginals(grid, lognormal_rows(grid, tv))
    old_append = new.select(range(n))                         # without the last date
    mid = n // 2
    old_insert = Marginals(grid, np.delete(new.weights, mid, axis=0))
    moved = list(tv)
    moved[mid] = 0.5 * (tv[mid] + tv[mid + 1]) if mid + 1 < len(tv) else tv[mid] * 1.02
    moved_marg = Marginals(grid, lognormal_rows(grid, moved))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        prev_append = solve_entropic(old_append, 1e-3)
        prev_insert = solve_entropic(old_insert, 1e-3)
        prev_update = solve_entropic(new, 1e-3)
        variants = {
            "full": lambda: solve_entropic(new, 1e-3),
            "append": lambda: append_date(prev_append, new),
            "insert": lambda: insert_date(prev_insert, new, mid),
            "update": lambda: update_date(prev_update, moved_marg, mid),
            "full_after_update": lambda: solve_entropic(moved_marg, 1e-3),
        }
        times = {k: [] for k in variants}
        last = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                last[name] = fn()
                times[name].append(time.perf_counter() - t0)
    full, full_u = last["full"], last["full_after_update"]
    out = {"problem": {"N": n, "M": m, "eps": 1e-3, "tol": 1e-9},
           "loadavg": os.getloadavg(), "variants": {}}
    for name, res in last.items():
        ref = full_u if name in ("update", "full_after_update") else full
        out["variants"][name] = {
            "median_seconds": float(np.median(times[name])),
            "min_seconds": float(np.min(times[name])), "nit": int(res.nit),
            "success": bool(res.success), "marginal_error": float(res.marginal_error),
            "drift": float(res.drift),
            "max_kernel_diff_vs_full": float(np.abs(res.kernels - ref.kernels).max()),
        }
    f = out["variants"]
    out["speedup_append"] = f["full"]["median_seconds"] / f["append"]["median_seconds"]
    out["speedup_insert"] = f["full"]["median_seconds"] / f["insert"]["median_seconds"]
    out["speedup_update"] = (f["full_after_update"]["median_seconds"]
                             / f["update"]["median_seconds"])
    text = json.dumps(out, indent=2)
    if args.out:
        from deepquant.atomic import write_text

        write_text(args.out, text + "\n")
    print(text)
    print(f"append {out['speedup_append']:.1f}x, insert {out['speedup_insert']:.1f}x, update "
          f"{out['speedup_update']:.1f}x faster than a full solve", file=sys.stderr)


if __name__ == "__main__":
    main()
