"""More bad inputs found by fuzzing the public API and the command line: each case ended in a
raw traceback, an error that did not name the argument, a file written in the wrong format, a
long run without an answer, or an answer that looked valid, before its fix.

The earlier cases of the same standard are in ``tests/test_bad_input_fuzz.py`` (library) and
``tests/test_cli_bad_input.py`` (command line).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from deepquant.cli import main
from deepquant.market.marginals import MAX_GRID_SCALE, MIN_GRID_SCALE, Marginals
from deepquant.market.synthetic import gbm_marginals
from deepquant.mmot.augmented_entropic import MIN_EPS_RATIO
from deepquant.mmot.bounds import bounds
from deepquant.mmot.entropic import solve_entropic
from deepquant.payoffs import AsianCall, ForwardStartStraddle

README_GRID = np.linspace(0.5, 1.5, 11)
"""The README's three-date example: X_0 = 1, X_1 = 0.9 or 1.1, X_2 in {0.7, 1, 1.3}."""
README_WEIGHTS = np.zeros((3, 11))
README_WEIGHTS[0, 5] = 1.0
README_WEIGHTS[1, [4, 6]] = 0.5
README_WEIGHTS[2, [2, 5, 8]] = [0.25, 0.5, 0.25]
README_ASIAN = 7 / 120
"""The at-the-money Asian call E[((X_1 + X_2)/2 - 1)^+] on it: the exact LP's lower and upper
bounds coincide there (``test_readme_value_at_scale_one``)."""


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def usage_error(res) -> str:
    """The one ``Error:`` line of a usage error (exit code 2, no traceback)."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.fixture(scope="module")
def m12(tmp_path_factory):
    """GBM marginals on 12 points x 3 dates (the size of the fuzz run's case), saved."""
    path = tmp_path_factory.mktemp("m12") / "m12.npz"
    gbm_marginals(np.array([0.0, 0.25, 0.5]), grid=np.linspace(0.6, 1.4, 12),
                  sigma=0.2).save(path)
    return path


# ---------------------------------------------------------------------------- figure suffix
def test_marginals_plot_suffix_is_checked_before_any_work(tmp_path):
    # before: the .npz was written, then matplotlib's traceback "Format 'xyz' is not supported"
    res = run("marginals", "--grid-size", "10", "--out", tmp_path / "x.npz", "--plot",
              tmp_path / "x.xyz")
    line = usage_error(res)
    assert "--plot must end in .png, .pdf or .svg" in line and "x.xyz" in line
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.xyz").exists()


def test_solve_plot_suffix_is_checked_and_picks_the_format(tmp_path, m12):
    # before: a PNG was written under the name p.xyz (and p.svg held PNG bytes)
    line = usage_error(run("solve", m12, "--eps", "0.01", "--plot", tmp_path / "p.xyz"))
    assert "--plot must end in .png, .pdf or .svg" in line and "p.xyz" in line
    assert not (tmp_path / "p.xyz").exists()
    res = run("solve", m12, "--eps", "0.01", "--plot", tmp_path / "p.svg")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.svg").read_bytes().lstrip().startswith(b"<?xml")


def test_marginals_plot_in_capital_letters_keeps_its_format(tmp_path):
    res = run("marginals", "--grid-size", "10", "--out", tmp_path / "x.npz", "--plot",
              tmp_path / "x.PDF")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.PDF").read_bytes().startswith(b"%PDF")


# ---------------------------------------------------------------------------- --period
def test_solve_refuses_a_negative_period_like_a_large_one(tmp_path, m12):
    # before: --period -1 plotted the last period (a Python index), --period 5 was refused
    for period in ("-1", "2"):
        line = usage_error(run("solve", m12, "--eps", "0.01", "--period", period, "--plot",
                               tmp_path / "p.png"))
        assert f"--period {period} out of range for 2 period(s) (0..1)" in line
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------------------- grid scale
@pytest.mark.parametrize("factor, shown", [(1e12, r"1\.5e\+12"), (1e20, r"1\.5e\+20"),
                                           (1e-9, r"1\.5e-09")])
def test_grid_far_from_moneyness_is_refused(factor, shown):
    # before: accepted; at 1e12 the certified bounds said "not in convex order", from 1e20 the
    # LP returned NaN; at 1e-9 the LP returned [0, 0.15]e-9 as 'optimal' for 0.0583e-9
    with pytest.raises(ValueError, match=rf"grid's scale max\|x\| = {shown} lies outside "
                                         r"\[1e-05, 1e\+05\].*moneyness x = S / F"):
        Marginals(README_GRID * factor, README_WEIGHTS)


@pytest.mark.parametrize("top", [MIN_GRID_SCALE, MAX_GRID_SCALE])
@pytest.mark.parametrize("method", ["lp", "certified", "path-lp"])
def test_bounds_are_right_at_both_ends_of_the_grid_scale(top, method):
    # the range is where the answers were measured right: at each end, the scale-1 value (to
    # 1e-12 relative: the LPs are exact, the certified bounds meet on this one-law example)
    s = top / README_GRID.max()
    m = Marginals(README_GRID * s, README_WEIGHTS)
    res = bounds(m, AsianCall(strike=s), method)
    assert res.success, res.message
    assert res.lower / s == pytest.approx(README_ASIAN, rel=1e-12)
    assert res.upper / s == pytest.approx(README_ASIAN, rel=1e-12)


def test_readme_value_at_scale_one():
    res = bounds(Marginals(README_GRID, README_WEIGHTS), AsianCall(strike=1.0), "lp")
    assert res.lower == pytest.approx(README_ASIAN, rel=1e-12)
    assert res.upper == pytest.approx(README_ASIAN, rel=1e-12)


# ---------------------------------------------------------------------------- entropic eps
def test_entropic_eps_has_a_lower_limit(m12):
    # before: eps=1e-300 ran 41 s and ended "not converged", outside the exact bounds
    m = Marginals.load(m12)
    with pytest.raises(ValueError, match=r"eps must be at least MIN_EPS_RATIO = 1e-06 times the "
                                         r"problem's scale .*grid's 1\.4\).*got 1e-300"):
        bounds(m, AsianCall(strike=1.0), "entropic", eps=1e-300)
    # at the limit (scale 1.4 = max|grid|): converged, inside the exact bounds (measured 1e-8
    # inside; 1e-7 allows for the solver's tolerance of 1e-6 in L1 times the payoff's range)
    exact = bounds(m, AsianCall(strike=1.0), "lp")
    res = bounds(m, AsianCall(strike=1.0), "entropic", eps=MIN_EPS_RATIO * 1.4)
    assert res.success, res.message
    assert exact.lower - 1e-7 <= res.lower <= res.upper <= exact.upper + 1e-7


def test_cli_entropic_eps_below_the_limit_is_a_usage_error(m12):
    line = usage_error(run("bounds", m12, "--payoff", "asian-call", "--strike", "1", "--method",
                           "entropic", "--eps", "1e-300"))
    assert "--eps: eps must be at least MIN_EPS_RATIO" in line and "1e-300" in line


@pytest.mark.parametrize("eps", ["0.1", True, [0.1]])
def test_entropic_eps_must_be_a_real_number(eps):
    # before: "0.1" ended in TypeError "'>' not supported"; True ran as eps = 1
    m = Marginals(README_GRID, README_WEIGHTS)
    with pytest.raises(ValueError, match=re.escape(f"eps must be a positive number, got {eps!r}")):
        bounds(m, AsianCall(strike=1.0), "entropic", eps=eps)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        solve_entropic(m, eps)


# ---------------------------------------------------------------------------- payoffs
@pytest.mark.parametrize("kw", [dict(t1=None, t2=None), dict(t1=None, t2=2)])
def test_forward_start_date_none_is_refused_at_construction(kw):
    # before: accepted, then TypeError "'<=' not supported" inside bounds()
    with pytest.raises(ValueError, match=r"t1 must be a date index \(int\), got None"):
        ForwardStartStraddle(**kw)
    assert ForwardStartStraddle(t2=None).t2 is None  # None is t2's documented default


# ---------------------------------------------------------------------------- Marginals
@pytest.mark.parametrize("name, value", [("sum_tol", "x"), ("mean_tol", True),
                                         ("convex_tol", None)])
def test_marginals_tolerances_must_be_numbers(name, value):
    # before: sum_tol="x" ended in numpy's "ufunc 'isfinite' not supported"; True ran as 1
    with pytest.raises(ValueError, match=rf"{name} must be a finite non-negative number, got "
                                         rf"{value!r}"):
        Marginals(README_GRID, README_WEIGHTS, **{name: value})


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_save_to_an_unwritable_path_names_it(tmp_path, where):
    # before: a raw FileNotFoundError (or NotADirectoryError) from pathlib's mkdir
    if where == "proc":
        path = "/proc/deepquant-missing/m.npz"
    else:
        (tmp_path / "plain").write_text("a file")
        path = str(tmp_path / "plain" / "m.npz")
    m = Marginals(README_GRID, README_WEIGHTS)
    with pytest.raises(ValueError, match=rf"cannot write the file '{path}'"):
        m.save(path)
    good = m.save(tmp_path / "sub" / "m.npz")   # a missing folder is still created
    assert np.array_equal(Marginals.load(good).weights, m.weights)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.npz"]  # no temp file


# ---------------------------------------------------------------------------- demo pricers
def text_pricer(marginals, payoff):
    """A user pricer that returns a string (the fuzz run's ``badpricer:strp``)."""
    return "abc"


def test_demo_pricer_that_returns_no_number_is_named(tmp_path):
    # before: "Error: could not convert string to float: 'abc'", naming no pricer
    line = usage_error(run("demo", "--out", tmp_path / "r", "--grid-step", "0.1", "--grid-sizes",
                           "none", "--paths", "500", "--pricer",
                           "mine=tests.test_bad_input_more:text_pricer"))
    assert line == ("Error: --pricer: pricer 'mine' returned 'abc' (str) for the Asian call, "
                    "not a real number")


NOT_A_PRICER = 3.5  # ``--pricer x=tests.test_bad_input_more:NOT_A_PRICER`` names a number


def test_demo_pricer_that_is_not_a_function_is_refused_before_the_market(tmp_path):
    # before: accepted, and the run failed only when the pricer was first called, after the
    # market and calibration steps
    res = run("demo", "--out", tmp_path / "r", "--pricer",
              "x=tests.test_bad_input_more:NOT_A_PRICER")
    assert res.exit_code != 0
    assert "is a float, not a function f(marginals, payoff) -> float" in res.output
    assert not (tmp_path / "r").exists()   # refused before any work
    from deepquant.demo import run_demo
    with pytest.raises(ValueError, match=r"pricers\['x'\] must be a function"):
        run_demo(out_dir=tmp_path / "r2", pricers={"x": NOT_A_PRICER})
    assert not (tmp_path / "r2").exists()
