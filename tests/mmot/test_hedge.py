"""Semi-static superhedges from the LP dual and their pathwise verification (DESIGN §2.6)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.mmot.bounds import bounds
from deepquant.mmot.hedge import StaticStrip, superhedge, verify_hedge
from deepquant.payoffs import make_payoff
from tests.conftest import martingale_kernel_marginals, random_walk_marginals

ATOL = 1e-9  # acceptance tolerance: dominance on all paths and cost == bound

CASES = [
    ("asian-call", dict(strike=100.0)),
    ("lookback-call", dict(strike=100.0)),
    ("forward-start-straddle", dict(t1=1, t2=3)),
    ("up-and-out-call", dict(strike=100.0, barrier=102.0)),
    ("sum-squared-increments", {}),
    ("forward-start-call", dict(t1=0, t2=1)),
]


@pytest.fixture(scope="module")
def rw():
    return Marginals(*random_walk_marginals(4))


@pytest.mark.parametrize("name,params", CASES)
def test_both_sides_dominate_and_cost_equals_bound(rw, name, params):
    payoff = make_payoff(name, **params)
    res = bounds(rw, payoff)
    for side in ("lower", "upper"):
        hedge = superhedge(res, rw, payoff, side)
        check = verify_hedge(hedge, rw, payoff, atol=ATOL)
        assert check.ok, check
        assert check.margin >= -ATOL
        assert check.cost == pytest.approx(getattr(res, side), abs=ATOL)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,params", [("asian-put", dict(strike=1.0)),
                                         ("lookback-put", dict(strike=1.0)),
                                         ("down-and-out-call", dict(strike=1.0, barrier=0.9))])
def test_random_marginals(seed, name, params):
    mg = Marginals(*martingale_kernel_marginals(np.random.default_rng(seed), n_dates=4, size=9))
    payoff = make_payoff(name, **params)
    res = bounds(mg, payoff)
    for side in ("lower", "upper"):
        check = verify_hedge(superhedge(res, mg, payoff, side), mg, payoff, atol=ATOL)
        assert check.ok, check


def test_dominance_by_explicit_path_enumeration(rw):
    """Independent check: enumerate all 585 paths and evaluate the portfolio on each."""
    payoff = make_payoff("asian-call", strike=100.0)
    res = bounds(rw, payoff)
    grid = rw.grid
    supp = [np.flatnonzero(w > 0) for w in rw.weights]
    stat = payoff.statistic(rw.n_dates)
    for side, sign in (("upper", 1.0), ("lower", -1.0)):
        hedge = superhedge(res, rw, payoff, side)
        u = hedge.static_values()
        worst = np.inf
        for path in itertools.product(*supp):
            x = grid[list(path)]
            port = sum(u[t, path[t]] for t in range(4))
            for t in range(3):
                s = stat.evaluate(x[None, :], t)[0]
                si = int(np.argmin(np.abs(hedge.chain.states[t] - s)))
                port += hedge.h[t][path[t], si] * (x[t + 1] - x[t])
            worst = min(worst, sign * (port - payoff.evaluate(x[None, :])[0]))
        assert worst >= -ATOL


def test_strip_reproduces_static_payoff():
    pts = np.array([0.8, 0.9, 1.0, 1.15, 1.3])
    vals = np.array([0.3, 0.1, 0.05, 0.2, 0.6])
    strip = StaticStrip.from_values(1, pts, vals, forward=1.02)
    np.testing.assert_allclose(strip.value(pts), vals, atol=1e-14)
    assert np.all(strip.put_strikes < 1.02) and np.all(strip.call_strikes >= 1.02)
    w = np.array([[0, 0, 1, 0, 0], [0.1, 0.2, 0.3, 0.2, 0.2]])
    grid = pts
    mean = w[1] @ grid
    w0 = np.zeros(5)
    w0[np.argmin(np.abs(grid - mean))] = 1.0
    mg = Marginals(grid, np.vstack([w[1], w[1]]), check_convex=False)
    strip = StaticStrip.from_values(1, pts, vals, forward=float(mean))
    assert strip.price(mg) == pytest.approx(float(w[1] @ vals), abs=1e-13)


def test_hedge_of_failed_side_raises(rw):
    payoff = make_payoff("asian-call", strike=100.0)
    res = bounds(rw, payoff, sides=("upper",))
    with pytest.raises(ValueError, match="lower side of this result has no dual"):
        superhedge(res, rw, payoff, "lower")
    with pytest.raises(ValueError, match="side must be"):
        superhedge(res, rw, payoff, "both")
    relaxed = bounds(rw, payoff, martingale_tol=0.05)
    with pytest.raises(ValueError, match="relaxed LP"):
        superhedge(relaxed, rw, payoff, "upper")
    oracle = bounds(rw, payoff, method="path-lp")
    with pytest.raises(ValueError, match="no dual solution"):
        superhedge(oracle, rw, payoff, "upper")


def test_result_carries_its_problem(rw):
    """``bounds`` results carry marginals, payoff, method and options: the hedge and its
    check then take the result alone and agree with the explicit calls."""
    payoff = make_payoff("asian-call", strike=100.0)
    res = bounds(rw, payoff)
    assert res.problem.marginals is rw and res.problem.payoff is payoff
    assert res.problem.method == res.method
    assert res.to_dict()["problem"]["payoff"] == payoff.name
    for side in ("lower", "upper"):
        alone = superhedge(res, side=side)
        explicit = superhedge(res, rw, payoff, side)
        assert alone.cost == pytest.approx(explicit.cost, abs=1e-12)
        check = verify_hedge(alone, atol=ATOL)
        assert check.ok and check.cost_error <= ATOL * max(1.0, abs(alone.bound))
    bare = dataclasses.replace(res, problem=None)
    with pytest.raises(ValueError, match="pass marginals and payoff"):
        superhedge(bare, side="upper")


def _other_problems():
    """Marginals on another grid (steps of 3), and a payoff the hedge was not built for."""
    return {"marginals": Marginals(*random_walk_marginals(4, steps=(-3, 0, 3))),
            "payoff": make_payoff("asian-call", strike=90.0)}


@pytest.mark.parametrize("which", ["marginals", "payoff"])
def test_other_marginals_or_payoff_are_refused(rw, which):
    """Library fuzz, third pass: ``verify_hedge(hedge, other_marginals)`` or ``(hedge,
    payoff=other)`` ignored both and reported ``ok=True`` (the check runs on the hedge's own
    chain): an Asian call struck at 90 pays more than the hedge of the one at 100 covers, yet
    it "verified". ``superhedge(result, other_marginals)`` failed with an IndexError."""
    payoff = make_payoff("asian-call", strike=100.0)
    res = bounds(rw, payoff, "lp", return_plan=True)
    hedge = superhedge(res, side="upper")
    assert verify_hedge(hedge, atol=ATOL).ok and verify_hedge(hedge, rw, payoff, atol=ATOL).ok
    # the old ok=True was wrong: any superhedge of the strike-90 call costs at least its upper
    # bound (LP duality), above this hedge's cost
    assert bounds(rw, make_payoff("asian-call", strike=90.0), "lp").upper > hedge.cost + 1.0
    kw = {which: _other_problems()[which]}
    with pytest.raises(ValueError, match=f"{which} .* not the one.? the hedge was built"):
        verify_hedge(hedge, **kw)
    with pytest.raises(ValueError, match=f"{which} .* not the one.? the result was built"):
        superhedge(res, side="upper", **kw)


@pytest.mark.parametrize("atol", [float("nan"), -1.0, True])
def test_verify_hedge_atol_is_checked(rw, atol):
    # before: NaN or a negative atol ran and reported ok=False whatever the hedge
    hedge = superhedge(bounds(rw, make_payoff("asian-call", strike=100.0), "lp"), side="upper")
    with pytest.raises(ValueError, match=f"atol must be a finite number >= 0, got {atol!r}"):
        verify_hedge(hedge, atol=atol)
