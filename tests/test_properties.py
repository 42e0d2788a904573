"""Property tests (hypothesis) over the public market and payoff API.

Random valid marginals (a law on a random grid, then mean-preserving spreads, which keep every
row in convex order exactly on the grid) must construct, validate, price and solve (entropic
martingale transport); random invalid input must raise ``ValueError`` whose message names the
argument, never another exception.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepquant import payoffs as po
from deepquant.market.marginals import Marginals

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_marginals(draw):
    """(grid, weights, times) with rows in convex order on the grid."""
    m = draw(st.integers(3, 40))
    steps = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=m - 1, max_size=m - 1)))
    grid = 0.2 + np.concatenate([[0.0], np.cumsum(steps)])
    n_dates = draw(st.integers(1, 5))
    # row 0: mass on the interior points only, so that spreads stay on the grid
    raw = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=m - 2, max_size=m - 2)))
    if raw.sum() <= 0:
        raw[0] = 1.0
    row = np.zeros(m)
    row[1:-1] = raw / raw.sum()
    rows = [row]
    for _ in range(n_dates - 1):
        row = rows[-1].copy()
        # mean-preserving spreads: move a fraction of the mass at x_j to x_{j-1} and x_{j+1}
        for j in draw(st.lists(st.integers(1, m - 2), max_size=5)):
            frac = draw(st.floats(0.0, 1.0))
            mass = frac * row[j]
            lo, mid, hi = grid[j - 1], grid[j], grid[j + 1]
            a = mass * (hi - mid) / (hi - lo)
            row[j] -= mass
            row[j - 1] += a
            row[j + 1] += mass - a
        rows.append(row)
    times = np.cumsum(draw(st.lists(st.floats(0.01, 2.0), min_size=n_dates,
                                    max_size=n_dates)))
    return grid, np.array(rows), times


@SETTINGS
@given(valid_marginals())
def test_random_valid_marginals_construct_and_price(data):
    grid, w, times = data
    m = Marginals(grid, w, times, sum_tol=1e-9, mean_tol=1e-9, convex_tol=1e-9)
    rep = m.check_convex_order()
    assert rep.violation <= 1e-9 * max(1.0, m.mean)
    calls = m.call_prices()
    # call prices are non-negative, non-increasing in k, and non-decreasing in the date
    # (tolerance: sums of at most 40 terms of order 1, 1e-12)
    assert np.all(calls >= -1e-12)
    assert np.all(np.diff(calls, axis=1) <= 1e-12)
    assert np.all(np.diff(calls, axis=0) >= -1e-9)
    np.testing.assert_allclose(m.put_prices() - calls, -m.means[:, None] + grid[None, :],
                               atol=1e-12)
    paths = np.broadcast_to(grid[:, None], (grid.size, m.n_dates))
    for payoff in (po.AsianCall(strike=float(m.mean)), po.LookbackCall(strike=1.0),
                   po.EuropeanPut(strike=float(grid[grid.size // 2]))):
        assert payoff(paths).shape == (grid.size,)


def _corrupt(kind, grid, w, times):
    """One invalid version of valid input: (args, kwargs, words the message must contain)."""
    w = w.copy()
    if kind == "negative":
        w[-1, int(np.argmax(w[-1]))] *= -1
        return (grid, w, times), {}, "weights"
    if kind == "nan":
        w[0, 1] = np.nan
        return (grid, w, times), {}, "weights"
    if kind == "complex":
        return (grid, w + 1e-3j, times), {}, "weights must be real"
    if kind == "text":
        return (grid, w.astype(str).astype(object) + "x", times), {}, "weights must be an array"
    if kind == "sum":
        w[0] *= 1.01
        return (grid, w, times), {}, "weights at date 0 sum to"
    if kind == "shape":
        return (grid, w[:, :-1], times), {}, "weights must have shape"
    if kind == "empty":
        return (grid, w[:0], times), {}, "weights must have shape"
    if kind == "unsorted":
        g = grid.copy()
        g[[0, 1]] = g[[1, 0]]
        return (g, w, times), {}, "grid must be strictly increasing"
    if kind == "grid-nan":
        g = grid.copy()
        g[-1] = np.inf
        return (g, w, times), {}, "grid has a non-finite value"
    if kind == "times":
        return (grid, w, times[::-1] if times.size > 1 else -times), {}, "times must be"
    if kind == "times-shape":
        return (grid, w, np.append(times, times[-1] + 1)), {}, "times must have shape"
    if kind == "tol":
        return (grid, w, times), {"sum_tol": float("nan")}, "sum_tol must be"
    raise AssertionError(kind)


KINDS = ["negative", "nan", "complex", "text", "sum", "shape", "empty", "unsorted", "grid-nan",
         "times", "times-shape", "tol"]


@SETTINGS
@given(valid_marginals(), st.sampled_from(KINDS))
def test_random_invalid_marginals_raise_value_error_naming_the_argument(data, kind):
    grid, w, times = data
    args, kwargs, words = _corrupt(kind, grid, w, times)
    with pytest.raises(ValueError) as info:
        Marginals(*args, **kwargs)
    assert words in str(info.value)


@SETTINGS
@given(valid_marginals(), st.floats(1e-6, 0.5))
def test_unequal_means_and_convex_order_violations_are_named(data, shift):
    grid, w, times = data
    if w.shape[0] < 2:
        return
    # a later row moved to a different mean
    moved = w.copy()
    moved[-1] = 0.0
    moved[-1, 0] = 1.0
    if abs(grid[0] - moved[0] @ grid) > 1e-8:
        with pytest.raises(ValueError, match="weights have unequal means"):
            Marginals(grid, moved, times)
    # a later row collapsed onto its mean (split on the grid): below an earlier spread row
    mean = float(w[0] @ grid)
    j = int(np.clip(np.searchsorted(grid, mean) - 1, 0, grid.size - 2))
    lam = (mean - grid[j]) / (grid[j + 1] - grid[j])
    narrow = np.zeros(grid.size)
    narrow[j], narrow[j + 1] = 1 - lam, lam
    wide = w[-1]
    calls_gap = (Marginals(grid, np.vstack([wide, narrow]), check_convex=False)
                 .check_convex_order().violation)
    if calls_gap > 1e-6:
        with pytest.raises(ValueError, match=r"marginals\[1\] is not in convex order with "
                                             r"marginals\[0\]"):
            Marginals(grid, np.vstack([wide, narrow]))


BAD_VALUES = [float("nan"), float("inf"), "abc", None, True, [1.0], complex(1, 1)]


@SETTINGS
@given(st.sampled_from(["asian-call", "lookback-put", "european-call", "up-and-out-call",
                        "down-and-in-put"]),
       st.sampled_from(BAD_VALUES), st.sampled_from(["strike", "barrier"]))
def test_payoffs_reject_bad_parameters_at_construction(name, bad, param):
    if param == "barrier" and "-and-" not in name:
        param = "strike"
    params = {"strike": 1.0, **({"barrier": 1.2} if "-and-" in name else {}), param: bad}
    if bad is None:
        # None means "not given" for make_payoff (the library default applies) ...
        assert po.make_payoff(name, **params)
        # ... and is an error when passed to the class itself
        cls = type(po.make_payoff(name, **{k: v for k, v in params.items() if v is not None}))
        kwargs = {k: v for k, v in params.items() if k in ("strike", "barrier")}
        with pytest.raises(ValueError, match=f"{param} must be a finite real number"):
            cls(**kwargs)
        return
    with pytest.raises(ValueError, match=f"{param} must be a finite real number"):
        po.make_payoff(name, **params)


@SETTINGS
@given(st.floats(-5, 5), st.floats(0.1, 3.0), st.integers(2, 8))
def test_valid_payoffs_evaluate_finite_on_random_paths(strike, level, n_dates):
    rng = np.random.default_rng(0)
    paths = np.exp(0.2 * rng.standard_normal((50, n_dates)))
    for name in po.PAYOFF_NAMES:
        params = {p: (strike if p == "strike" else level) for p in po.required_params(name)}
        values = po.make_payoff(name, **params)(paths)
        assert values.shape == (50,) and np.all(np.isfinite(values))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_marginals())
def test_random_valid_marginals_solve(data):
    import warnings

    from deepquant.mmot.entropic import solve_entropic

    grid, w, times = data
    if w.shape[0] < 2:
        return
    m = Marginals(grid, w, times)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no ConvergenceWarning either
        res = solve_entropic(m, 1e-2)
    assert res.success, res.message
    # measured residuals, not iterate changes: L1 marginal error and drift at the solver's tol
    # (1e-9), with room for the rounding of sums over at most 40 x 40 entries
    assert res.marginal_error <= 1e-8 and res.drift <= 1e-8
