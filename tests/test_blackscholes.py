"""Black–Scholes module: prices against QuantLib, greeks against finite differences, implied
volatility round trips and the exact limits."""

import numpy as np
import pytest

from deepquant.blackscholes import (
    black_delta,
    black_gamma,
    black_price,
    black_vega,
    bs_price,
    implied_vol,
)

ql = pytest.importorskip("QuantLib")


@pytest.mark.parametrize("is_call", [True, False])
def test_black_price_matches_quantlib(is_call):
    # QuantLib's blackFormula(type, strike, forward, stdDev, discount) is the reference
    f, d = 4800.0, 0.97
    opt = ql.Option.Call if is_call else ql.Option.Put
    for k in (2500.0, 4500.0, 4800.0, 5200.0, 7000.0):
        for sigma, t in ((0.12, 0.1), (0.3, 1.5)):
            ref = ql.blackFormula(opt, k, f, sigma * np.sqrt(t), d)
            got = float(black_price(f, k, sigma, t, is_call=is_call, discount=d))
            # both are closed forms in double precision: agree to 1e-12 relative or 1e-10 abs
            assert got == pytest.approx(ref, rel=1e-12, abs=1e-10)


def test_bs_price_is_black_on_the_forward():
    s, k, r, q, t, sig = 100.0, 95.0, 0.05, 0.02, 0.75, 0.25
    fwd, disc = s * np.exp((r - q) * t), np.exp(-r * t)
    for is_call in (True, False):
        a = bs_price(s, k, sig, t, rate=r, dividend_yield=q, is_call=is_call)
        b = black_price(fwd, k, sig, t, is_call=is_call, discount=disc)
        assert float(a) == pytest.approx(float(b), rel=1e-14)
    # put-call parity C - P = S e^{-qt} - K e^{-rt}
    c = bs_price(s, k, sig, t, rate=r, dividend_yield=q)
    p = bs_price(s, k, sig, t, rate=r, dividend_yield=q, is_call=False)
    assert float(c - p) == pytest.approx(s * np.exp(-q * t) - k * np.exp(-r * t), rel=1e-12)


def test_limits_are_exact():
    # zero volatility or zero time: discounted intrinsic value; strike <= 0: a forward contract
    np.testing.assert_array_equal(black_price(1.0, [0.5, 1.5], 0.0, 1.0), [0.5, 0.0])
    np.testing.assert_array_equal(black_price(1.0, [0.5, 1.5], 0.2, 0.0, is_call=False),
                                  [0.0, 0.5])
    assert float(black_price(1.0, -1.0, 0.2, 1.0, discount=0.9)) == pytest.approx(1.8)
    assert float(black_price(1.0, 0.0, 0.2, 1.0, is_call=False)) == 0.0
    assert float(bs_price(100.0, 90.0, 0.2, 0.0, rate=0.05, is_call=False)) == 0.0


def test_greeks_match_finite_differences():
    f, k, sig, t, d = 100.0, 105.0, 0.2, 0.5, 0.98
    h = 1e-3
    for is_call in (True, False):
        def p(ff=f, ss=sig, c=is_call):
            return float(black_price(ff, k, ss, t, is_call=c, discount=d))
        # central differences: O(h^2) error, about 1e-7 here
        assert float(black_delta(f, k, sig, t, is_call=is_call, discount=d)) == pytest.approx(
            (p(ff=f + h) - p(ff=f - h)) / (2 * h), abs=1e-7)
        assert float(black_vega(f, k, sig, t, discount=d)) == pytest.approx(
            (p(ss=sig + h) - p(ss=sig - h)) / (2 * h), rel=1e-5)
        assert float(black_gamma(f, k, sig, t, discount=d)) == pytest.approx(
            (p(ff=f + 0.1) - 2 * p() + p(ff=f - 0.1)) / 0.01, rel=1e-5)


def test_implied_vol_round_trip_and_nan_outside():
    k = np.linspace(0.3, 2.5, 300)
    is_call = k > 1
    for sig, t in ((0.05, 0.02), (0.25, 1.0), (1.2, 2.0)):
        price = black_price(1.0, k, sig, t, is_call=is_call)
        iv = implied_vol(price, 1.0, k, t, is_call=is_call)
        good = price > 1e-13   # below that the price does not carry 1e-9 of volatility
        np.testing.assert_allclose(iv[good], sig, atol=1e-9)
    # currency units with a discount factor
    pr = black_price(4800.0, [4000.0, 5600.0], 0.18, 0.4, is_call=False, discount=0.97)
    np.testing.assert_allclose(
        implied_vol(pr, 4800.0, [4000.0, 5600.0], 0.4, is_call=False, discount=0.97), 0.18,
        atol=1e-12)
    # at or below intrinsic, at or above the bound, non-finite: NaN
    bad = implied_vol([0.25, 1.0, np.nan, 0.0], 1.0, [0.75, 0.8, 1.0, 1.2], 0.5,
                      is_call=[True, True, True, False])
    assert np.all(np.isnan(bad))
    with pytest.raises(ValueError, match="min_vol"):
        implied_vol(0.1, 1.0, 1.0, 1.0, min_vol=1.0, max_vol=0.5)
