"""How far the relaxation to a forward start's own dates is from the multi-period optimum, by
the chain of its conditional laws (``deepquant.mmot.two_date``).

The relaxation's bound (exact, one period) bounds the multi-period problem from outside; the
chain of the conditional laws of X_t given X_t1 (an LP over those laws, each kept to the hull
of the relaxation's plan from its x_i, ``--margin`` more points each side, its laws joined by
martingale couplings and the chain valued exactly) is a feasible chain, a primal value. When
the two meet, the relaxation is the optimum. The library runs the chain only up to
``two_date.MAX_VARIABLES``; here there is no limit. Usage:

    python benchmarks/mmot_two_date_lp.py --case n5 --side lower [--margin 0] [--size 150]
"""

from __future__ import annotations

import argparse

import numpy as np

from deepquant.market.synthetic import heston_marginals
from deepquant.mmot import two_date
from deepquant.mmot.augment import build_chain
from deepquant.mmot.certified import nest_supports
from deepquant.mmot.markov_inner import markov_inner
from deepquant.mmot.relaxed import relaxed_bounds
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import ForwardStartStraddle

CASES = {"n5": (np.arange(6) * 30 / 365, (0.55, 1.45), 1, 5),
         "m12": (np.arange(13) / 12, (0.4, 1.8), 1, 12)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), default="n5")
    ap.add_argument("--side", choices=("lower", "upper"), default="lower")
    ap.add_argument("--margin", type=int, default=0)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args()
    times, (lo, hi), t1, t2 = CASES[args.case]
    m, _ = nest_supports(heston_marginals(times, grid=np.linspace(lo, hi, args.size)), t2)
    payoff = ForwardStartStraddle(t1=t1, t2=t2)
    sign = 1.0 if args.side == "upper" else -1.0
    rel = relaxed_bounds(m, payoff, (args.side,))
    bound = rel.lower if args.side == "lower" else rel.upper
    sw = _Sweeper(build_chain(m, payoff), m, sign)
    mk = markov_inner(sw, max_seconds=3)
    two_date.MAX_VARIABLES = np.inf
    out = two_date.conditional_law_chain(sw, mk.kernels, rel.info["plans"][args.side], t1,
                                         max_seconds=args.max_seconds, margin=args.margin)
    line = (f"{args.case} {args.side}, M = {args.size}, margin {args.margin}: relaxation "
            f"{bound:.9f}; {out['variables']} variables; {out['status']}")
    if out["status"] == "done":
        line += (f": chain {sign * out['value']:.9f}, L1 marginal error "
                 f"{out['residual']:.1e}, martingale residual {out['drift']:.1e}, fits "
                 f"{out['fits']}, rows below {out['light']:g} on the Markov chain")
    print(f"{line}; {out['seconds']:.1f} s; Markov chain {sign * mk.value:.9f}")


if __name__ == "__main__":
    main()
