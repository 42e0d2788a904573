"""Incremental updates (seed 001 Algorithm 2): they must equal a full solve to tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.mmot.entropic import solve_entropic
from deepquant.mmot.incremental import append_date, insert_date, update_date
from deepquant.payoffs import SumSquaredIncrements
from deepquant.results import ConvergenceWarning
from tests.conftest import lognormal_rows

TOL = 1e-9




GRID = np.linspace(0.5, 2.0, 60)
VARS = [0.004 * (t + 1) for t in range(6)]


def full(dates_vars):
    return Marginals(GRID, lognormal_rows(GRID, dates_vars))


def assert_same(a, b):
    assert a.success and b.success
    # plans agree to the solver tolerance (kernels of rows with mass mu only to ~tol / mu)
    np.testing.assert_allclose(a.plans, b.plans, atol=1e-8)
    assert a.marginal_error <= TOL and a.drift <= TOL


@pytest.mark.parametrize("date", [0, 2, 5])
def test_insert_date_equals_full_solve(date):
    new = full(VARS)
    old = Marginals(GRID, np.delete(new.weights, date, axis=0))
    prev = solve_entropic(old, 1e-3)
    inc = insert_date(prev, new, date)
    ref = solve_entropic(new, 1e-3)
    assert_same(inc, ref)
    # the untouched periods are copied bit for bit
    untouched = [t for t in range(new.n_periods) if t + 1 < date]
    for t in untouched:
        np.testing.assert_array_equal(inc.kernels[t], prev.kernels[t])
    assert "reused" in inc.message


def test_append_and_costs():
    new = full(VARS)
    old = new.select(range(5))
    cost = SumSquaredIncrements()
    prev = solve_entropic(old, 1e-3, cost=cost)
    inc = append_date(prev, new, cost=cost)
    ref = solve_entropic(new, 1e-3, cost=cost)
    assert_same(inc, ref)
    assert inc.transport_cost == pytest.approx(ref.transport_cost, abs=1e-9)


def test_update_date_warm_start():
    base = full(VARS)
    prev = solve_entropic(base, 1e-3)
    moved = list(VARS)
    moved[3] *= 1.03                       # new quotes for one expiry (still in convex order)
    new = full(moved)
    inc = update_date(prev, new, 3)
    ref = solve_entropic(new, 1e-3)
    assert_same(inc, ref)
    assert inc.sweeps == 0                # warm start: Newton only
    np.testing.assert_array_equal(inc.kernels[0], prev.kernels[0])


def test_incremental_errors():
    new = full(VARS)
    prev = solve_entropic(new.select(range(5)), 1e-3)
    with pytest.raises(ValueError, match="differ from the previous"):
        insert_date(prev, new, 1)
    with pytest.raises(ValueError, match="out of range"):
        insert_date(prev, new, 9)
    with pytest.raises(ValueError, match="expected"):
        update_date(prev, new, 1)
    with pytest.raises(TypeError, match="EntropicResult"):
        insert_date(new, new, 5)
    other = Marginals(np.linspace(0.5, 2.0, 61), lognormal_rows(np.linspace(0.5, 2.0, 61), VARS))
    with pytest.raises(ValueError, match="grid"):
        insert_date(prev, other, 5)


def test_incremental_failure_warns():
    new = full(VARS)
    prev = solve_entropic(new.select(range(5)), 1e-3)
    with pytest.warns(ConvergenceWarning, match="incremental update above tol"):
        res = append_date(prev, new, max_iter=0, sinkhorn_sweeps=0)
    assert not res.success


@pytest.mark.parametrize("call", [insert_date, update_date])
@pytest.mark.parametrize("date", [1.5, float("nan"), True, "1"])
def test_incremental_date_must_be_an_integer(call, date):
    # before: 1.5 ran as date 1 (update_date solved and reported success), NaN failed with
    # "cannot convert float NaN to integer" (library fuzz, third pass)
    marg = full(VARS[:4])
    prev = solve_entropic(marg.select(range(3)), 1e-3)
    with pytest.raises(ValueError, match=rf"date must be an integer, got {date!r}"):
        call(prev, marg if call is insert_date else marg.select(range(3)), date)
