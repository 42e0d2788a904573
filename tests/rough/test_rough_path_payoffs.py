"""Path-dependent payoffs as Bermudan exercise values (``deepquant.rough.exercise``): exercising
at t_j pays the payoff truncated at t_j. Independent references: a Black-Scholes closed form
(barrier in-out parity), direct Monte Carlo of the European payoff, a one-dimensional
quadrature of the two-date Bermudan (the continuation at t_1 is a Black-Scholes put), the
no-early-exercise invariant of a lookback call at r = 0; the sub-simulation's inner paths
continue the payoff statistic; bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from deepquant.blackscholes import bs_price
from deepquant.payoffs import (
    AsianCall,
    AsianPut,
    BarrierPut,
    ForwardStartCall,
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
)
from deepquant.rough.exercise import exercise_payoff, truncated_payoff
from deepquant.rough.lsm import fit_lsm
from deepquant.rough.subsim import (
    _Inner,
    features_at,
    fit_value_function,
    inner_exercise,
    subsim_pathwise,
)

K_SE = 4.0  # Monte Carlo checks: within 4 standard errors (fixed seeds)
SIGMA, R, S0 = 0.2, 0.05, 100.0
BS = RoughBergomi.black_scholes(sigma=SIGMA, r=R, S0=S0)


def _bs_pricer(**kw) -> BermudanPricer:
    opts = dict(n_regression=2**12, batch_size=2**11, min_batches=4, max_batches=4,
                dual_fit="regression")
    opts.update(kw)
    return preset_pricer("bs", **opts)


def _direct(payoff, n_dates: int, model=BS, r: float = R, n: int = 2**16,
            steps_per_date: int = 1) -> tuple[float, float]:
    """exp(-r T) payoff(X_0..X_N) by plain Monte Carlo on the dates i / N (independent
    stream), with its standard error."""
    paths = model.simulate(n, T=1.0, n_steps=n_dates * steps_per_date, method="mc", rng=99)
    g = math.exp(-r) * payoff.evaluate(paths.S[:, ::steps_per_date])
    return float(g.mean()), float(g.std(ddof=1) / math.sqrt(g.size))


# ----------------------------------------------------------------------- the definition
def test_exercise_value_is_the_payoff_of_the_truncated_path():
    """h_j = payoff.evaluate(X_0..X_{i_j}): the running average of X_1..X_j (the Asian), the
    running minimum of X_0..X_j (the lookback put), the barrier flag so far; exact."""
    X = np.array([[100.0, 90.0, 120.0, 80.0, 110.0]])
    h, a = truncated_payoff(AsianPut(strike=100.0), X[:, :3])
    assert a[0] == pytest.approx(105.0) and h[0] == 0.0
    h, a = truncated_payoff(AsianPut(strike=100.0), X[:, :4])
    assert a[0] == pytest.approx(290.0 / 3) and h[0] == pytest.approx(10.0 / 3)
    h, a = truncated_payoff(LookbackPut(strike=100.0), X[:, :4])
    assert (a[0], h[0]) == (80.0, 20.0)
    out = BarrierPut(strike=100.0, barrier=115.0, barrier_type="up-and-out")
    assert truncated_payoff(out, X[:, :2])[0][0] == 10.0         # alive, (100 - 90)^+
    assert truncated_payoff(out, X[:, :4])[0][0] == 0.0          # knocked out at X_2 = 120
    pricer = _bs_pricer(n_dates=4)
    paths = pricer.simulate(BS, 8, 1)
    Z, _ = pricer.exercise_arrays(BS, exercise_payoff(LookbackPut(strike=100.0)), paths)
    disc = np.exp(-R * paths.times)
    for j in range(5):
        want = np.maximum(100.0 - paths.S[:, : j + 1].min(axis=1), 0.0) * disc[j]
        np.testing.assert_allclose(Z[:, j], want, rtol=1e-12)


# ----------------------------------------------------------------------- (1) one exercise date
def test_one_exercise_date_barrier_in_plus_out_is_the_black_scholes_put():
    """Exercise only at T, barrier monitored on 12 payoff dates: up-and-in + up-and-out =
    the European put, Black-Scholes closed form 5.5735. Both runs use the same seed (the same
    paths); tolerance 4 standard errors of each lower bound, and the upper bounds (duals) above
    the closed form within 4 stderr (measured: 0.7241 + 4.8494 = 5.57353, within 1e-7: the
    two least-squares martingales add up to the one of the put, which replicates it)."""
    pricer = _bs_pricer(n_dates=1, exercise_at_zero=False, steps_per_date=12, payoff_dates=12)
    kw = dict(strike=100.0, barrier=110.0)
    res_in = pricer(BS, BarrierPut(barrier_type="up-and-in", **kw), rng=4)
    res_out = pricer(BS, BarrierPut(barrier_type="up-and-out", **kw), rng=4)
    ref = float(bs_price(S0, 100.0, SIGMA, 1.0, rate=R, is_call=False))
    se = res_in.lower_stderr + res_out.lower_stderr
    assert abs(res_in.lower + res_out.lower - ref) <= K_SE * se
    assert res_in.upper + res_out.upper >= ref - K_SE * (res_in.upper_stderr
                                                         + res_out.upper_stderr)
    assert res_in.payoff == "up-and-in-put" and res_in.option == "put"


@pytest.mark.parametrize("payoff", [AsianCall(strike=100.0), LookbackPut(strike=100.0)],
                         ids=lambda p: p.name)
def test_one_exercise_date_is_the_direct_european(payoff):
    """Exercise only at T, payoff on 12 dates: the Bermudan is the European payoff; the
    reference is a direct Monte Carlo mean (2^16 independent paths). Tolerance: 4 standard
    errors of the difference for the lower bound; the interval [lower CI low, upper CI high]
    widened by 4 reference stderr contains it."""
    pricer = _bs_pricer(n_dates=1, exercise_at_zero=False, steps_per_date=12, payoff_dates=12)
    res = pricer(BS, payoff, rng=7)
    ref, ref_se = _direct(payoff, 12)
    assert abs(res.lower - ref) <= K_SE * math.hypot(res.lower_stderr, ref_se)
    assert res.lower_ci[0] - K_SE * ref_se <= ref <= res.upper_ci[1] + K_SE * ref_se


# ----------------------------------------------------------------------- (2) brackets
def test_rough_bergomi_asian_exercised_at_maturity_only_is_bracketed():
    """Rough Bergomi, sub-simulation dual, an at-the-money Asian call averaging 4 payoff dates,
    exercise at t = 0 (pays (S0 - K)^+ = 0: dominated) and T only: the Bermudan is the European
    Asian (direct Monte Carlo on the same grid, 2^15 paths). Both bounds within 4 standard
    errors of the difference, so the 95% intervals widened by 4 reference stderr bracket it,
    and lower <= upper within their standard errors."""
    model = RoughBergomi()
    pricer = BermudanPricer(n_dates=1, steps_per_date=4, payoff_dates=4, n_regression=2**11,
                            batch_size=2**11, min_batches=4, max_batches=4, dual="subsim",
                            subsim_outer=2**7, subsim_inner=16, martingale_ridge=1e-2,
                            exercise_basis=ExerciseBasis(sig_level=1),
                            martingale_basis=MartingaleBasis(sig_level=1))
    payoff = AsianCall(strike=100.0)
    res = pricer(model, payoff, rng=7)
    ref, ref_se = _direct(payoff, 4, model=model, n=2**15)
    assert res.dual_method == "subsim" and res.payoff == "asian-call"
    assert abs(res.lower - ref) <= K_SE * math.hypot(res.lower_stderr, ref_se)
    assert abs(res.upper - ref) <= K_SE * math.hypot(res.upper_stderr, ref_se)
    assert res.lower_ci[0] - K_SE * ref_se <= ref <= res.upper_ci[1] + K_SE * ref_se
    assert res.lower <= res.upper + K_SE * math.hypot(res.lower_stderr, res.upper_stderr)


def test_lookback_call_at_zero_rate_is_never_exercised_early():
    """r = 0: the running maximum only grows, so (M_j - K)^+ is non-decreasing in j on every
    path and exercise at T is optimal; the Bermudan lookback call on 6 dates is the European
    one (direct Monte Carlo, 2^16 paths). The intervals (widened by 4 reference stderr) bracket
    it and lower <= upper within their standard errors."""
    model = RoughBergomi.black_scholes(sigma=SIGMA, r=0.0, S0=S0)
    payoff = LookbackCall(strike=100.0)
    res = _bs_pricer(n_dates=6)(model, payoff, rng=2)
    ref, ref_se = _direct(payoff, 6, model=model, r=0.0)
    assert res.lower_ci[0] - K_SE * ref_se <= ref <= res.upper_ci[1] + K_SE * ref_se
    assert res.lower <= res.upper + K_SE * math.hypot(res.lower_stderr, res.upper_stderr)


# ----------------------------------------------------------------------- (3) quadrature
def _two_date_reference(payoff, K: float) -> float:
    """Bermudan with exercise at t = 0, 1/2 and 1 (payoff dates = exercise dates), Black-
    Scholes, by one-dimensional quadrature over S_1 = S_{1/2}: given (S_1, A_1) the
    continuation at t_1 is a Black-Scholes put,
        lookback put: E_1[(K - min(m_1, S_2))^+] = (K - m_1)^+ + e^{r tau} P(S_1; min(K, m_1)),
        Asian put:    E_1[(K - (S_1 + S_2)/2)^+] = e^{r tau} P(S_1; 2K - S_1) / 2,
    with m_1 = min(S_0, S_1) and P the discounted put over tau = 1/2; V_1 = max(exercise,
    continuation), V_0 = max((K - S_0)^+, E[e^{-r/2} V_1]) (trapezoid rule on 40001 points of
    z in [-9, 9], error < 1e-6)."""
    t1, tau = 0.5, 0.5
    z = np.linspace(-9.0, 9.0, 40001)
    S1 = S0 * np.exp((R - 0.5 * SIGMA**2) * t1 + SIGMA * math.sqrt(t1) * z)
    if isinstance(payoff, LookbackPut):
        m1 = np.minimum(S0, S1)
        ex = np.maximum(K - m1, 0.0)
        cont = ex * math.exp(-R * tau) + bs_price(S1, np.minimum(K, m1), SIGMA, tau, rate=R,
                                                  is_call=False)
    else:
        ex = np.maximum(K - S1, 0.0)
        k2 = 2.0 * K - S1
        cont = np.where(k2 > 0, 0.5 * bs_price(S1, np.maximum(k2, 1e-12), SIGMA, tau, rate=R,
                                               is_call=False), 0.0)
    v1 = np.maximum(ex, cont)
    dens = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return max(max(K - S0, 0.0), math.exp(-R * t1) * float(np.trapezoid(v1 * dens, z)))


@pytest.mark.parametrize("payoff", [LookbackPut(strike=105.0), AsianPut(strike=105.0)],
                         ids=lambda p: p.name)
def test_two_date_bermudan_matches_the_quadrature(payoff):
    """Black-Scholes, K = 105, exercise at 0, 1/2, 1: the quadrature reference (lookback put
    11.7585, Asian put 7.3603) lies in [lower CI low, upper CI high]; the policy loses little
    (lower within 4 stderr + 1% of the reference; measured 11.7588 +- 0.0008, 7.3586 +- 0.0013)
    and the upper bound is above it within 4 stderr (measured 11.7717, 7.4327)."""
    ref = _two_date_reference(payoff, payoff.strike)
    res = _bs_pricer(n_dates=2, n_regression=2**13)(BS, payoff, rng=11)
    assert res.lower_ci[0] <= ref <= res.upper_ci[1]
    assert res.lower >= ref * 0.99 - K_SE * res.lower_stderr
    assert res.upper >= ref - K_SE * res.upper_stderr


@pytest.mark.parametrize("payoff", [LookbackPut(strike=105.0), AsianPut(strike=105.0)],
                         ids=lambda p: p.name)
def test_two_date_subsim_dual_is_tight(payoff):
    """The same two-date Bermudans with the sub-simulation dual (64 inner paths, 2^9 outer
    paths per batch): the upper bound is within 0.3% + 4 stderr of the quadrature (measured
    +0.03% lookback, +0.04% Asian; the signature dual: +0.11%, +0.98%)."""
    ref = _two_date_reference(payoff, payoff.strike)
    res = _bs_pricer(n_dates=2, n_regression=2**13, dual="subsim", subsim_inner=64,
                     subsim_outer=2**9)(BS, payoff, rng=11)
    assert res.dual_method == "subsim"
    assert res.lower_ci[0] <= ref <= res.upper_ci[1]
    assert res.upper - ref <= 3e-3 * ref + K_SE * res.upper_stderr


# ----------------------------------------------------------------------- sub-simulation state
def test_inner_paths_continue_the_payoff_statistic():
    """Fed with the outer path's own increments over a period, the sub-simulation's inner
    path gives the outer exercise value and features at t_{j+1} (Asian put averaging every
    second step: the running average continues from the outer payoff dates), to rounding."""
    model = RoughBergomi()
    basis = ExerciseBasis(sig_level=0)
    pricer = BermudanPricer(n_dates=3, steps_per_date=4, payoff_dates=6, n_regression=2**10,
                            batch_size=2**10, exercise_basis=basis)
    payoff = exercise_payoff(AsianPut(strike=100.0))
    paths = pricer.simulate(model, 8, 3)
    Z, F = pricer.exercise_arrays(model, payoff, paths)
    m, n, T, p = 4, 12, 1.0, pricer.payoff_stride
    rows = np.arange(8)
    for j in (0, 1, 2):
        e = j * m
        inner = _Inner(model, T, n, e, m)
        hy, hf = inner.history(paths, rows)
        S, V, fv, _, _ = inner.simulate(paths.S[:, e], paths.V[:, e], hy, hf,
                                        paths.dW[:, None, e:e + m],
                                        paths.dW_perp[:, None, e:e + m],
                                        paths.cell[:, None, e:e + m])
        h, state = inner_exercise(payoff, paths.S[:, : e + 1 : p], S, p, 100.0)
        np.testing.assert_allclose(math.exp(-model.r * paths.times[e + m]) * h, Z[:, j + 1],
                                   rtol=1e-10, atol=1e-12)
        feats = features_at(S[:, 0, -1], V[:, 0, -1], fv[:, 0], None, paths.times[e + m], T,
                            100.0, model.r, model.xi0, basis, True, True, period=m * T / n,
                            state=state)
        np.testing.assert_allclose(feats, F[:, j + 1], rtol=1e-9, atol=1e-12)


def test_subsim_martingale_increments_have_mean_zero_for_a_lookback():
    """The sub-simulation martingale of a lookback put (running minimum continued by the inner
    paths) has E[M_{j+1} - M_j] = 0 in every period, on i.i.d. outer paths: each column mean
    within 4 standard errors of 0 (an inner path that restarted the minimum would bias it)."""
    model = RoughBergomi()
    pricer = BermudanPricer(n_dates=3, steps_per_date=2, n_regression=2**12, batch_size=2**11,
                            exercise_basis=ExerciseBasis(sig_level=1))
    payoff = pricer.prepare_payoff(LookbackPut(strike=100.0))
    reg = pricer.simulate(model, 2**12, 1)
    Zr, Fr = pricer.exercise_arrays(model, payoff, reg)
    value_fn = fit_value_function(Zr, Fr, fit_lsm(Zr, Fr))
    outer = model.simulate(2**10, T=1.0, n_steps=6, method="mc", antithetic=False, rng=2)
    Z, F = pricer.exercise_arrays(model, payoff, outer)
    _, M, _ = subsim_pathwise(model, payoff, outer, Z, F, value_fn, basis=pricer.exercise_basis,
                              steps_per_date=2, n_inner=16, n_inner_zero=2**10, rng=3,
                              return_martingale=True)
    dM = np.diff(M, axis=1)
    se = dM.std(axis=0, ddof=1) / math.sqrt(dM.shape[0])
    assert np.all(np.abs(dM.mean(axis=0)) < K_SE * se), (dM.mean(axis=0), se)


# ----------------------------------------------------------------------- (4) bad input
@pytest.mark.parametrize("payoff, kw, match", [
    (AsianCall(strike=100.0, dates=(1, 2, 3)), {}, r"payoff dates=\(1, 2, 3\).*payoff_dates = 4"),
    (LookbackPut(strike=100.0, dates=(0, 1, 2, 3, 4, 5, 6, 7, 8)), {}, r"payoff dates="),
    (AsianCall(strike=100.0), {"payoff_dates": 6}, "payoff_dates must be a multiple"),
    (AsianCall(strike=100.0, weights=(0.5, 0.5)), {}, "weights="),
    (ForwardStartCall(t1=1), {}, "'forward-start-call'.*no early-exercise value"),
    (SumSquaredIncrements(), {}, "'sum-squared-increments'.*price it as a European"),
    (BarrierPut(strike=100.0, barrier=-1.0), {}, "barrier must be a finite number > 0"),
], ids=["dates", "too-many-dates", "payoff_dates", "weights", "forward-start", "ssi",
        "barrier"])
def test_bad_payoffs_are_refused_by_name(payoff, kw, match):
    with pytest.raises(ValueError, match=match):
        replace(_bs_pricer(n_dates=4), **kw)(BS, payoff)


def test_explicit_default_dates_are_the_default():
    pricer = _bs_pricer(n_dates=4)
    explicit = pricer.prepare_payoff(AsianCall(strike=100.0, dates=(1, 2, 3, 4)))
    assert explicit == AsianCall(strike=100.0)
