"""`deepquant american`: JSON keys, table output, ensembles, bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deepquant.cli import main

SMALL = ["--paths", "4096", "--batch-size", "1024", "--max-batches", "2", "--seed", "3",
         "--dual", "regression"]


@pytest.fixture
def runner():
    return CliRunner()


def test_american_bs_json(runner, ql_put):
    res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates", "12",
                               "--json", *SMALL])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in ("lower", "upper", "midpoint", "lower_ci", "upper_ci", "price_ci", "seconds"):
        assert key in out
    q = ql_put(100.0, 100.0, 0.05, 0.2, 1.0, 12)
    assert out["price_ci"][0] - 2e-3 <= q <= out["price_ci"][1] + 2e-3
    assert out["lower"] <= out["upper"]


def test_american_ensemble_json_and_table(runner, tmp_path):
    state = tmp_path / "state.json"
    res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates", "4",
                               "--runs", "2", "--backend", "serial", "--json", *SMALL,
                               "--resume", str(state)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in ("midpoint", "midpoint_ci", "lower_ci", "upper_ci", "seconds", "runs"):
        assert key in out
    assert out["n_runs"] == 2 and len(out["runs"]) == 2
    assert len(json.loads(state.read_text())["runs"]) == 2
    again = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates", "4",
                                 "--runs", "2", "--backend", "serial", "--json", *SMALL,
                                 "--resume", str(state)])      # all runs kept: same answer
    assert again.exit_code == 0 and json.loads(again.stdout)["lower"] == out["lower"]
    res = runner.invoke(main, ["american", "--model", "bs", "--strike", "90", "--dates", "4",
                               *SMALL])
    assert res.exit_code == 0, res.output
    assert "lower" in res.stdout and "upper" in res.stdout


@pytest.mark.parametrize("args,match", [
    (["--strike", "-1"], "strike must be"),
    (["--strike", "100", "--dates", "0"], "n_dates must be"),
    (["--strike", "100", "--paths", "1000"], "power of 2"),
    (["--strike", "100", "--hurst", "0.9"], "H must be in"),
    (["--strike", "100", "--model", "bs", "--sigma", "0"], "sigma must be"),
    (["--strike", "100", "--resume", "x.json"], "--resume needs an ensemble"),
])
def test_american_bad_input(runner, args, match):
    res = runner.invoke(main, ["american", *args, "--max-batches", "2"])
    assert res.exit_code == 2
    assert match in res.output


def test_american_rbergomi_subsim_upper_json(runner):
    # the default rough Bergomi upper bound is the sub-simulation dual (preset "rbergomi");
    # invariant: the dual upper bound lies above the lower bound within their CIs
    res = runner.invoke(main, ["american", "--strike", "100", "--dates", "4",
                               "--steps-per-date", "2", "--json", *SMALL])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dual_method"] == "subsim"
    assert out["lower_ci"][0] <= out["upper_ci"][1]
    sig = runner.invoke(main, ["american", "--strike", "100", "--dates", "4",
                               "--steps-per-date", "2", "--upper", "signature", "--json", *SMALL])
    assert sig.exit_code == 0, sig.output
    assert json.loads(sig.stdout)["dual_method"] in ("regression", "pathwise")


def test_preset_pricer_names():
    from deepquant.rough import PRESETS, preset_pricer

    assert preset_pricer("rbergomi").dual == "subsim"
    assert preset_pricer("bs", n_dates=4).n_dates == 4
    assert set(PRESETS) == {"bs", "rbergomi", "rbergomi-signature"}
    with pytest.raises(ValueError, match="name must be one of"):
        preset_pricer("heston")
