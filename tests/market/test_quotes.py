"""Option-chain loading, cleaning, time to expiry and put–call parity fits.

Real-data tests read ``$DEEPQUANT_SPX_DATA`` (default ``<repo>/../shared/data/spx_20230609``)
and skip only when it is absent. The reference values come from the data set's own files:
``quality_report.txt`` (counts) and ``slices.csv`` (T, parity D and F, computed by the data
set's independent stdlib+numpy scripts).
"""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest
from scipy.stats import norm

from deepquant.market.parity import fit_parity
from deepquant.market.quotes import (
    EASTERN,
    load_chain,
    settlement_instant,
    year_fraction,
)
from tests.conftest import spx_data_dir

HEADER = "quote_date,quote_time_et,root,settlement,spot,expiry,strike,type,bid,ask"


# ----------------------------------------------------------------------------- synthetic chains
def bs_prices(s0, k, t, r, q, vol):
    """Black–Scholes call and put (closed form; Hull §15.8)."""
    f = s0 * np.exp((r - q) * t)
    d = np.exp(-r * t)
    d1 = (np.log(f / k) + 0.5 * vol**2 * t) / (vol * np.sqrt(t))
    d2 = d1 - vol * np.sqrt(t)
    call = d * (f * norm.cdf(d1) - k * norm.cdf(d2))
    put = d * (k * norm.cdf(-d2) - f * norm.cdf(-d1))
    return call, put, f, d


def write_normalized(path, rows, header=HEADER):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def synthetic_rows(expiries=("2024-03-15", "2024-06-21"), strikes=range(80, 121, 5),
                   *, s0=100.0, r=0.05, q=0.01, vol=0.2, half=0.05, root="SPX"):
    """Normalized rows with Black–Scholes mids and half-spread min(half, mid / 2)."""
    qd = dt.datetime(2024, 1, 12, 13, 40, tzinfo=EASTERN)
    rows = []
    for e in expiries:
        t = year_fraction(qd, dt.date.fromisoformat(e), "AM")
        for k in strikes:
            c, p, _, _ = bs_prices(s0, float(k), t, r, q, vol)
            for typ, v in (("C", c), ("P", p)):
                h = min(half, v / 2)  # keep the bid positive for far out-of-the-money options
                rows.append(["2024-01-12", "13:40", root, "AM", s0, e, k, typ,
                             f"{v - h:.10f}", f"{v + h:.10f}"])
    return rows


def test_synthetic_parity_recovers_forward_and_discount(tmp_path):
    rows = synthetic_rows()
    chain = load_chain(write_normalized(tmp_path / "c.csv", rows))
    assert len(chain) == 2 and chain.cleaning.n_kept == len(rows)
    assert chain.spot == 100.0
    for sl in chain.slices:
        fit = fit_parity(sl, spot=chain.spot)
        _, _, f, d = bs_prices(100.0, 100.0, sl.t, 0.05, 0.01, 0.2)
        # mids are exact closed-form prices printed with 10 decimals: parity holds to ~1e-10
        assert fit.forward == pytest.approx(f, rel=1e-9)
        assert fit.discount == pytest.approx(d, rel=1e-9)
        assert fit.rate == pytest.approx(0.05, abs=1e-8)
        assert fit.dividend_yield == pytest.approx(0.01, abs=1e-8)
        assert fit.max_abs_residual < 1e-8 and fit.n_outside_band == 0


def test_cleaning_counts_and_slicing_on_root(tmp_path):
    rows = synthetic_rows(expiries=("2024-03-15",))
    rows += synthetic_rows(expiries=("2024-03-15",), root="SPXW")  # same date, PM root
    for r in rows:
        if r[2] == "SPXW":
            r[3] = "PM"
    rows[0][8] = "0"          # zero bid
    rows[1][8], rows[1][9] = "5.0", "4.0"  # crossed
    rows.append(["2024-01-12", "13:40", "SPXW", "PM", 100, "2024-01-10", 100, "C", 1, 2])  # expired
    rows.append(["2024-01-12", "13:40", "SPX", "AM", 100, "2024-01-12", 100, "C", 1, 2])  # AM today
    chain = load_chain(write_normalized(tmp_path / "c.csv", rows))
    c = chain.cleaning
    assert (c.n_rows, c.n_zero_bid, c.n_crossed, c.n_expired) == (len(rows), 1, 1, 2)
    assert c.n_kept == len(rows) - 4
    assert [s.label for s in chain.slices] == ["2024-03-15 SPX", "2024-03-15 SPXW"]
    am, pm = chain.slices
    assert am.settlement == "AM" and pm.settlement == "PM"
    # 16:00 - 09:30 = 6.5 hours between the two settlements
    assert (pm.t - am.t) * 365 * 24 == pytest.approx(6.5, abs=1e-9)
    with pytest.raises(ValueError, match="several roots"):
        chain.slice("2024-03-15")
    assert chain.slice("2024-03-15", "SPXW") is pm


def test_duplicate_contracts(tmp_path):
    rows = synthetic_rows()
    dup = write_normalized(tmp_path / "dup.csv", rows + [list(rows[3])])
    chain = load_chain(dup)
    assert chain.cleaning.n_duplicate == 1 and chain.cleaning.n_kept == len(rows)
    bad = list(rows[3])
    bad[9] = "999"
    with pytest.raises(ValueError, match=r"conflicting quotes for 2024-03-15 SPX put 85"):
        load_chain(write_normalized(tmp_path / "bad.csv", rows + [bad]))


def test_year_fraction_day_count_and_dst():
    qt = dt.datetime(2023, 6, 9, 13, 40, tzinfo=EASTERN)
    # 7 days less 4h10m (13:40 -> 09:30), ACT/365
    assert year_fraction(qt, dt.date(2023, 6, 16), "AM") == pytest.approx(
        (7 - (4 + 1 / 6) / 24) / 365, abs=1e-15)
    assert year_fraction(qt, dt.date(2023, 6, 9), "PM") == pytest.approx(
        (2 + 1 / 3) / 24 / 365, abs=1e-15)
    # across the November DST change the elapsed time is one hour longer than the wall clock
    wall = (dt.datetime(2023, 12, 15, 9, 30) - dt.datetime(2023, 6, 9, 13, 40)).total_seconds()
    assert year_fraction(qt, dt.date(2023, 12, 15), "AM") * 365 * 86400 == pytest.approx(
        wall + 3600, abs=1e-6)
    assert settlement_instant(dt.date(2023, 6, 16), "am").hour == 9
    with pytest.raises(ValueError, match="settlement must be 'AM' or 'PM'"):
        settlement_instant(dt.date(2023, 6, 16), "noon")


# ----------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_chain(tmp_path / "nope.csv")


def test_missing_column_is_named(tmp_path):
    rows = [r[:-1] for r in synthetic_rows()]
    path = write_normalized(tmp_path / "c.csv", rows, header=HEADER.rsplit(",", 1)[0])
    with pytest.raises(ValueError, match=r"c\.csv, line 1: missing column\(s\) \['ask'\]"):
        load_chain(path)


def test_malformed_row_names_file_and_line(tmp_path):
    rows = synthetic_rows()
    rows[2] = rows[2][:-2]
    with pytest.raises(ValueError, match=r"c\.csv, line 4: expected 10 fields.*found 8"):
        load_chain(write_normalized(tmp_path / "c.csv", rows))


def test_bad_number_names_line_and_column(tmp_path):
    rows = synthetic_rows()
    rows[4][8] = "abc"
    with pytest.raises(ValueError, match=r"line 6: column 'bid': 'abc' is not a number"):
        load_chain(write_normalized(tmp_path / "c.csv", rows))
    rows = synthetic_rows()
    rows[0][7] = "X"
    with pytest.raises(ValueError, match=r"line 2: column 'type'"):
        load_chain(write_normalized(tmp_path / "d.csv", rows))


def test_no_two_sided_quotes(tmp_path):
    rows = synthetic_rows()
    for r in rows:
        r[8] = "0"
    with pytest.raises(ValueError, match=r"c\.csv: no two-sided quotes"):
        load_chain(write_normalized(tmp_path / "c.csv", rows))


def test_unknown_layout_and_empty(tmp_path):
    (tmp_path / "x.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match=r"x\.csv, line 1: unknown layout"):
        load_chain(tmp_path / "x.csv")
    (tmp_path / "e.csv").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_chain(tmp_path / "e.csv")


def test_parity_needs_pairs(tmp_path):
    rows = [r for r in synthetic_rows(expiries=("2024-03-15",), strikes=(95, 100))]
    chain = load_chain(write_normalized(tmp_path / "c.csv", rows))
    with pytest.raises(ValueError, match="slice 2024-03-15 SPX has 2 strikes.*at least 3"):
        fit_parity(chain.slices[0])


CBOE = """
Standard & Poors 500 Index,Last: 100.0,Change: 0.5
Date: 12 January 2024, 1:40 PM EST,Bid: 99.9,Ask: 100.1,Size: 1*1,Volume: 0
Expiration Date,Calls,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest,Strike,Puts,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest
"""


def cboe_file(tmp_path, rows):
    lines = []
    for e, root, k, cb, ca, pb, pa in rows:
        d = dt.date.fromisoformat(e)
        sym = f"{root}{d:%y%m%d}{{}}{int(k * 1000):08d}"
        lines.append(f"{d:%a %b %d %Y},{sym.format('C')},0,0,{cb},{ca},0,0,0,0,0,{k:.2f},"
                     f"{sym.format('P')},0,0,{pb},{pa},0,0,0,0,0")
    path = tmp_path / "quotedata.csv"
    path.write_text(CBOE + "\n".join(lines) + "\n")
    return path


def test_cboe_layout_synthetic(tmp_path):
    qd = dt.datetime(2024, 1, 12, 13, 40, tzinfo=EASTERN)
    rows = []
    for e, root in (("2024-03-15", "SPX"), ("2024-03-15", "SPXW"), ("2024-06-21", "SPX")):
        t = year_fraction(qd, dt.date.fromisoformat(e), "AM" if root == "SPX" else "PM")
        for k in range(80, 121, 5):
            c, p, _, _ = bs_prices(100.0, float(k), t, 0.05, 0.01, 0.2)
            rows.append((e, root, float(k), f"{c - .05:.8f}", f"{c + .05:.8f}",
                         "0" if k == 80 else f"{p - .05:.8f}", f"{p + .05:.8f}"))
    chain = load_chain(cboe_file(tmp_path, rows))
    assert chain.quote_time == qd and chain.spot == 100.0
    assert [s.label for s in chain.slices] == ["2024-03-15 SPX", "2024-03-15 SPXW",
                                               "2024-06-21 SPX"]
    assert chain.cleaning.n_rows == 2 * len(rows) and chain.cleaning.n_zero_bid == 3
    fit = fit_parity(chain.slices[2], spot=100.0)
    _, _, f, d = bs_prices(100.0, 100.0, chain.slices[2].t, 0.05, 0.01, 0.2)
    assert fit.forward == pytest.approx(f, rel=1e-8) and fit.discount == pytest.approx(d, rel=1e-8)


def test_cboe_bad_symbol_and_field_count(tmp_path):
    path = cboe_file(tmp_path, [("2024-03-15", "SPX", 100.0, 1, 2, 1, 2)])
    text = path.read_text().replace("SPX240315C00100000", "BADSYMBOL")
    path.write_text(text)
    with pytest.raises(ValueError, match=r"line 5: column 'Calls': 'BADSYMBOL'"):
        load_chain(path)
    path.write_text(text.replace("BADSYMBOL", "SPX240315C00100000").rstrip("\n") + ",extra\n")
    with pytest.raises(ValueError, match=r"quotedata\.csv, line 5: expected 22 fields"):
        load_chain(path)
    path.write_text(text.replace("Strike,", "Strik,"))
    with pytest.raises(ValueError, match=r"line 4: missing column 'Strike'"):
        load_chain(path)


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def spx():
    d = spx_data_dir()
    return d, load_chain(d / "raw" / "spx_quotedata.csv")


def test_spx_counts_match_quality_report(spx):
    _, chain = spx
    c = chain.cleaning
    # quality_report.txt: 17788 contracts, bid == 0: 817, crossed 0, two-sided 16971, 54 slices
    assert (c.n_rows, c.n_zero_bid, c.n_crossed, c.n_expired, c.n_kept) == (
        17788, 817, 0, 0, 16971)
    assert len(chain) == 54
    assert chain.quote_time == dt.datetime(2023, 6, 9, 13, 40, tzinfo=EASTERN)
    assert chain.spot == pytest.approx(4300.0098, abs=1e-9)
    labels = [s.label for s in chain.slices]
    for day in ("2023-06-16", "2023-07-21", "2023-08-18", "2023-09-15", "2023-10-20"):
        assert f"{day} SPX" in labels and f"{day} SPXW" in labels


def test_spx_both_layouts_agree(spx):
    d, chain = spx
    other = load_chain(d / "spx_options_normalized.csv")
    assert other.cleaning.n_kept == chain.cleaning.n_kept
    for a, b in zip(chain.slices, other.slices, strict=True):
        assert a.label == b.label and a.t == b.t
        np.testing.assert_array_equal(a.strikes, b.strikes)
        for f in ("call_bid", "call_ask", "put_bid", "put_ask"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_spx_times_and_parity_match_slices_csv(spx):
    d, chain = spx
    ref = {(r["expiry"], r["root"]): r for r in csv.DictReader(open(d / "slices.csv"))}
    n_checked = 0
    for sl in chain.slices:
        r = ref[(sl.expiry.isoformat(), sl.root)]
        # slices.csv uses wall-clock ET; ours counts the DST hour after 2023-11-05: <= 1 hour
        assert abs(sl.t - float(r["T_years"])) <= 1 / (365 * 24) + 1e-6
        if not 7 <= sl.days <= 366:
            continue
        fit = fit_parity(sl, spot=chain.spot)
        # independent fit (same model, slightly different pair selection): F to 1e-5
        # relative (~0.04 index points), D to 3e-4 (a 4 bp rate difference at 1 year)
        assert fit.forward == pytest.approx(float(r["parity_F"]), rel=1e-5)
        assert fit.discount == pytest.approx(float(r["parity_D"]), abs=3e-4)
        assert fit.n_outside_band == 0
        if sl.days >= 30:  # PROVENANCE.md: r ~ 4.8-5.5% and q ~ 0.85-1.4% from 1 month on
            assert 0.04 < fit.rate < 0.06 and 0.0 < fit.dividend_yield < 0.02
        n_checked += 1
    assert n_checked == 43  # PROVENANCE.md: 43 slices between 7 days and 1 year


def test_zero_bid_and_one_sided_quotes_kept_apart(tmp_path):
    """Zero or missing bids with an ask, and bids with no ask (missing or shown as 0), leave the
    two-sided arrays (the calibration's input) but are kept in ``ChainSlice.one_sided``; a
    contract with neither side and a crossed one are dropped."""
    from deepquant.market.parity import normalize_slice
    from deepquant.mmot.quote_bands import load_bands

    rows = synthetic_rows()                            # strikes 80..120 by 5 at two expiries
    at = {(r[6], r[7]): r for r in rows if r[5] == "2024-03-15"}
    at[80, "C"][8] = "0"                               # zero bid: upper bound only
    at[85, "P"][8] = ""                                # missing bid: upper bound only
    at[90, "C"][9] = ""                                # missing ask: lower bound only
    at[90, "P"][9] = "0"                               # ask shown as 0: lower bound only
    at[95, "C"][8], at[95, "C"][9] = "0", "0"          # neither: dropped
    at[95, "P"][8], at[95, "P"][9] = "5.0", "4.0"      # crossed: dropped
    chain = load_chain(write_normalized(tmp_path / "c.csv", rows))
    c = chain.cleaning
    assert (c.n_zero_bid, c.n_crossed, c.n_one_sided, c.n_kept) == (3, 3, 4, len(rows) - 6)
    assert c.as_dict()["n_one_sided"] == 4
    sl = chain.slices[0]
    assert sl.expiry == dt.date(2024, 3, 15) and len(chain.slices[1].one_sided) == 0
    one = sl.one_sided
    assert len(one) == 4
    np.testing.assert_array_equal(one.strikes, [80.0, 85.0, 90.0, 90.0])
    np.testing.assert_array_equal(one.is_call, [True, False, False, True])
    np.testing.assert_array_equal(one.bid, [0.0, 0.0, float(at[90, "P"][8]),
                                            float(at[90, "C"][8])])
    np.testing.assert_array_equal(one.ask, [float(at[80, "C"][9]), float(at[85, "P"][9]),
                                            np.inf, np.inf])
    # the two-sided arrays (and so the calibration's quotes) do not see them
    i = {k: j for j, k in enumerate(sl.strikes)}
    assert np.isnan(sl.call_bid[i[80]]) and np.isnan(sl.put_bid[i[85]])
    assert 90 not in i and 95 not in i         # no two-sided contract left at these strikes
    fit = fit_parity(sl, spot=chain.spot)
    assert normalize_slice(sl, fit).n == sl.n_quotes == 18 - 6
    # the bid-ask bands add them, normalized by the same F and D F (1e-12: the same arithmetic)
    bands, (q, q2) = load_bands(chain, ["2024-03-15", "2024-06-21"], fit_range=(0.0, 10.0))
    plain, _ = load_bands(chain, ["2024-03-15", "2024-06-21"], fit_range=(0.0, 10.0),
                          one_sided=False)
    assert bands.k[0].size == q.n + 4 and plain.k[0].size == q.n
    assert bands.k[1].size == plain.k[1].size == q2.n
    for strike, call, bid, ask in zip(one.strikes, one.is_call, one.bid, one.ask):
        j = np.flatnonzero((np.abs(bands.k[0] - strike / q.forward) < 1e-12)
                           & (bands.is_call[0] == call))
        assert j.size == 1
        assert bands.bid[0][j[0]] == pytest.approx(bid / (q.discount * q.forward), abs=1e-12)
        assert bands.ask[0][j[0]] == ask / (q.discount * q.forward)
    assert np.all(np.diff(bands.k[0]) >= 0)


@pytest.mark.parametrize(("spec", "expected"), [
    ("30d", ("days", 30.0, None)),
    (" 6W ", ("days", 42.0, None)),
    ("3m", ("days", 3 * 365.0 / 12, None)),
    ("1.5y", ("days", 547.5, None)),
    (45, ("days", 45.0, None)),
    (dt.date(2023, 7, 21), ("date", dt.date(2023, 7, 21), None)),
    ("2023-07-21", ("date", dt.date(2023, 7, 21), None)),
    ("2023-07-21:SPXW", ("date", dt.date(2023, 7, 21), "SPXW")),
])
def test_parse_expiry(spec, expected):
    from deepquant.market.expiries import parse_expiry

    kind, value, root = parse_expiry(spec)
    assert (kind, root) == (expected[0], expected[2])
    assert value == (pytest.approx(expected[1], abs=1e-12) if kind == "days" else expected[1])


@pytest.mark.parametrize("spec", ["30x", "2023-13-01", "soon", True])
def test_parse_expiry_rejects(spec):
    from deepquant.market.expiries import parse_expiry

    with pytest.raises(ValueError):
        parse_expiry(spec)
