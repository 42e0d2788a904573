"""Shared test fixtures: small marginals built independently of the library's synthetic models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw their examples deterministically, so a CI run is reproducible; set
# HYPOTHESIS_PROFILE=explore to search new random examples locally.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SPX_DATA = Path(os.environ.get("DEEPQUANT_SPX_DATA", REPO.parent / "shared" / "data" / "spx_20230609"))


def random_walk_marginals(n_dates: int = 4, steps=(-2, -1, 0, 1, 2), x0: float = 100.0):
    """Laws of X_t = x0 + sum of t iid uniform steps (DESIGN §2.3), on a common integer grid."""
    steps = np.asarray(steps, dtype=float)
    lo = x0 + steps.min() * (n_dates - 1)
    hi = x0 + steps.max() * (n_dates - 1)
    grid = np.arange(lo, hi + 1.0)
    law = np.zeros(grid.size)
    law[np.searchsorted(grid, x0)] = 1.0
    rows = [law]
    for _ in range(n_dates - 1):
        nxt = np.zeros_like(law)
        for s in steps:
            nxt += np.roll(law, int(s)) / steps.size
        rows.append(nxt)
        law = nxt
    return grid, np.vstack(rows)


def martingale_kernel_marginals(rng: np.random.Generator, n_dates: int = 3, size: int = 9):
    """Marginals in convex order by construction: push a law through random martingale kernels.

    Each step moves mass at x to its two neighbours x - a, x + b with probabilities b/(a+b) and
    a/(a+b) (in grid steps: a mean-preserving spread on the uniform grid), so consecutive rows
    are exactly in convex order.
    """
    grid = np.linspace(0.6, 1.4, size)
    law = np.zeros(size)
    mid = size // 2
    law[mid - 1 : mid + 2] = rng.dirichlet(np.ones(3))
    rows = [law]
    for _ in range(n_dates - 1):
        nxt = np.zeros(size)
        for j, m in enumerate(law):
            if m == 0:
                continue
            a = rng.integers(0, min(j, 2) + 1)
            b = rng.integers(0, min(size - 1 - j, 2) + 1)
            if a == 0 or b == 0:
                nxt[j] += m
                continue
            nxt[j - a] += m * b / (a + b)
            nxt[j + b] += m * a / (a + b)
        rows.append(nxt)
        law = nxt
    return grid, np.vstack(rows)


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


@pytest.fixture
def rw_marginals():
    return random_walk_marginals()


def spx_data_dir() -> Path:
    if not SPX_DATA.exists():
        pytest.skip(f"SPX data not found at {SPX_DATA} (set DEEPQUANT_SPX_DATA)")
    return SPX_DATA
