"""Randomness: Sobol/inverse-normal points, Brownian bridge, antithetics, RQMC vs MC variance,
adaptive stopping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepquant.rough.qmc import (
    AdaptiveResult,
    BrownianBridge,
    adaptive_mean,
    as_seed_sequence,
    driver_increments,
    gaussian_points,
    t_interval,
)
from deepquant.rough.rbergomi import RoughBergomi
from tests.result_protocol import ResultProtocol


def test_gaussian_points_errors():
    with pytest.raises(ValueError, match="power of 2"):
        gaussian_points(24, 3)
    with pytest.raises(ValueError, match="even"):
        gaussian_points(7, 3, method="mc")
    with pytest.raises(ValueError, match="method must be"):
        gaussian_points(8, 3, method="sobol")
    with pytest.raises(ValueError, match="dim must be"):
        gaussian_points(8, 0)
    # one count check (results.check_count): a bool was read as 1 dimension before
    with pytest.raises(ValueError, match="dim must be an integer >= 1, got True"):
        gaussian_points(8, True)
    with pytest.raises(ValueError, match="rng seed must be >= 0"):
        as_seed_sequence(-3)


def test_antithetic_pairs_and_reproducibility():
    z = gaussian_points(64, 5, rng=1)
    np.testing.assert_array_equal(z[32:], -z[:32])
    np.testing.assert_array_equal(z, gaussian_points(64, 5, rng=1))
    assert not np.allclose(z, gaussian_points(64, 5, rng=2))  # independent scrambles
    g = np.random.default_rng(5)
    assert gaussian_points(8, 2, rng=g).shape == (8, 2)


def test_sobol_points_are_balanced():
    """Each 1-D projection of 2^k scrambled Sobol points has exactly one point per 1/2^k
    stratum (a (0, k, 1)-net), so the normal sample mean is far more exact than iid."""
    z = gaussian_points(2**10, 4, antithetic=False, rng=3)
    from scipy.stats import norm

    u = norm.cdf(z)
    for d in range(4):
        counts = np.bincount(np.floor(u[:, d] * 2**10).astype(int), minlength=2**10)
        assert np.all(counts == 1)


def test_brownian_bridge_is_exact_linear_map():
    """Increments = A z with A A^T = dt I (exact Brownian increments) for any n_steps."""
    for n in (1, 5, 12, 16):
        dt = 0.1
        A = BrownianBridge(n, dt).increments(np.eye(n)).T  # columns: images of unit vectors
        np.testing.assert_allclose(A @ A.T, dt * np.eye(n), atol=1e-12)
    with pytest.raises(ValueError, match="columns"):
        BrownianBridge(4, 0.1).increments(np.zeros((2, 3)))


def test_driver_increments_moments():
    dW, dWp, z = driver_increments(2**12, 8, 0.125, rng=4)
    for x in (dW, dWp):
        assert abs(x.sum(axis=1).var() - 1.0) < 0.05  # W_1 ~ N(0, 1); RQMC, 4096 paths
        assert abs(np.corrcoef(x[:, 0], x[:, 7])[0, 1]) < 0.06
    assert abs(np.corrcoef(dW.sum(1), dWp.sum(1))[0, 1]) < 0.06
    assert abs(z.var() - 1.0) < 0.02


def test_rqmc_reduces_variance_of_european_put():
    """Measured variance reduction: batch means of the Black-Scholes put from RQMC (Sobol,
    bridge, antithetics) vs plain MC, 16 batches of 1024 paths each. The ratio is ~10-100 in
    measurements; assert > 4 (an F-test at this size rejects equal variances far below it)."""
    m = RoughBergomi.black_scholes(sigma=0.2)
    root = np.random.SeedSequence(99)

    def batch_means(method):
        out = []
        for s in root.spawn(16):
            p = m.simulate(1024, n_steps=12, method=method, antithetic=method == "rqmc",
                           bridge=method == "rqmc", rng=s)
            out.append(math.exp(-0.05) * np.maximum(100.0 - p.S[:, -1], 0).mean())
        return np.array(out)

    var_qmc = batch_means("rqmc").var(ddof=1)
    var_mc = batch_means("mc").var(ddof=1)
    assert var_mc / var_qmc > 4.0


def test_adaptive_mean_stops_on_tolerance_patience_and_max():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(200)

    res = adaptive_mean(lambda b, s: np.array([noise[b]]), 1, min_batches=4, max_batches=50,
                        tol=10.0)
    assert res.reason == "tol" and res.n_batches == 4
    # alternating +-1: half-widths 12.7, 2.87, 1.84, 1.36, 1.15, 0.99, 0.89 after 2..8
    # batches; 1.36 is the last one below 50% of the best (2.87), then 3 stale batches -> 8
    res = adaptive_mean(lambda b, s: np.array([(-1.0) ** b]), 1, min_batches=4,
                        max_batches=50, patience=3, min_improvement=0.5)
    assert res.reason == "patience" and res.n_batches == 8
    res = adaptive_mean(lambda b, s: np.array([noise[b]]), 1, min_batches=2, max_batches=6,
                        min_improvement=0.0, patience=100)
    assert res.reason == "max_batches" and res.n_batches == 6
    mean, se, hw = t_interval(noise[:6, None])
    np.testing.assert_allclose(res.mean, mean)
    np.testing.assert_allclose(res.half_width, hw)
    with pytest.raises(ValueError, match="patience"):
        adaptive_mean(lambda b, s: 0.0, patience=0)
    with pytest.raises(ValueError, match="max_batches"):
        adaptive_mean(lambda b, s: 0.0, min_batches=5, max_batches=3)


def test_adaptive_mean_batches_get_independent_seeds():
    seen = []
    adaptive_mean(lambda b, s: (seen.append(s.generate_state(1)[0]), 0.0)[1], 5,
                  min_batches=3, max_batches=3)
    assert len(set(seen)) == 3


class TestAdaptiveResult(ResultProtocol):
    result_type = AdaptiveResult
    nit = True

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        noise = np.random.default_rng(0).standard_normal(8)
        return adaptive_mean(lambda b, s: np.array([noise[b]]), 1, min_batches=2,
                             max_batches=8)

    @pytest.fixture
    def failure(self):
        # alternating +-1 never reaches a 95% half-width of 1e-12 in 4 batches
        return lambda: adaptive_mean(lambda b, s: np.array([(-1.0) ** b]), 1, min_batches=2,
                                     max_batches=4, tol=1e-12)
