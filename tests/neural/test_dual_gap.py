"""The semi-dual / dual-gap machinery of the neural surrogate (deepquant.mmot.projection.semi_dual,
deepquant.neural.losses.dual_gap_loss) and the exact first period of the network."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deepquant.market.synthetic import gbm_marginals, heston_marginals  # noqa: E402
from deepquant.mmot.entropic import solve_entropic  # noqa: E402
from deepquant.mmot.projection import martingale_projection, semi_dual  # noqa: E402
from deepquant.neural import data as nd  # noqa: E402
from deepquant.neural.losses import dual_gap_loss, semi_dual_value  # noqa: E402


@pytest.fixture(scope="module")
def solved():
    """Heston marginals at 4 dates on a 61-point grid, solved to 1e-11 (c = 0, product
    reference: the neural surrogate's problem)."""
    grid = np.linspace(0.6, 1.4, 61)
    marg = heston_marginals([0.0, 0.1, 0.2, 0.3], grid=grid, v0=0.05, rho=-0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = solve_entropic(marg, 1.0, tol=1e-11)
    assert res.success
    return marg, res


def _perturbed(res, rng, size=0.3):
    live = res.v > -1e6
    return np.where(live, res.v + size * rng.standard_normal(res.v.shape), res.v)


def test_dual_gap_equals_kl_of_the_projected_plan(solved):
    """G(v*) - G(v) = KL(pi* || pi(v)) for the projected plan of any v (identity in exact
    arithmetic; the reference KL is computed from the kernels of martingale_projection and
    the classical solver, independently of semi_dual)."""
    marg, res = solved
    w, grid = marg.weights, marg.grid
    rng = np.random.default_rng(0)
    for size in (0.05, 0.5):
        v = _perturbed(res, rng, size)
        gap = (semi_dual(grid, w[:-1], w[1:], res.v, res.h).value
               - semi_dual(grid, w[:-1], w[1:], v).value)
        proj = martingale_projection(marg, v)
        p = w[:-1][:, :, None] * res.kernels
        q = w[:-1][:, :, None] * proj.kernels
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(axis=(1, 2))
        assert np.all(gap[1:] > 0)
        # period 0 starts from the point mass X_0 = 1: both plans are mu_1 up to the
        # perturbation's affine part, and the gap is that of the non-affine part
        np.testing.assert_allclose(gap, kl, rtol=1e-7, atol=1e-12)


def test_semi_dual_is_gauge_invariant_and_rejects_bad_input(solved):
    marg, res = solved
    w, grid = marg.weights, marg.grid
    v = _perturbed(res, np.random.default_rng(1), 0.2)
    y = grid - 1.0
    for floor in (0.0, 1e-6):
        g0 = semi_dual(grid, w[:-1], w[1:], v, column_floor=floor).value
        g1 = semi_dual(grid, w[:-1], w[1:], v + 3.0 - 40.0 * y[None, :],
                       column_floor=floor).value
        # exact up to round-off of terms of size |a| + |b| ~ 40 (the targets are tilted to the
        # rows' mass and mean, so the gauge holds with a column floor too)
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="v must be a finite array"):
        semi_dual(grid, w[:-1], w[1:], np.full_like(v, np.nan))
    with pytest.raises(ValueError, match="mu and nu must both have shape"):
        semi_dual(grid, w[:-1], w[1:, :10], v)
    with pytest.raises(ValueError, match="column_floor"):
        semi_dual(grid, w[:-1], w[1:], v, column_floor=-1.0)


def test_semi_dual_gradient_is_nu_minus_projected_columns(solved):
    """Autograd through semi_dual_value (row multipliers held at their optimum) equals central
    differences of the numpy semi-dual (which re-solves the rows), and nu - column sums."""
    marg, res = solved
    w, grid = marg.weights, marg.grid
    v = _perturbed(res, np.random.default_rng(2), 0.3)
    vt = torch.tensor(v, requires_grad=True)
    value, sd = semi_dual_value(vt, w[:-1], w[1:], grid, column_floor=0.0)
    value.sum().backward()
    grad = vt.grad.numpy()
    proj = martingale_projection(marg, v)
    cols = np.einsum("tx,txy->ty", sd.mu, proj.kernels)
    live = sd.nu > 0
    np.testing.assert_allclose(grad[live], (sd.nu - cols)[live], atol=1e-12)
    for t, j in ((1, 30), (2, 25), (2, 36)):
        e = 1e-6
        vp, vm = v.copy(), v.copy()
        vp[t, j] += e
        vm[t, j] -= e
        fd = (semi_dual(grid, w[:-1], w[1:], vp).value[t]
              - semi_dual(grid, w[:-1], w[1:], vm).value[t]) / (2 * e)
        assert abs(fd - grad[t, j]) <= 1e-7 * max(1.0, abs(fd)), (t, j, fd, grad[t, j])


def _batch(marg, v_ref, h_ref):
    w = torch.as_tensor(np.array(marg.weights))[None]
    n, m = v_ref.shape
    return {"weights64": w, "grid64": torch.tensor(marg.grid),
            "weights": w.float(), "grid": torch.tensor(marg.grid).float(),
            "v": torch.as_tensor(v_ref)[None], "h": torch.as_tensor(h_ref)[None],
            "v_valid": torch.as_tensor(v_ref > -1e6)[None],
            "h_valid": torch.ones(1, n, m, dtype=torch.bool),
            "period_mask": torch.ones(1, n, dtype=torch.bool), "labelled": True}


def test_dual_gap_loss_zero_at_the_teacher_and_positive_elsewhere(solved):
    marg, res = solved
    v_ref = np.where(res.v > -1e6, res.v, 0.0)
    b = _batch(marg, v_ref, res.h)
    at = dual_gap_loss(torch.as_tensor(v_ref)[None], torch.as_tensor(res.h)[None], b,
                       weighting="kl")
    assert abs(float(at.gap)) <= 1e-10 and float(at.kl[0]) <= 1e-10
    assert float(at.hcons) <= 1e-12                        # h* is row-optimal for v*
    v = _perturbed(res, np.random.default_rng(3), 0.3)
    off = dual_gap_loss(torch.as_tensor(np.where(res.v > -1e6, v, 0.0))[None],
                        torch.as_tensor(res.h)[None], b, weighting="kl")
    assert float(off.gap) > 1e-4 and float(off.hcons) > 0
    # a subset of periods estimates the path KL as N / |sel| times its sum
    sub = dual_gap_loss(torch.as_tensor(np.where(res.v > -1e6, v, 0.0))[None],
                        torch.as_tensor(res.h)[None], b, np.array([1, 2]), weighting="kl")
    assert float(sub.gap) > 0
    b_unl = {**b, "labelled": False}
    neg = dual_gap_loss(torch.as_tensor(v_ref)[None], torch.as_tensor(res.h)[None], b_unl,
                        weighting="kl")
    assert neg.kl is None                                   # -G without a teacher
    with pytest.raises(ValueError, match="weighting"):
        dual_gap_loss(torch.as_tensor(v_ref)[None], torch.as_tensor(res.h)[None], b,
                      weighting="sqrt")


def test_first_period_from_a_point_mass_is_exact():
    """X_0 = 1: the network's v on period 0 is 0 (the exact answer), so the projected first
    kernel is mu_1 itself, whatever the weights."""
    from deepquant.neural.config import ModelConfig
    from deepquant.neural.model import build_model

    grid = nd.model_grid()
    marg = gbm_marginals([0.0, 0.1, 0.25], grid=grid, sigma=0.25)
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_embed=16, d_model=16, n_layers=1, n_heads=2, d_ff=16,
                                    in_features=3), grid)
    for p in model.parameters():                            # heads start at zero: randomise
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        v, h = model(torch.tensor(np.array(marg.weights), dtype=torch.float32)[None])
    v = v[0].double().numpy()
    assert np.all(v[0] == 0) and np.any(v[1] != 0)
    proj = martingale_projection(marg, v, h[0].double().numpy())
    np.testing.assert_allclose(proj.kernels[0][grid == 1.0][0], marg.weights[1], atol=1e-14)


def test_period_metrics_are_the_second_order_errors_of_the_projected_plan(solved):
    """refit's quadratic forms against exact computations at a small perturbation dv:
    "kl": 1/2 dv' A dv = the dual gap G(v*) - G(v* + dv) (= KL of the projected plan);
    "call": 1/2 |Phi' A dv|^2-form = 1/2 |Phi' (columns of the projected plan - nu)|^2 with
    Phi = 10 (y - k)^+ (the call-price error of mu_{t+1}), both to second order."""
    from deepquant.neural.refit import period_metric

    marg, res = solved
    w, grid = marg.weights, marg.grid
    live = res.v > -1e6
    v_star = np.where(live, res.v, 0.0)
    rng = np.random.default_rng(5)
    dv = np.where(live, 1e-3 * rng.standard_normal(v_star.shape), 0.0)
    dv[0] = 0.0                                   # period 0 (point mass) is exact anyway
    a_kl = period_metric(w[:-1], w[1:], v_star, res.h, grid, metric="kl", column_floor=0.0)
    a_call = period_metric(w[:-1], w[1:], v_star, res.h, grid, metric="call", column_floor=0.0)
    gap = (semi_dual(grid, w[:-1], w[1:], v_star, res.h).value
           - semi_dual(grid, w[:-1], w[1:], v_star + dv).value)
    quad = 0.5 * np.einsum("ty,tyz,tz->t", dv, a_kl, dv)
    np.testing.assert_allclose(quad[1:], gap[1:], rtol=1e-2)
    proj = martingale_projection(marg, v_star + dv)
    cols = np.einsum("tx,txy->ty", w[:-1], proj.kernels)
    phi = 10.0 * np.maximum(grid[:, None] - grid[None, :], 0.0)
    call_err = 0.5 * (((cols - w[1:]) @ phi) ** 2).sum(1)
    quad_call = 0.5 * np.einsum("ty,tyz,tz->t", dv, a_call, dv)
    np.testing.assert_allclose(quad_call[1:], call_err[1:], rtol=2e-2)
    with pytest.raises(ValueError, match="metric must be one of"):
        period_metric(w[:-1], w[1:], v_star, res.h, grid, metric="l2")
