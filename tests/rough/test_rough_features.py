"""Regression features on a coarse grid (``BermudanPricer(feature_steps=...)``): the inner
sub-simulation sees the same features as the outer paths, the coarse martingale basis has mean
zero, one feature point per step is the full grid, and a coarse-feature run brackets an
independent estimate of the discretised model's price."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from deepquant.rough import BermudanPricer, ExerciseBasis, MartingaleBasis, RoughBergomi
from deepquant.rough.dual import martingale_increments
from deepquant.rough.engine import exercise_payoff
from deepquant.rough.signature import lifted_path, signature_length, signatures_at


def test_coarse_signatures_are_those_of_the_subsampled_path():
    """With ``feature_steps`` = 2 of 4 steps per period only the signature columns change, to
    the signature of the path observed every second step (the inner sub-simulation sees the
    same features: ``test_rough_subsim.test_inner_paths_reproduce_the_outer_path``)."""
    model = RoughBergomi()
    basis = ExerciseBasis(european_periods=(1,))
    pricer = BermudanPricer(n_dates=6, steps_per_date=4, feature_steps=2, n_regression=2**10,
                            batch_size=2**10, exercise_basis=basis)
    assert pricer.feature_stride == 2
    payoff = exercise_payoff(100.0)
    paths = pricer.simulate(model, 8, 3)
    _, F = pricer.exercise_arrays(model, payoff, paths)
    _, F_full = replace(pricer, feature_steps=None).exercise_arrays(model, payoff, paths)
    L = signature_length(basis.sig_level)
    assert not np.allclose(F[:, 2:, -L:], F_full[:, 2:, -L:])
    np.testing.assert_array_equal(F[:, :, :-L], F_full[:, :, :-L])
    x = lifted_path(paths, model.xi0)[:, ::2]
    np.testing.assert_allclose(F[:, :, -L:], signatures_at(x, basis.sig_level,
                                                           range(0, 13, 2)), rtol=1e-12)


def test_coarse_martingale_basis_has_mean_zero():
    """Every column of the interval sums B with the integrand held over 2 steps has mean 0
    (martingale transforms and exact one-step payoff increments): i.i.d. paths, 4.5 standard
    errors."""
    model = RoughBergomi()
    payoff = exercise_payoff(90.0)
    paths = model.simulate(2**13, T=1.0, n_steps=12, method="mc", antithetic=False, rng=4)
    basis = MartingaleBasis(payoff_strikes=(0.8, 1.0))
    B = martingale_increments(paths, model, payoff, [0, 4, 8, 12], basis, stride=2)
    flat = B.reshape(B.shape[0], -1)
    se = flat.std(axis=0, ddof=1) / math.sqrt(flat.shape[0])
    live = se > 0
    assert np.all(np.abs(flat.mean(axis=0))[live] < 4.5 * se[live])
    B1 = martingale_increments(paths, model, payoff, [0, 4, 8, 12], basis, stride=1)
    assert B1.shape == B.shape
    # payoff increments on every step by default: the payoff columns do not depend on stride
    np.testing.assert_allclose(B[:, :, -2:], B1[:, :, -2:], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="multiples of the feature stride"):
        martingale_increments(paths, model, payoff, [0, 3, 6, 12], basis, stride=2)


def test_forward_variance_columns():
    model = RoughBergomi()
    paths = model.simulate(64, T=1.0, n_steps=16, rng=1)
    u = paths.times + 0.5 * (1.0 - paths.times)
    cols = [0, 3, 8, 16]
    np.testing.assert_allclose(model.forward_variance(paths, u, columns=cols),
                               model.forward_variance(paths, u)[:, cols], rtol=1e-13)


def test_feature_steps_at_or_above_the_grid_is_the_full_grid():
    model = RoughBergomi()
    payoff = exercise_payoff(100.0)
    base = BermudanPricer(n_dates=3, steps_per_date=4, n_regression=2**8, batch_size=2**8)
    paths = base.simulate(model, 16, 5)
    ref = base._arrays(model, payoff, paths)
    for fs in (4, 8):
        p = replace(base, feature_steps=fs)
        assert p.feature_stride == 1
        for a, b in zip(p._arrays(model, payoff, paths), ref, strict=True):
            np.testing.assert_array_equal(a, b)
    assert "features every 2 steps" in replace(base, feature_steps=2).describe(model)


@pytest.mark.parametrize("kwargs,match", [
    ({"steps_per_date": 8, "feature_steps": 3}, "must divide steps_per_date"),
    ({"feature_steps": 0}, "feature_steps must be an integer >= 1 or None"),
    ({"feature_steps": 2.0}, "feature_steps must be an integer >= 1 or None"),
])
def test_feature_steps_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BermudanPricer(**kwargs)


def test_coarse_features_bracket_the_discretised_price():
    """Standard rough Bergomi case, K = 100, 4 steps per period with features on every second
    step, reduced sizes: the 95% bracket contains the same discretised model's price measured
    independently with features on every step and full sizes (8.4272, midpoint of
    [8.4145, 8.4399], docs/benchmarks-rough.md), within 0.02 (two of its standard errors);
    the reduced bracket stays within 1.5% of it."""
    ref, tol = 8.4272, 0.02
    pricer = BermudanPricer(steps_per_date=4, feature_steps=2, n_regression=2**13,
                            batch_size=2**11, min_batches=4, max_batches=4,
                            martingale_ridge=1e-2, dual="subsim", martingale_targets=True,
                            subsim_inner=32, subsim_outer=2**8,
                            exercise_basis=ExerciseBasis(european_periods=(1, 3)),
                            martingale_basis=MartingaleBasis(
                                payoff_strikes=(0.7, 0.85, 1.0, 1.15)))
    res = pricer(RoughBergomi(), 100.0, rng=11)
    assert res.lower_ci[0] <= ref + tol and ref - tol <= res.upper_ci[1]
    assert res.upper - res.lower < 0.015 * ref
    assert "features every 2 steps" in res.model
