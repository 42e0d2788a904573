"""Bad input to the quote commands and their libraries: a fit range too narrow for the grid to
carry the laws, repairs that move the bands far, a chain with one expiry, negative prices in a
chain file, a spot too small for a tick-quoted synthetic chain, and sweep scenarios too wide for
the network's fixed grid."""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from deepquant.cli import main
from deepquant.market.calibrate import calibrate_chain
from deepquant.market.chain import synthetic_chain
from deepquant.market.expiries import select_slices
from deepquant.market.quotes import MIN_PAIRS, load_chain
from deepquant.mmot.quote_bands import QuoteBands, check_bands, load_bands, span_misses
from deepquant.mmot.quotes_bounds import MAX_REPAIR_WIDENING, bounds_from_quotes
from deepquant.payoffs import AsianCall, EuropeanCall, LookbackCall
from deepquant.results import ConvergenceWarning
from tests.market.test_parity_checks import write

EXPIRIES = ["30d", "60d"]  # 2024-02-16 and 2024-03-15 of the default synthetic chain


@pytest.fixture(scope="module")
def chain_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("quotes") / "chain.csv"
    synthetic_chain(seed=3).to_csv(path)
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _quote_bounds(*args):
    return CliRunner().invoke(main, ["quote-bounds", *map(str, args)])


# ----------------------------------------------------------------------------- fit range, repair
def test_cli_rejects_a_fit_range_too_narrow_for_the_grid(chain_csv):
    # before: the grid spanned [0.9925, 1.011] (the strikes kept), --repair minimal lowered the
    # at-the-money bids to what a law on it is worth and reported success with equal bounds
    res = _quote_bounds("--quotes", chain_csv, "--expiries", ",".join(EXPIRIES), "--payoff",
                        "asian-call", "--strike", 1, "--grid-size", 11, "--fit-range",
                        "0.99,1.01", "--repair", "minimal", "--json")
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert out.count("--fit-range") >= 2 and "0.99,1.01" in out
    assert "too narrow to carry laws" in out and "a finer grid on the same span cannot help" in out


def test_library_names_fit_range_when_its_grid_is_too_narrow(chain_csv):
    with pytest.raises(ValueError, match=r"too narrow.*widen fit_range \(got \(0\.99, 1\.01\)\)"):
        bounds_from_quotes(chain_csv, AsianCall(strike=1.0), expiries=EXPIRIES,
                           fit_range=(0.99, 1.01), grid_size=11, repair="minimal")


def test_span_misses_is_the_two_point_law_bound():
    # one expiry, an at-the-money call bid 0.02 on the span [0.99, 1.01]: the largest price of
    # a law of mean 1 there is the two-point law's, (1.01 - 1)(1 - 0.99) / 0.02 = 0.005
    bands = QuoteBands(("1m",), [1 / 12], (np.array([1.0]),), (np.array([True]),),
                       (np.array([0.02]),), (np.array([0.021]),))
    grid = np.array([0.99, 1.0, 1.01])
    (excess, text), = span_misses(bands, grid)
    assert excess == pytest.approx(0.015, abs=1e-12) and "C 1.0000 bids 0.02 > 0.005" in text
    assert span_misses(bands, np.array([0.9, 1.0, 1.1])) == []  # 0.05 >= 0.02


def _narrow_grid_bands(chain_csv):
    """Two-sided and one-sided bands of the chain, and an explicit grid on [0.97, 1.03]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bands, _ = load_bands(chain_csv, EXPIRIES)
    return bands, np.round(np.linspace(0.97, 1.03, 13), 12)


def test_a_repair_that_moves_the_bands_far_is_not_a_success(chain_csv):
    # before: success True with the bids of every quote near the money lowered by most of its
    # price (the grid given here is the caller's, so its span is not rejected)
    bands, grid = _narrow_grid_bands(chain_csv)
    with pytest.warns(ConvergenceWarning, match="more than MAX_REPAIR_WIDENING"):
        res = bounds_from_quotes(bands, EuropeanCall(strike=1.0), grid=grid, repair="minimal")
    assert not res.success and res.status == "repair-too-wide"
    assert res.info["band_widening_share"] > MAX_REPAIR_WIDENING
    assert "of the quotes' total price" in res.message
    assert check_bands(res.info["bands"], grid).feasible  # the repair itself did its job


def test_infeasible_bands_on_a_narrow_span_do_not_suggest_a_finer_grid(chain_csv):
    # before: "... or use a finer grid", which cannot reach the bids this span cannot carry
    bands, grid = _narrow_grid_bands(chain_csv)
    with pytest.raises(ValueError, match="no arbitrage-free law") as err:
        bounds_from_quotes(bands, EuropeanCall(strike=1.0), grid=grid)
    msg = str(err.value)
    assert "or use a finer grid" not in msg and "a finer grid on the same span cannot help" in msg


def test_ordinary_repairs_stay_successful(chain_csv):
    # the default fit range, an 11-point grid, thinned, both repairs: widenings of 0.01-0.9%
    # of the quotes' prices (MAX_REPAIR_WIDENING is 10%)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = calibrate_chain(chain_csv, EXPIRIES, grid_size=40, fit_range=(0.5, 1.6))
    for repair, source in (("minimal", chain_csv), ("calibration", cal)):
        kw = dict(expiries=EXPIRIES, grid_size=11) if repair == "minimal" else {}
        res = bounds_from_quotes(source, LookbackCall(strike=1.0), thin=True, repair=repair,
                                 **kw)
        assert res.success, res.message
        assert res.info["repaired"] and 0 < res.info["band_widening_share"] < 0.02


# ----------------------------------------------------------------------------- one expiry
@pytest.fixture(scope="module")
def one_expiry_csv(chain_csv, tmp_path_factory):
    rows = [r for r in _rows(chain_csv) if r["expiry"] == "2024-03-15"]
    return write(tmp_path_factory.mktemp("one") / "one.csv", rows)


@pytest.mark.parametrize("payoff", ["european-call", "lookback-call"])
def test_a_file_with_one_expiry_is_a_one_period_problem(chain_csv, one_expiry_csv, payoff):
    # before: the one-expiry file failed in the chain loader ("needs at least 2 expiries ... a
    # single expiry cannot be calibrated in convex order") while the same expiry picked from
    # the full file was priced; now both give the same bounds (the same quotes: 1e-12)
    out = []
    for path in (one_expiry_csv, chain_csv):
        res = _quote_bounds("--quotes", path, "--expiries", "2024-03-15", "--payoff", payoff,
                            "--strike", 1, "--grid-size", 11, "--repair", "minimal", "--json")
        assert res.exit_code == 0, res.output
        out.append(json.loads(res.stdout))
    assert out[0]["expiries"] == out[1]["expiries"] == ["2024-03-15 SYN"]
    for key in ("lower", "upper"):
        assert abs(out[0][key] - out[1][key]) <= 1e-12


def test_one_expiry_keeps_the_calibration_requirement(one_expiry_csv):
    chain = load_chain(one_expiry_csv)
    assert [s.label for s in select_slices(chain, ["2024-03-15"])] == ["2024-03-15 SYN"]
    with pytest.raises(ValueError, match=r"needs at least 2 expiries.*found 1.*single expiry"):
        calibrate_chain(one_expiry_csv, ["30d", "60d"])
    res = _quote_bounds("--quotes", one_expiry_csv, "--expiries", "2024-03-15", "--payoff",
                        "european-call", "--strike", 1, "--grid-size", 11, "--repair",
                        "calibration")
    assert res.exit_code == 2
    assert "--repair calibration needs at least 2 expiries" in " ".join(res.output.split())
    with pytest.raises(ValueError, match="min_slices must be an integer >= 1, got 0"):
        select_slices(chain, ["2024-03-15"], min_slices=0)


# ----------------------------------------------------------------------------- negative prices
def test_negative_prices_are_counted_as_corrupt_not_as_zero_bids(chain_csv, tmp_path):
    # before: a bid of -5 was counted as "zero-bid" and its ask kept as a one-sided quote
    rows = _rows(chain_csv)
    clean = load_chain(chain_csv)
    two_sided = [i for i, r in enumerate(rows) if float(r["bid"]) > 0]
    neg_bid, neg_ask = two_sided[:7], two_sided[7:10]
    for i in neg_bid:
        rows[i]["bid"] = "-5"
    for i in neg_ask:
        rows[i]["ask"] = "-1"
    path = write(tmp_path / "neg.csv", rows)
    chain = load_chain(path)
    c0, c = clean.cleaning, chain.cleaning
    assert c.n_negative == 10 and c.as_dict()["n_negative"] == 10
    assert c.n_zero_bid == c0.n_zero_bid and c.n_crossed == c0.n_crossed
    assert c.n_one_sided == c0.n_one_sided and c.n_kept == c0.n_kept - 10
    res = CliRunner().invoke(main, ["calibrate", str(path), "--expiries", "30d,60d",
                                    "--grid-size", "40", "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    assert "10 corrupt (negative bid or ask)" in " ".join(res.output.split())


# ----------------------------------------------------------------------------- synthetic chain
def test_chain_refuses_a_spot_too_small_for_its_ticks(tmp_path):
    # before: spot 1e-9 wrote spot 0.0000, spot_bid -0.01, every bid 0 and no implied vol
    out = tmp_path / "ch.csv"
    res = CliRunner().invoke(main, ["chain", "--spot", "1e-9", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    msg = " ".join(res.output.split())
    assert "--spot: spot must be large enough for quotes on SPX ticks" in msg
    assert "got 1e-09" in msg and f"fewer than the {MIN_PAIRS} a chain needs" in msg
    least = float(re.search(r"about \[([0-9.e+]+), 1e\+12\]", msg).group(1))
    # the stated least spot takes the worst jitter: a chain there has MIN_PAIRS at every expiry
    ch = synthetic_chain(spot=least)
    q = ch.quotes
    for e in ch.expiries:
        calls, puts = q[(q["expiry"] == e) & (q["type"] == "C")], q[(q["expiry"] == e)
                                                                    & (q["type"] == "P")]
        assert np.sum((calls["bid"] > 0) & (puts["bid"] > 0)) >= MIN_PAIRS, e


# ----------------------------------------------------------------------------- sweep
def test_scenario_tail_bounds_of_the_training_range_stay_below_the_tolerance():
    pytest.importorskip("torch")
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import TAIL_TOL, scenario_tail_bounds

    grid = NeuralPricer().grid
    times = np.linspace(0.0, 0.5, 11)
    # the widest GBM of the training families (sigma 0.35, T 0.5): 3.9e-4; the CLI default
    # sweep (0.2, bumps of 10%): below 1e-6; vols 50 squeeze every law onto the grid's ends
    ok = scenario_tail_bounds(times, 0.35, grid, np.zeros(1))
    default = scenario_tail_bounds(times, 0.2, grid, np.array([-0.1, 0.0, 0.1]))
    wide = scenario_tail_bounds(times, 50.0, grid, np.zeros(2))
    assert 1e-4 < ok[0] < TAIL_TOL and np.all(default < 1e-6) and default.shape == (3,)
    assert np.all(wide > 1.0)


def test_sweep_with_tails_off_the_grid_is_not_a_success(monkeypatch):
    # before: success True, the only sign a warning line on stderr (calls moved by up to 1.5)
    pytest.importorskip("torch")
    from deepquant.neural.pricer import NeuralPricer

    pricer = NeuralPricer(ood_marginal_error=float("inf"))
    monkeypatch.setattr("deepquant.neural.pricer.NeuralPricer", lambda *a, **k: pricer)
    args = ["sweep", "--num", "2", "--periods", "2", "--no-classical", "--strike", "1", "--json"]
    wide = CliRunner().invoke(main, args + ["--vols", "50"])
    assert wide.exit_code == 1, wide.output
    s = json.loads(wide.stdout)
    assert s["success"] is False and s["status"] == "tails_off_grid"
    assert "more than TAIL_TOL" in s["message"] and len(s["warnings"]) == 1
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["success"] is True


def test_sweep_checks_its_tail_bounds():
    pytest.importorskip("torch")
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.sweep import bumped_scenarios, scenario_tail_bounds, sweep

    pricer = NeuralPricer(ood_marginal_error=float("inf"))
    times = [0.0, 0.25, 0.5]
    scen = bumped_scenarios(times, 0.2, pricer.grid, [0.0, 0.1])
    tails = scenario_tail_bounds(times, 0.2, pricer.grid, np.array([0.0, 0.1]))
    res = sweep(scen, AsianCall(strike=1.0), pricer=pricer, classical=False, tail_bounds=tails)
    assert res.success and res.status == "done"
    with pytest.warns(ConvergenceWarning, match="reach beyond the grid"):
        bad = sweep(scen, AsianCall(strike=1.0), pricer=pricer, classical=False,
                    tail_bounds=[0.0, 0.5])
    assert not bad.success and bad.status == "tails_off_grid" and "[1]" in bad.message
    np.testing.assert_array_equal(bad.neural, res.neural)  # the prices are still reported
    for value in ([0.0], [0.0, float("nan")], [0.0, -1.0]):
        with pytest.raises(ValueError, match=r"tail_bounds must hold one number >= 0 per "
                                             r"scenario, shape \(2,\)"):
            sweep(scen, AsianCall(strike=1.0), pricer=pricer, classical=False,
                  tail_bounds=value)
