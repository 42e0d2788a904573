"""Where the noise and the size of the time-grid difference of the Bermudan come from
(docs/benchmarks-rough.md, "The grid difference: noise and size").

Usage (one process, one BLAS thread)::

    python benchmarks/rough_grid_difference.py decompose --strike 100 [--batches 8]
        [--batch-log2 12] [--regression-log2 15] [--seed 7]
    python benchmarks/rough_grid_difference.py levels --strike 100 [--batches 4]
        [--batch-log2 13] [--regression-log2 15] [--seed 7] [--out FILE]
    python benchmarks/rough_grid_difference.py forward [--batches 32] [--batch-log2 14]
        [--seed 11]

``--perp-variance forward`` (decompose, forward): the model with
``RoughBergomi(perp_variance="forward")`` (``levels`` refuses it: sub-simulation dual).

``decompose``: 8 and 16 steps per period on coupled paths (``coupling.coupled_paths``), the
``rbergomi`` preset's exercise and martingale bases with features twice per period and the
least-squares signature dual (no sub-simulation, so that one run takes about a minute). Each
grid fits its own policy and martingales on the coupled regression paths; on the coupled
pricing batches every (grid, fit) combination is evaluated path by path, which gives the
fine - coarse difference (a) with each grid's own fit, (b) with ONE fit (policy, control
variate, dual) on both grids, (c) for a policy that sees only S at the dates, and (d) for the
European put maturing at T (Z_T with the same control variate); per date the contributions
of the stopped payoff to the difference. Standard errors from the batch means ("paired") and
from the diagonal ("unpaired"); per-path correlation of the two grids' estimators.

``levels``: ``coupling.price_levels`` with the preset's sub-simulation dual (the CLI's
``--grids 2`` configuration), once with each grid's own fit and once with ``share_fit=True``,
same seed: the differences of the lower bounds, upper bounds and midpoints with paired and
unpaired standard errors, and the CPU seconds.

``forward``: no pricer, only the coupled paths (2^19 by default): the grid difference of
one-period at-the-money puts started at each exercise date (the first one starts at t = 0, a
European) and of puts at T, plain and discretely knocked out / in at the dates.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from deepquant.rough import RoughBergomi, preset_pricer
from deepquant.rough.coupling import coupled_paths, price_levels
from deepquant.rough.dual import MartingaleBasis
from deepquant.rough.engine import exercise_payoff
from deepquant.rough.lsm import fit_lsm
from deepquant.rough.qmc import as_seed_sequence

S_ONLY = [0, 2, 5]
"""Columns of the preset's exercise features that depend on S only: s, s^2 and the
Black-Scholes European value at sqrt(xi0)."""


def _pricers(args, signature: bool):
    extra = dict(dual="signature", dual_fit="regression") if signature else {}
    if args.full_martingale:   # the full martingale basis (12 payoff strikes) for the CV too
        extra["martingale_basis"] = MartingaleBasis()
    base = preset_pricer("rbergomi", n_regression=2**args.regression_log2,
                         batch_size=2**args.batch_log2, min_batches=args.batches,
                         max_batches=args.batches, feature_steps=2, **extra)
    return [replace(base, steps_per_date=s) for s in (8, 16)]


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(x.size))


def _stopped(Z, B, policy, cv, feats):
    """Per path Z_tau - M_tau for the policy's stopping index tau and the control-variate
    martingale M, and its mean split by exercise date (J+1,)."""
    tau = policy.stopping_index(Z, feats)
    rows = np.arange(Z.shape[0])
    M = cv.values(B)
    x = Z[rows, tau] - M[rows, tau]
    d = np.zeros(Z.shape[1])
    np.add.at(d, tau, x / Z.shape[0])
    return x, d


def cmd_decompose(args) -> None:
    model = RoughBergomi(perp_variance=args.perp_variance)
    pr = _pricers(args, signature=True)
    payoff = exercise_payoff(args.strike, "put")
    seed_reg, _, seed_price = as_seed_sequence(args.seed).spawn(3)
    c0 = time.process_time()
    reg = coupled_paths(model, pr, pr[0].n_regression, seed_reg)
    fits = [p._fit_paths(model, payoff, reg[i], None, {}) for i, p in enumerate(pr)]
    Zr, Fr, Br = pr[1]._arrays(model, payoff, reg[1])
    del reg
    s_only = fit_lsm(Zr, Fr[:, :, S_ONLY], has_zero_date=True,
                     martingale=fits[1].cv.values(Br))
    del Zr, Fr, Br
    # estimator name -> per grid g: function of (Z, F, B) giving per-path values
    names = ["lower, own fit", "lower, fine fit", "lower, coarse fit", "lower, S-only policy",
             "upper, own fit", "upper, fine fit", "European put at T", "plain lower, own fit"]
    batches = {k: [] for k in names}
    per_date = {k: [] for k in names[:4]}
    corr = {k: [] for k in names}
    for seed in seed_price.spawn(args.batches):
        paths = coupled_paths(model, pr, pr[0].batch_size, seed)
        vals = {k: [] for k in names}
        dates = {k: [] for k in per_date}
        for g in (0, 1):
            Z, F, B = pr[g]._arrays(model, payoff, paths[g])
            rows = np.arange(Z.shape[0])
            own, fine, coarse = fits[g], fits[1], fits[0]
            for key, policy, cv, feats in (
                    ("lower, own fit", own.policy, own.cv, F),
                    ("lower, fine fit", fine.policy, fine.cv, F),
                    ("lower, coarse fit", coarse.policy, coarse.cv, F),
                    ("lower, S-only policy", s_only, fine.cv, F[:, :, S_ONLY])):
                x, d = _stopped(Z, B, policy, cv, feats)
                vals[key].append(x)
                dates[key].append(d)
            vals["upper, own fit"].append(own.dual.pathwise(Z, B))
            vals["upper, fine fit"].append(fine.dual.pathwise(Z, B))
            vals["European put at T"].append(Z[:, -1] - fine.cv.values(B)[:, -1])
            vals["plain lower, own fit"].append(Z[rows, own.policy.stopping_index(Z, F)])
        for k in names:
            batches[k].append([vals[k][0].mean(), vals[k][1].mean()])
            corr[k].append(np.corrcoef(vals[k][0], vals[k][1])[0, 1])
        for k in per_date:
            per_date[k].append(dates[k][1] - dates[k][0])
    out = {"strike": args.strike, "batches": args.batches, "batch_size": pr[0].batch_size,
           "n_regression": pr[0].n_regression, "cpu_seconds": time.process_time() - c0,
           "rows": []}
    print(f"K = {args.strike:g}, {args.batches} batches of {pr[0].batch_size}, "
          f"{out['cpu_seconds']:.0f} CPU s")
    print(f"{'estimator':24s} {'coarse (8)':>16s} {'fine (16)':>16s} {'fine - coarse':>10s} "
          f"{'paired':>7s} {'unpaired':>8s} {'corr':>5s}")
    for k in names:
        b = np.array(batches[k])
        d = b[:, 1] - b[:, 0]
        row = dict(estimator=k, coarse=[b[:, 0].mean(), _se(b[:, 0])],
                   fine=[b[:, 1].mean(), _se(b[:, 1])], difference=float(d.mean()),
                   paired=_se(d), unpaired=float(np.hypot(_se(b[:, 0]), _se(b[:, 1]))),
                   correlation=float(np.mean(corr[k])))
        if k in per_date:
            row["per_date"] = np.mean(per_date[k], axis=0).tolist()
        out["rows"].append(row)
        print(f"{k:24s} {row['coarse'][0]:9.4f}+-{row['coarse'][1]:.4f} "
              f"{row['fine'][0]:9.4f}+-{row['fine'][1]:.4f} {row['difference']:+10.4f} "
              f"{row['paired']:7.4f} {row['unpaired']:8.4f} {row['correlation']:5.2f}")
    for k in per_date:
        print(f"per date, {k}: " + " ".join(f"{x:+.4f}" for x in np.mean(per_date[k], 0)))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def cmd_levels(args) -> None:
    model = RoughBergomi(perp_variance=args.perp_variance)
    pr = _pricers(args, signature=False)
    out = {"strike": args.strike, "runs": []}
    for share in (False, True):
        c0 = time.process_time()
        run = price_levels(model, args.strike, pr, rng=args.seed, share_fit=share)
        cpu = time.process_time() - c0
        row = {"share_fit": share, "cpu_seconds": cpu, "cpu_by_grid": list(run.cpu_by_grid),
               "levels": [[r.lower, r.upper, r.value] for r in run.runs]}
        print(f"share_fit={share}: {cpu:.0f} CPU s (levels "
              f"{', '.join(f'{c:.0f}' for c in run.cpu_by_grid)})")
        for r in run.runs:
            print(f"   [{r.lower:.4f}, {r.upper:.4f}] +- ({r.lower_stderr:.4f}, "
                  f"{r.upper_stderr:.4f})  {r.model.split(' on ')[-1].split(' (')[0]}")
        for which in ("lower", "upper", "midpoint"):
            diff, paired, unpaired = run.difference(which)
            row[which] = [float(diff[0]), float(paired[0]), float(unpaired[0])]
            print(f"   {which:8s} fine - coarse {diff[0]:+.4f} paired {paired[0]:.4f} "
                  f"unpaired {unpaired[0]:.4f}")
        out["runs"].append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def cmd_forward(args) -> None:
    """One-period ATM puts started at each exercise date, (S_{t_j} - S_{t_{j+1}})^+ e^{-r t_{j+1}}
    per 100 of S_{t_j}, and puts at T (European, discretely monitored down-and-out / -in at the
    dates), 8 vs 16 steps per period on coupled paths; the fine - coarse differences with the
    discounted S at the dates (both grids' exact martingales) as control variates."""
    model = RoughBergomi(perp_variance=args.perp_variance)
    K = args.strike
    pr = _pricers(args, signature=True)
    names = ([f"ATM put {j}/12 -> {j + 1}/12, per 100 of S" for j in range(12)]
             + ["European put at T", "down-and-out put at T, barrier 0.8 K (dates)",
                "down-and-in put at T, barrier 0.9 K (dates)"])
    c0 = time.process_time()
    D, C, level = [], [], []
    for seed in as_seed_sequence(args.seed).spawn(args.batches):
        paths = coupled_paths(model, pr, pr[0].batch_size, seed)
        vals = []
        for g, q in enumerate(pr):
            S = paths[g].S[:, ::q.steps_per_date]
            disc = np.exp(-model.r * paths[g].times[::q.steps_per_date])
            fwd = np.maximum(S[:, :-1] - S[:, 1:], 0.0) * disc[1:] / S[:, :-1] * 100.0
            put = np.maximum(K - S[:, -1], 0.0) * disc[-1]
            low = S[:, 1:].min(axis=1)
            vals.append((np.column_stack([fwd, put, put * (low > 0.8 * K),
                                          put * (low <= 0.9 * K)]), S[:, 1:] * disc[1:]))
        D.append(vals[1][0] - vals[0][0])
        C.append(vals[1][1] - vals[0][1])
        level.append(vals[1][0].mean(axis=0))
    nb = args.batches
    D, C = np.concatenate(D), np.concatenate(C)
    C = C - C.mean(axis=0)
    out = {"strike": K, "batches": nb, "batch_size": pr[0].batch_size, "rows": []}
    print(f"{nb} batches of {pr[0].batch_size}, {time.process_time() - c0:.0f} CPU s")
    for k, name in enumerate(names):
        d = D[:, k]
        beta = np.linalg.lstsq(C, d - d.mean(), rcond=None)[0]
        m = (d - C @ beta).reshape(nb, -1).mean(axis=1)
        row = dict(name=name, fine=float(np.mean(level, axis=0)[k]), difference=float(m.mean()),
                   stderr=_se(m))
        out["rows"].append(row)
        print(f"{name:48s} fine {row['fine']:8.4f}  fine - coarse {row['difference']:+.4f} "
              f"+- {row['stderr']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, nb, bl in (("decompose", 8, 12), ("levels", 4, 13), ("forward", 32, 14)):
        q = sub.add_parser(name)
        q.add_argument("--strike", type=float, default=100.0)
        q.add_argument("--batches", type=int, default=nb)
        q.add_argument("--batch-log2", type=int, default=bl)
        q.add_argument("--regression-log2", type=int, default=15)
        q.add_argument("--seed", type=int, default=11 if name == "forward" else 7)
        q.add_argument("--out", default=None)
        q.add_argument("--perp-variance", default="left", choices=["left", "forward"],
                       help="the model's price step for the W_perp part (RoughBergomi)")
        q.add_argument("--full-martingale", action="store_true",
                       help="the default MartingaleBasis (12 payoff strikes) instead of the "
                            "preset's lighter one (4) for the control variate")
    args = p.parse_args()
    with threadpool_limits(1):
        {"decompose": cmd_decompose, "levels": cmd_levels, "forward": cmd_forward}[args.cmd](args)


if __name__ == "__main__":
    main()
