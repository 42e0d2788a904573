"""Call- and put-like payoffs in closed form at the end of ``ChainPlan``'s recursion.

``_hinge_terminal`` recognises a payoff pulled back through the last statistic map that is zero
on one side of a threshold and linear on the other, column by column; ``_last_step_hinge`` then
sums the last date as prefix sums of the kernel rows. On a running-sum lattice the recursion
meets in the middle instead (``_meet_plan``: the forward law of (X, S) to a middle date, the
backward law of the rest of the sum from it, combined by the same closed form). Checked against
the dense reference recursion (no entry dropped) and against the banded recursion with the
closed forms switched off, on the lattice (exact running sums) and on an uneven grid
(interpolated sum grid: the last date only).
"""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.mmot._chainplan_kernels import _hinge_terminal
from deepquant.mmot._chainplan_meet import _backward_laws, _meet_plan
from deepquant.mmot.augment import build_chain
from deepquant.mmot.model import CalibratedModel, ChainPlan, _full_support
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
    reported bound covers the gap to the dense sum. (The weighted average keeps the general last
    date where its previous date's states, 0.3 X_1, are not evenly spaced: on the uneven grid,
    and on the lattice when a far tail of X_1's law leaves a hole in its support.)"""
    from deepquant.neural.data import model_grid

    grid = (model_grid(80) if grid_kind == "lattice" else
            np.concatenate([np.linspace(0.6, 0.95, 19), np.linspace(0.97, 1.5, 34)]))
    marg = _heston(grid)
    models = [CalibratedModel.calibrate(marg, reference=r) for r in ("product", "lognormal")]
    kern = np.stack([mo.kernels for mo in models])
    law = np.stack([marg.weights[0]] * 2)
    pos = marg.weights > 0
    full = _full_support([marg], pos, pos | (pos.sum(axis=1) > 1)[:, None])
    def filled(v):                 # evenly spaced states: no hole in the lattice
        return v.size < 2 or np.allclose(np.diff(v), v[1] - v[0], rtol=1e-6)

    for support in (marg, full):   # the marginals' own support; the full grid (neural pricer)
        chain = build_chain(support, payoff)
        plan = ChainPlan(chain)
        assert (plan._last is None) == (payoff.weights is not None
                                        and not filled(chain.states[plan.last_date - 1]))
        states = [s.size for s in chain.states]
        meets = [None] + [_meet_plan(plan._steps, states, plan.terminal, mid)
                          for mid in range(plan.last_date)]
        if grid_kind == "lattice" and payoff.weights is None:
            # the meet applies from every middle date after which the running sums fill their
            # lattice (no hole in any later date's states; the support itself may have holes,
            # and the far tails of a calibrated law can leave one in the first date's states)
            full = [t for t in range(1, plan.last_date)
                    if all(filled(chain.states[r]) for r in range(t, plan.last_date + 1))]
            assert full and full[-1] == plan.last_date - 1
            assert all(meets[t + 1] is not None for t in full)
        dense = plan._expectation_dense(kern, law)
        for meet in meets:           # last date only, then every middle date that applies
            plan._meet = meet
            vals, bound = plan.expectation_bound(kern, law)
            np.testing.assert_allclose(vals, dense, rtol=1e-12, atol=0)
            assert np.all(np.abs(vals - dense) <= bound + 1e-15)
        plan.CLOSED_FORM = False
        banded = plan.expectation(kern, law)
        np.testing.assert_allclose(vals, banded, rtol=1e-12, atol=0)


def test_closed_form_not_used_where_it_does_not_apply():
    from deepquant.neural.data import model_grid

    marg = _heston(model_grid(60))
    plan = ChainPlan(build_chain(marg, LookbackCall(strike=1.0)))
    assert plan._last is None and plan._meet is None


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


@pytest.mark.parametrize("d", [[0, 1, 2, 3, 4, 5], [0, 2, 4, 6, 8, 10], [0, 1, 3, 4, 6, 9],
                               [0, 0, 0, 0, 0, 0]], ids=["unit", "even", "uneven", "flat"])
def test_backward_laws_match_a_direct_sum(d):
    """W_t(x, rho) = sum_j k_t(x, j) W_{t+1}(y_j, rho - d_j) against the sum written out:
    exact (bound 0) without thresholds, for tiles of rows and blocks of columns of any size;
    with coarse ones the L1 gap of every row stays within its reported bound e(x), and the
    bound is not vacuous."""
    rng = np.random.default_rng(1)
    b, n, m = 2, 3, 6
    kern = rng.random((b, n, m, m)) ** 6            # a spread of sizes: thresholds bite
    kern /= kern.sum(axis=3, keepdims=True)
    d = np.asarray(d)
    rows = cols = [np.arange(m)] * n
    y1 = np.array([0, 2, 1, 3, 5, 4])               # columns land on permuted rows
    back, length = [], 1
    for t in range(n - 1, -1, -1):
        length += int(d.max())
        back.append((t, y1, d, length))
    want = np.ones((b, 1, 1))
    for t in range(n - 1, -1, -1):
        new = np.zeros((b, m, want.shape[2] + int(d.max())))
        src = y1 if want.shape[1] > 1 else np.zeros(m, dtype=int)
        for j in range(m):
            new[:, :, d[j]:d[j] + want.shape[2]] += kern[:, t, :, j, None] * want[:, src[j], None, :]
        want = new
    for tile, block in [(16, 16), (1, 1), (2, 4)]:  # rectangles of every shape: one sum
        got, err = _backward_laws(back, kern, rows, cols, tile=tile, block=block)
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
        assert np.all(err == 0.0)
    got, err = _backward_laws(back, kern, rows, cols, band_eps=0.05, mass_eps=1e-3, tile=4,
                              block=3)
    gap = np.abs(got - want).sum(axis=2)
    assert np.all(gap <= err + 1e-15) and gap.max() > 1e-6
    assert err.max() < 0.5


def test_shift_map_runs_over_holes():
    """A running-sum step whose columns skip a grid point (a hole in the support): one shift
    map with two runs of evenly spaced offsets, each written by one strided product."""
    from deepquant.mmot._chainplan_kernels import _transposed_map

    n, n1 = 3, 9
    ys = np.array([0, 1, 3, 4])                     # grid point 2 has no mass
    j, s = np.divmod(np.arange(ys.size * n), n)
    dst = ys[j] * n1 + ys[j] + s                    # (y, s) -> row y, state s + y
    _, _, _, off, shift, _, run_end, run_ld = _transposed_map(
        j * n + s, dst, np.ones(j.size), ys.size * n, 5 * n1, n, n1)
    assert shift == 1
    np.testing.assert_array_equal(off, ys * (n1 + 1))
    np.testing.assert_array_equal(run_end, [2, 2, 4, 4])
    np.testing.assert_array_equal(run_ld[[0, 2]], [n1 + 1, n1 + 1])
    _, _, _, _, shift, *_ = _transposed_map(j * n + s, dst, np.full(j.size, 0.5),
                                            ys.size * n, 5 * n1, n, n1)
    assert shift == 0                               # weights other than 1: a general map


def test_reused_scratch_buffers_leave_no_trace():
    """The forward law's buffers are kept per thread between calls (``_scratch``), uninitialised:
    a price after another chain's (larger states, other shapes) and the same prices on two
    threads at once equal the dense reference recursion within 1e-12 relative, and repeat
    exactly."""
    from deepquant.mmot.model import chain_plan

    marg = _heston(np.linspace(0.5, 1.5, 41))
    mod = CalibratedModel.calibrate(marg)
    plans = [chain_plan(build_chain(marg, p)) for p in
             (AsianCall(strike=1.0), LookbackCall(strike=1.0), AsianPut(strike=0.97))]
    k, law = mod.kernels[None], marg.weights[0][None]
    first = [p.expectation(k, law)[0] for p in plans]
    for p, v in zip(plans, first):
        ref = p._expectation_dense(k, law)[0]
        assert abs(v - ref) <= 1e-12 * abs(ref)
    again = [p.expectation(k, law)[0] for p in reversed(plans)][::-1]
    assert again == first
    ks = np.repeat(k, 2 * ChainPlan.CHUNK + 3, axis=0)     # chunks on two threads
    laws = np.repeat(law, ks.shape[0], axis=0)
    for p, v in zip(plans, first):
        assert np.all(p.expectation(ks, laws, threads=2) == v)
