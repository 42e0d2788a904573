"""Inner values from chains whose kernels see the path, against the best Markov chain.

    python benchmarks/mmot_path_inner.py 25 49 150 [--cert-seconds 10] [--markov-seconds 60]
                                         [--buckets 4] [--json out.json]

Heston marginals at 0, 30, ..., 150 days on [0.55, 1.45] with M points; Asian and lookback
calls (K = 1) and the forward-start straddle |X_5 - X_1|, both sides. Per side:

* ``certified``: the certified outer bound, ``bounds(method="certified")`` with
  ``--cert-seconds`` per side (exact where its polish or LP level solves the grid);
* ``markov``: the best Markov martingale chain (``markov_inner`` from the certified dual's
  start, run to convergence or ``--markov-seconds``);
* ``path_markov`` / ``path_dual``: one forward pass of ``path_inner`` (kernels of X_t and one
  of ``--buckets`` classes of S_t given X_t) against that Markov chain's values to go / the
  certified dual's, with its seconds.

Every inner value is a martingale law with the marginals: a valid inner value of the chain LP
(the residuals are printed). Results go to ``benchmarks/results/mmot_path_inner.json``.
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

OUT = Path(__file__).parent / "results" / "mmot_path_inner.json"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", type=int, nargs="+", help="grid points M")
    ap.add_argument("--cert-seconds", type=float, default=10.0)
    ap.add_argument("--markov-seconds", type=float, default=60.0)
    ap.add_argument("--buckets", type=int, default=4)
    ap.add_argument("--payoffs", nargs="+", default=["asian", "lookback", "fss"])
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args(argv)

    import numpy as np

    from deepquant.market.synthetic import heston_marginals
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.bounds import bounds
    from deepquant.mmot.certified import nest_supports
    from deepquant.mmot.markov_inner import _backward, dual_value_to_go, markov_inner
    from deepquant.mmot.path_inner import path_inner
    from deepquant.mmot.sweep import _Sweeper
    from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall

    payoffs = dict(asian=AsianCall(strike=1.0), lookback=LookbackCall(strike=1.0),
                   fss=ForwardStartStraddle(t1=1, t2=5))
    out = {"cert_seconds": args.cert_seconds, "markov_seconds": args.markov_seconds,
           "buckets": args.buckets, "load_average": os.getloadavg()}
    for size in args.sizes:
        mu = heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, size))
        for name in args.payoffs:
            payoff = payoffs[name]
            res = bounds(mu, payoff, method="certified", max_seconds=args.cert_seconds)
            mm, _ = nest_supports(mu, payoff.last_date(mu.n_dates))
            chain = build_chain(mm, payoff)
            for sign, side in ((-1.0, "lower"), (1.0, "upper")):
                cert = getattr(res, f"{side}_side")
                sw = _Sweeper(chain, mm, sign)
                dual = dual_value_to_go(sw, sw.flatten(cert.info["u_sweep"]))
                t0 = time.perf_counter()
                mk = markov_inner(sw, max_seconds=args.markov_seconds, max_cycles=200,
                                  tol=1e-12, start_values=dual)
                mk_secs = time.perf_counter() - t0
                path = path_inner(sw, mk.kernels, dict(markov=_backward(sw, mk.kernels),
                                                       dual=dual), buckets=args.buckets)
                row = dict(certified=cert.value, markov=sign * mk.value,
                           markov_status=mk.status, markov_seconds=mk_secs,
                           path_residual=path.residual, path_drift=path.drift)
                for k, v in path.tried.items():
                    row[f"path_{k}"] = sign * v["value"]
                    row[f"path_{k}_seconds"] = v["seconds"]
                out[f"{name}_{side}_{size}"] = row
                print(f"M={size:3d} {name:8s} {side}: certified {cert.value:.6f}, Markov "
                      f"{row['markov']:.6f} ({mk.status}, {mk_secs:.1f} s), path from Markov "
                      f"values {row.get('path_markov', float('nan')):.6f} "
                      f"({row.get('path_markov_seconds', float('nan')):.1f} s), from dual "
                      f"values {row.get('path_dual', float('nan')):.6f} "
                      f"({row.get('path_dual_seconds', float('nan')):.1f} s); residual "
                      f"{path.residual:.1e}, drift {path.drift:.1e}", flush=True)
    return emit(out, ["load_average"], args.json)


if __name__ == "__main__":
    main()
