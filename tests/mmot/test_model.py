"""The calibrated martingale model (deepquant.mmot.model).

Independent references: E's exact augmented LP (every model price lies inside the bounds), the
model-free prices of Europeans and of the sum of squared increments, and Monte Carlo on paths
sampled from the kernels (within k standard errors, fixed seeds).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepquant.market.marginals import Marginals
from deepquant.mmot.lp import lp_bounds
from deepquant.mmot.model import CalibratedModel
from deepquant.payoffs import (
    AsianCall,
    EuropeanCall,
    ForwardStartStraddle,
    LookbackCall,
    SumSquaredIncrements,
)
from tests.conftest import martingale_kernel_marginals, random_walk_marginals

K_SE = 4.0  # Monte Carlo tolerance in standard errors (two-sided p ~ 6e-5 per assertion)


@pytest.fixture(scope="module")
def rw():
    grid, w = random_walk_marginals()
    return Marginals(grid, w)


@pytest.fixture(scope="module", params=["product", "lognormal"])
def model(request, rw):
    return CalibratedModel.calibrate(rw, reference=request.param)


RW_PAYOFFS = [AsianCall(strike=100.0, dates=(1, 2, 3)), LookbackCall(strike=100.0),
              ForwardStartStraddle(strike=1.0, t1=1, t2=3), AsianCall(strike=101.0)]


def test_fits_marginals_and_is_martingale(model):
    assert model.solve.success
    assert model.marginal_error() <= 1e-9  # measured by propagating mu_0 through the kernels
    assert model.drift() <= 1e-9 * 100  # moneyness ~ 100 here: relative 1e-9


@pytest.mark.parametrize("payoff", RW_PAYOFFS, ids=lambda p: p.name)
def test_prices_inside_lp_bounds(model, rw, payoff):
    lp = lp_bounds(rw, payoff)
    assert lp.success
    price = model.price(payoff)
    assert lp.lower - 1e-9 <= price <= lp.upper + 1e-9  # tolerance: LP residuals ~1e-12


def test_prices_inside_lp_bounds_random_marginals():
    rng = np.random.default_rng(11)
    for _ in range(3):
        grid, w = martingale_kernel_marginals(rng, n_dates=4, size=9)
        m = Marginals(grid, w)
        mod = CalibratedModel.calibrate(m)
        for payoff in (AsianCall(strike=1.0), LookbackCall(strike=1.05)):
            lp = lp_bounds(m, payoff)
            assert lp.lower - 1e-9 <= mod.price(payoff) <= lp.upper + 1e-9


def test_model_free_prices_are_exact(model, rw):
    """European calls and the sum of squared increments do not depend on the martingale law:
    E[sum (dX)^2] = sum_t (E X_{t+1}^2 - E X_t^2). Tolerance: solver residuals 1e-9 x 1e4."""
    second = rw.weights @ rw.grid**2
    assert model.price(SumSquaredIncrements()) == pytest.approx(second[-1] - second[0], abs=1e-5)
    assert model.price(SumSquaredIncrements()) == pytest.approx(6.0, abs=1e-5)  # DESIGN §2.3
    call = float(rw.call_prices(100.0)[-1, 0])
    assert model.price(EuropeanCall(strike=100.0)) == pytest.approx(call, abs=1e-9)


@pytest.mark.parametrize("payoff", RW_PAYOFFS[:3], ids=lambda p: p.name)
def test_monte_carlo_agrees_with_exact_price(model, payoff):
    paths = model.sample(20_000, rng=12345)
    vals = payoff.evaluate(paths)
    se = vals.std(ddof=1) / np.sqrt(vals.size)
    assert abs(vals.mean() - model.price(payoff)) <= K_SE * se


def test_sample_marginals_match(model, rw):
    n = 20_000
    idx = model.sample(n, rng=7, return_indices=True)
    assert idx.shape == (n, rw.n_dates) and idx.dtype.kind == "i"
    for t in range(rw.n_dates):
        freq = np.bincount(idx[:, t], minlength=rw.size) / n
        mu = rw.weights[t]
        se = np.sqrt(mu * (1 - mu) / n)
        assert np.all(np.abs(freq - mu) <= K_SE * se + 1e-12)
    paths = model.sample(5, rng=np.random.default_rng(1))
    assert np.all(np.isin(paths, rw.grid))
    # same seed, same paths
    np.testing.assert_array_equal(model.sample(100, rng=3), model.sample(100, rng=3))


def test_expected_abs_moves_matches_sampling(model):
    paths = model.sample(20_000, rng=99)
    moves = np.abs(np.diff(paths, axis=1))
    se = moves.std(axis=0, ddof=1) / np.sqrt(moves.shape[0])
    assert np.all(np.abs(moves.mean(axis=0) - model.expected_abs_moves()) <= K_SE * se)


def test_input_errors(rw, model):
    with pytest.raises(ValueError, match=r"kernels must have shape \(N, M, M\) = \(3, 13, 13\)"):
        CalibratedModel(rw, np.zeros((2, 13, 13)))
    bad = np.array(model.kernels)
    bad[1, 6, :] *= 2.0
    with pytest.raises(ValueError, match=r"kernels\[1\] row x=100 sums to 2"):
        CalibratedModel(rw, bad)
    with pytest.raises(ValueError, match=r"n_paths must be an integer >= 1, got 0"):
        model.sample(0)
    with pytest.raises(TypeError, match=r"payoff must be a Payoff, got str"):
        model.price("asian-call")
    with pytest.raises(TypeError, match=r"marginals must be a Marginals"):
        CalibratedModel.calibrate(rw.weights)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_dates=st.integers(2, 4),
       strike=st.sampled_from([0.9, 1.0, 1.1]))
def test_property_random_marginals(seed, n_dates, strike):
    """Random convex-ordered marginals (random martingale kernels, conftest): the calibrated
    model solves successfully with measured residuals below 1e-9, and its Asian and lookback
    prices lie inside the exact LP bounds (the acceptance case)."""
    grid, w = martingale_kernel_marginals(np.random.default_rng(seed), n_dates=n_dates, size=9)
    m = Marginals(grid, w)
    mod = CalibratedModel.calibrate(m)
    assert mod.solve.success
    assert mod.marginal_error() <= 1e-9 and mod.drift() <= 1e-9
    for payoff in (AsianCall(strike=strike), LookbackCall(strike=strike)):
        lp = lp_bounds(m, payoff)
        assert lp.success
        assert lp.lower - 1e-9 <= mod.price(payoff) <= lp.upper + 1e-9


# ---------------------------------------------------------------------- fast forward recursion
def _reference_expectation(chain, kernels, law0):
    """The forward recursion written out with one sparse matrix per step (the pre-plan
    implementation), as an independent reference for ``ChainPlan``."""
    from scipy import sparse

    m = chain.size
    joint = chain.initial.multiply(law0[:, None]).toarray()
    for t in range(chain.last_date):
        q = joint.T @ kernels[t]
        n_t = q.shape[0]
        sel = sparse.csr_matrix(
            (q.ravel(), (np.tile(np.arange(m), n_t), np.arange(n_t * m))), shape=(m, n_t * m))
        joint = np.asarray((sel @ chain.transitions[t]).todense())
    return float(np.sum(joint * chain.terminal))


def _heston_on_uneven_grid():
    from deepquant.market.synthetic import heston_marginals

    grid = np.concatenate([np.linspace(0.6, 0.95, 9), np.linspace(0.97, 1.5, 14)])
    return heston_marginals([0.0, 0.2, 0.4, 0.6, 0.8], grid=grid)


CHAIN_PAYOFFS = [
    AsianCall(strike=1.0),
    AsianCall(strike=1.02, dates=(1, 3), weights=(0.3, 0.7)),
    LookbackCall(strike=1.05),
    ForwardStartStraddle(t1=1, t2=3),
    EuropeanCall(strike=0.95),
]


@pytest.mark.parametrize("payoff", CHAIN_PAYOFFS, ids=lambda p: p.name)
@pytest.mark.parametrize("grid_kind", ["lattice", "uneven"])
def test_chain_plan_matches_sparse_reference(payoff, grid_kind, rw):
    """Plan recursion (banded) == the per-step sparse recursion to 1e-13 (same sums, other
    order, entries below 1e-14 of a kernel row / 1e-18 of the mass dropped), single and
    batched, on a lattice grid and on an uneven grid (interpolated sum grid)."""
    from deepquant.mmot.augment import build_chain, expectation
    from deepquant.mmot.model import chain_plan, price_batch
    from deepquant.payoffs import make_payoff

    marg = rw if grid_kind == "lattice" else _heston_on_uneven_grid()
    models = [CalibratedModel.calibrate(marg, reference=r) for r in ("product", "lognormal")]
    for pay in (payoff, make_payoff("up-and-out-call", strike=1.0, barrier=1.2)):
        chain = build_chain(marg, pay)
        ref = [_reference_expectation(chain, mo.kernels, marg.weights[0]) for mo in models]
        got = [expectation(chain, mo.kernels) for mo in models]
        assert np.allclose(got, ref, rtol=0, atol=1e-13)
        batch = chain_plan(chain).expectation(np.stack([mo.kernels for mo in models]),
                                              np.stack([marg.weights[0]] * 2))
        assert np.allclose(batch, ref, rtol=0, atol=1e-13)
        assert np.allclose(price_batch(marg, np.stack([mo.kernels for mo in models]), pay),
                           ref, rtol=0, atol=1e-13)
        assert models[0].price(pay) == pytest.approx(ref[0], abs=1e-13)


def test_price_batch_union_support_is_exact():
    """Instances with different supports priced in one call on the union chain equal their
    one-by-one prices (1e-13), and Monte Carlo on each model's own paths agrees (k SE)."""
    from deepquant.market.synthetic import gbm_marginals
    from deepquant.mmot.model import price_batch

    grid = np.linspace(0.5, 1.5, 41)
    margs = [gbm_marginals([0.0, 0.1, 0.25, 0.4], sigma=s, grid=grid)
             for s in (0.12, 0.2, 0.3)]
    supports = {(m.weights > 0).tobytes() for m in margs}
    assert len(supports) == 3   # the union chain is larger than each instance's own
    models = [CalibratedModel.calibrate(m) for m in margs]
    pay = AsianCall(strike=1.0)
    one = np.array([mo.price(pay) for mo in models])
    batch = price_batch(margs, np.stack([mo.kernels for mo in models]), pay)
    assert np.allclose(batch, one, rtol=0, atol=1e-13)
    for mo, p in zip(models, one):
        vals = pay(mo.sample(40_000, rng=3))
        assert abs(vals.mean() - p) < K_SE * vals.std() / np.sqrt(vals.size)


def test_price_batch_full_support_chain_is_exact_and_shared():
    """``support="full"``: one chain for every instance on the grid (the cache holds one entry
    after pricing three instances with three supports), prices equal to the instances' own
    union-support prices to 1e-13 for the Asian, lookback and forward-start payoffs."""
    from deepquant.market.synthetic import gbm_marginals
    from deepquant.mmot.model import _CHAINS, price_batch

    grid = np.linspace(0.5, 1.5, 41)
    margs = [gbm_marginals([0.0, 0.1, 0.25, 0.4], sigma=s, grid=grid)
             for s in (0.12, 0.2, 0.3)]
    models = [CalibratedModel.calibrate(m) for m in margs]
    for pay in (AsianCall(strike=1.0), LookbackCall(strike=1.0),
                ForwardStartStraddle(t1=1, t2=3)):
        one = np.array([price_batch(m, mo.kernels, pay)[0] for m, mo in zip(margs, models)])
        _CHAINS.clear()
        full = np.array([price_batch(m, mo.kernels, pay, support="full")[0]
                         for m, mo in zip(margs, models)])
        assert len(_CHAINS) == 1
        assert np.allclose(full, one, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="support must be"):
        price_batch(margs[0], models[0].kernels, pay, support="all")


def test_price_batch_input_errors(rw, model):
    from deepquant.mmot.model import price_batch

    with pytest.raises(ValueError, match="kernels must have shape"):
        price_batch(rw, np.zeros((2, 3)), AsianCall(strike=1.0))
    with pytest.raises(ValueError, match="2 marginals for 1 kernel sets"):
        price_batch([rw, rw], model.kernels, AsianCall(strike=1.0))
    with pytest.raises(TypeError, match="marginals must be"):
        price_batch([], model.kernels, AsianCall(strike=1.0))


@pytest.mark.parametrize("payoff", [AsianCall(strike=1.0), LookbackCall(strike=1.0),
                                    ForwardStartStraddle(t1=2, t2=5), "up-and-out"],
                         ids=["asian", "lookback", "forward-start", "barrier"])
def test_banded_plan_matches_exact_on_heston_model_grid(payoff):
    """The benchmark's chain (Heston, N = 10, the neural model's 150-point grid: the exact
    lattice Asian has 1,357 sum values): the banded recursion equals the exact per-step sparse
    recursion and the dense plan within 1e-10 relative (measured ~1e-14), single and batched,
    and within its own reported bound (dropped mass x max |payoff|, itself <= 1e-12)."""
    from deepquant.market.synthetic import heston_marginals
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.model import chain_plan
    from deepquant.neural.data import model_grid
    from deepquant.payoffs import make_payoff

    if payoff == "up-and-out":
        payoff = make_payoff("up-and-out-call", strike=1.0, barrier=1.2)
    marg = heston_marginals(np.linspace(0.0, 0.5, 11), grid=model_grid(150), v0=0.04,
                            kappa=2.0, theta=0.04, sigma_v=0.3, rho=-0.5)
    mod = CalibratedModel.calibrate(marg)
    chain = build_chain(marg, payoff)
    plan = chain_plan(chain)
    ref = _reference_expectation(chain, mod.kernels, marg.weights[0])
    vals, bound = plan.expectation_bound(mod.kernels[None], marg.weights[0][None])
    assert abs(vals[0] - ref) <= 1e-10 * abs(ref)
    assert abs(vals[0] - ref) <= bound[0] + 1e-15   # + rounding of the two summation orders
    assert bound[0] <= 1e-12
    dense = plan._expectation_dense(mod.kernels[None], marg.weights[0][None])[0]
    assert abs(dense - ref) <= 1e-13
    # batched: the calibrated kernels and a lognormal-reference model side by side
    other = CalibratedModel.calibrate(marg, reference="lognormal")
    ks = np.stack([mod.kernels, other.kernels, mod.kernels])
    law = np.stack([marg.weights[0]] * 3)
    batch = plan.expectation(ks, law)
    ref2 = _reference_expectation(chain, other.kernels, marg.weights[0])
    assert np.allclose(batch, [ref, ref2, ref], rtol=1e-10, atol=0)
    assert batch[0] == batch[2]


def test_banded_plan_bound_counts_dropped_mass():
    """With coarse thresholds the banded recursion drops real mass: the error then stays
    within the reported bound, which is what makes the default thresholds' bound meaningful."""
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.model import ChainPlan

    grid = np.linspace(0.5, 1.5, 41)
    from deepquant.market.synthetic import gbm_marginals

    marg = gbm_marginals([0.0, 0.1, 0.2, 0.3, 0.4], sigma=0.3, grid=grid)
    mod = CalibratedModel.calibrate(marg)
    chain = build_chain(marg, AsianCall(strike=1.0))
    plan = ChainPlan(chain)
    ref = _reference_expectation(chain, mod.kernels, marg.weights[0])
    plan.BAND_EPS, plan.MASS_EPS = 1e-3, 1e-4
    vals, bound = plan.expectation_bound(mod.kernels[None], marg.weights[0][None])
    err = abs(vals[0] - ref)
    assert 1e-8 < err <= bound[0]


def _random_banded_kernels(rng, b, n, m, *, max_width, shift, spread=False):
    """(b, n, m, m) random stochastic kernels, row x nonzero on |x - y - shift| <= a random
    width in [1, max_width) and at y = x; with ``spread``, entries over 16 orders of magnitude
    (many below the default band cut of 1e-14 of the row's largest)."""
    x = np.arange(m)
    kern = np.empty((b, n, m, m))
    for i in range(b):
        for t in range(n):
            width = rng.integers(1, max_width, size=m)[:, None]
            band = (np.abs(x[:, None] - x[None, :] - shift) <= width) | np.eye(m, dtype=bool)
            k = (rng.random((m, m)) ** 4 * band * 10.0 ** -rng.integers(0, 16, size=(m, m))
                 if spread else rng.random((m, m)) * band)
            kern[i, t] = k / k.sum(axis=1, keepdims=True)
    return kern


@pytest.mark.parametrize("payoff", [AsianCall(strike=1.0), LookbackCall(strike=1.0)],
                         ids=["asian", "lookback"])
def test_banded_tiles_on_diagonal_bands_match_dense(payoff):
    """Random kernels with a diagonal band of random width per row (most entries 0): the banded
    recursion, whose tiles take only their rows' live states within each block, equals the
    dense reference to 1e-12 relative for tiles and blocks of every size (tiny ones that cut
    every band and live range; the default; one tile and one block over everything, the plain
    rectangle), with the closed forms on and off (every date through the tiles)."""
    from deepquant.market.synthetic import gbm_marginals
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.model import ChainPlan

    rng = np.random.default_rng(7)
    grid = np.linspace(0.5, 1.5, 41)
    marg = gbm_marginals([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], sigma=0.3, grid=grid)
    m, n = grid.size, marg.n_dates - 1
    kern = _random_banded_kernels(rng, 2, n, m, max_width=8, shift=2)
    law = np.stack([marg.weights[0]] * 2)
    plan = ChainPlan(build_chain(marg, payoff))
    dense = plan._expectation_dense(kern, law)
    for closed in (True, False):
        plan.CLOSED_FORM = closed
        for tile, block in [(1, 1), (3, 5), (ChainPlan.TILE, ChainPlan.BLOCK), (m, 10 ** 6)]:
            plan.TILE, plan.BLOCK = tile, block
            vals, bound = plan.expectation_bound(kern, law)
            np.testing.assert_allclose(vals, dense, rtol=1e-12, atol=0)
            assert np.all(np.abs(vals - dense) <= bound + 1e-15)


def _band_row_reference(row, eps):
    """The band of ``_band_row`` written with numpy: the columns from the first to the last
    entry above eps times the row's largest, the mass outside it."""
    big = np.abs(row) > eps * np.max(np.abs(row), initial=0.0)
    if not big.any():                                   # empty: at the end, all cut off
        return row.size, row.size, float(np.abs(row).sum())
    a = int(np.argmax(big))
    e = row.size - int(np.argmax(big[::-1]))
    return a, e, float(np.abs(row[:a]).sum() + np.abs(row[e:]).sum())


@pytest.mark.parametrize("c", [0, 1, 3, 4, 5, 7, 8, 9, 16, 17, 63, 150])
def test_band_row_matches_numpy(c):
    """``_band_row`` (four running maxima, edges found eight entries at a time) cuts every row
    where the plain definition does: random rows of every length around the group sizes,
    bands anywhere (at the ends, one column wide, none), entries equal to the cut, zero rows;
    the band and the kept entries exactly, the mass cut off to 1e-13 relative (summed in
    another order)."""
    from deepquant.mmot._chainplan_kernels import _band_row

    rng = np.random.default_rng(c)
    m = 160
    cols = np.sort(rng.choice(m, size=c, replace=False)).astype(np.int64)
    src = np.zeros((12, m))
    for x in range(11):
        lo, hi = np.sort(rng.integers(0, m + 1, size=2))
        src[x, lo:hi] = rng.random(hi - lo) * 10.0 ** rng.integers(-20, 1, size=hi - lo)
    src[10] = 0.0                                     # row 11 too: all zero
    src[9, cols[c // 2:c // 2 + 1]] = 1.0             # one column over the cut ...
    if c > 2:
        src[9, cols[0]] = src[9, cols[-1]] = 0.3      # ... and two entries exactly on it
    k = np.full((12, c), np.nan)
    for eps in (0.0, 1e-14, 0.3):
        for x in range(12):
            a, e, tail = _band_row(src, x, cols, eps, k, x)
            ra, re_, rtail = _band_row_reference(src[x, cols], eps)
            assert (a, e) == (ra, re_)
            want = np.where((np.arange(c) >= a) & (np.arange(c) < e), src[x, cols], 0.0)
            np.testing.assert_array_equal(k[x], want)
            assert abs(tail - rtail) <= 1e-13 * rtail
    one = np.zeros((1, m))
    kk = np.empty((1, c))
    for j in range(c):              # a band of one column at every offset in the groups
        one[0, cols] = 0.2
        one[0, cols[j]] = 1.0
        assert _band_row(one, 0, cols, 0.3, kk, 0)[:2] == (j, j + 1)
        one[0, cols[:j]] = 0.0      # and a band from j to the end over zeros before it
        assert _band_row(one, 0, cols, 0.1, kk, 0)[:2] == (j, c)


@pytest.mark.parametrize("payoff, sum_mode", [
    (AsianCall(strike=1.0), "lattice"), (AsianCall(strike=1.0), "grid"),
    (LookbackCall(strike=1.0), "auto"), ("up-and-out", "auto")],
    ids=["asian-lattice", "asian-sum-grid", "lookback", "up-and-out"])
def test_banded_plan_on_random_kernels_matches_dense(payoff, sum_mode):
    """Random stochastic kernels with a diagonal band of random width per row: the banded
    recursion with its default thresholds (band cuts, live-state trims, the meeting in the
    middle's backward laws, the closed forms) equals the dense reference, which drops
    nothing, to 1e-12 relative, and its bound covers the gap; with coarse thresholds (real
    mass dropped at every band edge and trim) the gap stays within the bound. On the
    running-sum lattice, the interpolated sum grid, the running max and a barrier."""
    from deepquant.market.synthetic import gbm_marginals
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.model import ChainPlan
    from deepquant.payoffs import make_payoff

    if payoff == "up-and-out":
        payoff = make_payoff("up-and-out-call", strike=1.0, barrier=1.2)
    rng = np.random.default_rng(11)
    grid = np.linspace(0.5, 1.5, 45)
    marg = gbm_marginals([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], sigma=0.3, grid=grid)
    kern = _random_banded_kernels(rng, 3, marg.n_dates - 1, grid.size, max_width=12, shift=1,
                                  spread=True)
    law = np.stack([marg.weights[0]] * 3)
    opts = {} if sum_mode == "auto" else {"sum_mode": sum_mode, "sum_grid_size": 61}
    plan = ChainPlan(build_chain(marg, payoff, **opts))
    dense = plan._expectation_dense(kern, law)
    vals, bound = plan.expectation_bound(kern, law)
    np.testing.assert_allclose(vals, dense, rtol=1e-12, atol=0)
    assert np.all(np.abs(vals - dense) <= bound + 1e-15)
    plan.BAND_EPS, plan.MASS_EPS = 1e-4, 1e-6
    vals, bound = plan.expectation_bound(kern, law)
    gap = np.abs(vals - dense)
    assert np.all(gap <= bound + 1e-15) and gap.max() > 1e-12


@pytest.mark.parametrize("n_paths, rng, match", [
    # before (library fuzz, third pass): numpy's messages without the argument
    (10, 1.5, "rng must be an int, a numpy Generator, a SeedSequence or None, got 1.5"),
    (10, float("nan"), "rng must be an int, .* got nan"),
    (10, "x", "rng must be an int, .* got 'x'"),
    (10, True, "rng must be an int, .* got True"),          # before: seeded as 1
    (10, -1, "rng seed must be >= 0, got -1"),
    (float("nan"), 0, "n_paths must be an integer >= 1, got nan"),  # before: int() of NaN
])
def test_sample_refuses_bad_counts_and_seeds(rw, n_paths, rng, match):
    model = CalibratedModel.calibrate(rw)
    with pytest.raises(ValueError, match=match):
        model.sample(n_paths, rng=rng)


def test_sample_takes_an_integral_float_count(rw):
    model = CalibratedModel.calibrate(rw)
    np.testing.assert_array_equal(model.sample(1e2, rng=3), model.sample(100, rng=3))
