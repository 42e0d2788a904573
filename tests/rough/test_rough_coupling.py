"""Common random numbers across time grids (deepquant.rough.coupling): the coarse grid's
increments have exactly the law of its own scheme, the finest grid is the single run's, and
the paired difference of grid prices has a much smaller standard error than independent runs.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.integrate import quad

from deepquant.rough import BermudanPricer, Heston, RoughBergomi, preset_pricer, richardson
from deepquant.rough.coupling import (
    coarsen_increments,
    coarsening_map,
    coupled_increments,
    coupled_paths,
    price_levels,
)
from deepquant.rough.rbergomi import hybrid_cell_covariance


@pytest.mark.parametrize("H", [0.07, 0.25, 0.5])
def test_coarse_cell_has_the_exact_hybrid_covariance(H):
    # (dW^c, I^c) = (dW_1 + dW_2, beta . y + sd z) must have the covariance of one hybrid-scheme
    # cell of length 2 dt; closed-form algebra, so rounding-level tolerance (1e-10 relative)
    dt = 1.0 / 192
    (b0, b1, b2, b3), sd = coarsening_map(H, dt)
    cell = hybrid_cell_covariance(H, dt)
    fine = np.zeros((4, 4))
    fine[:2, :2] = fine[2:, 2:] = cell
    beta = np.array([b0, b1, b2, b3])
    sum_w = np.array([1.0, 0.0, 1.0, 0.0])
    cov = np.array([[sum_w @ fine @ sum_w, sum_w @ fine @ beta],
                    [sum_w @ fine @ beta, beta @ fine @ beta + sd**2]])
    np.testing.assert_allclose(cov, hybrid_cell_covariance(H, 2 * dt), rtol=1e-10)


def test_cross_covariance_closed_form_matches_quadrature():
    # Cov(I^c, I_1) = int_0^dt (2dt - s)^a (dt - s)^a ds: the hypergeometric closed form of
    # coarsening_map against adaptive quadrature with the algebraic weight (1e-8 relative)
    H, dt = 0.07, 0.01
    a = H - 0.5
    num = quad(lambda u: (dt + u) ** a, 0.0, dt, weight="alg", wvar=(a, 0.0))[0]
    beta, sd = coarsening_map(H, dt)
    c12 = dt ** (a + 1) / (a + 1)
    c22 = dt ** (2 * a + 1) / (2 * a + 1)
    # I^c's covariance with I_1 reproduced by the conditional mean (sd z is independent)
    implied = beta[0] * c12 + beta[1] * c22
    assert implied == pytest.approx(num, rel=1e-8)
    assert sd**2 < 1e-3 * (2 * dt) ** (2 * a + 1) / (2 * a + 1)   # H = 0.07: 0.05% residual


def test_finest_grid_is_the_single_run_and_sums_hold():
    model = RoughBergomi()
    pricers = [BermudanPricer(n_dates=4, steps_per_date=s) for s in (2, 4, 8)]
    paths = coupled_paths(model, pricers, 64, np.random.SeedSequence(5))
    direct = pricers[-1].simulate(model, 64, np.random.SeedSequence(5))
    np.testing.assert_array_equal(paths[-1].S, direct.S)
    for coarse, fine in zip(paths, paths[1:], strict=False):
        # coarse increments are sums of fine ones (rounding only)
        np.testing.assert_allclose(coarse.dW, fine.dW[:, 0::2] + fine.dW[:, 1::2], atol=1e-14)
        np.testing.assert_allclose(coarse.dW_perp, fine.dW_perp[:, 0::2]
                                   + fine.dW_perp[:, 1::2], atol=1e-14)
    # Heston has no Volterra cell: sums only, cell = 0
    dW = np.ones((2, 4))
    c = coarsen_increments(Heston(), dW, dW, np.zeros((2, 4)), 0.1)
    assert c[0].shape == (2, 2) and np.all(c[0] == 2.0) and np.all(c[2] == 0.0)
    with pytest.raises(ValueError, match="twice the previous"):
        coupled_increments(model, 8, [4, 12], 1.0, rng=1)


def test_coupled_coarse_grid_has_the_law_of_its_scheme():
    # European put on 4 steps: from coarsened 8-step increments and from a direct 4-step
    # simulation (independent plain MC, 2^16 paths each); the means agree within 4 standard
    # errors of the difference (a wrong law of I^c moves V and the price by far more)
    model = RoughBergomi()
    n = 2**16
    incs = coupled_increments(model, n, [4, 8], 1.0, method="mc", rng=11)
    coupled = model.paths_from_increments(*incs[0], 1.0)
    direct = model.simulate(n, n_steps=4, method="mc", rng=12)
    disc = math.exp(-model.r)
    a = disc * np.maximum(100.0 - coupled.S[:, -1], 0.0)
    b = disc * np.maximum(100.0 - direct.S[:, -1], 0.0)
    se = math.hypot(a.std() / math.sqrt(n), b.std() / math.sqrt(n))
    assert abs(a.mean() - b.mean()) < 4 * se
    # and the variance process keeps E[V_t] = xi0 on the coarse grid (4 standard errors)
    v = coupled.V[:, -1]
    assert abs(v.mean() - model.xi0) < 4 * v.std() / math.sqrt(n)


def test_extrapolation_from_coupled_grids_against_a_fine_grid():
    # European put: Richardson (rate 0.7) of coupled 8- and 16-step prices against a 128-step
    # reference from independent paths; within the error estimate (the correction's size)
    # plus 4 standard errors of the extrapolation and the reference (RQMC batches)
    model = RoughBergomi()
    disc = math.exp(-model.r)
    pricers = [BermudanPricer(n_dates=1, steps_per_date=s) for s in (8, 16)]
    root = np.random.SeedSequence(3)
    batches = []
    for seed in root.spawn(8):
        paths = coupled_paths(model, pricers, 2**13, seed)
        batches.append([disc * np.maximum(100.0 - p.S[:, -1], 0.0).mean() for p in paths])
    batches = np.array(batches)
    cov = np.cov(batches, rowvar=False) / len(batches)
    ex = richardson([8, 16], batches.mean(axis=0), rate=0.7, cov=cov)
    ref = [disc * np.maximum(100.0 - model.simulate(2**13, n_steps=128, rng=s).S[:, -1],
                             0.0).mean() for s in np.random.SeedSequence(4).spawn(8)]
    ref_se = np.std(ref, ddof=1) / math.sqrt(len(ref))
    assert abs(ex.value - np.mean(ref)) < ex.error + 4 * math.hypot(ex.stderr, ref_se)
    # coupling: the correction's standard error is below that of independent levels (for the
    # raw payoff without control variate only moderately: measured 0.66x; the scheme's strong
    # error is large, its rate is H, so S_T on the two grids correlates imperfectly)
    indep = math.sqrt(cov[0, 0] + cov[1, 1]) / (2**0.7 - 1)
    assert ex.error_stderr < 0.8 * indep


SMALL = dict(n_dates=4, n_regression=2**11, batch_size=2**10, min_batches=3, max_batches=3,
             martingale_ridge=1e-2, feature_steps=1)
"""A small sub-simulation configuration (seconds per run)."""


@pytest.mark.parametrize("share_fit", [False, True])
def test_black_scholes_grids_coincide(share_fit):
    # the Black-Scholes scheme is exact and the features see the same points: coupled grids
    # give the same bounds up to rounding (1e-9), the paired difference has zero stderr, with
    # each grid's own fit or with the finest grid's fit on both (the estimated grid error of
    # an exact scheme is zero)
    pricer = preset_pricer("rbergomi", **SMALL, subsim_outer=64, subsim_inner=16)
    run = price_levels(RoughBergomi.black_scholes(sigma=0.3), 100.0,
                       [replace(pricer, steps_per_date=s) for s in (1, 2)], rng=2,
                       share_fit=share_fit)
    a, b = run.runs
    assert b.lower == pytest.approx(a.lower, abs=1e-9)
    assert b.upper == pytest.approx(a.upper, abs=1e-9)
    diff, paired, unpaired = run.difference("midpoint")
    assert paired[0] < 1e-9 < unpaired[0]


@pytest.mark.parametrize("share_fit", [False, True])
def test_paired_difference_has_a_smaller_stderr(share_fit):
    # rough Bergomi, 4 and 8 steps per period, features twice per period, sub-simulation
    # dual, fixed seed: one Brownian path per sample makes the standard error of the
    # difference of the grids' lower bounds and midpoints smaller than the same runs would give
    # if independent. Measured here 0.68x (lower) and 0.66x (midpoint), with the finest
    # grid's fit on both grids (share_fit) 0.71x and 0.67x; the tolerance 0.9x leaves room
    # for the 7-dof noise of the ratio. The gain grows with the path counts and a
    # finer grid (benchmark case, 8 and 16 steps, K = 100: 0.33x for the midpoint), and is
    # limited by the scheme's strong error (rate H: the grids' S_T correlate imperfectly).
    pricer = preset_pricer("rbergomi", n_dates=4, n_regression=2**12, batch_size=2**10,
                           min_batches=8, max_batches=8, martingale_ridge=1e-2,
                           feature_steps=2, subsim_outer=128, subsim_inner=32)
    run = price_levels(RoughBergomi(), 100.0,
                       [replace(pricer, steps_per_date=s) for s in (4, 8)], rng=6,
                       share_fit=share_fit)
    for which in ("lower", "midpoint"):
        _, paired, unpaired = run.difference(which)
        assert paired[0] < 0.9 * unpaired[0], which
    assert run.covariance().shape == (2, 2) and run.n_batches == 8
    assert run.to_dict()["steps"] == [4, 8]


def test_finest_level_of_a_coupled_run_is_the_single_run():
    # same seed: the finest grid of a coupled run sees the single run's regression, pricing
    # and inner paths and fits the same way, so its bounds are bit-identical
    p = preset_pricer("rbergomi", n_dates=4, n_regression=2**11, batch_size=2**10,
                      min_batches=2, max_batches=2, subsim_outer=64, subsim_inner=16,
                      feature_steps=2, steps_per_date=4)
    single = p(RoughBergomi(), 100.0, rng=3)
    coupled = price_levels(RoughBergomi(), 100.0, [replace(p, steps_per_date=2), p],
                           rng=3).runs[1]
    assert (coupled.lower, coupled.upper) == (single.lower, single.upper)


def test_shared_fit_uses_the_finest_fit_and_keeps_each_bracket():
    # share_fit: the coarse grid takes the fine grid's policy and martingales (same in-sample
    # dual value, no fitting time of its own beyond rounding), the fine level is unchanged
    # (bit-identical to the run with separate fits), and the coarse bracket still holds for the
    # coarse model: its lower bound is below the upper bound of the coarse grid's own fit
    # within 3 standard errors of the difference
    p = preset_pricer("rbergomi", n_dates=4, n_regression=2**11, batch_size=2**10,
                      min_batches=3, max_batches=3, subsim_outer=64, subsim_inner=16,
                      feature_steps=2)
    levels = [replace(p, steps_per_date=s) for s in (2, 4)]
    own = price_levels(RoughBergomi(), 100.0, levels, rng=5)
    shared = price_levels(RoughBergomi(), 100.0, levels, rng=5, share_fit=True)
    assert (shared.runs[1].lower, shared.runs[1].upper) == (own.runs[1].lower,
                                                            own.runs[1].upper)
    assert shared.runs[0].dual_in_sample == shared.runs[1].dual_in_sample
    assert shared.runs[0].dual_in_sample != own.runs[0].dual_in_sample
    c, o = shared.runs[0], own.runs[0]
    assert c.lower <= o.upper + 3.0 * math.hypot(c.lower_stderr, o.upper_stderr)
    assert o.lower <= c.upper + 3.0 * math.hypot(o.lower_stderr, c.upper_stderr)
    assert "on 8 steps (2 per exercise period)" in c.model   # the model it brackets


def test_shared_fit_needs_common_feature_points():
    # features on every step see different points on the two grids: refused, naming the
    # option; levels that differ in more than the steps are refused too
    p = preset_pricer("rbergomi", n_dates=4, n_regression=2**10, batch_size=2**10)
    with pytest.raises(ValueError, match="feature_steps"):
        price_levels(RoughBergomi(), 100.0, [replace(p, steps_per_date=s) for s in (2, 4)],
                     rng=1, share_fit=True)
    q = replace(p, feature_steps=1)
    with pytest.raises(ValueError, match="differ only in steps_per_date"):
        price_levels(RoughBergomi(), 100.0,
                     [replace(q, steps_per_date=2, martingale_ridge=1.0),
                      replace(q, steps_per_date=4)], rng=1, share_fit=True)


def test_shared_fit_in_the_extrapolation_and_its_refusals():
    # price_converged passes share_fit on (the result says so) and refuses it without coupling
    from deepquant.rough import price_converged

    p = preset_pricer("rbergomi", n_dates=4, n_regression=2**10, batch_size=2**10,
                      min_batches=2, max_batches=2, subsim_outer=32, subsim_inner=8,
                      feature_steps=1)
    res = price_converged(RoughBergomi(), 100.0, pricer=p, steps=(1, 2), rng=4, share_fit=True)
    assert res.share_fit and res.to_dict()["share_fit"] is True
    assert "finest grid's fit" in res.model
    assert res.runs[0].dual_in_sample == res.runs[1].dual_in_sample
    with pytest.raises(ValueError, match="coupled"):
        price_converged(RoughBergomi(), 100.0, pricer=p, steps=(1, 2), rng=4, share_fit=True,
                        coupled=False)
