"""Longstaff-Schwartz regression, signatures and the regression bases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepquant.payoffs import EuropeanPut, ForwardStartCall
from deepquant.rough.lsm import (
    ExerciseBasis,
    bs_european,
    check_exercise_payoff,
    exercise_features,
    exercise_values,
    fit_lsm,
)
from deepquant.rough.rbergomi import RoughBergomi
from deepquant.rough.signature import iter_signatures, lifted_path, signature_length, signatures_at


def test_longstaff_schwartz_eight_path_example(rough_data):
    """The paper's 8-path example (basis 1, X, X^2 on in-the-money paths) gives 0.1144."""
    d = rough_data("longstaff_schwartz_2001_example.json")
    S = np.array(d["paths"])
    K, r = d["strike"], d["rate"]
    disc = np.exp(-r * np.arange(4))
    Z = disc * np.maximum(K - S, 0.0)
    Z[:, 0] = -np.inf  # no exercise at t = 0 in the example
    feats = np.stack([S, S**2], axis=-1)
    policy = fit_lsm(Z, feats, min_itm=3, ridge=0.0)
    assert policy.in_sample_value == pytest.approx(d["value"], abs=5e-5)
    # the fitted t = 2 regression is the paper's E[Y|X] = -1.070 + 2.983 X - 1.813 X^2
    X = np.array([1.08, 1.07, 0.97, 0.77, 0.84])
    fitted = policy.continuation(2, np.stack([X, X**2], axis=-1)) * math.exp(2 * r)
    np.testing.assert_allclose(fitted, -1.070 + 2.983 * X - 1.813 * X**2, atol=2e-3)


def test_policy_cashflows_start_later():
    Z = np.array([[-np.inf, 1.0, 0.0, 2.0], [-np.inf, 0.0, 0.0, 0.5]])
    feats = np.zeros((2, 4, 1))
    from deepquant.rough.lsm import LSMPolicy

    never = LSMPolicy(coef=[None] * 4, mean=[None] * 4, scale=[None] * 4,
                      exercise_at_zero=False, continuation_zero=0.0)
    np.testing.assert_array_equal(never.cashflows(Z, feats), [2.0, 0.5])
    always = LSMPolicy(coef=[None, np.array([-1.0, 0.0])] + [np.array([-1.0, 0.0])] * 2,
                       mean=[None] + [np.zeros(1)] * 3, scale=[None] + [np.ones(1)] * 3,
                       exercise_at_zero=False, continuation_zero=0.0)
    np.testing.assert_array_equal(always.cashflows(Z, feats), [1.0, 0.5])
    np.testing.assert_array_equal(always.cashflows(Z, feats, start=2), [2.0, 0.5])


def test_signatures_match_pysiglib_on_whole_paths_and_chen():
    """Cumulative signatures (sig_join per segment) equal pysiglib.sig of the prefix; level-1
    terms are the increments and level 2 of a 2-segment path follows Chen's identity."""
    ps = pytest.importorskip("pysiglib")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7, 3))
    got = signatures_at(x, 3, [0, 1, 4, 6])
    assert np.all(got[:, 0] == 0)
    for j, k in enumerate([1, 4, 6]):
        np.testing.assert_allclose(got[:, j + 1], ps.sig(x[:, : k + 1].copy(), 3),
                                   atol=1e-12)
    np.testing.assert_allclose(got[:, 3, :3], x[:, 6] - x[:, 0], atol=1e-12)
    a, b = x[0, 1] - x[0, 0], x[0, 2] - x[0, 1]
    lvl2 = np.outer(a, a) / 2 + np.outer(a, b) + np.outer(b, b) / 2
    sig2 = signatures_at(x[:1], 2, [2])[0, 0]
    np.testing.assert_allclose(sig2[3:], lvl2.ravel(), atol=1e-12)
    assert signature_length(3) == 39
    assert sum(1 for _ in iter_signatures(x, 0)) == 7
    with pytest.raises(ValueError, match="indices"):
        signatures_at(x, 2, [9])


def test_lifted_path_channels():
    m = RoughBergomi()
    p = m.simulate(8, n_steps=4, rng=0)
    x = lifted_path(p, m.xi0)
    np.testing.assert_allclose(x[:, :, 0], np.tile(p.times, (8, 1)))
    np.testing.assert_allclose(x[:, 0, 1:], 0.0, atol=1e-15)
    np.testing.assert_allclose(x[:, :, 2], np.log(p.V / m.xi0))
    with pytest.raises(ValueError, match="variance must be"):
        lifted_path(p, m.xi0, variance="sqrt")


def test_exercise_features_shapes_and_values():
    m = RoughBergomi()
    p = m.simulate(16, n_steps=8, rng=1)
    payoff = EuropeanPut(strike=100.0)
    dates = [0, 2, 4, 6, 8]
    Z = exercise_values(p, payoff, dates)
    np.testing.assert_allclose(Z, np.exp(-m.r * p.times[dates]) * np.maximum(
        100 - p.S[:, dates], 0))
    basis = ExerciseBasis(poly_degree=2, sig_level=2)
    F = exercise_features(p, m, payoff, dates, basis)
    # s, v, s^2, sv, v^2; BS value; forward variance and BS value with it; 3 + 9 signature
    assert F.shape == (16, 5, 5 + 1 + 2 + 12)
    np.testing.assert_allclose(F[:, :, 0], p.S[:, dates] / 100.0)
    # the BS feature at T is the intrinsic value / K
    np.testing.assert_allclose(F[:, -1, 5], np.maximum(100 - p.S[:, -1], 0) / 100.0)


def test_bs_european_put_call_parity():
    S = np.array([80.0, 100.0, 120.0])
    put = bs_european(S, 100.0, 0.05, 0.3, 0.7)
    call = bs_european(S, 100.0, 0.05, 0.3, 0.7, put=False)
    np.testing.assert_allclose(call - put, S - 100 * math.exp(-0.035), atol=1e-12)


def test_bad_basis_and_payoff_raise():
    with pytest.raises(ValueError, match="poly_degree"):
        ExerciseBasis(poly_degree=-1)
    with pytest.raises(ValueError, match="sig_level"):
        ExerciseBasis(sig_level=9)
    with pytest.raises(ValueError, match="variance"):
        ExerciseBasis(variance="sqrt")
    with pytest.raises(ValueError, match="'forward-start-call'.*no early-exercise value"):
        check_exercise_payoff(ForwardStartCall())
