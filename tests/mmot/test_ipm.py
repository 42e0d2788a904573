"""Pairwise bounds by the interior point method (``deepquant.mmot.ipm``), checked against the
exact LP (HiGHS, an independent solver) and by invariants of the certificate."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.market.synthetic import gbm_marginals
from deepquant.mmot._ipm_kernels import _pin
from deepquant.mmot.bounds import bounds
from deepquant.mmot.hedge import superhedge, verify_hedge
from deepquant.mmot.ipm import PIN_SHARE, certify_period, ipm_bounds
from deepquant.mmot.result import BoundsResult
from deepquant.payoffs import SumSquaredIncrements, make_payoff
from deepquant.results import ConvergenceWarning
from tests.conftest import random_walk_marginals
from tests.result_protocol import ResultProtocol

# HiGHS's optimum is accurate to its feasibility tolerance (1e-9 on the rows) times the size of
# the duals: measured up to 5e-10 relative on these grids (an exact certificate of the IPM lay
# above HiGHS's "optimal" minimum by that much), so the LP value must lie in the bracket within
LP_TOL = 1e-8
# and the bracket itself closes to the default rtol (1e-7) per side: ask no more than
WIDTH = 1e-6


def _spread_marginals(seed: int, size: int = 25, *, lo: float = 0.5, hi: float = 1.5,
                      first: slice = slice(8, 17)) -> Marginals:
    """Two dates in convex order by construction: mu random on the points ``first``, nu = mu
    pushed through a random martingale kernel (stay, or spread to x - a and x + b, a, b <= 4
    grid steps, mean preserving)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(lo, hi, size)
    mu = np.zeros(size)
    mu[first] = rng.dirichlet(np.ones(first.stop - first.start))
    nu = np.zeros(size)
    for j in np.flatnonzero(mu):
        stay = rng.uniform(0.0, 0.5)
        a = rng.integers(1, min(j, 4) + 1)
        b = rng.integers(1, min(size - 1 - j, 4) + 1)
        nu[j] += stay * mu[j]
        nu[j - a] += (1 - stay) * mu[j] * b / (a + b)
        nu[j + b] += (1 - stay) * mu[j] * a / (a + b)
    return Marginals(grid, np.vstack([mu, nu]))


def _bracket_contains_lp(res: BoundsResult, lp: BoundsResult, width) -> None:
    """Each side's [inner, outer] contains the LP value (to LP_TOL) and is at most
    ``width(outer, scale)`` wide."""
    for side in ("lower", "upper"):
        s = getattr(res, f"{side}_side")
        outer, inner, exact = s.value, s.info["inner"], getattr(lp, side)
        scale = max(abs(exact), 1e-3)
        lo, hi = (outer, inner) if side == "lower" else (inner, outer)
        assert lo - LP_TOL * scale <= exact <= hi + LP_TOL * scale, (side, lo, exact, hi)
        assert abs(outer - inner) <= width(outer, scale), (side, outer, inner)


def _check_against_lp(res: BoundsResult, lp: BoundsResult) -> None:
    _bracket_contains_lp(res, lp, lambda outer, scale: WIDTH * scale)
    for side in ("lower", "upper"):
        assert getattr(res, f"{side}_side").primal_residual <= 1e-8
    assert res.success and res.status == "certified" and res.method == "ipm"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("payoff", [
    make_payoff("forward-start-straddle", t1=0, t2=1),
    make_payoff("forward-start-call", t1=0, t2=1, strike=1.05),  # not symmetric in x, y
], ids=["straddle", "call-1.05"])
def test_brackets_the_lp_on_random_marginals(seed, payoff):
    mg = _spread_marginals(seed)
    _check_against_lp(ipm_bounds(mg, payoff), bounds(mg, payoff, method="lp"))


def test_brackets_the_lp_on_black_scholes_marginals():
    mg = gbm_marginals([0.0, 1.0, 2.0], grid=np.linspace(0.2, 3.0, 80), sigma=0.2)
    payoff = make_payoff("forward-start-straddle", t1=1, t2=2)
    _check_against_lp(ipm_bounds(mg, payoff), bounds(mg, payoff, method="lp"))


def test_supports_that_differ_with_zero_mass_points_inside():
    # mu on 9 middle points, nu on a wider set with holes (zero-mass points dropped exactly);
    # rows at an end of nu's hull are fixed (they can only stay put)
    mg = _spread_marginals(3, size=31, first=slice(6, 25))
    w = mg.weights.copy()
    assert (w[1] == 0).sum() > 0 and (w[0] > 0).sum() < (w[1] > 0).sum()
    payoff = make_payoff("forward-start-straddle", t1=0, t2=1)
    _check_against_lp(ipm_bounds(mg, payoff), bounds(mg, payoff, method="lp"))


def test_tiny_tails_are_kept():
    # 1e-12 of mass at both ends of both dates (convex order kept: the same mass at the same
    # points of both laws), plus 1e-13 of mu just inside the ends
    mg = _spread_marginals(4, size=31, first=slice(5, 26))
    w = mg.weights.copy()
    w[:, [0, -1]] += 1e-12
    w[0, [1, -2]] += 1e-13
    w[1, [0, 2]] += 0.5e-13
    w[1, [-1, -3]] += 0.5e-13
    w /= w.sum(axis=1, keepdims=True)
    tails = Marginals(mg.grid, w, mean_tol=1e-9)
    payoff = make_payoff("forward-start-call", t1=0, t2=1, strike=0.95)
    res = ipm_bounds(tails, payoff)
    assert res.info["tail_mass_moved"] == 0.0
    _check_against_lp(res, bounds(tails, payoff, method="lp"))


@pytest.mark.parametrize("rtol", [1e-6, 1e-5])
def test_the_bracket_closes_at_rtol_around_the_lp(rtol):
    # the solve stops as soon as certificate and inner value are within rtol: the LP value must
    # still lie in [inner, outer] (the inner value is the plan's value less what its residuals
    # are worth, so an infeasible plan cannot overshoot), for random and Black-Scholes laws
    payoff = make_payoff("forward-start-straddle", t1=0, t2=1)
    bs = gbm_marginals([0.0, 1.0, 2.0], grid=np.linspace(0.2, 3.0, 80), sigma=0.2)
    cases = [(_spread_marginals(seed), payoff) for seed in (0, 2, 5)]
    cases.append((bs, make_payoff("forward-start-straddle", t1=1, t2=2)))
    for mg, pay in cases:
        res, lp = ipm_bounds(mg, pay, rtol=rtol), bounds(mg, pay, method="lp")
        assert res.success and res.status == "certified"
        _bracket_contains_lp(res, lp, lambda outer, scale: rtol * abs(outer) + 1e-3 * rtol * 3.0)


def test_the_lightest_rows_stay_put():
    # Black-Scholes tails (masses down to 1e-15): the lightest rows, up to PIN_SHARE rtol of the
    # mass, are fixed at their own points; what is left has equal masses and means
    mg = gbm_marginals([0.0, 1.0, 2.0], grid=np.linspace(0.2, 3.0, 200), sigma=0.2)
    w = mg.weights
    xs, ys = np.flatnonzero(w[1] > 0), np.flatnonzero(w[2] > 0)
    xv, yv, mu, nu = mg.grid[xs], mg.grid[ys], w[1, xs], w[2, ys]
    light = PIN_SHARE * 1e-6
    rows, cols, nu_r, fixed, lost = _pin(xv, yv, mu, nu, light)
    moved = [(a, j, m) for a, j, m in fixed if 0 < a < xv.size - 1]
    assert len(moved) > 0 and sum(m for *_, m in moved) <= light * mu.sum() * (1 + 1e-12)
    assert all(xv[a] == yv[j] and m <= light for a, j, m in moved)
    kept = mu[rows].sum() + sum(m for *_, m in fixed)
    assert kept == pytest.approx(mu.sum(), rel=1e-15)
    assert mu[rows].sum() == pytest.approx(nu_r[cols].sum(), rel=1e-12)
    assert mu[rows] @ xv[rows] == pytest.approx(nu_r[cols] @ yv[cols], rel=1e-9)
    assert lost <= 1e-15


def test_the_outer_bound_is_valid_when_stopped_early():
    mg = gbm_marginals([0.0, 1.0, 2.0], grid=np.linspace(0.2, 3.0, 60), sigma=0.2)
    payoff = make_payoff("forward-start-straddle", t1=1, t2=2)
    lp = bounds(mg, payoff, method="lp")
    for max_iter in (1, 3, 8):
        with pytest.warns(ConvergenceWarning, match="iteration_limit"):
            res = ipm_bounds(mg, payoff, max_iter=max_iter)
        assert not res.success and res.status == "certified-wide"
        assert res.lower <= lp.lower + LP_TOL * lp.lower
        assert res.upper >= lp.upper - LP_TOL * lp.upper
    # and the certificate of the last of them (8 iterations) is already within 5%
    assert res.upper - lp.upper < 0.05 * lp.upper


def test_certificate_dominates_on_every_move():
    # certify_period on arbitrary potentials: the portfolio dominates g and the value is its
    # cost (weak duality needs nothing from the potentials)
    rng = np.random.default_rng(7)
    mg = _spread_marginals(5)
    w = mg.weights
    xs, ys = np.flatnonzero(w[0] > 0), np.flatnonzero(w[1] > 0)
    xv, yv = mg.grid[xs], mg.grid[ys]
    g = np.abs(yv[None, :] - xv[:, None]) + rng.normal(size=(xs.size, ys.size))
    psi = rng.normal(size=ys.size)
    outer, phi, h, _ = certify_period(xv, yv, w[0, xs], w[1, ys], g, psi)
    port = phi[:, None] + psi[None, :] + h[:, None] * (yv[None, :] - xv[:, None])
    assert np.min(port - g) >= -1e-12
    assert outer == pytest.approx(phi @ w[0, xs] + psi @ w[1, ys], rel=1e-13)


def test_two_workers_give_the_same_bounds():
    # the sides are independent solves: on two threads they must not interfere
    mg = _spread_marginals(2)
    payoff = make_payoff("forward-start-call", t1=0, t2=1, strike=0.98)
    one, two = ipm_bounds(mg, payoff), ipm_bounds(mg, payoff, workers=2)
    assert (one.lower, one.upper) == (two.lower, two.upper)
    assert two.info["workers"] == 2 and two.info["wall_seconds"] > 0


def test_several_periods_sum_squared_increments_is_model_free():
    mg = Marginals(*random_walk_marginals(4))
    res = ipm_bounds(mg, SumSquaredIncrements())
    # E[sum (X_{t+1} - X_t)^2] = Var X_3 = 3 * 2 for any martingale with these marginals
    assert res.lower <= 6.0 + 1e-9 and res.upper >= 6.0 - 1e-9
    assert res.upper - res.lower <= 1e-6 * 6.0 and res.success


def test_the_hedge_of_the_certificate_dominates_every_path():
    mg = _spread_marginals(6)
    payoff = make_payoff("forward-start-call", t1=0, t2=1, strike=1.02)
    res = bounds(mg, payoff, method="ipm")
    for side in ("lower", "upper"):
        hedge = superhedge(res, side=side)
        check = verify_hedge(hedge, atol=1e-9)
        assert check.margin >= -1e-9, check
        assert check.cost == pytest.approx(getattr(res, side), abs=1e-9)


def test_auto_runs_the_ipm_for_pairwise_payoffs_beyond_the_lp(monkeypatch):
    mg = _spread_marginals(1)
    payoff = make_payoff("forward-start-straddle", t1=0, t2=1)
    assert bounds(mg, payoff).method == "lp"
    monkeypatch.setattr(sys.modules["deepquant.mmot.bounds"], "LP_MAX_COLUMNS", 10)
    res = bounds(mg, payoff, rtol=1e-6, max_seconds=5.0)  # max_seconds: a certified option
    assert res.method == "ipm" and res.problem.method == "ipm"
    asian = make_payoff("asian-call", strike=1.0)
    assert bounds(Marginals(mg.grid, mg.weights), asian, rtol=1e-3).method == "certified"
    monkeypatch.setattr(sys.modules["deepquant.mmot.bounds"], "LP_MAX_COLUMNS", 60_000)
    monkeypatch.setattr(sys.modules["deepquant.mmot.bounds"], "IPM_MIN_COLUMNS", 10)
    assert bounds(mg, payoff).method == "ipm"  # beyond IPM_MIN_COLUMNS, below LP_MAX_COLUMNS


@pytest.mark.parametrize("kw, match", [
    (dict(rtol=0.0), "rtol must be a number in \\(0, 1\\), got 0.0"),
    (dict(rtol=float("nan")), "rtol"),
    (dict(feas_tol=2.0), "feas_tol must be a number in \\(0, 1\\), got 2.0"),
    (dict(max_iter=0), "max_iter must be an integer >= 1, got 0"),
    (dict(max_iter=2.5), "max_iter must be an integer >= 1, got 2.5"),
    (dict(sides=("both",)), "sides must be a non-empty tuple of distinct"),
    (dict(workers=3), "workers must be 1 or 2, got 3"),
])
def test_bad_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        ipm_bounds(_spread_marginals(0), make_payoff("forward-start-straddle", t1=0, t2=1), **kw)


def test_a_payoff_that_is_not_pairwise_is_refused():
    mg = Marginals(*random_walk_marginals(3))
    with pytest.raises(ValueError, match="not pairwise"):
        bounds(mg, make_payoff("asian-call", strike=100.0), method="ipm")


class TestIPMBoundsResult(ResultProtocol):
    result_type = BoundsResult

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        return ipm_bounds(_spread_marginals(0), make_payoff("forward-start-straddle", t1=0, t2=1))

    @pytest.fixture
    def failure(self):
        mg = _spread_marginals(0)
        return lambda: ipm_bounds(mg, make_payoff("forward-start-straddle", t1=0, t2=1),
                                  max_iter=1)
