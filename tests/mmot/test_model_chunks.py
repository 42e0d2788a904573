"""``price_batch`` over many instances: chunking, path enumeration, kept scratch buffers.

The batched recursion (``ChainPlan.expectation``) runs the instances in chunks of
``ChainPlan.CHUNK``; each instance's price must not depend on the chunk it lands in, must equal
the expectation summed over every path of the chain (an independent reference: no augmented
state, no banding, no closed form), and the chunk's forward laws at the neural sweep's shape
(exact Asian, N = 10, M = 150) must stay within the scratch buffers kept per thread between
calls (``_chainplan_kernels.POOL_MAX``), or every call allocates and faults in fresh pages.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.mmot import _chainplan_kernels
from deepquant.mmot.model import ChainPlan, price_batch
from deepquant.payoffs import AsianCall, BarrierCall, LookbackCall


def _symmetric_kernels(rng, b, n, m):
    """B random martingale chains on a uniform grid: row x moves +-1 and +-2 points with
    symmetric weights (mean x exactly), the two end points absorb."""
    k = np.zeros((b, n, m, m))
    for i, t in itertools.product(range(b), range(n)):
        for x in range(m):
            if x in (0, m - 1):
                k[i, t, x, x] = 1.0
                continue
            a = rng.uniform(0.2, 0.6)
            c = rng.uniform(0.0, 0.3) if 2 <= x <= m - 3 else 0.0
            k[i, t, x, x - 1] = k[i, t, x, x + 1] = a / 2
            if c:
                k[i, t, x, x - 2] = k[i, t, x, x + 2] = c / 2
            k[i, t, x, x] = 1.0 - a - c
    return k


def _enumerated(payoff, grid, law0, kernels):
    """E[payoff] summed over all M^N paths from the start point of ``law0``."""
    x0 = int(np.argmax(law0))
    n, m = kernels.shape[0], grid.size
    total = 0.0
    for path in itertools.product(range(m), repeat=n):
        idx = (x0, *path)
        prob = np.prod([kernels[t, idx[t], idx[t + 1]] for t in range(n)])
        if prob:
            total += prob * float(payoff.evaluate(grid[np.array(idx)][None])[0])
    return total


@pytest.mark.parametrize("payoff", [AsianCall(strike=1.0), LookbackCall(strike=1.0),
                                    BarrierCall(strike=0.95, barrier=1.1)],
                         ids=["asian", "lookback", "barrier"])
def test_price_batch_equals_path_enumeration_in_any_chunks(payoff, monkeypatch):
    """Five instances (chunks of 1, 2 and 8: one partial chunk each time) on a 7-point grid
    over 4 periods: every price equals the sum over all 2,401 paths within 1e-12 relative
    (round-off; nothing is dropped on these kernels), and the three chunkings agree bit for
    bit (each instance's arithmetic is its own)."""
    rng = np.random.default_rng(3)
    grid = np.linspace(0.85, 1.15, 7)
    b, n = 5, 4
    kern = _symmetric_kernels(rng, b, n, grid.size)
    law0 = np.zeros(grid.size)
    law0[3] = 1.0
    margs = []
    for i in range(b):
        laws = [law0]
        for t in range(n):
            laws.append(laws[-1] @ kern[i, t])
        margs.append(Marginals(grid, np.array(laws), np.linspace(0.0, 0.4, n + 1),
                               check_convex=False))
    ref = np.array([_enumerated(payoff, grid, law0, kern[i]) for i in range(b)])
    got = {}
    for chunk in (1, 2, 8):
        monkeypatch.setattr(ChainPlan, "CHUNK", chunk)
        got[chunk] = price_batch(margs, kern, payoff)
    np.testing.assert_allclose(got[2], ref, rtol=1e-12, atol=0)
    assert np.array_equal(got[1], got[2]) and np.array_equal(got[8], got[2])


def test_sweep_chain_chunk_stays_in_the_kept_scratch():
    """The exact Asian chain of the neural sweep (N = 10, M = 150, full support), eight
    instances: one chunk's two forward laws fit in ``POOL_MAX``, so ``_scratch`` keeps the
    buffer and hands the same one back on the next call (chunks of 8 instances needed 2.5M
    elements, over the 2.1M kept, and paid fresh pages at every price)."""
    from deepquant.market.synthetic import gbm_marginals
    from deepquant.mmot.model import _CHAINS, chain_plan

    grid = 1.0 + 0.01 * np.arange(-50, 100)
    marg = gbm_marginals(np.linspace(0.0, 0.5, 11), grid=grid, sigma=0.25)
    kern = np.broadcast_to(np.eye(grid.size), (8, 10, grid.size, grid.size))
    price_batch(marg, kern, AsianCall(strike=1.0), support="full")
    plan = chain_plan(next(reversed(_CHAINS.values())))
    need = 2 * min(8, ChainPlan.CHUNK) * max(v[0] for v in plan._sizes.values())
    pool = _chainplan_kernels._POOL.__dict__
    assert need <= _chainplan_kernels.POOL_MAX
    first = pool["bufs"]
    assert first.size >= need
    price_batch(marg, kern, AsianCall(strike=1.0), support="full")
    assert pool["bufs"] is first
