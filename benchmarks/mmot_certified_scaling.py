"""How the certified MMOT method's cost grows with the grid size M and the number of periods N,
stated as exponents, and its peak memory (DESIGN §2.8).

    python benchmarks/mmot_certified_scaling.py
    python benchmarks/mmot_certified_scaling.py --payoffs asian --sizes 25 50 --periods 2 3

Two axes, each payoff (Asian call K = 1, lookback call K = 1, forward-start straddle from date 1
to the last date; ``PAYOFFS`` of ``mmot_certified.py``):

* M in ``--sizes`` at N = 5: the ``heston`` case of ``mmot_certified.py`` (Heston marginals at
  0, 30, ..., 150 days on [0.55, 1.45]);
* N in ``--periods`` at M = ``--period-size`` (150): Heston marginals at N + 1 monthly dates on
  [0.4, 1.8] (the ``monthly`` case is N = 12).

Per case: the upper side of ``certified_bounds`` with ``--start-seconds`` (its own chain, its
coarse LP levels; the potentials it certifies are the point the sweeps are timed at), then the
chain built again on its own (``build_chain`` after ``nest_supports``, as ``certified_bounds``
does; median of ``--repeats`` builds after an untimed one), its size (states, reachable pairs
(x, s), columns of the chain LP), and the median of ``--repeats`` calls, after one untimed
call, of one certificate
(``_Sweeper.certify``: two exact sweeps, the lowering to the lines and the verified one) and of
one smoothed sweep with forward pass (``_Sweeper.soft`` at eps = 1e-4 x ``sw.scale``, band 40)
started cold (no Halley warm start) and warm (from the previous call at the same potentials);
then both (soft cold) at u = 0, a point comparable across cases whatever the short run reached.
Times in ms in the table (medians), seconds in the JSON (every run).
The numba kernels are compiled or loaded before the first case (``warm_kernels``). With
``--bracket-seconds S``, also the certified bracket (both sides, S seconds each) on the M axis up
to ``--bracket-max-size``.

Memory: the process's peak resident set (VmHWM of /proc/self/status, reset per phase by writing
5 to /proc/self/clear_refs, Linux >= 4.0), absolute and as the increase over the resident set
before the phase, for the certified run, the build + sweeps and the bracket; the largest of
them is the process's peak over the run (``ru_maxrss`` cannot say it: the reset lowers it too).

Exponents: least squares in log-log over the cases measured, time ~ M^a (N = 5), ~ N^b
(M = 150), LP columns ~ M^c, ~ N^d; the same without the smallest case (``upper``: N = 2 is a
one-month chain of a few hundred states, M = 25 times of a millisecond) and the local slopes
between neighbouring sizes. The BLAS
is pinned to one thread (as the method runs it). Results go to
``benchmarks/results/mmot_certified_scaling.json`` (``--out``), written atomically after every
case; progress lines on stderr.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from mmot_certified import PAYOFFS, marginals  # noqa: E402

from deepquant.atomic import write_json  # noqa: E402
from deepquant.market.synthetic import heston_marginals  # noqa: E402

OUT = Path(__file__).parent / "results" / "mmot_certified_scaling.json"
PERIODS_AXIS_SIZE = 150
SIZES_AXIS_PERIODS = 5
EPS_REL = 1e-4
BAND = 40.0
METRICS = ("build_s", "sweeper_s", "certify_s", "soft_cold_s", "soft_warm_s", "certify_zero_s",
           "soft_zero_s", "lp_columns", "pairs")


def monthly(n_periods: int, size: int):
    """Heston marginals at n_periods + 1 monthly dates on [0.4, 1.8] with ``size`` points."""
    return heston_marginals(np.arange(n_periods + 1) / 12, grid=np.linspace(0.4, 1.8, size))


def _status_kb() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                if k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Peak:
    """Peak RSS of a phase: ``mb`` the process's peak, ``increase_mb`` over the RSS before."""

    def __enter__(self):
        gc.collect()
        self.ok = _reset_peak()
        self.rss0 = _status_kb()["VmRSS"]
        return self

    def __exit__(self, *exc):
        hwm = _status_kb()["VmHWM"]
        self.mb = hwm / 1024 if self.ok else None
        self.increase_mb = (hwm - self.rss0) / 1024 if self.ok else None


def _timed(fn, repeats: int, before=None) -> list[float]:
    """Seconds of ``repeats`` calls of fn after one untimed call; ``before()`` runs untimed
    ahead of every call."""
    out = []
    for i in range(repeats + 1):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        if i:
            out.append(time.perf_counter() - t0)
    return out


def bracket(m, payoff, max_seconds: float) -> dict:
    """Both sides of ``certified_bounds`` with ``max_seconds`` each: bounds, gaps, seconds."""
    from deepquant.mmot.multiscale import certified_bounds

    with _Peak() as pk:
        res = certified_bounds(m, payoff, max_seconds=max_seconds)
    return dict(lower=res.lower, upper=res.upper, seconds=res.timings,
                lower_relative_gap=res.lower_side.info["relative_gap"],
                upper_relative_gap=res.upper_side.info["relative_gap"], peak_rss_mb=pk.mb)


def measure(m, payoff, *, repeats: int, start_seconds: float) -> dict:
    """One case: the short certified run, then the chain build, its size and the sweeps."""
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.certified import lp_columns, nest_supports
    from deepquant.mmot.multiscale import certified_bounds
    from deepquant.mmot.sweep import _Sweeper

    e = {}
    with _Peak() as pk:
        t0 = time.perf_counter()
        res = certified_bounds(m, payoff, sides=("upper",), max_seconds=start_seconds)
        e["start_wall_s"] = time.perf_counter() - t0
    side = res.upper_side
    u_grid = side.info["u_sweep"]
    e.update(start_upper=side.value, start_inner=side.info["inner"],
             start_relative_gap=side.info["relative_gap"], start_peak_rss_mb=pk.mb,
             start_rss_increase_mb=pk.increase_mb)
    del res, side
    T = payoff.last_date(m.n_dates)
    with _Peak() as pk:
        mn, _ = nest_supports(m, T)
        times = _timed(lambda: build_chain(mn, payoff), repeats)
        e["build_s"], e["build_runs_s"] = float(np.median(times)), times
        chain = build_chain(mn, payoff)
        t0 = time.perf_counter()
        sw = _Sweeper(chain, mn, 1.0)
        e["sweeper_s"] = time.perf_counter() - t0
        u = sw.flatten(u_grid)
        e["certify_value"] = sw.certify(u)[0]
        times = _timed(lambda: sw.certify(u), repeats)
        e["certify_s"], e["certify_runs_s"] = float(np.median(times)), times
        eps = EPS_REL * sw.scale

        def cold():
            sw.h_warm = [None] * sw.T

        times = _timed(lambda: sw.soft(u, eps, BAND), repeats, before=cold)
        e["soft_cold_s"], e["soft_cold_runs_s"] = float(np.median(times)), times
        times = _timed(lambda: sw.soft(u, eps, BAND), repeats)
        e["soft_warm_s"], e["soft_warm_runs_s"] = float(np.median(times)), times
        # the same at u = 0: one point comparable across cases, whatever the short run reached
        zero = np.zeros_like(u)
        times = _timed(lambda: sw.certify(zero), repeats)
        e["certify_zero_s"], e["certify_zero_runs_s"] = float(np.median(times)), times
        times = _timed(lambda: sw.soft(zero, eps, BAND), repeats, before=cold)
        e["soft_zero_s"], e["soft_zero_runs_s"] = float(np.median(times)), times
    e.update(sweeps_peak_rss_mb=pk.mb, sweeps_rss_increase_mb=pk.increase_mb,
             states=int(sum(chain.n_states)), states_per_date=chain.n_states,
             pairs=int(sum(r.sum() for r in chain.reach)), lp_columns=lp_columns(chain),
             kind=chain.kind, exact_statistic=bool(chain.exact), last_date=int(T),
             eps=eps, scale=sw.scale)
    return e


def fit_exponent(x, y) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def exponents(rows: list[dict]) -> dict:
    """Per payoff and axis: the fitted exponent of every metric and the local slopes."""
    fits = {}
    for axis, var in (("sizes", "size"), ("periods", "n_periods")):
        for name in sorted({r["payoff"] for r in rows if r["axis"] == axis}):
            sel = sorted((r for r in rows if r["axis"] == axis and r["payoff"] == name),
                         key=lambda r: r[var])
            x = [r[var] for r in sel]
            fits.setdefault(name, {})[axis] = {
                k: dict(exponent=fit_exponent(x, [r[k] for r in sel]),
                        upper=fit_exponent(x[1:], [r[k] for r in sel[1:]]),
                        local=[float(np.log(b[k] / a[k]) / np.log(b[var] / a[var]))
                               for a, b in zip(sel, sel[1:], strict=False)])
                for k in METRICS} | {"x": x}
    return fits


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _table(rows: list[dict]) -> None:
    print(f"{'axis':7s} {'payoff':9s} {'M':>4s} {'N':>3s} {'states':>7s} {'pairs':>9s} "
          f"{'LP cols':>11s} {'build ms':>8s} {'cert ms':>8s} {'soft cold':>10s} "
          f"{'soft warm':>10s} {'cert u=0':>9s} {'soft u=0':>9s} {'peak MB':>8s} "
          f"{'start MB':>8s}")
    for r in rows:
        print(f"{r['axis']:7s} {r['payoff']:9s} {r['size']:4d} {r['n_periods']:3d} "
              f"{r['states']:7d} {r['pairs']:9d} {r['lp_columns']:11d} {1e3 * r['build_s']:8.1f} "
              f"{1e3 * r['certify_s']:8.1f} {1e3 * r['soft_cold_s']:8.1f}ms "
              f"{1e3 * r['soft_warm_s']:8.1f}ms {1e3 * r['certify_zero_s']:9.1f} "
              f"{1e3 * r['soft_zero_s']:9.1f} {r['sweeps_peak_rss_mb'] or 0:8.0f} "
              f"{r['start_peak_rss_mb'] or 0:8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--payoffs", nargs="+", default=["asian", "lookback", "fss"],
                    choices=sorted(PAYOFFS))
    ap.add_argument("--sizes", nargs="*", type=int, default=[25, 50, 100, 150, 300])
    ap.add_argument("--periods", nargs="*", type=int, default=[2, 3, 5, 8, 12])
    ap.add_argument("--period-size", type=int, default=PERIODS_AXIS_SIZE)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--start-seconds", type=float, default=3.0,
                    help="budget of the short certified run (upper side) whose potentials "
                         "the sweeps are timed at")
    ap.add_argument("--bracket-seconds", type=float, default=0.0,
                    help="also the certified bracket (both sides, this budget each) on the "
                         "M axis up to --bracket-max-size; 0 skips it")
    ap.add_argument("--bracket-max-size", type=int, default=150)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    from deepquant.mmot.envelope import warm_kernels

    warmup = warm_kernels()
    cases = [("sizes", s, SIZES_AXIS_PERIODS) for s in args.sizes] + \
            [("periods", args.period_size, n) for n in args.periods]
    rows: list[dict] = []
    out = dict(command=" ".join(sys.argv), repeats=args.repeats,
               start_seconds=args.start_seconds, bracket_seconds=args.bracket_seconds, eps_rel=EPS_REL, band=BAND,
               warmup_seconds=warmup, rows=rows)
    for axis, size, n in cases:
        for name in args.payoffs:
            m = marginals("heston", size) if axis == "sizes" else monthly(n, size)
            payoff = PAYOFFS[name](m.n_dates)
            _progress(f"{axis} {name} M={size} N={n} ...")
            t0 = time.perf_counter()
            e = measure(m, payoff, repeats=args.repeats, start_seconds=args.start_seconds)
            if args.bracket_seconds > 0 and axis == "sizes" and size <= args.bracket_max_size:
                e["bracket"] = bracket(m, payoff, args.bracket_seconds)
            rows.append(dict(axis=axis, payoff=name, size=size, n_periods=n,
                             load=os.getloadavg()[0], **e))
            _progress(f"  done in {time.perf_counter() - t0:.1f} s: {e['lp_columns']} columns, "
                      f"certify {1e3 * e['certify_s']:.1f} ms, soft "
                      f"{1e3 * e['soft_cold_s']:.1f} / {1e3 * e['soft_warm_s']:.1f} ms, peak "
                      f"{e['start_peak_rss_mb'] or 0:.0f} / {e['sweeps_peak_rss_mb'] or 0:.0f} MB")
            peaks = [r.get(k) for r in rows for k in ("start_peak_rss_mb", "sweeps_peak_rss_mb")]
            peaks += [r["bracket"]["peak_rss_mb"] for r in rows if "bracket" in r]
            out.update(fits=exponents(rows), peak_rss_mb=max((p for p in peaks if p), default=None))
            write_json(args.out, out)
    _table(rows)
    for r in rows:
        if "bracket" in r:
            b = r["bracket"]
            print(f"bracket {r['payoff']:9s} M={r['size']:4d} [{b['lower']:.6f}, "
                  f"{b['upper']:.6f}] gaps {b['lower_relative_gap']:.2%} / "
                  f"{b['upper_relative_gap']:.2%} in {b['seconds']['lower']:.1f} + "
                  f"{b['seconds']['upper']:.1f} s")
    for name, axes in out["fits"].items():
        for axis, f in axes.items():
            var = "M" if axis == "sizes" else "N"
            print(f"{name:9s} ~ {var}^ (all / without the smallest): " + ", ".join(
                f"{k} {f[k]['exponent']:.2f}/" + ("-" if f[k]["upper"] is None
                                                  else f"{f[k]['upper']:.2f}")
                for k in METRICS if f[k]["exponent"] is not None))
    print(f"process peak RSS {out['peak_rss_mb'] or 0:.0f} MB; load "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
