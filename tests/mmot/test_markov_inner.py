"""Markov inner values (``deepquant.mmot.markov_inner``) against the exact chain LP."""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.market.synthetic import heston_marginals
from deepquant.mmot.augment import build_chain
from deepquant.mmot.bounds import bounds
from deepquant.mmot.certified import nest_supports
from deepquant.mmot.markov_inner import MARGINAL_TOL, chain_value, markov_inner
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import make_payoff
from tests.mmot.test_certified import _random_asian


def _check_chain(sw, res):
    """The chain's laws are the marginals and its rows martingales (measured, not assumed)."""
    value, laws, drift = chain_value(sw, res.kernels)
    assert value == pytest.approx(res.value, abs=1e-14)
    for t, (per, law) in enumerate(zip(sw.periods, laws)):
        np.testing.assert_allclose(law, sw.mu[t + 1, per.ys], atol=1e-9)
        k = res.kernels[t]
        assert k.min() >= 0.0
        np.testing.assert_allclose(k.sum(axis=1), 1.0, atol=1e-12)
        assert np.max(sw.mu[t, per.xs] * np.abs(k @ per.yv - per.xv)) <= 1e-9
    assert res.residual <= MARGINAL_TOL and res.drift <= 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_markov_inner_is_feasible_and_inside_the_lp_bounds(seed):
    # a feasible chain: its value lies between the exact LP bounds on both sides, and each
    # cycle of coordinate ascent ends no worse than the start
    _, mg, lp, chain = _random_asian(seed)
    for sign, opt in ((-1.0, lp.lower), (1.0, lp.upper)):
        sw = _Sweeper(chain, mg, sign)
        start = markov_inner(sw, max_cycles=0)
        res = markov_inner(sw)
        assert res.status == "converged" and res.cycles >= 1
        _check_chain(sw, res)
        assert res.value <= sign * opt + 1e-9  # inside: lower >= min, upper <= max
        assert res.value >= start.value - 1e-12


@pytest.mark.parametrize("name", ["lookback-call", "forward-start-straddle"])
def test_markov_inner_brackets_the_lp_on_heston_chains(name):
    m = heston_marginals(np.arange(4) * 30 / 365, grid=np.linspace(0.7, 1.3, 13))
    opts = dict(t1=1, t2=3) if name == "forward-start-straddle" else {}
    payoff = make_payoff(name, strike=1.0, **opts) if name == "lookback-call" else \
        make_payoff(name, **opts)
    lp = bounds(m, payoff, method="lp")
    mm, _ = nest_supports(m, payoff.last_date(m.n_dates))
    chain = build_chain(mm, payoff)
    for sign, opt in ((-1.0, lp.lower), (1.0, lp.upper)):
        sw = _Sweeper(chain, mm, sign)
        res = markov_inner(sw)
        _check_chain(sw, res)
        assert res.value <= sign * opt + 1e-9


def test_markov_inner_keeps_the_time_budget_and_refuses_bad_arguments():
    _, mg, _, chain = _random_asian(0)
    sw = _Sweeper(chain, mg, 1.0)
    res = markov_inner(sw, max_seconds=0.0)
    assert res.status == "time_budget" and np.isnan(res.value) and res.kernels is None
    for bad in (dict(max_seconds=-1.0), dict(max_seconds=np.nan), dict(max_cycles=-1),
                dict(max_cycles=1.5), dict(max_cycles=True), dict(tol=-1e-9),
                dict(stall=-1e-3), dict(stall=np.inf), dict(stall="1e-3")):
        with pytest.raises(ValueError):
            markov_inner(sw, **bad)


@pytest.mark.parametrize("workers", [1, 2])
def test_certified_side_above_the_work_level_takes_the_markov_inner(monkeypatch, workers):
    # a 49-point lookback (4 dates, no column generation) whose own grid lies above the work
    # level (the threshold lowered so that it does with a budget that leaves the Markov stage
    # its share on a loaded machine): the inner value is then a chain on the 49-point
    # marginals themselves (the Markov chain, or the chain whose kernels also see the running
    # maximum, whichever is tighter), not the coarse level's, and [inner, outer] still
    # brackets the exact LP; with two workers the path passes run in a second process beside
    # the polish and are adopted by the same rule
    from deepquant.mmot import multiscale

    monkeypatch.setattr(multiscale, "WORK_COLUMNS_PER_SECOND", 1_000.0)
    m = heston_marginals(np.arange(4) * 30 / 365, grid=np.linspace(0.7, 1.3, 49))
    payoff = make_payoff("lookback-call", strike=1.0)
    lp = bounds(m, payoff, method="lp")
    res = bounds(m, payoff, method="certified", polish_max_states=30, max_seconds=5.0,
                 workers=workers)
    for side, opt in (("lower", lp.lower), ("upper", lp.upper)):
        s = getattr(res, f"{side}_side")
        if workers == 2 and "path" in s.info:  # the second process answered
            assert s.info["path"]["status"] != "no answer", s.info["path"]
            # and polished too where it had time: the tighter certificate kept (the bracket
            # below holds whichever it is)
            assert s.info.get("polish", {}).get("kept", "floor") in ("floor", "reach")
        adopted = [k for k in ("markov", "path") if s.info.get(k, {}).get("adopted")]
        assert len(adopted) == 1, (s.info["markov"], s.info.get("path"))
        assert s.info["inner_kind"].startswith(
            "Markov chain" if adopted == ["markov"] else "path-dependent chain")
        assert s.primal_residual <= MARGINAL_TOL
        inner, outer = s.info["inner"], s.value
        lo, hi = (outer, inner) if side == "lower" else (inner, outer)
        assert lo <= opt + 1e-8 and opt <= hi + 1e-8
        assert s.gap == pytest.approx(abs(inner - outer), abs=1e-12)


@pytest.mark.parametrize("sparse_start", [False, True])
def test_priced_period_lp_is_optimal_on_all_pairs(monkeypatch, sparse_start):
    # the one-period LP holds only some pairs and prices the rest: its plan must be optimal for
    # the full martingale transport LP (scipy's HiGHS on every pair, an independent solve), a
    # martingale coupling with the exact marginals; with a start too sparse to hold any
    # coupling (one pair per x) it falls back to every pair
    from scipy.optimize import linprog

    from deepquant.mmot import markov_inner as mi

    if sparse_start:
        monkeypatch.setattr(mi._PeriodLP, "_start_pairs",
                            lambda self: np.arange(self.shape[0]) * self.shape[1])
    m = heston_marginals(np.arange(3) * 30 / 365, grid=np.linspace(0.7, 1.3, 25))
    payoff = make_payoff("lookback-call", strike=1.0)
    mm, _ = nest_supports(m, payoff.last_date(m.n_dates))
    sw = _Sweeper(build_chain(mm, payoff), mm, 1.0)
    rng = np.random.default_rng(0)
    t = 1
    per = sw.periods[t]
    nx, ny = per.xs.size, per.ys.size
    mu, nu = sw.mu[t, per.xs], sw.mu[t + 1, per.ys]
    lp = mi._PeriodLP(sw, t)
    for cost in (np.abs(per.yv[None, :] - per.xv[:, None]), rng.normal(size=(nx, ny)),
                 -np.abs(per.yv[None, :] - per.xv[:, None]) ** 1.5):
        k = lp.kernel(cost, 30.0)
        plan = mu[:, None] * k
        np.testing.assert_allclose(plan.sum(axis=0), nu, atol=1e-9)
        assert np.max(np.abs(plan @ per.yv - mu * per.xv)) <= 1e-9
        a_eq = np.vstack([np.kron(np.eye(nx), np.ones((1, ny))),
                          np.kron(np.ones((1, nx)), np.eye(ny)),
                          np.kron(np.eye(nx), np.ones((1, ny)))
                          * (per.yv[None, :] - per.xv[:, None]).ravel()[None, :]])
        full = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([mu, nu, np.zeros(nx)]),
                       method="highs", options=dict(primal_feasibility_tolerance=1e-10,
                                                    dual_feasibility_tolerance=1e-10))
        assert full.status == 0
        # tolerance: both solves' feasibility and optimality tolerances (1e-10) times the
        # cost scale (scipy's default 1e-7 lets the full LP's rows miss by 4e-8)
        assert np.sum(plan * cost) == pytest.approx(full.fun, abs=1e-8)
    assert lp.present.all() if sparse_start else not lp.present.all()


def test_period_lp_cut_by_time_keeps_a_coupling_no_worse_than_its_last():
    # cut by its time, the one-period LP returns None or the last restricted optimum: a
    # martingale coupling with the exact marginals whose cost is at most the last kernel's
    # (that kernel's pairs are in the model); a fresh model per budget, from the least-spread
    # coupling to a cost that moves far from it (as on an upper side)
    from deepquant.mmot import markov_inner as mi

    m = heston_marginals(np.arange(3) * 30 / 365, grid=np.linspace(0.6, 1.4, 41))
    payoff = make_payoff("lookback-call", strike=1.0)
    mm, _ = nest_supports(m, payoff.last_date(m.n_dates))
    sw = _Sweeper(build_chain(mm, payoff), mm, 1.0)
    t = 1
    per = sw.periods[t]
    mu, nu = sw.mu[t, per.xs], sw.mu[t + 1, per.ys]
    spread = np.abs(per.yv[None, :] - per.xv[:, None])
    for seconds in (0.0, 1e-3, 1e-2, 30.0):
        lp = mi._PeriodLP(sw, t)
        before = mu[:, None] * lp.kernel(spread, 30.0)
        k = lp.kernel(-spread ** 1.5, seconds)
        if k is None:
            continue
        plan = mu[:, None] * k
        np.testing.assert_allclose(plan.sum(axis=0), nu, atol=1e-9)
        assert np.max(np.abs(plan @ per.yv - mu * per.xv)) <= 1e-9
        # tolerance: the LP's feasibility tolerance (1e-10) times the cost scale
        assert np.sum(plan * -spread ** 1.5) <= np.sum(before * -spread ** 1.5) + 1e-9


def _heston_chain(name, size=13):
    m = heston_marginals(np.arange(4) * 30 / 365, grid=np.linspace(0.7, 1.3, size))
    payoff = make_payoff(name, t1=1, t2=3) if name == "forward-start-straddle" else \
        make_payoff(name, strike=1.0)
    mm, _ = nest_supports(m, payoff.last_date(m.n_dates))
    return mm, build_chain(mm, payoff)


@pytest.mark.parametrize("name", ["lookback-call", "forward-start-straddle", "asian-call"])
def test_dual_start_is_valid_inside_the_lp_and_no_worse_than_least_spread(name):
    # the start from the exact LP's duals (their superhedge's continuation values): the dual
    # swept to date 0 is the LP value (F(u) = LP optimum, HiGHS's 1e-7 tolerances times the
    # payoff scale); its chain is feasible, inside the LP bounds, its first chain closer to the
    # LP optimum than the least-spread start on the upper sides (where that start is far off),
    # and the ascent (with the least-spread start after it) ends no worse than from that start
    from deepquant.mmot.lp import build_chain_lp, solve_side
    from deepquant.mmot.markov_inner import dual_value_to_go

    mm, chain = _heston_chain(name)
    model = build_chain_lp(chain, mm)
    for sense in ("lower", "upper"):
        side = solve_side(model, sense)
        sign = 1.0 if sense == "upper" else -1.0
        sw = _Sweeper(chain, mm, sign)
        uvec = sw.flatten(sign * side.duals.u)
        w = dual_value_to_go(sw, uvec)
        assert np.sum(sw.mass0 * w[0]) + uvec @ sw.mu_flat == pytest.approx(sign * side.value,
                                                                             abs=1e-6)
        res = markov_inner(sw, start_values=w)
        _check_chain(sw, res)
        assert res.value <= sign * side.value + 1e-9
        assert res.value >= markov_inner(sw).value - 1e-12
        if sense == "upper":
            first = markov_inner(sw, max_cycles=0, start_values=w).value
            assert first > markov_inner(sw, max_cycles=0).value + 1e-4 * sw.scale


def test_start_values_of_the_wrong_shape_are_refused():
    mm, chain = _heston_chain("lookback-call")
    sw = _Sweeper(chain, mm, 1.0)
    with pytest.raises(ValueError, match="start_values must have the shapes"):
        markov_inner(sw, start_values=[np.zeros((1, 1))] * (sw.T + 1))


def test_a_start_highs_cannot_solve_falls_back_to_the_least_spread_start():
    # continuation values of 1e300 make every one-period LP of the dual's start fail
    # ("no_coupling"); the least-spread start after it still gives the feasible chain it gives
    # alone (the same value: the same LPs from a fresh basis, to 1e-12)
    mm, chain = _heston_chain("lookback-call")
    sw = _Sweeper(chain, mm, 1.0)
    shapes = [(per.n_s, per.xs.size) for per in sw.periods] + [sw.g_term.shape]
    with np.errstate(invalid="ignore", over="ignore"):
        res = markov_inner(sw, start_values=[np.full(s, 1e300) for s in shapes])
    _check_chain(sw, res)
    assert res.value == pytest.approx(markov_inner(sw).value, abs=1e-12)


def test_start_values_are_checked():
    # fifth pass: a NaN start value gave HiGHS a NaN cost, and it ran past every time limit
    # (killed after minutes with max_seconds=20); now a ValueError naming the dates
    from deepquant.mmot.markov_inner import dual_value_to_go

    _, mg, _, chain = _random_asian(0)
    sw = _Sweeper(chain, mg, 1.0)
    good = dual_value_to_go(sw, np.zeros(sw.mu_flat.size))
    nan = [w.copy() for w in good]
    nan[2][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"start_values must be finite, got NaN or inf at "
                                         r"dates \[2\]"):
        markov_inner(sw, max_seconds=20, start_values=nan)
    inf = [np.full_like(w, np.inf) for w in good]
    with pytest.raises(ValueError, match=r"at dates \[0, 1, 2, 3\]"):
        markov_inner(sw, max_seconds=20, start_values=inf)
    for bad in ("abc", 5, [w + 1j for w in good]):
        with pytest.raises(ValueError, match="start_values must be a list of T \\+ 1 = 4 real"):
            markov_inner(sw, start_values=bad)
    with pytest.raises(ValueError, match=r"start_values must have the shapes"):
        markov_inner(sw, start_values=[w.T for w in good])
    for name in ("max_seconds", "tol"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got None"):
            markov_inner(sw, **{name: None})
    # valid start values still give a feasible chain inside the LP bound
    res = markov_inner(sw, start_values=good)
    _check_chain(sw, res)


def test_a_stalled_ascent_ends_the_stage_with_the_chain_it_has():
    """``stall``: the ascent stops after the first cycle that gains less than that share of
    the chain's value (status "stalled", no second start), with the chain of that cycle: the
    same as an ascent cut at that many cycles, feasible, no worse than the start, and no
    better than the ascent run on."""
    mm, chain = _heston_chain("lookback-call")
    sw = _Sweeper(chain, mm, 1.0)  # three cycles from the least-spread start, a large first gain
    full = markov_inner(sw)
    start = markov_inner(sw, max_cycles=0)
    res = markov_inner(sw, stall=1.0)  # every cycle gains less than the whole value
    assert res.status == "stalled" and res.cycles == 1
    _check_chain(sw, res)
    assert res.value == markov_inner(sw, max_cycles=1).value
    assert start.value + 1e-3 * sw.scale < res.value <= full.value + 1e-12
    assert markov_inner(sw, stall=0.0).value == full.value and full.cycles > 1
