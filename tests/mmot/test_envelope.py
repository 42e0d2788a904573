"""The smoothed envelope kernel (DESIGN §2.8) against a straightforward reference: for each
state, the entropic envelope min_h eps log sum_y exp((G(y) - h (y - x)) / eps) on the kernel's
band, solved here by bisection on the Gibbs mean (the derivative, monotone in h) with the
textbook two-pass log-sum-exp."""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.mmot.envelope import (
    gather_period,
    hedge_violation_period,
    hull_sweep_period,
    point_slack_period,
    scatter_period,
    soft_sweep_period,
)


def _reference_row(g, yv, x, lo, hi, h_mid, radius, eps):
    """(value, h, mean) of the row on yv[lo..hi] by 200 bisections on E[y - x] = 0."""
    d = yv[lo:hi + 1] - x

    def gibbs(h):
        z = (g[lo:hi + 1] - h * d) / eps
        m = z.max()
        e = np.exp(z - m)
        return eps * (m + np.log(e.sum())), float(e @ d / e.sum())

    a, b = h_mid - radius, h_mid + radius
    for _ in range(200):
        c = 0.5 * (a + b)
        if gibbs(c)[1] > 0.0:
            a = c
        else:
            b = c
    h = 0.5 * (a + b)
    return gibbs(h)[0], h, gibbs(h)[1]


def _period(seed, n_s=6, n_y=25):
    rng = np.random.default_rng(seed)
    yv = np.sort(rng.uniform(0.5, 1.5, n_y))
    yv[0], yv[-1] = 0.5, 1.5
    xv = np.sort(np.concatenate([rng.uniform(0.55, 1.45, 12), yv[3:6]]))  # some on the grid
    G = -(yv[None, :] - rng.uniform(0.8, 1.2, (n_s, 1))) ** 2 * rng.uniform(0.5, 3.0, (n_s, 1))
    G = G + 0.02 * rng.standard_normal((n_s, n_y))  # points under the hull too
    live = rng.uniform(size=(n_s, xv.size)) < 0.9
    return G, yv, xv, live


def _soft(G, yv, xv, live, eps, band, h_init=None):
    shape = live.shape
    hv, hs = np.empty(shape), np.empty(shape)
    j1, j2, lam = np.empty(shape, np.int64), np.empty(shape, np.int64), np.empty(shape)
    vert = np.empty(G.shape, np.bool_)
    hull_sweep_period(G, yv, xv, live, hv, hs, j1, j2, lam, vert)
    val, hh, dr = np.empty(shape), np.empty(shape), np.empty(shape)
    lo, hi = np.empty(shape, np.int64), np.empty(shape, np.int64)
    use = h_init is not None
    soft_sweep_period(G, yv, xv, live, hv, hs, vert, eps, band, h_init if use else hs, use,
                      val, hh, lo, hi, dr)
    return val, hh, lo, hi, dr, hs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [1e-2, 1e-4, 1e-6])
def test_soft_envelope_kernel_matches_the_reference(seed, eps):
    """Values to 1e-9 eps, drift below the kernel's tolerance (1e-12 of the grid span, up to
    rounding), h to 1e-7 where the Gibbs kernel is spread (on a point mass h is free)."""
    G, yv, xv, live = _period(seed)
    band = 40.0
    val, hh, lo, hi, dr, hs = _soft(G, yv, xv, live, eps, band)
    span = yv[-1] - yv[0]
    for s, a in zip(*np.nonzero(live)):
        x = xv[a]
        if hi[s, a] == lo[s, a]:  # pinned at an end of the support
            continue
        d = np.abs(yv[lo[s, a]:hi[s, a] + 1] - x)
        radius = 2.0 * (band + 2.0) * eps / d[d > 0].min()
        v_ref, h_ref, _ = _reference_row(G[s], yv, x, lo[s, a], hi[s, a], hs[s, a], radius, eps)
        assert val[s, a] == pytest.approx(v_ref, abs=1e-9 * eps)
        assert dr[s, a] <= 1e-10 * span
        z = (G[s, lo[s, a]:hi[s, a] + 1] - hh[s, a] * (yv[lo[s, a]:hi[s, a] + 1] - x)) / eps
        p = np.exp(z - z.max())
        p /= p.sum()
        if p.max() < 1.0 - 1e-9:
            assert hh[s, a] == pytest.approx(h_ref, rel=1e-7, abs=1e-7)
        assert abs(p @ (yv[lo[s, a]:hi[s, a] + 1] - x)) <= 1e-10 * span


def test_soft_envelope_kernel_warm_start_gives_the_same_rows():
    """A warm start (the previous call's h, here perturbed) changes the path, not the answer."""
    G, yv, xv, live = _period(5)
    eps = 1e-4
    val, hh, lo, hi, dr, _ = _soft(G, yv, xv, live, eps, 40.0)
    rng = np.random.default_rng(1)
    warm = hh + 0.05 * rng.standard_normal(hh.shape)
    val2, hh2, lo2, hi2, dr2, _ = _soft(G, yv, xv, live, eps, 40.0, h_init=warm)
    np.testing.assert_array_equal(lo, lo2)
    np.testing.assert_array_equal(hi, hi2)
    np.testing.assert_allclose(val2[live], val[live], rtol=0, atol=1e-9 * eps)
    assert dr2.max() <= 1e-10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_violation_and_slack_kernels_equal_the_brute_force_over_all_pairs(seed):
    """The worst violation per state and the smallest slack per point, on lines that are not
    the hull's (the hull's lines shifted by noise, so both are nonzero), equal numpy's
    evaluation of the same expression over every live pair and point, bit for bit (max and
    min are exact, so the kernels' loop order cannot change them); dead pairs are skipped."""
    G, yv, xv, live = _period(seed)
    rng = np.random.default_rng(seed + 10)
    shape = live.shape
    val, slope = np.empty(shape), np.empty(shape)
    j1, j2, lam = np.empty(shape, np.int64), np.empty(shape, np.int64), np.empty(shape)
    hull_sweep_period(G, yv, xv, live, val, slope, j1, j2, lam, np.empty(G.shape, np.bool_))
    val = val + 0.01 * rng.standard_normal(shape)
    slope = slope + 0.05 * rng.standard_normal(shape)
    val[~live] = -1e3  # a dead pair far below: would dominate both if it were counted
    d = G[:, None, :] - val[:, :, None] - slope[:, :, None] * (yv[None, None, :] - xv[None, :, None])
    want_viol = np.max(np.where(live[:, :, None], d, 0.0), axis=(1, 2), initial=0.0)
    e = val[:, :, None] + slope[:, :, None] * (yv[None, None, :] - xv[None, :, None]) - G[:, None, :]
    want_slack = np.min(np.where(live[:, :, None], e, np.inf), axis=(0, 1))
    got_viol = hedge_violation_period(G, yv, xv, live, val, slope)
    got_slack = point_slack_period(G, yv, xv, live, val, slope)
    assert np.all(want_viol > 0) and np.any(want_slack < 0)
    np.testing.assert_array_equal(got_viol, want_viol)
    np.testing.assert_array_equal(got_slack, want_slack)


def test_gather_and_scatter_kernels_are_the_statistic_moves_and_their_adjoint():
    """On random moves of the statistic (each (s, y_j) to one or two next states), gather
    equals the weighted sum written out in numpy, scatter keeps the mass and equals numpy's
    bincount in the same order bit for bit, and the two are adjoint: <gather(w), q> =
    <w, scatter(q)> to rounding."""
    rng = np.random.default_rng(3)
    n_s, n_y, n_next = 7, 11, 9
    nidx = rng.integers(0, n_next, (n_s, n_y, 2))
    nw = np.zeros((n_s, n_y, 2))
    nw[..., 0] = rng.uniform(0.1, 1.0, (n_s, n_y))
    two = rng.uniform(size=(n_s, n_y)) < 0.5
    nw[..., 1] = np.where(two, 1.0 - nw[..., 0], 0.0)
    nw[..., 0] = np.where(two, nw[..., 0], 1.0)
    nidx[..., 1] = np.where(two, nidx[..., 1], 0)
    w = rng.standard_normal((n_next, n_y))
    q = rng.uniform(size=(n_s, n_y))
    j = np.arange(n_y)[None, :]
    want_g = nw[..., 0] * w[nidx[..., 0], j] + np.where(two, nw[..., 1] * w[nidx[..., 1], j], 0.0)
    got_g = np.empty((n_s, n_y))
    gather_period(nidx, nw, w, got_g)
    np.testing.assert_array_equal(got_g, want_g)
    idx = (nidx * n_y + np.arange(n_y)[None, :, None]).ravel()
    want_s = np.bincount(idx, (q[:, :, None] * nw).ravel(), minlength=n_next * n_y)
    got_s = np.full((n_next, n_y), np.nan)  # the kernel zeroes it
    scatter_period(nidx, nw, q, got_s)
    np.testing.assert_array_equal(got_s.ravel(), want_s)
    assert abs(got_s.sum() - q.sum()) <= 1e-12 * q.sum()
    assert abs(float(np.sum(got_g * q)) - float(np.sum(w * got_s))) <= 1e-12 * np.abs(w).sum()


def test_the_sweeps_moves_refuse_arrays_the_compiled_kernels_would_index_past():
    # the compiled gather / scatter do not check bounds, so the period checks the shapes:
    # a w_next with fewer rows than date t+1 has states, a q of another shape, or fewer
    # states than the moves reach are a ValueError, not a read or write past the arrays
    from deepquant.mmot.sweep import _Sweeper
    from tests.mmot.test_certified import _random_asian

    _, mg, _, chain = _random_asian(0)
    per = _Sweeper(chain, mg, 1.0).periods[1]
    w = np.zeros((per.n_next, per.ys.size))
    q = np.zeros((per.n_s, per.ys.size))
    assert per.gather(w).shape == q.shape and per.scatter(q, per.n_next).shape == w.shape
    with pytest.raises(ValueError, match="w_next"):
        per.gather(w[:-1])
    with pytest.raises(ValueError, match="n_next"):
        per.scatter(q, per.n_next - 1)
    with pytest.raises(ValueError, match="q of shape"):
        per.scatter(q[:, :-1], per.n_next)


def test_the_moves_kernel_is_numpys_bincount_of_the_envelopes_moves_bit_for_bit():
    """The mass the exact sweep's envelopes move from each live state (weight lam to y_j1,
    1 - lam to y_j2) equals numpy's bincount over [the j1 moves; the j2 moves] bit for bit,
    keeps the live mass, moves it with its mean (a martingale move: sum_j q y_j = sum m x),
    and skips the dead states and those without mass."""
    from deepquant.mmot.sweep import _Sweeper
    from tests.mmot.test_certified import _random_asian

    rng = np.random.default_rng(5)
    _, mg, _, chain = _random_asian(0)
    sw = _Sweeper(chain, mg, 1.0)
    u = rng.standard_normal(sw.mu_flat.size) * 0.01
    out = sw.hard(u)[1]
    per = sw.periods[1]
    _, _, j1, j2, lam = out[1]
    mass = rng.uniform(size=(per.n_s, per.xv.size))
    mass[rng.uniform(size=mass.shape) < 0.3] = 0.0
    ny = per.ys.size
    si, xi = np.nonzero((mass > 0) & per.live)
    m, lt = mass[si, xi], lam[si, xi]
    want = np.bincount(np.concatenate([si * ny + j1[si, xi], si * ny + j2[si, xi]]),
                       np.concatenate([m * lt, m * (1.0 - lt)]),
                       minlength=per.n_s * ny).reshape(per.n_s, ny)
    got = per.moves(mass, j1, j2, lam)
    np.testing.assert_array_equal(got, want)
    assert abs(got.sum() - mass[(mass > 0) & per.live].sum()) <= 1e-12 * mass.sum()
    # where the line is finite the move is a martingale move: the mass keeps its mean
    fin = np.where(np.isfinite(out[1][0]), mass, 0.0)
    np.testing.assert_allclose(per.moves(fin, j1, j2, lam) @ per.yv,
                               (np.where(per.live, fin, 0.0) * per.xv[None, :]).sum(axis=1),
                               rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="j1 and j2"):
        per.moves(mass, np.full_like(j1, ny), j2, lam)
    with pytest.raises(ValueError, match="shape"):
        per.moves(mass[:-1], j1, j2, lam)


def test_the_sweep_in_work_arrays_gives_the_fresh_sweeps_numbers_bit_for_bit():
    """``hard(u, scratch=True)`` (the periods' work arrays, reused from call to call) returns
    the numbers of the sweep in fresh arrays bit for bit, with and without the violations; a
    second scratch sweep overwrites the first one's arrays in place (so the polish's steps
    allocate nothing); the moves' laws and the certificate are the fresh ones' too."""
    from deepquant.mmot.polish import moves_laws
    from deepquant.mmot.sweep import _Sweeper
    from tests.mmot.test_certified import _random_asian

    rng = np.random.default_rng(11)
    _, mg, _, chain = _random_asian(1)
    sw = _Sweeper(chain, mg, -1.0)
    fresh = _Sweeper(chain, mg, -1.0)
    for _ in range(3):
        u = rng.standard_normal(sw.mu_flat.size) * 0.02
        want = fresh.hard(u, verify=True)
        got = sw.hard(u, verify=True, scratch=True)
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[2], want[2])
        for a, b in zip(got[1], want[1]):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(moves_laws(sw, got[1]), moves_laws(fresh, want[1]))
    first = sw.hard(u, scratch=True)[1][1][0]
    second = sw.hard(u + 0.01, scratch=True)[1][1][0]
    assert second is first  # the same work array, refilled
    np.testing.assert_array_equal(second, fresh.hard(u + 0.01)[1][1][0])
    c = sw.certify(u)
    d = fresh.certify(u)
    assert c[0] == d[0] and np.array_equal(c[2], d[2])
    with pytest.raises(ValueError, match="n_next"):
        sw.periods[1].scatter(np.zeros((sw.periods[1].n_s, sw.periods[1].ys.size)),
                              sw.periods[1].n_next + 1, scratch=True)
