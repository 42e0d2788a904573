"""Shared fixtures of the rough-engine tests: reference data files and QuantLib prices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def load(name: str) -> dict:
    with open(DATA / name) as fh:
        data = json.load(fh)
    assert data["source"], f"{name} has no source"
    return data


def quantlib_put(S0: float, K: float, r: float, sigma: float, T: float, n_dates: int | None,
                 grid: int = 800) -> float:
    """QuantLib finite-difference (Crank-Nicolson, FdBlackScholesVanillaEngine) put value:
    Bermudan with exercise at j T / n_dates, j = 1..n_dates, or American when n_dates is None.
    The calendar is Actual/365 with T*365 days, dates rounded to whole days."""
    ql = pytest.importorskip("QuantLib")
    today = ql.Date(1, 1, 2020)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    days = int(round(365 * T))
    if n_dates is None:
        exercise = ql.AmericanExercise(today, today + days)
    else:
        exercise = ql.BermudanExercise([today + int(round(days * j / n_dates))
                                        for j in range(1, n_dates + 1)])
    option = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Put, K), exercise)
    process = ql.BlackScholesProcess(
        ql.QuoteHandle(ql.SimpleQuote(S0)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sigma, dc)))
    option.setPricingEngine(ql.FdBlackScholesVanillaEngine(process, grid, grid))
    return option.NPV()


def quantlib_european_put(S0, K, r, sigma, T) -> float:
    ql = pytest.importorskip("QuantLib")
    today = ql.Date(1, 1, 2020)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    option = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Put, K),
                              ql.EuropeanExercise(today + int(round(365 * T))))
    process = ql.BlackScholesProcess(
        ql.QuoteHandle(ql.SimpleQuote(S0)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sigma, dc)))
    option.setPricingEngine(ql.AnalyticEuropeanEngine(process))
    return option.NPV()


@pytest.fixture
def rough_data():
    """``rough_data(name)`` loads tests/rough/data/<name> (asserts its ``source`` field)."""
    return load


@pytest.fixture
def ql_put():
    """``ql_put(S0, K, r, sigma, T, n_dates)``: QuantLib FD Bermudan (or American) put."""
    return quantlib_put


@pytest.fixture
def ql_european_put():
    """``ql_european_put(S0, K, r, sigma, T)``: QuantLib analytic European put."""
    return quantlib_european_put
