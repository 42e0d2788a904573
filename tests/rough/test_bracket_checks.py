"""Invalid brackets and device names of the rough engine: the pathwise dual's collapse at
extreme volatility, the crossed-bracket verdict (lower estimate or price floor above the upper
estimate beyond sampling noise), and CUDA asked for where there is none."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import deepquant.rough.engine as engine
from deepquant.cli import main
from deepquant.rough import (
    BermudanPricer,
    BermudanResult,
    RoughBergomi,
    preset_pricer,
    price_bermudan,
)
from deepquant.rough.dual import MARTINGALE_MEAN_STDERRS, martingale_mean_stderrs
from deepquant.rough.exercise import exercise_payoff, price_floor
from deepquant.rough.qmc import variance_of_mean
from deepquant.rough.result import (
    PATH_CROSSED_STDERRS,
    bracket_failures,
    crossed_threshold,
)

K, R = 100.0, 0.05
# the fuzz reproducer: Black-Scholes sigma = 12, 4 exercise dates (and t = 0), 2^11 regression
# paths, 2 batches of 2^8 pricing paths, seed 1 (the CLI's --paths/--batch-size/--max-batches)
TINY = dict(n_dates=4, n_regression=2**11, batch_size=2**8, min_batches=2, max_batches=2)
CLI_TINY = ["american", "--model", "bs", "--strike", "100", "--dates", "4", "--paths", "2048",
            "--batch-size", "256", "--max-batches", "2", "--grids", "1", "--seed", "1",
            "--json"]


def closed_form_range(sigma: float, n_dates: int = 4) -> tuple[float, float]:
    """Bounds of the Bermudan put price (S0 = K = 100, T = 1, dates j / n_dates and t = 0)
    from the Black-Scholes formula, independent of the engine: stopping at a fixed date t_j is
    a stopping rule, so the price is >= the largest European put to t_j; a put pays at most K
    and nothing at t = 0 (at the money), so the price is <= K e^{-r t_1}."""
    from scipy.stats import norm

    t = np.arange(1, n_dates + 1) / n_dates
    sd = sigma * np.sqrt(t)
    d1 = (R * t + 0.5 * sd**2) / sd
    puts = K * np.exp(-R * t) * norm.cdf(-(d1 - sd)) - K * norm.cdf(-d1)
    return float(puts.max()), K * math.exp(-R * t[0])


# ------------------------------------------------------------------ statistics helpers
def test_variance_of_mean_matches_the_spread_of_independent_means():
    # i.i.d. exponential samples of 64 (32 antithetic-style pairs formed by the row halves):
    # the average estimate over 4000 replications must match the observed variance of the
    # replications' means within 8% (the relative standard error of both is ~2-3%)
    rng = np.random.default_rng(0)
    x = rng.exponential(size=(4000, 64))
    means = x.mean(axis=1)
    for anti in (False, True):
        est = np.array([variance_of_mean(row, antithetic=anti) for row in x])
        assert est.mean() == pytest.approx(means.var(ddof=1), rel=0.08)
    # an odd function of antithetic pairs has constant pair means: no variance at all
    z = rng.standard_normal(32)
    assert variance_of_mean(np.concatenate([z, -z]), antithetic=True) == 0.0
    with pytest.raises(ValueError, match="even number of rows, got 5"):
        variance_of_mean(np.zeros(5), antithetic=True)
    assert np.isnan(variance_of_mean(np.array([1.0, 3.0]), antithetic=True))  # one pair


def test_a_batch_of_one_antithetic_pair_still_prices():
    # batches of 2 paths (one pair) have no path-level error: only the batch test applies
    res = preset_pricer("bs", n_dates=2, n_regression=2**6, batch_size=2, min_batches=2,
                        max_batches=2)(RoughBergomi.black_scholes(sigma=0.2, r=R), K, rng=0)
    assert math.isnan(res.gap_path_stderr) and math.isnan(res.upper_path_stderr)
    assert res.n_paths == 4 and math.isfinite(res.lower) and math.isfinite(res.upper)


def test_martingale_mean_stderrs_tells_a_shift_from_a_martingale():
    # a symmetric random walk (a martingale, 2000 antithetic paths, 4 dates): its sample means
    # stay within the threshold; the same walk shifted by 0.5 (about 16 standard errors at
    # the first date) or a constant M are rejected; M = 0 reads 0
    rng = np.random.default_rng(3)
    steps = rng.choice([-1.0, 1.0], size=(1000, 4))
    walk = np.concatenate([np.zeros((2000, 1)),
                           np.cumsum(np.concatenate([steps, -steps]), axis=1)], axis=1)
    assert martingale_mean_stderrs(walk, antithetic=True) < MARTINGALE_MEAN_STDERRS
    shifted = walk + np.array([0.0, 0.5, 0.5, 0.5, 0.5])
    assert martingale_mean_stderrs(shifted, antithetic=False) > 3 * MARTINGALE_MEAN_STDERRS
    assert martingale_mean_stderrs(np.full((8, 3), 99.0), antithetic=True) == math.inf
    assert martingale_mean_stderrs(np.zeros((8, 3)), antithetic=True) == 0.0


def test_price_floor_is_the_exercise_value_or_the_largest_european():
    # independent: the closed-form European puts above, the intrinsic value (K - S0)^+
    bs = RoughBergomi.black_scholes(sigma=12.0, r=R, S0=100.0)
    floor, name = price_floor(bs, exercise_payoff(K, "put"), T=1.0, n_dates=4,
                              exercise_at_zero=True)
    assert floor == pytest.approx(closed_form_range(12.0)[0], rel=1e-12)
    assert "European price to t=0.25" in name
    rb = RoughBergomi()   # no closed form: the exercise value at t = 0 only, or nothing
    assert price_floor(rb, exercise_payoff(130.0, "put"), T=1.0, n_dates=4,
                       exercise_at_zero=True) == (30.0, "the exercise value at t = 0")
    assert math.isnan(price_floor(rb, exercise_payoff(130.0, "put"), T=1.0, n_dates=4,
                                  exercise_at_zero=False)[0])


# ------------------------------------------------------------------ the verdict itself
def test_bracket_failures_on_the_reproducer_numbers():
    # the fuzz run's numbers: lower 98.74, upper 0.431, 2 batches, paired batch standard error
    # 0.431. The t threshold of 1 degree of freedom is 235.8 standard errors and the crossing
    # 228: the batch test alone passes it (why the run said crossed=false); the path-level
    # standard error (0.429) shows 229 of them, far beyond PATH_CROSSED_STDERRS
    kw = dict(lower=98.736, upper=0.431, gap=0.431 - 98.736, gap_stderr=0.431,
              upper_stderr=0.427, n_batches=2)
    assert crossed_threshold(2) > (98.736 - 0.431) / 0.431
    assert bracket_failures(**kw) == []
    out = bracket_failures(**kw, gap_path_stderr=0.429, upper_path_stderr=0.429,
                           price_floor=98.489, floor_name="the European price")
    assert len(out) == 2
    assert out[0].startswith("the lower estimate 98.736 is above the upper one 0.431 by 98.3")
    assert "229 path-level ones, more than the 4 sampling noise explains" in out[0]
    assert out[1].startswith("the upper estimate 0.431 is below the European price 98.489 by "
                             "98.1")


@pytest.mark.parametrize("excess, stderr, path, n, flagged", [
    (0.35, 0.1, 0.1, 2, False),     # 3.5 path-level standard errors: noise (< 4)
    (0.45, 0.1, 0.1, 2, True),      # 4.5 of them: not noise, though 4.5 < 235.8 batch ones
    (0.45, 0.1, math.nan, 2, False),  # the batch test alone on 2 batches
    (0.45, 0.1, math.nan, 64, True),  # ... and on 64 (threshold ~3.1)
    (1e-13, 0.0, 0.0, 4, False),    # rounding with no spread is no crossing
    (1e-3, 0.0, 0.0, 4, True),      # a real excess with no spread is
])
def test_crossing_thresholds(excess, stderr, path, n, flagged):
    out = bracket_failures(lower=50.0, upper=50.0 - excess, gap=-excess, gap_stderr=stderr,
                           upper_stderr=stderr, n_batches=n, gap_path_stderr=path)
    assert bool(out) == flagged
    beyond = excess > min(crossed_threshold(n) * stderr, PATH_CROSSED_STDERRS * path
                          if not math.isnan(path) else math.inf) and excess > 1e-9 * 50
    assert beyond == flagged    # the documented rule, spelled out


def test_result_round_trips_the_new_fields():
    # NaN path-level errors (a state file of an older run) come back as NaN, numbers as numbers
    base = dict(value=1.0, lower=0.9, upper=1.1, lower_stderr=0.01, upper_stderr=0.01,
                lower_ci=(0.88, 0.92), upper_ci=(1.08, 1.12), gap=0.2, gap_stderr=0.01,
                lower_plain=0.9, lower_plain_stderr=0.02, variance_reduction=4.0, n_paths=64,
                n_batches=2, stop_reason="max_batches", n_regression=64, dual_in_sample=1.0,
                dual_method="regression", exercise_at_zero=True, strike=1.0, option="put",
                n_dates=2, seconds=0.1)
    r = BermudanResult(**base, gap_path_stderr=0.02, price_floor=0.5)
    back = BermudanResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.gap_path_stderr == 0.02 and back.price_floor == 0.5
    assert math.isnan(back.upper_path_stderr)
    old = {k: v for k, v in r.to_dict().items() if k not in ("gap_path_stderr", "price_floor")}
    assert math.isnan(BermudanResult.from_dict(old).price_floor)


# ------------------------------------------------------------------ the engine at sigma = 12
@pytest.mark.parametrize("sigma", [12.0, 20.0])
def test_extreme_volatility_bracket_holds_the_closed_form_range(sigma):
    # before: the pathwise dual collapsed (upper 0.431 at sigma 12, 0.0 at sigma 20, for a
    # price in [98.49, 98.76]); now the refinement, whose martingale averages ~99 on the
    # validation paths, is dropped for the least-squares one. Both estimates within 4 of
    # their standard errors (and 1e-9 of rounding) of the closed-form range
    low, high = closed_form_range(sigma)
    res = preset_pricer("bs", **TINY)(RoughBergomi.black_scholes(sigma=sigma, r=R), K, rng=1)
    assert res.success and not res.crossed and res.dual_method == "regression"
    tol_lo = 4 * max(res.lower_stderr, 1e-9)
    tol_up = 4 * max(res.upper_stderr, res.upper_path_stderr, 1e-9)
    assert low - tol_lo <= res.lower <= high + tol_lo
    assert low - tol_up <= res.upper <= high + tol_up
    assert res.price_floor == pytest.approx(low, rel=1e-12)


def test_the_lower_estimate_drops_a_control_variate_that_raises_its_variance():
    # at sigma = 8 the least-squares martingale's increments are heavy-tailed, and as a
    # control variate it multiplied the lower estimate's variance (seed 0: -163.7 +- 195.3
    # for a put in [94.2, 100]; seed 2: 98.33 +- 0.13 against the plain 98.398 +- 0.0099).
    # Now the lower bound is the plain estimate there, its gap paired with the upper one
    low, _ = closed_form_range(8.0)
    pricer = preset_pricer("bs", n_dates=4, n_regression=256, batch_size=64, min_batches=2,
                           max_batches=2)
    dropped = 0
    for seed in range(4):
        with warnings.catch_warnings(record=True) as caught:   # seed 0's upper lies below
            warnings.simplefilter("always")                    # the floor: a crossed run
            res = pricer(RoughBergomi.black_scholes(sigma=8.0, r=R), K, rng=seed)
        assert res.crossed == any("invalid bracket" in str(w.message) for w in caught)
        assert res.lower_stderr <= res.lower_plain_stderr * (1 + 1e-12)
        if not res.control_variate:
            dropped += 1
            assert res.variance_reduction < 1.0
            assert res.lower == res.lower_plain and res.lower_stderr == res.lower_plain_stderr
            assert res.gap == pytest.approx(res.upper - res.lower, abs=1e-9)
            assert low - 4 * res.lower_stderr <= res.lower <= K
    assert dropped >= 3
    # where it helps (sigma = 0.2: the variance 300 times smaller) it stays
    res = preset_pricer("bs", **TINY)(RoughBergomi.black_scholes(sigma=0.2, r=R), K, rng=1)
    assert res.control_variate and res.variance_reduction > 10.0
    assert res.lower != res.lower_plain and res.lower_stderr < res.lower_plain_stderr


def test_a_collapsed_dual_is_flagged_not_priced(monkeypatch):
    # the collapse forced back (the refinement kept whatever its mean): the run must come
    # back failed, status "crossed", the message naming both crossings and their sizes,
    # with a RuntimeWarning; its numbers kept for diagnosis
    monkeypatch.setattr(engine, "MARTINGALE_MEAN_STDERRS", math.inf)
    low, _ = closed_form_range(12.0)
    with pytest.warns(RuntimeWarning, match="invalid bracket: the lower estimate"):
        res = preset_pricer("bs", **TINY)(RoughBergomi.black_scholes(sigma=12.0, r=R), K,
                                          rng=1)
    assert res.dual_method == "pathwise" and res.upper < 10.0 < 98.0 < res.lower
    # the rule, from the result's own fields: beyond 4 path-level standard errors
    assert res.lower - res.upper > PATH_CROSSED_STDERRS * res.gap_path_stderr
    assert low - res.upper > PATH_CROSSED_STDERRS * res.upper_path_stderr
    assert res.crossed and not res.success and res.status == "crossed"
    assert res.message.startswith(f"invalid bracket: the lower estimate {res.lower:.6g} is "
                                  f"above the upper one {res.upper:.6g} by "
                                  f"{res.lower - res.upper:.3g}")
    assert "below the Black-Scholes European price to t=0.25" in res.message


def test_converged_result_fails_when_a_run_crossed(monkeypatch):
    # coupled grids (price_levels): every batch's upper estimate lowered by 5 (a biased dual,
    # simulated) crosses each run; the extrapolation of crossed runs is no price either
    from deepquant.rough import price_converged

    batches = BermudanPricer._batch_estimates

    def biased(self, *args, **kwargs):
        return batches(self, *args, **kwargs) - np.array([0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 5.0, 0.0])

    monkeypatch.setattr(BermudanPricer, "_batch_estimates", biased)
    pricer = preset_pricer("bs", n_dates=2, n_regression=2**9, batch_size=2**7,
                           min_batches=2, max_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = price_converged(RoughBergomi.black_scholes(sigma=0.2, r=R), K, pricer=pricer,
                              steps=(1, 2), rng=0)
    assert all(r.crossed for r in res.runs)
    assert not res.success and res.status == "crossed"
    assert res.message.startswith("2 of 2 runs have an invalid bracket (runs [0, 1])")


# ------------------------------------------------------------------ CLI
def test_cli_reproducer_is_priced_within_the_closed_form_range():
    res = CliRunner().invoke(main, [*CLI_TINY, "--sigma", "12"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    low, high = closed_form_range(12.0)
    assert out["success"] and not out["crossed"]
    assert low - 4 * out["lower_stderr"] <= out["lower"] <= high + 4 * out["lower_stderr"]
    se = max(out["upper_stderr"], out["upper_path_stderr"])
    assert low - 4 * se <= out["upper"] <= high + 4 * se


def test_cli_exits_non_zero_on_an_invalid_bracket(monkeypatch):
    monkeypatch.setattr(engine, "MARTINGALE_MEAN_STDERRS", math.inf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(main, [*CLI_TINY, "--sigma", "12"])
    assert res.exit_code == 1, res.output
    # the message is the error line, not also a Python warning
    assert not [w for w in caught if "invalid bracket" in str(w.message)]
    out = json.loads(res.stdout)   # the numbers are still printed, for diagnosis
    assert out["crossed"] is True and out["success"] is False and out["status"] == "crossed"
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: invalid bracket: the lower "
                                                     "estimate")
    assert "Traceback" not in res.output


# ------------------------------------------------------------------ device
def _missing_cuda_device() -> tuple[str, str]:
    """A CUDA device name this machine lacks and the start of resolve_device's message."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        return "cuda", "device 'cuda' requested but CUDA is not available to this torch build"
    n = torch.cuda.device_count()
    return f"cuda:{n}", f"device 'cuda:{n}' requested but only {n} CUDA device(s) are visible"


def test_api_refuses_a_missing_cuda_device_with_a_value_error():
    name, message = _missing_cuda_device()
    model = RoughBergomi(H=0.5, eta=0.0, rho=0.0, xi0=0.04)
    with pytest.raises(ValueError, match=re.escape(message)):
        price_bermudan(model, K, device=name, n_dates=2, n_regression=2**8,
                              batch_size=2**6, min_batches=2, max_batches=2)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or 'auto'"):
        BermudanPricer(device="no-such-device")
    with pytest.raises(ValueError, match=r"device must be a torch device name or None, got 3"):
        BermudanPricer(device=3)
    with pytest.raises(ValueError, match=f"device '{name}' requested"):
        model.simulate(4, n_steps=2, device=name)
    # "cpu" still runs in torch: the same paths as numpy up to rounding (1e-12 relative)
    a = model.simulate(8, n_steps=4, rng=2)
    b = model.simulate(8, n_steps=4, rng=2, device="cpu")
    np.testing.assert_allclose(b.S, a.S, rtol=1e-12)


@pytest.mark.parametrize("device", ["cuda", "cuda:9"])
def test_cli_refuses_a_missing_cuda_device_in_one_line(device):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available() and int(device.partition(":")[2] or 0) < \
            torch.cuda.device_count():
        pytest.skip("this CUDA device exists here")
    res = CliRunner().invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates",
                                    "2", "--paths", "256", "--batch-size", "64",
                                    "--max-batches", "2", "--grids", "1", "--seed", "1",
                                    "--device", device])
    assert res.exit_code == 2, res.output
    assert f"--device: device '{device}' requested but" in res.output
    assert "Traceback" not in res.output and "AssertionError" not in res.output


@pytest.mark.parametrize("extra, first", [
    (["--grids", "2", "--steps-per-date", "2"], "Error: 2 of 2 runs have an invalid bracket"),
    (["--grids", "1", "--runs", "2", "--backend", "serial"], "Error: 2 runs, 95% t-intervals"),
])
def test_cli_grids_and_ensembles_exit_non_zero_on_crossed_runs(monkeypatch, extra, first):
    # every batch's upper estimate lowered by 5 (a biased dual, simulated; Black-Scholes
    # sigma 0.2, price ~6): each run crosses, and so do the extrapolation and the ensemble
    batches = BermudanPricer._batch_estimates

    def biased(self, *args, **kwargs):
        return batches(self, *args, **kwargs) - np.array([0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 5.0, 0.0])

    monkeypatch.setattr(BermudanPricer, "_batch_estimates", biased)
    res = CliRunner().invoke(main, ["american", "--model", "bs", "--strike", "100", "--dates",
                                    "2", "--paths", "512", "--batch-size", "128",
                                    "--max-batches", "2", "--seed", "0", "--json", *extra])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert out["success"] is False and all(r["crossed"] for r in out["runs"])
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith(first), errors
    assert "invalid bracket" in errors[0]
