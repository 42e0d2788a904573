"""Bad inputs found by fuzzing the public API and the command line (docs/robustness.md, "Bad
inputs: fuzzing"): each case ran away, returned an answer that looked valid, or ended in a
traceback or an error that did not name the argument, before its fix.

The command-line cases of the same standard (a one-line usage error naming the option) are in
``tests/test_cli_bad_input.py``; the neural engine's in ``tests/neural/test_bad_input.py``.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from deepquant.market.expiries import select_slices
from deepquant.market.marginals import Marginals
from deepquant.market.quotes import load_chain
from deepquant.mmot.bounds import bounds
from deepquant.mmot.ipm import ipm_bounds
from deepquant.mmot.lp import lp_bounds
from deepquant.mmot.multiscale import certified_bounds, max_levels
from deepquant.payoffs import AsianCall, EuropeanCall, ForwardStartStraddle
from deepquant.rough import BermudanPricer, RoughBergomi
from deepquant.rough.extrapolate import richardson
from tests.conftest import random_walk_marginals
from tests.market.test_quotes import synthetic_rows, write_normalized


@pytest.fixture(scope="module")
def rw():
    """Three dates of a random walk on 9 points (moneyness units), in convex order."""
    grid, weights = random_walk_marginals(3)
    return Marginals(grid / 100, weights)


def test_entropic_bounds_refuse_marginals_not_in_convex_order(rw):
    # before: no check, the Sinkhorn-Newton sweeps ran for minutes on 9 points
    reverse = Marginals(rw.grid, rw.weights[::-1], check_convex=False)
    with pytest.raises(ValueError, match=r"marginals\[2\] is not in convex order"):
        bounds(reverse, AsianCall(strike=1.0), "entropic", eps=0.1)


@pytest.mark.parametrize("levels", [-1, 4, 100, 1.5, True])
def test_certified_multiscale_levels_beyond_the_grid(rw, levels):
    # before: -1 ran as 0, 100 coarsened a 2-point grid into itself 100 times (minutes)
    assert max_levels(rw.size) == 3  # 9 -> 5 -> 3 -> 2 points
    with pytest.raises(ValueError, match=rf"multiscale must be None or an integer in \[0, 3\].*"
                                         rf"got {levels!r}"):
        certified_bounds(rw, AsianCall(strike=1.0), multiscale=levels)


def test_certified_options_checked_before_the_solve(rw):
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1, got 0"):
        certified_bounds(rw, AsianCall(strike=1.0), max_iter=0)
    with pytest.raises(TypeError, match="progress must be callable or None, got int"):
        certified_bounds(rw, AsianCall(strike=1.0), progress=1)


@pytest.mark.parametrize("solver, payoff", [(lp_bounds, AsianCall(strike=1.0)),
                                            (certified_bounds, AsianCall(strike=1.0)),
                                            (ipm_bounds, EuropeanCall(strike=1.0))])
@pytest.mark.parametrize("sides", [(), ("lower", "lower"), "lower"])
def test_no_side_is_not_a_successful_nan(rw, solver, payoff, sides):
    # before: sides=() returned lower = upper = NaN with success=True, status "optimal"
    with pytest.raises(ValueError, match="sides must be a non-empty tuple of distinct"):
        solver(rw, payoff, sides=sides)


@pytest.mark.parametrize("options", [{"time_limt": 1.0}, {"presolve": False, "x": 1}])
def test_lp_refuses_unknown_highs_options(rw, options):
    # before: scipy warned and dropped the option, the solve ran on the defaults
    with pytest.raises(ValueError, match=r"highs_options has unknown option"):
        lp_bounds(rw, AsianCall(strike=1.0), highs_options=options)


# the weights overflow in the running sum first (numpy warns there), then in the payoff
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning",
                            "ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("method", ["lp", "ipm", "certified", "path-lp", "entropic"])
@pytest.mark.parametrize("payoff, culprit", [
    (ForwardStartStraddle(strike=1e308), r"strike 1e\+308 is too large for payoff "
                                         r"'forward-start-straddle' \(strike=1e\+308, t1=0\)"),
    # a weighted average that overflows on a grid far below 1e308
    (AsianCall(strike=1.0, weights=(1e308, 1e308)), r"weights \(1e\+308, 1e\+308\) is too "
                                                     r"large for payoff 'asian-call'"),
])
def test_a_payoff_that_overflows_on_the_grid_is_named(method, payoff, culprit):
    # before: the payoff overflowed to inf on the grid (points near 100) and linprog said "c
    # must not contain values inf, nan, or None" (the other methods ran on the infinities)
    marginals = Marginals(*random_walk_marginals(3))
    if method in ("ipm", "entropic") and payoff.pairwise(marginals.n_dates) is None:
        pytest.skip("pairwise methods only")
    kw = dict(eps=0.1) if method == "entropic" else {}
    with pytest.raises(ValueError, match=culprit + r".*evaluates to (inf|nan) on the grid"):
        bounds(marginals, payoff, method, **kw)


def test_entropic_eps_is_bounded_by_the_problem_scale(rw):
    # before: eps=1e308 printed numpy's overflow warnings (eps KL overflows), then "not
    # converged"; beyond 1e16 x the scale the payoff no longer moves the plan in float64
    with pytest.raises(ValueError, match=r"eps must be at most MAX_EPS_RATIO = 1e\+16 times the "
                                         r"problem's scale .*got 1e\+308"):
        bounds(rw, AsianCall(strike=1.0), "entropic", eps=1e308)
    # just inside the bound: the eps -> inf limit (the reference's martingale projection),
    # reached long before (same value at eps = 1e8 to 1e-12 relative, measured 1e-16)
    top = bounds(rw, AsianCall(strike=1.0), "entropic", eps=1e15 * float(rw.grid.max()))
    mid = bounds(rw, AsianCall(strike=1.0), "entropic", eps=1e8)
    assert top.success and mid.success
    assert top.lower == pytest.approx(mid.lower, rel=1e-12)
    assert top.upper == pytest.approx(mid.upper, rel=1e-12)


@pytest.mark.parametrize("options, match", [
    # before: HiGHS ran a NaN time limit or tolerance as if none was given, and a negative one
    # with a warning "Invalid option value" (the defaults used)
    ({"time_limit": float("nan")}, r"highs_options\['time_limit'\] must be a number >= 0 "
                                   r"\(seconds; inf: no limit\), got nan"),
    ({"time_limit": -1.0}, r"highs_options\['time_limit'\] must be .*got -1.0"),
    ({"time_limit": "10"}, r"highs_options\['time_limit'\] must be .*got '10'"),
    ({"dual_feasibility_tolerance": float("nan")},
     r"highs_options\['dual_feasibility_tolerance'\] must be a finite number > 0, got nan"),
    ({"primal_feasibility_tolerance": 0.0}, r"primal_feasibility_tolerance'\] must be .*got 0.0"),
    ({"mip_rel_gap": float("inf")}, r"highs_options\['mip_rel_gap'\] must be a finite number"),
    # before: a TypeError from scipy's check_int_option; -1 ran on the default
    ({"maxiter": 1.5}, r"highs_options\['maxiter'\] must be an integer >= 1, got 1.5"),
    ({"maxiter": -1}, r"highs_options\['maxiter'\] must be an integer >= 1, got -1"),
])
def test_lp_refuses_bad_highs_option_values(rw, options, match):
    with pytest.raises(ValueError, match=match):
        lp_bounds(rw, AsianCall(strike=1.0), highs_options=options)


def test_lp_takes_an_infinite_time_limit(rw):
    # HiGHS's own default: no limit; the bounds are those of the default options (exact LP)
    free = lp_bounds(rw, AsianCall(strike=1.0), highs_options={"time_limit": float("inf")})
    default = lp_bounds(rw, AsianCall(strike=1.0))
    assert free.success and (free.lower, free.upper) == (default.lower, default.upper)


def test_entropic_payoff_values_beyond_eps_times_the_float_range():
    # found by the library fuzz: a payoff finite on the grid (|X_2 - 1e308 X_0| with X_0 = 1)
    # whose f / eps overflows ended in KeyError 'pm' (no dual point was ever finite)
    from deepquant.market.synthetic import gbm_marginals

    m = gbm_marginals(np.linspace(0.0, 0.5, 3), grid=np.linspace(0.6, 1.4, 9), sigma=0.2)
    with pytest.raises(ValueError, match=r"eps 0.1 is too small for the payoff's values on the "
                                         r"chain \(up to 1e\+308\): f / eps overflows"):
        bounds(m, ForwardStartStraddle(strike=1e308), "entropic", eps=0.1)


def test_richardson_refuses_a_negative_standard_error():
    with pytest.raises(ValueError, match=r"stderrs must be >= 0, got \[-1, 0.1\]"):
        richardson([1, 2], [1.0, 1.1], [-1, 0.1], rate=1.0)


@pytest.mark.parametrize("tenor, days", [("0d", "0"), ("9999d", "9999"), ("1d", "1")])
def test_tenor_far_from_every_expiry_is_an_error(tmp_path, tenor, days):
    # before: the nearest slice was taken whatever the distance (9999d -> 161 days, 0d -> 35)
    path = write_normalized(tmp_path / "c.csv", synthetic_rows(
        expiries=("2024-02-16", "2024-03-15", "2024-06-21")))
    chain = load_chain(path)
    with pytest.raises(ValueError, match=rf"expiry '{tenor}' \({days} days\) is too far from "
                                         r"the chain's expiries.*available: 2024-02-16 SPX"):
        select_slices(chain, [tenor, "5m"])
    assert len(select_slices(chain, ["20d", "300d"])) == 2  # within a factor 2: nearest


def test_rqmc_steps_beyond_the_sobol_dimensions_fail_at_construction():
    # before: the error came from the first batch, after the regression, naming no option
    with pytest.raises(ValueError, match=r"steps_per_date x n_dates = 1000 x 8 steps need 24000 "
                                         r"Sobol dimensions.*method='mc'"):
        BermudanPricer(n_dates=8, steps_per_date=1000)
    assert BermudanPricer(n_dates=8, steps_per_date=1000, method="mc").n_steps == 8000


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_maturity_that_overflows_the_prices_is_named():
    # before: ZeroDivisionError in the martingale increments (T = 1e308 is finite)
    pricer = BermudanPricer(n_dates=2, steps_per_date=1, batch_size=16, max_batches=2,
                            min_batches=2, n_regression=16, T=1e308)
    model = RoughBergomi.black_scholes(sigma=0.2)
    with pytest.raises(ValueError, match=r"prices or variances leave the floating-point range "
                                         r"\(0 or inf\) with T=1e\+308"):
        pricer(model, 100.0, rng=0)


def _tiny_pricer(**kw) -> BermudanPricer:
    return BermudanPricer(n_dates=2, steps_per_date=2, batch_size=16, max_batches=2,
                          min_batches=2, n_regression=16, **kw)


@pytest.mark.parametrize("kw, match", [
    # before: ZeroDivisionError in the hybrid scheme's cell covariance (2H - 1 + 1 == 0.0)
    (dict(H=1e-300), r"H must be >= 1.49e-08, got 1e-300"),
    # before: OverflowError (eta**2 in the path map)
    (dict(eta=1e300), r"eta must have a finite square.*got 1e\+300"),
])
def test_rough_bergomi_parameters_beyond_the_floating_point_range(kw, match):
    with pytest.raises(ValueError, match=match):
        RoughBergomi(**kw)
    assert RoughBergomi(H=1e-6).H == 1e-6  # small but representable: accepted


def test_black_scholes_volatility_with_an_infinite_square():
    # before: OverflowError from sigma ** 2
    with pytest.raises(ValueError, match=r"sigma must be .* finite square, got 1e\+300"):
        RoughBergomi.black_scholes(sigma=1e300)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kw, strike, match", [
    # the variance underflows to 0 for a large vol-of-vol: before, ZeroDivisionError in the
    # martingale increments; the message named only T when the prices overflowed
    (dict(eta=50.0), 100.0, r"prices or variances leave the floating-point range .* "
                            r"eta=50\.0.*too extreme model parameters"),
    (dict(xi0=1e300), 100.0, r"floating-point range .* xi0=1e\+300"),
    # features (S/K)^2 overflow: before, "SVD did not converge in Linear Least Squares" from
    # LAPACK (with its own lines on stdout)
    (dict(S0=1e300), 100.0, r"regression features overflow .*S0=1e\+300.*strike 100"),
    (dict(xi0=1e-300), 100.0, r"regression features overflow .*xi0=1e-300"),
    ({}, 1e-300, r"regression features overflow .*strike 1e-300"),
])
def test_model_values_that_leave_the_floating_point_range_are_named(kw, strike, match):
    with pytest.raises(ValueError, match=match):
        _tiny_pricer()(RoughBergomi(**kw), strike, rng=0)


def test_out_of_memory_is_one_line(monkeypatch, tmp_path):
    # before: a MemoryError traceback (e.g. quote-bounds --grid-size 100000000)
    from click.testing import CliRunner

    from deepquant.cli import main

    module = importlib.import_module("deepquant.mmot.bounds")  # the package re-exports bounds()

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 71.1 PiB for an array")

    monkeypatch.setattr(module, "bounds", no_memory)
    grid, weights = random_walk_marginals(3)
    Marginals(grid, weights).save(tmp_path / "m.npz")
    res = CliRunner().invoke(main, ["bounds", str(tmp_path / "m.npz"), "--payoff",
                                    "european-call", "--strike", "100"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    # the hint names the command's own size options (bounds has no --grid-size: its grid is
    # the marginals file's; the hint named --grid-size for every command before)
    # (the line before it, on a stderr that is not a terminal, says what was running)
    assert res.output.strip().splitlines()[-1] == (
        "Error: out of memory (Unable to allocate 71.1 PiB for an array); reduce the sizes given "
        "(e.g. --sum-grid-size)")


def test_out_of_memory_names_the_commands_sizes(monkeypatch):
    from click.testing import CliRunner

    import deepquant.rough
    from deepquant.cli import main

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 192. GiB for an array")

    monkeypatch.setattr(deepquant.rough, "price_american", no_memory)
    res = CliRunner().invoke(main, ["american", "--strike", "100", "--american", "--dates", "2",
                                    "--paths", "16", "--batch-size", "16", "--seed", "0"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert res.output.strip().endswith("reduce the sizes given (e.g. --dates, --runs, "
                                       "--steps-per-date, --paths, --batch-size)"), res.output


def test_local_pool_starts_no_more_processes_than_tasks(monkeypatch):
    # before: --workers 100000 with --runs 2 forked 100000 processes (fork starts them all)
    import deepquant.parallel as parallel

    sizes = []

    class Recorder(parallel.ProcessPoolExecutor):
        def __init__(self, max_workers, **kwargs):
            sizes.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", Recorder)
    assert parallel.LocalExecutor(100_000).map(abs, [-1, -2]) == [1, 2]
    assert sizes == [2]
    assert parallel.LocalExecutor(3).map(abs, []) == []


def test_single_date_marginals_report_no_violation(tmp_path):
    # before: "worst convex-order violation -inf" (the maximum over no pair of dates)
    from click.testing import CliRunner

    from deepquant.cli import main

    res = CliRunner().invoke(main, ["marginals", "--model", "gbm", "--dates", "1", "--grid-size",
                                    "20", "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    assert "violation 0.00e+00" in " ".join(res.output.split()) and "-inf" not in res.output


@pytest.mark.parametrize("sigma, warned", [("1e6", True), ("3", True), ("0.2", False)])
def test_marginals_warn_when_the_grid_cannot_hold_the_tails(tmp_path, sigma, warned):
    # before: sigma = 1e6 overflowed in the grid search (a numpy RuntimeWarning) and, like
    # sigma = 3, wrote two-point laws with calls moved by up to 1.47 and no word about it
    import json
    import warnings

    from click.testing import CliRunner

    from deepquant.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = CliRunner().invoke(main, ["marginals", "--model", "gbm", "--param", f"sigma={sigma}",
                                        "--grid-size", "20", "--out", str(tmp_path / "m.npz"),
                                        "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    bounds_ = [d["tail_bound"] for d in summary["dates"]]
    assert (len(summary["warnings"]) > 0) == warned
    # one warning per date whose tail bound exceeds the threshold, naming that date
    assert len(summary["warnings"]) == sum(b > 1e-3 for b in bounds_)
    if warned:
        assert "cannot hold the law's tails" in res.stderr


def test_sweep_warns_when_the_network_grid_cannot_hold_the_scenarios(tmp_path):
    # before: --maturity 1e6 priced laws squeezed onto the network grid's two ends and
    # reported 0% error against the classical solve of the same squeezed laws, without a word
    import json

    from click.testing import CliRunner

    from deepquant.cli import main

    args = ["sweep", "--payoff", "asian-call", "--strike", "1", "--num", "1", "--periods", "2",
            "--no-classical", "--json"]
    far = CliRunner().invoke(main, args + ["--maturity", "1e6"])
    # the squeezed laws' prices are not the scenario's: success False (exit 1), not only a warning
    assert far.exit_code == 1, far.output
    assert len(json.loads(far.stdout)["warnings"]) == 1
    assert json.loads(far.stdout)["status"] == "tails_off_grid"
    assert "cannot hold the law's tails at t = 1e+06" in " ".join(far.stderr.split())
    near = CliRunner().invoke(main, args + ["--maturity", "0.5"])
    assert near.exit_code == 0, near.output
    assert json.loads(near.stdout)["warnings"] == [] and "warning" not in near.stderr


@pytest.mark.parametrize("name, value", [("tol", float("nan")), ("tol", -1.0),
                                         ("dual_ridge", -1.0), ("dual_ridge", float("inf")),
                                         ("martingale_ridge", float("nan"))])
def test_bermudan_pricer_tolerances_and_ridges_are_checked(name, value):
    # before: tol=nan or -1 and dual_ridge=-1 were accepted (a NaN target never stops a run;
    # a negative ridge pulls the pathwise dual away from its start)
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0, got {value}"):
        BermudanPricer(**{name: value})
