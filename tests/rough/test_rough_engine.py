"""Bermudan engine: Black-Scholes limit against QuantLib, Longstaff-Schwartz (2001) Table 1,
Andersen-Broadie cross-check, ensembles, validation."""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest

from deepquant.rough import (
    AndersenBroadieResult,
    BermudanPricer,
    BermudanResult,
    EnsembleResult,
    ExerciseBasis,
    MartingaleBasis,
    RoughBergomi,
    andersen_broadie,
    ensemble,
    price_bermudan,
)
from tests.result_protocol import ResultProtocol

# Black-Scholes limit: one step per exercise period (log-Euler is exact for constant vol) and no
# signature terms (the variance channel is constant).
BS_PRICER = BermudanPricer(steps_per_date=1, exercise_basis=ExerciseBasis(sig_level=0),
                           martingale_basis=MartingaleBasis(sig_level=0), n_regression=2**15,
                           batch_size=2**12, min_batches=4, max_batches=8,
                           dual_fit="regression")
QL_TOL = 2e-3  # QuantLib FD (800 x 800 grid) vs its 2000 x 2000 value: < 1e-4; calendar < 1e-3


@pytest.fixture(scope="module")
def bs_result():
    m = RoughBergomi.black_scholes(sigma=0.2, r=0.05, S0=100.0)
    return BS_PRICER(m, 100.0, rng=2026)


def test_black_scholes_bermudan_put_brackets_quantlib(bs_result, ql_put):
    """S0 = K = 100, r = 0.05, sigma = 0.2, T = 1, 12 dates: QuantLib FD gives 6.0428."""
    q = ql_put(100.0, 100.0, 0.05, 0.2, 1.0, 12)
    assert q == pytest.approx(6.0428, abs=1e-4)
    r = bs_result
    assert r.lower_ci[0] - QL_TOL <= q <= r.upper_ci[1] + QL_TOL
    assert r.lower <= r.upper
    # measured gap ~0.2% of the price; the dual must be tight, not just valid
    assert r.gap < 0.005 * q
    # the control variate (fitted martingale) cuts the lower bound's variance (measured 15-200x)
    assert r.variance_reduction > 5
    assert abs(r.lower_plain - r.lower) < 4 * math.hypot(r.lower_plain_stderr, r.lower_stderr)


def test_result_fields(bs_result):
    r = bs_result
    d = r.to_dict()
    for key in ("lower", "upper", "midpoint", "lower_ci", "upper_ci", "seconds", "n_paths"):
        assert key in d
    assert r.value == pytest.approx(0.5 * (r.lower + r.upper))
    assert r.n_paths == r.n_batches * BS_PRICER.batch_size
    assert r.stop_reason in ("tol", "patience", "max_batches")
    assert r.lower_ci[0] < r.lower < r.lower_ci[1]


CASES_FAST = [(36, 0.2, 1), (44, 0.4, 1)]


def _ls_rows(rough_data):
    d = rough_data("longstaff_schwartz_2001_table1.json")
    return d, {tuple(row[:3]): row for row in d["rows"]}


def _check_ls_case(case, rough_data, ql_put):
    d, rows = _ls_rows(rough_data)
    S0, sigma, T, fd, eur, lsm, lsm_se = rows[case]
    K, r = d["strike"], d["rate"]
    n_dates = int(d["dates_per_year"] * T)
    q = ql_put(S0, K, r, sigma, T, n_dates)
    # the published finite-difference values agree with QuantLib's Bermudan (50/yr) value
    assert abs(fd - q) < 0.02
    pricer = BermudanPricer(n_dates=n_dates, T=float(T), steps_per_date=1,
                            exercise_basis=ExerciseBasis(sig_level=0),
                            martingale_basis=MartingaleBasis(sig_level=0),
                            n_regression=2**14, batch_size=2**12, min_batches=4, max_batches=4,
                            dual_fit="regression")
    res = pricer(RoughBergomi.black_scholes(sigma=sigma, r=r, S0=float(S0)), K, rng=7)
    assert res.lower_ci[0] - QL_TOL <= q <= res.upper_ci[1] + QL_TOL
    # the published LSM value (LS's own lower-bound estimate) sits inside our bracket
    assert res.lower_ci[0] - 3 * lsm_se <= lsm <= res.upper_ci[1] + 3 * lsm_se
    if T == 1:  # measured 0.3-5% at these sizes (2^14 regression paths); with 100 dates
        assert res.gap < 0.06 * q  # (T = 2) the per-date least-squares martingale is looser


@pytest.mark.parametrize("case", CASES_FAST)
def test_longstaff_schwartz_table1(case, rough_data, ql_put):
    _check_ls_case(case, rough_data, ql_put)


@pytest.mark.slow
@pytest.mark.parametrize("case", [(s, v, t) for s in (36, 38, 40, 42, 44) for v in (0.2, 0.4)
                                  for t in (1, 2) if (s, v, t) not in CASES_FAST])
def test_longstaff_schwartz_table1_all(case, rough_data, ql_put):
    _check_ls_case(case, rough_data, ql_put)


def test_andersen_broadie_cross_check(ql_put):
    """Nested simulation on the LSM policy: AB upper >= price (within errors), and the fitted
    signature-martingale bound is at least as tight as AB with 200 inner paths here."""
    m = RoughBergomi.black_scholes(sigma=0.2)
    pricer = BermudanPricer(n_dates=6, steps_per_date=1, exercise_basis=ExerciseBasis(
        sig_level=0), martingale_basis=MartingaleBasis(sig_level=0), n_regression=2**14,
        batch_size=2**12, max_batches=4, dual_fit="regression")
    q = ql_put(100.0, 100.0, 0.05, 0.2, 1.0, 6)
    policy, _ = pricer.fit(m, 100.0, rng=5)
    ab = andersen_broadie(pricer, m, 100.0, policy, n_outer=400, n_inner=200, rng=6)
    assert ab.upper + 4 * ab.upper_stderr >= q - QL_TOL
    assert ab.lower - 4 * ab.lower_stderr <= q + QL_TOL
    res = pricer(m, 100.0, rng=5)
    assert res.upper <= ab.upper + 4 * ab.upper_stderr
    assert ab.gap > -4 * ab.gap_stderr
    with pytest.raises(ValueError, match="n_inner"):
        andersen_broadie(pricer, m, 100.0, policy, n_inner=1)


def test_rough_bergomi_small_run_brackets_published_price(rough_data):
    """Standard rough Bergomi case, K = 100, reduced sizes: the bounds must bracket the
    published ~8.50 (valid bounds; the reduced dual is loose, so no gap assertion here)."""
    d = rough_data("rbergomi_american_put.json")
    ref = dict(d["rows"])[100]
    pricer = BermudanPricer(steps_per_date=4, n_regression=2**13, batch_size=2**11,
                            min_batches=4, max_batches=4, dual_fit="regression",
                            martingale_ridge=1e-2)
    res = pricer(RoughBergomi(**{k: v for k, v in d["model"].items() if k != "T"}), 100.0,
                 rng=11)
    assert res.lower_ci[0] <= ref <= res.upper_ci[1]
    assert res.upper - res.lower < 0.1 * ref


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_pathwise_dual_is_a_valid_upper_bound(seed, ql_put):
    """dual_fit="pathwise": the refined martingale (or the least-squares one it is validated
    against) gives an upper bound >= the QuantLib price within 4 standard errors. Several
    seeds: without the scale floor in fit_dual, rare-event columns once gave an "upper"
    bound below the lower bound."""
    m = RoughBergomi.black_scholes(sigma=0.2)
    pricer = BermudanPricer(n_dates=6, steps_per_date=2, exercise_basis=ExerciseBasis(
        sig_level=0), martingale_basis=MartingaleBasis(sig_level=0), n_regression=2**13,
        batch_size=2**11, max_batches=4, dual_fit="pathwise", dual_max_iter=60)
    res = pricer(m, 100.0, rng=seed)
    q = ql_put(100.0, 100.0, 0.05, 0.2, 1.0, 6)
    assert res.dual_method in ("pathwise", "regression")
    assert res.upper + 4 * res.upper_stderr >= q - QL_TOL
    assert res.lower - 4 * res.lower_stderr <= q + QL_TOL


def test_fit_dual_lowers_the_sample_objective():
    from deepquant.rough.dual import dual_objective, fit_dual

    rng = np.random.default_rng(0)
    n, J, P = 2000, 3, 2
    B = rng.standard_normal((n, J, P))
    # Z_j = sum_{i<j} B_i0 is itself a martingale: theta_i = (1, 0) gives max_j (Z_j - M_j) = 0
    Z = np.concatenate([np.zeros((n, 1)), np.cumsum(B[:, :, 0], axis=1)], axis=1)
    start = dual_objective(np.zeros((J, P)), Z, B).mean()
    fit = fit_dual(Z, B, max_iter=300)
    assert fit.in_sample < 0.05 * start
    np.testing.assert_allclose(fit.theta / fit.scale, [[1, 0]] * J, atol=0.05)
    with pytest.raises(ValueError, match="intervals"):
        fit_dual(Z[:, :2], B)


def test_ensemble_serial_and_local_agree():
    m = RoughBergomi.black_scholes(sigma=0.2)
    pricer = BermudanPricer(n_dates=4, steps_per_date=1, exercise_basis=ExerciseBasis(
        sig_level=0), martingale_basis=MartingaleBasis(sig_level=0), n_regression=2**11,
        batch_size=2**10, min_batches=2, max_batches=2, dual_fit="regression")
    a = ensemble(m, 100.0, runs=3, pricer=pricer, rng=1, backend="serial")
    b = ensemble(m, 100.0, runs=3, pricer=pricer, rng=1, backend="local", n_workers=2)
    np.testing.assert_allclose([r.lower for r in a.runs], [r.lower for r in b.runs])
    mids = np.array([r.value for r in a.runs])
    assert a.midpoint == pytest.approx(mids.mean())
    from scipy import stats

    hw = stats.t.ppf(0.975, 2) * mids.std(ddof=1) / math.sqrt(3)
    assert a.midpoint_ci == pytest.approx((mids.mean() - hw, mids.mean() + hw))
    assert a.lower_ci[0] <= a.lower <= a.lower_ci[1]
    assert len({r.lower for r in a.runs}) == 3  # independent streams
    with pytest.raises(ValueError, match="runs must be"):
        ensemble(m, 100.0, runs=1, pricer=pricer)


def test_ensemble_resume_keeps_finished_runs(tmp_path):
    m = RoughBergomi.black_scholes(sigma=0.2)
    pricer = BermudanPricer(n_dates=4, steps_per_date=1, exercise_basis=ExerciseBasis(
        sig_level=0), martingale_basis=MartingaleBasis(sig_level=0), n_regression=2**11,
        batch_size=2**10, min_batches=2, max_batches=2, dual_fit="regression")
    state = tmp_path / "ens.json"

    def interrupt(done, _res):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensemble(m, 100.0, runs=4, pricer=pricer, rng=5, backend="serial", resume=str(state),
                 progress=interrupt)
    saved = json.loads(state.read_text())
    assert sorted(saved["runs"]) == ["0", "1"]            # finished work is on disk
    full = ensemble(m, 100.0, runs=4, pricer=pricer, rng=5, backend="serial")
    resumed = ensemble(m, 100.0, runs=4, pricer=pricer, rng=None, backend="serial",
                       resume=str(state))                 # seed entropy read from the file
    # the same seeds: identical bounds to an uninterrupted ensemble
    assert [r.lower for r in resumed.runs] == [r.lower for r in full.runs]
    assert [r.upper for r in resumed.runs] == [r.upper for r in full.runs]
    # runs 0 and 1 were not recomputed (their recorded wall times are the saved ones)
    assert [r.seconds for r in resumed.runs[:2]] == [saved["runs"][k]["seconds"]
                                                     for k in ("0", "1")]
    assert len(json.loads(state.read_text())["runs"]) == 4
    with pytest.raises(ValueError, match="another ensemble configuration"):
        ensemble(m, 90.0, runs=4, pricer=pricer, rng=5, backend="serial", resume=str(state))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not an ensemble state file"):
        ensemble(m, 100.0, runs=4, pricer=pricer, rng=5, backend="serial", resume=str(bad))


@pytest.mark.parametrize("kwargs,match", [
    ({"n_dates": 0}, "n_dates must be an integer >= 1"),
    ({"n_regression": 1000}, "n_regression must be a power of 2"),
    ({"method": "sobol"}, "method must be"),
    ({"dual_fit": "lp"}, "dual_fit must be"),
    ({"T": -1.0}, "T must be"),
    ({"min_batches": 8, "max_batches": 4}, "max_batches must be"),
    ({"martingale_ridge": -1.0}, "martingale_ridge must be"),
])
def test_pricer_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BermudanPricer(**kwargs)


def test_bad_strike_and_option():
    m = RoughBergomi.black_scholes(sigma=0.2)
    with pytest.raises(ValueError, match="strike must be"):
        price_bermudan(m, -5.0)
    with pytest.raises(ValueError, match="option must be"):
        price_bermudan(m, 100.0, option="straddle")
    with pytest.raises(ValueError, match="model must be"):
        BS_PRICER("not a model", 100.0)


# ---------------------------------------------------------------- result protocol
TINY_PRICER = BermudanPricer(n_dates=4, steps_per_date=1, exercise_basis=ExerciseBasis(
    sig_level=0), martingale_basis=MartingaleBasis(sig_level=0), n_regression=2**10,
    batch_size=2**9, min_batches=2, max_batches=2, dual_fit="regression")


class TestBermudanResult(ResultProtocol):
    result_type = BermudanResult
    nit = True

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls, bs_result):
        return bs_result

    @pytest.fixture
    def failure(self):
        # a precision target that two batches of 512 paths cannot reach
        pricer = replace(TINY_PRICER, tol=1e-9)
        return lambda: pricer(RoughBergomi.black_scholes(sigma=0.2), 100.0, rng=1)


class TestEnsembleResult(ResultProtocol):
    result_type = EnsembleResult

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        return ensemble(RoughBergomi.black_scholes(sigma=0.2), 100.0, runs=2,
                        pricer=TINY_PRICER, rng=1, backend="serial")

    @pytest.fixture
    def failure(self):
        pricer = replace(TINY_PRICER, tol=1e-9)
        return lambda: ensemble(RoughBergomi.black_scholes(sigma=0.2), 100.0, runs=2,
                                pricer=pricer, rng=1, backend="serial")


class TestAndersenBroadieResult(ResultProtocol):
    result_type = AndersenBroadieResult

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        m = RoughBergomi.black_scholes(sigma=0.2)
        policy, _ = TINY_PRICER.fit(m, 100.0, rng=5)
        return andersen_broadie(TINY_PRICER, m, 100.0, policy, n_outer=16, n_inner=8, rng=6)


@pytest.mark.parametrize("name, value", [("exercise_basis", None), ("martingale_basis", "x")])
def test_bases_must_be_basis_objects(name, value):
    # library fuzz, third pass: an AttributeError ('NoneType' object has no attribute
    # 'poly_degree') from the first fit
    with pytest.raises(TypeError, match=f"{name} must be a .*Basis, got {type(value).__name__}"):
        BermudanPricer(**{name: value})


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_ensemble_resume_path_is_checked_before_the_runs(tmp_path, where):
    """Library fuzz, third pass: a folder as the resume file was an IsADirectoryError, a path
    under a regular file a NotADirectoryError after the first run."""
    (tmp_path / "f").write_text("x")
    path = tmp_path if where == "folder" else tmp_path / "f" / "state.json"
    tiny = BermudanPricer(n_dates=2, steps_per_date=2, n_regression=2**7, batch_size=2**6,
                          min_batches=2, max_batches=2)
    with pytest.raises(ValueError, match="resume: cannot write the file"):
        ensemble(RoughBergomi(), 100.0, runs=2, pricer=tiny, backend="serial", resume=str(path))


@pytest.mark.parametrize("name, value", [("antithetic", None), ("control_variate", "yes"),
                                         ("bridge", 0), ("exercise_at_zero", 1.0),
                                         ("martingale_targets", "False")])  # (checked before)
def test_switches_must_be_bools(name, value):
    # library fuzz, third pass: None ran as False (antithetic off: a wider bracket), "yes" and
    # "False" as True, without a word
    with pytest.raises(ValueError, match=f"{name} must be a bool, got {value!r}"):
        BermudanPricer(**{name: value})


def test_run_message_says_when_the_lower_estimate_is_above_the_upper():
    from deepquant.rough.result import run_message

    plain = run_message("max_batches", 2, 0.2, 0.3, 0.05, 0.01)
    assert "above the upper" not in plain and plain.startswith("stopped on max_batches after 2")
    crossed = run_message("max_batches", 2, 0.2, 0.3, -0.3, 0.1)
    assert "above the upper one by 0.3 (3.0 standard errors" in crossed


def test_a_crossed_small_run_says_so_in_its_message():
    # 2 batches of 2^9 paths: the two sample means can cross; the message must say so exactly
    # when they do (lower > upper), whatever the numerics of the platform give; on 2 batches
    # (1 degree of freedom) a crossing of 3.6 batch standard errors (seed 1), 3.0 path-level
    # ones, is sampling noise
    from deepquant.rough import RoughBergomi, preset_pricer
    from deepquant.rough.result import PATH_CROSSED_STDERRS, crossed_threshold

    bs = RoughBergomi.black_scholes(sigma=0.2, r=0.05, S0=100.0)
    pricer = preset_pricer("bs", n_regression=2**10, batch_size=2**9, min_batches=2,
                           max_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pricer(bs, 100.0, rng=1)
    assert ("above the upper one" in res.message) == (res.lower > res.upper)
    # no floor is crossed here (the European price 5.57 is below both estimates)
    assert res.upper > res.price_floor
    assert res.crossed == (res.lower - res.upper > min(crossed_threshold(2) * res.gap_stderr,
                                                       PATH_CROSSED_STDERRS
                                                       * res.gap_path_stderr))
    assert res.success == (not res.crossed)
    # the run warns exactly when it is flagged
    assert any(issubclass(w.category, RuntimeWarning) and "sampling noise explains"
               in str(w.message) for w in caught) == res.crossed


def test_a_run_crossed_beyond_sampling_noise_is_flagged_and_warned(monkeypatch):
    # the upper estimate of every batch lowered by 1.0 (a biased dual, simulated): the lower
    # estimate then lies above the upper one by far more than crossed_threshold standard errors
    # of their paired difference; the run was success=True without a flag or a warning
    from deepquant.rough import RoughBergomi, ensemble, preset_pricer
    from deepquant.rough.engine import BermudanPricer
    from deepquant.rough.result import crossed_threshold, crossing_stderrs

    bs = RoughBergomi.black_scholes(sigma=0.2, r=0.05, S0=100.0)
    # (2^10 regression paths can cross on their own: seed 1 gives lower 5.998, upper 5.779,
    # 3.5 standard errors apart, an upper estimate below the Bermudan price ~6.03)
    pricer = preset_pricer("bs", n_regression=2**12, batch_size=2**9, min_batches=4,
                           max_batches=4)
    honest = pricer(bs, 100.0, rng=1)
    assert not honest.crossed and honest.gap < 0.5
    batches = BermudanPricer._batch_estimates

    def biased(self, *args, **kwargs):   # the gaps move with upper; the variances do not
        return batches(self, *args, **kwargs) - np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])

    monkeypatch.setattr(BermudanPricer, "_batch_estimates", biased)
    with pytest.warns(RuntimeWarning, match="more than the 9.22 sampling noise explains on 4"):
        res = pricer(bs, 100.0, rng=1)
    # the same paths: only the upper estimate moved, by exactly the shift
    assert res.lower == honest.lower
    assert res.upper == pytest.approx(honest.upper - 1.0, abs=1e-9)
    assert crossing_stderrs(res.gap, res.gap_stderr) > crossed_threshold(res.n_batches)
    # an invalid bracket is a failed run: success False, status "crossed", the message first
    assert res.crossed and not res.success and res.status == "crossed"
    assert res.to_dict()["crossed"] is True and res.message.startswith("invalid bracket: ")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ens = ensemble(bs, 100.0, runs=2, pricer=pricer, backend="serial", rng=0)
    assert all(r.crossed for r in ens.runs) and not ens.success
    # each run warns, and the ensemble names both
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any(re.search(r"2 of 2 runs .* \(runs \[0, 1\]\)", m) for m in messages)
    assert sum("sampling noise explains" in m for m in messages) >= 2


def test_crossing_stderrs_and_the_message_agree_on_the_threshold():
    # the threshold is the Student-t quantile (n - 1 degrees of freedom, as the 95% half-widths)
    # at the one-sided level of 3 normal standard errors (scipy's t and normal, independently):
    # 2 batches 235.8, 4 batches 9.22, many batches -> 3
    from scipy import stats

    from deepquant.rough.result import (
        bracket_failures,
        crossed_threshold,
        crossing_stderrs,
        run_message,
    )

    assert crossing_stderrs(0.1, 0.01) == 0.0 and crossing_stderrs(-0.3, 0.0) == np.inf
    assert crossed_threshold(1) == np.inf
    for n in (2, 4, 32):
        assert stats.t.sf(crossed_threshold(n), n - 1) == pytest.approx(stats.norm.sf(3.0),
                                                                         rel=1e-9)
    assert crossed_threshold(2) == pytest.approx(235.8, abs=0.1)
    assert 3.0 < crossed_threshold(10**6) < 3.001
    limit = crossed_threshold(4)
    noise = run_message("max_batches", 4, 0.2, 0.3, -0.099 * limit, 0.1)
    assert f"sampling noise below about {limit:.3g} on 4 batches" in noise
    # beyond the threshold the crossing is a failure clause, no longer a note of the message
    beyond = bracket_failures(lower=1.0, upper=1.0 - 0.101 * limit, gap=-0.101 * limit,
                              gap_stderr=0.1, upper_stderr=0.1, n_batches=4)
    assert len(beyond) == 1
    assert f"more than the {limit:.3g} sampling noise explains on 4 batches" in beyond[0]
    assert "above the upper" not in run_message("max_batches", 4, 0.2, 0.3, -0.101 * limit, 0.1)
    # 3.6 standard errors on 2 batches (1 degree of freedom) are noise, on 64 they are not
    assert "sampling noise below" in run_message("max_batches", 2, 0.2, 0.3, -0.36, 0.1)
    assert bracket_failures(lower=1.0, upper=0.64, gap=-0.36, gap_stderr=0.1,
                            upper_stderr=0.1, n_batches=2) == []
    assert "sampling noise explains" in bracket_failures(
        lower=1.0, upper=0.64, gap=-0.36, gap_stderr=0.1, upper_stderr=0.1, n_batches=64)[0]
