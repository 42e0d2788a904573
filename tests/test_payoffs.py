"""Payoff library: values against direct numpy formulas, statistics, pairwise decompositions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deepquant import payoffs as po

RNG = np.random.default_rng(7)
PATHS = 1.0 + 0.15 * RNG.standard_normal((200, 6))  # (paths, N+1) with N = 5


@pytest.mark.parametrize(
    ("payoff", "reference"),
    [
        (po.EuropeanCall(strike=1.02), lambda p: np.maximum(p[:, -1] - 1.02, 0)),
        (po.EuropeanPut(strike=0.97, date=2), lambda p: np.maximum(0.97 - p[:, 2], 0)),
        (po.ForwardStartCall(strike=1.0, t1=1, t2=4), lambda p: np.maximum(p[:, 4] - p[:, 1], 0)),
        (po.ForwardStartStraddle(strike=1.1, t1=2), lambda p: np.abs(p[:, -1] - 1.1 * p[:, 2])),
        (po.AsianCall(strike=1.0), lambda p: np.maximum(p[:, 1:].mean(1) - 1.0, 0)),
        (po.AsianPut(strike=1.05, dates=(0, 2, 4)),
         lambda p: np.maximum(1.05 - p[:, [0, 2, 4]].mean(1), 0)),
        (po.AsianCall(strike=0.5, dates=(1, 2), weights=(0.25, 0.25)),
         lambda p: np.maximum(0.25 * p[:, 1] + 0.25 * p[:, 2] - 0.5, 0)),
        (po.LookbackCall(strike=1.1), lambda p: np.maximum(p.max(1) - 1.1, 0)),
        (po.LookbackPut(strike=0.9, dates=(1, 2, 3)), lambda p: np.maximum(0.9 - p[:, 1:4].min(1), 0)),
        (po.BarrierCall(strike=1.0, barrier=1.2, barrier_type="up-and-out"),
         lambda p: np.where(p.max(1) < 1.2, np.maximum(p[:, -1] - 1.0, 0), 0)),
        (po.BarrierCall(strike=1.0, barrier=1.2, barrier_type="up-and-in"),
         lambda p: np.where(p.max(1) >= 1.2, np.maximum(p[:, -1] - 1.0, 0), 0)),
        (po.BarrierPut(strike=1.0, barrier=0.85, barrier_type="down-and-out"),
         lambda p: np.where(p.min(1) > 0.85, np.maximum(1.0 - p[:, -1], 0), 0)),
        (po.BarrierPut(strike=1.0, barrier=0.85, barrier_type="down-and-in", dates=(2, 3)),
         lambda p: np.where(p[:, 2:4].min(1) <= 0.85, np.maximum(1.0 - p[:, -1], 0), 0)),
        (po.SumSquaredIncrements(), lambda p: (np.diff(p, axis=1) ** 2).sum(1)),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_payoff_values_match_direct_formulas(payoff, reference):
    np.testing.assert_allclose(payoff(PATHS), reference(PATHS), rtol=0, atol=1e-14)


def test_payoffs_broadcast_over_leading_axes():
    p = PATHS.reshape(10, 20, 6)
    np.testing.assert_allclose(po.AsianCall()(p).reshape(-1), po.AsianCall()(PATHS), atol=0)


@pytest.mark.parametrize(
    ("payoff", "kind"),
    [(po.EuropeanCall(), "none"), (po.ForwardStartCall(t1=1), "value"), (po.AsianCall(), "sum"),
     (po.LookbackCall(), "max"), (po.LookbackPut(), "min"), (po.BarrierCall(), "hit"),
     (po.SumSquaredIncrements(), "none")],
)
def test_declared_statistics(payoff, kind):
    assert payoff.statistic(6).kind == kind


@pytest.mark.parametrize(
    "payoff",
    [po.EuropeanCall(strike=1.0), po.EuropeanPut(strike=1.1, date=3), po.SumSquaredIncrements(),
     po.ForwardStartStraddle(t1=4, t2=5)],
    ids=lambda v: v.name,
)
def test_pairwise_terms_sum_to_payoff(payoff):
    terms = payoff.pairwise(6)
    total = sum(c(PATHS[:, t], PATHS[:, t + 1]) for t, c in terms)
    np.testing.assert_allclose(total, payoff(PATHS), atol=1e-14)


def test_path_dependent_payoffs_are_not_pairwise():
    assert po.AsianCall().pairwise(6) is None
    assert po.ForwardStartCall(t1=0, t2=3).pairwise(6) is None


def test_make_payoff_covers_cli_names():
    for name in po.PAYOFF_NAMES:
        params = {} if name == "sum-squared-increments" else {"strike": 1.0}
        payoff = po.make_payoff(name, **params)
        assert payoff(PATHS).shape == (200,)
    assert po.make_payoff("asian-call", strike=None) == po.AsianCall()
    up = po.make_payoff("up-and-out-call", strike=1.0, barrier=1.3)
    assert isinstance(up, po.BarrierCall) and up.barrier_type == "up-and-out"


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: po.make_payoff("rainbow-call"), "unknown payoff 'rainbow-call'"),
        (lambda: po.make_payoff("asian-call", barrier=1.0), "does not take these parameters"),
        (lambda: po.ForwardStartCall(t1=3, t2=2)(PATHS), r"t1 < t2, got t1=3, t2=2"),
        (lambda: po.EuropeanCall(date=9)(PATHS), r"date=9 out of range for 6 dates"),
        (lambda: po.AsianCall(dates=(3, 1))(PATHS), r"increasing and distinct, got \(3, 1\)"),
        (lambda: po.AsianCall(dates=(1, 2), weights=(1.0,))(PATHS), "must be 2 finite numbers"),
        (lambda: po.LookbackCall(dates=(0, 7))(PATHS), r"out of range for 6 dates"),
        (lambda: po.BarrierCall(barrier_type="sideways"), "barrier_type must be one of"),
        (lambda: po.BarrierCall(barrier=float("nan")), "barrier must be a finite real number, got nan"),
        (lambda: po.BarrierCall(barrier=None), "barrier must be a finite real number, got None"),
        (lambda: po.AsianCall(strike="abc"), "strike must be a finite real number, got 'abc'"),
        (lambda: po.EuropeanPut(strike=True), "strike must be a finite real number, got True"),
        (lambda: po.AsianCall(dates="12"), "dates must be a sequence of date indices"),
        (lambda: po.AsianCall(dates=(1, 2), weights=(0.5, "x")), "weights must be a finite real"),
        (lambda: po.ForwardStartCall(t1=0.5), "t1 must be a date index"),
        (lambda: po.required_params("rainbow-call"), "unknown payoff"),
        (lambda: po.Statistic("median"), "statistic kind must be one of"),
        (lambda: po.AsianCall()(np.float64(1.0)), r"paths must have shape"),
    ],
)
def test_payoff_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (4, 5), elements=st.floats(0.2, 3.0)), st.floats(0.5, 1.5))
def test_payoff_invariants(paths, k):
    """Model-free identities: call - put = forward, lookback call >= European call on the max
    date set, in + out barrier = vanilla, Asian call - put = average - strike."""
    np.testing.assert_allclose(
        po.EuropeanCall(strike=k)(paths) - po.EuropeanPut(strike=k)(paths), paths[:, -1] - k,
        atol=1e-12)
    assert np.all(po.LookbackCall(strike=k)(paths) >= po.EuropeanCall(strike=k)(paths) - 1e-15)
    for side in ("up", "down"):
        knock_in = po.BarrierCall(strike=k, barrier=1.0, barrier_type=f"{side}-and-in")(paths)
        knock_out = po.BarrierCall(strike=k, barrier=1.0, barrier_type=f"{side}-and-out")(paths)
        np.testing.assert_allclose(knock_in + knock_out, po.EuropeanCall(strike=k)(paths), atol=0)
    np.testing.assert_allclose(
        po.AsianCall(strike=k)(paths) - po.AsianPut(strike=k)(paths), paths[:, 1:].mean(1) - k,
        atol=1e-12)
