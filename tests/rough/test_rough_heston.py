"""The Heston model of the rough engine: Fourier prices against QuantLib and Black-Scholes,
the simulation against the Fourier price, Bermudan bounds under Heston."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepquant.blackscholes import bs_price
from deepquant.rough import Heston, preset_pricer

MODEL = Heston(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7, r=0.05, S0=100.0)


def quantlib_heston_put(h: Heston, K: float) -> float:
    """QuantLib AnalyticHestonEngine put, T = 1 year (365 days, Actual/365)."""
    ql = pytest.importorskip("QuantLib")
    today = ql.Date(1, 1, 2020)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    process = ql.HestonProcess(
        ql.YieldTermStructureHandle(ql.FlatForward(today, h.r, dc)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, 0.0, dc)),
        ql.QuoteHandle(ql.SimpleQuote(h.S0)), h.v0, h.kappa, h.theta, h.sigma, h.rho)
    option = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Put, K),
                              ql.EuropeanExercise(today + 365))
    option.setPricingEngine(ql.AnalyticHestonEngine(ql.HestonModel(process)))
    return option.NPV()


@pytest.mark.parametrize("K", [70.0, 100.0, 130.0])
def test_fourier_put_matches_quantlib(K):
    # both integrate the same closed-form characteristic function: agreement to 1e-8
    # (measured 5e-10)
    assert MODEL.european_price(K, 1.0) == pytest.approx(quantlib_heston_put(MODEL, K),
                                                         abs=1e-8)


def test_fourier_put_call_parity_and_black_scholes_limit():
    call = MODEL.european_price(110.0, 1.0, put=False)
    put = MODEL.european_price(110.0, 1.0)
    assert call - put == pytest.approx(100.0 - 110.0 * math.exp(-0.05), abs=1e-10)
    # sigma = 0, v0 = theta: constant variance 0.04, i.e. Black-Scholes with vol 0.2
    flat = Heston(v0=0.04, kappa=1.5, theta=0.04, sigma=0.0, rho=0.0, r=0.05, S0=100.0)
    assert flat.is_black_scholes
    for K in (80.0, 100.0, 120.0):
        ref = float(bs_price(100.0, K, 0.2, 1.0, rate=0.05, is_call=False))
        assert flat.european_price(K, 1.0) == pytest.approx(ref, abs=1e-9)


def test_simulated_european_put_and_martingale():
    # full-truncation Euler, 96 steps, 2^15 plain MC paths: the put within 4 standard errors
    # of the Fourier price (the Euler bias, O(dt), measured < 0.01, is below 1 stderr) and the
    # discounted spot a martingale within 4 standard errors
    p = MODEL.simulate(2**15, n_steps=96, method="mc", antithetic=False, bridge=False, rng=11)
    pay = math.exp(-0.05) * np.maximum(100.0 - p.S[:, -1], 0.0)
    se = pay.std(ddof=1) / math.sqrt(pay.size)
    assert abs(pay.mean() - MODEL.european_price(100.0, 1.0)) < 4 * se
    ds = p.discounted_S[:, -1]
    assert abs(ds.mean() - 100.0) < 4 * ds.std(ddof=1) / math.sqrt(ds.size)
    # the forward-variance feature at t = 0 is E[V_u] = theta + (v0 - theta) e^{-kappa u}
    shifted = Heston(v0=0.09, kappa=1.5, theta=0.04, sigma=0.3, rho=-0.7)
    q = shifted.simulate(2**14, n_steps=48, method="mc", rng=2)
    fv = shifted.forward_variance(q, np.full(49, 1.0))[:, 0]
    VT = q.V[:, -1]
    assert fv[0] == pytest.approx(0.04 + 0.05 * math.exp(-1.5), rel=1e-12)
    assert abs(VT.mean() - fv[0]) < 4 * VT.std(ddof=1) / math.sqrt(VT.size) + 2e-3  # + Euler


def test_bermudan_put_under_heston_brackets_above_the_european():
    pricer = preset_pricer("heston", n_dates=4, steps_per_date=4, n_regression=2**12,
                           batch_size=2**11, min_batches=3, max_batches=3,
                           dual_fit="regression")
    res = pricer(MODEL, 100.0, rng=3)
    euro = MODEL.european_price(100.0, 1.0)
    assert res.lower_ci[0] <= res.upper_ci[1]
    # early exercise is worth something: the Bermudan bracket lies above the European price
    assert res.upper > euro and res.lower_ci[1] > euro - 0.02
    assert "Heston" in res.model
    with pytest.raises(ValueError, match="specific to the rough Bergomi"):
        preset_pricer("rbergomi", n_dates=4)(MODEL, 100.0)


@pytest.mark.parametrize("kw, match", [
    (dict(v0=-0.1), "v0 must be > 0"), (dict(rho=1.5), "rho must be in"),
    (dict(sigma=float("nan")), "sigma must be a finite number"),
])
def test_heston_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        Heston(**kw)
