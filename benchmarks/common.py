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
