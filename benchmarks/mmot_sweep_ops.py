"""Time of the certified bounds' building blocks on the benchmark chains, per call.

    python benchmarks/mmot_sweep_ops.py [--repeats 7] [--json PATH]

The chains of ``benchmarks/mmot_certified.py`` at M = 150 (``heston``: Heston marginals at 0,
30, ..., 150 days, the Asian, the lookback and the forward-start straddle; ``monthly``: 13
monthly dates, the Asian), upper side, potentials from 10 smoothed sweeps (L-BFGS-B at
eps = 1e-2 of the payoff's scale, so the moves and the bands are those of a real point).
Printed per chain, the median wall ms of ``repeats`` calls (one BLAS thread) of:

* ``hard``: the exact sweep F(u) (``_Sweeper.hard``);
* ``step``: one step of the polish (the exact sweep and the forward pass of its moves,
  ``polish.moves_laws``);
* ``certify``: a certificate (``_Sweeper.certify``: lowered to the lines, swept with every
  violation measured);
* ``soft``: one smoothed sweep and its forward pass at that eps (``_Sweeper.soft``);

and a checksum of the four results (equal between two versions of the code when their
arithmetic is the same). Compare versions side by side by alternating processes, e.g.
``PYTHONPATH=<other checkout>/src python benchmarks/mmot_sweep_ops.py``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _chains():
    from deepquant.market.synthetic import heston_marginals
    from deepquant.payoffs import AsianCall, LookbackCall, make_payoff

    heston = heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, 150))
    monthly = heston_marginals(np.arange(13) / 12, grid=np.linspace(0.4, 1.8, 150))
    yield "heston asian", heston, AsianCall(strike=1.0)
    yield "heston lookback", heston, LookbackCall(strike=1.0)
    yield "heston fss", heston, make_payoff("forward-start-straddle", t1=1, t2=5)
    yield "monthly asian", monthly, AsianCall(strike=1.0)


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


OPS = ("hard", "step", "certify", "soft")


def _measure(mu, payoff, repeats: int) -> dict:
    """Median ms per call of ``OPS`` on the upper side of the chain of ``payoff`` on ``mu``,
    at potentials from 10 smoothed sweeps, with the checksum of their results."""
    from scipy.optimize import minimize

    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.polish import moves_laws
    from deepquant.mmot.sweep import _Sweeper

    sw = _Sweeper(build_chain(mu, payoff), mu, 1.0)
    eps = 1e-2 * sw.scale
    u = minimize(lambda v: sw.soft(v, eps, 30.0)[:2], np.zeros(sw.mu_flat.size), jac=True,
                 method="L-BFGS-B", options=dict(maxiter=10)).x
    ops = dict(hard=lambda: sw.hard(u)[0],
               step=lambda: float(moves_laws(sw, sw.hard(u)[1]).sum()),
               certify=lambda: sw.certify(u)[0],
               soft=lambda: sw.soft(u, eps, 30.0)[0])
    row = {op: _median_ms(ops[op], repeats) for op in OPS}
    row.update(checksum=sum(ops[op]() for op in OPS),
               states=int(sum(p.n_s for p in sw.periods)))
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="write the results here (atomically)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")

    from common import emit

    from deepquant.mmot.envelope import warm_kernels

    warm_kernels()
    rows = {}
    for name, mu, payoff in _chains():
        rows[name] = _measure(mu, payoff, args.repeats)
        print(f"{name:16s} " + "  ".join(f"{op} {rows[name][op]:7.2f} ms" for op in OPS)
              + f"  checksum {rows[name]['checksum']:.15e}", flush=True)
    return emit(dict(repeats=args.repeats, rows=rows), ["rows"], args.json)


if __name__ == "__main__":
    main()
