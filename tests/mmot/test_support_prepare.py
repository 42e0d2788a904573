"""``_prepare`` (all periods at once) against the per-period loop it replaced.

The loop below is the previous implementation, kept verbatim as the oracle: the supports
(pinned rows, column targets, allowed entries of the log kernels) must be identical, bit for
bit, on marginals with touching points, point masses, empty columns, noise-level violations
of convex order (rows left with columns on one side only, pinned in repeated passes) and with
array references that have zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.mmot._support import _prepare, reference_kernels, touching_points
from tests.neural.helpers import kernel_marginals


def _prepare_loop(grid: np.ndarray, mu_full: np.ndarray, nu_full: np.ndarray,
             logq_raw: np.ndarray | None, cost: np.ndarray | None, *, touch_tol: float):
    b, m = mu_full.shape
    touch = touching_points(mu_full, nu_full, grid, rel=touch_tol)
    has_mass = mu_full > 0
    pinned = touch & has_mass
    mu = np.where(pinned, 0.0, mu_full)
    nu = nu_full - np.where(pinned, mu_full, 0.0)
    # rounding: pinned mass equal to the column mass up to round-off leaves an empty column
    nu = np.where(nu <= 1e-14 * np.maximum(nu_full, 1e-300), 0.0, nu)
    nu = np.maximum(nu, 0.0)
    # allowed entries: y in [L(x), R(x)], the touching points that enclose x
    idx = np.arange(m)
    logq = np.empty((b, m, m))
    for t in range(b):
        tp = np.flatnonzero(touch[t])
        if tp.size == 0:
            lo = np.zeros(m, dtype=int)
            hi = np.full(m, m - 1)
        else:
            pos = np.searchsorted(tp, idx, side="left")      # first touch index >= i
            left = np.where(pos > 0, tp[np.maximum(pos - 1, 0)], 0)
            pos_r = np.searchsorted(tp, idx, side="right")   # first touch index > i
            right = np.where(pos_r < tp.size, tp[np.minimum(pos_r, tp.size - 1)], m - 1)
            lo, hi = left, right
        # rows whose reachable columns all lie on one side of x (or nowhere) admit no martingale
        # kernel except the point mass at x: possible only when the marginals violate convex
        # order at round-off level in a far tail (noise-level masses), or with a reference
        # kernel that has zeros. Such rows are pinned too; if the column at x lacks the mass,
        # the (tiny) deficit shows up in the measured marginal error. Columns no row reaches are
        # dropped likewise.
        # (Repeated: pinning a row can empty the column that kept another row feasible.)
        if logq_raw is None:
            # product reference: allowed = [lo, hi] x (nu > 0) on rows with mass, so the
            # one-sided test needs only prefix counts of the live columns (O(M) per pass)
            for _ in range(m):
                cnt = np.concatenate([[0], np.cumsum(nu[t] > 0)])
                has_left = cnt[idx] - cnt[lo] > 0             # a live column in [lo, x)
                has_right = cnt[hi + 1] - cnt[idx + 1] > 0    # a live column in (x, hi]
                stuck = (mu[t] > 0) & ~(has_left & has_right)
                if not np.any(stuck):
                    break
                pinned[t, stuck] = True
                mu[t, stuck] = 0.0
                nu[t, stuck] = np.maximum(nu[t, stuck] - mu_full[t, stuck], 0.0)
            allowed = (idx[None, :] >= lo[:, None]) & (idx[None, :] <= hi[:, None])
            allowed &= (mu[t] > 0)[:, None] & (nu[t] > 0)[None, :]
            with np.errstate(divide="ignore"):
                base = np.log(nu_full[t])[None, :]
        else:
            allowed = (idx[None, :] >= lo[:, None]) & (idx[None, :] <= hi[:, None])
            allowed &= (mu[t] > 0)[:, None] & (nu[t] > 0)[None, :]
            base = logq_raw[t]
            allowed &= np.isfinite(base)
            for _ in range(m):
                cs = np.cumsum(allowed, axis=1)
                has_left = cs[idx, idx] - allowed[idx, idx] > 0    # an allowed column y < x
                has_right = cs[:, -1] - cs[idx, idx] > 0           # an allowed column y > x
                stuck = (mu[t] > 0) & ~(has_left & has_right)
                if not np.any(stuck):
                    break
                pinned[t, stuck] = True
                mu[t, stuck] = 0.0
                allowed[stuck] = False
                nu[t, stuck] = np.maximum(nu[t, stuck] - mu_full[t, stuck], 0.0)
                allowed &= (nu[t] > 0)[None, :]
        dead_cols = ~allowed.any(axis=0) & (nu[t] > 0)
        nu[t, dead_cols] = 0.0
        logq[t] = np.where(allowed, base, -np.inf)
    return mu, nu, pinned, logq


def _check(grid, mu, nu, logq_raw=None, touch_tol=1e-11):
    new = _prepare(grid, mu.copy(), nu.copy(), logq_raw, None, touch_tol=touch_tol)
    ref = _prepare_loop(grid, mu.copy(), nu.copy(), logq_raw, None, touch_tol=touch_tol)
    for got, want in zip((new.mu, new.nu, new.pinned, new.logq), ref):
        np.testing.assert_array_equal(got, want)
    return new, ref


def _noisy(rng, w, scale):
    """Weights with noise-level masses added in the tails and some columns emptied."""
    w = w.copy()
    m = w.shape[1]
    tails = np.r_[0:m // 6, m - m // 6:m]
    w[:, tails] += scale * rng.random((w.shape[0], tails.size))
    w[:, rng.integers(0, m, size=3)] = 0.0
    return w


@pytest.mark.parametrize("seed", range(6))
def test_prepare_equals_the_loop_on_kernel_marginals(seed):
    rng = np.random.default_rng(seed)
    grid, w = kernel_marginals(rng, 6, 41)
    _check(grid, w[:-1], w[1:])
    noisy = _noisy(rng, w, 1e-15)
    new, _ = _check(grid, noisy[:-1], noisy[1:])
    logq = reference_kernels_array(rng, grid, 5)
    _check(grid, w[:-1], w[1:], logq)
    _check(grid, noisy[:-1], noisy[1:], logq)


def reference_kernels_array(rng, grid, n):
    """Log of random non-negative kernels with zeros (some entries forbidden)."""
    q = rng.random((n, grid.size, grid.size))
    q[q < 0.2] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(q)


def test_prepare_equals_the_loop_on_neural_instances_with_stuck_rows():
    from deepquant.neural.data import build_marginals, instance_spec, model_grid

    grid = model_grid(150)
    rng = np.random.default_rng(3)
    stuck = 0
    for i in range(6):
        w = build_marginals(instance_spec(i, 1, n_choices=(10,)), grid).weights
        nu = w[1:].copy()
        nu[nu <= 1e-10] = 0.0                      # the neural pricer's column floor
        new, _ = _check(grid, w[:-1], nu)
        noisy = _noisy(rng, w, 1e-17)
        new, _ = _check(grid, noisy[:-1], noisy[1:])
        touch = touching_points(noisy[:-1], noisy[1:], grid, rel=1e-11)
        stuck += int(np.count_nonzero(new.pinned & ~touch))
        lq = reference_kernels(build_marginals(instance_spec(i, 1, n_choices=(10,)), grid),
                               "lognormal")
        _check(grid, w[:-1], nu, lq)
    assert stuck > 0            # the repeated pinning passes were exercised


def test_prepare_edge_cases():
    grid = np.linspace(0.5, 1.5, 11)
    point = np.zeros((2, 11))
    point[:, 5] = 1.0
    _check(grid, point, point)                                # every row pinned
    one = np.zeros((1, 1))
    one[0, 0] = 1.0
    _check(np.array([1.0]), one, one)                          # a one-point grid


@pytest.mark.parametrize("seed", range(3))
def test_prepare_bands_only_match_the_log_kernel(seed):
    """``logq=False`` (product reference): the same supports, and the bands with nu > 0 are
    exactly the finite entries of the log kernel."""
    rng = np.random.default_rng(seed)
    grid, w = kernel_marginals(rng, 6, 41)
    noisy = _noisy(rng, w, 1e-15)
    full = _prepare(grid, noisy[:-1].copy(), noisy[1:].copy(), None, None, touch_tol=1e-11)
    bands = _prepare(grid, noisy[:-1].copy(), noisy[1:].copy(), None, None, touch_tol=1e-11,
                     logq=False)
    assert bands.logq is None
    for a, b in ((full.mu, bands.mu), (full.nu, bands.nu), (full.pinned, bands.pinned)):
        np.testing.assert_array_equal(a, b)
    idx = np.arange(grid.size)
    allowed = ((idx[None, None, :] >= bands.lo[:, :, None])
               & (idx[None, None, :] <= bands.hi[:, :, None])
               & (bands.mu > 0)[:, :, None] & (bands.nu > 0)[:, None, :])
    np.testing.assert_array_equal(allowed, np.isfinite(full.logq))


def _close_spread(mass: float):
    """Two dates on a grid with one step of 0.015625 beside a step of 1: mu = 0.4 / 0.2 / 0.4
    at 15.2 / 16.2 / 32.215625, nu = mu with ``mass`` at 16.2 spread exactly (mean-preserving)
    to 15.2 and 16.215625. D(16.2) = mass x 0.0154 > 0: a genuine gap."""
    grid = np.concatenate([0.2 + np.arange(17.0), 16.215625 + np.arange(17.0)])
    w = np.zeros((2, grid.size))
    w[:, 15], w[:, 16], w[:, 32] = 0.4, 0.2, 0.4
    a = mass * (grid[17] - grid[16]) / (grid[17] - grid[15])
    w[1, 16] -= mass
    w[1, 15] += a
    w[1, 17] += mass - a
    return grid, w


@pytest.mark.parametrize("logq", [True, False])
def test_a_gap_that_stands_for_real_mass_is_not_a_touching_point(logq):
    # 2e-8 of mass crosses 16.2: D = 3.1e-10 lies below 1e-11 x s(16.2) = 7.7e-10, so the
    # relative test alone pinned the point and the solver could never place that mass
    # (marginal error 4e-8 > tol at any eps and iteration count). A spread of 1e-14 of mass
    # (D = 1.5e-16, round-off level) is still a touching point; both the numpy and the
    # compiled path agree
    from deepquant.mmot._support import TOUCH_MASS

    for mass, touching in ((2e-8, False), (1e-14, True)):
        grid, w = _close_spread(mass)
        touch = touching_points(w[:-1], w[1:], grid, rel=1e-11)
        assert bool(touch[0, 16]) is touching, mass
        assert (mass * 0.0154 > TOUCH_MASS * 0.015625) is not touching
        b = _prepare(grid, w[:-1].copy(), w[1:].copy(), None, None, touch_tol=1e-11, logq=logq)
        assert bool(b.pinned[0, 16]) is touching


def test_the_entropic_solver_places_a_tiny_exact_spread():
    # the same pair through the solver: converged to its tol with no ConvergenceWarning
    # (before: success False, marginal error 4.0e-8)
    import warnings

    from deepquant.market.marginals import Marginals
    from deepquant.mmot.entropic import solve_entropic

    grid, w = _close_spread(2e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve_entropic(Marginals(grid, w, np.array([1.0, 2.0])), 1e-2)
    assert res.success and res.marginal_error <= 1e-9 and res.drift <= 1e-9
