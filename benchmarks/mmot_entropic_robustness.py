"""Robustness of the entropic solver on random in-range instances: success on every one.

    python benchmarks/mmot_entropic_robustness.py --num 1000 --seed 11

Instance i: the family, N and T of the neural dataset's stream (``instance_spec(i, seed)``:
GBM / Merton / Heston in turn, N in {2, 3, 5, 10, 20, 30, 50}, T in [0.1, 0.5], DESIGN §3
parameter ranges) on the model grid of M points, M drawn from {50, 100, 150, 300, 500} by the
same (seed, i) stream; ``solve_entropic(marginals, eps)`` with eps drawn from {1e-2, 1e-3}.
Each finished instance is appended to ``benchmarks/results/mmot_entropic_robustness.json``
(written atomically), so an interrupted run resumes where it stopped.

Subsets (same instances, by index; results to another file with ``--out``):

    python benchmarks/mmot_entropic_robustness.py --only 631 928 977 --out /tmp/three.json
    python benchmarks/mmot_entropic_robustness.py --num 1000 --stride 10 --out /tmp/tenth.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from deepquant.atomic import write_json
from deepquant.mmot.entropic import solve_entropic
from deepquant.neural.data import build_marginals, instance_spec, model_grid

OUT = Path(__file__).parent / "results" / "mmot_entropic_robustness.json"
SIZES = (50, 100, 150, 300, 500)
EPS = (1e-2, 1e-3)


def run_one(index: int, seed: int) -> dict:
    spec = instance_spec(index, seed, n_choices=(2, 3, 5, 10, 20, 30, 50))
    rng = np.random.default_rng([seed, index, 1])
    size = int(rng.choice(SIZES))
    eps = float(rng.choice(EPS))
    marg = build_marginals(spec, model_grid(size))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = solve_entropic(marg, eps)
    return dict(index=index, family=spec.family, n_periods=spec.n_periods,
                maturity=spec.maturity, size=size, eps=eps, success=bool(res.success),
                marginal_error=float(res.marginal_error), drift=float(res.drift),
                nit=int(res.nit), seconds=time.perf_counter() - t0, message=str(res.message))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--stride", type=int, default=1,
                    help="run only the indices 0, K, 2K, ... below --num")
    ap.add_argument("--only", type=int, nargs="+", metavar="IDX",
                    help="run only these instance indices (overrides --num and --stride)")
    ap.add_argument("--out", type=Path, default=OUT,
                    help="results file (default benchmarks/results/mmot_entropic_robustness.json)")
    args = ap.parse_args()
    if args.num < 1:
        raise SystemExit(f"--num must be >= 1, got {args.num}")
    if args.stride < 1:
        raise SystemExit(f"--stride must be >= 1, got {args.stride}")
    if args.only is not None and min(args.only) < 0:
        raise SystemExit(f"--only indices must be >= 0, got {min(args.only)}")
    indices = (sorted(set(args.only)) if args.only is not None
               else list(range(0, args.num, args.stride)))
    command = "python benchmarks/mmot_entropic_robustness.py " + (
        f"--only {' '.join(map(str, indices))} --seed {args.seed}" if args.only is not None
        else f"--num {args.num} --seed {args.seed}"
        + (f" --stride {args.stride}" if args.stride > 1 else ""))
    if args.out != OUT:
        command += f" --out {args.out}"
    state = json.loads(args.out.read_text()) if args.out.exists() else {}
    if state and state.get("seed") != args.seed:
        raise SystemExit(f"{args.out} holds seed {state.get('seed')}; remove it to change --seed")
    done = {r["index"]: r for r in state.get("instances", [])}
    for i in indices:
        if i in done:
            continue
        done[i] = run_one(i, args.seed)
        rows = [done[k] for k in sorted(done)]
        fails = [r["index"] for r in rows if not r["success"]]
        write_json(args.out, dict(seed=args.seed, instances=rows, n=len(rows), failures=fails,
                                  command=command))
        r = done[i]
        print(f"{i:4d} {r['family']:7s} N={r['n_periods']:2d} M={r['size']:3d} eps={r['eps']:g} "
              f"{'ok  ' if r['success'] else 'FAIL'} {r['seconds']:.2f} s  failures so far "
              f"{len(fails)}", flush=True)


if __name__ == "__main__":
    main()
