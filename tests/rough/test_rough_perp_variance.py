"""The price-step option perp_variance="forward" (forward variance for the W_perp part)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import ndtr

from deepquant.rough import RoughBergomi
from deepquant.rough.coupling import coupled_increments
from deepquant.rough.dual import MartingaleBasis, martingale_increments
from deepquant.rough.engine import exercise_payoff
from deepquant.rough.presets import preset_pricer
from deepquant.rough.rbergomi import forward_weights, hybrid_cell_covariance

STD = dict(H=0.07, eta=1.9, rho=-0.9, xi0=0.09, r=0.05, S0=100.0)
K_SE = 4.0


@pytest.fixture(scope="module")
def fwd_paths():
    return RoughBergomi(**STD, perp_variance="forward").simulate(
        2**13, n_steps=48, method="mc", antithetic=False, bridge=False, rng=20261205)


def test_invalid_perp_variance_raises():
    with pytest.raises(ValueError, match="perp_variance must be one of"):
        RoughBergomi(**STD, perp_variance="mid")


def test_forward_weights_last_cell_projection_against_quadrature():
    H, dt, theta = 0.07, 1.0 / 96, 0.5
    a = H - 0.5
    b, g, w, vc = forward_weights(H, 10, dt, theta)
    h = theta * dt
    cw = quad(lambda v: (dt + h - v) ** a, 0.0, dt)[0]
    ci = quad(lambda v: (dt + h - v) ** a * (dt - v) ** a, 0.0, dt, limit=200)[0]
    c = hybrid_cell_covariance(H, dt)
    assert np.allclose(c @ [b, g], [cw, ci], rtol=1e-7)
    assert w[0] == w[1] == 0.0 and np.all(w[2:] > 0.0)
    assert vc <= quad(lambda v: (dt + h - v) ** (2 * a), 0.0, dt)[0] + 1e-12


def test_black_scholes_limit_unchanged():
    left = RoughBergomi.black_scholes(sigma=0.3)
    fwd = RoughBergomi(H=0.5, eta=0.0, rho=0.0, xi0=0.09, perp_variance="forward")
    a = left.simulate(512, n_steps=24, rng=3)
    b = fwd.simulate(512, n_steps=24, rng=3)
    assert np.array_equal(a.S, b.S) and b.step_variance is None


def test_left_default_is_unchanged():
    a = RoughBergomi(**STD).simulate(256, n_steps=24, rng=5)
    b = RoughBergomi(**STD, perp_variance="left").simulate(256, n_steps=24, rng=5)
    assert np.array_equal(a.S, b.S) and a.step_variance is None
    assert np.array_equal(a.step_V, a.V)


def test_forward_step_is_conditionally_lognormal_and_a_martingale(fwd_paths):
    p, m = fwd_paths, RoughBergomi(**STD)
    dt = p.times[1]
    sv = p.step_variance
    assert sv.shape == (p.n_paths, p.n_steps) and np.all(sv > 0.0)
    assert np.array_equal(p.step_V[:, :-1], sv) and np.array_equal(p.step_V[:, -1], p.V[:, -1])
    # the standardised log return is N(0, 1) given F_{t_i}: mean 0, variance 1, and
    # uncorrelated with the (F_{t_i}-measurable) step variance
    z = (np.diff(np.log(p.S), axis=1) - (m.r - 0.5 * sv) * dt) / np.sqrt(sv * dt)
    assert abs(z.mean()) < K_SE / math.sqrt(z.size)
    assert abs(z.var() - 1.0) < 0.01
    assert abs(np.corrcoef(z.ravel() ** 2, np.log(sv).ravel())[0, 1]) < 0.01
    # E[F_i] = xi0 (exact for the projection) and E[exp(-rT) S_T] = S0
    F = (sv - m.rho**2 * p.V[:, :-1]) / (1.0 - m.rho**2)
    assert np.allclose(F[:, 0], m.xi0)
    f = F[:, 1:].mean(axis=1)
    assert abs(f.mean() - m.xi0) < K_SE * f.std(ddof=1) / math.sqrt(f.size)
    x = p.discounted_S[:, -1]
    assert abs(x.mean() - m.S0) < K_SE * x.std(ddof=1) / math.sqrt(x.size)


def test_payoff_martingale_increments_are_conditionally_mean_free():
    """One fixed history, many draws of the last step: the martingale basis's payoff
    increment over that step has conditional mean 0 (it prices with the step variance; with
    the left-point V instead it is biased by many standard errors on this history)."""
    m = RoughBergomi(**STD, perp_variance="forward")
    n, T, N = 12, 0.25, 2**16
    dt = T / n
    h = m.simulate(64, n_steps=n, T=T, method="mc", antithetic=False, bridge=False, rng=4)
    F = (h.step_variance - m.rho**2 * h.V[:, :-1]) / (1.0 - m.rho**2)
    a = int(np.argmax(np.abs(np.log(F[:, -1] / h.V[:, -2]))))  # F and V far apart
    dW, dWp, cell = (np.repeat(x[a : a + 1], N, axis=0) for x in (h.dW, h.dW_perp, h.cell))
    z = np.random.default_rng(4).standard_normal((N // 2, 3))
    z = np.concatenate([z, -z])
    dW[:, -1] = math.sqrt(dt) * z[:, 0]
    dWp[:, -1] = math.sqrt(dt) * z[:, 1]
    cell[:, -1] = m.cell_from_normals(dW[:, -1:], z[:, 2:], dt)[:, 0]
    p = m.paths_from_increments(dW, dWp, cell, T)
    basis = MartingaleBasis(payoff_strikes=(0.9, 1.0, 1.1))
    payoff = exercise_payoff(100.0, "put")
    t = []
    for q in (p, replace(p, step_variance=None)):
        x = martingale_increments(q, m, payoff, [0, n - 1, n], basis)[:, 1, -3:]
        t.append(np.abs(x.mean(axis=0)) / (x.std(axis=0, ddof=1) / math.sqrt(N) + 1e-300))
    assert np.all(t[0] < K_SE)
    assert np.max(t[1]) > 5 * K_SE


def _mixing_put(model, paths, dW, T, K=100.0):
    """E[(K - S_T)^+ | W] e^{-rT} of the scheme: the W_perp part is Gaussian given W."""
    dt = T / dW.shape[1]
    rho = model.rho
    Vl = paths.V[:, :-1]
    Qp = ((paths.step_V[:, :-1] - rho**2 * Vl) / (1.0 - rho**2)).sum(axis=1) * dt
    s = model.S0 * np.exp(rho * (np.sqrt(Vl) * dW).sum(axis=1) - 0.5 * rho**2 * Vl.sum(1) * dt)
    w = (1.0 - rho**2) * Qp
    kd = K * math.exp(-model.r * T)
    d1 = (np.log(s / kd) + 0.5 * w) / np.sqrt(w)
    return kd * ndtr(-(d1 - np.sqrt(w))) - s * ndtr(-d1)


def test_both_steps_converge_to_the_same_limit():
    """Paired on coupled increments (mixing estimator): the gap between the two steps'
    European put prices shrinks steadily as the grid refines (0.12 at 6 steps, 0.02 at 96)."""
    T = 0.25
    left, fwd = RoughBergomi(**STD), RoughBergomi(**STD, perp_variance="forward")
    incs = coupled_increments(left, 2**13, [6, 12, 24, 48, 96], T, method="mc",
                              antithetic=True, bridge=False, rng=11)
    gaps = []
    for dW, dWp, cell in incs:
        P = [_mixing_put(mod, mod.paths_from_increments(dW, dWp, cell, T), dW, T)
             for mod in (left, fwd)]
        gaps.append(float(np.mean(P[1] - P[0])))
    assert np.all(np.diff(gaps) < 0.0) and 0.0 < gaps[-1] < 0.25 * gaps[0]


def test_engine_refuses_subsim_and_names_the_step():
    m = RoughBergomi(**STD, perp_variance="forward")
    pr = preset_pricer("rbergomi")
    if pr.dual == "subsim":
        with pytest.raises(ValueError, match="left-point"):
            pr.check_model(m)
    sig = preset_pricer("rbergomi", dual="signature", dual_fit="regression")
    sig.check_model(m)
    assert "forward variance for W_perp" in sig.describe(m)
