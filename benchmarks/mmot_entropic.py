"""Benchmarks of the batched entropic MMOT solver (DESIGN §2.1–2.2).

Sections (``--section``, default all):

* ``main``    N=10, M=150, eps=1e-3, c=0, product reference, tol 1e-9 on the L1 marginal error
              and on the drift: Newton (default multiscale start; cold start; 2 BLAS threads)
              side by side with plain martingale-Sinkhorn (seed 001 Algorithm 1), interleaved
              repeats, medians, ratios.
* ``large``   N=50, M=500 (default and cold start, interleaved).
* ``scaling`` (N, M) = (2,100), (10,150), (20,200), (50,500), (100,1000): median time, Newton
              iterations, peak traced memory (tracemalloc), fitted exponents (CPU time).
* ``lp``      transport cost of the entropic plan -> one-period LP values (HiGHS) as eps -> 0,
              for |X1 - X0| (min and max): gaps, the power rate gap ~ eps^r fitted on
              eps >= 1e-3 and the slope of log(gap) against 1/eps below (exponential regime).

Marginals: lognormal laws (sigma=0.2, T=1, dates t_k = k T/N, total variance sigma^2 (t_k + T/N))
discretised on a uniform moneyness grid [0.5, 2.0] by interpolating Black–Scholes call prices
(corrected by an affine function so that all mass is on the grid and the mean is 1): exactly in
convex order on the grid. Built here, independently of ``deepquant.market.synthetic``.

Usage:  python benchmarks/mmot_entropic.py [--section main] [--repeats 7] [--out FILE.json]
        [--baseline PATH/TO/old_entropic.py]
``--baseline`` loads another version of ``deepquant/mmot/entropic.py`` from a file and runs its
``solve_entropic`` interleaved with the current one in ``main`` and ``large`` (old vs new in the
same run, same load).
The machine is shared: every timing is a median of interleaved repeats, and the load average is
recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
import warnings

import numpy as np
from common import lognormal_rows  # noqa: E402
from scipy import optimize, sparse

from deepquant.market.marginals import Marginals
from deepquant.mmot.entropic import solve_entropic
from deepquant.results import ConvergenceWarning


def lognormal_marginals(n: int, m: int, sigma: float = 0.2, maturity: float = 1.0,
                        lo: float = 0.5, hi: float = 2.0) -> Marginals:
    grid = np.linspace(lo, hi, m)
    times = np.linspace(0.0, maturity, n + 1)
    return Marginals(grid, lognormal_rows(grid, sigma**2 * (times + maturity / n)), times)


BASELINE = None   # module loaded from --baseline
SKIP: set[str] = set()   # variants of section main not to run (--skip)


def _load_baseline(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("entropic_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["entropic_baseline"] = mod          # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


def _run(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        c0 = time.process_time()
        t0 = time.perf_counter()
        res = fn(*args, **kw)
        return res, time.perf_counter() - t0, time.process_time() - c0


def _row(res, seconds, cpu_seconds):
    return {"seconds": seconds, "cpu_seconds": float(cpu_seconds),
            "nit": int(res.nit), "sweeps": int(res.sweeps),
            "marginal_error": float(res.marginal_error), "drift": float(res.drift),
            "success": bool(res.success),
            "coarse": [{"grid_size": h["grid_size"], "nit": h["iteration"]}
                       for h in getattr(res, "history", []) if h.get("kind") == "coarse"]}


def section_main(repeats: int) -> dict:
    mg = lognormal_marginals(10, 150)
    eps = 1e-3
    variants = {
        "newton_1thread": lambda: _run(solve_entropic, mg, eps, threads=1),
        "newton_cold_1thread": lambda: _run(solve_entropic, mg, eps, threads=1,
                                            multiscale=False),
        "newton_2threads": lambda: _run(solve_entropic, mg, eps, threads=2),
        "sinkhorn_1thread": lambda: _run(solve_entropic, mg, eps, threads=1,
                                         method="sinkhorn", max_iter=20_000),
    }
    if BASELINE is not None:
        variants["baseline_newton_1thread"] = lambda: _run(BASELINE.solve_entropic, mg, eps,
                                                           threads=1)
    variants = {k: v for k, v in variants.items() if k not in SKIP}
    runs: dict[str, list] = {k: [] for k in variants}
    for rep in range(repeats):                     # interleaved: same load for every variant
        for name, fn in variants.items():
            if name == "newton_2threads" and rep >= 3:
                continue                           # seconds each under load: 3 repeats
            res, sec, cpu = fn()
            runs[name].append(_row(res, sec, cpu))
    out = {}
    for name, rows in runs.items():
        secs = [r["seconds"] for r in rows]
        out[name] = dict(rows[-1], median_seconds=float(np.median(secs)),
                         median_cpu_seconds=float(np.median([r["cpu_seconds"] for r in rows])),
                         min_seconds=float(np.min(secs)), max_seconds=float(np.max(secs)),
                         repeats=len(secs))
    base = out["newton_1thread"]["median_seconds"]
    if "sinkhorn_1thread" in out:
        out["ratio_sinkhorn_over_newton"] = out["sinkhorn_1thread"]["median_seconds"] / base
    if "newton_cold_1thread" in out:
        cold = out["newton_cold_1thread"]
        out["ratio_cold_over_multiscale_wall"] = cold["median_seconds"] / base
        out["ratio_cold_over_multiscale_cpu"] = (cold["median_cpu_seconds"]
                                                 / out["newton_1thread"]["median_cpu_seconds"])
    if "newton_2threads" in out:
        out["ratio_2threads_over_1thread"] = out["newton_2threads"]["median_seconds"] / base
    if BASELINE is not None:
        old = out["baseline_newton_1thread"]
        out["ratio_baseline_over_newton_wall"] = old["median_seconds"] / base
        out["ratio_baseline_over_newton_cpu"] = (old["median_cpu_seconds"]
                                                 / out["newton_1thread"]["median_cpu_seconds"])
    out["problem"] = {"N": 10, "M": 150, "eps": eps, "tol": 1e-9, "grid": [0.5, 2.0]}
    return out


def section_large(repeats: int) -> dict:
    mg = lognormal_marginals(50, 500)
    secs, cpus, res = [], [], None
    bsecs, bcpus, bres = [], [], None
    csecs, ccpus, cres = [], [], None
    for _ in range(repeats):                       # interleaved: cold start, baseline if any
        res, sec, cpu = _run(solve_entropic, mg, 1e-3)
        secs.append(sec)
        cpus.append(cpu)
        cres, csec, ccpu = _run(solve_entropic, mg, 1e-3, multiscale=False)
        csecs.append(csec)
        ccpus.append(ccpu)
        if BASELINE is not None:
            bres, bsec, bcpu = _run(BASELINE.solve_entropic, mg, 1e-3)
            bsecs.append(bsec)
            bcpus.append(bcpu)
    out = dict(_row(res, secs[-1], cpus[-1]), median_seconds=float(np.median(secs)),
               median_cpu_seconds=float(np.median(cpus)),
               min_seconds=float(np.min(secs)), repeats=repeats,
               problem={"N": 50, "M": 500, "eps": 1e-3})
    out["cold_start"] = dict(_row(cres, csecs[-1], ccpus[-1]), median_seconds=float(np.median(csecs)),
                             median_cpu_seconds=float(np.median(ccpus)),
                             min_seconds=float(np.min(csecs)), repeats=repeats)
    out["ratio_cold_over_multiscale_cpu"] = float(np.median(ccpus) / np.median(cpus))
    if BASELINE is not None:
        out["baseline"] = dict(_row(bres, bsecs[-1], bcpus[-1]), median_seconds=float(np.median(bsecs)),
                               median_cpu_seconds=float(np.median(bcpus)),
                               min_seconds=float(np.min(bsecs)), repeats=repeats)
    return out


def section_scaling(repeats: int) -> dict:
    """Median wall and CPU time, Newton iterations and peak traced memory per size.

    tracemalloc is on during every repeat (NumPy reports its buffers to it; the overhead is per
    allocation, negligible here). Sizes with N M^2 > 5e6 run once.
    """
    sizes = [(2, 100), (10, 150), (20, 200), (50, 500), (100, 1000)]
    rows = []
    for n, m in sizes:
        mg = lognormal_marginals(n, m)
        reps = repeats if n * m * m <= 5e6 else 1
        secs, cpus, peaks = [], [], []
        for _ in range(reps):
            tracemalloc.start()
            res, sec, cpu = _run(solve_entropic, mg, 1e-3)
            peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
            tracemalloc.stop()
            secs.append(sec)
            cpus.append(cpu)
        rows.append(dict(_row(res, secs[-1], cpus[-1]), N=n, M=m, median_seconds=float(np.median(secs)),
                         median_cpu_seconds=float(np.median(cpus)), repeats=reps,
                         peak_mib=float(max(peaks)), output_mib=n * m * m * 8 / 2**20,
                         loadavg=os.getloadavg()[0]))
        print(f"  scaling N={n} M={m}: {np.median(secs):.3f} s (cpu {np.median(cpus):.3f} s), "
              f"nit {res.nit}, peak {max(peaks):.0f} MiB", file=sys.stderr, flush=True)
    n = np.array([r["N"] for r in rows], float)
    m = np.array([r["M"] for r in rows], float)
    t = np.array([r["median_cpu_seconds"] for r in rows])
    mem = np.array([r["peak_mib"] for r in rows])
    # CPU time per period against M (periods are independent): t / N ~ M^beta
    beta = float(np.polyfit(np.log(m), np.log(t / n), 1)[0])
    # joint fit log t = a + alpha log N + beta log M (N and M grow together: indicative only)
    a = np.column_stack([np.ones_like(n), np.log(n), np.log(m)])
    coef = np.linalg.lstsq(a, np.log(t), rcond=None)[0]
    beta_mem = float(np.polyfit(np.log(m), np.log(mem / n), 1)[0])
    return {"rows": rows, "per_period_cpu_exponent_in_M": beta,
            "joint_fit_cpu": {"alpha_N": float(coef[1]), "beta_M": float(coef[2])},
            "per_period_memory_exponent_in_M": beta_mem}


def _one_period_lp(mu, nu, x, cost, sense):
    m = x.size
    eye = sparse.identity(m, format="csr")
    ones = sparse.csr_matrix(np.ones((1, m)))
    a_eq = sparse.vstack([sparse.kron(eye, ones), sparse.kron(ones, eye),
                          sparse.kron(eye, sparse.csr_matrix(x[None, :]))]).tocsr()
    b_eq = np.concatenate([mu, nu, x * mu])
    res = optimize.linprog(sense * cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                           method="highs")
    if res.status != 0:
        raise RuntimeError(res.message)
    return float(sense * res.fun)


def section_lp(repeats: int) -> dict:
    from deepquant.payoffs import ForwardStartStraddle

    mg = lognormal_marginals(1, 41, sigma=0.25)
    x = mg.grid
    cost = np.abs(x[None, :] - x[:, None])
    payoff = ForwardStartStraddle(strike=1.0, t1=0, t2=1)
    eps_list = [3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5]
    out = {}
    for label, sense in (("lower", 1), ("upper", -1)):
        lp = _one_period_lp(mg.weights[0], mg.weights[1], x, cost, sense)
        gaps, rows = [], []
        for eps in eps_list:
            res, sec, _ = _run(solve_entropic, mg, eps, cost=payoff, maximize=sense < 0)
            gap = sense * (res.transport_cost - lp)
            gaps.append(gap)
            rows.append({"eps": eps, "transport_cost": res.transport_cost, "gap": gap,
                         "relative_gap": gap / abs(lp), "seconds": sec, "nit": res.nit,
                         "success": res.success, "marginal_error": res.marginal_error,
                         "drift": res.drift})
        g = np.array(gaps)
        e = np.array(eps_list)
        pre = (e >= 1e-3) & (g > 0)
        power = float(np.polyfit(np.log(e[pre]), np.log(g[pre]), 1)[0])
        small = (e <= 3e-3) & (g > 1e-9)
        expo = float(np.polyfit(1.0 / e[small], np.log(g[small]), 1)[0]) if small.sum() > 1 else None
        out[label] = {"lp": lp, "rows": rows,
                      "power_rate_eps_ge_1e-3": power,
                      "exp_rate_log_gap_per_unit_1_over_eps": expo}
    out["problem"] = {"payoff": "|X1 - X0| (forward-start straddle, k=1)", "N": 1, "M": 41,
                      "sigma": 0.25}
    return out


SECTIONS = {"main": section_main, "large": section_large, "scaling": section_scaling,
            "lp": section_lp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=[*SECTIONS, "all"], default="all")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--baseline", default=None,
                    help="another entropic.py to time side by side (main, large)")
    ap.add_argument("--skip", default="",
                    help="comma-separated variants of 'main' to skip (e.g. sinkhorn_1thread)")
    args = ap.parse_args()
    global BASELINE, SKIP
    if args.baseline:
        BASELINE = _load_baseline(args.baseline)
    SKIP = {v for v in args.skip.split(",") if v}
    names = list(SECTIONS) if args.section == "all" else [args.section]
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "numpy": np.__version__,
                           "loadavg_start": os.getloadavg()}}
    for name in names:
        print(f"section {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results[name] = SECTIONS[name](args.repeats)
        results[name]["section_seconds"] = time.perf_counter() - t0
    results["machine"]["loadavg_end"] = os.getloadavg()
    text = json.dumps(results, indent=2, default=float)
    if args.out:
        from deepquant.atomic import write_text

        write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
