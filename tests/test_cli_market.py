"""CLI: ``deepquant marginals`` and ``deepquant chain`` (files, JSON output, error exits)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from deepquant import Marginals
from deepquant.cli import main
from deepquant.market.chain import NORMALIZED_COLUMNS, synthetic_chain
from deepquant.market.synthetic import heston_marginals


@pytest.fixture
def runner():
    return CliRunner()


def test_marginals_writes_npz_plot_and_table(runner, tmp_path):
    out, plot = tmp_path / "m.npz", tmp_path / "m.png"
    res = runner.invoke(main, ["marginals", "--model", "heston", "--dates", "0.25,0.5,1",
                               "--grid-size", "150", "--out", str(out), "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    assert "heston marginals: 3 dates on 150 points" in res.output and "tail bound" in res.output
    m = Marginals.load(out)
    ref = heston_marginals([0.25, 0.5, 1.0], grid_size=150)   # the library is the reference
    np.testing.assert_array_equal(m.grid, ref.grid)
    np.testing.assert_array_equal(m.weights, ref.weights)
    np.testing.assert_array_equal(m.times, [0.25, 0.5, 1.0])
    assert m.check_convex_order().violation <= 1e-12
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.png"]  # no temp files


def test_marginals_json_with_params(runner, tmp_path):
    out = tmp_path / "g.npz"
    res = runner.invoke(main, ["marginals", "--model", "gbm", "--dates", "0.1,0.2",
                               "--grid-size", "80", "--param", "sigma=0.3", "--out", str(out),
                               "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)  # stdout holds nothing but the JSON
    assert data["model"] == "gbm" and data["params"] == {"sigma": 0.3}
    assert data["grid_size"] == 80 and len(data["dates"]) == 2
    assert data["convex_order_violation"] <= 1e-12
    for row in data["dates"]:
        assert row["mean"] == pytest.approx(1.0, abs=1e-12)
        assert 0 <= row["max_call_change"] <= row["tail_bound"] + 1e-13
    assert Marginals.load(out).weights.shape == (2, 80)


def test_chain_writes_normalized_csv(runner, tmp_path):
    out = tmp_path / "chain.csv"
    res = runner.invoke(main, ["chain", "--model", "heston", "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "heston chain on 2024-01-02" in res.output and "ATM iv" in res.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys())[: len(NORMALIZED_COLUMNS)] == NORMALIZED_COLUMNS
    ref = synthetic_chain(seed=3)
    assert len(rows) == len(ref)
    np.testing.assert_array_equal([float(r["ask"]) for r in rows], ref.quotes["ask"])


def test_chain_json(runner, tmp_path):
    res = runner.invoke(main, ["chain", "--model", "gbm", "--param", "sigma=0.2", "--out",
                               str(tmp_path / "c.csv"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["model"] == "gbm" and data["n_quotes"] > 100 and len(data["expiries"]) == 12
    assert all(e["atm_iv"] == pytest.approx(0.2, abs=0.01) for e in data["expiries"])


@pytest.mark.parametrize("args, match", [
    (["marginals", "--dates", "0.5,0.25"], "times must be strictly increasing"),
    (["marginals", "--dates", "a,b"], "--dates must be comma-separated year fractions"),
    (["marginals", "--dates", ","], "--dates must list at least one date"),
    (["marginals", "--param", "rho"], "--param must look like NAME=VALUE"),
    (["marginals", "--param", "rho=x"], "--param rho must be a number"),
    (["marginals", "--param", "rho=3"], "rho must be <= 1, got 3.0"),
    (["marginals", "--model", "gbm", "--param", "rho=0.1"], "bad parameters for model 'gbm'"),
    (["marginals", "--model", "sabr"], "Invalid value for '--model'"),
    (["chain", "--quote-date", "yesterday"], "quote_date must be an ISO date"),
    (["chain", "--spot", "-5"], "--spot: spot must be a number in (0, 1e+12]"),
    # found by fuzzing: numpy's "Maximum allowed size exceeded" (an infinite forward)
    (["chain", "--spot", "1e308"], "--spot: spot must be a number in (0, 1e+12] (MAX_SPOT), "
     "got 1e+308"),
    # found by fuzzing: the library's "grid_size must be an integer >= 3" (no option named)
    (["marginals", "--grid-size", "0"], "Invalid value for '--grid-size': 0 is not in the range "
     "3<=x<=5000"),
])
def test_error_exits(runner, tmp_path, args, match):
    res = runner.invoke(main, args + ["--out", str(tmp_path / "x.out")])
    assert res.exit_code == 2
    assert match in res.output
    assert not (tmp_path / "x.out").exists()
