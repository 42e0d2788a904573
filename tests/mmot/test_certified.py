"""Certified bounds at scale (DESIGN §2.8): the exact concave-envelope sweep and the smoothed
dual, checked against the exact LP (an independent solver) and by invariants."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.market.synthetic import heston_marginals
from deepquant.mmot import envelope
from deepquant.mmot.augment import build_chain
from deepquant.mmot.bounds import bounds
from deepquant.mmot.certified import nest_supports
from deepquant.mmot.colgen import solve_chain_colgen
from deepquant.mmot.hedge import superhedge, verify_hedge
from deepquant.mmot.multiscale import certified_bounds
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import make_payoff
from tests.conftest import martingale_kernel_marginals, random_walk_marginals

CASES = [
    ("asian-call", dict(strike=100.0)),
    ("lookback-call", dict(strike=100.0)),
    ("forward-start-straddle", dict(t1=1, t2=3)),
    ("up-and-out-call", dict(strike=100.0, barrier=102.0)),
]


@pytest.fixture(scope="module")
def rw():
    return Marginals(*random_walk_marginals(4))


def _lp_potentials(res, sw: _Sweeper, side: str) -> np.ndarray:
    """The LP's static potentials u_1..u_T in the sweep's (sign-flipped) layout."""
    sign = 1.0 if side == "upper" else -1.0
    u = sign * getattr(res, f"{side}_side").duals.u
    return np.concatenate([u[t, sw.supp[t]] for t in range(1, sw.T + 1)])


@pytest.mark.parametrize("name,params", CASES)
def test_sweep_of_the_lp_potentials_is_the_lp_value(rw, name, params):
    """Strong duality through the sweep: for the LP's optimal u, the exact envelope sweep
    gives the cheapest superhedge, whose value is the LP optimum (HiGHS, 1e-9 accuracy)."""
    payoff = make_payoff(name, **params)
    lp = bounds(rw, payoff, method="lp")
    chain = build_chain(rw, payoff)
    for side, sign in (("upper", 1.0), ("lower", -1.0)):
        sw = _Sweeper(chain, rw, sign)
        value, _, viol = sw.hard(_lp_potentials(lp, sw, side), verify=True)
        assert sign * value == pytest.approx(getattr(lp, side), abs=1e-8)
        assert viol.max() <= 1e-12


def _random_asian(seed):
    """(rng, marginals, exact LP bounds, chain) of an ATM Asian call on 4 random martingale
    dates of 9 points."""
    rng = np.random.default_rng(seed)
    mg = Marginals(*martingale_kernel_marginals(rng, n_dates=4, size=9))
    payoff = make_payoff("asian-call", strike=1.0)
    return rng, mg, bounds(mg, payoff, method="lp"), build_chain(mg, payoff)


@pytest.mark.parametrize("seed", [0, 1])
def test_potentials_lowered_to_their_lines_keep_the_envelopes_and_a_valid_bound(seed):
    """Lowering each u_{t+1}(y) by its slack under the period-t supporting lines keeps every
    envelope (the positions are unchanged), so the bound drops by exactly sum mu slack and stays
    valid (on the LP's side of the optimum); ``certify`` reports the lower of the two."""
    rng, mg, lp, chain = _random_asian(seed)
    for side, sign in (("upper", 1.0), ("lower", -1.0)):
        sw = _Sweeper(chain, mg, sign)
        u = rng.normal(scale=0.3, size=sw.mu_flat.size)
        value, per_t, _, drop = sw.hard(u, slack=True)
        assert drop.min() >= 0.0 and drop @ sw.mu_flat > 1e-3
        estimate, lowered = sw.lower_to_lines(u)
        low_value, low_t, viol = sw.hard(lowered, verify=True)
        assert low_value == pytest.approx(value - drop @ sw.mu_flat, abs=1e-12)
        assert estimate == pytest.approx(low_value, abs=1e-12)
        for (v0, *_), (v1, *_) in zip(per_t, low_t):
            np.testing.assert_allclose(v1, v0, atol=1e-12)
        cert = sw.certify(u)[0]
        assert cert == pytest.approx(low_value + viol.sum(), abs=1e-12)
        assert sign * cert >= sign * getattr(lp, side) - 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_potentials_give_a_valid_bound(seed):
    """Weak duality: random u certify an upper bound >= the LP maximum and a lower bound <= the
    LP minimum (the sweep picks h and the constant, so validity does not depend on u)."""
    rng, mg, lp, chain = _random_asian(seed)
    for side, sign in (("upper", 1.0), ("lower", -1.0)):
        sw = _Sweeper(chain, mg, sign)
        for _ in range(5):
            u = rng.normal(scale=0.3, size=sw.mu_flat.size)
            value, _, viol = sw.hard(u, verify=True)
            if side == "upper":
                assert value + viol.sum() >= lp.upper - 1e-12
            else:
                assert -(value + viol.sum()) <= lp.lower + 1e-12


def test_smoothed_gradient_matches_finite_differences(rw):
    """The smoothed dual's gradient (mu - law of the smoothed chain) against central differences
    (rtol 1e-5: the Newton solves of h stop at a drift of 1e-12 of the grid span)."""
    payoff = make_payoff("lookback-call", strike=100.0)
    chain = build_chain(rw, payoff)
    sw = _Sweeper(chain, rw, 1.0)
    rng = np.random.default_rng(3)
    u = rng.normal(scale=0.2, size=sw.mu_flat.size)
    eps = 0.05
    _, grad, _, _, _ = sw.soft(u, eps, 40.0)
    for k in rng.choice(u.size, size=6, replace=False):
        d = np.zeros_like(u)
        d[k] = 1e-5
        fp = sw.soft(u + d, eps, 40.0)[0]
        fm = sw.soft(u - d, eps, 40.0)[0]
        assert (fp - fm) / 2e-5 == pytest.approx(grad[k], rel=1e-5, abs=1e-8)


def test_smoothed_value_tends_to_the_exact_sweep(rw):
    """For fixed u the smoothed envelope tends to the exact one as eps -> 0 (bias of order
    eps log(#points))."""
    payoff = make_payoff("asian-call", strike=100.0)
    chain = build_chain(rw, payoff)
    sw = _Sweeper(chain, rw, 1.0)
    u = np.random.default_rng(0).normal(scale=0.1, size=sw.mu_flat.size)
    hard = sw.hard(u)[0]
    errs = [abs(sw.soft(u, eps, 40.0)[0] - hard) for eps in (1e-1, 1e-2, 1e-3, 1e-4)]
    assert errs[-1] < 1e-3 * 13 * 3
    assert errs[-1] < errs[0]


@pytest.mark.parametrize("name,params", CASES[:3])
def test_certified_bracket_closes_on_the_lp_values(rw, name, params):
    """Small chains are solved exactly by column generation: the outer bound (its potentials
    swept exactly) and the inner value (its feasible plan) both equal the LP bounds (the DESIGN
    §2.3 random-walk values) to 1e-6 relative, and bracket them."""
    payoff = make_payoff(name, **params)
    lp = bounds(rw, payoff, method="lp")
    res = certified_bounds(rw, payoff, rtol=1e-6)
    assert res.method == "certified" and res.success and res.status == "certified"
    for side, s in (("lower", -1.0), ("upper", 1.0)):
        got = getattr(res, f"{side}_side")
        want = getattr(lp, side)
        assert got.info["inner_kind"] == "LP (column generation)"
        assert got.status == "certified"         # each side within rtol, in the protocol's word
        assert s * (got.value - want) >= -1e-9  # the outer bound is valid
        assert s * (want - got.info["inner"]) >= -1e-9  # the inner value is a feasible plan's
        assert abs(got.value - got.info["inner"]) <= 1e-6 * abs(want)
        assert got.info["violation"] <= 1e-12 and got.primal_residual <= 1e-8


@pytest.mark.parametrize("name,params", CASES[:3])
def test_smoothed_stages_bracket_the_lp_values(rw, name, params):
    """Without the exact polish (the route of large chains) the smoothed stages still give a
    valid outer bound within rtol of the LP when they report success."""
    payoff = make_payoff(name, **params)
    lp = bounds(rw, payoff, method="lp")
    res = certified_bounds(rw, payoff, rtol=1e-4, polish=False)
    assert res.lower <= lp.lower + 1e-10
    assert res.upper >= lp.upper - 1e-10
    for side in ("lower", "upper"):
        s = getattr(res, f"{side}_side")
        assert s.info["inner_kind"] == "smoothed chain"
        assert s.info["violation"] <= 1e-12
        if s.status == "certified":
            assert abs(getattr(res, side) - getattr(lp, side)) <= 2e-4 * abs(getattr(lp, side))


def test_certified_superhedge_dominates_on_every_path(rw):
    payoff = make_payoff("lookback-call", strike=100.0)
    res = certified_bounds(rw, payoff, rtol=1e-3)
    for side in ("lower", "upper"):
        hedge = superhedge(res, rw, payoff, side)
        check = verify_hedge(hedge, rw, payoff, atol=1e-9)
        assert check.margin >= -1e-9, check
        assert check.cost == pytest.approx(getattr(res, side), abs=1e-9)


def test_auto_picks_the_lp_when_small_and_certified_beyond(rw, monkeypatch):
    payoff = make_payoff("asian-call", strike=100.0)
    assert bounds(rw, payoff).method == "lp"
    # the package re-exports the function ``bounds``, which shadows the module attribute
    monkeypatch.setattr(sys.modules["deepquant.mmot.bounds"], "LP_MAX_COLUMNS", 10)
    res = bounds(rw, payoff, rtol=1e-3)
    assert res.method == "certified"
    assert res.lower <= 0.639112 and res.upper >= 0.794666


def test_nest_supports_moves_tail_mass_onto_the_hull():
    grid = np.linspace(0.5, 1.5, 11)
    w = np.zeros((3, 11))
    w[0, 5] = 1.0
    w[1, [0, 4, 6]] = [1e-13, 0.5 - 1e-13, 0.5]   # 1e-13 at 0.5, outside supp mu_2's hull
    w[2, [1, 5, 9]] = [0.25, 0.5, 0.25]
    mg = Marginals(grid, w, check_convex=False, mean_tol=1e-9)
    fixed, moved = nest_supports(mg, 2)
    assert moved == pytest.approx(1e-13, rel=1e-9)
    assert fixed.weights[1, 0] == 0.0 and fixed.weights[1, 1] == pytest.approx(1e-13)
    w[1, 0], w[1, 4] = 1e-3, 0.5 - 1e-3
    bad = Marginals(grid, w, check_convex=False, mean_tol=1e-2)
    with pytest.raises(ValueError, match=r"marginals\[1\] has mass 1\.000e-03 outside"):
        nest_supports(bad, 2)


def test_certified_errors(rw):
    payoff = make_payoff("asian-call", strike=100.0)
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        certified_bounds(rw, payoff, rtol=0.0)
    with pytest.raises(ValueError, match="eps_factor must be in"):
        certified_bounds(rw, payoff, eps_factor=1.5)
    with pytest.raises(ValueError, match="pairwise only"):
        certified_bounds(rw, make_payoff("sum-squared-increments"))
    with pytest.raises(ValueError, match="sides must be"):
        certified_bounds(rw, payoff, sides=("middle",))
    for workers in (0, 3, True, "2", 2.0):
        with pytest.raises(ValueError, match=r"workers must be 1 or 2, got"):
            certified_bounds(rw, payoff, workers=workers)


@pytest.mark.parametrize("max_seconds", [float("nan"), -1.0, "1", True, None])
def test_bad_time_budget_is_rejected_before_the_chain_is_built(rw, monkeypatch, max_seconds):
    """A NaN budget never runs out (every comparison with NaN is false) and a negative one
    silently returned the wide start certificate: both are errors naming the option, raised
    before the augmented chain is built. A string or None failed in a comparison ("'>='
    not supported"), True ran as 1 s."""
    import deepquant.mmot.multiscale as multiscale

    def built(*args, **kwargs):
        raise AssertionError("the chain was built before the options were checked")

    monkeypatch.setattr(multiscale, "build_chain", built)
    with pytest.raises(ValueError,
                       match=r"max_seconds must be a number.*got (nan|-1\.0|'1'|True|None)"):
        certified_bounds(rw, make_payoff("asian-call", strike=100.0), max_seconds=max_seconds)


@pytest.mark.parametrize("tol", [float("nan"), -1.0, "1e-3", True])
def test_bad_inner_resid_tol_is_rejected_before_the_chain_is_built(rw, monkeypatch, tol):
    """The fit an inner chain needs for a certified side: a NaN one never fitted (silently
    wide), and the polish, which reads it last, refused it only after the whole budget."""
    import deepquant.mmot.multiscale as multiscale

    def built(*args, **kwargs):
        raise AssertionError("the chain was built before the options were checked")

    monkeypatch.setattr(multiscale, "build_chain", built)
    with pytest.raises(ValueError, match="inner_resid_tol must be a finite number >= 0"):
        certified_bounds(rw, make_payoff("asian-call", strike=100.0), inner_resid_tol=tol)


def test_column_generation_reports_its_rounds(rw):
    """The exact route reports every LP round through ``progress`` (eps = 0), and its
    restricted values increase to the final inner value (a max over growing column sets)."""
    seen = []
    res = certified_bounds(rw, make_payoff("lookback-call", strike=100.0), sides=("upper",),
                           progress=seen.append)
    assert seen and all(p.eps == 0.0 and p.side == "upper" for p in seen)
    assert [p.stage for p in seen] == list(range(1, len(seen) + 1))
    values = [p.inner for p in seen]
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(res.upper_side.info["inner"], abs=1e-9)


@pytest.mark.parametrize("name,params", CASES[:3])
def test_every_column_generation_round_brackets_the_lp(rw, name, params):
    """Each round's restricted value is a feasible plan's (<= the LP optimum) and its potentials
    swept exactly are a valid bound (>= the LP optimum), so every round brackets the LP value
    (the exact LP, an independent solver); the last round closes the bracket to 1e-9."""
    payoff = make_payoff(name, **params)
    lp = bounds(rw, payoff, method="lp")
    for side, s in (("lower", -1.0), ("upper", 1.0)):
        seen = []
        certified_bounds(rw, payoff, sides=(side,), progress=seen.append)
        want = getattr(lp, side)
        assert seen and all(np.isfinite(p.outer) for p in seen)
        for p in seen:
            assert s * (p.outer - want) >= -1e-9
            assert s * (want - p.inner) >= -1e-9
        assert abs(seen[-1].outer - seen[-1].inner) <= 1e-9 * max(1.0, abs(want))


def test_column_generation_variants_reach_the_same_lp_value(rw):
    """The textbook rule (price until no move violates), the certificate stop and the per-round
    best-response moves all end at the LP optimum (exact LP, an independent solver) to 1e-9,
    and the certificate stop never takes more rounds than the textbook rule."""
    payoff = make_payoff("forward-start-straddle", t1=1, t2=3)
    want = bounds(rw, payoff, method="lp").upper
    sw = _Sweeper(build_chain(rw, payoff), rw, 1.0)
    u0 = np.zeros(sw.mu_flat.size)
    runs = {name: solve_chain_colgen(sw, u0, **opts) for name, opts in
            (("textbook", dict(certify_stop=False, contact_k=0)),
             ("certified", dict(contact_k=0)), ("contact", dict(contact_k=1)))}
    for res in runs.values():
        assert res.status == "optimal"
        assert res.value == pytest.approx(want, abs=1e-9)
        assert sw.certify(res.u)[0] == pytest.approx(want, abs=1e-9)
    assert runs["certified"].nit <= runs["textbook"].nit


def test_inner_above_the_outer_bound_is_clipped_and_reported(rw):
    """An inner value above the certified outer bound (a smoothed chain's marginal error, or an
    LP plan within the solver's tolerance) cannot stand in a bracket: the side keeps the outer
    bound, reports the excess, and its gap is zero, never negative."""
    from deepquant.mmot.certified import side_result

    payoff = make_payoff("lookback-call", strike=100.0)
    sw = _Sweeper(build_chain(rw, payoff), rw, 1.0)
    cert = sw.certify(np.zeros(sw.mu_flat.size))
    side = side_result(sw, 1.0, 0.0, cert, cert[0] + 0.25, 0.0, "restricted LP", 0, "", {})
    assert side.value == pytest.approx(cert[0], abs=1e-12)
    assert side.gap == 0.0 and side.info["inner"] == pytest.approx(cert[0], abs=1e-12)
    assert side.info["inner_excess"] == pytest.approx(0.25, abs=1e-12)


def test_time_budget_is_kept_inside_a_stage():
    """The budget is checked before every smoothed sweep, so a stage with a huge iteration limit
    stops on time (measured before the check: 44 s for a 0.3 s budget on this chain); the bound
    it returns is still valid (>= the exact optimum, solved here by column generation)."""
    m = heston_marginals(np.arange(6) * 30 / 365, grid=np.linspace(0.55, 1.45, 25))
    payoff = make_payoff("lookback-call", strike=1.0)
    exact = certified_bounds(m, payoff, sides=("upper",))
    assert exact.upper_side.info["inner_kind"] == "LP (column generation)"
    res = certified_bounds(m, payoff, sides=("upper",), polish_max_states=0, multiscale=0,
                           max_iter=100_000, gtol=0.0, eps_end=1e-12, rtol=1e-14,
                           max_seconds=0.3)
    assert res.timings["upper"] < 5.0
    assert res.upper >= exact.upper_side.info["inner"] - 1e-9
    assert res.upper_side.status == "certified-wide"


def test_coarse_start_is_valid_and_closes_on_the_lp():
    # 41 points started from the 21-point level (its chain LP is small: solved exactly by
    # HiGHS, the polish threshold keeps column generation off the 41-point chain): with the
    # budget spent at once the
    # side is the interpolated coarse potentials' certificate, valid (contains the LP to 1e-8)
    # with the coarse inner as its labelled estimate; with a budget the fine stages tighten it
    # (never worse than the start) to within 1e-3 of the LP (measured 3e-4 at the end of the
    # eps schedule)
    m = heston_marginals(np.arange(3) * 30 / 365, grid=np.linspace(0.7, 1.3, 41))
    payoff = make_payoff("lookback-call", strike=1.0)
    lp = bounds(m, payoff, method="lp")
    opts = dict(method="certified", polish_max_states=30, multiscale=1)
    quick = bounds(m, payoff, max_seconds=1e-9, **opts)
    full = bounds(m, payoff, max_seconds=60.0, **opts)
    for res in (quick, full):
        assert res.lower <= lp.lower + 1e-8 and res.upper >= lp.upper - 1e-8
        for side in ("lower", "upper"):
            assert getattr(res, f"{side}_side").info["coarse"]["size"] == 21
    for side in ("lower", "upper"):
        s = getattr(quick, f"{side}_side")
        assert s.info["inner_kind"] == "coarse grid of 21 points (LP (HiGHS))"
        assert s.info["stages"] == 0 and "time budget" in s.message
        # the coarse plan's miss on the 41-point marginals: the LP's row residual (HiGHS,
        # below 1e-7) plus the laws' move, twice the mass of the dropped points (exact:
        # linear splitting moves each dropped point's mass onto kept points)
        dropped = np.ones(m.size, dtype=bool)
        dropped[::2] = dropped[-1] = False
        moved = 2 * float(np.asarray(m.weights)[1:, dropped].sum())
        assert s.info["coarse"]["marginal_distance"] == pytest.approx(moved, abs=1e-12)
        assert s.info["inner_marginal_bound"] == pytest.approx(moved, abs=1e-7)
    assert full.lower >= quick.lower and full.upper <= quick.upper
    assert lp.lower - full.lower <= 1e-3 * lp.lower and full.upper - lp.upper <= 1e-3 * lp.upper


def test_lp_columns_counts_the_chain_lp_and_the_lp_level_is_exact():
    # the count that picks the LP level equals the built LP's columns; a level solved by the LP
    # is certified (its potentials swept exactly) at the LP's value on both sides
    from deepquant.mmot.certified import lp_columns
    from deepquant.mmot.lp import build_chain_lp
    from deepquant.mmot.multiscale import _lp_side

    m = heston_marginals(np.arange(4) * 30 / 365, grid=np.linspace(0.7, 1.3, 21))
    for name in ("asian-call", "european-call", "lookback-call"):
        payoff = make_payoff(name, strike=1.0)
        marg, _ = nest_supports(m, payoff.last_date(m.n_dates))
        chain = build_chain(marg, payoff)
        assert lp_columns(chain) == build_chain_lp(chain, marg).a_eq.shape[1]
    lp = bounds(m, payoff, method="lp")  # the lookback
    for side in ("lower", "upper"):
        s = _lp_side(chain, marg, side, {})
        assert s.status == "certified" and s.info["inner_kind"] == "LP (HiGHS)"
        assert abs(s.value - getattr(lp, side)) <= 1e-9 and 0 <= s.gap <= 1e-9


def test_level_budget_split():
    # above the work level (more chain-LP columns than the threshold) a level passes
    # ABOVE_SHARE down; the first level under it is the work level (WORK_SHARE to its coarse
    # levels), the levels below pass BELOW_SHARE on; the LP level at the bottom gets all of its
    # parent's budget; only the levels above the work level wait for predicted sweeps to fit
    from deepquant.mmot._levels import ABOVE_SHARE, BELOW_SHARE, WORK_SHARE, coarse_share, is_above

    assert coarse_share(10**6, 6e5, "above", False) == (ABOVE_SHARE, "above")
    assert coarse_share(5 * 10**5, 6e5, "above", False) == (WORK_SHARE, "below")
    assert coarse_share(10**5, 6e5, "below", False) == (BELOW_SHARE, "below")
    assert coarse_share(10**6, 6e5, "above", True) == (1.0, "above")
    assert coarse_share(10**5, 6e5, "below", True) == (1.0, "below")
    assert is_above(10**6, 6e5, "above") and not is_above(10**5, 6e5, "above")
    assert not is_above(10**6, 6e5, "below")
    assert 0 < BELOW_SHARE < 1 and 0 < WORK_SHARE < ABOVE_SHARE < 1


def test_inner_rule_prefers_a_fitted_chain_then_the_larger_value_then_the_better_fit():
    from deepquant.mmot.certified import better_inner

    # the rule: a fitting chain beats any unfitted one; among fitting ones the larger value;
    # while none fits, the better fit (an unmeasured NaN error is never beaten by a non-fit)
    assert better_inner(1.0, 1e-4, 2.0, 0.5, 1e-3) and not better_inner(1.0, 0.5, 2.0, 1e-4, 1e-3)
    assert better_inner(2.0, 1e-4, 1.0, 1e-4, 1e-3) and not better_inner(1.0, 1e-4, 2.0, 0.0, 1e-3)
    assert better_inner(0.0, 0.1, 1.0, 0.5, 1e-3) and not better_inner(0.0, 0.1, 1.0, np.nan, 1e-3)


def _kernel_signatures() -> dict:
    return {name: list(f.signatures) for name, f in envelope.kernels().items()}


def test_kernel_warmup_runs_once_and_covers_the_sweeps(rw, monkeypatch):
    """``warm_kernels`` runs every kernel once per process (a second call returns 0.0 at once)
    with the signatures the sweeps use: a certified side after it compiles nothing new, so no
    compilation falls inside a side's budget."""
    monkeypatch.setattr(envelope, "_WARM", False)
    assert envelope.warm_kernels() > 0.0
    before = _kernel_signatures()
    t0 = time.perf_counter()
    assert envelope.warm_kernels() == 0.0
    assert time.perf_counter() - t0 < 1e-3  # a flag check
    payoff = make_payoff("asian-call", strike=100.0)
    certified_bounds(rw, payoff, sides=("lower",), polish=False, max_iter=20)
    assert _kernel_signatures() == before


def test_bound_does_not_depend_on_the_kernel_warmup(rw, monkeypatch):
    """``certified_bounds`` warms the kernels before the first side's clock and reports the
    seconds (``info["warmup_seconds"]``: > 0 in a process whose flag is cleared, 0.0 after);
    the bound is the same either way, bit for bit (the smoothed stages end on their schedule,
    far inside the 5 s budget, so the budget does not cut them)."""
    payoff = make_payoff("asian-call", strike=100.0)
    opts = dict(sides=("lower",), polish=False, max_seconds=5.0)
    monkeypatch.setattr(envelope, "_WARM", False)
    first = certified_bounds(rw, payoff, **opts)
    again = certified_bounds(rw, payoff, **opts)
    assert first.info["warmup_seconds"] > 0.0 and again.info["warmup_seconds"] == 0.0
    assert "time budget" not in first.lower_side.message
    assert first.lower == again.lower and first.lower_side.info["inner"] == \
        again.lower_side.info["inner"]
