"""Synthetic marginals (GBM, Merton, Heston): model prices against independent references,
the martingale-preserving discretisation, convex order, moments and the error paths.

References and tolerances:
- GBM: QuantLib ``blackFormula`` (closed form); agreement to 1e-14 (round-off of ndtr).
- Merton: QuantLib ``BatesEngine`` with vol-of-vol 1e-5 and v0 = theta = sigma^2 (Bates reduces to
  Merton as vol-of-vol -> 0; measured gap 4e-12 at 1e-5, 3e-10 at 1e-4): tolerance 5e-11; and the
  series formula written out independently below: tolerance 1e-14.
- Heston: QuantLib ``AnalyticHestonEngine`` (adaptive Gauss-Lobatto, relative tolerance 1e-11):
  measured gap below 6e-15 for the DESIGN §3 parameters, tolerance 1e-12.
- Discrete laws: at grid points the discrete call price equals the model's minus the tail
  correction, which lies in [0, P(g_0) + C(g_{M-1})] (module docstring); tolerance 1e-13 on top.
- Variance of the discrete GBM law: e^{sigma^2 t} - 1 + h^2/6 (linear splitting of each cell's
  mass on a uniform grid of step h adds h^2/6; measured gap 1e-15 away from the tails), tolerance
  1e-12 plus the tail effect 2 delta (g_{M-1} - g_0), delta the tail bound above.
- Convex order, sums and means: 1e-12 (the construction is exact up to round-off).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import QuantLib as ql
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepquant.market.synthetic import (
    GBMParams,
    HestonParams,
    MertonParams,
    default_grid,
    gbm_marginals,
    heston_marginals,
    marginals_from_call_prices,
    merton_marginals,
    model_params,
    synthetic_marginals,
)

STRIKES = np.array([0.5, 0.7, 0.85, 0.95, 1.0, 1.05, 1.2, 1.5, 2.0])
DAYS = [2, 30, 91, 182, 365, 730]  # maturities in days (ACT/365 in QuantLib)


# ------------------------------------------------------------------ QuantLib references
def _ql_setup():
    today = ql.Date(2, 1, 2024)
    ql.Settings.instance().evaluationDate = today
    flat = ql.YieldTermStructureHandle(ql.FlatForward(today, 0.0, ql.Actual365Fixed()))
    return today, flat, ql.QuoteHandle(ql.SimpleQuote(1.0))


def _ql_prices(engine, today, days, strikes):
    out = []
    for k in strikes:
        opt = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call, float(k)),
                               ql.EuropeanExercise(today + int(days)))
        opt.setPricingEngine(engine)
        out.append(opt.NPV())
    return np.array(out)


def ql_heston_calls(p: HestonParams, days: int, strikes) -> np.ndarray:
    today, flat, spot = _ql_setup()
    proc = ql.HestonProcess(flat, flat, spot, p.v0, p.kappa, p.theta, p.sigma_v, p.rho)
    engine = ql.AnalyticHestonEngine(ql.HestonModel(proc), 1e-11, 10_000_000)
    return _ql_prices(engine, today, days, strikes)


def ql_merton_calls(p: MertonParams, days: int, strikes) -> np.ndarray:
    """Merton as Bates with vol-of-vol 1e-5 and v0 = theta = sigma^2."""
    today, flat, spot = _ql_setup()
    v = p.sigma**2
    proc = ql.BatesProcess(flat, flat, spot, v, 1.0, v, 1e-5, 0.0, p.jump_intensity,
                           p.jump_mean, p.jump_std)
    engine = ql.BatesEngine(ql.BatesModel(proc), 1e-12, 10_000_000)
    return _ql_prices(engine, today, days, strikes)


def series_merton_call(p: MertonParams, t: float, k: float) -> float:
    """Merton (1976) series written out term by term with math (independent of the library)."""
    lam = p.jump_intensity
    kappa = math.exp(p.jump_mean + 0.5 * p.jump_std**2) - 1.0
    total = 0.0
    for n in range(80):
        w = math.exp(-lam * t) * (lam * t) ** n / math.factorial(n)
        f = math.exp(-lam * kappa * t + n * (p.jump_mean + 0.5 * p.jump_std**2))
        s = math.sqrt(p.sigma**2 * t + n * p.jump_std**2)
        d1 = (math.log(f / k) + 0.5 * s * s) / s
        nd = lambda x: 0.5 * math.erfc(-x / math.sqrt(2.0))  # noqa: E731
        total += w * (f * nd(d1) - k * nd(d1 - s))
    return total


def tail_bound(params, times, grid) -> np.ndarray:
    """P(g_0) + C(g_{M-1}) per date: the bound on the tail correction of the call prices."""
    c = params.call_prices(times, np.array([grid[0], grid[-1]]))
    return (c[:, 0] - (1.0 - grid[0])) + c[:, 1]


def assert_exact_marginals(m, tol=1e-12):
    assert np.all(m.weights >= 0)
    assert np.abs(m.weights.sum(axis=1) - 1.0).max() <= tol
    assert np.abs(m.means - 1.0).max() <= tol
    assert m.check_convex_order().violation <= tol


# ------------------------------------------------------------------ model prices
def test_gbm_calls_match_quantlib_black_formula():
    p = GBMParams(sigma=0.25)
    times = np.array(DAYS) / 365.0
    mine = p.call_prices(times, STRIKES)
    ref = np.array([[ql.blackFormula(ql.Option.Call, k, 1.0, 0.25 * math.sqrt(t)) for k in STRIKES]
                    for t in times])
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("params", [
    HestonParams(),                                        # DESIGN §3 defaults, rho = -0.7
    HestonParams(rho=0.0, v0=0.02),
    HestonParams(rho=-0.3, v0=0.09, sigma_v=0.5),
])
def test_heston_calls_match_quantlib_analytic_engine(params):
    for days in DAYS:
        mine = params.call_prices([days / 365.0], STRIKES)[0]
        ref = ql_heston_calls(params, days, STRIKES)
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-12, err_msg=f"{days} days")


def test_heston_extreme_vol_of_vol_within_stated_accuracy():
    # Feller condition badly violated (2 kappa theta = 0.16 < sigma_v^2 = 0.36), v0 = 0.01: the
    # left tail of ln X reaches past the default 20 standard deviations; measured 2.5e-10.
    p = HestonParams(sigma_v=0.6, v0=0.01)
    for days in (91, 182, 365):
        gap = np.abs(p.call_prices([days / 365.0], STRIKES)[0] - ql_heston_calls(p, days, STRIKES))
        assert gap.max() < 1e-9
    wide = HestonParams(sigma_v=0.6, v0=0.01, width=30.0)  # a wider COS range fixes it
    gap = np.abs(wide.call_prices([182 / 365.0], STRIKES)[0] - ql_heston_calls(wide, 182, STRIKES))
    assert gap.max() < 1e-13


def test_merton_calls_match_quantlib_bates_and_series():
    p = MertonParams()
    for days in (10, 91, 365, 1825):
        t = days / 365.0
        mine = p.call_prices([t], STRIKES)[0]
        np.testing.assert_allclose(mine, ql_merton_calls(p, days, STRIKES), rtol=0, atol=5e-11)
        ref = np.array([series_merton_call(p, t, k) for k in STRIKES])
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-14)


def test_merton_without_jumps_is_gbm():
    t = np.array([0.1, 0.5, 2.0])
    np.testing.assert_allclose(MertonParams(sigma=0.3, jump_intensity=0.0).call_prices(t, STRIKES),
                               GBMParams(sigma=0.3).call_prices(t, STRIKES), rtol=0, atol=1e-16)


def test_zero_time_and_nonpositive_strikes_are_intrinsic():
    k = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    for p in (GBMParams(), MertonParams(), HestonParams()):
        c = p.call_prices([0.0, 0.5], k)
        np.testing.assert_array_equal(c[0], np.maximum(1.0 - k, 0.0))
        np.testing.assert_allclose(c[1, :2], 1.0 - k[:2], rtol=0, atol=1e-15)


# ------------------------------------------------------------------ discrete marginals
@pytest.mark.parametrize("model", ["gbm", "merton", "heston"])
def test_discrete_calls_equal_model_calls_up_to_tail_correction(model):
    times = np.array([0.1, 0.25, 0.5, 1.0])
    params = model_params(model)
    m = synthetic_marginals(model, times, grid_size=150)
    assert m.weights.shape == (4, 150)
    np.testing.assert_array_equal(m.times, times)
    assert_exact_marginals(m)
    model_calls = params.call_prices(times, m.grid)
    gap = model_calls - m.call_prices()                  # >= 0: the tail moves mass inward
    bound = tail_bound(params, times, m.grid)
    assert gap.min() >= -1e-13
    assert np.all(gap.max(axis=1) <= bound + 1e-13)
    assert bound.max() < 1e-6                            # the default grid makes tails small


def test_gbm_moments_match_closed_form():
    sigma = 0.2
    times = np.array([0.1, 0.25, 0.5, 1.0])
    for size in (100, 150, 300):
        m = gbm_marginals(times, grid_size=size, sigma=sigma)
        h = float(np.diff(m.grid)[0])
        np.testing.assert_allclose(np.diff(m.grid), h, rtol=1e-12)   # uniform grid
        assert np.abs(m.means - 1.0).max() <= 1e-14
        delta = tail_bound(GBMParams(sigma=sigma), times, m.grid)
        tol = 1e-12 + 2.0 * delta * (m.grid[-1] - m.grid[0])
        gap = np.abs(m.variances() - (np.expm1(sigma**2 * times) + h * h / 6.0))
        assert np.all(gap <= tol), (size, gap, tol)


def test_heston_moments_match_references():
    # E[ln X_t] = -E[int_0^t v]/2 = -theta t/2 when v0 = theta (closed form), and
    # Var(X_t) = 2 int_0^inf (C(k) - (1 - k)^+) dk with C from QuantLib's analytic engine
    # (Gauss-Legendre, 100 nodes on each of [0, 1] and [1, 4], split at the kink of (1 - k)^+;
    # C(4) < 1e-12 at t = 0.5). The discrete law adds h^2/6 to the variance (linear splitting).
    # Tolerances: 1e-5 on the log-mean (splitting moves it by about -h^2/12 = 1e-6 here), 1e-8 on
    # the variance (measured 2.5e-9, the tail correction, whose bound here is 1e-7 x range).
    p = HestonParams()
    today, flat, spot = _ql_setup()
    expiry = today + ql.Period(6, ql.Months)
    t = ql.Actual365Fixed().yearFraction(today, expiry)
    m = heston_marginals([t], grid_size=600)
    h = float(np.diff(m.grid)[0])
    mean_log = float(m.weights[0] @ np.log(m.grid))
    assert mean_log == pytest.approx(-0.5 * 0.04 * t, abs=1e-5)
    nodes, wts = np.polynomial.legendre.leggauss(100)
    var_ref = 0.0
    for a, b in ((0.0, 1.0), (1.0, 4.0)):
        k = a + 0.5 * (b - a) * (nodes + 1.0)
        ref = ql_heston_calls(p, expiry - today, k)
        var_ref += (b - a) * float(np.sum(wts * (ref - np.maximum(1.0 - k, 0.0))))
    assert m.variances()[0] - h * h / 6.0 == pytest.approx(var_ref, abs=1e-8)


def test_time_zero_row_is_point_mass_at_one():
    m = gbm_marginals([0.0, 0.5], grid_size=101)
    j = int(np.flatnonzero(m.grid == 1.0)[0])
    assert m.weights[0, j] == pytest.approx(1.0, abs=1e-15)
    assert m.weights[0].sum() - m.weights[0, j] <= 1e-15


def test_user_grid_and_tail_mass_moved_inside():
    # a narrow grid: most of the tails lie outside, the rows are still exact and in order
    grid = np.linspace(0.8, 1.25, 46)
    m = heston_marginals([0.25, 0.5, 1.0], grid)
    assert_exact_marginals(m)
    np.testing.assert_array_equal(m.grid, grid)
    assert m.weights[:, 0].min() > 0 and m.weights[:, -1].min() > 0  # tails land on the ends
    gap = HestonParams().call_prices([0.25, 0.5, 1.0], grid) - m.call_prices()
    assert gap.min() >= -1e-13
    assert np.all(gap.max(axis=1) <= tail_bound(HestonParams(), [0.25, 0.5, 1.0], grid) + 1e-13)


def test_many_close_dates_stay_in_convex_order():
    times = np.linspace(0.002, 0.5, 50)
    for model in ("gbm", "merton", "heston"):
        assert_exact_marginals(synthetic_marginals(model, times, grid_size=150))


def test_discretisation_repairs_round_off_violations():
    grid = np.linspace(0.5, 1.5, 41)
    calls = GBMParams(sigma=0.2).call_prices([0.5, 0.5 + 1e-9], grid)
    noisy = calls + np.array([[0.0], [1.0]]) * 1e-13 * np.sin(np.arange(41))  # C_1 < C_0 at points
    m = marginals_from_call_prices(grid, noisy, [0.5, 0.6])
    assert_exact_marginals(m)


def test_default_grid_properties():
    g = default_grid(GBMParams(sigma=0.1), 0.25, 150)
    h = np.diff(g)[0]
    assert g.size == 150 and 1.0 in g and g[0] <= 0.5 + h and g[-1] >= 2.0 - h  # shift < h
    np.testing.assert_allclose(np.diff(g), h, rtol=1e-10)
    wide = default_grid(GBMParams(sigma=0.35), 2.0, 150)
    assert wide[0] < 0.15 and wide[-1] > 5.0 and np.all(wide > 0) and 1.0 in wide
    capped = default_grid(GBMParams(sigma=0.8), 3.0, 40)
    assert capped[-1] <= 10.0 + np.diff(capped)[0] and np.all(capped > 0) and 1.0 in capped


# ------------------------------------------------------------------ properties
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sigma=st.floats(0.05, 0.8),
    t_max=st.floats(0.02, 3.0),
    n_dates=st.integers(1, 12),
    size=st.integers(20, 200),
)
def test_property_gbm(sigma, t_max, n_dates, size):
    times = np.linspace(t_max / n_dates, t_max, n_dates)
    assert_exact_marginals(gbm_marginals(times, grid_size=size, sigma=sigma))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sigma=st.floats(0.05, 0.5),
    lam=st.floats(0.0, 10.0),
    jump_mean=st.floats(-0.3, 0.2),
    jump_std=st.floats(0.0, 0.3),
    t_max=st.floats(0.02, 2.0),
    n_dates=st.integers(1, 10),
)
def test_property_merton(sigma, lam, jump_mean, jump_std, t_max, n_dates):
    times = np.linspace(t_max / n_dates, t_max, n_dates)
    m = merton_marginals(times, sigma=sigma, jump_intensity=lam, jump_mean=jump_mean,
                         jump_std=jump_std, grid_size=120)
    assert_exact_marginals(m)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rho=st.floats(-0.95, 0.5),
    v0=st.floats(0.005, 0.2),
    kappa=st.floats(0.5, 5.0),
    theta=st.floats(0.01, 0.15),
    sigma_v=st.floats(0.1, 0.8),
    t_max=st.floats(0.02, 2.0),
    n_dates=st.integers(1, 10),
)
def test_property_heston(rho, v0, kappa, theta, sigma_v, t_max, n_dates):
    times = np.linspace(t_max / n_dates, t_max, n_dates)
    m = heston_marginals(times, kappa=kappa, theta=theta, sigma_v=sigma_v, rho=rho, v0=v0,
                         grid_size=120)
    assert_exact_marginals(m)


# ------------------------------------------------------------------ error paths
@pytest.mark.parametrize("make, match", [
    (lambda: GBMParams(sigma=-0.1), r"sigma must be > 0, got -0.1"),
    (lambda: GBMParams(sigma=float("nan")), r"sigma must be finite"),
    (lambda: MertonParams(jump_intensity=-1.0), r"jump_intensity must be >= 0, got -1.0"),
    (lambda: MertonParams(jump_std=-0.1), r"jump_std must be >= 0"),
    (lambda: HestonParams(rho=-1.5), r"rho must be >= -1, got -1.5"),
    (lambda: HestonParams(kappa=0.0), r"kappa must be > 0, got 0.0"),
    (lambda: HestonParams(v0=-0.01), r"v0 must be >= 0"),
    (lambda: HestonParams(n_terms=8), r"n_terms must be an integer in \[16, 65536\], got 8"),
    (lambda: HestonParams(sigma_v="x"), r"sigma_v must be a real number, got 'x'"),
    (lambda: model_params("sabr"), r"model must be one of \['gbm', 'heston', 'merton'\], got 'sabr'"),
    (lambda: model_params("gbm", rho=0.1), r"bad parameters for model 'gbm'"),
    (lambda: gbm_marginals([0.5, 0.25]), r"times must be strictly increasing"),
    (lambda: gbm_marginals([-0.1, 0.25]), r"times must be finite and >= 0"),
    (lambda: gbm_marginals([]), r"times must be a non-empty 1-D sequence"),
    (lambda: gbm_marginals([0.5], grid_size=2), r"grid_size must be an integer >= 3, got 2"),
    (lambda: gbm_marginals([0.5], np.linspace(1.1, 2.0, 10)), r"grid must straddle the mean 1"),
    (lambda: gbm_marginals([0.5], np.array([0.5, 1.2, 1.0, 2.0])),
     r"grid must be finite and strictly increasing"),
    (lambda: GBMParams().call_prices([0.1, 0.2], np.ones((3, 4))),
     r"strikes must have shape \(K,\) or \(2, K\) for 2 dates, got \(3, 4\)"),
    (lambda: marginals_from_call_prices(np.linspace(0.5, 1.5, 5), np.ones((2, 4))),
     r"calls must have shape \(N\+1, 5\), got \(2, 4\)"),
    (lambda: marginals_from_call_prices(np.linspace(0.5, 1.5, 3), [[0.5, np.nan, 0.0]]),
     r"calls at date 0, strike 1 is nan \(not finite\)"),
    (lambda: gbm_marginals([1.0], grid_size=5, sigma=0.8),
     r"grid_size=5 is too small for the range \[.*\]: step .* >= 1"),
])
def test_error_paths(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_frozen_params():
    p = HestonParams()
    with pytest.raises(AttributeError):
        p.rho = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        HestonParams(2.0)  # type: ignore[misc]  # keyword-only
