"""The last date of call- and put-like payoffs in closed form (``ChainPlan``).

``_hinge_terminal`` recognises a payoff pulled back through the last statistic map that is zero
on one side of a threshold and linear on the other, column by column; ``_last_step_hinge`` then
sums the last date as prefix sums of the kernel rows. Checked against the dense reference
recursion (no entry dropped) and against the banded recursion with the closed form switched
off, on the lattice (exact running sums) and on an uneven grid (interpolated sum grid).
"""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.mmot._chainplan_kernels import _hinge_terminal
from deepquant.mmot.augment import build_chain
from deepquant.mmot.model import CalibratedModel, ChainPlan
from deepquant.payoffs import AsianCall, AsianPut, LookbackCall


def _heston(grid):
    from deepquant.market.synthetic import heston_marginals

    return heston_marginals(np.linspace(0.0, 0.5, 7), grid=grid, v0=0.04, kappa=2.0,
                            theta=0.04, sigma_v=0.3, rho=-0.5)


@pytest.mark.parametrize("payoff", [AsianCall(strike=1.0), AsianPut(strike=0.97),
                                    AsianCall(strike=1.1),
                                    AsianCall(strike=1.02, dates=(1, 3), weights=(0.3, 0.7))],
                         ids=["call", "put", "otm-call", "weighted"])
@pytest.mark.parametrize("grid_kind", ["lattice", "uneven"])
def test_closed_form_last_date_equals_the_recursion(payoff, grid_kind):
    """Closed form == dense reference == banded recursion without it, to 1e-12 relative; the
    reported bound covers the gap to the dense sum. (The weighted average on the uneven grid
    keeps the general last date: its previous date's states, 0.3 X_1, are not uniform.)"""
    from deepquant.neural.data import model_grid

    grid = (model_grid(80) if grid_kind == "lattice" else
            np.concatenate([np.linspace(0.6, 0.95, 19), np.linspace(0.97, 1.5, 34)]))
    marg = _heston(grid)
    models = [CalibratedModel.calibrate(marg, reference=r) for r in ("product", "lognormal")]
    kern = np.stack([mo.kernels for mo in models])
    law = np.stack([marg.weights[0]] * 2)
    plan = ChainPlan(build_chain(marg, payoff))
    assert (plan._last is None) == (grid_kind == "uneven" and payoff.weights is not None)
    dense = plan._expectation_dense(kern, law)
    vals, bound = plan.expectation_bound(kern, law)
    plan.CLOSED_FORM = False
    banded = plan.expectation(kern, law)
    np.testing.assert_allclose(vals, dense, rtol=1e-12, atol=0)
    np.testing.assert_allclose(vals, banded, rtol=1e-12, atol=0)
    assert np.all(np.abs(vals - dense) <= bound + 1e-15)


def test_closed_form_not_used_where_it_does_not_apply():
    from deepquant.neural.data import model_grid

    marg = _heston(model_grid(60))
    assert ChainPlan(build_chain(marg, LookbackCall(strike=1.0)))._last is None


def test_hinge_terminal_shapes():
    s = np.arange(20.0)[:, None]
    col = np.arange(5.0)[None, :]
    call = np.maximum(0.01 * (s + 3 * col) - 0.2, 0.0)
    perm, alpha, beta, count, err = _hinge_terminal(call)
    assert err <= 1e-15
    # evaluate the closed form on a random kernel row and compare with the direct sum
    k = np.random.default_rng(0).random(5)
    for si in range(20):
        j = count[si]
        direct = call[si] @ k
        closed = (k[perm[:j]] * alpha[:j]).sum() + si * (k[perm[:j]] * beta[:j]).sum()
        assert closed == pytest.approx(direct, rel=1e-13, abs=1e-16)
    put = np.maximum(0.2 - 0.01 * (s + 3 * col), 0.0)
    perm, alpha, beta, count, _ = _hinge_terminal(put)
    for si in range(20):
        j = count[si]
        closed = (k[perm[:j]] * alpha[:j]).sum() + si * (k[perm[:j]] * beta[:j]).sum()
        assert closed == pytest.approx(put[si] @ k, rel=1e-13, abs=1e-16)
    assert _hinge_terminal(np.hstack([call, put])) is None         # mixed sides
    assert _hinge_terminal(np.maximum(call, 0.05)) is None          # no zero side
    assert _hinge_terminal(call ** 2) is None                       # not linear
