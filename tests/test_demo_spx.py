"""The main job on the real SPX chain (shared data): the report's numbers are the library's,
recomputed here by calling the library directly."""

from __future__ import annotations

import json

import pytest

from deepquant.demo import DemoConfig, coarsen_marginals, demo_grid, demo_payoffs, run_demo
from tests.conftest import SPX_DATA

CFG = DemoConfig(grid_step=0.1, grid_range=(0.6, 1.5), calibration_grid_size=60,
                 sweep_strikes=(1.0,), n_paths=2_000, neural=False, grid_sizes=(25, 150))


@pytest.fixture(scope="module")
def spx_demo(tmp_path_factory):
    chain = SPX_DATA / "spx_options_normalized.csv"
    if not chain.exists():
        pytest.skip(f"SPX data not found at {SPX_DATA} (set DEEPQUANT_SPX_DATA)")
    out = tmp_path_factory.mktemp("report-spx")
    return chain, run_demo(chain, out, config=CFG)


def test_report_numbers_are_the_library_s(spx_demo):
    from deepquant.market.calibrate import calibrate_chain
    from deepquant.mmot.bounds import bounds
    from deepquant.mmot.model import CalibratedModel

    chain, res = spx_demo
    cal = calibrate_chain(str(chain), expiries=list(CFG.expiries),
                          grid_size=CFG.calibration_grid_size)
    marg = coarsen_marginals(cal.marginals, demo_grid(CFG.grid_step, *CFG.grid_range))
    model = CalibratedModel.calibrate(marg, reference=CFG.reference)
    report = (res.out_dir / "report.md").read_text()
    data = json.loads((res.out_dir / "results.json").read_text())
    for (label, payoff, _), row, js in zip(demo_payoffs(marg.n_dates), res.rows, data["rows"]):
        direct = bounds(marg, payoff, method="lp")
        # same inputs, same deterministic solvers: equal to solver accuracy (1e-9)
        assert row.lower == pytest.approx(direct.lower, abs=1e-9)
        assert row.upper == pytest.approx(direct.upper, abs=1e-9)
        assert row.calibrated == pytest.approx(model.price(payoff), abs=1e-9)
        assert js["lower"] == row.lower and js["upper"] == row.upper
        # the report prints them to 6 significant digits
        for v in (row.lower, row.upper, row.calibrated):
            assert f"{v:.6g}" in report, (label, v)
    assert "## How to read this report" in report
    assert res.calibration["fraction_inside"] > 0.9


def test_bid_ask_range_contains_fitted_range_and_is_the_library_s(spx_demo):
    """On the real chain: the fitted-marginal range lies inside the bid-ask range (RANGE_TOL,
    two exact LPs at HiGHS tolerances 1e-9), and the lookback's bid-ask range is the library's
    (``bounds_from_quotes`` called directly with HiGHS's default method against the demo's
    interior-point solve: the same LP optimum to 1e-9)."""
    from deepquant.demo import QUOTE_FIT_RANGE
    from deepquant.demo_report import RANGE_TOL
    from deepquant.mmot.quote_bands import load_bands
    from deepquant.mmot.quotes_bounds import bounds_from_quotes

    chain, res = spx_demo
    for row in res.rows:
        assert row.quote_status == "optimal", row.label
        assert row.quote_lower <= row.lower + RANGE_TOL and row.upper <= row.quote_upper + RANGE_TOL
    assert res.quotes["forward_mismatch"] <= 1e-12 and res.quotes["no_bid"] > 0
    label, payoff, _ = demo_payoffs(res.marginals.n_dates)[1]
    bands, _ = load_bands(chain, list(CFG.expiries), fit_range=QUOTE_FIT_RANGE)
    direct = bounds_from_quotes(bands, payoff, grid=res.marginals.grid, thin=True,
                                repair="calibration", fitted=res.marginals)
    row = res.rows[1]
    assert row.label == label
    assert row.quote_lower == pytest.approx(direct.lower, abs=1e-9)
    assert row.quote_upper == pytest.approx(direct.upper, abs=1e-9)
