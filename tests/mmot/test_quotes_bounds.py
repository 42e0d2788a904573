"""Bounds from bid-ask quotes: the chain LP with price inequalities against an independent LP
over all grid paths, the certified sweep against the LP, hedges, and the documented behaviour of
zero bids, one-sided quotes and bands that no arbitrage-free law satisfies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import optimize

from deepquant.market.marginals import Marginals
from deepquant.mmot import bounds
from deepquant.mmot.quote_bands import QuoteBands, check_bands, laws_in_bands, quote_grid
from deepquant.mmot.quotes_bounds import (
    MAX_REPAIR_WIDENING,
    bounds_from_quotes,
    coarse_grid,
    verify_quote_hedge,
)
from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall
from deepquant.results import ConvergenceWarning
from tests.conftest import spx_data_dir

GRID = np.round(np.linspace(0.7, 1.3, 7), 12)
STRIKES = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
SPREAD = 0.004
PAYOFFS = [AsianCall(strike=1.0), LookbackCall(strike=1.0), ForwardStartStraddle(t1=1, t2=3)]


def walk_laws(n: int = 3) -> np.ndarray:
    """Laws (n+1, 7) of X_t = 1 + 0.1 * (sum of t steps in {-1, 0, 1}, probabilities 1/4,
    1/2, 1/4) on GRID: a martingale, so the rows are in convex order."""
    law = np.zeros(GRID.size)
    law[3] = 1.0
    rows = [law]
    for _ in range(n):
        law = 0.5 * law + 0.25 * np.roll(law, 1) + 0.25 * np.roll(law, -1)
        rows.append(law)
    return np.vstack(rows)


def walk_bands(spread: float = SPREAD, one_sided: tuple[int, int] | None = None) -> QuoteBands:
    """Calls and puts at STRIKES on the walk's laws, mid +- spread / 2 (bids floored at 0:
    the far out-of-the-money quotes of the first expiry get a zero bid)."""
    laws = walk_laws()
    k = np.concatenate([STRIKES, STRIKES])
    is_call = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    bids, asks = [], []
    for t in range(1, 4):
        d = GRID[None, :] - k[:, None]
        mid = np.where(is_call[:, None], np.maximum(d, 0), np.maximum(-d, 0)) @ laws[t]
        bids.append(np.maximum(mid - spread / 2, 0.0))
        ask = mid + spread / 2
        if one_sided is not None and one_sided[0] == t - 1:
            ask = ask.copy()
            ask[one_sided[1]] = np.inf
        asks.append(ask)
    return QuoteBands(("1m", "2m", "3m"), np.array([1, 2, 3]) / 12, (k,) * 3, (is_call,) * 3,
                      tuple(bids), tuple(asks))


def path_lp(bands: QuoteBands, payoff, sense: str) -> float:
    """Independent reference: the LP over all M^3 grid paths from X_0 = 1 with the martingale
    condition given every prefix and the quote inequalities on the marginals."""
    paths = np.array([(1.0, *p) for p in itertools.product(GRID, repeat=3)])
    n = len(paths)
    a_eq, b_eq = [np.ones(n)], [1.0]
    for t in range(3):
        prefixes = {tuple(p[: t + 1]) for p in paths}
        for pre in prefixes:
            sel = np.all(np.isclose(paths[:, : t + 1], pre), axis=1)
            a_eq.append(np.where(sel, paths[:, t + 1] - paths[:, t], 0.0))
            b_eq.append(0.0)
    a_ub, b_ub = [], []
    for s in range(3):
        c = bands.payoffs(s, paths[:, s + 1])
        for i in range(c.shape[0]):
            if np.isfinite(bands.ask[s][i]):
                a_ub.append(c[i])
                b_ub.append(bands.ask[s][i])
            if bands.bid[s][i] > 0:
                a_ub.append(-c[i])
                b_ub.append(-bands.bid[s][i])
    f = payoff(paths)
    sign = 1.0 if sense == "lower" else -1.0
    res = optimize.linprog(sign * f, A_ub=np.array(a_ub), b_ub=np.array(b_ub),
                           A_eq=np.array(a_eq), b_eq=np.array(b_eq), bounds=(0, None),
                           method="highs")
    assert res.status == 0, res.message
    return sign * res.fun


@pytest.fixture(scope="module")
def lp_results():
    bands = walk_bands()
    return bands, {p.name: bounds_from_quotes(bands, p, grid=GRID, method="lp") for p in PAYOFFS}


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_chain_lp_equals_path_lp(lp_results, payoff):
    # the chain LP is exact (lattice sums on the uniform grid): equal to 1e-6 (solver tolerance)
    bands, res = lp_results
    r = res[payoff.name]
    assert r.method == "quotes-lp" and r.success and r.exact
    assert abs(r.lower - path_lp(bands, payoff, "lower")) <= 1e-6
    assert abs(r.upper - path_lp(bands, payoff, "upper")) <= 1e-6
    assert r.lower < r.upper


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_fitted_marginal_bounds_inside_quote_bounds(lp_results, payoff):
    # the walk's laws price every quote inside its band, so its MMOT bounds are a subset
    _, res = lp_results
    fitted = bounds(Marginals(GRID, walk_laws(), [0.0, 1 / 12, 2 / 12, 3 / 12]), payoff,
                    method="lp")
    r = res[payoff.name]
    assert r.lower <= fitted.lower + 1e-9
    assert fitted.upper <= r.upper + 1e-9


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_lp_hedge_dominates_and_costs_the_bound(lp_results, payoff):
    _, res = lp_results
    r = res[payoff.name]
    for side, value in (("lower", r.lower), ("upper", r.upper)):
        hedge = getattr(r, f"{side}_side").info["hedge"]
        check = verify_quote_hedge(hedge, r)
        assert check.ok and check.margin >= -1e-9
        # strong duality through the sweep: the LP's positions cost the LP value (1e-7)
        assert abs(hedge.bound - value) <= 1e-7
        # priced at the quotes: long at the ask, short at the bid
        prob = r.info["problem"]
        a = np.concatenate(hedge.positions)
        manual = float(np.sum(np.where(a > 0, a * np.where(np.isfinite(prob.ask), prob.ask, 0),
                                       a * prob.bid)))
        assert abs(manual - hedge.option_cost) <= 1e-12


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_certified_contains_lp_and_is_close(lp_results, payoff):
    bands, res = lp_results
    r = res[payoff.name]
    c = bounds_from_quotes(bands, payoff, grid=GRID, method="certified")
    assert c.method == "quotes-certified"
    # valid outer bounds (up to the LP's 1e-9 tolerances) ...
    assert c.lower <= r.lower + 1e-8 and c.upper >= r.upper - 1e-8
    # ... and close: within 1e-4 of the payoff scale (rtol of the certified stop)
    assert r.lower - c.lower <= 1e-4 and c.upper - r.upper <= 1e-4
    for side in ("lower", "upper"):
        assert verify_quote_hedge(getattr(c, f"{side}_side").info["hedge"], c).ok


def test_certified_time_budget_is_checked_before_every_sweep(lp_results):
    # a budget spent at once: each side ends after the first smoothed sweep (the budget is
    # checked inside the objective, so an L-BFGS-B line search cannot overrun it) with a
    # valid bound (contains the LP to 1e-8) and a dominating hedge
    bands, res = lp_results
    payoff = PAYOFFS[0]
    c = bounds_from_quotes(bands, payoff, grid=GRID, method="certified", max_seconds=1e-9)
    assert c.status == "certified-wide"
    for side in ("lower", "upper"):
        s = getattr(c, f"{side}_side")
        assert s.info["evaluations"] == 1 and s.info["stages"] == 1
        assert "time budget" in s.message
        assert verify_quote_hedge(s.info["hedge"], c).ok
    r = res[payoff.name]
    assert c.lower <= r.lower + 1e-8 and c.upper >= r.upper - 1e-8
    # the inner estimate of one smoothed sweep misses the bands; it never passes the bound
    for side, sign in (("lower", -1.0), ("upper", 1.0)):
        s = getattr(c, f"{side}_side")
        assert s.gap >= 0 and s.info["inner_excess"] >= 0
        assert sign * (s.value - s.info["inner"]) >= 0


def test_zero_bid_is_no_lower_constraint():
    bands = walk_bands()
    assert np.any(bands.bid[0] == 0)  # the far out-of-the-money quotes of the first expiry
    nan_bid = QuoteBands(bands.labels, bands.times, bands.k, bands.is_call,
                         tuple(np.where(b == 0, np.nan, b) for b in bands.bid), bands.ask)
    payoff = PAYOFFS[0]
    a = bounds_from_quotes(bands, payoff, grid=GRID)
    b = bounds_from_quotes(nan_bid, payoff, grid=GRID)
    assert abs(a.lower - b.lower) <= 1e-12 and abs(a.upper - b.upper) <= 1e-12


def test_one_sided_quote():
    # the 1.0 call of the second expiry loses its ask: no upper constraint, so the bounds can
    # only widen, the hedges never buy it, and the path LP without that row agrees (1e-6)
    bands = walk_bands(one_sided=(1, 2))
    payoff = PAYOFFS[1]
    r = bounds_from_quotes(bands, payoff, grid=GRID)
    full = bounds_from_quotes(walk_bands(), payoff, grid=GRID)
    assert r.lower <= full.lower + 1e-9 and r.upper >= full.upper - 1e-9
    assert abs(r.upper - path_lp(bands, payoff, "upper")) <= 1e-6
    for side in ("lower", "upper"):
        pos = getattr(r, f"{side}_side").info["positions"][1]
        assert pos[2] <= 1e-12


def test_band_without_arbitrage_free_law_names_expiry_and_strike():
    bands = walk_bands()
    # calendar arbitrage: the 3m 1.0 call band lies 0.028 below the 2m 1.0 call band (a call
    # price cannot fall with the maturity of a martingale)
    bid, ask = list(bands.bid), list(bands.ask)
    bid[2], ask[2] = bid[2].copy(), ask[2].copy()
    bid[2][2] = bands.bid[1][2] - 0.028
    ask[2][2] = bid[2][2] + SPREAD
    bad = QuoteBands(bands.labels, bands.times, bands.k, bands.is_call, tuple(bid), tuple(ask))
    assert not check_bands(bad, GRID).feasible
    with pytest.raises(ValueError, match=r"no arbitrage-free law.*expiry (2m|3m): [CP] 1\.0000"):
        bounds_from_quotes(bad, PAYOFFS[0], grid=GRID)
    # the offered repair widens exactly the violated bands to the closest feasible prices
    r = bounds_from_quotes(bad, PAYOFFS[0], grid=GRID, repair="minimal")
    assert r.info["repaired"] and r.success
    fixed = r.info["bands"]
    assert check_bands(fixed, GRID).feasible
    # only widened, and by the closest law's total violation (+ 1e-9 room per changed band)
    widening = 0.0
    for f, b, g, a in zip(fixed.bid, bad.bid, fixed.ask, bad.ask):
        assert np.all(f <= b) and np.all(g >= a)
        widening += float(np.sum(b - f) + np.sum(g - a))
    total = check_bands(bad, GRID).total
    assert total > 0.01 and abs(widening - total) <= 1e-7


def test_bad_inputs():
    bands = walk_bands()
    with pytest.raises(ValueError, match="bid of expiry 1m at k=0.8"):
        QuoteBands(bands.labels, bands.times, bands.k, bands.is_call,
                   (bands.ask[0] + 1,) + bands.bid[1:], bands.ask)
    with pytest.raises(ValueError, match="bid of expiry 1m"):
        QuoteBands(bands.labels, bands.times, bands.k, bands.is_call,
                   (bands.bid[0] - 1,) + bands.bid[1:], bands.ask)
    with pytest.raises(ValueError, match="method must be one of"):
        bounds_from_quotes(bands, PAYOFFS[0], grid=GRID, method="simplex")
    with pytest.raises(ValueError, match="repair must be one of"):
        bounds_from_quotes(bands, PAYOFFS[0], grid=GRID, repair="yes")
    with pytest.raises(ValueError, match="grid must be strictly increasing with 1 on it"):
        bounds_from_quotes(bands, PAYOFFS[0], grid=GRID + 0.01)
    with pytest.raises(ValueError, match="repair='calibration' needs a CalibrationResult"):
        bounds_from_quotes(bands, PAYOFFS[0], grid=GRID, repair="calibration")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(sides=("up",)), ValueError, "sides must be a non-empty tuple"),
    (dict(sides="upper"), ValueError, "sides must be a non-empty tuple"),
    (dict(sides=()), ValueError, "sides must be a non-empty tuple"),
    (dict(grid=np.r_[GRID[:-1], np.nan]), ValueError, "grid must be strictly increasing"),
    (dict(grid=np.array([1.0])), ValueError, "grid must be strictly increasing"),
    (dict(grid=np.array([0.8, 0.9, 1.0])), ValueError, "1 on it strictly inside"),
    (dict(grid="abc"), ValueError, "grid must be an array of moneyness points, got 'abc'"),
    (dict(thin="yes"), TypeError, "thin must be a bool, got 'yes'"),
    (dict(grid=None, grid_size=11.5), TypeError, "grid_size must be an integer, got 11.5"),
    (dict(method="certified", foo=1), TypeError, r"unknown certified option\(s\) \['foo'\]"),
    (dict(method="certified", max_seconds=-1), ValueError, "max_seconds must be > 0, got -1"),
    # a string was read as a number on a grid with a coarse start and failed in a comparison
    # without one; True ran as 1 s
    (dict(method="certified", max_seconds="1"), TypeError, "max_seconds must be a number, got '1'"),
    (dict(method="certified", max_seconds="1", coarse=5, grid=np.linspace(0.7, 1.3, 13)),
     TypeError,
     "max_seconds must be a number, got '1'"),
    (dict(method="certified", max_seconds=True), TypeError, "max_seconds must be a number, got True"),
    (dict(method="certified", eps_factor=1.0), ValueError, "eps_factor must be in"),
    (dict(method="certified", max_iter=0), ValueError, "max_iter must be an integer >= 1"),
    (dict(method="certified", band_tol="a"), TypeError, "band_tol must be a number"),
    (dict(method="certified", workers=3), ValueError, "workers must be 1 or 2, got 3"),
    (dict(method="certified", workers=True), ValueError, "workers must be 1 or 2, got True"),
    (dict(method="certified", eps_start=1e-6, eps_end=1e-3), ValueError,
     "eps_end must be <= eps_start"),
    (dict(max_seconds=10), ValueError, "apply to method='certified' only"),
    (dict(method="certified", a0=np.zeros(3)), ValueError, r"a0 must hold one position per "
     r"quote used, shape \(30,\)"),
])
def test_bad_options_name_the_argument(kwargs, error, match):
    # a clear error naming the argument and its value, raised before any LP or sweep (the
    # a0 check comes with the first certified side)
    kwargs.setdefault("grid", GRID)
    with pytest.raises(error, match=match):
        bounds_from_quotes(walk_bands(), PAYOFFS[0], **kwargs)


def test_bad_sources_name_the_argument(tmp_path):
    with pytest.raises(TypeError, match="source must be QuoteBands.*got int"):
        bounds_from_quotes(42, PAYOFFS[0], grid=GRID)
    with pytest.raises(TypeError, match="source must be QuoteBands.*got list"):
        bounds_from_quotes([1, 2], PAYOFFS[0], grid=GRID)
    with pytest.raises(ValueError, match="does not fit the 3 expiries of the quotes"):
        bounds_from_quotes(walk_bands(), ForwardStartStraddle(t1=1, t2=5), grid=GRID)
    path = tmp_path / "chain.csv"
    path.write_text("\n".join([CHAIN_HEADER] + [",".join(map(str, r))
                                                for r in one_sided_chain_rows()]) + "\n")
    with pytest.raises(TypeError, match="fit_range must be two numbers"):
        bounds_from_quotes(path, PAYOFFS[0], expiries=["2024-02-16"], fit_range=0.5)
    with pytest.raises(ValueError, match="fit_range must satisfy 0 <= lo < hi"):
        bounds_from_quotes(path, PAYOFFS[0], expiries=["2024-02-16"], fit_range=(1.2, 0.5))


def test_unreachable_bid_is_reported_not_a_solver_failure():
    # a bid above every price a law on the grid can give (the 1.2 call of the first expiry is
    # worth at most 0.1 * P(X = 1.3) <= 0.05 under mean 1): check_bands reports it below the
    # bid by the exact amount (0.3 - 0.05 on the closest law, 1e-9: HiGHS tolerance), and
    # bounds_from_quotes names it and repairs it; the repair lowers that bid by 0.25, 12% of
    # the quotes' total price, so the repaired result says success=False
    bands = walk_bands()
    bid = list(bands.bid)
    ask = list(bands.ask)
    bid[0], ask[0] = bid[0].copy(), ask[0].copy()
    bid[0][4], ask[0][4] = 0.3, 0.31
    bad = QuoteBands(bands.labels, bands.times, bands.k, bands.is_call, tuple(bid), tuple(ask))
    check = check_bands(bad, GRID)
    assert not check.feasible
    assert check.violation[0][4] >= 0.3 - 0.05 - 1e-9
    with pytest.raises(ValueError, match=r"expiry 1m: C 1\.2000: [0-9.]+ below bid"):
        bounds_from_quotes(bad, PAYOFFS[0], grid=GRID)
    with pytest.warns(ConvergenceWarning, match="more than MAX_REPAIR_WIDENING"):
        r = bounds_from_quotes(bad, PAYOFFS[0], grid=GRID, repair="minimal")
    assert check_bands(r.info["bands"], GRID).feasible
    assert not r.success and r.status == "repair-too-wide"
    assert r.info["band_widening_share"] > MAX_REPAIR_WIDENING


FINE = np.round(np.linspace(0.7, 1.3, 13), 12)


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_coarse_start_is_valid_and_converges(payoff):
    # the 13-point grid started from its 5-point subgrid: the coarse positions' certificate on
    # the fine grid is a valid bound (contains the fine exact LP to 1e-8); with the default
    # budget the fine stages then close on the LP (1e-4 of the payoff scale, rtol); with a
    # budget spent at once the side is the coarse positions' certificate, still valid
    bands = walk_bands()
    lp = bounds_from_quotes(bands, payoff, grid=FINE, method="lp")
    c = bounds_from_quotes(bands, payoff, grid=FINE, method="certified", coarse=5)
    quick = bounds_from_quotes(bands, payoff, grid=FINE, method="certified", coarse=5,
                               max_seconds=1e-9)
    for res in (c, quick):
        assert res.lower <= lp.lower + 1e-8 and res.upper >= lp.upper - 1e-8
        for side in ("lower", "upper"):
            s = getattr(res, f"{side}_side")
            assert s.info["coarse"]["size"] == 5
            assert verify_quote_hedge(s.info["hedge"], res).ok
    assert lp.lower - c.lower <= 1e-4 and c.upper - lp.upper <= 1e-4
    for side in ("lower", "upper"):
        s = getattr(quick, f"{side}_side")
        assert s.info["stages"] == 0 and "time budget" in s.message


FINE_TIMES = np.array([0.0, 1.0, 2.0, 3.0]) / 12


def fine_walk(step: int, stay: float) -> np.ndarray:
    """Laws (4, 13) on FINE of X_t = 1 + 0.05 * (sum of t steps in {-step, 0, step}, 0 with
    probability ``stay``): a martingale, so the rows are in convex order."""
    law = np.zeros(FINE.size)
    law[6] = 1.0
    rows = [law]
    for _ in range(3):
        law = stay * law + (1 - stay) / 2 * (np.roll(law, step) + np.roll(law, -step))
        rows.append(law)
    return np.vstack(rows)


def check_markov_inner(bands, payoff, res, lp):
    """The fine-grid inner value of both sides of ``res`` against the exact quote LP ``lp``: the
    Markov chain's laws price every quote inside its band (to 1e-9, the repair's padding) and
    are martingale marginals (``Marginals`` checks mean and convex order to 1e-9); its value
    lies between the exact LP bounds over martingales with those laws (an independent LP, to
    1e-9: HiGHS tolerances), on its own side of their midpoint (the lower side minimises, the
    upper side maximises), and inside the exact quote bounds (to 1e-9); the reported bracket
    [bound, inner] contains the exact quote LP value (the bound to 1e-8, as the certified
    sides; the inner value to its kind's tolerance). A second chain, started from the polished
    positions (``info["reinner"]``), is checked the same way where it is the reported one, and
    is reported only where it is feasible and tighter than the first."""
    for side in ("lower", "upper"):
        s = getattr(res, f"{side}_side")
        sgn = 1.0 if side == "upper" else -1.0
        re = s.info.get("reinner", {})
        if re.get("adopted"):
            first = s.info["markov"]
            assert re["feasible"] and sgn * re["value"] > sgn * first["value"]
            assert s.info["inner"] == pytest.approx(re["value"], abs=1e-12)
            assert s.info["inner_kind"].endswith("from the polished positions")
        mk = re if re.get("adopted") else s.info["markov"]
        assert mk["feasible"] and mk["band_violation"] <= 1e-6
        laws = mk["laws"]
        for t in range(3):
            p = bands.payoffs(t, FINE) @ laws[t]
            assert np.all(p >= bands.bid[t] - 1e-9) and np.all(p <= bands.ask[t] + 1e-9)
        fixed = bounds(Marginals(FINE, np.vstack([fine_walk(2, 0.5)[0], laws]), FINE_TIMES),
                       payoff, method="lp")
        v = mk["value"]
        assert fixed.lower - 1e-9 <= v <= fixed.upper + 1e-9
        mid = (fixed.lower + fixed.upper) / 2
        assert fixed.upper - fixed.lower > 1e-3
        assert (v <= mid) if side == "lower" else (v >= mid)
        assert lp.lower - 1e-9 <= v <= lp.upper + 1e-9
        # the reported inner value is the Markov chain's or its path-dependent one's (a feasible
        # law: on its side of the exact value to 1e-9), or a smoothed chain of this grid within band_tol = 1e-6 of the
        # bands that is at least as tight (feasible to that tolerance: 1e-6; measured 1.6e-8)
        inner = s.info["inner"]
        # a path-dependent chain is reported only where it is tighter than its Markov chain
        sgn = 1.0 if side == "upper" else -1.0
        assert sgn * v >= sgn * mk["markov_value"] - 1e-12
        if mk.get("path", {}).get("adopted"):
            assert sgn * v > sgn * mk["markov_value"]
        if s.info["inner_kind"].startswith(("Markov chain", "path-dependent chain")):
            assert inner == pytest.approx(v, abs=1e-12) and (mk["adopted"] or mk is re)
            tol = 1e-9
        else:
            assert s.info["inner_kind"] == "smoothed chain" and s.info["band_violation"] <= 1e-6
            assert (inner <= v) if side == "lower" else (inner >= v)
            tol = 1e-6
        if side == "lower":
            assert res.lower <= lp.lower + 1e-8 and lp.lower <= inner + tol
        else:
            assert inner - tol <= lp.upper and lp.upper <= res.upper + 1e-8


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_fine_grid_inner_value_is_a_feasible_law(payoff):
    # the coarse start's inner estimate is a chain of the 5-point subgrid; the fine grid's
    # inner value is a Markov chain of martingale couplings of laws inside the bands, with the
    # calibrated laws (the walk's own, inside the bands) as the tie-break's reference
    bands = walk_bands()
    lp = bounds_from_quotes(bands, payoff, grid=FINE, method="lp")
    fitted = Marginals(FINE, fine_walk(2, 0.5), FINE_TIMES)
    res = bounds_from_quotes(bands, payoff, grid=FINE, method="certified", coarse=5,
                             fitted=fitted, repair="calibration")
    check_markov_inner(bands, payoff, res, lp)


def test_path_passes_beside_the_polish_give_a_feasible_law(monkeypatch):
    # with two workers the inner value's path passes run in a forked second process while the
    # positions are polished (an rtol no stage reaches, so that both run on every side); the
    # inner value is still a feasible law inside the exact quote bounds
    from deepquant.mmot import beside

    started = []
    monkeypatch.setattr(beside.Beside, "__init__", lambda self, fn, init=beside.Beside.__init__:
                        (started.append(1), init(self, fn))[1])
    bands, payoff = walk_bands(), PAYOFFS[1]
    lp = bounds_from_quotes(bands, payoff, grid=FINE, method="lp")
    fitted = Marginals(FINE, fine_walk(2, 0.5), FINE_TIMES)
    res = bounds_from_quotes(bands, payoff, grid=FINE, method="certified", coarse=5,
                             fitted=fitted, repair="calibration", workers=2, rtol=1e-9)
    check_markov_inner(bands, payoff, res, lp)
    assert len(started) == 2 if beside.fork_available() else not started
    for side in (res.lower_side, res.upper_side):
        assert side.info["markov"]["path"]["status"] == "done", side.info["markov"]["path"]
        assert side.info["polish"]["steps"] > 0
        # the chain from the polished positions was tried where the polish left a gap
        assert "reinner" in side.info or side.status == "certified"


def test_a_second_inner_value_from_the_polished_positions():
    # after the polish the inner value is tried again from the polished positions (the laws
    # pricing them best, their chain): adopted only when feasible and tighter than a feasible
    # inner value of this grid, or over a coarse grid's; the bracket stays around the exact LP
    import dataclasses

    from deepquant.mmot.quote_inner import reinner_side

    bands, payoff = walk_bands(), PAYOFFS[1]
    lp = bounds_from_quotes(bands, payoff, grid=FINE, method="lp")
    fitted = Marginals(FINE, fine_walk(2, 0.5), FINE_TIMES)
    res = bounds_from_quotes(bands, payoff, grid=FINE, method="certified", coarse=5,
                             fitted=fitted, repair="calibration", rtol=1e-9, max_seconds=3.0)
    check_markov_inner(bands, payoff, res, lp)
    side, prob = res.lower_side, res.info["problem"]
    assert side.info["polish"]["steps"] > 0 and side.status != "certified"
    assert "reinner" in side.info  # tried after the polish
    opts = dict(max_seconds=5.0, band_tol=1e-6, rtol=1e-9)
    for kind, inner, adopted in (("Markov chain on test laws", lp.upper, True),
                                 ("Markov chain on test laws", lp.lower, False),
                                 ("coarse grid of 5 points (smoothed chain)", lp.lower, True)):
        start = dataclasses.replace(side, info=dict(side.info, inner=inner, inner_kind=kind,
                                                    band_violation=0.0))
        out = reinner_side(start, prob, "lower", **opts)
        assert out.info["reinner"]["adopted"] is adopted and out.info["reinner"]["feasible"]
        if adopted:
            v = out.info["reinner"]["value"]
            assert out.info["inner"] == v and lp.lower - 1e-9 <= v <= lp.upper + 1e-9
            assert out.info["inner_kind"].endswith("from the polished positions")
            assert out.info["markov"] is side.info["markov"] and out.value == side.value
        else:
            assert out.info["inner"] == inner
    unpolished = dataclasses.replace(side, info={k: v for k, v in side.info.items()
                                                 if k != "polish"})
    assert reinner_side(unpolished, prob, "lower", **opts) is unpolished


def test_fine_grid_inner_value_never_uses_laws_outside_the_bands():
    # fitted laws that miss the bands (a wider walk) with no repair: the inner value's laws
    # must still price every quote inside its band
    bands = walk_bands()
    payoff = PAYOFFS[1]
    wide = fine_walk(2, 0.2)
    viol = max(np.max(np.maximum(bands.payoffs(t, FINE) @ wide[t + 1] - bands.ask[t], 0.0))
               for t in range(3))
    assert viol > 1e-3  # the wider walk's calls lie above the asks
    lp = bounds_from_quotes(bands, payoff, grid=FINE, method="lp")
    res = bounds_from_quotes(bands, payoff, grid=FINE, method="certified", coarse=5,
                             fitted=Marginals(FINE, wide, FINE_TIMES))
    check_markov_inner(bands, payoff, res, lp)


def test_laws_in_bands_price_the_value_best():
    # the walk's laws lie inside the bands, so the LP's laws price any value at least as well
    # (to 1e-9, HiGHS tolerances); with a large tie weight they are the reference laws
    bands = walk_bands()
    walk = fine_walk(2, 0.5)[1:]
    rng = np.random.default_rng(0)
    for value in (rng.normal(size=walk.shape), -np.abs(FINE - 1.0)[None, :].repeat(3, 0)):
        laws = laws_in_bands(bands, FINE, value, walk, tie=0.0)
        Marginals(FINE, np.vstack([fine_walk(2, 0.5)[0], laws]), FINE_TIMES)  # mean, convex
        for t in range(3):
            p = bands.payoffs(t, FINE) @ laws[t]
            assert np.all(p >= bands.bid[t] - 1e-9) and np.all(p <= bands.ask[t] + 1e-9)
        assert np.sum(value * laws) >= np.sum(value * walk) - 1e-9
        assert np.sum(value * laws) > np.sum(value * walk) + 1e-4  # the bands leave room
    np.testing.assert_allclose(laws_in_bands(bands, FINE, value, walk, tie=1e3), walk,
                               atol=1e-9)


def test_laws_in_bands_checks_its_inputs():
    # fifth pass: a transposed value (M, S) ran as if it were (S, M) (the same entries, moved),
    # a negative tie or an unsorted grid returned None ("no laws in the bands"), NaN values,
    # references or ties ended in linprog's "c must not contain values inf, nan, or None"
    bands = walk_bands()
    walk = fine_walk(2, 0.5)[1:]
    value = np.random.default_rng(0).normal(size=walk.shape)
    nan = value.copy()
    nan[1, 2] = np.nan
    for kwargs, error, match in [
            (dict(value=value.T), ValueError, r"value must be a finite array of shape \(S, M\) "
                                             r"= \(3, 13\), got shape \(13, 3\)"),
            (dict(value=nan), ValueError, "value must be .* with NaN or inf"),
            (dict(reference=walk[:, :5]), ValueError, r"reference must be .* got shape \(3, 5\)"),
            (dict(tie=-1.0), ValueError, "tie must be a finite number >= 0, got -1.0"),
            (dict(tie=np.nan), ValueError, "tie must be a finite number >= 0, got nan"),
            (dict(grid=FINE[::-1]), ValueError, "grid must be strictly increasing with 1"),
            (dict(bands=None), TypeError, "bands must be a QuoteBands, got NoneType")]:
        args = {**dict(bands=bands, grid=FINE, value=value, reference=walk, tie=1e-6), **kwargs}
        with pytest.raises(error, match=match):
            laws_in_bands(args.pop("bands"), args.pop("grid"), args.pop("value"),
                          args.pop("reference"), **args)


def test_coarse_grid_is_a_subgrid_with_the_same_range():
    g = quote_grid(walk_bands(), 150)
    c = coarse_grid(g, 25)
    assert 25 <= c.size <= 27 and np.all(np.isin(c, g))
    assert c[0] == g[0] and c[-1] == g[-1] and np.any(np.abs(c - 1) < 1e-12)


def test_certified_side_never_worse_than_its_start(lp_results):
    # positions a0 are certified before the first stage: the side's bound is at most a0's
    bands, _ = lp_results
    payoff = PAYOFFS[1]
    base = bounds_from_quotes(bands, payoff, grid=GRID, method="certified", sides=("upper",),
                              max_seconds=1e-9)
    a0 = np.concatenate(base.upper_side.info["positions"])
    prob = base.info["problem"]
    cert = prob.certify(a0, 1.0)[0]
    again = bounds_from_quotes(bands, payoff, grid=GRID, method="certified", sides=("upper",),
                               a0=a0, max_seconds=1e-9)
    assert again.upper <= cert + 1e-12 and abs(base.upper - cert) <= 1e-12


def test_quote_grid_has_one_and_covers_strikes():
    g = quote_grid(walk_bands(), 21)
    assert g.size == 21 and np.any(np.abs(g - 1) < 1e-12)
    assert g[0] < STRIKES.min() and g[-1] > STRIKES.max()
    assert np.allclose(np.diff(g), np.diff(g)[0])


@pytest.fixture(scope="module")
def synthetic_calibration(tmp_path_factory):
    """A synthetic Heston chain calibrated on an 11-point uniform quote grid (date 0 = today
    prepended to the calibrated laws for the fitted-marginal bounds)."""
    import warnings

    from deepquant.market.calibrate import calibrate_chain
    from deepquant.market.chain import synthetic_chain
    from deepquant.mmot.quote_bands import load_bands

    path = tmp_path_factory.mktemp("chain") / "chain.csv"
    synthetic_chain(seed=3).to_csv(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bands, _ = load_bands(path, ["30d", "60d"], fit_range=(0.5, 1.6))
        grid = quote_grid(bands, 11)
        cal = calibrate_chain(path, ["30d", "60d"], grid=grid, fit_range=(0.5, 1.6))
    m = cal.marginals
    delta = (np.abs(m.grid - 1) < 1e-12).astype(float)
    fitted = Marginals(m.grid, np.vstack([delta, m.weights]), np.concatenate([[0.0], m.times]))
    return cal, grid, fitted


@pytest.mark.parametrize("payoff", [AsianCall(strike=1.0), LookbackCall(strike=1.0),
                                    ForwardStartStraddle(t1=1, t2=2)], ids=lambda p: p.name)
def test_calibrated_marginal_bounds_inside_quote_bounds(synthetic_calibration, payoff):
    # repair="calibration" keeps every band that contains the calibrated price and widens the
    # others to it, so the calibrated laws are feasible: their bounds lie inside (LP tol 1e-9)
    cal, grid, fitted = synthetic_calibration
    q = bounds_from_quotes(cal, payoff, grid=grid, thin=True, repair="calibration")
    f = bounds(fitted, payoff, method="lp")
    assert q.info["repaired"] and q.info["band_widening"] >= 0
    assert q.lower <= f.lower + 1e-9 and f.upper <= q.upper + 1e-9
    assert q.width > f.width


@pytest.mark.slow
def test_spx_fitted_bounds_inside_quote_bounds_and_certified_contains_lp():
    # the real chain at 5 expiries on the 13-point grid of benchmarks/mmot_quotes.py: the
    # calibrated laws' LP bounds inside the bid-ask LP bounds; the certified sweep contains the
    # LP values (1e-8) within 1e-3 (about 2% of the ranges); both hedges dominate
    import warnings

    from deepquant.market.calibrate import calibrate_chain
    from deepquant.market.quotes import load_chain
    from deepquant.mmot.quote_bands import load_bands

    expiries = ["30d", "60d", "90d", "120d", "150d"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chain = load_chain(spx_data_dir() / "spx_options_normalized.csv")
        bands, _ = load_bands(chain, expiries, fit_range=(0.75, 1.3))
        grid = quote_grid(bands, 13)
        cal = calibrate_chain(chain, expiries, grid=grid, fit_range=(0.75, 1.3))
    m = cal.marginals
    delta = (np.abs(m.grid - 1) < 1e-12).astype(float)
    fitted = Marginals(m.grid, np.vstack([delta, m.weights]), np.concatenate([[0.0], m.times]))
    payoff = LookbackCall(strike=1.0)
    q = bounds_from_quotes(cal, payoff, grid=grid, thin=True, repair="calibration")
    f = bounds(fitted, payoff, method="lp")
    assert q.lower <= f.lower + 1e-9 and f.upper <= q.upper + 1e-9
    c = bounds_from_quotes(cal, payoff, grid=grid, thin=True, repair="calibration",
                           method="certified", max_seconds=60)
    assert c.lower <= q.lower + 1e-8 and c.upper >= q.upper - 1e-8
    assert q.lower - c.lower <= 1e-3 and c.upper - q.upper <= 1e-3
    for res in (q, c):
        for side in ("lower", "upper"):
            assert verify_quote_hedge(getattr(res, f"{side}_side").info["hedge"], res).ok


# ----------------------------------------------------------------------------- one-sided quotes
CHAIN_HEADER = "quote_date,quote_time_et,root,settlement,spot,expiry,strike,type,bid,ask"
CHAIN_EXPIRIES = ("2024-02-16", "2024-03-15")


def one_sided_chain_rows() -> list[list]:
    """A chain in currency (spot 100, no rates: F = 100, D = 1) whose mids are the prices of the
    walk's laws after 2 and 3 steps at strikes 80..120 by 5, two-sided quotes mid +- 0.5 (bids
    floored at 0: the far out-of-the-money ones get a zero bid). At the second expiry three
    quotes are tight and one-sided: the 80 put has no bid (empty) and the 120 call a zero bid,
    both with the ask mid + 0.01, and the 110 call has the bid mid - 0.01 and no ask."""
    rows = []
    for expiry, steps in zip(CHAIN_EXPIRIES, (2, 3)):
        law = walk_laws(steps)[-1]
        for strike in range(80, 121, 5):
            for typ in ("C", "P"):
                d = GRID - strike / 100
                mid = 100 * float(np.maximum(d if typ == "C" else -d, 0.0) @ law)
                bid, ask = f"{max(mid - 0.5, 0.0):.10f}", f"{mid + 0.5:.10f}"
                if expiry == CHAIN_EXPIRIES[1] and (strike, typ) == (80, "P"):
                    bid, ask = "", f"{mid + 0.01:.10f}"
                elif expiry == CHAIN_EXPIRIES[1] and (strike, typ) == (120, "C"):
                    bid, ask = "0", f"{mid + 0.01:.10f}"
                elif expiry == CHAIN_EXPIRIES[1] and (strike, typ) == (110, "C"):
                    bid, ask = f"{mid - 0.01:.10f}", ""
                rows.append(["2024-01-12", "13:40", "SPX", "AM", 100, expiry, strike, typ, bid,
                             ask])
    return rows


def rows_lp(rows: list[list], payoff, sense: str) -> float:
    """Independent reference for the chain of ``one_sided_chain_rows``: the LP over the M^2
    grid paths (1, X_1, X_2) with the martingale condition given every prefix and one explicit
    price inequality per quoted side read from the CSV rows: E[c(X_s)] >= bid / (D F) where the
    bid is > 0, E[c(X_s)] <= ask / (D F) where there is an ask (F = 100, D = 1)."""
    paths = np.array([(1.0, a, b) for a, b in itertools.product(GRID, repeat=2)])
    a_eq = [np.ones(len(paths)), paths[:, 1] - 1.0]
    b_eq = [1.0, 0.0]
    for x in GRID:
        a_eq.append(np.where(np.isclose(paths[:, 1], x), paths[:, 2] - x, 0.0))
        b_eq.append(0.0)
    a_ub, b_ub = [], []
    for r in rows:
        x = paths[:, CHAIN_EXPIRIES.index(r[5]) + 1]
        k = r[6] / 100
        c = np.maximum(x - k, 0.0) if r[7] == "C" else np.maximum(k - x, 0.0)
        if r[8] and float(r[8]) > 0:
            a_ub.append(-c)
            b_ub.append(-float(r[8]) / 100)
        if r[9]:
            a_ub.append(c)
            b_ub.append(float(r[9]) / 100)
    sign = 1.0 if sense == "lower" else -1.0
    res = optimize.linprog(sign * payoff(paths), A_ub=np.array(a_ub), b_ub=np.array(b_ub),
                           A_eq=np.array(a_eq), b_eq=np.array(b_eq), bounds=(0, None),
                           method="highs")
    assert res.status == 0, res.message
    return sign * res.fun


@pytest.fixture(scope="module")
def one_sided_chain(tmp_path_factory):
    rows = one_sided_chain_rows()
    path = tmp_path_factory.mktemp("one-sided") / "chain.csv"
    path.write_text(CHAIN_HEADER + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path, rows


@pytest.mark.parametrize("payoff", [AsianCall(strike=1.0), LookbackCall(strike=1.0),
                                    ForwardStartStraddle(t1=1, t2=2)], ids=lambda p: p.name)
def test_chain_with_zero_bid_and_one_sided_quotes_against_explicit_lp(one_sided_chain, payoff):
    # from the chain file: the zero bid, the missing bid and the missing ask each give one
    # constraint; equal to the explicit LP to 1e-6 (solver tolerance; F and D from the parity
    # fit are 100 and 1 to 1e-12)
    import warnings

    from deepquant.mmot.quote_bands import load_bands

    path, rows = one_sided_chain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, quotes = load_bands(path, CHAIN_EXPIRIES)
        r = bounds_from_quotes(path, payoff, expiries=CHAIN_EXPIRIES, grid=GRID)
    for q in quotes:
        assert abs(q.forward - 100.0) <= 1e-9 and abs(q.discount - 1.0) <= 1e-12
    assert r.success and r.info["dropped_quotes"] == 0
    # zero bids: the 80, 85 puts and 115, 120 calls of the first expiry (mid < 0.5), the 120
    # call and the bidless 80 put of the second; no ask: the 110 call of the second
    assert (r.info["no_bid"], r.info["no_ask"]) == (6, 1)
    assert abs(r.lower - rows_lp(rows, payoff, "lower")) <= 1e-6
    assert abs(r.upper - rows_lp(rows, payoff, "upper")) <= 1e-6
    for side in ("lower", "upper"):
        assert verify_quote_hedge(getattr(r, f"{side}_side").info["hedge"], r).ok


def test_one_sided_quotes_bind(one_sided_chain):
    # the tight one-sided quotes move the straddle's bounds: without them (the calibration's
    # two-sided filter) the lower bound is 0 and the upper 0.105; with them 0.0023 and 0.10347
    # (measured), both far beyond the 1e-6 solver tolerance
    import warnings

    from deepquant.mmot.quote_bands import load_bands

    path, rows = one_sided_chain
    payoff = ForwardStartStraddle(t1=1, t2=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two_sided, _ = load_bands(path, CHAIN_EXPIRIES, one_sided=False)
        with_them, _ = load_bands(path, CHAIN_EXPIRIES)
    plain = bounds_from_quotes(two_sided, payoff, grid=GRID)
    full = bounds_from_quotes(with_them, payoff, grid=GRID)
    assert full.lower >= plain.lower + 1e-3 and full.upper <= plain.upper - 1e-3
    kept = [r for r in rows if r[8] and float(r[8]) > 0 and r[9]]
    assert abs(plain.lower - rows_lp(kept, payoff, "lower")) <= 1e-6


def test_fitted_marginals_on_the_grid_and_lp_methods():
    # fitted= laws (date 0 included) make repair="calibration" work without a CalibrationResult:
    # bands shifted away from the walk's prices are widened to them, so the walk's bounds lie
    # inside (LP tolerance 1e-9); the interior-point LP gives the same bounds (1e-9)
    bands = walk_bands()
    shifted = QuoteBands(bands.labels, bands.times, bands.k, bands.is_call,
                         tuple(b + 0.003 for b in bands.bid), tuple(a + 0.003 for a in bands.ask))
    fitted = Marginals(GRID, walk_laws(), [0.0, 1 / 12, 2 / 12, 3 / 12])
    payoff = PAYOFFS[1]
    with pytest.raises(ValueError, match="no arbitrage-free law"):
        bounds_from_quotes(shifted, payoff, grid=GRID)
    q = bounds_from_quotes(shifted, payoff, grid=GRID, repair="calibration", fitted=fitted)
    f = bounds(fitted, payoff, method="lp")
    assert q.info["repaired"] and q.info["widened_quotes"] > 0 and q.info["band_widening"] > 0
    assert q.lower <= f.lower + 1e-9 and f.upper <= q.upper + 1e-9
    ipm = bounds_from_quotes(shifted, payoff, grid=GRID, repair="calibration", fitted=fitted,
                             lp_method="highs-ipm")
    assert abs(ipm.lower - q.lower) <= 1e-9 and abs(ipm.upper - q.upper) <= 1e-9
    with pytest.raises(ValueError, match="lp_method must be one of"):
        bounds_from_quotes(bands, payoff, grid=GRID, lp_method="simplex")
    other = Marginals(GRID, walk_laws(), [0.0, 1 / 12, 2 / 12, 4 / 12])
    with pytest.raises(ValueError, match="do not match the 3 expiries"):
        bounds_from_quotes(bands, payoff, grid=GRID, repair="calibration", fitted=other)
    coarse = Marginals(GRID[1:-1], walk_laws(2)[:, 1:-1], [0.0, 1 / 12, 2 / 12])
    with pytest.raises(ValueError, match="are not on the grid of 7 points"):
        bounds_from_quotes(bands, payoff, grid=GRID, fitted=coarse)
    with pytest.raises(TypeError, match="fitted must be a Marginals"):
        bounds_from_quotes(bands, payoff, grid=GRID, fitted=walk_laws())


@pytest.mark.parametrize("strike", [1e20, 1e300])
def test_quote_lp_solves_a_payoff_of_huge_scale(strike):
    """A forward-start straddle |X_2 / X_1 - k| with k of 1e20-1e300 on the walk's grid near 1:
    HiGHS returned no solution on these objective coefficients (status 15, "not recognized")
    until the LP was scaled. Every path pays k - X_2 / X_1, so both bounds equal k to 1e-12
    relative, and the bracket is the right way round."""
    res = bounds_from_quotes(walk_bands(), ForwardStartStraddle(t1=1, t2=2, strike=strike),
                             grid=GRID, method="lp")
    assert res.success, res.message
    assert res.lower <= res.upper
    assert res.lower == pytest.approx(strike, rel=1e-12)
    assert res.upper == pytest.approx(strike, rel=1e-12)


def test_the_relaxation_to_the_expiries_read_bounds_the_whole_problem():
    # the forward start between expiries 1 and 3 of the walk: the exact LP of expiries 1 and 3
    # alone gives positions in their quotes (none at expiry 2); the whole problem's exact sweep
    # certifies them at the relaxed LP's value (to 1e-8: the envelope of an envelope is
    # itself), outside the whole problem's exact LP; the pipeline reports the attempt, and its
    # bounds hold the LP with hedges that hold on every path
    from deepquant.mmot.relaxed import quote_relaxation

    bands = walk_bands()
    payoff = ForwardStartStraddle(t1=1, t2=3)
    lp = bounds_from_quotes(bands, payoff, grid=FINE, method="lp")
    keep = [0, 2]
    sub = QuoteBands(("1m", "3m"), bands.times[keep],
                     *(tuple(getattr(bands, f)[s] for s in keep)
                       for f in ("k", "is_call", "bid", "ask")))
    sub_lp = bounds_from_quotes(sub, ForwardStartStraddle(t1=1, t2=2), grid=FINE, method="lp")
    prob = lp.info["problem"]
    for side in ("lower", "upper"):
        sign = 1.0 if side == "upper" else -1.0
        best, report = quote_relaxation(prob, side)
        a = best[1]
        assert report["dates"] == (1, 3)
        assert sign * best[0] == pytest.approx(getattr(sub_lp, side), abs=1e-8)
        assert report["certified"] == pytest.approx(report["bound"], abs=1e-8)
        assert best[0] >= sign * getattr(lp, side) - 1e-8
        assert np.all(a[prob.off[1]:prob.off[2]] == 0) and np.any(a != 0)
    res = bounds_from_quotes(bands, payoff, grid=FINE, method="certified", coarse=5)
    assert res.lower <= lp.lower + 1e-8 and res.upper >= lp.upper - 1e-8
    for side in ("lower", "upper"):
        s = getattr(res, f"{side}_side")
        assert s.info["relaxation"]["dates"] == (1, 3)
        assert verify_quote_hedge(s.info["hedge"], res).ok
    assert quote_relaxation(prob_of(bands, AsianCall(strike=1.0)), "upper") is None


def prob_of(bands, payoff):
    return bounds_from_quotes(bands, payoff, grid=GRID, method="lp").info["problem"]
