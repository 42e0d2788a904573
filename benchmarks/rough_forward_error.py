"""Where the forward-start put's grid error comes from (docs/benchmarks-rough.md, "The
forward-start put's grid error: where it comes from").

Usage (one process, one BLAS thread)::

    python benchmarks/rough_forward_error.py [--family hybrid exact] [--per-period 4 8 16 32]
        [--exact-max 16] [--steps euler trap-perp perp-fine] [--paths-log2 17]
        [--batch-log2 12] [--seed 5] [--out FILE]

Standard case, T = 1, 12 periods of h = 1/12. For each period j = 0..11 the one-period ATM put
started at t_j, (S_{t_j} - S_{t_{j+1}})^+ e^{-r t_{j+1}} per 100 of S_{t_j} (j = 0 is the
European at 1/12; j >= 1 are forward-starting), by the mixing estimator: given the volatility
driver W the period's log-return is Gaussian, so the put is e^{-r t_j} times a Black–Scholes
put with spot 100 exp(rho X_j - C_j), strike 100 e^{-rh} and total variance (1 - rho^2) Q_j,
where X_j ~ int_period sqrt(V) dW, Q_j ~ int_period V dt, C_j the compensator.

Families (all grids of one family coupled, as in ``rough_weak_error.py``):

* ``hybrid``: the engine's hybrid scheme (kappa = 1), coarser grids by
  ``coupling.coupled_increments``;
* ``exact``: (dW_i, Y_{t_i}) jointly Gaussian with their exact covariance (Cholesky on the
  finest exact grid, coarser grids by summing dW and subsampling Y). Equivalent to the hybrid
  scheme with every cell exact (kappa = n): any kappa lies between the two.

Price steps:

* ``euler``: the engine's left-point step (X = sum sqrt(V_i) dW_{i+1}, Q = sum V_i dt,
  C = rho^2 Q / 2);
* ``trap-perp``: left-point X and C, trapezoidal Q for the orthogonal part only (keeps the
  martingale);
* ``fwd`` (hybrid only): the left-point step with the adapted variance E_{t_i}[V at the cell
  midpoint] (``rough_weak_error.forward_weights``) instead of V_i, in X, C and Q;
* ``fwd-perp`` (hybrid only): left-point X and C, that forward variance in the orthogonal Q;
* ``fwdq-perp`` (hybrid only): the same with E_{t_i}[int_cell V] / dt by 3-point
  Gauss-Legendre in time instead of the midpoint value;
* ``perp-fine`` (diagnostic, on every grid but the finest): this grid's X and C with the
  orthogonal variance Q of the next finer grid; the difference to ``euler`` on the same grid
  is the share of the grid error that the orthogonal part carries.

Output: per (family, step) and consecutive grids n -> 2n the paired difference P(2n) - P(n)
per period, with X_j and Q_j - xi0 h of both grids (mean 0 for every scheme) as control
variates fitted per batch; standard errors from the batch means. Also the mean of
exp(rho X_j - C_j) (the period's discounted return given W; 1 for a martingale).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from rough_weak_error import controlled_mean, exact_factor, exact_grids, forward_weights, variance
from scipy.signal import fftconvolve
from scipy.special import ndtr
from threadpoolctl import threadpool_limits

from deepquant.rough import RoughBergomi
from deepquant.rough.coupling import coupled_increments

DATES = 12


def period_sums(x: np.ndarray, n: int) -> np.ndarray:
    """Per-period sums (n_paths, DATES) of per-step values x (n_paths, n)."""
    return x.reshape(x.shape[0], DATES, n // DATES).sum(2)


def forward_puts(model: RoughBergomi, X, C, Q, h: float) -> np.ndarray:
    """e^{-r t_j} E[(100 - 100 S_{t_{j+1}} / S_{t_j})^+ e^{-rh} | W], shape (n_paths, DATES)."""
    rho = model.rho
    s = 100.0 * np.exp(rho * X - C)
    w = np.maximum((1.0 - rho**2) * Q, 1e-300)
    sw = np.sqrt(w)
    kd = 100.0 * math.exp(-model.r * h)
    d1 = (np.log(s / kd) + 0.5 * w) / sw
    disc = np.exp(-model.r * h * np.arange(DATES))
    return (kd * ndtr(-(d1 - sw)) - s * ndtr(-d1)) * disc


def grid_data(model, family: str, grids: list[int], n_paths: int, seed, L,
              forward: bool = True) -> dict:
    """{n: (dW, V, F)} on each grid, coupled; F (hybrid only, else None): the forward
    variance E_{t_i}[V at the cell midpoint] (n_paths, n)."""
    if family == "hybrid":
        incs = coupled_increments(model, n_paths, grids, 1.0, method="mc", antithetic=True,
                                  bridge=False, rng=seed)
        return {n: (dW, model.paths_from_increments(dW, dWp, cell, 1.0).V,
                    [forward_variance(model, dW, cell, n, th) for th in THETAS]
                    if forward else None)
                for n, (dW, dWp, cell) in zip(grids, incs, strict=True)}
    raw = exact_grids(model, L, n_paths, grids, 1.0, np.random.default_rng(seed))
    return {n: (dW, variance(model, Y, (np.arange(n + 1) / n) ** (2 * model.H)), None)
            for n, (dW, Y) in raw.items()}


THETAS = (0.5, 0.5 - math.sqrt(0.15), 0.5 + math.sqrt(0.15))
"""The cell midpoint, then the outer Gauss-Legendre nodes (weights 8/18, 5/18, 5/18)."""


def forward_variance(model, dW, cell, n: int, theta: float = 0.5) -> np.ndarray:
    """E_{t_i}[V_{t_i + theta dt}] projected on the hybrid data (``rough_weak_error.fwd``)."""
    H, dt = model.H, 1.0 / n
    b, g, w, vc = forward_weights(model, n, dt, theta)
    conv = fftconvolve(dW, w[None, :], axes=1)[:, :n]
    Z = np.zeros_like(dW)
    Z[:, 1:] = math.sqrt(2 * H) * (b * dW[:, :-1] + g * cell[:, :-1] + conv[:, 1:])
    vz = np.zeros(n)
    vz[1:] = 2 * H * (vc + np.cumsum(w[1:n] ** 2) * dt)
    return model.xi0 * np.exp(model.eta * Z - 0.5 * model.eta**2 * vz[None, :])


def step_sums(model, step: str, dW, V, F, n: int, Qfiner=None):
    """(X, C, Q), each (n_paths, DATES), of the price step ``step``."""
    dt = 1.0 / n
    if F is not None:
        F, Fq = F[0], (8 * F[0] + 5 * F[1] + 5 * F[2]) / 18.0
    sig2 = F if step == "fwd" else V[:, :-1]
    X = period_sums(np.sqrt(sig2) * dW, n)
    Q = period_sums(sig2, n) * dt
    C = 0.5 * model.rho**2 * Q
    if step == "fwd-perp":
        Q = period_sums(F, n) * dt
    elif step == "fwdq-perp":
        Q = period_sums(Fq, n) * dt
    elif step == "trap-perp":
        Q = period_sums(0.5 * (V[:, :-1] + V[:, 1:]), n) * dt
    elif step == "perp-fine":
        Q = Qfiner
    return X, C, Q


def batch(model, family, steps, grids, n_paths, seed, L) -> dict:
    """{(step, n): ((DATES,) controlled P(2n) - P(n), (DATES,) P(n), (DATES,) E[exp(rho X - C)])}
    for one batch."""
    data = grid_data(model, family, grids, n_paths, seed, L,
                     forward=any(s.startswith("fwd") for s in steps))
    h = 1.0 / DATES
    res = {}
    cache = {}
    for n in grids:
        dW, V, F = data[n]
        for step in steps:
            if step.startswith("fwd") and F is None:
                continue
            if step == "perp-fine":
                if 2 * n not in data:
                    continue
                Qf = cache[("euler", 2 * n)][2] if ("euler", 2 * n) in cache else \
                    step_sums(model, "euler", *data[2 * n], 2 * n)[2]
                cache[(step, n)] = step_sums(model, step, dW, V, F, n, Qf)
            else:
                cache[(step, n)] = step_sums(model, step, dW, V, F, n)
    for (step, n), (X, C, Q) in cache.items():
        P = forward_puts(model, X, C, Q, h)
        mart = np.exp(model.rho * X - C).mean(0)
        ctrl = [X, Q - model.xi0 * h]
        lev = np.array([controlled_mean(P[:, j], np.stack([c[:, j] for c in ctrl]))
                        for j in range(DATES)])
        # the finer grid of the same step (perp-fine is compared with euler on its own grid)
        ref = ("euler", n) if step == "perp-fine" else (step, 2 * n)
        if ref not in cache or ref == (step, n):
            diff = np.full(DATES, np.nan)
        else:
            X2, C2, Q2 = cache[ref]
            P2 = forward_puts(model, X2, C2, Q2, h)
            ctrl2 = ctrl + [X2, Q2 - model.xi0 * h]
            diff = np.array([controlled_mean(P2[:, j] - P[:, j],
                                             np.stack([c[:, j] for c in ctrl2]))
                             for j in range(DATES)])
        res[(step, n)] = (diff, lev, mart)
    return res


def split_by_start_variance(model, n: int, n_paths: int, seeds, bins: int = 5,
                            step: str = "euler") -> dict:
    """Hybrid family, left-point step: the periods j >= 1's paired difference P(2n) - P(n)
    (per path, controls as in ``batch``) by quantile bin of V_{t_j} on the fine grid, and the
    same put's level, pooled over j = 1..11 and the batches; also V_{t_j} per bin."""
    h = 1.0 / DATES
    grids = [DATES * n, 2 * DATES * n]
    D, P, Vs = [], [], []
    for seed in seeds:
        data = grid_data(model, "hybrid", grids, n_paths, seed, None,
                         forward=step.startswith("fwd"))
        sums = [step_sums(model, step, *data[g], g) for g in grids]
        Pc, Pf = (forward_puts(model, *s, h) for s in sums)
        d = Pf - Pc
        ctrl = np.stack([s[k] for s in sums for k in (0, 2)], axis=-1)  # X, Q of both grids
        ctrl[..., 1::2] -= model.xi0 * h
        for j in range(1, DATES):
            c = ctrl[:, j] - ctrl[:, j].mean(0)
            beta = np.linalg.lstsq(c, d[:, j] - d[:, j].mean(), rcond=None)[0]
            D.append(d[:, j] - ctrl[:, j] @ beta)
            P.append(Pf[:, j])
            Vs.append(data[grids[1]][1][:, j * 2 * n])
    D, P, Vs = map(np.concatenate, (D, P, Vs))
    edges = np.quantile(Vs, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, Vs, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        rows.append(dict(v_mean=float(Vs[m].mean()), diff=float(D[m].mean()),
                         diff_se=float(D[m].std(ddof=1) / math.sqrt(m.sum())),
                         level=float(P[m].mean())))
    return {"per_period": n, "bins": rows, "diff": float(D.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", nargs="+", default=["hybrid", "exact"])
    p.add_argument("--per-period", nargs="+", type=int, default=[4, 8, 16, 32])
    p.add_argument("--exact-max", type=int, default=16)
    p.add_argument("--steps", nargs="+", default=["euler", "trap-perp", "perp-fine"])
    p.add_argument("--paths-log2", type=int, default=17)
    p.add_argument("--batch-log2", type=int, default=12)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default=None)
    p.add_argument("--split", action="store_true",
                   help="only the hybrid left-point 8 -> 16 difference by quintile of V_{t_j}")
    args = p.parse_args()
    model = RoughBergomi()
    if args.split:
        nb = 2 ** (args.paths_log2 - args.batch_log2)
        with threadpool_limits(1):
            res = split_by_start_variance(model, 8, 2**args.batch_log2,
                                          np.random.SeedSequence(args.seed).spawn(nb),
                                          step=args.steps[0])
        print(f"{args.steps[0]}: periods j >= 1, P(16) - P(8) = {res['diff']:+.4f}; by quintile of V_(t_j):")
        for r in res["bins"]:
            print(f"  mean V {r['v_mean']:.4f}  put {r['level']:.3f}  "
                  f"P(16) - P(8) {r['diff']:+.4f} +- {r['diff_se']:.4f}")
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    out = {"args": vars(args), "rows": []}
    with threadpool_limits(1):
        for family in args.family:
            per = [s for s in args.per_period if family == "hybrid" or s <= args.exact_max]
            grids = [DATES * s for s in per]
            L = exact_factor(model.H, max(grids), 1.0) if family == "exact" else None
            t0 = time.process_time()
            acc = {}
            nb = 2 ** (args.paths_log2 - args.batch_log2)
            for child in np.random.SeedSequence(args.seed).spawn(nb):
                for k, v in batch(model, family, args.steps, grids, 2**args.batch_log2, child,
                                  L).items():
                    acc.setdefault(k, []).append(np.stack(v))
            cpu = time.process_time() - t0
            print(f"{family}: {nb} batches of 2^{args.batch_log2}, {cpu:.0f} CPU s")
            for (step, n), rows in acc.items():
                B = np.stack(rows)  # (nb, 3, DATES)
                m, se = B.mean(0), B.std(0, ddof=1) / math.sqrt(nb)
                d, dse = m[0], se[0]
                later = B[:, 0, 1:].mean(1)
                row = dict(family=family, step=step, per_period=n // DATES,
                           level=m[1].tolist(), level_se=se[1].tolist(),
                           diff=d.tolist(), diff_se=dse.tolist(),
                           diff_later_mean=[float(later.mean()),
                                            float(later.std(ddof=1) / math.sqrt(nb))],
                           martingale_max_dev=float(np.max(np.abs(m[2] - 1) / se[2])),
                           cpu_seconds=cpu)
                out["rows"].append(row)
                if np.isnan(d[0]):
                    continue
                tag = ("fine Q_perp - own" if step == "perp-fine"
                       else f"{2 * n // DATES} - {n // DATES}")
                print(f"  {step:9s} n={n // DATES:2d} {tag:17s} j=0 {d[0]:+.4f}+-{dse[0]:.4f}"
                      f"  j>=1 mean {later.mean():+.4f}+-{later.std(ddof=1) / math.sqrt(nb):.4f}"
                      f"  j=1..11: " + " ".join(f"{x:+.3f}" for x in d[1:])
                      + f"  | P(n) j=0,1: {m[1][0]:.4f} {m[1][1]:.4f}"
                      + f"  mart dev {row['martingale_max_dev']:.1f} se", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
