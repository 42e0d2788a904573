"""Exact LP bounds on the augmented chain (DESIGN §2.2, §2.3, §7)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepquant.market.marginals import Marginals
from deepquant.mmot.bounds import bounds
from deepquant.mmot.lp import lp_bounds
from deepquant.mmot.pathlp import path_lp_bounds
from deepquant.mmot.result import BoundsResult
from deepquant.payoffs import SumSquaredIncrements, make_payoff
from deepquant.results import ConvergenceWarning
from tests.conftest import martingale_kernel_marginals, random_walk_marginals
from tests.result_protocol import ResultProtocol

DATA = json.loads((Path(__file__).parent / "data" / "random_walk_bounds.json").read_text())
RW_CASES = [pytest.param(c, id=c["payoff"]) for c in DATA["cases"]]


@pytest.fixture(scope="module")
def rw():
    return Marginals(*random_walk_marginals(4))


@pytest.mark.parametrize("case", RW_CASES)
def test_random_walk_full_martingale_values(rw, case):
    res = bounds(rw, make_payoff(case["payoff"], **case["params"]))
    assert res.success and res.status == "optimal"
    # reference values are rounded to 6 decimals (error <= 5e-7); the LP is solved to ~1e-12
    assert res.lower == pytest.approx(case["lower"], abs=DATA["tolerance"])
    assert res.upper == pytest.approx(case["upper"], abs=DATA["tolerance"])
    # every solve is checked: residual and gap measured on the returned solution
    assert res.primal_residual < 1e-9
    assert res.gap < 1e-9
    assert res.sizes["rows"] > 0 and res.sizes["cols"] > 0 and res.sizes["nnz"] > 0
    assert res.lower_side.duals is not None and res.upper_side.duals is not None
    assert res.lower_side.status == res.upper_side.status == "optimal"


@pytest.mark.parametrize("case", [c for c in RW_CASES if c.values[0]["payoff"] != "sum-squared-increments"])
def test_one_step_multipliers_are_wider(rw, case):
    """The seeds' h_t(x) rows (weaker than the martingale property) give different, wider
    bounds; built both on the augmented chain and as a path LP."""
    payoff = make_payoff(case["payoff"], **case["params"])
    weak = lp_bounds(rw, payoff, martingale="one-step")
    weak_paths = path_lp_bounds(rw, payoff, filtration="one-step")
    tol = DATA["tolerance"]  # the references are rounded to 6 decimals
    assert weak.lower <= case["lower"] + tol and weak.upper >= case["upper"] - tol
    assert (case["lower"] - weak.lower) + (weak.upper - case["upper"]) > 5e-3
    assert weak_paths.lower == pytest.approx(case["one_step_lower"], abs=DATA["tolerance"])
    assert weak_paths.upper == pytest.approx(case["one_step_upper"], abs=DATA["tolerance"])


def _random_marginals(seed: int, n_dates: int, size: int) -> Marginals:
    rng = np.random.default_rng(seed)
    return Marginals(*martingale_kernel_marginals(rng, n_dates=n_dates, size=size))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_dates=st.integers(2, 5), size=st.integers(5, 12))
def test_sum_squared_increments_is_model_free(seed, n_dates, size):
    mg = _random_marginals(seed, n_dates, size)
    res = bounds(mg, make_payoff("sum-squared-increments"))
    second = mg.weights @ mg.grid**2
    exact = float(np.sum(np.diff(second)))
    assert res.success
    # lower = upper = sum_t (E mu_{t+1}[x^2] - E mu_t[x^2]); LP accuracy ~1e-12
    assert res.lower == pytest.approx(exact, abs=1e-9)
    assert res.upper == pytest.approx(exact, abs=1e-9)


def test_direct_lp_random_walk_asian(rw):
    payoff = make_payoff("asian-call", strike=100.0)
    res = lp_bounds(rw, payoff, algorithm="direct")
    assert res.lower == pytest.approx(0.639111, abs=1e-6)
    assert res.upper == pytest.approx(0.794667, abs=1e-6)
    assert res.gap < 1e-9


def test_pairwise_decomposition_equals_augmented_chain():
    mg = _random_marginals(7, 4, 9)
    payoff = make_payoff("forward-start-straddle", t1=1, t2=2)
    a = lp_bounds(mg, payoff)
    b = lp_bounds(mg, payoff, decompose=False)
    assert a.structure == "pairwise" and b.structure == "augmented"
    assert a.lower == pytest.approx(b.lower, abs=1e-9)
    assert a.upper == pytest.approx(b.upper, abs=1e-9)


def test_plan_is_a_martingale_with_the_marginals(rw):
    res = lp_bounds(rw, make_payoff("lookback-call", strike=100.0), return_plan=True)
    grid = rw.grid
    for side in (res.lower_side, res.upper_side):
        for t, plan in enumerate(side.plan):  # (M, n_t, M)
            np.testing.assert_allclose(plan.sum(axis=(0, 1)), rw.weights[t + 1], atol=1e-12)
            drift = np.einsum("xsy,y->xs", plan, grid) - plan.sum(axis=2) * grid[:, None]
            assert np.abs(drift).max() < 1e-12


def test_grid_mode_close_to_lattice():
    """An interpolated sum grid (strike on the grid) approaches the exact lattice value."""
    mg = _random_marginals(11, 4, 9)
    payoff = make_payoff("asian-call", strike=1.0)
    exact = lp_bounds(mg, payoff)
    approx = lp_bounds(mg, payoff, sum_mode="grid", sum_grid_size=41)
    assert exact.exact and not approx.exact
    # measured: about 1e-3 absolute at 41 sum points on this case
    assert approx.lower == pytest.approx(exact.lower, abs=5e-3)
    assert approx.upper == pytest.approx(exact.upper, abs=5e-3)


def test_not_in_convex_order_names_the_dates():
    grid = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    w = np.array([[0, 0, 1, 0, 0], [0, 0.5, 0, 0.5, 0], [0, 0, 1, 0, 0.0]], dtype=float)
    mg = Marginals(grid, w, check_convex=False)
    with pytest.raises(ValueError, match=r"marginals\[2\] is not in convex order with "
                                         r"marginals\[1\]: call price at k=1 drops by "
                                         r"5\.000e-02.*martingale_tol > 0"):
        bounds(mg, make_payoff("asian-call", strike=1.0))
    # a payoff that stops at date 1 never meets the bad pair: the LP runs
    res = bounds(mg, make_payoff("european-call", strike=1.0, date=1), method="lp")
    assert res.success and res.lower == pytest.approx(0.05, abs=1e-9)


def test_relaxed_mode_reports_tolerance():
    grid = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    w = np.array([[0, 0, 1, 0, 0], [0, 0.5, 0, 0.5, 0], [0, 0.25, 0.5, 0.25, 0.0]])
    mg = Marginals(grid, w, check_convex=False)  # date 2 is not above date 1
    res = bounds(mg, make_payoff("asian-call", strike=1.0), martingale_tol=0.06)
    assert res.success and res.martingale_tol == 0.06
    assert res.lower <= res.upper
    with pytest.warns(ConvergenceWarning, match="martingale_tol"):
        tight = bounds(mg, make_payoff("asian-call", strike=1.0), martingale_tol=1e-3)
    assert not tight.success and "martingale_tol" in tight.message
    # each side says why in the protocol's word; HiGHS's own code (2: infeasible) in its info
    for side in (tight.lower_side, tight.upper_side):
        assert side.status == "infeasible" and side.info["highs_status"] == 2
        assert not side.success and np.isnan(side.value)


def test_pairwise_lp_failure_names_the_first_failing_period():
    """A payoff of one period per term (the pairwise LPs): a period without a martingale
    coupling fails the side with HiGHS's word for it, and the message names the period."""
    grid = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    w = np.array([[0, 0, 1, 0, 0], [0, 0.5, 0, 0.5, 0], [0, 0.25, 0.5, 0.25, 0.0]])
    mg = Marginals(grid, w, check_convex=False)  # date 2 is not above date 1
    with pytest.warns(ConvergenceWarning, match="period 1"):
        res = bounds(mg, SumSquaredIncrements(), method="lp", martingale_tol=1e-3)
    assert res.structure == "pairwise" and not res.success and res.status == "failed"
    for side in (res.lower_side, res.upper_side):
        assert side.status == "infeasible" and "period 1" in side.message


def test_relaxed_mode_widens_valid_bounds(rw):
    payoff = make_payoff("lookback-call", strike=100.0)
    exact = bounds(rw, payoff)
    relaxed = bounds(rw, payoff, martingale_tol=0.1)
    assert relaxed.lower <= exact.lower + 1e-9 and relaxed.upper >= exact.upper - 1e-9


def test_payoff_known_at_date_zero(rw):
    res = bounds(rw, make_payoff("european-call", strike=99.0, date=0))
    assert res.lower == pytest.approx(1.0) and res.upper == pytest.approx(1.0)


def test_bounds_errors(rw):
    payoff = make_payoff("asian-call", strike=100.0)
    with pytest.raises(ValueError, match="method must be one of"):
        bounds(rw, payoff, method="simplex")
    with pytest.raises(ValueError, match="eps is only used"):
        bounds(rw, payoff, eps=0.1)
    with pytest.raises(ValueError, match="needs eps > 0"):
        bounds(rw, payoff, method="entropic")
    with pytest.raises(TypeError, match="Payoff"):
        bounds(rw, "asian-call")
    with pytest.raises(ValueError, match="martingale must be one of"):
        lp_bounds(rw, payoff, martingale="weak")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        lp_bounds(rw, payoff, algorithm="barrier")
    with pytest.raises(ValueError, match="martingale_tol must be"):
        lp_bounds(rw, payoff, martingale_tol=-1.0)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_dates=st.integers(2, 4), size=st.integers(5, 9),
       name=st.sampled_from(["asian-call", "lookback-put", "forward-start-straddle",
                             "up-and-in-call"]))
def test_random_marginals_solve_and_contain_a_model_price(seed, n_dates, size, name):
    """Random convex-ordered marginals: both sides optimal, residuals and gaps below 1e-9, and
    the price under one martingale model (glued one-period couplings) lies inside the bounds."""
    from deepquant.mmot.augment import build_chain, expectation
    from deepquant.mmot.lp import _glued_kernels

    mg = _random_marginals(seed, n_dates, size)
    params = dict(strike=1.0)
    if name == "forward-start-straddle":
        params = dict(t1=0)
    if name == "up-and-in-call":
        params.update(barrier=1.1)
    payoff = make_payoff(name, **params)
    res = bounds(mg, payoff)
    assert res.success
    assert res.primal_residual < 1e-9 and res.gap < 1e-9
    chain = build_chain(mg, payoff)
    kernels = _glued_kernels(chain, mg.weights)
    price = expectation(chain, kernels)
    assert res.lower - 1e-9 <= price <= res.upper + 1e-9


class TestBoundsResult(ResultProtocol):
    result_type = BoundsResult

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        return bounds(Marginals(*random_walk_marginals(4)), make_payoff("asian-call",
                                                                         strike=100.0))

    @pytest.fixture
    def failure(self):
        # HiGHS stops at once with a zero time limit: both sides fail (status 1)
        m = Marginals(*random_walk_marginals(3))
        return lambda: path_lp_bounds(m, make_payoff("asian-call", strike=100.0),
                                      highs_options={"time_limit": 0.0})

    def test_seconds_is_the_total_of_the_timings(self, result):
        assert set(result.timings) == {"lower", "upper", "build"}
        assert result.seconds == pytest.approx(sum(result.timings.values()), rel=1e-12)


def test_martingale_tol_beyond_the_grid_width_is_refused(rw):
    """No coupling on the grid drifts more than its width, so a larger tolerance binds nothing
    (found by fuzzing: 1e308 made HiGHS fail with a model error, reported as "infeasible").
    At the width itself the LP still solves (a relaxation: bounds at least as wide as exact)."""
    payoff = make_payoff("asian-call", strike=1.0)
    width = float(rw.grid[-1] - rw.grid[0])
    for tol in (1e308, 1.5 * width):
        with pytest.raises(ValueError, match=r"martingale_tol must be at most the grid's width "
                           rf"{width:.6g} .*got {re.escape(repr(tol))}"):
            lp_bounds(rw, payoff, martingale_tol=tol)
    exact = lp_bounds(rw, payoff)
    loose = lp_bounds(rw, payoff, martingale_tol=width)
    assert loose.success
    # relaxed rows only widen the feasible set; 1e-9: HiGHS's feasibility tolerance
    assert loose.lower <= exact.lower + 1e-9 and loose.upper >= exact.upper - 1e-9


@pytest.mark.parametrize("strike", [1e18, 1e20])
def test_lp_solves_a_payoff_of_huge_scale(strike):
    """A forward-start straddle |X_2 / X_1 - k| with k of 1e18-1e20 on a grid near 1: HiGHS
    returned no solution on these objective coefficients ("status code was not recognized")
    until the LP was scaled. Every path pays k - X_2 / X_1 here, so both bounds are k minus a
    ratio's mean in [0.9, 1.1]: equal to k to 1e-12 relative at this scale."""
    from deepquant.mmot.lp import lp_bounds
    from deepquant.payoffs import ForwardStartStraddle

    grid, weights = random_walk_marginals(3)
    m = Marginals(np.asarray(grid) / 100.0, weights)
    res = lp_bounds(m, ForwardStartStraddle(t1=1, t2=2, strike=strike))
    assert res.success, res.message
    assert res.lower <= res.upper
    for v in (res.lower, res.upper):
        assert v == pytest.approx(strike, rel=1e-12)


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1.0, 1e6, 1e9])
def test_the_start_plan_is_a_martingale_on_every_grid_scale(scale):
    """The start plan of the LP and of column generation (``lp._feasible_martingale_plan``)
    is a martingale coupling with the given laws, its residuals relative to the grid's scale,
    whatever the scale: HiGHS's feasibility tolerance is absolute, and with the martingale
    rows in grid units a plan on a grid scaled by 1e-9 missed them by 2.7% of the scale."""
    from deepquant.market.synthetic import gbm_marginals
    from deepquant.mmot.lp import _feasible_martingale_plan

    m = gbm_marginals([0.0, 0.5, 1.0], grid=np.linspace(0.3, 2.5, 40), sigma=0.2)
    w = np.asarray(m.weights)
    xs, ys = w[1] > 0, w[2] > 0
    x, y = m.grid[xs] * scale, m.grid[ys] * scale
    plan = _feasible_martingale_plan(x, y, w[1, xs], w[2, ys])
    assert plan is not None and plan.min() > -1e-9
    assert np.abs(plan.sum(axis=1) - w[1, xs]).max() < 1e-9
    assert np.abs(plan.sum(axis=0) - w[2, ys]).max() < 1e-9
    assert np.abs(plan @ y - x * w[1, xs]).max() / scale < 1e-9
