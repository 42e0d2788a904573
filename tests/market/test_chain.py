"""Synthetic option chain: prices against QuantLib, quote conventions, CSV format, determinism.

Tolerances: model prices against QuantLib's AnalyticHestonEngine with flat r and q (ACT/365,
the same day count as the chain): 1e-9 x spot (the COS prices agree to ~1e-15 in moneyness units;
the tolerance leaves room for QuantLib's 1e-11 relative integration tolerance). Parity fit: the
quotes bracket the model price within half a spread, so the least-squares forward from mids is
within a few index points (tolerance 0.1% of F) and the discount factor within 1e-3.
"""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest
import QuantLib as ql

from deepquant.market.chain import (
    EXTRA_COLUMNS,
    NORMALIZED_COLUMNS,
    default_expiries,
    synthetic_chain,
    tick_size,
)
from deepquant.market.synthetic import HestonParams
from tests.conftest import SPX_DATA


@pytest.fixture(scope="module")
def chain():
    return synthetic_chain()


def ql_heston_spot_price(chain, expiry: str, strike: float, typ: str) -> float:
    p: HestonParams = chain.params
    today = ql.Date(chain.quote_date.day, chain.quote_date.month, chain.quote_date.year)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    r = ql.YieldTermStructureHandle(ql.FlatForward(today, chain.rate, dc))
    q = ql.YieldTermStructureHandle(ql.FlatForward(today, chain.dividend_yield, dc))
    s0 = ql.QuoteHandle(ql.SimpleQuote(chain.spot))
    proc = ql.HestonProcess(r, q, s0, p.v0, p.kappa, p.theta, p.sigma_v, p.rho)
    engine = ql.AnalyticHestonEngine(ql.HestonModel(proc), 1e-11, 10_000_000)
    e = dt.date.fromisoformat(expiry)
    opt = ql.VanillaOption(
        ql.PlainVanillaPayoff(ql.Option.Call if typ == "C" else ql.Option.Put, strike),
        ql.EuropeanExercise(ql.Date(e.day, e.month, e.year)))
    opt.setPricingEngine(engine)
    return opt.NPV()


EST_EXPIRIES = ("2024-01-19", "2024-02-16", "2024-12-20", "2025-12-19")  # no DST change since


def test_year_fractions_count_daylight_saving(chain):
    # quote 2024-01-02 16:00 EST; expiries at 16:00 ET: T = days/365, minus one hour when the
    # expiry is in daylight-saving time (EDT)
    for e, t in zip(chain.expiries, chain.times):
        days = (dt.date.fromisoformat(e) - chain.quote_date).days
        shift = 0.0 if e in EST_EXPIRIES else 1.0 / (365.0 * 24.0)
        assert t == pytest.approx(days / 365.0 - shift, abs=1e-13), e


def test_model_prices_match_quantlib(chain):
    # QuantLib's dates are whole days (T = days/365): compare on the expiries without a DST change
    q = chain.quotes[np.isin(chain.quotes["expiry"], EST_EXPIRIES)]
    rng = np.random.default_rng(1)
    for i in rng.choice(len(q), size=25, replace=False):
        row = q[i]
        ref = ql_heston_spot_price(chain, str(row["expiry"]), float(row["strike"]), str(row["type"]))
        assert row["model_price"] == pytest.approx(ref, abs=1e-9 * chain.spot), row


def test_quotes_bracket_model_price_on_ticks(chain):
    q = chain.quotes
    assert np.all(q["bid"] >= 0) and np.all(q["ask"] > q["bid"])
    assert np.all(q["bid"] <= q["model_price"] + 1e-9)
    assert np.all(q["ask"] >= q["model_price"] - 1e-9)
    for side in ("bid", "ask"):
        ticks = tick_size(q[side])
        n_ticks = q[side] / ticks
        np.testing.assert_allclose(n_ticks, np.round(n_ticks), atol=1e-6)
    assert np.any(q["ask"] >= 3.0) and np.any((q["ask"] < 3.0) & (q["ask"] > 0))
    assert np.any(q["bid"] == 0)  # far out-of-the-money strikes without a bid, as on Cboe
    np.testing.assert_allclose(q["mid"], 0.5 * (q["bid"] + q["ask"]), atol=1e-12)


def test_spreads_widen_away_from_the_money(chain):
    q = chain.quotes
    for e, f in zip(chain.expiries, chain.forwards):
        sl = q[(q["expiry"] == e) & (q["bid"] > 0) & np.isfinite(q["iv"])]
        otm = ((sl["type"] == "C") & (sl["strike"] >= f)) | ((sl["type"] == "P") & (sl["strike"] < f))
        sl = sl[otm]
        x = np.abs(np.log(sl["strike"] / f))
        spread = sl["ask"] - sl["bid"]
        # spread in volatility units: (ask - bid) / vega, vega from the quoted iv
        t = sl["t"][0]
        d1 = (np.log(f / sl["strike"]) + 0.5 * sl["iv"] ** 2 * t) / (sl["iv"] * np.sqrt(t))
        vega = sl["discount"] * f * np.exp(-0.5 * d1 * d1) / np.sqrt(2 * np.pi) * np.sqrt(t)
        vol_spread = spread / vega
        near = x < np.quantile(x, 0.2)
        far = x > np.quantile(x, 0.8)
        assert np.median(vol_spread[far]) > 1.5 * np.median(vol_spread[near]), e


def test_parity_recovers_forward_and_discount(chain):
    q = chain.quotes
    for e, f, d in zip(chain.expiries, chain.forwards, chain.discounts):
        c = q[(q["expiry"] == e) & (q["type"] == "C")]
        p = q[(q["expiry"] == e) & (q["type"] == "P")]
        np.testing.assert_array_equal(c["strike"], p["strike"])
        near = np.abs(c["strike"] / f - 1.0) < 0.1
        k = c["strike"][near]
        y = c["mid"][near] - p["mid"][near]               # = D (F - K)
        slope, icept = np.polyfit(k, y, 1)
        d_hat, f_hat = -slope, icept / -slope
        assert d_hat == pytest.approx(d, abs=1e-3)
        assert f_hat == pytest.approx(f, rel=1e-3)
        # exact parity on the model prices
        np.testing.assert_allclose(c["model_price"] - p["model_price"], d * (f - c["strike"]),
                                   atol=1e-8 * f)


def test_calibration_loader_reads_the_chain(chain, tmp_path):
    # the built-in chain is the input of the main job: deepquant.market.quotes must read it with
    # the same times, and its parity fit must recover the forwards and discount factors
    from deepquant.market.parity import fit_parity
    from deepquant.market.quotes import load_chain

    loaded = load_chain(chain.to_csv(tmp_path / "chain.csv"))
    np.testing.assert_allclose(loaded.times, chain.times, rtol=0, atol=1e-12)
    for e, f, d in zip(chain.expiries, chain.forwards, chain.discounts):
        fit = fit_parity(loaded.slice(e))
        assert fit.forward == pytest.approx(f, rel=1e-4)
        assert fit.discount == pytest.approx(d, abs=1e-3)


def test_deterministic_given_seed():
    a = synthetic_chain(seed=7, expiries=["2024-03-15", "2024-06-21"])
    b = synthetic_chain(seed=7, expiries=["2024-03-15", "2024-06-21"])
    c = synthetic_chain(seed=8, expiries=["2024-03-15", "2024-06-21"])
    assert a.quotes.tobytes() == b.quotes.tobytes()
    assert not np.array_equal(a.quotes["bid"], c.quotes["bid"])
    np.testing.assert_array_equal(a.quotes["model_price"], c.quotes["model_price"])


def test_csv_matches_normalized_format(chain, tmp_path):
    path = chain.to_csv(tmp_path / "chain.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.csv"]  # no temp file left
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows = list(reader)
    assert tuple(header) == NORMALIZED_COLUMNS + EXTRA_COLUMNS
    shared = SPX_DATA / "spx_options_normalized.csv"
    if shared.exists():  # the real chain's columns, in the same order, come first
        with open(shared, newline="") as fh:
            assert tuple(next(csv.reader(fh))) == NORMALIZED_COLUMNS
    assert len(rows) == len(chain)
    first = rows[0]
    assert first["quote_date"] == "2024-01-02" and first["settlement"] == "PM"
    assert first["type"] in ("C", "P") and float(first["spot"]) == chain.spot
    assert first["option_symbol"].startswith("SYN") and first["expiry"] == chain.expiries[0]
    bids = np.array([float(r["bid"]) for r in rows])
    np.testing.assert_array_equal(bids, chain.quotes["bid"])
    ivs = [r["iv"] for r in rows]
    assert all(v == "" or 0 < float(v) < 5 for v in ivs)
    assert float(rows[10]["rate"]) == chain.rate and float(rows[10]["t_years"]) > 0


def test_default_expiries_are_third_fridays():
    ex = default_expiries(dt.date(2024, 1, 2))
    assert ex[0] == dt.date(2024, 1, 19) and len(ex) == 12
    assert all(d.weekday() == 4 and 15 <= d.day <= 21 for d in ex)
    assert all(d.month % 3 == 0 for d in ex[6:])
    assert ex == sorted(ex) and (ex[-1] - dt.date(2024, 1, 2)).days <= 731


@pytest.mark.parametrize("model", ["gbm", "merton"])
def test_other_models(model):
    ch = synthetic_chain(model, expiries=["2024-02-16"], params={"sigma": 0.25})
    q = ch.quotes
    assert ch.model == model and len(ch) > 20
    assert np.all((q["bid"] <= q["model_price"] + 1e-9) & (q["model_price"] <= q["ask"] + 1e-9))
    if model == "gbm":  # flat smile: the model price's implied vol is 0.25
        atm = q[np.argmin(np.abs(q["strike"] - ch.forwards[0]))]
        assert atm["iv"] == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "sabr"}, r"model must be one of"),
    ({"quote_date": "02/01/2024"}, r"quote_date must be an ISO date \(YYYY-MM-DD\), got '02/01/2024'"),
    ({"spot": -1.0}, r"spot must be a number in \(0, 1e\+12\] \(MAX_SPOT\), got -1.0"),
    # before: bids of inf (1e300), OverflowError (1e307), numpy's "Maximum allowed size
    # exceeded" (1e308: an infinite forward sizing the strike list)
    ({"spot": 1e300}, r"spot must be a number in \(0, 1e\+12\].*got 1e\+300"),
    ({"spot": 1e308}, r"spot must be a number in \(0, 1e\+12\].*got 1e\+308"),
    ({"spot": float("nan")}, r"spot must be a number in \(0, 1e\+12\].*got nan"),
    ({"rate": 0.9}, r"rate must be a finite number in \(-0.5, 0.5\), got 0.9"),
    ({"expiries": ["2023-12-15"]}, r"expiry 2023-12-15 is not after quote_date 2024-01-02"),
    ({"expiries": []}, r"expiries must not be empty"),
    ({"params": {"rho": 2.0}}, r"rho must be <= 1, got 2.0"),
])
def test_error_paths(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_chain(**kwargs)


@pytest.mark.parametrize("seed", [1.5, -1, "7", True])
def test_seed_is_checked_by_name(seed):
    # before (library fuzz, third pass): numpy's "SeedSequence expects int ..." without the
    # argument, and True seeded as 1
    with pytest.raises(ValueError, match=r"seed (seed )?must be"):
        synthetic_chain(seed=seed, expiries=["2024-03-15"])
