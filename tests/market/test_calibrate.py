"""Joint arbitrage-free calibration of marginals to bid–ask quotes.

Synthetic tests need no data: quotes are generated from laws known to be in convex order
(a symmetric random walk on a grid; lognormal laws with increasing total variance), so the
calibration must reprice them inside their bands and return valid ``Marginals``. Real-data
tests read ``$DEEPQUANT_SPX_DATA`` (default ``<repo>/../shared/data/spx_20230609``) and skip only
when it is absent; they check the calibration's acceptance criteria.
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from deepquant.blackscholes import black_price, implied_vol
from deepquant.cli import main
from deepquant.market.calibrate import (
    CalibrationResult,
    SliceQuotes,
    calibrate,
    calibrate_chain,
    confidence_halfwidth,
)
from deepquant.market.expiries import select_slices
from deepquant.market.grid import clean_rows, make_grid
from deepquant.market.marginals import Marginals, call_matrix
from deepquant.market.quotes import load_chain
from tests.conftest import random_walk_marginals, spx_data_dir
from tests.market.test_quotes import synthetic_rows, write_normalized
from tests.result_protocol import ResultProtocol


def quotes_from_law(label, t, grid, w, strikes, half):
    """Calls and puts at ``strikes`` priced under the law ``w`` on ``grid``, +- ``half``."""
    c = w @ call_matrix(grid, strikes).T
    p = c - w @ grid + strikes
    k = np.concatenate([strikes, strikes])
    price = np.concatenate([c, p])
    return SliceQuotes(label, t, 100.0, 0.99, k, np.repeat([True, False], strikes.size),
                       np.maximum(price - half, 0.0), price + half)


def lognormal_quotes(label, t, vol, strikes, rel=0.01, floor=2e-4):
    k = np.concatenate([strikes, strikes])
    is_call = np.repeat([True, False], strikes.size)
    price = black_price(1.0, k, vol, t, is_call=is_call)
    half = np.maximum(rel * price, floor)
    return SliceQuotes(label, t, 100.0, 0.99, k, is_call, np.maximum(price - half, 0), price + half)


# ----------------------------------------------------------------------------- synthetic
def test_recovers_random_walk_law_on_its_grid():
    grid, rows = random_walk_marginals(n_dates=4, x0=100.0)
    grid = grid / 100.0  # mean 1 in moneyness
    strikes = grid[1:-1]
    half = 1e-6
    quotes = [quotes_from_law(f"d{t}", 0.1 * t, grid, rows[t], strikes, half) for t in (1, 2, 3)]
    res = calibrate(quotes, grid=grid, reg=1e-3)
    assert res.success and res.fraction_inside == 1.0
    # every grid call price is pinned by a quote to +-1e-6 (plus the 1e-9 inside tolerance)
    got = res.marginals.call_prices(strikes)
    want = rows[1:] @ call_matrix(grid, strikes).T
    np.testing.assert_allclose(got, want, atol=half + 1e-9)
    np.testing.assert_allclose(res.marginals.means, 1.0, atol=1e-12)
    assert res.marginals.check_convex_order().violation <= 1e-9
    assert np.all(res.cleanup_l1 < 1e-6)


def test_lognormal_slices_repriced_inside_band():
    strikes = np.arange(0.7, 1.301, 0.025)
    quotes = [lognormal_quotes(f"T{t}", t, 0.2, strikes) for t in (0.1, 0.25, 0.5)]
    res = calibrate(quotes, grid_size=80)
    assert res.success, res.message
    assert res.nit > 0 and res.primal_residual < 1e-7  # Clarabel's feasibility tolerance 1e-8
    assert res.fraction_inside == 1.0 and res.max_violation == 0.0
    m = res.marginals
    assert isinstance(m, Marginals) and m.n_dates == 3 and m.size == 80
    np.testing.assert_allclose(m.times, [0.1, 0.25, 0.5])
    # the returned laws reprice every quote within its band (1e-9 = inside_tol)
    for s, q in enumerate(quotes):
        c = m.call_prices(q.k)[s]
        model = np.where(q.is_call, c, c - 1 + q.k)
        assert np.all(model >= q.bid - 1e-9) and np.all(model <= q.ask + 1e-9)
        np.testing.assert_allclose(model, res.model[s], atol=1e-15)
    # a Marginals round trip keeps the convex-order validation at default tolerances
    Marginals(m.grid, m.weights, m.times)
    rep = res.slices[0]
    assert rep.n_window == rep.n_quotes  # all strikes within +-40%
    assert rep.half_width == pytest.approx(confidence_halfwidth(rep.mean_spread, rep.n_quotes))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_lognormal_mixtures_repriced_inside_band(seed):
    """Mixtures of mean-1 lognormals with fixed weights and vols are in convex order in t
    (each component is), with fat tails: every quote must be repriced inside its band."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(3))
    vols = rng.uniform(0.1, 0.6, size=3)
    times = np.sort(rng.uniform(0.05, 1.0, size=3))
    strikes = np.arange(0.6, 1.601, 0.02)
    k = np.concatenate([strikes, strikes])
    is_call = np.repeat([True, False], strikes.size)
    quotes = []
    for t in times:
        price = sum(a * black_price(1.0, k, v, t, is_call=is_call) for a, v in zip(weights, vols))
        half = np.maximum(0.005 * price, 5e-5)
        keep = price > half  # like a real chain: no quote without a bid
        quotes.append(SliceQuotes(f"t={t:.3f}", float(t), 100.0, 0.99, k[keep], is_call[keep],
                                  price[keep] - half[keep], price[keep] + half[keep]))
    res = calibrate(quotes, grid_size=120)
    assert res.success, res.message
    assert res.fraction_inside == 1.0, [r.fraction_inside for r in res.slices]
    assert res.marginals.check_convex_order().violation <= 1e-9


def test_calendar_arbitrage_in_quotes_is_not_passed_on():
    """Later quotes cheaper than earlier ones: no convex-ordered law fits both bands."""
    strikes = np.arange(0.8, 1.201, 0.025)
    quotes = [lognormal_quotes("early", 0.25, 0.30, strikes),
              lognormal_quotes("late", 0.30, 0.15, strikes)]
    res = calibrate(quotes, grid_size=60)
    assert res.success
    assert res.marginals.check_convex_order().violation <= 1e-9  # zero static arbitrage
    assert res.fraction_inside < 1.0
    assert max(r.max_violation for r in res.slices) > 1e-3


def test_clean_rows_restores_exact_constraints():
    grid = np.linspace(0.5, 1.5, 21)
    a = np.zeros(21)
    a[9:12] = [0.25, 0.5, 0.25]
    b = np.zeros(21)
    b[8:13] = [0.1, 0.2, 0.4, 0.2, 0.1]
    # solver-like noise: tiny negatives, a sum and a mean off by 1e-10, and b shrunk slightly
    # towards the centre so that C_b < C_a by ~1e-10 at some strikes
    noisy_b = b.copy()
    noisy_b[8] -= 3e-10
    noisy_b[12] -= 3e-10
    noisy_b[10] += 6e-10
    noisy_a = a + np.where(a == 0, -1e-12, 1e-10)
    w, moved = clean_rows(np.vstack([noisy_a, noisy_b]), grid)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-15)
    np.testing.assert_allclose(w @ grid, 1.0, atol=1e-15)
    Marginals(grid, w, convex_tol=0.0 + 1e-15)
    assert np.all(moved < 1e-8)


def test_black_and_implied_vol_round_trip():
    k = np.array([0.5, 0.8, 1.0, 1.2, 1.6])
    for is_call in (np.ones(5, bool), np.zeros(5, bool)):
        price = black_price(1.0, k, 0.3, 0.5, is_call=is_call)
        np.testing.assert_allclose(implied_vol(price, 1.0, k, 0.5, is_call=is_call), 0.3,
                                   atol=1e-9)
    # below intrinsic -> NaN
    assert np.isnan(implied_vol(0.1, 1.0, 0.8, 0.5, is_call=True))


def test_confidence_halfwidth_formula():
    # delta = (s/2) sqrt(2 (1 + log(2/alpha)) / M), seed 001 eq. (6.3); by hand for s=0.02,
    # M=50, alpha=0.05: 0.01 * sqrt(2 * (1 + ln 40) / 50) = 0.00433076...
    assert confidence_halfwidth(0.02, 50, 0.05) == pytest.approx(0.0043307641, rel=1e-8)
    with pytest.raises(ValueError, match="alpha"):
        confidence_halfwidth(0.02, 50, 1.5)


def test_grid_is_dense_near_the_money():
    strikes = np.arange(0.7, 1.301, 0.025)
    quotes = [lognormal_quotes(f"T{t}", t, 0.2, strikes) for t in (0.05, 0.5)]
    g = make_grid(quotes, 100)
    assert g.size == 100 and np.all(np.diff(g) > 0) and 1.0 in g
    assert g[0] < 0.7 and g[-1] > 1.3
    near = np.diff(g)[np.searchsorted(g, 1.0) - 1]
    assert near < 0.25 * np.diff(g).max()
    with pytest.raises(ValueError, match="grid size must be >= 10"):
        make_grid(quotes, 5)


# ----------------------------------------------------------------------------- bad input
def test_bad_calibration_input():
    strikes = np.arange(0.8, 1.201, 0.05)
    q1 = lognormal_quotes("a", 0.1, 0.2, strikes)
    q2 = lognormal_quotes("b", 0.2, 0.2, strikes)
    with pytest.raises(ValueError, match="at least 2 expiries.*got 1: a"):
        calibrate([q1])
    with pytest.raises(ValueError, match="strictly increasing times: b"):
        calibrate([q2, q1])
    with pytest.raises(ValueError, match=r"grid \[0.9, 1.1\] must contain"):
        calibrate([q1, q2], grid=np.linspace(0.9, 1.1, 20))
    with pytest.raises(ValueError, match="reg must be"):
        calibrate([q1, q2], reg=-1.0)
    with pytest.raises(ValueError, match="bid"):
        SliceQuotes("x", 0.1, 100.0, 0.99, np.array([1.0]), np.array([True]),
                    np.array([0.2]), np.array([0.1]))


@pytest.mark.parametrize("kw, match", [
    (dict(window=float("nan")), "window must be a finite number >= 0, got nan"),
    (dict(window=-0.1), "window must be a finite number >= 0, got -0.1"),
    (dict(alpha=float("nan")), r"alpha must be in \(0, 1\), got nan"),
    (dict(alpha=1.5), r"alpha must be in \(0, 1\), got 1.5"),
    # library fuzz, third pass: a NaN inside_tol reported no quote inside; an unknown solver
    # failed after the program was built (a RuntimeError); 25.5 grid points ran as 25; a NaN
    # grid point reached cvxpy ("Problem data contains NaN or Inf")
    (dict(inside_tol=float("nan")), "inside_tol must be a finite number >= 0, got nan"),
    (dict(solver="bogus"), "solver must be one of the installed cvxpy solvers .*got 'bogus'"),
    (dict(grid_size=25.5), "grid_size must be an integer >= 10, got 25.5"),
    (dict(grid=np.array([0.5, np.nan, 1.5])), "grid must be a finite, strictly increasing"),
    # CLI fuzz: reg=1e308 overflowed cvxpy's data ("Problem data contains NaN or Inf")
    (dict(reg=1e308), r"reg must be a number in \[0, 1e\+06\] \(MAX_REG\), got 1e\+308"),
    (dict(reg=float("nan")), r"reg must be a number in \[0, 1e\+06\].*got nan"),
])
def test_report_options_are_checked_before_the_solve(monkeypatch, kw, match):
    """A NaN window silently reported 0% of quotes inside it; a bad alpha was an error only
    after the convex program had been solved."""
    import cvxpy

    def solve(*args, **kwargs):
        raise AssertionError("the program was solved before the options were checked")

    monkeypatch.setattr(cvxpy.Problem, "solve", solve)
    strikes = np.arange(0.8, 1.201, 0.05)
    quotes = [lognormal_quotes(n, t, 0.2, strikes) for n, t in (("a", 0.1), ("b", 0.2))]
    with pytest.raises(ValueError, match=match):
        calibrate(quotes, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(fit_range=(2.0, 0.3)), r"fit_range must satisfy 0 <= lo < hi, got \(2.0, 0.3\)"),
    (dict(fit_range=(float("nan"), 2.0)), "fit_range must satisfy 0 <= lo < hi"),
    (dict(fit_range=0.5), "fit_range must be two numbers"),
    (dict(grid_size=float("nan")), "grid_size must be an integer >= 10, got nan"),
    (dict(solver="bogus"), "solver must be one of the installed cvxpy solvers"),
    (dict(inside_tol=-1.0), "inside_tol must be a finite number >= 0, got -1.0"),
])
def test_calibrate_chain_checks_options_before_reading_the_chain(tmp_path, kw, match):
    """Library fuzz, third pass: fit_range (2, 0.3) or NaN was "slice ... has no two-sided
    quotes with K/F in [2, 0.3]" (the argument not named), a NaN grid size int()'s error, after
    the chain was read and fitted. The path does not exist: the option's error comes first."""
    with pytest.raises((ValueError, TypeError), match=match):
        calibrate_chain(tmp_path / "missing.csv", ["30d", "60d"], **kw)


def test_chain_with_a_single_expiry(tmp_path):
    path = write_normalized(tmp_path / "one.csv", synthetic_rows(expiries=("2024-03-15",)))
    with pytest.raises(ValueError, match=r"one\.csv: needs at least 2 expiries.*single expiry"):
        calibrate_chain(path, ["30d", "60d"])


def test_expiry_selection(tmp_path):
    path = write_normalized(tmp_path / "c.csv", synthetic_rows(
        expiries=("2024-02-16", "2024-03-15", "2024-06-21")))
    chain = load_chain(path)
    # 2024-01-12 13:40 -> 2024-02-16 09:30 is 34.8 days, 03-15 is 62.8 days, 06-21 160.8 days
    assert [s.label for s in select_slices(chain, ["1m", "5m"])] == [
        "2024-02-16 SPX", "2024-06-21 SPX"]
    assert [s.label for s in select_slices(chain, ["2024-06-21", "60d"])] == [
        "2024-03-15 SPX", "2024-06-21 SPX"]
    with pytest.raises(ValueError, match="'30d' and '1m' both map to 2024-02-16 SPX"):
        select_slices(chain, ["30d", "1m"])
    with pytest.raises(ValueError, match="neither a tenor"):
        select_slices(chain, ["soon"])
    with pytest.raises(ValueError, match="no usable slice on 2024-04-19"):
        select_slices(chain, ["2024-04-19", "30d"])
    assert len(select_slices(chain, ["7d..1y"])) == 3
    assert [s.label for s in select_slices(chain, ["50d..170d"])] == [
        "2024-03-15 SPX", "2024-06-21 SPX"]
    with pytest.raises(ValueError, match="must be two tenors"):
        select_slices(chain, ["2024-03-15..1y"])
    res = calibrate_chain(chain, ["1m", "2m", "5m"], grid_size=60)
    assert res.success and res.fraction_inside == 1.0
    assert res.cleaning is chain.cleaning and res.chain_path == str(path)
    # forwards recovered by parity: F = 100 exp((r - q) t)
    for r in res.slices:
        assert r.forward == pytest.approx(100 * np.exp(0.04 * r.t), rel=1e-9)


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def spx_chain():
    return load_chain(spx_data_dir() / "raw" / "spx_quotedata.csv")


def test_spx_acceptance_five_expiries(spx_chain):
    """Acceptance: 5 expiries in 1-6 months; >= 99% of quotes within +-40% inside bid-ask; convex
    order passes; <= 10 s (load + parity + program + cleaning)."""
    t0 = time.perf_counter()
    res = calibrate_chain(spx_data_dir() / "raw" / "spx_quotedata.csv",
                          ["30d", "60d", "90d", "120d", "150d"], grid_size=150)
    elapsed = time.perf_counter() - t0
    assert elapsed <= 10.0, f"calibration took {elapsed:.1f} s"
    assert res.success
    days = [r.days for r in res.slices]
    assert len(days) == 5 and 28 <= days[0] and days[-1] <= 185
    n_win = sum(r.n_window for r in res.slices)
    assert n_win > 1000
    assert res.fraction_inside_window >= 0.99
    # zero static arbitrage: probabilities, mean 1, convex order (re-validated from scratch)
    m = res.marginals
    Marginals(m.grid, m.weights, m.times)
    assert m.check_convex_order().violation <= 1e-9
    np.testing.assert_allclose(m.means, 1.0, atol=1e-12)
    for r in res.slices:
        assert r.half_width > 0 and np.isfinite(r.half_width)


def test_spx_cli_writes_marginals_and_figures(tmp_path):
    chain = spx_data_dir() / "spx_options_normalized.csv"
    out = tmp_path / "m.npz"
    runner = CliRunner()
    r = runner.invoke(main, ["calibrate", str(chain), "--expiries",
                             "2023-07-21:SPX,2023-09-15:SPX,2023-12-15", "--grid-size", "120",
                             "--out", str(out), "--figures", str(tmp_path / "fig"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert [s["label"] for s in summary["slices"]] == [
        "2023-07-21 SPX", "2023-09-15 SPX", "2023-12-15 SPX"]
    assert summary["convex_order_violation"] <= 1e-9
    assert summary["cleaning"]["n_zero_bid"] == 817
    m = Marginals.load(out)
    assert m.n_dates == 3 and m.size == 120
    for name in ("densities.png", "implied_vols.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 10_000
    bad = runner.invoke(main, ["calibrate", str(chain), "--expiries", "30d", "--out",
                               str(tmp_path / "x.npz")])
    assert bad.exit_code == 2 and "at least 2 expiries" in bad.output


class TestCalibrationResult(ResultProtocol):
    result_type = CalibrationResult
    nit = True
    QUOTES = [lognormal_quotes(f"T{t}", t, 0.2, np.arange(0.7, 1.301, 0.05)) for t in (0.1, 0.25)]

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        return calibrate(cls.QUOTES, grid_size=40)

    @pytest.fixture
    def failure(self):
        def stopped_early():
            # two interior-point iterations: Clarabel stops with status user_limit
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Solution may be inaccurate")  # cvxpy's own
                return calibrate(self.QUOTES, grid_size=40, solver_opts={"max_iter": 2})

        return stopped_early
