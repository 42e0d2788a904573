"""Bad quotes must not turn into silently wrong forwards, discount factors or marginals:
outlier-robust put-call parity, implausible implied rates, calendar arbitrage, and chains
merged from several snapshots (quote times within a tolerance, the latest quote kept)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import warnings

import numpy as np
import pytest

from deepquant.market.calibrate import CalibrationWarning, calibrate_chain
from deepquant.market.chain import synthetic_chain
from deepquant.market.parity import calendar_violations, check_rates, fit_parity
from deepquant.market.quotes import EASTERN, load_chain
from tests.conftest import spx_data_dir

EXPIRIES = ["2024-02-16", "2024-03-15", "2024-04-19", "2024-05-17"]


@pytest.fixture(scope="module")
def chain_rows(tmp_path_factory):
    """The built-in synthetic Heston chain as normalized CSV rows, and its true F and D."""
    ch = synthetic_chain()
    path = ch.to_csv(tmp_path_factory.mktemp("chain") / "chain.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    truth = dict(zip(ch.expiries, zip(ch.forwards, ch.discounts)))
    return rows, truth


def write(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def shifted(rows, expiry, ranks, amount):
    """Copy of ``rows`` with the calls of ``expiry`` whose strikes rank ``ranks`` by distance to
    the spot shifted by ``amount``; returns (rows, shifted strikes)."""
    rows = [dict(r) for r in rows]
    spot = float(rows[0]["spot"])
    calls = sorted((r for r in rows if r["expiry"] == expiry and r["type"] == "C"),
                   key=lambda r: abs(float(r["strike"]) - spot))
    hit = [calls[i] for i in ranks]
    for r in hit:
        for c in ("bid", "ask", "mid"):
            r[c] = f"{float(r[c]) + amount:.2f}"
    return rows, sorted(float(r["strike"]) for r in hit)


@pytest.mark.parametrize(("ranks", "amount"), [(range(5), 150.0), (range(10, 15), 30.0)],
                         ids=["near-the-money+150", "out-of-the-money+30"])
def test_shifted_quotes_are_outliers_not_a_discount_factor(chain_rows, tmp_path, ranks, amount):
    rows, truth = chain_rows
    bad, strikes = shifted(rows, "2024-03-15", ranks, amount)
    chain = load_chain(write(tmp_path / "bad.csv", bad))
    fit = fit_parity(chain.slice("2024-03-15"), spot=chain.spot)
    f, d = truth["2024-03-15"]
    # quotes are on 0.05/0.10 ticks with spreads of a few points: the clean fit recovers D to
    # about 1e-4 and F to 1e-5 relative; a least-squares fit moved D by 1e-2 here
    assert fit.discount == pytest.approx(d, abs=3e-4)
    assert fit.forward == pytest.approx(f, rel=3e-5)
    assert sorted(fit.outlier_strikes.tolist()) == strikes


def test_outliers_reported_by_calibrate_chain(chain_rows, tmp_path):
    rows, _ = chain_rows
    bad, strikes = shifted(rows, "2024-03-15", range(5), 150.0)
    with pytest.warns(CalibrationWarning) as caught:
        res = calibrate_chain(write(tmp_path / "bad.csv", bad), EXPIRIES, grid_size=60)
    assert any("put-call parity outliers at strikes 4700" in str(w.message) for w in caught)
    assert any("2024-03-15 SYN: put-call parity outliers" in m for m in res.quote_checks)
    # the shifted calls lie above the next expiry's: calendar arbitrage in the quotes, reported
    assert any(m.startswith("calendar arbitrage") for m in res.quote_checks)
    out = res.summary()
    assert out["parity"][1]["outlier_strikes"] == strikes


def test_scaled_expiry_is_an_error_naming_rate_and_calendar_arbitrage(chain_rows, tmp_path):
    rows, _ = chain_rows
    scaled = [dict(r) for r in rows]
    for r in scaled:
        if r["expiry"] == "2024-04-19":
            for c in ("bid", "ask", "mid"):
                r[c] = f"{float(r[c]) * 0.3:.2f}"
    path = write(tmp_path / "scaled.csv", scaled)
    with pytest.raises(ValueError, match=r"2024-04-19 SYN: put-call parity implies D = 0\.296 "
                                         r"over 108 days, an annual rate of 41\d\.\d%.*calendar "
                                         r"arbitrage: 2024-04-19 SYN.*--rate-range"):
        calibrate_chain(path, EXPIRIES, grid_size=60)
    chain = load_chain(path)
    slices = [chain.slice(e) for e in EXPIRIES]
    fits = [fit_parity(s, spot=chain.spot) for s in slices]
    assert len(check_rates(fits)) == 1
    assert check_rates(fits, rate_range=(-0.05, 5.0)) == []
    (viol,) = calendar_violations(slices, fits)
    assert (viol.earlier, viol.later) == ("2024-03-15 SYN", "2024-04-19 SYN")
    assert viol.later_ask_variance < 0.2 * viol.earlier_bid_variance
    with pytest.raises(ValueError, match=r"rate_range must be \(low, high\)"):
        check_rates(fits, rate_range=(0.3, 0.1))


def test_clean_chains_raise_no_flags(chain_rows, tmp_path):
    rows, truth = chain_rows
    chain = load_chain(write(tmp_path / "clean.csv", rows))
    fits = [fit_parity(s, spot=chain.spot) for s in chain.slices]
    assert sum(f.n_outliers for f in fits) == 0
    assert check_rates(fits) == [] and calendar_violations(chain.slices, fits) == []
    for f in fits:
        # the implied rate is the chain's 4.5% within its standard error (3 se)
        assert abs(f.rate - 0.045) <= 3 * f.rate_stderr + 1e-3


def test_real_spx_chain_robust_fit_and_checks():
    chain = load_chain(spx_data_dir() / "spx_options_normalized.csv")
    usable = [s for s in chain.slices if s.n_pairs >= 5]
    fits = [fit_parity(s, spot=chain.spot) for s in usable]
    # measured: no parity outliers, no implausible rate and no calendar arbitrage in the
    # 2023-06-09 chain (54 slices)
    assert sum(f.n_outliers for f in fits) == 0
    assert check_rates(fits) == []
    assert calendar_violations(usable, fits) == []
    # five near-the-money calls of one slice shifted by 150 points: D moves by < 1e-4
    sl = chain.slice("2023-09-15", "SPX")
    ref = fit_parity(sl, spot=chain.spot)
    order = np.argsort(np.abs(sl.strikes - chain.spot))[:5]
    cb, ca = sl.call_bid.copy(), sl.call_ask.copy()
    cb[order] += 150.0
    ca[order] += 150.0
    from dataclasses import replace
    bad = fit_parity(replace(sl, call_bid=cb, call_ask=ca), spot=chain.spot)
    assert bad.discount == pytest.approx(ref.discount, abs=1e-4)
    assert bad.forward == pytest.approx(ref.forward, rel=1e-5)
    assert bad.n_outliers == 5


# ----------------------------------------------------------------------------- snapshots
def snapshots(rows, clocks, *, stale_clock=None, n_stale=0):
    """Rows dealt round-robin to snapshots at ``clocks`` (HH:MM:SS); plus ``n_stale`` earlier
    copies (at ``stale_clock``) of contracts with other quotes, which the latest must replace."""
    out = []
    for i, r in enumerate(rows):
        out.append({**r, "quote_time_et": clocks[i % len(clocks)]})
    for r in rows[:n_stale]:
        out.append({**r, "quote_time_et": stale_clock, "bid": "0.05", "ask": "9999"})
    return out


def test_chain_from_several_snapshots(chain_rows, tmp_path):
    rows, _ = chain_rows
    one = load_chain(write(tmp_path / "one.csv", rows))
    merged = snapshots(rows, ["15:58:00", "15:59:00", "16:00:00"], stale_clock="15:56:30",
                       n_stale=40)
    many = load_chain(write(tmp_path / "many.csv", merged))
    assert many.quote_time == dt.datetime(2024, 1, 2, 16, 0, tzinfo=EASTERN)
    assert many.cleaning.n_superseded == 40
    assert many.cleaning.quote_spread == 210.0           # 15:56:30 to 16:00:00
    assert many.cleaning.max_quote_spread == 300.0
    assert [s.label for s in many.slices] == [s.label for s in one.slices]
    for a, b in zip(one.slices, many.slices):
        assert a.t == b.t
        for f in ("strikes", "call_bid", "call_ask", "put_bid", "put_ask"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert b.quote_spread == 120.0                   # each slice spans all three snapshots
    # the latest quote wins even when it has no bid: the stale two-sided one is not resurrected
    last = [dict(r, quote_time_et="16:00:00") for r in rows]
    last[0] = dict(last[0], bid="0")
    older = [dict(rows[0], quote_time_et="15:58:00")]
    ch = load_chain(write(tmp_path / "nobid.csv", last + older))
    assert ch.cleaning.n_superseded == 1 and ch.cleaning.n_zero_bid == one.cleaning.n_zero_bid + 1


def test_snapshots_too_far_apart_are_a_clear_error(chain_rows, tmp_path):
    rows, _ = chain_rows
    path = write(tmp_path / "far.csv", snapshots(rows, ["15:40", "16:00"]))
    with pytest.raises(ValueError, match=r"quote times span 20 min \(2024-01-02 15:40:00 to "
                                         r"2024-01-02 16:00:00 ET\), more than max_quote_spread "
                                         r"= 5 min.*--max-quote-spread"):
        load_chain(path)
    assert load_chain(path, max_quote_spread=1200).cleaning.quote_spread == 1200.0
    with pytest.raises(ValueError, match="max_quote_spread must be a number of seconds >= 0"):
        load_chain(path, max_quote_spread=-1)


def test_calibrate_cli_merged_snapshots(chain_rows, tmp_path):
    from click.testing import CliRunner

    from deepquant.cli import main

    rows, _ = chain_rows
    path = write(tmp_path / "far.csv", snapshots(rows, ["15:50", "16:00"]))
    args = ["calibrate", str(path), "--expiries", ",".join(EXPIRIES[:2]), "--grid-size", "40",
            "--out", str(tmp_path / "m.npz")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "more than max_quote_spread = 5 min" in r.output
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)   # the CLI reports, never warns
        r = CliRunner().invoke(main, [*args, "--max-quote-spread", "10m"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "quote times span 600 s (--max-quote-spread 600 s)" in text
    assert "quote times span per expiry: 2024-02-16 SYN 600 s, 2024-03-15 SYN 600 s" in text
    r = CliRunner().invoke(main, [*args, "--max-quote-spread", "10m", "--json"])
    assert [p["quote_spread"] for p in json.loads(r.output)["parity"]] == [600.0, 600.0]
    r = CliRunner().invoke(main, [*args, "--max-quote-spread", "soon"])
    assert r.exit_code == 2 and "expected a duration like 90s, 5m or 1h, got 'soon'" in r.output
    r = CliRunner().invoke(main, [*args, "--rate-range", "0.2,0.1"])
    assert r.exit_code == 2 and "need LO < HI" in r.output


def test_real_spx_chain_with_a_scaled_expiry_is_an_error():
    from dataclasses import replace

    chain = load_chain(spx_data_dir() / "spx_options_normalized.csv")
    target = chain.slice("2023-09-15", "SPX")
    scaled = replace(target, **{f: getattr(target, f) * 0.3
                                for f in ("call_bid", "call_ask", "put_bid", "put_ask")})
    bad = replace(chain, slices=tuple(scaled if s is target else s for s in chain.slices))
    expiries = ["2023-07-21:SPX", "2023-08-18:SPX", "2023-09-15:SPX", "2023-12-15:SPX"]
    with pytest.raises(ValueError, match=r"2023-09-15 SPX: put-call parity implies D = 0\.29\d+ "
                                         r"over 98 days, an annual rate of \d{3}\.\d%.*calendar "
                                         r"arbitrage: 2023-09-15 SPX"):
        calibrate_chain(bad, expiries, grid_size=60)


def test_snapshots_in_several_files(chain_rows, tmp_path):
    from click.testing import CliRunner

    from deepquant.cli import main

    rows, _ = chain_rows
    one = load_chain(write(tmp_path / "one.csv", rows))
    # three files, a minute apart; the first one also repeats every contract of the last one
    # with stale quotes, which the later file must replace
    parts = [rows[0::3], rows[1::3], rows[2::3]]
    files = [write(tmp_path / f"snap{i}.csv",
                   [dict(r, quote_time_et=f"15:5{8 + i}" if i < 2 else "16:00") for r in p])
             for i, p in enumerate(parts)]
    stale = [dict(r, quote_time_et="15:58", bid="0.05", ask="9999") for r in parts[2]]
    files[0] = write(tmp_path / "snap0.csv",
                     [dict(r, quote_time_et="15:58") for r in parts[0]] + stale)
    many = load_chain(files)
    assert many.path.endswith("snap0.csv (+2 more files)")
    assert many.quote_time == one.quote_time and many.cleaning.quote_spread == 120.0
    assert many.cleaning.n_superseded == len(parts[2])
    for a, b in zip(one.slices, many.slices):
        np.testing.assert_array_equal(a.call_ask, b.call_ask)
        np.testing.assert_array_equal(a.put_bid, b.put_bid)
    with pytest.raises(ValueError, match="no option chain file given"):
        load_chain([])
    with pytest.raises(ValueError, match="is not a regular file"):
        load_chain([files[0], tmp_path])
    r = CliRunner().invoke(main, ["calibrate", *map(str, files), "--expiries",
                                  ",".join(EXPIRIES[:2]), "--grid-size", "40", "--out",
                                  str(tmp_path / "m.npz"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["cleaning"]["quote_spread"] == 120.0
    assert out["cleaning"]["n_superseded"] == len(parts[2])
