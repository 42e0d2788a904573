"""Rough Bergomi model and hybrid scheme: validation, moments, closed forms, European prices."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from deepquant.rough.lsm import bs_european
from deepquant.rough.rbergomi import RoughBergomi, hybrid_cell_covariance, hybrid_kernel

STD = dict(H=0.07, eta=1.9, rho=-0.9, xi0=0.09, r=0.05, S0=100.0)
K_SE = 4.0  # Monte Carlo assertions: within 4 standard errors (fixed seeds)


@pytest.fixture(scope="module")
def paths():
    """2^14 standard-case paths, 48 steps on [0, 1] (plain MC so sample errors are i.i.d.)."""
    return RoughBergomi(**STD).simulate(2**14, n_steps=48, method="mc", antithetic=False,
                                        bridge=False, rng=20261122)


@pytest.mark.parametrize("name,value,match", [
    ("H", 0.0, "H must be in"), ("H", 0.7, "H must be in"), ("eta", -0.1, "eta must be"),
    ("rho", -1.5, "rho must be in"), ("xi0", 0.0, "xi0 must be > 0"),
    ("S0", -1.0, "S0 must be > 0"), ("r", float("nan"), "r must be a finite number"),
    ("H", "0.1", "H must be a finite number"),
])
def test_invalid_parameters_raise(name, value, match):
    with pytest.raises(ValueError, match=match):
        RoughBergomi(**{**STD, name: value})


def test_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        RoughBergomi(0.07, 1.9)  # type: ignore[misc]
    m = RoughBergomi(**STD)
    with pytest.raises(AttributeError):
        m.H = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="sigma must be"):
        RoughBergomi.black_scholes(sigma=-0.2)


def test_simulate_rejects_bad_sizes():
    m = RoughBergomi(**STD)
    with pytest.raises(ValueError, match="power of 2"):
        m.simulate(1000, n_steps=4)
    with pytest.raises(ValueError, match="n_steps must be"):
        m.simulate(16, n_steps=0)
    with pytest.raises(ValueError, match="T must be"):
        m.simulate(16, n_steps=4, T=-1.0)
    with pytest.raises(ValueError, match="rng must be"):
        m.simulate(16, n_steps=4, rng="seed")


def test_hybrid_kernel_matches_cell_averages_exactly():
    """b_k is chosen so that (b_k dt)^a is the cell average of x^a over [(k-1)dt, k dt]
    (Bennedsen et al. 2017, eq. 2.17): check against the integral in closed form."""
    H, n, dt = 0.07, 20, 1 / 20
    a = H - 0.5
    g = hybrid_kernel(H, n, dt)
    k = np.arange(2, n + 1)
    avg = ((k * dt) ** (a + 1) - ((k - 1) * dt) ** (a + 1)) / ((a + 1) * dt)
    np.testing.assert_allclose(g[2:], avg, rtol=1e-12)
    assert np.all(hybrid_kernel(0.5, 5, 0.2)[2:] == 1.0)
    c = hybrid_cell_covariance(H, dt)
    assert np.all(np.linalg.eigvalsh(c) > 0)  # a valid covariance


def test_discrete_volterra_variance_close_to_closed_form():
    """Var(Y_t) = t^{2H}: the scheme's exact discrete variance is within 0.1% (kappa = 1)."""
    m = RoughBergomi(**STD)
    v = m.volterra_variance(96, 1 / 96)
    t = np.arange(1, 97) / 96
    np.testing.assert_allclose(v[1:], t ** (2 * m.H), rtol=1e-3)
    assert v[1] == pytest.approx((1 / 96) ** (2 * m.H), rel=1e-12)  # first cell is exact


def test_volterra_moments_against_closed_forms(paths):
    """Sample Var(Y_t) vs t^{2H} and Cov(Y_t, W_t) vs sqrt(2H) t^{H+1/2} / (H + 1/2)."""
    H = STD["H"]
    n = paths.n_paths
    for i in (1, 12, 48):
        t = paths.times[i]
        y = paths.Y[:, i]
        var_se = math.sqrt(2.0 / (n - 1)) * t ** (2 * H)
        assert abs(y.var(ddof=1) - t ** (2 * H)) < K_SE * var_se + 1e-3 * t ** (2 * H)
        w = paths.dW[:, :i].sum(axis=1)
        prod = y * w
        cov = math.sqrt(2 * H) * t ** (H + 0.5) / (H + 0.5)
        assert abs(prod.mean() - cov) < K_SE * prod.std(ddof=1) / math.sqrt(n)


def test_expected_variance_is_xi0(paths):
    """E[V_t] = xi0 (exact for the scheme's compensator); checked at several dates."""
    for i in (1, 6, 24, 48):
        v = paths.V[:, i]
        assert abs(v.mean() - STD["xi0"]) < K_SE * v.std(ddof=1) / math.sqrt(v.size)


def test_discounted_price_is_a_martingale(paths):
    """E[exp(-r t) S_t] = S0 within K_SE standard errors."""
    x = paths.discounted_S
    for i in (1, 12, 48):
        assert abs(x[:, i].mean() - STD["S0"]) < K_SE * x[:, i].std(ddof=1) / math.sqrt(
            x.shape[0])


def _mixing_put(model, K, n_paths, n_steps, seed):
    """High-precision European put by conditioning on W (Romano-Touzi mixing): given W, the
    log-Euler log S_T is Gaussian, so E[put | W] = BS put with spot S0 xi and total variance
    (1 - rho^2) sum V_i dt, xi = exp(rho sum sqrt(V_i) dW_i - rho^2/2 sum V_i dt). Exact for
    the discrete scheme; independent of the simulated S."""
    p = model.simulate(n_paths, n_steps=n_steps, method="mc", antithetic=False, bridge=False,
                       rng=seed)
    dt = 1.0 / n_steps
    iv = (p.V[:, :-1] * dt).sum(axis=1)
    xi = np.exp(model.rho * (np.sqrt(p.V[:, :-1]) * p.dW).sum(axis=1) - 0.5 * model.rho**2 * iv)
    vals = bs_european(model.S0 * xi, K, model.r, np.sqrt((1 - model.rho**2) * iv), 1.0)
    return vals.mean(), vals.std(ddof=1) / math.sqrt(n_paths)


def test_european_put_against_mixing_reference(paths):
    """Standard case: plain MC put on the simulated S vs the mixing estimator (2^16 paths)."""
    m = RoughBergomi(**STD)
    ref, ref_se = _mixing_put(m, 100.0, 2**16, 48, 7)
    put = math.exp(-m.r) * np.maximum(100.0 - paths.S[:, -1], 0.0)
    se = math.hypot(put.std(ddof=1) / math.sqrt(put.size), ref_se)
    assert abs(put.mean() - ref) < K_SE * se


def test_uncorrelated_european_put_against_precise_mixing_reference():
    """rho = 0: the mixing estimator E[BS(S0, K, sum V dt)] is a Rao-Blackwellised, more
    precise reference (measured: its standard error is < 1/3 of the plain estimator's on
    twice the paths); the plain MC put must match it."""
    m = RoughBergomi(**{**STD, "rho": 0.0})
    ref, ref_se = _mixing_put(m, 100.0, 2**15, 48, 11)
    p = m.simulate(2**14, n_steps=48, method="mc", antithetic=False, bridge=False, rng=12)
    put = math.exp(-m.r) * np.maximum(100.0 - p.S[:, -1], 0.0)
    put_se = put.std(ddof=1) / math.sqrt(put.size)
    assert ref_se < put_se / 3
    assert abs(put.mean() - ref) < K_SE * math.hypot(put_se, ref_se)


def test_black_scholes_limit_european_put(ql_european_put):
    """eta = 0: S is exactly lognormal on the grid; compare with QuantLib's analytic price."""
    m = RoughBergomi.black_scholes(sigma=0.2, r=0.05, S0=100.0)
    p = m.simulate(2**14, n_steps=4, rng=3)
    assert np.all(p.V == m.xi0)
    put = math.exp(-0.05) * np.maximum(100.0 - p.S[:, -1], 0.0)
    ref = ql_european_put(100.0, 100.0, 0.05, 0.2, 1.0)
    d1 = (math.log(1.0) + (0.05 + 0.02)) / 0.2
    closed = 100 * math.exp(-0.05) * ndtr(-(d1 - 0.2)) - 100 * ndtr(-d1)
    assert ref == pytest.approx(closed, abs=1e-3)  # QuantLib's calendar vs T = 1 exactly
    # RQMC: the error is far below the iid standard error; 4 iid SE is a loose bound
    assert abs(put.mean() - closed) < K_SE * put.std(ddof=1) / math.sqrt(put.size)


def test_forward_variance_proxy_predicts_future_variance(paths):
    """xi_t(u) = E[V_u | F_t]: its mean is xi0 (tower property), xi_0(u) = xi0, and as a
    predictor of V_u it is unbiased (regression slope of V_u on it ~ 1, loose tolerance for
    the cell-averaged kernel and heavy tails) and beats the spot variance V_t."""
    m = RoughBergomi(**STD)
    k, target = 12, 36  # predict V at t = 0.75 from t = 0.25
    u = np.maximum(paths.times, paths.times[target])
    fv = m.forward_variance(paths, u)
    np.testing.assert_allclose(fv[:, 0], m.xi0)
    x = fv[:, k]
    assert abs(x.mean() - m.xi0) < K_SE * x.std(ddof=1) / math.sqrt(x.size)
    y = paths.V[:, target]
    slope = np.cov(x, y)[0, 1] / x.var(ddof=1)
    assert 0.7 < slope < 1.3
    mse_fv = np.mean((y - x) ** 2)
    mse_spot = np.mean((y - paths.V[:, k]) ** 2)
    assert mse_fv < mse_spot
    with pytest.raises(ValueError, match="horizons"):
        m.forward_variance(paths, paths.times - 0.1)
