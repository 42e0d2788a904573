"""`deepquant american`: JSON keys, table output, ensembles, bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deepquant.cli import main

BASE = ["--paths", "4096", "--batch-size", "1024", "--max-batches", "2", "--seed", "3"]
SMALL = [*BASE, "--dual", "regression"]  # for the signature upper bound (--dual fits it)


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
    (["--strike", "-1"], "Invalid value for '--strike': -1.0 is not in the range x>0.0"),
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
                               "--steps-per-date", "2", "--grids", "1", "--json", *BASE])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dual_method"] == "subsim"
    assert out["lower_ci"][0] <= out["upper_ci"][1]
    sig = runner.invoke(main, ["american", "--strike", "100", "--dates", "4",
                               "--steps-per-date", "2", "--grids", "1", "--upper", "signature",
                               "--json", *SMALL])
    assert sig.exit_code == 0, sig.output
    assert json.loads(sig.stdout)["dual_method"] in ("regression", "pathwise")


def test_preset_pricer_names():
    from deepquant.rough import PRESETS, preset_pricer

    assert preset_pricer("rbergomi").dual == "subsim"
    assert preset_pricer("bs", n_dates=4).n_dates == 4
    assert set(PRESETS) == {"bs", "rbergomi", "rbergomi-signature", "heston"}
    assert preset_pricer("heston").dual == "signature"
    with pytest.raises(ValueError, match="name must be one of"):
        preset_pricer("sabr")


@pytest.mark.parametrize("args, match", [
    (["--max-batches", "1"], "--max-batches must be >= 2"),
    (["--batch-size", "100"], "--batch-size must be a power of 2 >= 16, got 100"),
    (["--paths", "1000"], "--paths must be a power of 2 >= 16, got 1000"),
    (["--patience", "0"], "--patience must be >= 1"),
    (["--tol", "-0.1"], "--tol must be in [0, 1)"),
    (["--float32"], "--float32 needs --device"),
    (["--american", "--steps-per-date", "6"], "--steps-per-date must be a multiple of 4"),
    (["--grids", "3", "--steps-per-date", "2"], "divisible by 2^(grids-1) = 4"),
    (["--steps-per-date", "8", "--feature-steps", "3"], "--feature-steps 3 must divide"),
    (["--feature-steps", "0"], "--feature-steps must be >= 1"),
    # fifth pass: --american also runs 2x and 4x the dates on the finest grid (24 steps per
    # period: 12 and 6); the library's "feature_steps=8 must divide steps_per_date=12" named
    # no option
    (["--american", "--dates", "4", "--steps-per-date", "24", "--feature-steps", "8"],
     "--feature-steps 8 must divide the steps per period of every run (24, 12, 6)"),
    (["--model", "heston", "--upper", "subsim"], "--upper subsim is specific to rough Bergomi"),
    (["--model", "heston", "--v0", "-1"], "v0 must be > 0"),
    (["--grids", "1", "--share-fit"], "--share-fit needs coupled grids"),
    (["--share-fit", "--independent"], "--share-fit needs coupled grids"),
])
def test_american_options_are_named_in_errors(runner, args, match):
    res = runner.invoke(main, ["american", "--strike", "100", *args])
    assert res.exit_code == 2
    assert match in res.output


RATE_HINT = "Rates are decimals, continuously compounded: 0.05 = 5% (|rate| <= 1)."


@pytest.mark.parametrize("args, match", [
    (["--rate", "5"], "'--rate': 5.0 is not in the range -1.0<=x<=1.0. " + RATE_HINT),
    (["--rate", "-100"], "'--rate': -100.0 is not in the range -1.0<=x<=1.0. " + RATE_HINT),
    (["--model", "heston", "--rate", "1.5"], "'--rate': 1.5 is not in the range"),
    (["--rate", "nan"], "'--rate': nan is not a finite number. " + RATE_HINT),
    (["--payoff", "up-and-out-put", "--barrier", "0"],
     "'--barrier': 0.0 is not in the range x>0.0"),
    (["--grids", "2", "--grid-rate", "inf"], "'--grid-rate': inf is not a finite number."),
])
def test_american_rate_is_a_decimal_and_levels_are_positive(runner, args, match):
    """``--rate 5`` (meant as 5%) priced a rate of 500%, ``--rate -100`` one of -10000%: rates
    are decimals, |rate| <= 1 (``deepquant.cli.output.MAX_RATE``: 100% a year, continuously
    compounded). ``--grid-rate inf`` was refused as "rate must be ..." (the library's name,
    read as ``--rate``)."""
    res = runner.invoke(main, ["american", "--strike", "100", *args])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert match in " ".join(res.output.split()), res.output


def test_rate_bound_includes_its_ends():
    from deepquant.cli.output import MAX_RATE, RATE

    assert MAX_RATE == 1.0
    assert RATE.convert("1", None, None) == 1.0 and RATE.convert("-1", None, None) == -1.0
    assert RATE.convert("0.05", None, None) == 0.05


def test_american_resume_path_checked_before_the_work(runner, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for path, match in [(blocker / "state.json", "is a regular file, not a folder"),
                        (tmp_path, "is a directory")]:
        res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--runs",
                                   "2", "--resume", str(path), *SMALL])
        assert res.exit_code == 2, res.output
        assert match in res.output and str(path) in res.output
        assert "Traceback" not in res.output


def test_american_resume_file_in_a_new_folder(runner, tmp_path):
    """The writer creates missing folders (deepquant.atomic.atomic_path); the check used to
    refuse them ("folder ... does not exist")."""
    state = tmp_path / "new" / "deeper" / "state.json"
    res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates", "2",
                               "--runs", "2", "--backend", "serial", "--paths", "16",
                               "--batch-size", "16", "--max-batches", "2", "--dual",
                               "regression", "--seed", "0", "--resume", str(state)])
    assert res.exit_code == 0, res.output
    assert json.loads(state.read_text())["runs"].keys() == {"0", "1"}


_TINY = ["--dates", "2", "--grids", "1", "--paths", "16", "--batch-size", "16",
         "--max-batches", "2", "--seed", "0"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("args, match", [
    # before: ZeroDivisionError / OverflowError tracebacks
    (["--hurst", "1e-300"], "--hurst: H must be >= 1.49e-08, got 1e-300"),
    (["--eta", "1e300"], "--eta: eta must have a finite square"),
    (["--model", "bs", "--sigma", "1e300", "--dual", "regression"],
     "--sigma: sigma must be a finite number > 0 with a finite square"),
    # before: "--maturity: T must keep the simulated prices ..." for a model parameter
    (["--xi0", "1e300"], "xi0=1e+300"),
    (["--model", "heston", "--v0", "1e300", "--dual", "regression"], "v0=1e+300"),
    # before: ZeroDivisionError (the variance underflows to 0)
    (["--eta", "50"], "eta=50.0"),
    # before: "SVD did not converge in Linear Least Squares" and LAPACK lines on stdout
    (["--spot", "1e300"], "regression features overflow"),
])
def test_american_extreme_model_values_are_one_line(runner, args, match):
    res = runner.invoke(main, ["american", "--strike", "100", *_TINY, *args])
    assert res.exit_code == 2, res.output
    assert match in res.output and "--maturity" not in res.output, res.output
    assert "Traceback" not in res.output and "DLASCL" not in res.output


def test_american_unreachable_ray_backend_fails_fast(runner):
    import socket
    import time

    with socket.socket() as s:       # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for addr in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        t0 = time.perf_counter()
        res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--runs", "2",
                                   "--backend", addr, *SMALL])
        assert res.exit_code == 2
        assert f"no Ray cluster at backend address '{addr}'" in res.output
        assert time.perf_counter() - t0 < 30


def test_american_default_rbergomi_reports_a_discretisation_error(runner):
    # default: two grids (half and full --steps-per-date), Richardson-extrapolated midpoint
    res = runner.invoke(main, ["american", "--strike", "100", "--dates", "4",
                               "--steps-per-date", "2", "--json", *BASE])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    from deepquant.rough import TIME_STEP_RATE

    m1, m2 = (r["midpoint"] for r in out["runs"])
    c = 1.0 / (2**TIME_STEP_RATE - 1.0)
    assert out["value"] == pytest.approx(m2 + c * (m2 - m1), rel=1e-12)
    assert out["discretisation_error"] == pytest.approx(c * abs(m2 - m1), rel=1e-12)
    assert "continuous-time model" in out["model_description"]
    assert out["model"] == "rbergomi"


def test_american_feature_steps_reach_the_runs(runner):
    # two grids of 2 and 4 steps per period, features once per period: every 2 and 4 steps
    res = runner.invoke(main, ["american", "--strike", "100", "--dates", "4",
                               "--steps-per-date", "4", "--feature-steps", "1", "--json",
                               *BASE])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["model"].split("T=1, ")[-1] for r in out["runs"]] == [
        "features every 2 steps", "features every 4 steps"]


def test_american_flag_extrapolates_in_the_dates(runner):
    # Black-Scholes (exact scheme): 4, 8 and 16 dates on one 16-step grid, rate 1, no grid run;
    # invariant: the value is 2 P_16 - P_8 of the run midpoints, the error |R(8,16) - R(4,8)|
    res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates", "4",
                               "--american", "--tol", "0.5", "--json", *SMALL])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    m4, m8, m16 = (r["midpoint"] for r in out["runs"])
    assert [r["n_dates"] for r in out["runs"]] == [4, 8, 16]
    assert out["value"] == pytest.approx(2 * m16 - m8, rel=1e-12)
    assert out["discretisation_error"] == pytest.approx(abs((2 * m16 - m8) - (2 * m8 - m4)),
                                                        rel=1e-12)
    assert "exact scheme" in out["model_description"]
    assert out["status"] in ("converged", "tol_not_met") and out["message"]


def test_american_payoff_json_and_bad_input(runner):
    """--payoff with --barrier and --payoff-dates: JSON names the payoff; options that do not
    fit the payoff fail with exit code 2 and the option's name."""
    small = ["american", "--model", "bs", "--strike", "100", "--dates", "4", *BASE]
    res = runner.invoke(main, [*small, "--payoff", "down-and-out-put", "--barrier", "80",
                               "--payoff-dates", "8", "--steps-per-date", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["payoff"] == "down-and-out-put" and out["option"] == "put"
    assert out["barrier"] == 80.0 and out["lower_ci"][0] <= out["upper_ci"][1]
    for args, match in [(["--payoff", "up-and-out-put"], "needs --barrier"),
                        (["--payoff", "asian-put", "--option", "call"], "--option is for"),
                        (["--barrier", "90"], "--barrier needs a barrier --payoff"),
                        (["--payoff", "asian-put", "--payoff-dates", "6"],
                         "payoff_dates must be")]:
        bad = runner.invoke(main, [*small, *args])
        assert bad.exit_code == 2 and match in bad.output, bad.output


def test_american_huge_ensemble_starts_at_once(runner, monkeypatch):
    """--runs 10^7: the seeds are spawned as the runs are taken (before: all of them first,
    10 s per million here, so 10^9 did not start within an hour). A root seed sequence that
    refuses to spawn more than 10^4 at once and a first run that stops the command show it,
    and the lazily spawned seeds are those of one ``spawn(runs)``, in order."""
    import importlib

    import numpy as np

    ens = importlib.import_module("deepquant.rough.ensemble")  # the module, not the function

    class Guarded(np.random.SeedSequence):
        def spawn(self, n):
            if n > 10**4:
                raise AssertionError(f"spawned {n} seeds at once")
            return super().spawn(n)

    class Stop(Exception):
        pass

    seeds = []

    def first_run(args):
        seeds.append(args[-1])
        raise Stop

    monkeypatch.setattr(ens, "as_seed_sequence", lambda rng: Guarded(rng))
    monkeypatch.setattr(ens, "_ensemble_task", first_run)
    res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates", "4",
                               "--runs", "10000000", "--backend", "serial", *SMALL])
    assert isinstance(res.exception, Stop), res.output
    assert [s.spawn_key for s in seeds] == [(0,)] and seeds[0].entropy == 3  # --seed 3
    lazy = [(s.entropy, s.spawn_key) for s in ens._spawned(np.random.SeedSequence(7), 2500)]
    assert lazy == [(s.entropy, s.spawn_key) for s in np.random.SeedSequence(7).spawn(2500)]


def test_american_three_grids_estimate_the_time_grid_error_from_two_extrapolations(runner):
    # --american --grids 3: the 4-date run on 16 steps and coarser ones on 4 and 8 steps; the
    # time-grid error is the difference of the two Richardson extrapolations (rate 0.7)
    res = runner.invoke(main, ["american", "--strike", "100", "--dates", "4",
                               "--steps-per-date", "4", "--american", "--grids", "3",
                               "--json", *BASE])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    grid = out["time_grid"]
    assert grid["levels"] == [4, 8, 16]
    from deepquant.rough import TIME_STEP_RATE

    v1, v2, v3 = grid["values"]
    c = 1.0 / (2**TIME_STEP_RATE - 1.0)
    assert grid["error"] == pytest.approx(abs((v3 + c * (v3 - v2)) - (v2 + c * (v2 - v1))),
                                          rel=1e-12)
    assert "correction from 4, 8 steps" in out["model_description"]


def test_american_ensemble_progress_on_a_log(runner, monkeypatch):
    """CliRunner's stderr is not a terminal (like a CI log): rich showed the ensemble's bar only
    at the end; plain lines now say how many runs are done."""
    monkeypatch.setattr("deepquant.cli.output.PLAIN_PROGRESS_SECONDS", 0.0)
    res = runner.invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates", "4",
                               "--runs", "2", "--backend", "serial", *SMALL])
    assert res.exit_code == 0, res.output
    assert "ensemble runs: 0/2 (0%), 0:00:00 elapsed" in res.stderr, res.stderr
    assert "ensemble runs: 2/2 (100%)" in res.stderr
