"""Marginals: validation, convex order, repair, prices, storage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepquant import Marginals
from deepquant.market.marginals import call_matrix, split_onto_grid
from tests.conftest import martingale_kernel_marginals, random_walk_marginals

GRID = np.linspace(0.5, 1.5, 11)


def two_point(lo_idx: int, hi_idx: int, grid=GRID) -> np.ndarray:
    """Law on grid[lo], grid[hi] with mean 1 (grid symmetric about 1)."""
    w = np.zeros(grid.size)
    w[lo_idx] += 0.5
    w[hi_idx] += 0.5
    return w


def test_valid_marginals_round_trip(tmp_path):
    w = np.vstack([two_point(5, 5), two_point(4, 6), two_point(2, 8)])
    m = Marginals(GRID, w, [0.0, 0.5, 1.0])
    assert m.n_dates == 3 and m.size == 11 and m.n_periods == 2
    assert m.mean == pytest.approx(1.0, abs=1e-15)
    path = m.save(tmp_path / "m.npz")
    with np.load(path) as data:
        assert set(data.files) == {"grid", "marginals", "times"}
    back = Marginals.load(path)
    np.testing.assert_array_equal(back.weights, m.weights)
    np.testing.assert_array_equal(back.times, m.times)


def test_arrays_are_read_only():
    m = Marginals(GRID, two_point(4, 6))
    with pytest.raises(ValueError, match="read-only"):
        m.weights[0, 0] = 1.0


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda g, w: (g, np.where(np.arange(w.size) == 3, np.nan, w)), r"date 0, grid point x=0.8 .*not finite"),
        (lambda g, w: (g, w + np.where(np.arange(w.size) == 0, -0.1, 0.0)), r"date 0, grid point x=0.5 is negative"),
        (lambda g, w: (g, w * 1.01), r"date 0 sum to 1.01"),
        (lambda g, w: (g[::-1], w), r"unsorted points at index 0, 1"),
        (lambda g, w: (np.r_[g[:2], g[1], g[3:]], w), r"duplicate points at index 1, 2"),
        (lambda g, w: (g[:-1], w), r"weights must have shape \(N\+1, 10\)"),
        (lambda g, w: (np.r_[g[:-1], np.inf], w), r"grid has a non-finite value inf at index 10"),
    ],
)
def test_validation_errors(mutate, match):
    g, w = mutate(GRID.copy(), two_point(4, 6))
    with pytest.raises(ValueError, match=match):
        Marginals(g, w)


def test_unequal_means_names_date():
    w = np.vstack([two_point(4, 6), two_point(5, 7)])
    with pytest.raises(ValueError, match=r"weights have unequal means: date 1 has mean 1.1"):
        Marginals(GRID, w)


def test_times_validation():
    w = np.vstack([two_point(5, 5), two_point(4, 6)])
    with pytest.raises(ValueError, match="times must have shape"):
        Marginals(GRID, w, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="increasing"):
        Marginals(GRID, w, [1.0, 0.5])


def test_convex_order_violation_names_date_point_and_size():
    w = np.vstack([two_point(2, 8), two_point(4, 6)])  # later row is *less* spread
    with pytest.raises(ValueError, match=r"marginals\[1\] is not in convex order with marginals\[0\]: "
                       r"call price at k=0.9 drops by 1\.000e-01"):
        Marginals(GRID, w)
    m = Marginals(GRID, w, check_convex=False)
    rep = m.check_convex_order()
    # C_0(0.9) = 0.5 * 0.4 = 0.2 and C_1(0.9) = 0.5 * 0.2 = 0.1: the first worst point is k = 0.9
    calls = m.call_prices()
    assert rep.violation == pytest.approx(np.max(calls[0] - calls[1]), abs=1e-15)
    assert rep.date == 1 and not rep.ok


def test_require_convex_order_on_some_dates_names_every_bad_pair():
    """Rows spread, shrink, spread, shrink: pairs (1, 2) and (3, 4) are out of order (drops of
    0.1 at k = 0.9, exact in binary to 1e-15); ``dates`` restricts the check."""
    w = np.vstack([two_point(5, 5), two_point(2, 8), two_point(4, 6), two_point(2, 8),
                   two_point(4, 6)])
    m = Marginals(GRID, w, check_convex=False)
    with pytest.raises(ValueError, match=r"marginals\[2\] is not in convex order with "
                                         r"marginals\[1\]: call price at k=0\.9 drops by "
                                         r"1\.000e-01 \(> convex_tol 1e-09\); also marginals"
                                         r"\[4\] vs marginals\[3\] \(drop 1\.000e-01\); fix it"):
        m.require_convex_order(hint="fix it")
    with pytest.raises(ValueError, match=r"marginals\[4\] is not in convex order with "
                                         r"marginals\[3\].*\); see Marginals"):
        m.require_convex_order(dates=range(3, 5))
    m.require_convex_order(dates=range(1, 2))   # only (0, 1): in order
    m.require_convex_order(dates=range(3, 4))   # only (2, 3): in order


def test_convex_tolerance_is_configurable():
    w = np.vstack([two_point(4, 6), two_point(4, 6)])
    eps = 1e-7
    w[1, 4] -= eps
    w[1, 6] -= eps
    w[1, 5] += 2 * eps  # slightly *less* spread: violation of order 1e-8
    with pytest.raises(ValueError, match="convex order"):
        Marginals(GRID, w)
    Marginals(GRID, w, convex_tol=1e-6)


def test_repair_convex_order_is_explicit_and_reported():
    w = np.vstack([two_point(2, 8), two_point(4, 6), two_point(1, 9)])
    bad = Marginals(GRID, w, check_convex=False)
    fixed, report = bad.repair_convex_order()
    assert report.before.violation > 0
    assert report.after.violation <= 1e-12
    assert report.moved_l1[0] == 0.0 and report.moved_l1[1] > 0
    np.testing.assert_allclose(fixed.means, 1.0, atol=1e-12)
    # the original object is untouched: nothing is repaired silently
    assert bad.check_convex_order().violation > 0


def test_call_put_parity_and_call_matrix():
    m = Marginals(GRID, np.vstack([two_point(5, 5), two_point(3, 7)]))
    k = np.array([0.55, 1.0, 1.23])
    np.testing.assert_allclose(m.call_prices(k) - m.put_prices(k), m.means[:, None] - k, atol=1e-15)
    np.testing.assert_allclose(m.call_prices(k)[1], 0.5 * np.maximum(GRID[[3, 7]][:, None] - k, 0).sum(0))
    assert call_matrix(GRID, k).shape == (3, 11)
    assert m.spot_call_price(1, 4000.0, forward=4000.0, discount=0.99) == pytest.approx(
        0.99 * 4000.0 * 0.5 * 0.2)


def test_from_spot_laws_preserves_mean_and_order():
    spot = np.linspace(50.0, 150.0, 101)
    w0 = np.zeros(101)
    w0[50] = 1.0
    w1 = np.zeros(101)
    w1[[40, 60]] = 0.5
    m = Marginals.from_spot_laws(spot, np.vstack([w0, w1 * 0 + w0, w1]), [100.0, 100.0, 100.0])
    assert m.mean == pytest.approx(1.0)
    with pytest.raises(ValueError, match="forwards must be 3 positive numbers"):
        Marginals.from_spot_laws(spot, np.vstack([w0, w0, w1]), [100.0, -1.0, 100.0])


def test_split_onto_grid_preserves_mass_and_mean():
    pts = np.array([0.53, 1.0, 1.47])
    mass = np.array([0.2, 0.5, 0.3])
    out = split_onto_grid(pts, mass, GRID)
    assert out.sum() == pytest.approx(1.0, abs=1e-15)
    assert out @ GRID == pytest.approx(mass @ pts, abs=1e-15)
    with pytest.raises(ValueError, match="outside the grid"):
        split_onto_grid(np.array([2.0]), np.array([1.0]), GRID)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Marginals.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", grid=GRID)
    with pytest.raises(ValueError, match=r"lacks the key\(s\) \['marginals'\]"):
        Marginals.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz file: not a \.npz \(zip\) "
                                         "archive"):
        Marginals.load(tmp_path / "junk.npz")


def test_random_walk_marginals_are_valid():
    grid, w = random_walk_marginals()
    m = Marginals(grid, w)
    # Var X_t = t * Var(step) = 2 t exactly
    np.testing.assert_allclose(m.variances(), 2.0 * np.arange(4), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_dates=st.integers(2, 5))
def test_kernel_marginals_pass_validation(seed, n_dates):
    """Pushing a law through martingale kernels always yields convex-ordered rows (to 1e-12)."""
    grid, w = martingale_kernel_marginals(np.random.default_rng(seed), n_dates=n_dates)
    m = Marginals(grid, w)
    assert m.check_convex_order().violation <= 1e-12


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_reversed_nontrivial_marginals_fail_and_repair(seed):
    """Reversing a strictly spreading pair breaks convex order; repair restores it exactly."""
    grid, w = martingale_kernel_marginals(np.random.default_rng(seed), n_dates=2)
    calls = w @ call_matrix(grid, grid).T
    if np.max(calls[1] - calls[0]) < 1e-6:
        return  # the kernel did not spread: the reversed pair is still ordered
    with pytest.raises(ValueError, match="not in convex order"):
        Marginals(grid, w[::-1])
    fixed, rep = Marginals(grid, w[::-1], check_convex=False).repair_convex_order()
    assert rep.after.violation <= 1e-12
    assert rep.moved_l1[1] > 0


def test_complex_weights_empty_rows_and_text_are_rejected():
    grid = np.linspace(0.5, 1.5, 11)
    w = np.zeros((2, 11))
    w[:, 5] = 1.0
    with pytest.raises(ValueError, match=r"weights must be real numbers, got a complex array"):
        Marginals(grid, w + 0j)
    with pytest.raises(ValueError, match=r"grid must be real numbers"):
        Marginals(grid + 1e-3j, w)
    with pytest.raises(ValueError, match=r"weights must have shape \(N\+1, 11\) with N\+1 >= 1 "
                                         r"dates to match the grid, got \(0, 11\)"):
        Marginals(grid, np.zeros((0, 11)))
    with pytest.raises(ValueError, match="times must be an array of real numbers"):
        Marginals(grid, w, times=["a", "b"])


def test_validation_of_a_large_grid_is_linear_in_memory():
    import tracemalloc

    m = 100_001
    grid = np.linspace(0.5, 1.5, m)
    w = np.zeros((2, m))
    w[0, m // 2] = 1.0
    w[1, [0, -1]] = 0.5
    tracemalloc.start()
    try:
        marg = Marginals(grid, w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # an M x M matrix would be 80 GB; the O(M) check needs a few arrays of 2 x M floats
    assert peak < 50e6, peak
    assert marg.check_convex_order().ok


def test_call_prices_match_the_payoff_matrix():
    # the O(M) call curve and its interpolation against the direct sum of (x - k)^+ w
    rng = np.random.default_rng(3)
    grid = np.sort(rng.uniform(0.3, 2.0, 40))
    w = rng.uniform(0, 1, (1, 40))
    w /= w.sum()
    marg = Marginals(grid, w)
    k = np.concatenate([grid, rng.uniform(0.1, 2.5, 30)])
    direct = w @ np.maximum(grid[None, :] - k[:, None], 0.0).T
    # sums of 40 non-negative terms of order 1: 1e-14 absolute
    np.testing.assert_allclose(marg.call_prices(k), direct, atol=1e-14)


def test_require_convex_order_names_every_pair_and_the_hint():
    grid = np.linspace(0.5, 1.5, 11)
    w = np.zeros((4, 11))
    w[0, [3, 7]] = 0.5      # 0.8 or 1.2
    w[1, 5] = 1.0           # collapses to 1: out of order with date 0 (drop 0.1 at k = 1)
    w[2, [2, 8]] = 0.5      # 0.7 or 1.3
    w[3, [3, 7]] = 0.5      # narrower again: drop 0.05
    m = Marginals(grid, w, check_convex=False)
    with pytest.raises(ValueError, match=r"marginals\[1\] is not in convex order with "
                                         r"marginals\[0\]: call price at k=1 drops by 1\.000e-01 "
                                         r"\(> convex_tol 1e-09\); also marginals\[3\] vs "
                                         r"marginals\[2\] \(drop 5\.000e-02\); use the relaxed LP"):
        m.require_convex_order(hint="use the relaxed LP")
    m.select([0, 2]).require_convex_order()   # in order: no error


def test_load_corrupted_files_is_a_clear_error(tmp_path):
    grid = np.linspace(0.5, 1.5, 101)
    w = np.zeros((3, 101))
    w[:, 50] = 1.0
    good = Marginals(grid, w).save(tmp_path / "good.npz")
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[200] ^= 0xFF            # inside the first member: its CRC no longer matches
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    np.save(tmp_path / "arr.npy", w)
    (tmp_path / "arr.npy").rename(tmp_path / "arr.npz")
    cases = [("trunc.npz", "File is not a zip file"), ("crc.npz", "Bad CRC-32"),
             ("arr.npz", r"holds a single array \(a \.npy file\)")]
    for name, why in cases:
        with pytest.raises(ValueError, match=rf"'.*{name}' is not a readable \.npz file: "
                                             rf".*{why}"):
            Marginals.load(tmp_path / name)
    with pytest.raises(ValueError, match="is a folder"):
        Marginals.load(tmp_path)


def _three_dates() -> Marginals:
    return Marginals(GRID, np.vstack([two_point(5, 5), two_point(4, 6), two_point(2, 8)]))


@pytest.mark.parametrize("call, match", [
    # before: NaN prices returned as if valid (library fuzz, third pass)
    (lambda m: m.call_prices([np.nan]), r"strikes must be finite, got \[nan\]"),
    (lambda m: m.put_prices([1.0, np.inf]), r"strikes must be finite, got \[1.0, inf\]"),
    (lambda m: m.spot_call_price(1, np.nan, forward=1.0), "strike must be a finite number, got nan"),
    (lambda m: m.spot_call_price(1, 1.0, forward=np.nan), "forward must be a finite number > 0, got nan"),
    (lambda m: m.spot_call_price(1, 1.0, forward=1.0, discount=np.nan),
     "discount must be a finite number > 0, got nan"),
    # before: an array of shape (3, 2, 2), not the documented (N+1, K)
    (lambda m: m.call_prices(np.ones((2, 2))), r"strikes must be a number or a 1-D sequence, got shape \(2, 2\)"),
    # before: "could not convert string to float" without the argument
    (lambda m: m.call_prices(["a"]), "strikes must be an array of real numbers"),
    # before: date 0.5 read as date 0, 1.5 as 1
    (lambda m: m.select([0.5]), "date index must be an integer, got 0.5"),
    (lambda m: m.spot_call_price(1.5, 1.0, forward=1.0), "date index must be an integer, got 1.5"),
    (lambda m: m.support(True), "date index must be an integer, got True"),
])
def test_prices_and_dates_refuse_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(_three_dates())


def test_prices_still_take_numpy_scalars():
    m = _three_dates()
    # (x - 1)^+ under the law 0.5 at 0.7 and 1.3 (grid[2], grid[8]): 0.15, closed form (rounding only)
    assert m.spot_call_price(np.int64(2), np.float64(1.0), forward=1.0) == pytest.approx(0.15, abs=1e-15)
    assert m.select(np.array([0, 2])).n_dates == 2
