"""How far the best Markov chain is from the optimum, and what its last period in (S, X) gains.

    python benchmarks/mmot_markov_gap.py 25 [--seconds 60] [--json out.json]

Heston marginals at 0, 30, ..., 150 days on [0.55, 1.45] with M points; Asian and lookback
calls (K = 1), both sides. Per side:

* ``markov``: the best Markov martingale chain (``markov_inner``, least-spread start, run to
  convergence or ``--seconds``);
* ``last_period``: that chain with its last period re-solved by an LP over kernels
  k(y | s, x) that depend on the running statistic as well (one row pair per live state of
  mass above ``MASS_CUT``: sum_y k = 1, sum_y k (y - x) = 0; the law of X_T held at the
  chain's own; lighter states keep the Markov kernel). Still a martingale law with the chain's
  marginals, so a valid inner value of the chain LP;
* ``certified``: ``certify_side`` with ``--seconds`` (its value; equal to the LP optimum
  where its inner value meets it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

MASS_CUT = 1e-8
"""States lighter than this keep the Markov kernel: HiGHS drops matrix entries below 1e-9
(its ``small_matrix_value``), and with them in the column rows the LP reads infeasible."""


def last_period_lp(sw, kernels):
    """(value of sign * f, seconds, worst residual) with the last period re-solved in (S, X)."""
    import numpy as np
    import scipy.sparse as sp
    from scipy.optimize import linprog

    from deepquant.mmot.markov_inner import _advance

    T = sw.T
    mass = sw.mass0
    for t in range(T - 1):
        mass = _advance(sw, t, mass, kernels[t])
    per, k_last = sw.periods[T - 1], kernels[T - 1]
    G = per.gather(np.where(sw.live_T, sw.g_term, 0.0))              # (n_s, Y)
    fixed = np.where(mass > MASS_CUT, 0.0, mass)
    si, xi = np.nonzero(mass > MASS_CUT)
    n, ny = si.size, per.ys.size
    t0 = time.perf_counter()
    ms = mass[si, xi]
    rows, cols = np.repeat(np.arange(n), ny), np.arange(n * ny)
    step = (per.yv[None, :] - per.xv[xi][:, None]).ravel()
    a = sp.vstack([sp.csr_matrix((np.ones(n * ny), (rows, cols)), shape=(n, n * ny)),
                   sp.csr_matrix((step, (rows, cols)), shape=(n, n * ny)),
                   sp.csr_matrix((np.repeat(ms, ny), (np.tile(np.arange(ny), n), cols)),
                                 shape=(ny, n * ny))]).tocsr()
    law_T = np.einsum("sx,xy->y", mass - fixed, k_last)
    b = np.concatenate([np.ones(n), np.zeros(n), law_T])
    res = linprog(-(ms[:, None] * G[si]).ravel(), A_eq=a, b_eq=b, bounds=(0, None),
                  method="highs")
    if res.status != 0:
        return float("nan"), time.perf_counter() - t0, float("nan")
    k = res.x.reshape(n, ny)
    resid = max(float(np.abs(k.sum(axis=1) - 1).max()),
                float(np.abs(k @ per.yv - per.xv[xi]).max()),
                float(np.abs(ms @ k - law_T).sum()))
    light = float(np.sum(fixed[:, :, None] * k_last[None] * G[:, None, :]))
    return -res.fun + light, time.perf_counter() - t0, resid


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("size", type=int, help="grid points M")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np

    from deepquant.market.synthetic import heston_marginals
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.certified import certify_side
    from deepquant.mmot.markov_inner import markov_inner
    from deepquant.mmot.sweep import _Sweeper
    from deepquant.payoffs import AsianCall, LookbackCall

    mu = heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, args.size))
    out = {"size": args.size, "seconds": args.seconds, "load_average": os.getloadavg()}
    for name, payoff in (("asian", AsianCall(strike=1.0)), ("lookback", LookbackCall(strike=1.0))):
        chain = build_chain(mu, payoff)
        for sign, side in ((-1.0, "lower"), (1.0, "upper")):
            sw = _Sweeper(chain, mu, sign)
            best = markov_inner(sw, max_seconds=args.seconds, max_cycles=200, tol=1e-12)
            value, secs, resid = last_period_lp(sw, best.kernels)
            cert = certify_side(chain, mu, side, max_seconds=args.seconds)
            row = {"markov": sign * best.value, "markov_status": best.status,
                   "last_period": sign * value, "last_period_seconds": secs,
                   "last_period_residual": resid, "certified": cert.value,
                   "certified_inner": cert.info["inner"]}
            out[f"{name}_{side}"] = row
            print(f"M={args.size} {name:8s} {side}: Markov {row['markov']:.6f}, last period in "
                  f"(S, X) {row['last_period']:.6f} ({secs:.1f} s), certified "
                  f"{row['certified']:.6f} (inner {row['certified_inner']:.6f})", flush=True)
    return emit(out, [k for k in out if "_" in k and k != "load_average"], args.json)


if __name__ == "__main__":
    main()
