"""Entropic MMOT on the augmented chain (deepquant.mmot.augmented_entropic).

References: the exact path-space LP values of DESIGN §2.3 (three-date random walk, steps uniform
on {-2..2}); E's augmented LP (``deepquant.mmot.lp``); D's independent one-period Newton solver
(``deepquant.mmot.entropic``) on a payoff that is pairwise; model-free European prices.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import build_chain
from deepquant.mmot.augmented_entropic import entropic_bounds, solve_chain_entropic
from deepquant.payoffs import AsianCall, EuropeanCall, ForwardStartStraddle, LookbackCall
from tests.conftest import martingale_kernel_marginals, random_walk_marginals

# DESIGN §2.3: exact bounds over all martingale laws (path-space LP), X_0 = 100.
DESIGN_VALUES = {
    "asian": (AsianCall(strike=100.0, dates=(1, 2, 3)), 0.639111, 0.794667),
    "lookback": (LookbackCall(strike=100.0), 1.020570, 1.450667),
    "forward-start": (ForwardStartStraddle(strike=1.0, t1=1, t2=3), 0.910667, 1.934222),
}


@pytest.fixture(scope="module")
def rw():
    grid, w = random_walk_marginals()
    return Marginals(grid, w)


@pytest.mark.parametrize("name", sorted(DESIGN_VALUES))
def test_converges_to_design_lp_values(rw, name):
    """Bias vs the exact LP shrinks with eps and is < 1e-5 at eps = 0.003 (price units, X ~ 100).

    The DESIGN values are rounded to 6 decimals (hence 1e-5); the entropic plan is feasible up to
    the measured marginal error, so each side is an inner estimate up to sup|f| * error.
    """
    payoff, lo, up = DESIGN_VALUES[name]
    prev = None
    for eps in (0.1, 0.003):
        r = entropic_bounds(rw, payoff, eps)
        assert r.success, r.message
        assert r.method == "entropic" and r.eps == eps
        slack = 12.0 * max(r.info["lower"]["marginal_error"], r.info["upper"]["marginal_error"])
        assert r.lower >= lo - 1e-6 - slack and r.upper <= up + 1e-6 + slack  # inner estimates
        bias = (r.lower - lo) + (up - r.upper)
        if prev is not None:
            assert bias < prev
        prev = bias
    assert abs(r.lower - lo) < 1e-5 and abs(r.upper - up) < 1e-5


def test_residuals_and_martingale_kernels(rw):
    payoff = DESIGN_VALUES["asian"][0]
    chain = build_chain(rw, payoff)
    sol = solve_chain_entropic(chain, rw, 0.01, sign=1, tol=1e-6)
    assert sol.success and sol.marginal_error <= 1e-6
    grid = rw.grid
    for t in range(chain.last_date):
        k = sol.kernels[t]  # (M, n_t, M)
        mass = sol.joint[t]
        live = mass > 1e-14
        # rows are probabilities and martingale (drift measured independently here)
        np.testing.assert_allclose(k.sum(axis=2)[live], 1.0, atol=1e-12)
        drift = np.abs((k * (grid[None, None, :] - grid[:, None, None])).sum(axis=2))[live]
        assert drift.max() <= 1e-9  # tolerance: Newton target 1e-12 * max|grid| ~ 1e-10
    # the X-marginals of the joint laws match mu_t to the reported L1 error
    err = sum(np.abs(sol.joint[t].sum(axis=1) - rw.weights[t]).sum()
              for t in range(chain.last_date + 1))
    assert err == pytest.approx(sol.marginal_error, rel=1e-6, abs=1e-15)
    # the transport cost is E[f] under the plan
    assert sol.value == pytest.approx(float(np.sum(sol.joint[-1] * chain.terminal)), abs=1e-14)
    # the entropic objective lies above the transport cost for the minimiser (KL >= 0)
    assert sol.objective >= sol.value - 1e-9


def test_agrees_with_independent_one_period_solver(rw):
    """A forward-start straddle between adjacent dates is pairwise: D's batched Newton solver
    (u, v, h per period, no augmentation) must give the same entropic plan value.
    Tolerance 1e-6: both solvers stop at L1 marginal errors <= 1e-6 times sup|f| <= 4."""
    from deepquant.mmot.entropic import solve_entropic

    payoff = ForwardStartStraddle(strike=1.0, t1=1, t2=2)
    three = rw.select([0, 1, 2])
    r = entropic_bounds(three, payoff, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo = solve_entropic(three, 0.3, cost=payoff, tol=1e-10)
        up = solve_entropic(three, 0.3, cost=payoff, tol=1e-10, maximize=True)
    assert r.lower == pytest.approx(lo.transport_cost, abs=1e-6)
    assert r.upper == pytest.approx(up.transport_cost, abs=1e-6)


def test_model_free_european_is_exact():
    """E[(X_N - K)^+] is fixed by the last marginal: both entropic sides equal it (1e-9: the
    value only depends on the X_N-marginal, matched to the reported L1 error x sup|f|)."""
    rng = np.random.default_rng(3)
    grid, w = martingale_kernel_marginals(rng, n_dates=4, size=9)
    m = Marginals(grid, w)
    r = entropic_bounds(m, EuropeanCall(strike=1.0), 0.01)
    exact = float(m.call_prices(1.0)[-1, 0])
    assert r.lower == pytest.approx(exact, abs=1e-7)
    assert r.upper == pytest.approx(exact, abs=1e-7)


def test_random_marginals_asian_against_lp():
    """Random convex-ordered marginals (random martingale kernels): the entropic bounds lie inside
    the augmented LP bounds and approach them as eps -> 0."""
    from deepquant.mmot.lp import lp_bounds

    rng = np.random.default_rng(3)
    grid, w = martingale_kernel_marginals(rng, n_dates=4, size=9)
    m = Marginals(grid, w)
    payoff = AsianCall(strike=1.0)
    lp = lp_bounds(m, payoff)
    assert lp.success
    gaps = []
    for eps in (0.01, 0.001):
        r = entropic_bounds(m, payoff, eps, lp=lp)
        assert r.success
        assert lp.lower - 1e-7 <= r.lower <= r.upper <= lp.upper + 1e-7
        assert r.info["bias_lower"] >= -1e-7 and r.info["bias_upper"] >= -1e-7
        gaps.append(r.info["bias_lower"] + r.info["bias_upper"])
    assert gaps[1] < gaps[0] and gaps[1] < 1e-5


def test_bounds_entry_point_dispatches(rw):
    from deepquant.mmot.bounds import bounds

    payoff, lo, up = DESIGN_VALUES["lookback"]
    r = bounds(rw, payoff, method="entropic", eps=0.1, lp=True)
    assert r.method == "entropic" and r.success
    assert r.info["lp_lower"] == pytest.approx(lo, abs=1e-6)
    assert r.info["bias_lower"] == pytest.approx(r.lower - r.info["lp_lower"], abs=1e-15)
    assert r.info["bias_lower"] > 0 and r.info["bias_upper"] > 0  # eps = 0.1: visible bias
    assert r.lower_side.duals.u.shape == (4, rw.size)


def test_lognormal_reference_also_converges():
    """The reference changes the entropic plan, not its eps -> 0 limit (the LP value)."""
    grid, w = random_walk_marginals()
    m = Marginals(grid, w)
    payoff, lo, up = DESIGN_VALUES["lookback"]
    r = entropic_bounds(m, payoff, 0.003, reference="lognormal")
    assert r.success
    assert abs(r.lower - lo) < 1e-4 and abs(r.upper - up) < 1e-4


def test_input_errors(rw):
    chain = build_chain(rw, DESIGN_VALUES["asian"][0])
    with pytest.raises(ValueError, match=r"eps must be a positive finite number, got -1\.0"):
        solve_chain_entropic(chain, rw, -1.0)
    for bad in ("0.1", True):  # not read as numbers
        with pytest.raises(ValueError, match=r"eps must be a positive number, got"):
            solve_chain_entropic(chain, rw, bad)
    with pytest.raises(ValueError, match=r"sign must be \+1 \(lower\) or -1 \(upper\), got 2"):
        solve_chain_entropic(chain, rw, 0.1, sign=2)
    with pytest.raises(ValueError, match=r"reference must be 'product', 'lognormal'"):
        solve_chain_entropic(chain, rw, 0.1, reference="gaussian")
    with pytest.raises(ValueError, match=r"eps_factor must lie in \(0, 1\), got 2"):
        solve_chain_entropic(chain, rw, 0.1, eps_factor=2)
