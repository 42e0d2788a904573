"""Sub-simulation dual (``BermudanPricer(dual="subsim")``, ``deepquant.rough.subsim``): inner
paths reproduce the outer path, martingale increments have mean zero, bounds bracket QuantLib in
the Black-Scholes limit, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepquant.rough import BermudanPricer, ExerciseBasis, MartingaleBasis, RoughBergomi
from deepquant.rough.engine import exercise_payoff
from deepquant.rough.lsm import fit_lsm
from deepquant.rough.signature import _siglib, signature_length
from deepquant.rough.subsim import (
    _Inner,
    _segment_signature,
    features_at,
    fit_value_function,
    subsim_pathwise,
)

QL_TOL = 2e-3  # QuantLib FD grid/calendar error, as in test_rough_engine.py


@pytest.mark.parametrize("feature_steps", [None, 2])
def test_inner_paths_reproduce_the_outer_path(feature_steps):
    """Fed with the outer path's own increments over [t_j, t_{j+1}], the one-period inner
    simulation must reproduce the outer S, V on that period and the exercise features at
    t_{j+1} (Volterra history term, Chen-combined signature, forward-variance split) to
    rounding error; with ``feature_steps`` = 2 of 4 steps per period the segment signature is
    that of every second step, as for the outer features."""
    model = RoughBergomi()
    basis = ExerciseBasis(european_periods=(1, 3))
    pricer = BermudanPricer(n_dates=6, steps_per_date=4, n_regression=2**10, batch_size=2**10,
                            exercise_basis=basis, feature_steps=feature_steps)
    payoff = exercise_payoff(100.0)
    paths = pricer.simulate(model, 8, 3)
    _, F = pricer.exercise_arrays(model, payoff, paths)
    m, n, T, c = 4, 24, 1.0, pricer.feature_stride
    dt = T / n
    L = signature_length(basis.sig_level)
    rows = np.arange(8)
    for j in (0, 2, 5):
        e = j * m
        inner = _Inner(model, T, n, e, m)
        hy, hf = inner.history(paths, rows)
        S, V, fv, logS, logV = inner.simulate(
            paths.S[:, e], paths.V[:, e], hy, hf, paths.dW[:, None, e:e + m],
            paths.dW_perp[:, None, e:e + m], paths.cell[:, None, e:e + m])
        np.testing.assert_allclose(S[:, 0], paths.S[:, e:e + m + 1], rtol=1e-12)
        np.testing.assert_allclose(V[:, 0], paths.V[:, e:e + m + 1], rtol=1e-12)
        seg = _segment_signature(logS[:, 0, ::c], logV[:, 0, ::c], V[:, 0, ::c], model.S0,
                                 model.xi0, T, paths.times[e], c * dt, basis.sig_level,
                                 basis.variance)
        sig = seg if e == 0 else _siglib().sig_combine(np.ascontiguousarray(F[:, j, -L:]),
                                                       seg, 3, basis.sig_level)
        feats = features_at(S[:, 0, -1], V[:, 0, -1], fv[:, 0], sig, paths.times[e + m], T,
                            100.0, model.r, model.xi0, basis, True, True, period=m * dt)
        np.testing.assert_allclose(feats, F[:, j + 1], rtol=1e-9, atol=1e-12)


def test_martingale_increments_have_mean_zero():
    """E[M_{j+1} - M_j] = 0 for every period (inner noise is conditionally unbiased), on
    i.i.d. (plain MC) outer paths: each column mean within 4 standard errors of 0."""
    model = RoughBergomi()
    pricer = BermudanPricer(n_dates=4, steps_per_date=2, n_regression=2**12,
                            batch_size=2**11)
    payoff = exercise_payoff(100.0)
    reg = pricer.simulate(model, 2**12, 1)
    Zr, Fr = pricer.exercise_arrays(model, payoff, reg)
    policy = fit_lsm(Zr, Fr)
    value_fn = fit_value_function(Zr, Fr, policy)
    outer = model.simulate(2**11, T=1.0, n_steps=8, method="mc", antithetic=False, rng=2)
    Z, F = pricer.exercise_arrays(model, payoff, outer)
    up, M, cond = subsim_pathwise(model, payoff, outer, Z, F, value_fn,
                                  basis=pricer.exercise_basis, steps_per_date=2, n_inner=16,
                                  rng=3, return_martingale=True)
    dM = np.diff(M, axis=1)
    se = dM.std(axis=0, ddof=1) / math.sqrt(dM.shape[0])
    assert np.all(np.abs(dM.mean(axis=0)) < 4 * se + 1e-12), (dM.mean(axis=0), se)
    # t = 0 is shared by all outer paths: one conditional-mean estimate for all of them
    assert np.ptp(cond[:, 0]) == 0.0
    assert up.shape == (2**11,) and np.all(up >= Z[:, 0])  # M_0 = 0


@pytest.fixture(scope="module")
def bs_subsim_result():
    m = RoughBergomi.black_scholes(sigma=0.2, r=0.05, S0=100.0)
    pricer = BermudanPricer(steps_per_date=2, exercise_basis=ExerciseBasis(sig_level=0),
                            martingale_basis=MartingaleBasis(sig_level=0),
                            n_regression=2**14, batch_size=2**11, min_batches=4,
                            max_batches=4, dual="subsim", martingale_targets=True,
                            subsim_inner=32, subsim_outer=2**9)
    return pricer(m, 100.0, rng=2026)


def test_black_scholes_subsim_brackets_quantlib(bs_subsim_result, ql_put):
    """S0 = K = 100, r = 0.05, sigma = 0.2, T = 1, 12 dates (QuantLib FD 6.0428): lower CI low
    <= QuantLib <= upper CI high, upper >= QuantLib within 4 standard errors, and the dual is
    tight (gap < 0.5% of the price; measured 0.06-0.24% with seeds 1, 2, 2026)."""
    q = ql_put(100.0, 100.0, 0.05, 0.2, 1.0, 12)
    r = bs_subsim_result
    assert r.dual_method == "subsim"
    assert r.lower_ci[0] - QL_TOL <= q <= r.upper_ci[1] + QL_TOL
    assert r.upper + 4 * r.upper_stderr >= q - QL_TOL
    assert r.lower - 4 * r.lower_stderr <= q + QL_TOL
    assert r.gap < 0.005 * q
    assert r.timings["subsim"] > 0


def test_martingale_targets_with_zero_martingale_change_nothing():
    rng = np.random.default_rng(0)
    n, J1, nf = 4000, 5, 3
    Z = np.maximum(rng.standard_normal((n, J1)) + 0.3, 0.0)
    F = rng.standard_normal((n, J1, nf)) + Z[:, :, None]
    a = fit_lsm(Z, F)
    b = fit_lsm(Z, F, martingale=np.zeros((n, J1)))
    for ca, cb in zip(a.coef, b.coef, strict=True):
        assert (ca is None and cb is None) or np.array_equal(ca, cb)
    with pytest.raises(ValueError, match="martingale must have shape"):
        fit_lsm(Z, F, martingale=np.zeros((n, J1 - 1)))


@pytest.mark.parametrize("kwargs,match", [
    ({"dual": "nested"}, "dual must be"),
    ({"subsim_inner": 6}, "subsim_inner must be a power of 2"),
    ({"dual": "subsim", "subsim_outer": 3}, "subsim_outer must be a power of 2"),
    ({"dual": "subsim", "batch_size": 2**10, "subsim_outer": 2**11}, "subsim_outer must be"),
    ({"martingale_targets": "yes"}, "martingale_targets must be a bool"),
])
def test_subsim_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BermudanPricer(**kwargs)


def test_subsim_input_validation():
    with pytest.raises(ValueError, match="european_periods must be"):
        ExerciseBasis(european_periods=(0,))
    model = RoughBergomi.black_scholes(sigma=0.2)
    pricer = BermudanPricer(n_dates=2, steps_per_date=1, exercise_basis=ExerciseBasis(
        sig_level=0), n_regression=2**8, batch_size=2**8)
    payoff = exercise_payoff(100.0)
    p = pricer.simulate(model, 16, 1)
    Z, F = pricer.exercise_arrays(model, payoff, p)
    vf = fit_value_function(Z, F, fit_lsm(Z, F))
    for bad in (3, 6, 2.0):
        with pytest.raises(ValueError, match="n_inner must be"):
            subsim_pathwise(model, payoff, p, Z, F, vf, basis=pricer.exercise_basis,
                            steps_per_date=1, n_inner=bad, rng=0)
    with pytest.raises(ValueError, match="steps"):
        subsim_pathwise(model, payoff, p, Z, F, vf, basis=pricer.exercise_basis,
                        steps_per_date=2, n_inner=4, rng=0)


@pytest.mark.slow
def test_rough_bergomi_subsim_small_run_brackets_published_price(rough_data):
    """Standard rough Bergomi case, K = 100, reduced sizes: the sub-simulation bounds bracket
    the published ~8.50 and the gap is well below the signature dual's (measured ~2% at full
    size)."""
    d = rough_data("rbergomi_american_put.json")
    ref = dict(d["rows"])[100]
    pricer = BermudanPricer(steps_per_date=4, n_regression=2**13, batch_size=2**11,
                            min_batches=4, max_batches=4, martingale_ridge=1e-2,
                            dual="subsim", martingale_targets=True, subsim_inner=32,
                            subsim_outer=2**9,
                            exercise_basis=ExerciseBasis(european_periods=(1, 3)))
    res = pricer(RoughBergomi(**{k: v for k, v in d["model"].items() if k != "T"}), 100.0,
                 rng=11)
    assert res.lower_ci[0] <= ref <= res.upper_ci[1]
    assert res.upper - res.lower < 0.02 * ref
