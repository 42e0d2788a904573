"""The relaxation to the dates a payoff reads: its bounds bracket the exact LP of the whole
chain from outside, its potentials certified on the chain give the same bound, and the
certified pipeline adopts that certificate only where it is tighter."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from deepquant.market.synthetic import heston_marginals
from deepquant.mmot import relaxed as module
from deepquant.mmot.augment import build_chain
from deepquant.mmot.bounds import bounds
from deepquant.mmot.certified import nest_supports, side_result
from deepquant.mmot.relaxed import adopt_relaxed, relaxed_bounds
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import (
    AsianCall,
    ForwardStartCall,
    ForwardStartStraddle,
    LookbackCall,
)


def _case(payoff, size=13, dates=5):
    m = heston_marginals(np.arange(dates) * 30 / 365, grid=np.linspace(0.7, 1.3, size))
    mm, _ = nest_supports(m, payoff.last_date(m.n_dates))
    return mm, build_chain(mm, payoff)


def _weak_side(chain, mm, sense):
    """A certified side of ``chain`` from zero potentials (a valid, loose bound) with the
    exact LP's value as its inner value."""
    sign = 1.0 if sense == "upper" else -1.0
    sw = _Sweeper(chain, mm, sign)
    best = sw.certify(np.zeros(sw.mu_flat.size))
    return sw, best


@pytest.mark.parametrize("payoff, expected, relaxed", [
    (ForwardStartStraddle(t1=1, t2=4), (1, 4), ForwardStartStraddle(t1=0, t2=1)),
    (ForwardStartCall(strike=1.1, t1=0), (0, 4), ForwardStartCall(strike=1.1, t1=0, t2=1)),
    (ForwardStartStraddle(t1=2, t2=3), None, None),
    (AsianCall(strike=1.0), None, None),
    (LookbackCall(strike=1.0), None, None),
])
def test_own_dates_name_the_dates_read_and_the_payoff_on_them(payoff, expected, relaxed):
    assert payoff.own_dates(5) == expected
    if expected is None:
        return
    assert payoff.on_dates(expected) == relaxed
    # with today kept in front (the quote problem's date 0) the dates shift by one
    if expected[0] > 0:
        assert payoff.on_dates((0, *expected)) == replace(payoff, t1=1, t2=2)
    # the same values on paths of the kept dates as on the whole paths
    paths = np.random.default_rng(0).uniform(0.5, 1.5, size=(50, 5))
    np.testing.assert_array_equal(payoff.on_dates(expected).evaluate(paths[:, list(expected)]),
                                  payoff.evaluate(paths))


@pytest.mark.parametrize("dates", [(1, 3), (2, 1, 4), (1, 1, 4), "14"])
def test_on_dates_needs_increasing_dates_holding_those_read(dates):
    with pytest.raises(ValueError, match="dates must be increasing"):
        ForwardStartStraddle(t1=1, t2=4).on_dates(dates)
    with pytest.raises(ValueError, match="reads every date"):
        AsianCall(strike=1.0).on_dates((1, 4))


@pytest.mark.parametrize("payoff", [ForwardStartStraddle(t1=1, t2=4),
                                    ForwardStartCall(strike=1.05, t1=1, t2=4),
                                    ForwardStartStraddle(strike=0.95, t1=1, t2=3)])
def test_relaxed_bounds_hold_the_exact_lp_and_certify_on_the_chain(payoff):
    # dropping the dates in between can only widen the bounds: relaxed lower <= LP lower and
    # relaxed upper >= LP upper (HiGHS's 1e-7 tolerances times the payoff's scale); the
    # relaxation's potentials, certified by the chain's exact sweep, give its bound to 1e-7
    # (the positions h(X_t1) held from t1 to t2 are among the chain's) and stay valid
    mm, chain = _case(payoff)
    lp = bounds(mm, payoff, method="lp")
    rel = relaxed_bounds(mm, payoff, ("lower", "upper"))
    t1, t2 = rel.info["dates"]
    assert (t1, t2) == payoff.own_dates(mm.n_dates)
    assert rel.lower <= lp.lower + 1e-7 and rel.upper >= lp.upper - 1e-7
    for sense, opt in (("lower", lp.lower), ("upper", lp.upper)):
        sw, weak = _weak_side(chain, mm, sense)
        side = side_result(sw, sw.sign, time.perf_counter(), weak, sw.sign * opt, 0.0,
                           "exact LP", 1, "weak start", {})
        out = adopt_relaxed(side, rel, chain, mm, sense, rtol=1e-4)
        report = out.info["relaxation"]
        assert report["adopted"] and report["dates"] == (t1, t2)
        bound = rel.lower if sense == "lower" else rel.upper
        assert out.value == pytest.approx(bound, abs=1e-7 * sw.scale)
        assert sw.sign * out.value >= sw.sign * opt - 1e-9
        assert out.gap == pytest.approx(sw.sign * (out.value - opt), abs=1e-12)
        assert "relaxation to dates" in out.message
        # the side's potentials are its certificate: certified again, the same bound
        again = sw.certify(sw.flatten(out.info["u_sweep"]))
        assert sw.sign * again[0] == pytest.approx(out.value, abs=1e-12)


def test_a_tighter_side_keeps_its_certificate():
    # the exact side (the LP value as both bound and inner value): the relaxation is looser or
    # equal, nothing is adopted, the side is unchanged but for the report
    payoff = ForwardStartStraddle(t1=1, t2=4)
    mm, chain = _case(payoff)
    rel = relaxed_bounds(mm, payoff, ("lower", "upper"))
    res = bounds(mm, payoff, method="certified", max_seconds=30)
    for sense in ("lower", "upper"):
        side = res.lower_side if sense == "lower" else res.upper_side
        out = adopt_relaxed(side, rel, chain, mm, sense, rtol=1e-4)
        assert out.value == side.value and out.gap == side.gap
        assert out.info["relaxation"]["adopted"] is (out.value != side.value)


def test_the_pipeline_reports_the_relaxation_and_brackets_the_lp():
    payoff = ForwardStartStraddle(t1=1, t2=4)
    mm, _ = _case(payoff)
    lp = bounds(mm, payoff, method="lp")
    res = bounds(mm, payoff, method="certified", max_seconds=30)
    assert res.info["relaxation"]["dates"] == (1, 4)
    assert res.lower <= lp.lower + 1e-7 and res.upper >= lp.upper - 1e-7
    assert res.info["relaxation"]["lower"] <= res.lower + 1e-12
    assert res.info["relaxation"]["upper"] >= res.upper - 1e-12
    for side, opt in ((res.lower_side, lp.lower), (res.upper_side, lp.upper)):
        assert "relaxation" in side.info
        assert min(side.value, side.info["inner"]) - 1e-7 <= opt \
            <= max(side.value, side.info["inner"]) + 1e-7


def test_no_relaxation_where_every_date_is_read_or_the_grid_is_large(monkeypatch):
    mm, _ = _case(AsianCall(strike=1.0))
    assert relaxed_bounds(mm, AsianCall(strike=1.0), ("lower",)) is None
    assert relaxed_bounds(mm, ForwardStartStraddle(t1=3, t2=4), ("lower",)) is None
    monkeypatch.setattr(module, "MAX_POINTS", mm.size - 1)
    assert relaxed_bounds(mm, ForwardStartStraddle(t1=1, t2=4), ("lower",)) is None
    res = bounds(mm, ForwardStartStraddle(t1=1, t2=4), method="certified", max_seconds=5)
    assert res.info["relaxation"] is None


def test_a_relaxation_that_fails_or_falls_short_is_no_failure(monkeypatch):
    # the interior point method refusing the two dates (a ValueError: their laws out of convex
    # order by the round-off of the periods between) leaves no relaxation; one short of its
    # rtol warns nothing, since only the certificate on the chain counts
    import warnings

    from deepquant.mmot import ipm
    from deepquant.results import ConvergenceWarning

    payoff = ForwardStartStraddle(t1=1, t2=4)
    mm, _ = _case(payoff)

    def refuse(*args, **kwargs):
        raise ValueError("marginals are not in convex order")

    monkeypatch.setattr(ipm, "ipm_bounds", refuse)
    assert relaxed_bounds(mm, payoff, ("lower", "upper")) is None
    monkeypatch.undo()
    real = ipm.ipm_bounds

    def short(*args, **kwargs):
        warnings.warn("IPM bounds: not converged", ConvergenceWarning, stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(ipm, "ipm_bounds", short)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rel = relaxed_bounds(mm, payoff, ("lower", "upper"))
    assert rel is not None and rel.info["dates"] == (1, 4)


def test_the_resolution_study_and_the_report_say_which_bounds_came_from_the_relaxation():
    from deepquant import report
    from deepquant.demo_report import bounds_from, resolution_markdown
    from deepquant.mmot.resolution import resolution_study

    fine = heston_marginals(np.arange(1, 5) * 30 / 365, grid=np.linspace(0.7, 1.3, 61))
    payoffs = {"straddle": ForwardStartStraddle(t1=1, t2=4), "asian": AsianCall(strike=1.0)}
    # no time for the chain's own stages: the straddle's bounds are the relaxation's
    entries = resolution_study(fine, payoffs, [13], method="certified", max_seconds=1e-6)
    by_label = {e.label: e.to_dict() for e in entries}
    straddle, asian = by_label["straddle"], by_label["asian"]
    assert straddle["lower_from"] == straddle["upper_from"] == "relaxation to dates 1, 4"
    assert asian["lower_from"] == asian["upper_from"] == ""
    assert bounds_from(straddle) == "both: relaxation to dates 1, 4"
    assert bounds_from(asian) == ""
    assert bounds_from(dict(straddle, upper_from="")) == "lower: relaxation to dates 1, 4"
    assert bounds_from({}) == ""  # an entry saved before the field existed
    text = resolution_markdown([straddle, asian], report, 13)
    assert "| both: relaxation to dates 1, 4 |" in text and "| - |" in text


@pytest.mark.parametrize("sense", ["lower", "upper"])
def test_a_final_certificate_shares_the_path_passes_between_two_processes(sense):
    # with the relaxation's certificate (final: no polish moves it) and two workers, the
    # child runs the first round of classes and the parent the later one; the best chain of
    # both is the serial search's, every pass of both is reported, and the bound is untouched
    from deepquant.mmot.beside import fork_available, inner_beside_polish
    from deepquant.mmot.markov_inner import InnerSearch
    from deepquant.mmot.multiscale import INNER_RESID_TOL, MARGINAL_TOL

    if not fork_available():
        pytest.skip("no fork on this system")
    payoff = ForwardStartStraddle(t1=1, t2=4)
    mm, chain = _case(payoff, size=25)
    lp = bounds(mm, payoff, method="lp")
    opt = lp.lower if sense == "lower" else lp.upper
    rel = relaxed_bounds(mm, payoff, (sense,))
    sw, weak = _weak_side(chain, mm, sense)
    loose = sw.sign * opt - 0.5 * abs(opt)  # a poor inner value on other marginals
    side = side_result(sw, sw.sign, time.perf_counter(), weak, loose, 1.0, "coarse grid", 1,
                       "weak start", {})
    side = adopt_relaxed(side, rel, chain, mm, sense, rtol=1e-12)
    assert side.info["relaxation"]["adopted"]
    tols = dict(inner_resid_tol=INNER_RESID_TOL, rtol=1e-12)
    out = inner_beside_polish(side, chain, mm, sense, markov_seconds=60.0, max_seconds=120.0,
                              polish=False, **tols)
    path = out.info["path"]
    assert path["shared"] and path["status"] == "done", path
    names = {"markov", "dual", "mixed"}
    assert set(path["tried"]) == names | {f"{n}, 32 classes" for n in names}
    assert out.value == side.value and "polish" not in out.info
    serial = InnerSearch(side, chain, mm, sense)
    serial.markov(60.0)
    best = max(v for v, *_ in serial.path(120.0))
    assert sw.sign * path["value"] == pytest.approx(best, abs=1e-12)
    assert out.info["inner"] == pytest.approx(max(sw.sign * best, out.value) if sense == "lower"
                                              else min(best, out.value), abs=1e-12)
    assert out.primal_residual <= MARGINAL_TOL
    lo, hi = sorted((out.value, out.info["inner"]))
    assert lo - 1e-8 <= opt <= hi + 1e-8
