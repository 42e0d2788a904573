"""Smoke-plus-invariants run of the main job (deepquant.demo) with small sizes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from deepquant.demo import DemoConfig, coarsen_marginals, demo_grid, run_demo

SMALL = DemoConfig(grid_step=0.1, grid_range=(0.6, 1.5), calibration_grid_size=60,
                   sweep_strikes=(0.95, 1.0), n_paths=2_000, grid_sizes=(10, 7))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return run_demo(out_dir=out, config=SMALL, pricers={"product-model": _model_price})


def _model_price(marginals, payoff):
    """A stand-in for the neural pricer hook: the calibrated model itself (same number)."""
    from deepquant.mmot.model import CalibratedModel

    return CalibratedModel.calibrate(marginals).price(payoff)


def test_files_exist(demo):
    names = {p.name for p in demo.files}
    assert {"marginals.png", "plan.png", "convergence.png", "strikes.png", "hedge.png",
            "ranges.png", "report.md", "results.json"} <= names
    for p in demo.files:
        assert p.exists() and p.stat().st_size > 0
    assert (demo.out_dir / "chain.csv").exists()
    text = (demo.out_dir / "report.md").read_text()
    for fig in ("marginals.png", "plan.png", "convergence.png", "strikes.png", "hedge.png"):
        assert f"({fig})" in text
    data = json.loads((demo.out_dir / "results.json").read_text())
    assert len(data["rows"]) == 3 and all(r["inside"] for r in data["rows"])
    assert not list(demo.out_dir.glob(".*"))  # no temporary files left behind


def test_bounds_against_the_grid(demo):
    """The 10-point uniform grid of the resolution study is the demo grid itself (step 0.1 on
    [0.6, 1.5] through 1), so its bounds are the demo's LP bounds (same marginals, same LP)."""
    entries = {(e["label"], e["size"]): e for e in demo.resolution}
    assert {size for _, size in entries} == {10, 7}
    for r in demo.rows:
        e = entries[(r.label, 10)]
        assert e["method"] == "lp" and e["success"]
        assert e["lower"] == pytest.approx(r.lower, abs=1e-9)
        assert e["upper"] == pytest.approx(r.upper, abs=1e-9)
    text = (demo.out_dir / "report.md").read_text()
    assert "## Bounds at the calibration's resolution and against the grid" in text
    assert "(resolution.png)" in text
    assert (demo.out_dir / "resolution.png").stat().st_size > 0


def test_bounds_contain_calibrated_price(demo):
    for r in demo.rows:
        assert r.lp_status == "optimal", r.lp_status
        assert r.lower - 1e-9 <= r.calibrated <= r.upper + 1e-9
        assert r.widened_lower <= r.lower and r.widened_upper >= r.upper
        # the widenings are reported separately and add up
        assert r.widened_lower == pytest.approx(r.lower - r.gamma_lower - r.epsilon, abs=1e-15)
        assert r.widened_upper == pytest.approx(r.upper + r.gamma_upper + r.epsilon, abs=1e-15)
        assert r.gamma_lower > 0 and r.gamma_upper > 0 and r.epsilon > 0
        # the pricer hook is timed and shown: here it is the same model, so the same price
        assert r.extra["product-model"]["price"] == pytest.approx(r.calibrated, abs=1e-12)
    sw = demo.sweep
    assert np.all(np.array(sw["lower"]) <= np.array(sw["calibrated"]) + 1e-9)
    assert np.all(np.array(sw["calibrated"]) <= np.array(sw["upper"]) + 1e-9)


def test_fitted_range_inside_bid_ask_range(demo):
    """The three ranges on the demo output (results.json): the bid-ask range (every martingale
    law on the grid pricing the quotes inside their bands, the fitted laws among them) contains
    the fitted-marginal range up to RANGE_TOL = 1e-8 (two exact LPs at HiGHS tolerances 1e-9,
    bands padded by 1e-9 around the fitted prices); the seed widening is fitted +- epsilon."""
    from deepquant.demo_report import RANGE_TOL, range_rows

    assert RANGE_TOL == 1e-8
    data = json.loads((demo.out_dir / "results.json").read_text())
    for r in data["rows"]:
        assert r["quote_status"] == "optimal" and r["quote_seconds"] > 0
        assert r["quote_lower"] <= r["lower"] + RANGE_TOL
        assert r["upper"] <= r["quote_upper"] + RANGE_TOL
        # the quotes leave the marginals open: strictly wider than the fitted range
        assert r["quote_upper"] - r["quote_lower"] > r["upper"] - r["lower"]
        assert r["epsilon_lower"] == pytest.approx(r["lower"] - r["epsilon"], abs=1e-15)
        assert r["epsilon_upper"] == pytest.approx(r["upper"] + r["epsilon"], abs=1e-15)
    assert all(row[-1] is True for row in range_rows(demo.rows))
    q = data["quotes"]
    # the bands use the calibration's forwards (the same parity fit), and the synthetic chain's
    # zero bids (far out of the money, inside the grid) as upper constraints
    assert q["forward_mismatch"] <= 1e-12
    assert q["quotes"] > 0 and q["no_bid"] > 0 and q["widened_quotes"] <= q["quotes"]
    assert q["lp_method"] == "highs-ipm" and "quote_bounds" in data["timings"]
    text = (demo.out_dir / "report.md").read_text()
    section = text[text.index("## Fitted, seed-widened and bid-ask ranges"):]
    assert "(ranges.png)" in section and "*Figure: three ranges" in section
    assert "| bid-ask lower | bid-ask upper | fitted inside bid-ask |" in section
    assert (demo.out_dir / "ranges.png").stat().st_size > 0


def test_model_and_backtest(demo):
    assert demo.model.marginal_error() < 1e-9 and demo.model.drift() < 1e-9
    bt = demo.backtest["calibrated model"]
    assert abs(bt["mean"]) <= 4 * bt["stderr"]  # unbiased under the model (4 standard errors)
    assert bt["std"] < bt["unhedged_std"]


def test_coarsening_keeps_convex_order_and_calls():
    from deepquant.market.synthetic import heston_marginals

    fine = heston_marginals(np.array([30, 90, 150]) / 365, grid_size=120)
    grid = demo_grid(0.1, 0.6, 1.5)
    assert 1.0 in grid and np.allclose(np.diff(grid), 0.1)
    m = coarsen_marginals(fine, grid)
    assert m.n_dates == 4 and m.weights[0, np.searchsorted(grid, 1.0)] == 1.0
    assert m.check_convex_order().violation <= 1e-12
    np.testing.assert_allclose(m.means, 1.0, atol=1e-12)
    # interior call prices at the coarse nodes are the fine ones (hull touches them): 1e-4
    # allows the tail mass folded inside the coarse range
    inner = (grid > 0.75) & (grid < 1.35)
    np.testing.assert_allclose(m.call_prices(grid[inner])[1:], fine.call_prices(grid[inner]),
                               atol=1e-4)


def test_config_errors():
    with pytest.raises(ValueError, match=r"grid_step must be > 0, got 0"):
        DemoConfig(grid_step=0)
    with pytest.raises(ValueError, match=r"grid_range must satisfy 0 < lo < 1 < hi"):
        DemoConfig(grid_range=(1.1, 1.5))
    # found by fuzzing (--grid-step 1e308): "grid must be 1-D with at least 3 points, got shape
    # (1,)" from deep inside, naming neither the option nor the step
    for step in (1e308, 0.5):  # 0.5 leaves 1 alone in [0.55, 1.5]
        with pytest.raises(ValueError, match=r"grid_step must leave at least 3 points of the "
                           r"demo grid in grid_range \[0.55, 1.5\], got " + re.escape(str(step))):
            DemoConfig(grid_step=step)
    assert demo_grid(0.45, *DemoConfig().grid_range).size == 3  # 0.55, 1, 1.45: accepted
    DemoConfig(grid_step=0.45)
    with pytest.raises(ValueError, match=r"chain file '/nonexistent.csv' does not exist"):
        run_demo("/nonexistent.csv", config=SMALL)


def test_cli_demo_json(tmp_path):
    from deepquant.cli import main

    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "r"), "--grid-step", "0.1",
                                    "--paths", "500", "--pricer",
                                    "same=tests.test_demo:_model_price", "--max-seconds", "2",
                                    "--grid-sizes", "25,150", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"rows", "timings", "calibration", "backtest", "quotes"} <= set(data)
    assert all(r["lower"] <= r["calibrated"] <= r["upper"] for r in data["rows"])
    for r in data["rows"]:
        assert abs(r["extra"]["same"]["price"] - r["calibrated"]) < 1e-12
        # timed around the call: positive, and inside the run's total
        assert 0 < r["extra"]["same"]["seconds"] < data["timings"]["total"]
    labels = [r["label"] for r in data["rows"]]
    assert labels == ["Asian call", "Lookback call", "Fwd-start straddle"]
    # the same bounds on a 25-point grid (exact LP) and at the calibration's resolution (150
    # points, certified within the time budget) beside the demo grid's
    res_grid = data["resolution"]
    assert [(e["label"], e["size"]) for e in res_grid] == \
        [(label, size) for size in (25, 150) for label in labels]
    for e in res_grid:
        assert e["success"] and e["method"] == ("lp" if e["size"] == 25 else "certified")
        assert e["lower"] <= e["upper"] + 1e-12 and e["lower_gap"] >= 0 and e["upper_gap"] >= 0
        assert e["seconds"] < 120  # two sides of 2 s each, plus the builds and the coarse LPs
    bad_spec = CliRunner().invoke(main, ["demo", "--pricer", "oops"])
    assert bad_spec.exit_code == 2 and "NAME=MODULE:FUNC" in bad_spec.output
    bad = CliRunner().invoke(main, ["demo", "--chain", str(tmp_path / "missing.csv")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_neural_prices_beside_classical(demo):
    """With torch installed the demo shows the shipped checkpoint's pure-neural prices beside the
    cold classical solve: within 3% of the classical prices (the shipped-checkpoint bound of
    tests/neural; measured 0.5% on the Asian call here), exact martingale rows for the neural
    chain, the classical solve to its tolerance; the report says why there is no hybrid."""
    pytest.importorskip("torch")
    assert demo.neural is not None
    for name, p in demo.neural["prices"].items():
        assert p["neural"] == pytest.approx(p["classical"], rel=0.03), name
        assert p["neural"] != p["classical"], name     # two different solvers
    assert demo.neural["drift"]["neural"] <= 1e-12
    assert demo.neural["drift"]["classical"] <= 1e-9
    assert demo.neural["mode"] == {"neural": "neural"}
    assert set(demo.neural["seconds"]) == {"neural", "classical"}
    assert all(s > 0 for s in demo.neural["seconds"].values())
    text = (demo.out_dir / "report.md").read_text()
    section = text[text.index("## Neural surrogate"):]
    assert "| payoff | neural | classical | neural - classical |" in section
    assert "hybrid" in section and "removed" in section and "1.31x" in section
