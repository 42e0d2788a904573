"""Certified MMOT bounds at market resolution: time and certified gap against M and N, the exact
LP beside them where it runs (DESIGN §2.8).

    python benchmarks/mmot_certified.py --cases heston --sizes 25 49 150 --payoffs asian lookback fss
    python benchmarks/mmot_certified.py --cases monthly --sizes 150 --payoffs asian
    python benchmarks/mmot_certified.py --cases bs-fss --sizes 800

Cases:
* ``heston``: Heston marginals (``heston_marginals``) at 0, 30, ..., 150 days on [0.55, 1.45];
* ``monthly``: the same at 13 monthly dates (12 periods);
* ``bs-fss``: one-period forward-start straddle |X_2 - X_1|, Black-Scholes sigma = 0.2 at t = 1, 2.

Each side runs in this process with the BLAS pinned to one thread; results (value, inner
estimate, gap, seconds, stages, peak RSS) go to ``benchmarks/results/mmot_certified.json``
(written atomically, one entry per case, merged with earlier runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from deepquant.atomic import write_json
from deepquant.market.synthetic import gbm_marginals, heston_marginals
from deepquant.mmot.bounds import bounds, lp_columns
from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall

OUT = Path(__file__).parent / "results" / "mmot_certified.json"
PAYOFFS = dict(asian=lambda n: AsianCall(strike=1.0), lookback=lambda n: LookbackCall(strike=1.0),
               fss=lambda n: ForwardStartStraddle(t1=1, t2=n - 1))


def marginals(case: str, size: int):
    if case == "heston":
        return heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, size))
    if case == "monthly":
        return heston_marginals(np.arange(13) / 12, grid=np.linspace(0.4, 1.8, size))
    if case == "bs-fss":
        return gbm_marginals([0.0, 1.0, 2.0], grid=np.linspace(0.2, 3.0, size), sigma=0.2)
    raise ValueError(f"unknown case {case!r}")


def run(case: str, size: int, payoff_name: str, *, rtol: float, max_seconds: float,
        lp_max_columns: int, workers: int = 1) -> dict:
    m = marginals(case, size)
    payoff = PAYOFFS[payoff_name](m.n_dates) if case != "bs-fss" else \
        ForwardStartStraddle(t1=1, t2=2)
    stages = []
    t0 = time.perf_counter()
    res = bounds(m, payoff, method="certified", rtol=rtol, max_seconds=max_seconds,
                 workers=workers, progress=lambda p: stages.append(dict(side=p.side, eps=p.eps, outer=p.outer,
                                                       inner=p.inner, seconds=p.seconds)))
    wall = time.perf_counter() - t0
    entry = dict(case=case, size=size, payoff=payoff_name, n_periods=m.n_dates - 1, workers=workers,
                 lower=res.lower, upper=res.upper, status=res.status, seconds=res.timings,
                 wall=wall, sizes=res.sizes, exact_statistic=res.exact, stages=stages)
    for side in ("lower", "upper"):
        s = getattr(res, f"{side}_side")
        entry[side + "_inner"] = s.info["inner"]
        entry[side + "_gap"] = s.gap
        entry[side + "_relative_gap"] = s.gap / max(abs(s.value), 1e-300)
        entry[side + "_marginal_error"] = s.primal_residual
        entry[side + "_inner_kind"] = s.info["inner_kind"]
        # the inner chain's L1 marginal miss on the M-point grid (a bound for a coarse inner)
        entry[side + "_inner_marginal_bound"] = s.info.get("inner_marginal_bound",
                                                           s.primal_residual)
        # the Markov stage on the M-point grid (value, cycles, status, seconds), if it ran
        entry[side + "_markov"] = s.info.get("markov")
        # the path-dependent chains (kernels of X_t and a class of S_t), per values to go
        entry[side + "_path"] = s.info.get("path")
        # the certificate's subgradient polish (start and end, steps, seconds), if it ran
        entry[side + "_polish"] = s.info.get("polish")
    cols = lp_columns(m, payoff)
    entry["lp_columns"] = cols
    if cols <= lp_max_columns:
        t0 = time.perf_counter()
        lp = bounds(m, payoff, method="lp")
        entry.update(lp_lower=lp.lower, lp_upper=lp.upper, lp_seconds=time.perf_counter() - t0)
    entry["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["heston"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[25, 49])
    ap.add_argument("--payoffs", nargs="+", default=["asian", "lookback", "fss"])
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--lp-max-columns", type=int, default=200_000)
    ap.add_argument("--workers", type=int, choices=(1, 2), default=1,
                    help="processes per side (2: the path passes beside the polish)")
    args = ap.parse_args()
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    for case in args.cases:
        for size in args.sizes:
            for name in (["fss"] if case == "bs-fss" else args.payoffs):
                e = run(case, size, name, rtol=args.rtol, max_seconds=args.max_seconds,
                        lp_max_columns=args.lp_max_columns, workers=args.workers)
                old[f"{case}/{name}/{size}"] = e
                write_json(OUT, old)
                print(f"{case:8s} {name:9s} M={size:4d} lower {e['lower']:.6f} "
                      f"(gap {e['lower_relative_gap']:.1e}) upper {e['upper']:.6f} "
                      f"(gap {e['upper_relative_gap']:.1e}) {e['seconds']['lower']:.1f}+"
                      f"{e['seconds']['upper']:.1f} s  LP "
                      f"{e.get('lp_lower', float('nan')):.6f} "
                      f"{e.get('lp_upper', float('nan')):.6f}", flush=True)
                for side in ("lower", "upper"):
                    print(f"    {side}: inner {e[side + '_inner']:.6f} (marginal error "
                          f"{e[side + '_marginal_error']:.2g}; {e[side + '_inner_kind']}; "
                          f"off the M-point marginals by <= "
                          f"{e[side + '_inner_marginal_bound']:.2g})", flush=True)
                    if e[side + "_markov"] is not None:
                        mk = e[side + "_markov"]
                        print(f"    {side}: Markov stage {mk['value']:.6f}, {mk['cycles']} "
                              f"cycles, {mk['status']}, {mk['seconds']:.2f} s", flush=True)
                    if e.get(side + "_path") is not None:
                        tried = ", ".join(f"{k} {v['value']:.6f} ({v['seconds']:.2f} s)"
                                          for k, v in e[side + "_path"]["tried"].items())
                        print(f"    {side}: path-dependent stage: {tried or 'none finished'}",
                              flush=True)
                    if e.get(side + "_polish") is not None:
                        po = e[side + "_polish"]
                        print(f"    {side}: polish {po['start']:.6f} -> {po['value']:.6f}, "
                              f"{po['steps']} steps, {po['seconds']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
