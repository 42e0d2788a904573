"""Bad command-line input: a one-line usage error (exit code 2) naming the option and the value,
before any work starts; never a traceback, a silent wrong answer or a run without end.

Each case failed before the audit of docs/robustness.md ("Bad inputs: command-line audit"):
accepted and run (a NaN or negative time budget, a NaN acceptance window, zero threads, a
relative gap target of 200%), a traceback (``--grid-size 1``, ``--threads 0``), or an error
that named the library's parameter instead of the option (``H`` for ``--hurst``, ``sigma``
for ``--vol-of-vol``).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from deepquant.cli import main
from deepquant.market.marginals import Marginals
from tests.conftest import random_walk_marginals

_AMERICAN = ["american", "--strike", "100", "--dates", "2", "--grids", "1", "--batch-size", "16",
             "--max-batches", "2", "--paths", "16", "--seed", "0"]

# (arguments, option named, value named); MARGINALS, DATA and OUT are replaced by paths
CASES = [
    # bounds / solve (certified budget and target, running-sum grid, BLAS threads)
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--method",
      "certified", "--max-seconds", "nan"], "--max-seconds", "nan"),
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--method",
      "certified", "--max-seconds", "-1"], "--max-seconds", "-1.0"),
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--method",
      "certified", "--rtol", "2"], "--rtol", "2.0"),
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--sum-grid-size",
      "0"], "--sum-grid-size", "0"),
    (["solve", "MARGINALS", "--eps", "1", "--threads", "0"], "--threads", "0"),
    # found by fuzzing: numpy overflow warnings, then "not converged" (exit 1)
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--method",
      "entropic", "--eps", "1e308"], "--eps", "1e+308"),
    # found by fuzzing: the payoff overflowed on the grid, linprog's "c must not contain inf"
    (["bounds", "MARGINALS", "--payoff", "forward-start-straddle", "--strike", "1e308",
      "--method", "lp"], "--strike", "1e+308"),
    # found by fuzzing: an option the method ignored silently; a library name for the option
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--method", "path-lp",
      "--sum-grid-size", "5"], "--sum-grid-size", "5"),
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--method", "lp",
      "--rtol", "0.01"], "--rtol", "0.01"),
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "100", "--method", "ipm",
      "--max-seconds", "5"], "--max-seconds", "5.0"),
    (["solve", "MARGINALS", "--eps", "1", "--tol", "0"], "--tol", "0.0"),
    # found by fuzzing: stopped at the start plan, "converged" with drift 0.44 (generate's rule)
    (["solve", "MARGINALS", "--eps", "1", "--tol", "1e308"], "--tol", "1e+308 is not in the "
     "range 0<x<2"),
    (["solve", "MARGINALS", "--eps", "-1"], "--eps", "-1.0"),
    # lists with an empty item (dropped silently before), ranges that named no option
    (["marginals", "--dates", "0.5,,1", "--out", "OUT"], "--dates", "'0.5,,1'"),
    (["marginals", "--dates", "0.5,1,", "--out", "OUT"], "--dates", "'0.5,1,'"),
    (["sweep", "--strike", "1", "--vols", "0.2,,0.3", "--num", "2"], "--vols", "'0.2,,0.3'"),
    (["generate", "--num", "1", "--out", "OUT", "--n-choices", "2,,3"], "--n-choices",
     "'2,,3'"),
    (["demo", "--out", "OUT", "--grid-sizes", "25,,150"], "--grid-sizes", "'25,,150'"),
    (["calibrate", "missing.csv", "--out", "OUT", "--fit-range", "2,0.3"], "--fit-range",
     "'2,0.3'"),
    (["calibrate", "missing.csv", "--out", "OUT", "--expiries", "30d,,60d"], "--expiries",
     "'30d,,60d'"),
    (["quote-bounds", "--quotes", "DATA", "--expiries", "30d", "--payoff", "asian-call",
      "--strike", "1", "--fit-range", "1.6,0.5"], "--fit-range", "'1.6,0.5'"),
    # sizes that ran for hours, exhausted the memory or printed a 300000-digit number
    (["marginals", "--grid-size", "100000000", "--out", "OUT"], "--grid-size", "100000000"),
    (["quote-bounds", "--quotes", "DATA", "--expiries", "30d", "--payoff", "asian-call",
      "--strike", "1", "--grid-size", "100000000"], "--grid-size", "100000000"),
    (["generate", "--num", "1", "--out", "OUT", "--grid-size", "100000"], "--grid-size",
     "100000"),
    (["demo", "--out", "OUT", "--grid-sizes", "25,1000000"], "--grid-sizes", "1000000"),
    ([*_AMERICAN[:6], "1000000", *_AMERICAN[7:]], "--grids", "1000000"),
    ([*_AMERICAN, "--steps-per-date", "100000000"], "--steps-per-date", "100000000"),
    (["generate", "--num", "1", "--out", "OUT", "--backend", "serial", "--eps", "0"], "--eps",
     "0.0"),
    (["generate", "--num", "1", "--out", "OUT", "--backend", "serial", "--support-scale",
      "2,1"], "--support-scale", "2.0, 1.0"),
    (["refit-head", "--data", "DATA", "--out", "OUT", "--ridge", "-1"], "--ridge", "-1.0"),
    (["refit-head", "--data", "DATA", "--out", "OUT", "--per-instance", "0"], "--per-instance",
     "got 0"),
    (["train", "--config", "BADYAML", "--max-steps", "1"], "--config",
     "is not valid YAML, line 2, column 1: expected ',' or ']'"),
    (["train", "--config", "BADYAML", "--max-steps", "0"], "--max-steps", "0"),
    (["train", "--config", "BADYAML", "--max-minutes", "nan"], "--max-minutes", "nan"),
    (["train", "--config", "BADYAML", "--max-minutes", "-1"], "--max-minutes", "-1.0"),
    # a negative seed (numpy's "expected non-negative integer" before)
    (["chain", "--seed", "-1", "--out", "OUT"], "--seed", "-1"),
    ([*_AMERICAN[:-1], "-1"], "--seed", "-1"),
    # calibrate (the report's window and the confidence level; checked before the file)
    (["calibrate", "missing.csv", "--out", "OUT", "--window", "nan"], "--window", "nan"),
    (["calibrate", "missing.csv", "--out", "OUT", "--reg", "nan"], "--reg", "nan"),
    # found by fuzzing: cvxpy's "Problem data contains NaN or Inf" (checked before the file)
    (["calibrate", "missing.csv", "--out", "OUT", "--reg", "1e308"], "--reg", "1e+308"),
    (["calibrate", "missing.csv", "--out", "OUT", "--alpha", "nan"], "--alpha", "nan"),
    # demo (errors of DemoConfig name the option that set the field)
    (["demo", "--out", "OUT", "--paths", "0"], "--paths", "got 0"),
    (["demo", "--out", "OUT", "--grid-step", "nan"], "--grid-step", "nan"),
    (["demo", "--out", "OUT", "--grid-sizes", "25", "--max-seconds", "nan"], "--max-seconds",
     "nan"),
    # american (errors of the model and pricer name the option, not the parameter)
    ([*_AMERICAN, "--hurst", "0.7"], "--hurst", "0.7"),
    ([*_AMERICAN, "--hurst", "0"], "--hurst", "0.0"),
    ([*_AMERICAN, "--maturity", "0"], "--maturity", "0.0"),
    ([*_AMERICAN, "--spot", "-5"], "--spot", "-5.0"),
    ([*_AMERICAN, "--rate", "nan"], "--rate", "nan"),
    ([*_AMERICAN, "--model", "bs", "--sigma", "nan"], "--sigma", "nan"),
    ([*_AMERICAN, "--model", "heston", "--vol-of-vol", "-1"], "--vol-of-vol", "-1.0"),
    ([*_AMERICAN[:2], "nan", *_AMERICAN[3:]], "--strike", "nan"),
    ([*_AMERICAN, "--dates", "0"], "--dates", "got 0"),
    ([*_AMERICAN, "--payoff", "asian-put", "--payoff-dates", "3"], "--payoff-dates", "got 3"),
    ([*_AMERICAN, "--payoff", "up-and-out-put", "--barrier", "nan"], "--barrier", "nan"),
    ([*_AMERICAN, "--sig-level", "-1"], "--sig-level", "-1"),
    # american options that the command would ignore (accepted silently before)
    ([*_AMERICAN, "--grid-rate", "0.5"], "--grid-rate", "--grids 1"),
    ([*_AMERICAN, "--independent"], "--independent", "--grids 1"),
    ([*_AMERICAN, "--american", "--grids", "4", "--steps-per-date", "4"], "--steps-per-date",
     "2^(grids-1) = 8"),
    ([*_AMERICAN, "--sigma", "0.3"], "--sigma", "--model rbergomi"),
    ([*_AMERICAN, "--model", "bs", "--hurst", "0.1"], "--hurst", "--model bs"),
    ([*_AMERICAN, "--model", "heston", "--xi0", "0.04"], "--xi0", "--model heston"),
    ([*_AMERICAN, "--workers", "2"], "--workers", "--runs >= 2"),
    ([*_AMERICAN, "--backend", "serial"], "--backend", "--runs >= 2"),
    ([*_AMERICAN, "--dual", "regression"], "--dual", "sub-simulation"),
    # found by fuzzing: --workers sizes the local pool only (ignored silently with serial/Ray)
    ([*_AMERICAN, "--model", "bs", "--runs", "2", "--backend", "serial", "--workers", "3"],
     "--workers", "--backend serial"),
    (["generate", "--num", "1", "--out", "OUT", "--backend", "serial", "--workers", "2"],
     "--workers", "--backend serial"),
    # neural (boundary checks of the CLI; the library's own checks are reported separately)
    (["generate", "--num", "1", "--out", "OUT", "--backend", "serial", "--grid-size", "1"],
     "--grid-size", "1"),
    (["generate", "--num", "1", "--out", "OUT", "--backend", "serial", "--chunk", "0"],
     "--chunk", "0"),
    (["validate-data", "DATA", "--residual-tol", "nan"], "--residual-tol", "nan"),
    (["validate-data", "DATA", "--drift-tol", "-1"], "--drift-tol", "-1"),
    (["refit-head", "--data", "DATA", "--out", "OUT", "--threads", "0"], "--threads", "0"),
    (["refit-head", "--data", "DATA", "--out", "OUT", "--max-instances", "0"],
     "--max-instances", "0"),
    (["evaluate", "--test", "DATA", "--threads", "0"], "--threads", "0"),
    (["evaluate", "--test", "DATA", "--max-instances", "0"], "--max-instances", "0"),
    (["evaluate", "--test", "DATA", "--max-instances", "-1"], "--max-instances", "-1"),
    # quote bounds (the budget, as for bounds), synthetic marginals (a point mass only), sweep
    (["quote-bounds", "--quotes", "DATA", "--expiries", "30d", "--payoff", "asian-call",
      "--method", "certified", "--max-seconds", "-1"], "--max-seconds", "-1.0"),
    (["marginals", "--model", "gbm", "--dates", "0", "--out", "OUT"], "--dates", "'0'"),
    (["marginals", "--model", "gbm", "--dates", "-0.5,1", "--out", "OUT"], "--dates", "-0.5"),
    (["sweep", "--strike", "1", "--vols", "-0.2", "--num", "2"], "--vols", "-0.2"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    marginals = root / "rw.npz"
    Marginals(*random_walk_marginals(4)).save(marginals)
    data = root / "data.h5"  # exists (click checks that) but is never read: the option fails
    data.write_text("not an HDF5 file\n")
    bad_yaml = root / "bad.yaml"  # a YAML syntax error: a traceback of yaml's parser before
    bad_yaml.write_text("model: [unclosed\n")
    return {"MARGINALS": str(marginals), "DATA": str(data), "OUT": str(root / "out"),
            "BADYAML": str(bad_yaml)}


@pytest.mark.parametrize("args, option, value", CASES,
                         ids=[" ".join(c[0][:1] + [c[1], c[2]]) for c in CASES])
def test_bad_option_is_a_usage_error_naming_it(paths, args, option, value):
    res = CliRunner().invoke(main, [paths.get(a, a) for a in args])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # click's usage error, not a crash
    assert "Traceback" not in res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, res.output
    assert option in error[0] and value in error[0], error[0]


# every float option whose range the library checks: click's float() read "nan", "inf" and
# "-inf" as numbers (a NaN fails every comparison, so some checks let it through)
_FLOAT_OPTIONS = [
    (["chain", "--out", "OUT"], ("--spot", "--rate", "--dividend-yield")),
    (["solve", "MARGINALS", "--eps", "1"], ("--eps",)),
    (["demo", "--out", "OUT"], ("--grid-step", "--max-seconds")),
    (["bounds", "MARGINALS", "--payoff", "asian-call", "--strike", "1"],
     ("--eps", "--martingale-tol")),
    (["generate", "--num", "1", "--out", "OUT"], ("--eps",)),
    (["refit-head", "--data", "DATA", "--out", "OUT"], ("--ridge",)),
    (["evaluate", "--test", "DATA"], ("--ridge",)),
    (["sweep", "--strike", "1"], ("--maturity", "--bump")),
    (_AMERICAN, ("--maturity", "--spot", "--sigma", "--hurst", "--eta", "--rho", "--xi0", "--v0",
                 "--kappa", "--theta", "--vol-of-vol", "--tol")),
]


@pytest.mark.parametrize("args, option", [(a, o) for a, opts in _FLOAT_OPTIONS for o in opts],
                         ids=[f"{a[0]} {o}" for a, opts in _FLOAT_OPTIONS for o in opts])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_options_refuse_non_finite_text(paths, args, option, value):
    res = CliRunner().invoke(main, [*[paths.get(a, a) for a in args], option, value])
    assert res.exit_code == 2, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert error == [f"Error: Invalid value for '{option}': {float(value)!r} is not a finite "
                     "number."], res.output
