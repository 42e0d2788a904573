"""Does the out-of-distribution guard fire on calibrations of the SPX chain (expiry sets 1w..1y)?

    python benchmarks/neural_spx_guard.py [--checkpoint DIR] [--json out.json]

The SPX chain of 2023-06-09 is read from ``$DEEPQUANT_SPX_DATA`` (default
``<repo>/../shared/data/spx_20230609``). For each expiry set, two calibrations
(``deepquant.market.calibrate.calibrate_chain``):

* ``default``: as a user calls it (its own 150-point grid, quotes with K/F in [0.3, 2]), then
  ``NeuralPricer().solve`` (the shipped guard): mode and reason;
* ``model grid``: on the network's grid (quotes with K/F in [0.52, 1.97], strictly inside it),
  today's point mass in front (``deepquant.neural.families.with_today``), then the pure-neural
  solve: the guard's readings (marginal L1 error against its 0.025 threshold, drift), the mass
  on the grid's end points and the ATM Asian error against the classical calibrated model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

EXPIRY_SETS = (("1w", "2w"), ("1w", "1m"), ("2w", "1m", "2m"), ("1m", "2m", "3m"),
               ("3m", "6m"), ("6m", "1y"), ("1w", "1m", "3m", "6m", "1y"),
               ("1w", "2w", "3w", "1m", "6w", "2m", "3m", "4m", "6m", "1y"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("DEEPQUANT_SPX_DATA", str(
        Path(__file__).resolve().parents[2] / "shared" / "data" / "spx_20230609"))

    from deepquant.market.calibrate import calibrate_chain
    from deepquant.mmot.entropic import solve_entropic
    from deepquant.mmot.model import price_batch
    from deepquant.neural.families import spx_data_path, with_today
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.payoffs import AsianCall

    path = spx_data_path()
    guarded = NeuralPricer(args.checkpoint)
    bare = NeuralPricer(args.checkpoint, fallback=False, ood_drift=np.inf,
                        ood_marginal_error=np.inf)
    rows = []
    for exps in EXPIRY_SETS:
        row = {"expiries": list(exps)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cal = calibrate_chain(path, exps)
            sol = guarded.solve(cal.marginals)
        g = cal.marginals.grid
        lo, hi = guarded.grid[0], guarded.grid[-1]
        row["default"] = {
            "grid": [float(g[0]), float(g[-1])], "mode": sol.mode,
            "guard_fires": sol.mode != "neural", "reason": sol.message.split(":")[0],
            "mass_outside_model_grid": float(max(
                w[(g < lo - 1e-9) | (g > hi + 1e-9)].sum() for w in cal.marginals.weights))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cal = calibrate_chain(path, exps, grid=guarded.grid, fit_range=(0.52, 1.97))
            marg = with_today(cal.marginals)
            t0 = time.perf_counter()
            nn = bare.solve(marg)
            t_nn = time.perf_counter() - t0
            t0 = time.perf_counter()
            cold = solve_entropic(marg, 1.0, tol=1e-9)
            t_cl = time.perf_counter() - t0
        pc, pn = price_batch(marg, np.stack([cold.kernels, nn.kernels]), AsianCall(strike=1.0))
        row["model_grid"] = {
            "calibration_success": bool(cal.success), "times": marg.times.tolist(),
            "marginal_error": float(nn.marginal_error), "drift": float(nn.drift_live),
            "guard_fires": bool(nn.marginal_error > guarded.ood_marginal_error
                                or nn.drift_live > guarded.ood_drift),
            "end_mass_max": float(np.max(marg.weights[:, [0, -1]])),
            "asian_err_pct": float(100 * abs(pn - pc) / pc), "neural_ms": 1e3 * t_nn,
            "classical_ms": 1e3 * t_cl}
        rows.append(row)
        d, m = row["default"], row["model_grid"]
        print(f"{','.join(exps):32s} default: {d['mode']:9s} (outside {d['mass_outside_model_grid']:.1e}) "
              f"| model grid: marg err {m['marginal_error']:.3f} guard {m['guard_fires']!s:5s} "
              f"end mass {m['end_mass_max']:.1e} asian err {m['asian_err_pct']:.2f}%", flush=True)
    out = {"checkpoint": str(guarded.checkpoint), "data": str(path),
           "guard": {"ood_marginal_error": guarded.ood_marginal_error,
                     "ood_drift": guarded.ood_drift},
           "default_fire_pct": 100 * float(np.mean([r["default"]["guard_fires"] for r in rows])),
           "model_grid_fire_pct": 100 * float(np.mean([r["model_grid"]["guard_fires"]
                                                       for r in rows])),
           "sets": rows}
    return emit(out, tuple(k for k in out if k != "sets"), args.json)


if __name__ == "__main__":
    main()
