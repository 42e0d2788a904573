"""Chains whose kernels see the running statistic: feasible, inside the exact LP bounds, no
worse than the Markov chain they improve on, and valued right (checked by enumerating paths)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from deepquant.mmot.markov_inner import MARGINAL_TOL, _backward, dual_value_to_go, markov_inner
from deepquant.mmot.path_inner import bucket_chain_value, path_inner
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import make_payoff
from tests.mmot.test_certified import _random_asian
from tests.mmot.test_markov_inner import _heston_chain


def _payoff(name):
    """The payoff of ``_heston_chain(name)`` and (``"asian-call"``) of ``_random_asian``."""
    if name == "forward-start-straddle":
        return make_payoff(name, t1=1, t2=3)
    return make_payoff(name, strike=1.0)


def _improve(sw, buckets=4, dual=None):
    mk = markov_inner(sw)
    values = dict(markov=_backward(sw, mk.kernels))
    if dual is not None:
        values["dual"] = dual
    return mk, path_inner(sw, mk.kernels, values, buckets=buckets)


@pytest.mark.parametrize("case", ["random-0", "random-1", "lookback-call", "asian-call",
                                  "forward-start-straddle"])
def test_path_chain_is_feasible_inside_the_lp_and_no_worse_than_its_markov_chain(case):
    # feasible: laws = marginals, rows martingales; inside the exact LP bounds (a valid inner
    # value); and no worse than the Markov chain whose values to go it was built against (the
    # policy-improvement argument of the module docstring: that chain's kernel is feasible in
    # every period's LP), up to the LPs' 1e-10 tolerances times the payoff scale
    from deepquant.mmot.bounds import bounds

    if case.startswith("random"):
        _, mm, lp, chain = _random_asian(int(case[-1]))
    else:
        mm, chain = _heston_chain(case)
        lp = bounds(mm, _payoff(case), method="lp")
    for sign, opt in ((-1.0, lp.lower), (1.0, lp.upper)):
        sw = _Sweeper(chain, mm, sign)
        mk, res = _improve(sw)
        assert res.status == "done" and set(res.tried) == {"markov"}
        assert res.tried["markov"]["periods"] == sw.T
        assert res.residual <= MARGINAL_TOL and res.drift <= 1e-9
        assert res.value <= sign * opt + 1e-9
        assert res.value >= mk.value - 1e-9 * sw.scale
        value, laws, resid, drift = bucket_chain_value(sw, res.classes, res.kernels)
        assert (value, resid, drift) == (res.value, res.residual, res.drift)
        for t, (per, law) in enumerate(zip(sw.periods, laws)):
            np.testing.assert_allclose(law, mm.weights[t + 1, per.ys], atol=1e-9)


def test_a_pass_cut_short_keeps_the_markov_kernels_and_its_improvement(monkeypatch):
    # HiGHS gives no plan from period 1 on: the chain keeps the improved period 0 and the
    # Markov kernels after it; still feasible, inside the LP, no worse than the Markov chain
    from deepquant.mmot import path_inner as module

    _, mm, lp, chain = _random_asian(1)
    real = module._period
    monkeypatch.setattr(module, "_period",
                        lambda sw, t, *a: real(sw, t, *a) if t == 0 else None)
    for sign, opt in ((-1.0, lp.lower), (1.0, lp.upper)):
        sw = _Sweeper(chain, mm, sign)
        mk, res = _improve(sw)
        assert res.status == "no_coupling" and res.tried["markov"]["periods"] == 1
        assert res.residual <= MARGINAL_TOL and res.drift <= 1e-9
        assert mk.value - 1e-9 * sw.scale <= res.value <= sign * opt + 1e-9
        assert all(k.shape[0] == 1 for k in res.kernels[1:])


@pytest.mark.parametrize("name", ["forward-start-straddle", "asian-call"])
def test_a_remembered_value_gets_a_second_round_with_more_classes(name):
    # the forward start's statistic (kind "value"): the passes with BUCKETS classes, then
    # with VALUE_BUCKETS; every chain feasible and inside the exact LP, the best kept (no
    # worse than the first round's); other statistics get the first round only
    from deepquant.mmot.bounds import bounds
    from deepquant.mmot.path_inner import BUCKETS, VALUE_BUCKETS, classes_per_point

    mm, chain = _heston_chain(name)
    lp = bounds(mm, _payoff(name), method="lp")
    counts = classes_per_point(chain.kind)
    assert counts == ((BUCKETS, VALUE_BUCKETS) if name.startswith("forward") else (BUCKETS,))
    for sign, opt in ((-1.0, lp.lower), (1.0, lp.upper)):
        sw = _Sweeper(chain, mm, sign)
        mk = markov_inner(sw)
        res = path_inner(sw, mk.kernels, dict(markov=_backward(sw, mk.kernels)))
        keys = ["markov"] + [f"markov, {b} classes" for b in counts[1:]]
        assert list(res.tried) == keys and res.status == "done"
        assert [v["buckets"] for v in res.tried.values()] == list(counts)
        assert res.value == max(v["value"] for v in res.tried.values())
        assert res.buckets == res.tried[keys[int(np.argmax([res.tried[k]["value"]
                                                            for k in keys]))]]["buckets"]
        assert res.residual <= MARGINAL_TOL and res.drift <= 1e-9
        assert mk.value - 1e-9 * sw.scale <= res.value <= sign * opt + 1e-9
        value, _, resid, _ = bucket_chain_value(sw, res.classes, res.kernels)
        assert value == res.value and resid == res.residual


@pytest.mark.parametrize("name", ["asian-call", "lookback-call"])
def test_improve_runs_the_mixed_pass_last_and_keeps_the_best(name, monkeypatch):
    # improve: the Markov values' pass, the dual's, then MIX x Markov + (1 - MIX) x dual's;
    # every chain feasible and inside the exact LP, the best kept; the mixed pass at MIX = 1
    # is the Markov values' pass and at MIX = 0 the dual's (same values, same LPs)
    from deepquant.mmot import path_inner as module
    from deepquant.mmot.bounds import bounds
    from deepquant.mmot.lp import build_chain_lp, solve_side

    mm, chain = _heston_chain(name)
    lp = bounds(mm, _payoff(name), method="lp")
    for sense, sign, opt in (("lower", -1.0, lp.lower), ("upper", 1.0, lp.upper)):
        side = solve_side(build_chain_lp(chain, mm), sense)
        sw = _Sweeper(chain, mm, sign)
        dual, moves = dual_value_to_go(sw, sw.flatten(sign * side.duals.u), moves=True)
        mk = markov_inner(sw)
        path, report = module.improve(sw, mk.kernels, sign, max_seconds=60, dual=dual,
                                      moves=moves)
        assert list(report["tried"]) == ["markov", "dual", "mixed"]
        assert path.value == max(v["value"] for v in path.tried.values())
        assert report["value"] == sign * path.value and report["fits"]
        assert path.residual <= MARGINAL_TOL and path.drift <= 1e-9
        assert path.value <= sign * opt + 1e-9
        for mix, same in ((1.0, "markov"), (0.0, "dual")):
            monkeypatch.setattr(module, "MIX", mix)
            again, _ = module.improve(sw, mk.kernels, sign, max_seconds=60, dual=dual,
                                      moves=moves)
            assert again.tried["mixed"]["value"] == pytest.approx(
                again.tried[same]["value"], abs=1e-9 * sw.scale)
        monkeypatch.setattr(module, "MIX", 0.25)


def test_a_pass_without_a_plan_does_not_stop_the_next_pass(monkeypatch):
    # HiGHS gives no plan in period 1 of the first pass only (the Markov values'): that pass
    # keeps its period 0 and the Markov kernels after it, and the dual's pass still runs to
    # the end; the better chain is kept, feasible and inside the LP
    from deepquant.mmot import path_inner as module
    from deepquant.mmot.bounds import bounds

    mm, chain = _heston_chain("asian-call")
    lp = bounds(mm, _payoff("asian-call"), method="lp")
    real = module._period
    for sign, opt in ((-1.0, lp.lower), (1.0, lp.upper)):
        sw = _Sweeper(chain, mm, sign)
        mk = markov_inner(sw)
        failed = []

        def period(sw, t, *a, failed=failed):
            if t == 1 and not failed:  # the first pass's period 1 (the passes run in turn)
                failed.append(t)
                return None
            return real(sw, t, *a)

        monkeypatch.setattr(module, "_period", period)
        dual = dual_value_to_go(sw, np.zeros(sw.mu_flat.size))
        res = path_inner(sw, mk.kernels, dict(markov=_backward(sw, mk.kernels), dual=dual))
        monkeypatch.setattr(module, "_period", real)
        assert res.status == "no_coupling"
        assert res.tried["markov"]["periods"] == 1 and res.tried["dual"]["periods"] == sw.T
        assert res.value == max(v["value"] for v in res.tried.values())
        assert res.residual <= MARGINAL_TOL and res.drift <= 1e-9
        assert res.value <= sign * opt + 1e-9


def test_path_chain_closes_most_of_the_markov_gap_where_the_optimum_needs_the_path():
    # the Asian's lower side on 13 Heston points (N = 3): the best Markov chain stays 1.2%
    # above the exact LP minimum (0.026434 against 0.026123), the chain with 4 classes of the
    # running sum per point meets it (measured: to 1e-15); required: 90% of the distance closed
    from deepquant.mmot.bounds import bounds

    mm, chain = _heston_chain("asian-call")
    lp = bounds(mm, _payoff("asian-call"), method="lp")
    sw = _Sweeper(chain, mm, -1.0)
    mk, res = _improve(sw)
    markov_off, path_off = -mk.value - lp.lower, -res.value - lp.lower
    assert markov_off > 1e-3 * lp.lower
    assert 0.0 <= path_off + 1e-9 <= 0.1 * markov_off


def test_path_chain_value_and_laws_by_enumerating_every_path():
    # an independent valuation: every grid path of the 4-date random Asian, its probability
    # the product of the kernels of its (x, class of S) states, read off the payoff itself
    # (Payoff.evaluate, not the chain's terminal table); its laws must be the marginals and each
    # step a martingale given the path so far
    _, mm, _, chain = _random_asian(0)
    assert chain.exact
    sw = _Sweeper(chain, mm, 1.0)
    _, res = _improve(sw, buckets=3)
    payoff = _payoff("asian-call")
    stat = payoff.statistic(mm.n_dates)
    grid, T = mm.grid, sw.T
    total, laws = 0.0, np.zeros((T + 1, grid.size))
    prefix_mean = {}
    for x0, *tail in itertools.product(np.flatnonzero(mm.weights[0] > 0),
                                       *[range(per.ys.size) for per in sw.periods]):
        idx = [int(x0)] + [int(per.ys[j]) for per, j in zip(sw.periods, tail)]
        path = grid[idx]
        prob = float(mm.weights[0, x0])
        for t, per in enumerate(sw.periods):
            s_idx = int(np.searchsorted(chain.states[t], stat.evaluate(path, t)))
            assert np.isclose(chain.states[t][s_idx], stat.evaluate(path, t))
            a = int(np.searchsorted(per.xs, idx[t]))
            step = res.kernels[t][res.classes[t][s_idx, a], a, tail[t]] * prob
            key = tuple(idx[:t + 1])
            m0, m1 = prefix_mean.get(key, (0.0, 0.0))
            prefix_mean[key] = (m0 + step, m1 + step * path[t + 1])
            prob = step
        total += prob * float(payoff.evaluate(path))
        for t, i in enumerate(idx):
            laws[t, i] += prob
    np.testing.assert_allclose(laws, mm.weights, atol=1e-9)
    for key, (mass, first) in prefix_mean.items():
        assert abs(first - mass * grid[key[-1]]) <= 1e-9
    assert total == pytest.approx(res.value, abs=1e-12)


def test_the_dual_values_give_a_valid_chain_and_bad_arguments_are_refused():
    from deepquant.mmot.lp import build_chain_lp, solve_side

    mm, chain = _heston_chain("lookback-call")
    side = solve_side(build_chain_lp(chain, mm), "upper")
    sw = _Sweeper(chain, mm, 1.0)
    dual = dual_value_to_go(sw, sw.flatten(side.duals.u))
    mk, res = _improve(sw, dual=dual)
    assert set(res.tried) == {"markov", "dual"}
    assert res.value == max(v["value"] for v in res.tried.values())
    assert res.tried["dual"]["value"] <= side.value + 1e-9
    assert res.residual <= MARGINAL_TOL and res.drift <= 1e-9
    values = dict(markov=_backward(sw, mk.kernels))
    assert path_inner(sw, mk.kernels, values, max_seconds=0.0).status == "time_budget"
    for bad in (dict(buckets=0), dict(buckets=1.5), dict(buckets=True), dict(buckets=()),
                dict(buckets=(4, 0)), dict(max_seconds=-1.0), dict(max_seconds=np.nan)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            path_inner(sw, mk.kernels, values, **bad)
    with pytest.raises(ValueError, match="values\\['markov'\\] must have the shapes"):
        path_inner(sw, mk.kernels, dict(markov=[np.zeros((1, 1))] * (sw.T + 1)))


@pytest.mark.parametrize("name", ["lookback-call", "forward-start-straddle"])
def test_the_dual_moves_change_where_each_lp_starts_not_its_optimum(name):
    # the superhedge's moves only seed the first pairs of each period's LP: against the same
    # sources and values to go, the seeded and the plain LP reach the same optimal value (to
    # the LPs' 1e-10 tolerances times the payoff scale), period by period
    from deepquant.mmot import path_inner as module
    from deepquant.mmot.lp import build_chain_lp, solve_side
    from deepquant.mmot.markov_inner import _advance

    mm, chain = _heston_chain(name)
    side = solve_side(build_chain_lp(chain, mm), "upper")
    sw = _Sweeper(chain, mm, 1.0)
    dual, moves = dual_value_to_go(sw, sw.flatten(side.duals.u), moves=True)
    assert dual_value_to_go(sw, sw.flatten(side.duals.u))[0].shape == dual[0].shape
    mk = markov_inner(sw)
    mass = sw.mass0
    for t, per in enumerate(sw.periods):
        G = per.gather(dual[t + 1])
        got = [module._period(sw, t, mass, mk.kernels[t], dual[t + 1], 4, 60.0, mv)
               for mv in (None, moves[t])]
        objective = [sum(float(np.sum((np.where(c == b, mass, 0.0).T @ G) * k[b]))
                         for b in range(k.shape[0])) for c, k in got]
        assert objective[1] == pytest.approx(objective[0], abs=1e-9 * sw.scale)
        mass = _advance(sw, t, mass, mk.kernels[t])


def test_values_to_go_are_checked_like_the_markov_start():
    # fifth pass: one NaN value to go gave HiGHS a NaN cost and path_inner never returned
    # (killed by a 60 s timeout with max_seconds=10); the rule of markov_inner's start values
    _, mg, _, chain = _random_asian(0)
    sw = _Sweeper(chain, mg, 1.0)
    mk = markov_inner(sw)
    w = _backward(sw, mk.kernels)
    nan = [x.copy() for x in w]
    nan[2][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"values\['nan'\] must be finite, got NaN or inf at "
                                         r"dates \[2\]"):
        path_inner(sw, mk.kernels, {"nan": nan}, max_seconds=10)
    with pytest.raises(ValueError, match=r"values\['t'\] must have the shapes"):
        path_inner(sw, mk.kernels, {"t": [x.T for x in w]})
    with pytest.raises(ValueError, match="values must be a dict"):
        path_inner(sw, mk.kernels, w)
    with pytest.raises(ValueError, match="max_seconds must be a finite number >= 0, got None"):
        path_inner(sw, mk.kernels, {"m": w}, max_seconds=None)


def test_a_period_whose_law_is_off_the_marginal_by_the_lp_tolerance_still_gets_its_plan():
    # the law of X_t under kernels already chosen is off mu_t by the one-period LPs' tolerance;
    # with mu_{t+1} as the target, the sources' mean then differs from the target's by about
    # 1e-10 and HiGHS reads the LP as infeasible (the 12-period Asian at M = 150 lost its pass
    # at period 5 that way). The target is the law the Markov kernel gives the actual sources,
    # so that kernel stays a feasible plan: the period gets a plan, with martingale rows and
    # the Markov kernel's law of X_{t+1} to the LP tolerance
    from deepquant.mmot.path_inner import _advance, _period

    _, mm, _, chain = _random_asian(0)
    sw = _Sweeper(chain, mm, -1.0)
    mk = markov_inner(sw)
    w = _backward(sw, mk.kernels)
    t = 1
    per = sw.periods[t]
    mass = sw.mass0
    for r in range(t):
        mass = _advance(sw, r, mass, np.zeros((sw.periods[r].n_s, sw.periods[r].xs.size),
                                              np.int64), mk.kernels[r][None])
    # move 1e-8 of mass one grid point up wherever it can go: the mean moves by about 1e-9
    x_hi = np.flatnonzero(mass.sum(axis=0) > 1e-3)[-1]
    s_hi = int(np.argmax(mass[:, x_hi - 1]))
    shifted = mass.copy()
    shifted[s_hi, x_hi - 1] -= 1e-8
    shifted[s_hi, x_hi] += 1e-8
    got = _period(sw, t, shifted, mk.kernels[t], w[t + 1], 4, 30.0)
    assert got is not None
    classes, kern = got
    P = np.stack([np.where(classes == b, shifted, 0.0).sum(axis=0) for b in range(4)])
    for b in range(4):
        rows = kern[b]
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-9)
        assert np.max(P[b] * np.abs(rows @ per.yv - per.xv)) <= 1e-9
    law = np.einsum("bx,bxy->y", P, kern)
    np.testing.assert_allclose(law, shifted.sum(axis=0) @ mk.kernels[t], atol=1e-9)
