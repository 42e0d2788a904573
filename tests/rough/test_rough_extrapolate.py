"""Richardson extrapolation in the time step and in the exercise dates, the precision target,
and the result protocol of the rough engine."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from deepquant.payoffs import EuropeanCall, EuropeanPut, ForwardStartCall
from deepquant.results import ConvergenceWarning
from deepquant.rough import (
    BermudanPricer,
    BermudanResult,
    ConvergedResult,
    RoughBergomi,
    preset_pricer,
    price_american,
    price_converged,
    richardson,
)
from deepquant.rough.engine import exercise_payoff
from deepquant.rough.extrapolate import scaled_level_options
from tests.result_protocol import ResultProtocol


# ---------------------------------------------------------------- richardson (closed forms)
@pytest.mark.parametrize("rate", [0.5, 1.0, 2.0])
def test_richardson_recovers_the_limit_of_a_power_law(rate):
    # P(N) = A + c N^-p exactly: one Richardson step with the true p gives A to rounding
    levels = [12, 24, 48]
    values = [3.0 + 0.7 * n**-rate for n in levels]
    ex = richardson(levels, values, rate=rate)
    assert ex.value == pytest.approx(3.0, abs=1e-12)
    assert ex.error == pytest.approx(0.0, abs=1e-12)        # both pairs agree exactly
    assert ex.observed_rate == pytest.approx(rate, rel=1e-9)


def test_richardson_error_covers_a_second_order_term():
    # P(N) = A + c/N + d/N^2 with rate 1: the remaining error of the last pair is d/(N1 N2);
    # the estimate (difference of the two extrapolations) must cover it
    A, c, d = 6.0, 0.8, 5.0
    levels = [12, 24, 48]
    ex = richardson(levels, [A + c / n + d / n**2 for n in levels], rate=1.0)
    true_err = abs(ex.value - A)
    assert true_err == pytest.approx(d / (24 * 48), rel=1e-9)
    assert ex.error >= true_err


def test_richardson_propagates_standard_errors():
    # two levels, ratio 2, rate 1: value = 2 P2 - P1, stderr = sqrt(4 s2^2 + s1^2)
    ex = richardson([10, 20], [1.0, 1.5], [0.03, 0.04], rate=1.0)
    assert ex.value == pytest.approx(2.0)
    assert ex.error == pytest.approx(0.5)
    assert ex.stderr == pytest.approx(math.hypot(2 * 0.04, 0.03))
    assert math.isnan(ex.observed_rate)


@pytest.mark.parametrize("kw, match", [
    (dict(levels=[1], values=[1.0]), "length >= 2"),
    (dict(levels=[2, 1], values=[1.0, 2.0]), "increasing"),
    (dict(levels=[1, 2], values=[1.0, float("nan")]), "finite"),
    (dict(levels=[1, 2], values=[1.0, 2.0], rate=0.0), "rate must be"),
])
def test_richardson_bad_input(kw, match):
    kw.setdefault("rate", 1.0)
    with pytest.raises(ValueError, match=match):
        richardson(kw.pop("levels"), kw.pop("values"), rate=kw.pop("rate"))


# ---------------------------------------------------------------- payoffs and results
def test_engine_takes_a_library_payoff():
    pricer = preset_pricer("bs", n_dates=4, n_regression=2**11, batch_size=2**10,
                           min_batches=2, max_batches=2, dual_fit="regression")
    m = RoughBergomi.black_scholes(sigma=0.2)
    a = pricer(m, EuropeanPut(strike=100.0), rng=5)
    b = pricer(m, 100.0, option="put", rng=5)
    assert (a.lower, a.upper) == (b.lower, b.upper)        # the same streams, the same run
    assert a.option == "put" and a.strike == 100.0
    c = pricer(m, EuropeanCall(strike=100.0), rng=5)
    assert c.option == "call"
    assert a.success and a.status in ("patience", "max_batches", "tol") and a.message
    assert "Black-Scholes" in a.model and "4 exercise dates" in a.model
    d = a.to_dict()
    assert d["success"] is True and BermudanResult.from_dict(d) == a
    with pytest.raises(ValueError, match="'forward-start-call'.*no early-exercise value"):
        pricer(m, ForwardStartCall())
    with pytest.raises(ValueError, match="strike must be"):
        exercise_payoff(-1.0)
    with pytest.raises(ValueError, match="option must be"):
        exercise_payoff(100.0, "straddle")


def test_unreached_tolerance_is_reported():
    pricer = preset_pricer("bs", n_dates=4, n_regression=2**11, batch_size=2**10,
                           min_batches=2, max_batches=2, dual_fit="regression", tol=1e-9)
    with pytest.warns(ConvergenceWarning, match="tol=1e-09 was not reached"):
        res = pricer(RoughBergomi.black_scholes(sigma=0.2), 100.0, rng=1)
    assert not res.success and res.status == "max_batches"
    assert "tol=1e-09 was not reached" in res.message


# ---------------------------------------------------------------- converged prices
SMALL_RB = dict(n_dates=4, n_regression=2**11, batch_size=2**10, min_batches=2, max_batches=2,
                dual_fit="regression", exercise_basis=preset_pricer("bs").exercise_basis,
                martingale_basis=preset_pricer("bs").martingale_basis)


def test_price_converged_is_the_richardson_limit_of_its_runs():
    pricer = BermudanPricer(**SMALL_RB)
    res = price_converged(RoughBergomi(), 100.0, pricer=pricer, steps=(1, 2), rate=0.5, rng=3)
    assert [r.model.split(" on ")[1].split(" steps")[0] for r in res.runs] == ["4", "8"]
    mids = [r.value for r in res.runs]
    c = 1.0 / (2**0.5 - 1.0)
    assert res.value == pytest.approx(mids[1] + c * (mids[1] - mids[0]), rel=1e-12)
    assert res.discretisation_error == pytest.approx(c * abs(mids[1] - mids[0]), rel=1e-12)
    assert res.error >= res.discretisation_error + 0.5 * res.gap
    assert "continuous-time model" in res.model and res.status == "no_target"
    # the stored covariance of the midpoints gives the reported standard error back
    w = np.array(res.time_grid.weights)
    assert res.stderr == pytest.approx(math.sqrt(w @ np.array(res.midpoint_cov) @ w),
                                       rel=1e-9)
    d = res.to_dict()
    assert len(d["runs"]) == 2 and d["time_grid"]["rate"] == 0.5


def test_precision_target_refines_the_grid_then_says_why_not():
    pricer = BermudanPricer(**SMALL_RB)
    with pytest.warns(ConvergenceWarning, match="discretisation error estimate"):
        res = price_converged(RoughBergomi(), 100.0, pricer=pricer, steps=(1, 2), tol=1e-6,
                              max_steps_per_date=4, rng=3)
    assert len(res.runs) == 3                      # one refinement (4 steps), then the cap
    assert not res.success and res.status == "tol_not_met"
    assert "discretisation error estimate" in res.message and "max_steps_per_date=4" in (
        res.message)
    with pytest.raises(ValueError, match="tol must be"):
        price_converged(RoughBergomi(), 100.0, pricer=pricer, tol=-1.0)
    with pytest.raises(ValueError, match="steps must be"):
        price_converged(RoughBergomi(), 100.0, pricer=pricer, steps=(2, 3))
    # before: 1.5 truncated to 1, and the message showed [1, 3]
    with pytest.raises(ValueError, match=re.escape("steps must be integers, got [1.5, 3]")):
        price_converged(RoughBergomi(), 100.0, pricer=pricer, steps=(1.5, 3))


@pytest.mark.parametrize("cap", [float("nan"), float("inf"), 0, 16.0, True])
def test_bad_refinement_cap_is_rejected_before_any_run(cap):
    """NaN or inf as ``max_steps_per_date`` never stopped the doubling while ``tol`` was not
    met (each grid twice the cost of the last): an error naming it, before the first run."""

    def ran(result):
        raise AssertionError("a run started before the options were checked")

    with pytest.raises(ValueError, match=f"max_steps_per_date must be an integer >= 1, got "
                                         f"{cap!r}"):
        price_converged(RoughBergomi(), 100.0, pricer=BermudanPricer(**SMALL_RB), steps=(1, 2),
                        tol=1e-9, max_steps_per_date=cap, callback=ran)


@pytest.mark.slow  # ~85 s on the shared 2-core box
def test_american_put_black_scholes_against_quantlib(ql_put):
    # Black-Scholes limit (exact scheme): the extrapolation in the number of exercise dates
    # (12, 24, 48) must land within its own total error of QuantLib's American FD price
    # (the Bermudan values themselves sit below it by ~0.03-0.05).
    pricer = preset_pricer("bs", n_regression=2**14, batch_size=2**12, min_batches=4,
                           max_batches=4, dual_fit="regression")
    m = RoughBergomi.black_scholes(sigma=0.2)
    res = price_american(m, 100.0, pricer=pricer, total_steps=48, coarse_total_steps=None,
                         rng=2)
    ref = ql_put(100.0, 100.0, 0.05, 0.2, 1.0, None, grid=1000)
    assert abs(res.value - ref) <= res.error, (res.value, ref, res.error)
    assert res.runs[0].value < ref                   # the 12-date Bermudan is below
    assert "exact scheme" in res.model
    with pytest.raises(ValueError, match="total_steps must be a multiple"):
        price_american(m, 100.0, pricer=pricer, total_steps=50)


def test_american_level_options_set_each_runs_budget_and_are_checked():
    # default "scaled": twice the regression paths after the first number of dates, twice the
    # inner paths on the finest; the coarse-grid run takes the options of the first dates
    m = RoughBergomi.black_scholes(sigma=0.2)
    pricer = BermudanPricer(**SMALL_RB)
    assert scaled_level_options(pricer, [2, 4, 8]) == {
        4: {"n_regression": 2**12},
        8: {"n_regression": 2**12, "subsim_inner": 2 * pricer.subsim_inner}}
    res = price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=4,
                         coarse_total_steps=2, rng=3)
    assert [r.n_regression for r in res.runs] == [2**11, 2**12, 2**11]
    assert [r.n_dates for r in res.runs] == [2, 4, 2]
    assert res.lower <= res.value <= res.upper
    # a numpy integer is an integer (fifth pass: "must be a multiple of 4, got np.int64(4)")
    same = price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=np.int64(4),
                          coarse_total_steps=2, rng=3)
    assert same.value == res.value
    for bad in (0, 4.0, True):
        with pytest.raises(ValueError, match=r"total_steps must be a multiple of the largest "
                                             r"number of dates 4 \(an integer >= 1\)"):
            price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=bad)
    res = price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=4,
                         coarse_total_steps=2, rng=3, level_options={2: {"n_regression": 2**12}})
    assert [r.n_regression for r in res.runs] == [2**12, 2**11, 2**12]
    for bad, match in [([(4, {})], "level_options must be 'scaled', a dict"),
                       ("double", "level_options must be 'scaled'"),
                       ({8: {"n_regression": 2**12}}, r"keys must be numbers of dates among "
                                                      r"\[2, 4\], got 8"),
                       ({True: {}}, "keys must be numbers of dates"),
                       ({4: {"batch_size": 2**9}}, r"level_options\[4\] must be a dict with "
                                                   "keys among"),
                       ({4: 2**12}, r"level_options\[4\] must be a dict")]:
        with pytest.raises(ValueError, match=match):
            price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=4,
                           level_options=bad)
    # the pricer's own checks under the argument's name (fifth pass: "n_regression must be
    # ..." did not say it came from level_options[4])
    with pytest.raises(ValueError, match=r"level_options\[4\]: n_regression must be an integer "
                                         ">= 1, got 0"):
        price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=4,
                       coarse_total_steps=2, level_options={4: {"n_regression": 0}})
    with pytest.raises(ValueError, match=r"level_options\[2\]: dual must be"):
        price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=4,
                       coarse_total_steps=2, level_options={2: {"dual": "bogus"}})


def test_simulation_grid_is_unchanged_by_a_torch_device():
    pytest.importorskip("torch")
    m = RoughBergomi()
    a = m.simulate(2**8, n_steps=48, rng=4)
    b = m.simulate(2**8, n_steps=48, rng=4, device="cpu")
    c = m.simulate(2**8, n_steps=48, rng=4, device="cpu", dtype="float32")
    # float64 torch: the same map up to FFT rounding; float32: ~1e-6 relative (measured
    # 5e-6 max over 2^15 paths x 96 steps), far below Monte Carlo error
    np.testing.assert_allclose(b.S, a.S, rtol=1e-12)
    np.testing.assert_allclose(b.V, a.V, rtol=1e-10)
    np.testing.assert_allclose(c.S, a.S, rtol=2e-5)
    np.testing.assert_allclose(c.V, a.V, rtol=2e-5)
    with pytest.raises(ValueError, match="dtype must be"):
        m.simulate(2**4, n_steps=4, rng=1, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="device must be"):
        m.simulate(2**4, n_steps=4, rng=1, device="no-such-device")


class TestConvergedResult(ResultProtocol):
    result_type = ConvergedResult

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        return price_converged(RoughBergomi(), 100.0, pricer=BermudanPricer(**SMALL_RB),
                               steps=(1, 2), rate=0.5, rng=3)

    @pytest.fixture
    def failure(self):
        # a 1e-6 relative target: the duality gap of these small runs is far above it
        return lambda: price_converged(RoughBergomi(), 100.0, pricer=BermudanPricer(**SMALL_RB),
                                       steps=(1, 2), tol=1e-6, max_steps_per_date=2, rng=3)


def test_american_three_time_grids_extend_the_two_grid_run():
    # a list of coarse grids adds 12-date runs (here 2 dates) on coarser coupled grids: the
    # runs of the two-grid call are unchanged (the finest draw and the coarsening are the
    # same; exact to rounding), the time-grid error is the difference of the last two
    # Richardson extrapolations (closed form below, 1e-12 relative), and the value is the
    # date extrapolation plus the three-grid shift
    m, pricer, p = RoughBergomi(), BermudanPricer(**SMALL_RB), 0.7
    two = price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=8,
                         coarse_total_steps=4, rate=p, rng=3)
    three = price_american(m, 100.0, pricer=pricer, dates=(2, 4), total_steps=8,
                           coarse_total_steps=(2, 4), rate=p, rng=3)
    assert [r.value for r in three.runs[:2]] + [three.runs[3].value] == pytest.approx(
        [r.value for r in two.runs], rel=1e-12)
    p2, p4, p8 = three.runs[2].value, three.runs[3].value, three.runs[0].value
    c = 1.0 / (2**p - 1.0)
    assert three.time_grid.levels == (2.0, 4.0, 8.0)
    assert three.time_grid.value == pytest.approx(p8 + c * (p8 - p4), rel=1e-12)
    assert three.time_grid.error == pytest.approx(
        abs(p8 + c * (p8 - p4) - p4 - c * (p4 - p2)), rel=1e-12)
    assert three.value == pytest.approx(three.dates.value + three.time_grid.value - p8,
                                        rel=1e-12)
    assert three.discretisation_error == pytest.approx(
        three.dates.error + three.time_grid.error, rel=1e-12)
    # the stored covariance gives the value's standard error back (weights: the date
    # extrapolation, minus the finest 2-date run, plus the grid extrapolation)
    C = np.array(three.midpoint_cov)
    w = np.zeros(4)
    w[:2] = three.dates.weights
    w[0] -= 1.0
    w[[2, 3, 0]] += three.time_grid.weights
    assert C.shape == (4, 4) and np.allclose(C, C.T)
    assert three.stderr == pytest.approx(math.sqrt(w @ C @ w), rel=1e-9)
    assert "from 2, 4 steps" in three.model


@pytest.mark.parametrize("coarse", [(2,), (4, 2), (1, 2, 4), (), "4", 4.0, True, (2, 4, 8)])
def test_american_bad_coarse_grids_are_rejected_before_any_run(coarse):
    def ran(result):
        raise AssertionError("a run started before the options were checked")

    with pytest.raises(ValueError, match=r"coarse_total_steps must be total_steps / 2 = 4 .*"
                                         r"got " + re.escape(repr(coarse))):
        price_american(RoughBergomi(), 100.0, pricer=BermudanPricer(**SMALL_RB), dates=(2, 4),
                       total_steps=8, coarse_total_steps=coarse, callback=ran)


@pytest.mark.parametrize("call", ["price_converged", "price_american", "ensemble"])
def test_callbacks_are_checked_before_the_first_run(call):
    """Library fuzz, third pass: a callback that is not callable was "'int' object is not
    callable" after the first run (minutes of work on the default sizes); now a TypeError
    naming it before any run (on main this tiny pricer ran, then failed with numpy's words)."""
    import deepquant.rough as rough

    tiny = BermudanPricer(n_dates=2, steps_per_date=2, n_regression=2**7, batch_size=2**6,
                          min_batches=2, max_batches=2)
    name = "progress" if call == "ensemble" else "callback"
    extra = {"runs": 2, "backend": "serial"} if call == "ensemble" else {}
    if call == "price_american":
        extra = {"dates": (2, 4), "total_steps": 8, "coarse_total_steps": 4}
    with pytest.raises(TypeError, match=f"{name} must be callable or None, got int"):
        getattr(rough, call)(RoughBergomi(), 100.0, pricer=tiny, rng=0, **{name: 1}, **extra)
