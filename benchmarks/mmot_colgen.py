"""Column generation for the exact chain LP (``deepquant.mmot.colgen``): the stopping rule and
the per-round moves, measured side by side on the same chains.

    python benchmarks/mmot_colgen.py --size 25 --payoffs lookback fss asian --max-seconds 200

Variants, run alternately on each chain (upper side, Heston marginals at 0, 30, ..., 150 days on
[0.55, 1.45], BLAS pinned to one thread):

* ``textbook``: price with the LP duals until no move violates by more than the tolerance;
* ``certified``: stop as soon as the exact sweep of the round's potentials meets its value;
* ``certified+contact``: the same, adding each round the sweep's best response (``contact_k=1``).

Each run records rounds, columns, LP seconds, wall seconds, the value and the outer bound of its
potentials; results go to ``benchmarks/results/mmot_colgen.json`` (written atomically).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from deepquant.atomic import write_json
from deepquant.market.synthetic import heston_marginals
from deepquant.mmot.augment import build_chain
from deepquant.mmot.certified import nest_supports
from deepquant.mmot.colgen import solve_chain_colgen
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall

OUT = Path(__file__).parent / "results" / "mmot_colgen.json"
PAYOFFS = dict(asian=AsianCall(strike=1.0), lookback=LookbackCall(strike=1.0),
               fss=ForwardStartStraddle(t1=1, t2=5))
VARIANTS = {"textbook": dict(certify_stop=False, contact_k=0),
            "certified": dict(contact_k=0), "certified+contact": dict(contact_k=1)}


def run(size: int, name: str, variant: str, max_seconds: float) -> dict:
    m = heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, size))
    m, _ = nest_supports(m, m.n_dates - 1)
    sw = _Sweeper(build_chain(m, PAYOFFS[name]), m, 1.0)
    t0 = time.perf_counter()
    res = solve_chain_colgen(sw, np.zeros(sw.mu_flat.size), max_seconds=max_seconds,
                             **VARIANTS[variant])
    wall = time.perf_counter() - t0
    return dict(size=size, payoff=name, variant=variant, value=res.value,
                outer=sw.certify(res.u)[0], status=res.status, rounds=res.nit,
                columns=res.columns, lp_seconds=res.lp_seconds, wall=wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=25)
    ap.add_argument("--payoffs", nargs="+", default=list(PAYOFFS), choices=list(PAYOFFS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=200.0,
                    help="budget per run (the textbook rule can stall HiGHS on degenerate rounds)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for name in args.payoffs:
            for rep in range(args.repeats):
                for variant in args.variants:
                    row = run(args.size, name, variant, args.max_seconds)
                    row["repeat"] = rep
                    rows.append(row)
                    print(f"{name:9s} {variant:18s} rounds {row['rounds']:3d} columns "
                          f"{row['columns']:7d} LP {row['lp_seconds']:7.1f} s wall "
                          f"{row['wall']:7.1f} s value {row['value']:.10f} outer "
                          f"{row['outer']:.10f}", flush=True)
                    write_json(args.out, dict(rows=rows))


if __name__ == "__main__":
    main()
