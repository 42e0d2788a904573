"""Small, library-independent data for the neural tests: convex-ordered marginals built by
martingale kernels, and a plain martingale-Sinkhorn teacher (numpy) for their potentials."""

from __future__ import annotations

import numpy as np

from deepquant.neural.data import InstanceSpec, _record


def assert_convex_ordered(m) -> None:
    """Rows of ``m`` on its grid: laws of mean 1, call prices non-decreasing in the date (convex
    order on the grid), to round-off (1e-12: the builders' own correction is exact to ~1e-15)."""
    w, g = m.weights, m.grid
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w @ g, 1.0, atol=1e-12)
    calls = np.maximum(g[None, :] - g[:, None], 0.0) @ w.T          # (M strikes, dates)
    assert np.all(np.diff(calls, axis=1) >= -1e-12)


def kernel_marginals(rng: np.random.Generator, n_dates: int, size: int) -> tuple:
    """Laws X_0 = 1, then mean-preserving spreads on a uniform grid around 1 (convex order
    holds exactly by construction)."""
    grid = np.linspace(0.7, 1.3, size)
    law = np.zeros(size)
    law[size // 2] = 1.0
    rows = [law]
    for _ in range(n_dates - 1):
        nxt = np.zeros(size)
        for j, m in enumerate(law):
            if m == 0:
                continue
            a = int(rng.integers(1, 3)) if j >= 2 else 1
            b = int(rng.integers(1, 3)) if j + 2 < size else 1
            if j - a < 0 or j + b >= size:
                nxt[j] += m
                continue
            stay = 0.3
            nxt[j] += stay * m
            nxt[j - a] += (1 - stay) * m * b / (a + b)
            nxt[j + b] += (1 - stay) * m * a / (a + b)
        rows.append(nxt)
        law = nxt
    return grid, np.vstack(rows)


def sinkhorn_teacher(mu: np.ndarray, nu: np.ndarray, grid: np.ndarray, iters: int = 250):
    """Potentials (u, v, h) in units of eps of the one-period entropic martingale problem with
    product reference: pi = mu nu exp(u(x) + v(y) + h(x)(y - x))."""
    m = grid.size
    d = grid[None, :] - grid[:, None]
    sx, sy = mu > 0, nu > 0
    u, v, h = np.zeros(m), np.zeros(m), np.zeros(m)
    lnu = np.where(sy, np.log(np.where(sy, nu, 1)), -np.inf)
    lmu = np.where(sx, np.log(np.where(sx, mu, 1)), -np.inf)
    for _ in range(iters):
        for _ in range(3):  # Newton on h per row: sum_y nu e^{v + h d} d = 0
            a = lnu[None, :] + v[None, :] + h[:, None] * d
            a -= a.max(1, keepdims=True)
            p = np.exp(a)
            p /= p.sum(1, keepdims=True)
            g = (p * d).sum(1)
            hess = (p * d * d).sum(1) - g ** 2
            h = h - np.where(hess > 1e-14, g / np.maximum(hess, 1e-14), 0.0)
        a = lnu[None, :] + v[None, :] + h[:, None] * d
        mx = a.max(1)
        u = -(mx + np.log(np.exp(a - mx[:, None]).sum(1)))
        b = lmu[:, None] + u[:, None] + h[:, None] * d
        mx = b.max(0)
        v = np.where(sy, -(mx + np.log(np.exp(b - mx[None, :]).sum(0))), 0.0)
    return u, v, h


def teacher_potentials(weights: np.ndarray, grid: np.ndarray):
    vs, hs = [], []
    for t in range(weights.shape[0] - 1):
        _, v, h = sinkhorn_teacher(weights[t], weights[t + 1], grid)
        vs.append(v)
        hs.append(h)
    return np.array(vs), np.array(hs)


FAIL_AT: set[int] = set()


def fake_worker(task: tuple) -> dict:
    """Stand-in for ``solve_instance``: marginals from ``kernel_marginals`` seeded by the
    instance index, potentials from ``sinkhorn_teacher``. Raises for indices in FAIL_AT."""
    spec, grid, eps, tol = task
    if spec.index in FAIL_AT:
        raise RuntimeError(f"simulated crash at instance {spec.index}")
    rng = np.random.default_rng(spec.index)
    n_dates = min(spec.n_periods, 3) + 1
    g, w = kernel_marginals(rng, n_dates, grid.size)
    v, h = teacher_potentials(w, g)
    spec = InstanceSpec(spec.index, spec.family, n_dates - 1, spec.maturity, spec.params)
    return _record(spec, g, w, v, h, marginal_error=0.0, drift=0.0, nit=1, success=True,
                   seconds=0.0)
