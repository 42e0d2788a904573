"""Marginals shared by the benchmark scripts (built independently of deepquant.market)."""

from __future__ import annotations

import numpy as np


def lognormal_rows(grid: np.ndarray, total_vars) -> np.ndarray:
    """Laws whose call curves interpolate Black–Scholes calls with total variances
    ``total_vars`` at the grid points, corrected by the affine function that puts all mass on the
    grid with mean 1 (rows exactly in convex order on the grid); shape (len(total_vars), M)."""
    from scipy.stats import norm

    rows = []
    for v in total_vars:
        s = np.sqrt(v)
        d1 = (-np.log(grid) + 0.5 * s * s) / s
        c = norm.cdf(d1) - grid * norm.cdf(d1 - s)
        lam = (grid - grid[0]) / (grid[-1] - grid[0])
        c = c - ((c[0] - (1.0 - grid[0])) * (1 - lam) + c[-1] * lam)
        slopes = np.concatenate([[-1.0], np.diff(c) / np.diff(grid), [0.0]])
        rows.append(np.maximum(np.diff(slopes), 0.0))
    w = np.array(rows)
    return w / w.sum(axis=1, keepdims=True)


def neural_warm_polish(pricer, marginals, tol: float = 1e-9):
    """The removed hybrid, rebuilt from public pieces for the record (benchmarks/neural_hybrid.py):
    the network's potentials for ``marginals`` (on the model grid), the exact row multipliers
    for its v with the light columns filled in closed form (``martingale_projection``), then
    Newton to ``tol`` from there after one martingale-Sinkhorn sweep (``newton_polish``), and a
    cold solve if the polish does not reach ``tol``. Returns (seconds, result, cold_fallback)."""
    import time
    import warnings

    from deepquant.mmot.entropic import martingale_projection, newton_polish, solve_entropic

    t0 = time.perf_counter()
    v, h = (a[0] for a in pricer.predict(marginals.weights[None]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proj = martingale_projection(marginals, v, h, eps=1.0, column_floor=pricer.column_floor)
        res = newton_polish(marginals, 1.0, None, proj.v, proj.h, tol=tol, sinkhorn_sweeps=1)
        cold = not res.success
        if cold:
            res = solve_entropic(marginals, 1.0, tol=tol)
    return time.perf_counter() - t0, res, cold


def emit(out: dict, summary_keys, path=None) -> dict:
    """Print the ``summary_keys`` part of a benchmark's result as JSON and write the whole
    result to ``path`` when given (atomically); returns ``out``."""
    import json

    print(json.dumps({k: out[k] for k in summary_keys}, indent=1))
    if path:
        from deepquant.atomic import write_json

        write_json(path, out)        # atomically: an interrupted run leaves the old file
    return out
