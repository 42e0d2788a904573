"""The fast neural path against independent references.

* Row projection (``deepquant.mmot.projection.project_periods``, compiled, geometric weights on
  the uniform model grid; the direct exponential with another reference) against the numpy
  row solver ``deepquant.mmot._gibbs._row_solve`` run on the same supports (``_prepare``): the two stop at |E[Y - x | x]| <= 1e-13 on the same
  root, so kernels agree to round-off (asserted 1e-12 absolute; measured ~4e-14).
* Pricing (``NeuralSolution.price``: the full-support chain, banded dgemm recursion) against
  the per-step sparse recursion of ``deepquant.mmot.augment.expectation`` on the chain of the
  instance's own support, built independently: 1e-10 relative (the task's bar; measured
  ~5e-14), for a lattice Asian (in-place shift map) and a lookback (general map).
* Stacked projections equal per-instance ones exactly; threaded sweeps equal single solves
  to 1e-12 relative.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

pytest.importorskip("torch")

from deepquant.mmot._gibbs import _row_solve  # noqa: E402
from deepquant.mmot._support import _prepare, reference_kernels  # noqa: E402
from deepquant.mmot.augment import build_chain, expectation  # noqa: E402
from deepquant.mmot.projection import martingale_projection, project_periods  # noqa: E402
from deepquant.neural.data import build_marginals, instance_spec, model_grid  # noqa: E402
from deepquant.neural.pricer import NeuralPricer  # noqa: E402
from deepquant.neural.sweep import sweep  # noqa: E402
from deepquant.payoffs import AsianCall, LookbackCall  # noqa: E402

N_DATES = 5     # the checkpoint's own families at N = 5 keep the independent chains small


@pytest.fixture(scope="module")
def pricer():
    return NeuralPricer(ood_marginal_error=float("inf"))


@pytest.fixture(scope="module")
def instances():
    grid = model_grid(150)
    return [build_marginals(instance_spec(i, 3, n_choices=(N_DATES,)), grid) for i in range(3)]


def _reference_kernels(marg, v, h, column_floor, reference="product"):
    """The projection with the numpy row solver (the implementation before the compiled one)."""
    w = marg.weights
    nu = w[1:].copy()
    nu[nu <= column_floor] = 0.0
    logq_raw = reference_kernels(marg, reference)
    with np.errstate(all="ignore"):
        b = _prepare(marg.grid, w[:-1].copy(), nu, logq_raw, None, touch_tol=1e-11)
        kern = np.broadcast_to(np.eye(marg.size), (marg.n_periods, marg.size, marg.size)).copy()
        tt, xx = np.nonzero(b.mu > 0)
        eta, p, _, _ = _row_solve(b.logq[tt, xx, :] + v[tt], b.diff[xx], h[tt, xx], tol=1e-13,
                                  kernels=True)
    kern[tt, xx] = p
    return kern, eta, (tt, xx)


def test_projection_matches_numpy_row_solver(pricer, instances):
    for marg in instances:
        v, h = (a[0] for a in pricer.predict(marg.weights[None]))
        sol = pricer.solve(marg)
        ref, eta, (tt, xx) = _reference_kernels(marg, v, h, pricer.column_floor)
        assert sol.mode == "neural"
        assert np.max(np.abs(sol.kernels - ref)) <= 1e-12
        fin = np.isfinite(eta)
        assert np.max(np.abs(sol.h[tt, xx][fin] - eta[fin])) <= 1e-9 * max(1, np.abs(eta[fin]).max())


def test_projection_generic_exp_path_matches_numpy_row_solver(instances):
    # the lognormal reference takes the direct exponential in every entry
    marg = instances[0]
    rng = np.random.default_rng(0)
    v = 0.1 * rng.standard_normal((marg.n_periods, marg.size))
    w = marg.weights
    with np.errstate(all="ignore"):
        _, kern, _, _, _ = project_periods(marg.grid, w[:-1], w[1:].copy(), v, np.zeros_like(v),
                                           logq_raw=reference_kernels(marg, "lognormal"))
    ref, _, _ = _reference_kernels(marg, v, np.zeros_like(v), 0.0, "lognormal")
    assert np.max(np.abs(kern - ref)) <= 1e-12
    assert np.max(np.abs(martingale_projection(marg, v, reference="lognormal").kernels - ref)) == 0


@pytest.mark.parametrize("payoff", [AsianCall(strike=1.0), LookbackCall(strike=1.0)],
                         ids=["asian", "lookback"])
def test_price_matches_independent_sparse_recursion(pricer, instances, payoff):
    marg = instances[1]
    sol = pricer.solve(marg)
    fast = sol.price(payoff)
    exact = expectation(build_chain(sol.marginals, payoff), sol.kernels,
                        law0=sol.marginals.weights[0])
    assert fast == pytest.approx(exact, rel=1e-10, abs=0)


def test_batched_and_threaded_paths_equal_single(pricer, instances):
    # one network output for all: the float32 forward pass itself differs by ~1e-7 between
    # batch shapes (eager batch vs the traced single-instance graph)
    w = np.stack([m.weights for m in instances])
    v, h = pricer.predict(w)
    stacked = pricer._project(w, v, h)
    for i in range(len(instances)):
        alone = pricer._project(w[i:i + 1], v[i:i + 1], h[i:i + 1])
        assert np.array_equal(stacked[0][i], alone[0][0])
    payoff = AsianCall(strike=1.0)
    batch = instances + instances[:1]       # chunks of 2: eager forward passes only (the
    # traced single-instance graph gives other float32 values on its first call in a thread)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = sweep(batch, payoff, pricer=pricer, classical=False, chunk=2)
        threaded = sweep(batch, payoff, pricer=pricer, classical=False, chunk=2, threads=2)
    # two forward passes at once share torch's intra-op pool and may split their float32 sums
    # otherwise than one alone (5e-9 relative on the prices measured with 2 threads); a chunk
    # priced for the wrong instances would be off by O(1)
    np.testing.assert_allclose(threaded.neural, one.neural, rtol=1e-6, atol=0)
    assert threaded.modes == one.modes == ["neural"] * len(batch)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_sweep_rejects_bad_chunk_and_threads(pricer, instances, bad):
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        sweep(instances[:1], AsianCall(strike=1.0), pricer=pricer, classical=False, chunk=bad)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        sweep(instances[:1], AsianCall(strike=1.0), pricer=pricer, classical=False, threads=bad)


def test_projection_and_price_on_two_threads_equal_one_thread(pricer, instances):
    # the projection's rows in two shares side by side, and a single instance's price with its
    # backward half (meeting in the middle) on a helper thread: each row and each half is the
    # same computation as on one thread, so the results are bit for bit those of one thread
    marg = instances[2]
    v, h = pricer.predict(marg.weights[None])
    w = marg.weights
    args = (marg.grid, w[:-1], w[1:].copy(), v[0], h[0])
    with np.errstate(all="ignore"):
        one = project_periods(*args)
        two = project_periods(*args, threads=2)
    for a, b in zip(one[1:], two[1:]):
        assert np.array_equal(a, b, equal_nan=True)
    assert one[4].size >= 128          # enough rows for two shares (64 rows each at least)
    assert any(t.name.startswith("projection") for t in threading.enumerate())
    sol = pricer.solve(marg)
    payoff = AsianCall(strike=1.0)
    alone = sol.price(payoff)
    before = {t.name for t in threading.enumerate()}
    split = sol.price(payoff, threads=2)
    assert split == alone
    assert any(t.name.startswith("chainplan-back") for t in threading.enumerate()), before
    exact = expectation(build_chain(sol.marginals, payoff), sol.kernels,
                        law0=sol.marginals.weights[0])
    assert split == pytest.approx(exact, rel=1e-10, abs=0)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_price_rejects_bad_threads(pricer, instances, bad):
    sol = pricer.solve(instances[0])
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        sol.price(AsianCall(strike=1.0), threads=bad)
    with pytest.raises(ValueError, match="row_threads must be an integer >= 1 or None"):
        NeuralPricer(row_threads=bad)
