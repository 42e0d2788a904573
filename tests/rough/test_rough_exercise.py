"""Payoffs of the Bermudan engine (``deepquant.rough.exercise``): spot payoffs priced against
closed forms and direct Monte Carlo, the no-early-exercise invariant of the call, named
rejection of path-dependent payoffs, public imports."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from deepquant.blackscholes import bs_price
from deepquant.payoffs import (
    AsianCall,
    AsianPut,
    BarrierCall,
    BarrierPut,
    EuropeanCall,
    EuropeanPut,
    ForwardStartCall,
    ForwardStartStraddle,
    LookbackCall,
    LookbackPut,
    SumSquaredIncrements,
)
from deepquant.rough import (
    BermudanPricer,
    ExerciseBasis,
    MartingaleBasis,
    RoughBergomi,
    preset_pricer,
    price_bermudan,
)
from deepquant.rough.exercise import check_exercise_payoff, exercise_payoff, option_name

BS = RoughBergomi.black_scholes(sigma=0.2, r=0.05, S0=100.0)
K_SE = 4.0  # Monte Carlo checks: within 4 standard errors (fixed seeds)


def _bs(payoff, T: float = 1.0) -> float:
    return float(bs_price(100.0, payoff.strike, 0.2, T, rate=0.05,
                          is_call=isinstance(payoff, EuropeanCall)))


@pytest.mark.parametrize("payoff", [EuropeanPut(strike=105.0), EuropeanCall(strike=95.0)],
                         ids=lambda p: p.name)
def test_exercise_at_maturity_only_is_the_black_scholes_european(payoff):
    """One exercise date (T) and none at t = 0: the Bermudan price is the European price, and
    in the Black-Scholes limit (one exact log-Euler step) the closed form. The plain lower bound
    is a Monte Carlo mean (4 stderr); the control-variate lower bound and the upper bound are
    E[Z_T - M_T] with the fitted martingale (its payoff increments replicate Z_T almost
    exactly here: measured stderr ~1e-8), so 4 stderr plus 1e-6 for round-off."""
    pricer = preset_pricer("bs", n_dates=1, exercise_at_zero=False, n_regression=2**11,
                           batch_size=2**11, min_batches=4, max_batches=4,
                           dual_fit="regression")
    res = pricer(BS, payoff, rng=11)
    ref = _bs(payoff)
    assert res.option == option_name(payoff) and res.strike == payoff.strike
    assert abs(res.lower_plain - ref) <= K_SE * res.lower_plain_stderr
    assert abs(res.lower - ref) <= K_SE * res.lower_stderr + 1e-6
    assert abs(res.upper - ref) <= K_SE * res.upper_stderr + 1e-6
    assert res.lower <= res.upper + 1e-9
    assert not res.exercise_at_zero


def _direct_european(model: RoughBergomi, payoff, n_steps: int) -> tuple[float, float]:
    """exp(-r T) g(S_T) by plain Monte Carlo on the same grid (independent stream)."""
    paths = model.simulate(2**15, T=1.0, n_steps=n_steps, method="mc", rng=99)
    g = math.exp(-model.r) * payoff.terminal(paths.S[:, -1], None)
    return float(g.mean()), float(g.std(ddof=1) / math.sqrt(g.size))


SMALL_ROUGH = BermudanPricer(steps_per_date=4, n_regression=2**11, batch_size=2**11,
                             min_batches=4, max_batches=4, dual="subsim", subsim_outer=2**8,
                             subsim_inner=16, exercise_basis=ExerciseBasis(sig_level=1),
                             martingale_basis=MartingaleBasis(sig_level=1))


@pytest.mark.parametrize("payoff", [EuropeanPut(strike=100.0), EuropeanCall(strike=100.0)],
                         ids=lambda p: p.name)
def test_rough_bergomi_exercise_at_maturity_is_the_direct_european(payoff):
    """Rough Bergomi, one exercise date at T: lower and upper bound (sub-simulation dual) both
    estimate the European price of the discretised model; the reference is a direct Monte Carlo
    mean of exp(-r T) g(S_T) on the same grid (2^15 paths). Tolerance: 4 standard errors of the
    difference (measured: within 1.3)."""
    pricer = replace(SMALL_ROUGH, n_dates=1, exercise_at_zero=False)
    res = pricer(RoughBergomi(), payoff, rng=7)
    ref, ref_se = _direct_european(RoughBergomi(), payoff, pricer.n_steps)
    assert res.dual_method == "subsim"
    assert abs(res.lower - ref) <= K_SE * math.hypot(res.lower_stderr, ref_se)
    assert abs(res.upper - ref) <= K_SE * math.hypot(res.upper_stderr, ref_se)


def test_bermudan_call_without_dividends_is_the_european_call():
    """Discounted S is a martingale and r > 0, so early exercise of a call never pays (Merton
    1973): the Bermudan call (4 dates and t = 0) is the Black-Scholes European call 10.4506.
    The 95% intervals must bracket it, the policy must not lose value against it (lower within
    4 stderr) and the dual must be tight (measured gap 0.04% of the price; asserted < 0.2%)."""
    pricer = preset_pricer("bs", n_dates=4, n_regression=2**12, batch_size=2**11,
                           min_batches=4, max_batches=4, dual_fit="regression")
    payoff = EuropeanCall(strike=100.0)
    res = pricer(BS, payoff, rng=3)
    ref = _bs(payoff)
    assert res.lower_ci[0] <= ref <= res.upper_ci[1]
    assert abs(res.lower - ref) <= K_SE * res.lower_stderr
    assert res.lower <= res.upper
    assert res.gap < 2e-3 * ref


def test_rough_bergomi_bermudan_call_is_the_direct_european():
    """The call invariant under rough Bergomi (log-Euler keeps discounted S a martingale on the
    grid): 3 dates, sub-simulation dual; the intervals (widened by 4 stderr of the direct Monte
    Carlo reference) bracket the direct European price."""
    pricer = replace(SMALL_ROUGH, n_dates=3)
    payoff = EuropeanCall(strike=100.0)
    res = pricer(RoughBergomi(), payoff, rng=5)
    ref, ref_se = _direct_european(RoughBergomi(), payoff, pricer.n_steps)
    assert res.lower_ci[0] - K_SE * ref_se <= ref <= res.upper_ci[1] + K_SE * ref_se
    assert res.lower <= res.upper


@pytest.mark.parametrize("payoff, why", [
    (ForwardStartCall(t1=2), "remembered.*no early-exercise value"),
    (ForwardStartStraddle(), "remembered.*no early-exercise value"),
    (SumSquaredIncrements(), "whole path.*price it as a European"),
], ids=lambda p: getattr(p, "name", ""))
def test_payoffs_without_early_exercise_value_are_rejected_by_name(payoff, why):
    """The payoffs whose truncated payoff is not defined or never worth exercising early are
    refused with their name and the reason, at the public entry points (before any
    simulation)."""
    match = f"'{payoff.name}'.*{why}"
    with pytest.raises(ValueError, match=match):
        exercise_payoff(payoff)
    with pytest.raises(ValueError, match=match):
        price_bermudan(BS, payoff, n_dates=2, steps_per_date=1)


@pytest.mark.parametrize("payoff", [
    AsianCall(strike=100.0), AsianPut(strike=100.0), LookbackCall(strike=100.0),
    LookbackPut(strike=100.0), BarrierCall(strike=100.0, barrier=120.0),
    BarrierPut(strike=100.0, barrier=80.0, barrier_type="down-and-in"),
], ids=lambda p: p.name)
def test_path_dependent_payoffs_are_accepted(payoff):
    """Asian, lookback and barrier payoffs have an early-exercise value (the payoff truncated
    at the exercise date, tests/rough/test_rough_path_payoffs.py)."""
    assert exercise_payoff(payoff) is payoff
    with pytest.raises(ValueError, match="payoff dates="):
        BermudanPricer(n_dates=4)(BS, replace(payoff, dates=(1, 2)))


def test_spot_payoffs_are_accepted_and_dated_ones_refused():
    put, call = EuropeanPut(strike=90.0), EuropeanCall(strike=110.0)
    assert check_exercise_payoff(put) is put and exercise_payoff(call) is call
    assert exercise_payoff(90.0) == put and exercise_payoff(110.0, "call") == call
    assert (option_name(put), option_name(call)) == ("put", "call")
    with pytest.raises(ValueError, match="'european-put' has date=3.*date=None"):
        exercise_payoff(EuropeanPut(strike=100.0, date=3))
    with pytest.raises(ValueError, match="strike must be a finite number > 0"):
        exercise_payoff(EuropeanCall(strike=-1.0))
    with pytest.raises(ValueError, match="strike must be"):
        exercise_payoff(np.nan)


def test_public_imports_are_kept():
    """The split modules stay importable from where they were."""
    import deepquant.rough as rough
    from deepquant.rough import engine, exercise, lsm, result

    assert engine.exercise_payoff is exercise.exercise_payoff is rough.exercise_payoff
    assert lsm.check_exercise_payoff is exercise.check_exercise_payoff
    assert engine.BermudanResult is result.BermudanResult is rough.BermudanResult
