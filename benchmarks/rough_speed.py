"""CPU time of the rough Bergomi standard case, old code against new, and a small reference case
(docs/benchmarks-rough.md, "Speed").

Usage (one BLAS thread; each case runs in a fresh subprocess on the source tree it names)::

    python benchmarks/rough_speed.py reference --src SRC --commit SHA
        [--out tests/rough/data/rbergomi_speed_reference.json]
    python benchmarks/rough_speed.py compare --old SRC_OLD --new SRC_NEW [--strikes 100 70 120]
        [--steps 8 16] [--repeats 1] [--out benchmarks/results/rough_speed.json]
    python benchmarks/rough_speed.py case --strike K [--steps 8 16]   # one case, JSON on stdout
    python benchmarks/rough_speed.py summary [--out benchmarks/results/rough_speed.json]

``reference``: the small coupled case of ``tests/rough/test_rough_speed.py`` run by the code in
SRC (the package directory's parent, e.g. an export of an older commit); its values are written
with the commit as their source. ``compare``: the standard case (``rbergomi`` preset scaled down
as in the convergence study: 2^15 regression paths, 4 batches of 2^13, seed 7, features twice per
period, coupled grids ``--steps``) per strike, the old and the new tree alternating case by case
so that they share the machine's load; CPU seconds are the child's process time around
``price_converged`` (imports and numba compilation outside, reported apart as ``cpu_total``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SMALL = dict(n_regression=2**12, batch_size=2**10, min_batches=2, max_batches=2,
             subsim_outer=2**5, subsim_inner=32, feature_steps=2)
"""The reference case: the ``rbergomi`` preset with these overrides, grids of 4 and 8 steps per
period, K = 100, seed 11."""


def run_case(strike: float, steps: tuple, small: bool, seed: int) -> dict:
    from threadpoolctl import threadpool_limits

    c_start = time.process_time()
    from deepquant.rough import RoughBergomi, preset_pricer
    from deepquant.rough.extrapolate import price_converged

    if small:
        pricer = preset_pricer("rbergomi", **SMALL)
    else:
        pricer = preset_pricer("rbergomi", n_regression=2**15, batch_size=2**13, min_batches=4,
                               max_batches=4, feature_steps=2)
    with threadpool_limits(1):
        c0 = time.process_time()
        res = price_converged(RoughBergomi(), float(strike), pricer=pricer, steps=tuple(steps),
                              coupled=True, rng=seed)
        cpu = time.process_time() - c0
    return dict(strike=float(strike), steps=list(steps), value=res.value, lower=res.lower,
                upper=res.upper, stderr=res.stderr, gap=res.gap,
                discretisation_error=res.discretisation_error,
                discretisation_stderr=res.discretisation_stderr,
                runs=[dict(lower=r.lower, upper=r.upper, lower_stderr=r.lower_stderr,
                           upper_stderr=r.upper_stderr, lower_plain=r.lower_plain)
                      for r in res.runs],
                cpu_seconds=cpu, cpu_total=time.process_time() - c_start)


def _child(src: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "case", *args], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cmd_case(args) -> None:
    print(json.dumps(run_case(args.strike, tuple(args.steps), args.small, args.seed)))


def cmd_reference(args) -> None:
    row = _child(args.src, "--strike", "100", "--steps", "4", "8", "--small", "--seed", "11")
    data = dict(source=f"benchmarks/rough_speed.py reference, code of commit {args.commit}",
                case=dict(preset="rbergomi", overrides=SMALL, steps=[4, 8], strike=100.0,
                          seed=11, coupled=True), **{k: row[k] for k in row
                                                     if not k.startswith("cpu")})
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data, indent=1))


def cmd_compare(args) -> None:
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"cases": []}
    data["config"] = dict(preset="rbergomi", regression_paths=2**15, batch_size=2**13,
                          batches=4, seed=7, feature_steps=2, coupled=True,
                          old=args.old, new=args.new, old_commit=args.old_commit)
    for _ in range(args.repeats):
        for K in args.strikes:
            for name, src in (("old", args.old), ("new", args.new)):
                row = _child(src, "--strike", str(K), "--steps", *map(str, args.steps))
                row["code"] = name
                data["cases"].append(row)
                out.write_text(json.dumps(data, indent=1) + "\n")
                print(f"{name} K={K:g} steps={args.steps}: {row['value']:.6f} "
                      f"[{row['lower']:.6f}, {row['upper']:.6f}] disc "
                      f"{row['discretisation_error']:.4f} cpu {row['cpu_seconds']:.1f} s "
                      f"(with imports {row['cpu_total']:.1f} s)", flush=True)


def cmd_summary(args) -> None:
    """The markdown table of ``--out``: per strike and code the prices and CPU seconds (median
    over repeats), and the median over repeats of the ratio new / old of each adjacent pair
    (the two ran one after the other, under the same load)."""
    data = json.loads(Path(args.out).read_text())
    print("| K | grids | code | extrapolated [lower, upper] | disc. error +- stderr | finest gap "
          "| CPU s (each run) | new / old (per pair) |")
    print("|---|---|---|---|---|---|---|---|")
    for K in sorted({c["strike"] for c in data["cases"]}):
        rows = {code: [c for c in data["cases"] if c["strike"] == K and c["code"] == code]
                for code in ("old", "new")}
        pairs = [n["cpu_seconds"] / o["cpu_seconds"]
                 for o, n in zip(rows["old"], rows["new"], strict=False)]
        for code in ("old", "new"):
            if not rows[code]:
                continue
            c = rows[code][-1]
            cpu = ", ".join(f"{r['cpu_seconds']:.1f}" for r in rows[code])
            ratio = ""
            if code == "new" and pairs:
                ratio = (f"{float(np.median(pairs)):.2f} ("
                         + ", ".join(f"{x:.2f}" for x in pairs) + ")")
            print(f"| {K:g} | {', '.join(map(str, c['steps']))} | {code} | {c['value']:.6f} "
                  f"[{c['lower']:.6f}, {c['upper']:.6f}] | {c['discretisation_error']:.4f} +- "
                  f"{c['discretisation_stderr']:.4f} | {c['gap']:.4f} | {cpu} | {ratio} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("case")
    q.add_argument("--strike", type=float, required=True)
    q.add_argument("--steps", type=int, nargs="+", default=[8, 16])
    q.add_argument("--small", action="store_true")
    q.add_argument("--seed", type=int, default=7)
    q = sub.add_parser("reference")
    q.add_argument("--src", required=True)
    q.add_argument("--commit", required=True)
    q.add_argument("--out", default="tests/rough/data/rbergomi_speed_reference.json")
    q = sub.add_parser("compare")
    q.add_argument("--old", required=True)
    q.add_argument("--new", required=True)
    q.add_argument("--old-commit", default="")
    q.add_argument("--strikes", type=float, nargs="+", default=[100.0, 70.0, 120.0])
    q.add_argument("--steps", type=int, nargs="+", default=[8, 16])
    q.add_argument("--repeats", type=int, default=1)
    q.add_argument("--out", default="benchmarks/results/rough_speed.json")
    q = sub.add_parser("summary")
    q.add_argument("--out", default="benchmarks/results/rough_speed.json")
    args = p.parse_args()
    {"case": cmd_case, "reference": cmd_reference, "compare": cmd_compare,
     "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    main()
