"""Column generation for the exact chain LP (``deepquant.mmot.colgen``): the stopping rule and
the per-round moves, measured side by side on the same chains.

    python benchmarks/mmot_colgen.py --size 25 --payoffs lookback fss asian --max-seconds 300
    python benchmarks/mmot_colgen.py --case bs-fss --size 400 --max-seconds 300

Variants, run alternately on each chain (upper side; Heston marginals at 0, 30, ..., 150 days on
[0.55, 1.45], or the one-period forward-start straddle |X_2 - X_1| with Black-Scholes marginals at
t = 1, 2 on [0.2, 3]; BLAS pinned to one thread):

* ``textbook``: price with the LP duals until no move violates by more than the tolerance;
* ``certified``: stop as soon as the exact sweep of the round's potentials meets its value;
* ``certified+contact``: the same, adding each round the sweep's best response (``contact_k=1``).

Each run records rounds, columns, LP seconds, wall seconds, the value and the outer bound of its
potentials; results go to ``benchmarks/results/mmot_colgen.json`` (written atomically, merged with
earlier runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from deepquant.atomic import write_json
from deepquant.market.synthetic import gbm_marginals, heston_marginals
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


def run(case: str, size: int, name: str, variant: str, max_seconds: float) -> dict:
    if case == "heston":
        m = heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, size))
        payoff = PAYOFFS[name]
    else:  # one-period forward-start straddle, Black-Scholes sigma = 0.2 at t = 1, 2
        m = gbm_marginals([0.0, 1.0, 2.0], grid=np.linspace(0.2, 3.0, size), sigma=0.2)
        payoff = ForwardStartStraddle(t1=1, t2=2)
    m, _ = nest_supports(m, m.n_dates - 1)
    sw = _Sweeper(build_chain(m, payoff), m, 1.0)
    t0 = time.perf_counter()
    res = solve_chain_colgen(sw, np.zeros(sw.mu_flat.size), max_seconds=max_seconds,
                             **VARIANTS[variant])
    wall = time.perf_counter() - t0
    return dict(case=case, size=size, payoff=name, variant=variant, value=res.value,
                outer=sw.certify(res.u)[0], status=res.status, rounds=res.nit,
                columns=res.columns, lp_seconds=res.lp_seconds, wall=wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["heston", "bs-fss"], default="heston")
    ap.add_argument("--size", type=int, default=25)
    ap.add_argument("--payoffs", nargs="+", default=list(PAYOFFS), choices=list(PAYOFFS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=200.0,
                    help="budget per run (the textbook rule can stall HiGHS on degenerate rounds)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    # merged with earlier runs, one row per (case, size, payoff, variant, repeat)
    old = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    rows = []

    def key(r):
        return (r.get("case", "heston"), r["size"], r["payoff"], r["variant"], r["repeat"])

    with threadpool_limits(limits=1, user_api="blas"):
        for name in (["fss"] if args.case == "bs-fss" else args.payoffs):
            for rep in range(args.repeats):
                for variant in args.variants:
                    row = run(args.case, args.size, name, variant, args.max_seconds)
                    row["repeat"] = rep
                    rows.append(row)
                    print(f"{name:9s} {variant:18s} rounds {row['rounds']:3d} columns "
                          f"{row['columns']:7d} LP {row['lp_seconds']:7.1f} s wall "
                          f"{row['wall']:7.1f} s value {row['value']:.10f} outer "
                          f"{row['outer']:.10f}", flush=True)
                    mine = {key(r) for r in rows}
                    write_json(args.out, dict(rows=[r for r in old if key(r) not in mine]
                                              + rows))


if __name__ == "__main__":
    main()
