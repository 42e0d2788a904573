"""The broader instance families (SSVI, synthetic-chain and SPX calibrations) and the
leave-one-family-out protocol of ``deepquant evaluate``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from deepquant.cli import main  # noqa: E402
from deepquant.neural import data as nd  # noqa: E402
from deepquant.neural import families as fam  # noqa: E402
from tests.neural import helpers  # noqa: E402

SPX = Path(os.environ.get("DEEPQUANT_SPX_DATA",
                          Path(__file__).resolve().parents[3] / "shared" / "data"
                          / "spx_20230609"))


def test_new_families_leave_existing_instances_unchanged():
    for i in range(12):
        assert nd.instance_spec(i, 5) == nd.instance_spec(i, 5, families=nd.FAMILIES)
    for f in ("svi", "chain", "spx"):
        spec = nd.instance_spec(0, 3, families=(f,))
        assert spec.family == f
        if f in nd.CHAIN_FAMILIES:
            assert 2 <= spec.n_periods <= nd.CHAIN_MAX_PERIODS


def test_ssvi_without_smile_is_the_lognormal_term_structure():
    """eta -> 0 makes phi k vanish, so w(k, theta) = theta: the SSVI marginals must equal the
    independent lognormal construction (``term_structure_marginals``) with the same ATM vols;
    1e-6 in weights (eta = 1e-9 leaves a curvature term of order eta theta k)."""
    from deepquant.neural.sweep import term_structure_marginals

    grid = nd.model_grid(150)
    times = np.linspace(0, 0.4, 6)
    vols = [0.3, 0.25, 0.2, 0.22, 0.18]
    a = fam.svi_marginals(times, vols, grid, rho=-0.5, eta=1e-9)
    b = term_structure_marginals(times, vols, grid)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-6)


def test_ssvi_marginals_are_convex_ordered_with_a_skew():
    grid = nd.model_grid(150)
    m = nd.build_marginals(nd.instance_spec(2, 1, families=("gbm", "termvol", "svi")), grid)
    helpers.assert_convex_ordered(m)
    assert m.weights[0, np.argmin(abs(grid - 1))] == 1.0          # today's point mass
    # negative rho: more mass below 1 - 2 sd than above 1 + 2 sd (left skew)
    w, sd = m.weights[-1], np.sqrt(m.weights[-1] @ (grid - 1) ** 2)
    assert w[grid < 1 - 2 * sd].sum() > w[grid > 1 + 2 * sd].sum()
    with pytest.raises(ValueError, match="rho must be in"):
        fam.svi_marginals([0, 0.1], 0.2, grid, rho=1.0)


def test_chain_family_calibrates_near_the_generating_model():
    """The synthetic Heston chain calibrated on the model grid: valid marginals, and ATM calls
    within 2e-3 (moneyness units; the chain's quotes are the model's prices jittered inside
    bid-ask bands of a few 1e-4 to 1e-3) of Heston's own marginals at the same dates."""
    from deepquant.market.synthetic import heston_marginals

    grid = nd.model_grid(150)
    params = {"v0": 0.04, "theta": 0.04, "kappa": 2.0, "sigma_v": 0.3, "rho": -0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = fam.chain_marginals([30, 91], grid, model="heston", params=params, seed=3)
    helpers.assert_convex_ordered(m)
    assert m.n_dates == 3 and m.times[0] == 0.0
    ref = heston_marginals(m.times, grid=grid, **params)
    i1 = int(np.argmin(abs(grid - 1)))
    atm = lambda w: np.maximum(grid - grid[i1], 0) @ w  # noqa: E731
    for t in (1, 2):
        assert abs(atm(m.weights[t]) - atm(ref.weights[t])) < 2e-3


def test_with_today_adds_the_point_mass_once():
    from deepquant.market.marginals import Marginals

    grid = nd.model_grid(150)
    m = nd.build_marginals(nd.instance_spec(0, 1, n_choices=(3,)), grid)
    cut = Marginals(grid, m.weights[1:], m.times[1:])
    back = fam.with_today(cut)
    np.testing.assert_array_equal(back.weights, m.weights)
    assert fam.with_today(m) is m
    with pytest.raises(ValueError, match="hold the point 1"):
        fam.with_today(Marginals(grid + 0.001, m.weights[1:], m.times[1:]))


@pytest.mark.skipif(not SPX.exists(), reason=f"SPX data not found at {SPX}")
def test_spx_family_is_a_valid_perturbed_calibration(monkeypatch):
    monkeypatch.setenv(fam.SPX_ENV, str(SPX))
    grid = nd.model_grid(150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = fam.spx_marginals(3, grid, rng=4)
        b = fam.spx_marginals(3, grid, rng=4, perturbation=0.0)
    helpers.assert_convex_ordered(a)
    assert a.n_dates == 4 and np.all(np.diff(a.times) > 0) and a.times[-1] <= 366 / 365
    np.testing.assert_array_equal(a.times, b.times)                 # same expiries drawn
    assert 0 < np.abs(a.weights - b.weights).sum() < 1.0            # moved, not replaced
    monkeypatch.delenv(fam.SPX_ENV)
    with pytest.raises(ValueError, match="DEEPQUANT_SPX_DATA"):
        fam.spx_data_path()


@pytest.fixture(scope="module")
def two_family_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lofo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nd.generate_dataset(d / "train.h5", 8, seed=21, backend="serial", n_choices=(2, 3),
                            families=("gbm", "termvol"))
        nd.generate_dataset(d / "test.h5", 4, seed=22, backend="serial", n_choices=(2, 3),
                            families=("gbm", "termvol"))
    return d


def test_refit_head_excludes_families(two_family_files, tmp_path):
    from deepquant.neural.refit import refit_head

    d = two_family_files
    res = refit_head(_shipped(), d / "train.h5", tmp_path / "r", iterations=2,
                     threads=1, exclude_families=("termvol",))
    assert res.instances == 4                                       # the 4 gbm instances
    extra = json.loads((tmp_path / "r" / "config.json").read_text())["extra"]["refit"]
    assert extra["families"] == ["gbm"] and extra["excluded_families"] == ["termvol"]
    with pytest.raises(ValueError, match="no instances left"):
        refit_head(_shipped(), d / "train.h5", tmp_path / "x", iterations=2, threads=1,
                   exclude_families=("gbm", "termvol"))


def _shipped():
    from deepquant.neural.pricer import default_checkpoint

    return default_checkpoint()


def test_leave_one_family_out_protocol(two_family_files, tmp_path):
    """Structure of the protocol, the shared classical reference, and that reference against an
    independent computation (cold solve + the per-step sparse recursion of ``augment``, 1e-10
    relative: both are exact forward recursions on the same kernels)."""
    from deepquant.market.marginals import Marginals
    from deepquant.mmot.augment import build_chain, expectation
    from deepquant.mmot.entropic import solve_entropic
    from deepquant.payoffs import AsianCall

    d = two_family_files
    r = CliRunner().invoke(main, [
        "evaluate", "--test", str(d / "test.h5"), "--lofo-train", str(d / "train.h5"),
        "--lofo-dir", str(tmp_path / "lofo"), "--iterations", "2", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    assert rep["families"] == ["gbm", "termvol"]
    held = {row["family"]: row for row in rep["held_out"]}
    assert held["gbm"]["held_out"] and held["termvol"]["held_out"] and held["all"]["n"] == 4
    inf = {row["family"]: row for row in rep["in_family"]}
    assert not inf["gbm"]["held_out"] and not inf["termvol"]["held_out"]
    start = {row["family"]: row for row in rep["start"]}
    assert start["termvol"]["held_out"] and not start["gbm"]["held_out"]
    for f in ("gbm", "termvol"):
        cfg = json.loads((tmp_path / "lofo" / f"without-{f}" / "config.json").read_text())
        assert cfg["extra"]["refit"]["excluded_families"] == [f]
    by_index = {row["index"]: row for row in rep["instances"]["in_family"]}
    for row in rep["instances"]["held_out"]:
        assert row["price_asian_classical"] == by_index[row["index"]]["price_asian_classical"]
    recs, grid, _ = nd.read_dataset(d / "test.h5")
    rec = recs[0]
    marg = Marginals(grid, rec["weights"], rec["times"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cold = solve_entropic(marg, 1.0, tol=1e-9)
    chain = build_chain(marg, AsianCall(strike=1.0))
    ref = expectation(chain, cold.kernels, law0=marg.weights[0])
    assert by_index[rec["index"]]["price_asian_classical"] == pytest.approx(ref, rel=1e-10)


def test_leave_one_family_out_rejects_missing_families(two_family_files, tmp_path):
    from deepquant.neural.evaluate import leave_one_family_out

    d = two_family_files
    with pytest.raises(ValueError, match="each family in both files"):
        leave_one_family_out(d / "train.h5", d / "test.h5", tmp_path, families=["heston"])
    r = CliRunner().invoke(main, ["evaluate", "--test", str(d / "test.h5"), "--lofo-train",
                                  str(d / "train.h5")])
    assert r.exit_code != 0 and "go together" in r.output


@pytest.mark.parametrize("option, value, match", [
    ("iterations", 0, "iterations must be an integer >= 1, got 0"),
    ("per_instance", -1, "per_instance must be an integer >= 1, got -1"),
    # one count check (results.check_count): True was one iteration before
    ("iterations", True, "iterations must be an integer >= 1, got True"),
    ("ridge", float("nan"), "ridge must be a finite number > 0, got nan"),
])
def test_leave_one_family_out_checks_the_refit_options_first(tmp_path, option, value, match):
    """Found by fuzzing (``evaluate --lofo-train ... --iterations 0``): the refit's options were
    checked by the first ``refit_head``, after the files were read, the classical reference
    solved and the start checkpoint evaluated. Now before the files are even opened (these do
    not exist)."""
    from deepquant.neural.evaluate import leave_one_family_out

    with pytest.raises(ValueError, match=match):
        leave_one_family_out(tmp_path / "missing-train.h5", tmp_path / "missing-test.h5",
                             tmp_path / "out", **{option: value})
