"""Tests of the transaction-cost and calibration widenings (seed 001 Thm 6.4, Cor. 6.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepquant.mmot.widening import (
    calibration_delta,
    calibration_widening,
    expected_abs_moves,
    transaction_cost_widening,
    widen,
)


def _two_point_plans():
    """X_0 = 1; X_1 in {0.9, 1.1} w.p. 1/2; X_2 = X_1 +- 0.1 w.p. 1/2: E|dX| = 0.1 each period."""
    grid = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    p0 = np.zeros((5, 5))
    p0[2, 1] = p0[2, 3] = 0.5
    p1 = np.zeros((5, 5))
    p1[1, 0] = p1[1, 2] = 0.25
    p1[3, 2] = p1[3, 4] = 0.25
    return grid, np.stack([p0, p1])


def test_expected_moves_of_joint_plans_by_hand():
    grid, plans = _two_point_plans()
    np.testing.assert_allclose(expected_abs_moves(plans, grid=grid), [0.1, 0.1], rtol=0, atol=1e-15)


def test_kernels_and_joint_plans_agree():
    """The same chain given as kernels + marginals gives the same moves (exact arithmetic)."""
    grid, plans = _two_point_plans()
    weights = np.vstack([plans[0].sum(1), plans[0].sum(0), plans[1].sum(0)])
    kern = np.zeros_like(plans)
    for t in range(2):
        row = plans[t].sum(1)
        kern[t][row > 0] = plans[t][row > 0] / row[row > 0, None]
    np.testing.assert_allclose(expected_abs_moves(kern, grid=grid, weights=weights),
                               expected_abs_moves(plans, grid=grid), atol=1e-15)


def test_gamma_is_sum_of_cost_times_moves():
    grid, plans = _two_point_plans()
    w = transaction_cost_widening(plans, [5e-4, 1e-3], grid=grid, scale=4000.0)
    # 4000 * (5e-4 * 0.1 + 1e-3 * 0.1) = 0.6
    assert w.gamma == pytest.approx(0.6, abs=1e-12)
    np.testing.assert_allclose(w.per_period, [0.2, 0.4], atol=1e-12)
    scalar = transaction_cost_widening(np.array([0.1, 0.1]), 5e-4)
    assert scalar.gamma == pytest.approx(1e-4, abs=1e-16)


def test_calibration_delta_formula_and_hoeffding():
    s, alpha, m = 0.02, 0.05, 40
    expected = 0.5 * s * math.sqrt(2 * (1 + math.log(2 / alpha)) / m)
    assert calibration_delta(s, alpha, m) == pytest.approx(expected, rel=1e-15)
    hoeffding = 0.5 * s * math.sqrt(2 * math.log(2 / alpha) / m)
    assert calibration_delta(s, alpha, m) > hoeffding  # the seed's form is the conservative one
    # shrinks like 1/sqrt(M)
    assert calibration_delta(s, alpha, 4 * m) == pytest.approx(expected / 2, rel=1e-14)
    w = calibration_widening(s, alpha, m, L=1.5, C=2.0, scale=100.0)
    assert w.epsilon == pytest.approx(300.0 * expected, rel=1e-14)


def test_widen_reports_each_widening_separately():
    grid, plans = _two_point_plans()
    t_lo = transaction_cost_widening(plans, 1e-3, grid=grid)
    t_up = transaction_cost_widening(plans, 2e-3, grid=grid)
    cal = calibration_widening(0.01, 0.05, 25, L=1.0)
    wb = widen(0.5, 0.7, transaction=(t_lo, t_up), calibration=cal)
    assert wb.gamma_lower == pytest.approx(2e-4, abs=1e-15)
    assert wb.gamma_upper == pytest.approx(4e-4, abs=1e-15)
    assert wb.widened_lower == pytest.approx(0.5 - 2e-4 - cal.epsilon, abs=1e-15)
    assert wb.widened_upper == pytest.approx(0.7 + 4e-4 + cal.epsilon, abs=1e-15)
    assert wb.with_costs == pytest.approx((0.5 - 2e-4, 0.7 + 4e-4), abs=1e-15)
    assert wb.with_calibration == pytest.approx((0.5 - cal.epsilon, 0.7 + cal.epsilon), abs=1e-15)
    bare = widen(0.5, 0.7)
    assert (bare.widened_lower, bare.widened_upper) == (0.5, 0.7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(s=-0.1, alpha=0.05, m=10), r"s must be a finite number >= 0, got -0\.1"),
        (dict(s=0.1, alpha=1.0, m=10), r"alpha must lie in \(0, 1\), got 1\.0"),
        (dict(s=0.1, alpha=0.05, m=0), r"M \(number of quotes\) must be an integer >= 1, got 0"),
        (dict(s=0.1, alpha=0.05, m=2.5), r"got 2\.5"),
        (dict(s=float("nan"), alpha=0.05, m=3), r"s must be a finite number"),
    ],
)
def test_calibration_delta_rejects_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibration_delta(**kwargs)


def test_widening_input_errors():
    grid, plans = _two_point_plans()
    with pytest.raises(ValueError, match=r"k must be finite and >= 0, got -0\.001"):
        transaction_cost_widening(plans, [-1e-3, 1e-3], grid=grid)
    with pytest.raises(ValueError, match=r"k must be a scalar or have shape \(2,\)"):
        transaction_cost_widening(plans, [1e-3, 1e-3, 1e-3], grid=grid)
    with pytest.raises(ValueError, match=r"grid is required"):
        transaction_cost_widening(plans, 1e-3)
    with pytest.raises(ValueError, match=r"plan 0 sums to 2"):
        expected_abs_moves(2 * plans, grid=grid)
    with pytest.raises(ValueError, match=r"scale must be > 0, got 0"):
        transaction_cost_widening(plans, 1e-3, grid=grid, scale=0)
    with pytest.raises(ValueError, match=r"L must be a finite number >= 0, got -1"):
        calibration_widening(0.1, 0.05, 10, L=-1)
    with pytest.raises(ValueError, match=r"lower=0\.8 exceeds upper=0\.7"):
        widen(0.8, 0.7)


# ----------------------------------------------------------------------------- from a result
@pytest.fixture(scope="module")
def asian_lp():
    """Exact LP bounds with plans of an Asian call on dates 1, 2 of a 4-date random walk (the
    plans stop at date 2, so the last period has no plan)."""
    from deepquant.market.marginals import Marginals
    from deepquant.mmot.bounds import bounds
    from deepquant.payoffs import AsianCall
    from tests.conftest import random_walk_marginals

    grid, w = random_walk_marginals()
    return bounds(Marginals(grid, w), AsianCall(strike=100.0, dates=(1, 2)), method="lp",
                  return_plan=True)


def test_widen_bounds_uses_each_sides_plan(asian_lp):
    """Gamma of each side is k times the moves of that side's own plan (summed by hand over the
    augmented plans pi_t(x, s, y)); exact up to float summation (1e-14)."""
    from deepquant.mmot.widening import plan_moves, widen_bounds

    res = asian_lp
    assert res.success, res.message
    grid = res.problem.marginals.grid
    dist = np.abs(grid[None, :] - grid[:, None])
    cal = calibration_widening(0.01, 0.05, 25, L=1.0)
    wb = widen_bounds(res, cost_rate=[1e-3, 2e-3, 4e-3], calibration=cal, scale=2.0)
    for side, gamma in (("lower", wb.gamma_lower), ("upper", wb.gamma_upper)):
        plan = getattr(res, f"{side}_side").plan
        by_hand = [float((p.sum(axis=1) * dist).sum()) for p in plan]
        assert len(by_hand) == 2                       # the plan stops at the payoff's date 2
        moves = plan_moves(res, side)
        np.testing.assert_allclose(moves, by_hand + [0.0], rtol=0, atol=1e-14)
        assert gamma == pytest.approx(2.0 * (1e-3 * by_hand[0] + 2e-3 * by_hand[1]), abs=1e-14)
        assert by_hand[0] == pytest.approx(1.2, abs=1e-9)   # E|step| of the walk: 6/5
    assert (wb.lower, wb.upper) == (res.lower, res.upper)
    assert wb.widened_lower == pytest.approx(res.lower - wb.gamma_lower - cal.epsilon, abs=1e-14)
    assert wb.widened_upper == pytest.approx(res.upper + wb.gamma_upper + cal.epsilon, abs=1e-14)


def test_widen_bounds_errors(asian_lp):
    import dataclasses

    from deepquant.mmot.widening import plan_moves, widen_bounds

    with pytest.raises(ValueError, match=r"side must be 'lower' or 'upper', got 'both'"):
        plan_moves(asian_lp, "both")
    no_plan = dataclasses.replace(asian_lp, lower_side=dataclasses.replace(
        asian_lp.lower_side, plan=None))
    with pytest.raises(ValueError, match=r"the lower side of the result has no plan .*"
                                         r"return_plan=True"):
        widen_bounds(no_plan, cost_rate=1e-3)
    with pytest.raises(ValueError, match=r"result carries no problem"):
        plan_moves(dataclasses.replace(asian_lp, problem=None), "upper")
    failed = dataclasses.replace(asian_lp, success=False, status="infeasible")
    with pytest.raises(ValueError, match=r"cannot widen a failed bounds result .*'infeasible'"):
        widen_bounds(failed)


def test_expected_moves_of_an_entropic_result():
    """An EntropicResult (kernels, weights, grid) gives the moves of its plans."""
    from deepquant.market.marginals import Marginals
    from deepquant.mmot.entropic import solve_entropic
    from tests.conftest import random_walk_marginals

    grid, w = random_walk_marginals(n_dates=3)
    res = solve_entropic(Marginals(grid, w), eps=1.0)
    dist = np.abs(grid[None, :] - grid[:, None])
    by_hand = [float((res.plans[t] * dist).sum()) for t in range(2)]
    np.testing.assert_allclose(expected_abs_moves(res), by_hand, rtol=1e-14)
    assert by_hand[0] == pytest.approx(1.2, abs=1e-6)   # date 0 is a point mass: E|step| = 6/5
