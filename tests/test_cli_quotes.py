"""The ``deepquant quote-bounds`` command (thin CLI over deepquant.mmot.quotes_bounds)."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from deepquant.cli import main
from deepquant.market.chain import synthetic_chain
from deepquant.mmot.quote_bands import load_bands, quote_grid
from deepquant.mmot.quotes_bounds import bounds_from_quotes
from deepquant.payoffs import LookbackCall


@pytest.fixture(scope="module")
def chain_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("quotes") / "chain.csv"
    synthetic_chain(seed=3).to_csv(path)
    return path


def _run(*args):
    return CliRunner().invoke(main, ["quote-bounds", *map(str, args)])


def test_json_matches_library(chain_csv):
    res = _run("--quotes", chain_csv, "--expiries", "30d,60d", "--payoff", "lookback-call",
               "--strike", 1, "--grid-size", 11, "--thin", "--repair", "minimal", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["method"] == "quotes-lp" and out["status"] == "optimal"
    assert out["hedges"]["lower"]["dominates"] and out["hedges"]["upper"]["dominates"]
    # the same problem through the library (the CLI only parses and prints): equal to 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bands, _ = load_bands(chain_csv, ["30d", "60d"], fit_range=(0.5, 1.6))
    lib = bounds_from_quotes(bands, LookbackCall(strike=1.0), grid=quote_grid(bands, 11),
                             thin=True, repair="minimal")
    assert out["lower"] == pytest.approx(lib.lower, abs=1e-12)
    assert out["upper"] == pytest.approx(lib.upper, abs=1e-12)
    assert out["lower"] < out["upper"]


def test_infeasible_band_names_expiry_and_offers_repair(chain_csv):
    res = _run("--quotes", chain_csv, "--expiries", "30d,60d", "--payoff", "asian-call",
               "--strike", 1, "--grid-size", 11, "--thin")
    assert res.exit_code == 2
    assert "no arbitrage-free law" in res.output and "expiry 2024-01-19 SYN" in res.output
    assert "--repair minimal" in res.output


@pytest.mark.parametrize("args", [["--strike", "-1"], ["--strike", "0.5", "--barrier", "0"]])
def test_levels_at_or_below_zero_are_refused(args):
    """Priced before (a call struck at or below 0 is the forward); refused before the chain is
    read, as for ``bounds`` and ``sweep``."""
    res = _run("--quotes", "missing.csv", "--expiries", "30d", "--payoff", "up-and-out-call",
               *args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"Invalid value for '{args[-2]}': {float(args[-1])} is not in the range x>0.0" \
        in res.output


def test_missing_strike():
    res = _run("--quotes", "x.csv", "--expiries", "30d", "--payoff", "asian-call")
    assert res.exit_code == 2 and "needs --strike" in res.output


def test_bad_options_are_usage_errors(chain_csv):
    # a clear message naming the option, exit code 2, no traceback
    base = ["--quotes", chain_csv, "--expiries", "30d,60d", "--payoff", "asian-call",
            "--strike", 1, "--grid-size", 11, "--thin", "--repair", "minimal"]
    res = _run(*base, "--method", "certified", "--max-seconds", -1)
    assert res.exit_code == 2 and "'--max-seconds': -1.0 is not in the range" in res.output
    res = _run(*base, "--method", "certified", "--coarse", "x")
    assert res.exit_code == 2 and "--coarse must be an integer or 'none', got 'x'" in res.output
    res = _run(*base, "--method", "certified", "--coarse", 3)
    assert res.exit_code == 2 and "coarse must be None or an integer >= 5, got 3" in res.output
    res = _run(*base, "--top", -1)
    assert res.exit_code == 2 and "--top" in res.output
    res = _run(*base, "--workers", 2)  # the LP reads no workers
    assert res.exit_code == 2 and "--workers 2 is not used by --method lp" in res.output
    res = _run(*base, "--method", "certified", "--workers", 0)
    assert res.exit_code == 2 and "'--workers': 0 is not in the range 1<=x<=2" in res.output
    res = _run(*base[:-5], "--grid-size", 3)
    # found by fuzzing: the library's "grid_size must be >= 5, got 3" named no option
    assert res.exit_code == 2 and "'--grid-size': 3 is not in the range 5<=x<=5000" in res.output
    res = _run("--quotes", chain_csv, "--expiries", "30d,60d", "--payoff",
               "forward-start-straddle", "--t1", 1, "--t2", 5, "--grid-size", 11)
    assert res.exit_code == 2 and "t2=5 out of range" in res.output


def test_certified_coarse_start_contains_the_lp(chain_csv):
    # 21 points started from the 11-point subgrid (every second point): valid outer bounds (contain the exact LP on
    # the same 21-point problem to 1e-8), the coarse start reported, hedges dominate
    base = ["--quotes", chain_csv, "--expiries", "30d,60d", "--payoff", "lookback-call",
            "--strike", 1, "--grid-size", 21, "--thin", "--repair", "minimal", "--json"]
    lp = json.loads(_run(*base).output)
    for workers in (1, 2):
        res = _run(*base, "--method", "certified", "--coarse", 10, "--max-seconds", 20,
                   "--workers", workers)
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["lower"] <= lp["lower"] + 1e-8 and out["upper"] >= lp["upper"] - 1e-8
        assert out["hedges"]["lower"]["dominates"] and out["hedges"]["upper"]["dominates"]
        assert out["coarse"]["lower"]["size"] == out["coarse"]["upper"]["size"] == 11


def _fail_linprog(monkeypatch, module: str) -> None:
    """Replace ``module``'s own ``scipy.optimize`` by one whose ``linprog`` answers HiGHS's
    "numerical difficulties" (status 4, no solution)."""
    import types

    from scipy import optimize

    def failing(*args, **kwargs):
        return optimize.OptimizeResult(status=4, message="HiGHS numerical difficulties",
                                       x=None, fun=None, success=False)

    monkeypatch.setattr(f"{module}.optimize", types.SimpleNamespace(linprog=failing))


def test_a_failed_side_is_reported_not_a_traceback(chain_csv, monkeypatch):
    # found by fuzzing: a side whose LP HiGHS does not solve made the hedge table raise
    # KeyError 'hedge' (then with a strike of 1e308, which the scaled LP now solves); the
    # failure is forced here by a linprog that answers HiGHS's "numerical difficulties"
    # the side LPs' own scipy.optimize (the band check keeps the real one)
    _fail_linprog(monkeypatch, "deepquant.mmot.quotes_bounds")
    args = ["--quotes", chain_csv, "--expiries", "30d,60d", "--payoff",
            "forward-start-straddle", "--strike", "1.0", "--grid-size", 11, "--thin",
            "--repair", "minimal"]
    res = _run(*args, "--json")
    assert res.exit_code == 1 and res.exception is not None and \
        isinstance(res.exception, SystemExit), res.output
    out = json.loads(res.stdout)
    assert out["success"] is False and out["hedges"] == {"lower": None, "upper": None}
    assert "HiGHS" in out["message"]
    table = _run(*args)
    assert table.exit_code == 1 and "Traceback" not in table.output
    assert "message" in table.output and "HiGHS" in table.output


def test_a_failed_band_check_is_one_line_not_a_traceback(chain_csv, monkeypatch):
    # the band check's LP is always feasible, so the library raises RuntimeError when HiGHS
    # still returns nothing; the command reports it in one line (forced here)
    _fail_linprog(monkeypatch, "deepquant.mmot.quote_bands")
    res = _run("--quotes", chain_csv, "--expiries", "30d,60d", "--payoff", "asian-call",
               "--strike", "1.0", "--grid-size", 11, "--thin", "--repair", "minimal")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "check_bands: HiGHS failed (HiGHS numerical difficulties)" in res.output
    assert "Traceback" not in res.output
