"""Scenario sweeps (deepquant.neural.sweep), batched neural solves and the device option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from deepquant.cli import main  # noqa: E402
from deepquant.market.synthetic import gbm_marginals  # noqa: E402
from deepquant.mmot.model import CalibratedModel  # noqa: E402
from deepquant.neural.pricer import NeuralPricer  # noqa: E402
from deepquant.neural.sweep import (  # noqa: E402
    SweepResult,
    bumped_scenarios,
    sweep,
    term_structure_marginals,
)
from deepquant.payoffs import AsianCall, LookbackCall  # noqa: E402
from tests.result_protocol import ResultProtocol  # noqa: E402

TIMES = [0.0, 0.1, 0.2, 0.35]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pricer():
    # no marginal-error guard: vol term structures are outside the training families, and
    # these tests compare the network's own answers (the guard has its own test)
    return NeuralPricer(ood_marginal_error=float("inf"))


def test_flat_term_structure_is_gbm(pricer):
    """A constant forward vol gives the GBM marginals of that vol (same Black prices; 1e-13)."""
    a = term_structure_marginals(TIMES, 0.25, pricer.grid)
    b = gbm_marginals(TIMES, grid=pricer.grid, sigma=0.25)
    assert np.max(np.abs(a.weights - b.weights)) < 1e-13
    np.testing.assert_array_equal(a.times, TIMES)


def test_term_structure_total_variance(pricer):
    """Per-period vols: the variance of X_t on the grid equals the lognormal one
    exp(w_t) - 1 with w_t = sum sigma_s^2 dt, up to the grid's truncation of the tails
    (2% relative on the model grid [0.5, 2] at w <= 0.03)."""
    vols = [0.35, 0.15, 0.25]
    m = term_structure_marginals(TIMES, vols, pricer.grid)
    w = np.concatenate([[0.0], np.cumsum(np.square(vols) * np.diff(TIMES))])
    var = m.weights @ (m.grid - 1.0) ** 2
    assert np.allclose(var[1:], np.expm1(w[1:]), rtol=0.02)
    assert m.check_convex_order().ok


def test_bumped_scenarios_and_errors(pricer):
    sc = bumped_scenarios(TIMES, 0.2, pricer.grid, [0.0, 0.1, -0.1])
    assert len(sc) == 3
    assert np.max(np.abs(sc[0].weights - gbm_marginals(TIMES, grid=pricer.grid,
                                                       sigma=0.2).weights)) < 1e-13
    with pytest.raises(ValueError, match="bumps must be finite and > -1"):
        bumped_scenarios(TIMES, 0.2, pricer.grid, [-1.0])
    with pytest.raises(ValueError, match=r"bumps must have shape \(K,\) or \(K, N=3\)"):
        bumped_scenarios(TIMES, 0.2, pricer.grid, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="vols must be finite and > 0"):
        term_structure_marginals(TIMES, [0.2, -0.1, 0.2], pricer.grid)
    with pytest.raises(ValueError, match="times must be increasing from 0"):
        term_structure_marginals([0.1, 0.2], 0.2, pricer.grid)


def test_sweep_matches_one_by_one_pricing(pricer):
    """Neural sweep prices == per-scenario NeuralPricer.solve(...).price(...) (same network in
    float32, batched vs single forward: 1e-6 relative), classical sweep prices ==
    CalibratedModel.calibrate(...).price(...) (same solver and tolerance: 1e-12)."""
    rng = np.random.default_rng(1)
    sc = bumped_scenarios(TIMES, [0.3, 0.2, 0.25], pricer.grid, rng.uniform(-0.1, 0.1, (4, 3)))
    sc.append(gbm_marginals([0.0, 0.2], grid=pricer.grid, sigma=0.3))   # another N
    for pay in (AsianCall(strike=1.0), LookbackCall(strike=1.05)):
        res = sweep(sc, pay, pricer=pricer)
        one = np.array([pricer.solve(m).price(pay) for m in sc])
        assert np.allclose(res.neural, one, rtol=1e-6, atol=0)
        cl = np.array([CalibratedModel.calibrate(m).price(pay) for m in sc])
        assert np.allclose(res.classical, cl, rtol=1e-12, atol=1e-15)
        assert res.modes == ["neural"] * 5 and res.classical_success.all()
        s = res.summary()
        assert s["scenarios"] == 5 and s["mean_err_pct"] == pytest.approx(
            np.mean(100 * np.abs(one - cl) / cl), rel=1e-5)
        # the pricing is part of the neural path's time on one thread: the pricing-only bound
        # is at least the speed-up, the time outside pricing >= 0
        assert s["speedup_bound"] >= s["speedup"] and s["neural_outside_pricing_ms"] >= 0
        assert s["speedup_bound"] == pytest.approx(
            res.classical_seconds / res.neural_pricing_seconds, rel=1e-12)
    only = sweep(sc[:2], AsianCall(strike=1.0), pricer=pricer, classical=False)
    assert only.classical is None and np.isnan(only.errors_pct).all()
    assert "mean_err_pct" not in only.summary()


def test_sweep_falls_back_per_scenario(pricer):
    """A scenario the network cannot take (price units) falls back alone, with its reason."""
    from deepquant.market.marginals import Marginals

    ok = gbm_marginals(TIMES, grid=pricer.grid, sigma=0.2)
    base = gbm_marginals(TIMES, grid=np.linspace(0.5, 1.5, 41), sigma=0.2)
    off = Marginals(base.grid * 3.0, base.weights, base.times)
    res = sweep([ok, off], AsianCall(strike=1.0), pricer=pricer, classical=False)
    assert res.modes == ["neural", "classical"] and "mean 3" in res.messages[1]
    # several such scenarios, solved in chunks of one or all at once: each keeps its own price
    # (the same classical solves; a price written to another scenario is off by O(10%))
    off2 = Marginals(base.grid * 2.0, gbm_marginals(TIMES, grid=base.grid,
                                                    sigma=0.3).weights, base.times)
    mixed = [off, ok, off2, off]
    one = sweep(mixed, AsianCall(strike=1.0), pricer=pricer, classical=False, chunk=1)
    many = sweep(mixed, AsianCall(strike=1.0), pricer=pricer, classical=False, chunk=8)
    assert one.modes == many.modes == ["classical", "neural", "classical", "classical"]
    np.testing.assert_allclose(one.neural, many.neural, rtol=1e-12, atol=0)
    assert one.neural[0] == pytest.approx(one.neural[3], rel=1e-12)
    assert abs(one.neural[2] / one.neural[0] - 1) > 0.05


def test_default_guard_sends_far_scenarios_to_the_classical_solver(pricer):
    """With the default guard a scenario whose neural marginal error exceeds 0.025 falls back
    (its price is then the classical one, 1e-12), the others stay neural."""
    guarded = NeuralPricer()
    rng = np.random.default_rng(3)
    sc = bumped_scenarios([0.0, 0.05, 0.1, 0.15, 0.2, 0.25], [0.35, 0.15, 0.35, 0.15, 0.3],
                          guarded.grid, rng.uniform(-0.1, 0.1, (4, 5)))
    sc.append(gbm_marginals(TIMES, grid=guarded.grid, sigma=0.2))
    raw = sweep(sc, AsianCall(strike=1.0), pricer=pricer)
    res = sweep(sc, AsianCall(strike=1.0), pricer=guarded)
    far = raw.marginal_error > 0.025
    assert far.any() and not far.all()
    assert res.modes == ["classical" if f else "neural" for f in far]
    assert np.allclose(res.neural[far], res.classical[far], rtol=1e-12, atol=1e-15)
    assert all("ood_marginal_error=0.025" in res.messages[i] for i in np.flatnonzero(far))


def test_sweep_pipeline_equals_solve_batch_then_price_batch():
    """The sweep's pipeline (one forward pass per batch, then per chunk the projection, the
    guard and one price of the chunk's own kernel array, a fallback's classical kernels in its
    slot) gives the prices of the plain path: ``solve_batch`` on the same batch, then one
    ``price_batch`` of the stacked kernels on the full-support chain. Same forward pass (one
    eager batch of 5), same rows, same recursion per instance: 1e-12 relative. A fallback priced
    in another slot, or a chunk's prices written to the wrong scenarios, is off by O(1e-2)."""
    from deepquant.mmot.model import price_batch

    guarded = NeuralPricer()
    rng = np.random.default_rng(3)
    sc = bumped_scenarios([0.0, 0.05, 0.1, 0.15, 0.2, 0.25], [0.35, 0.15, 0.35, 0.15, 0.3],
                          guarded.grid, rng.uniform(-0.1, 0.1, (4, 5)))
    sc.append(gbm_marginals(TIMES, grid=guarded.grid, sigma=0.2))        # another N
    pay = AsianCall(strike=1.0)
    res = sweep(sc, pay, pricer=guarded, classical=False, batch=5, chunk=2)
    sols = guarded.solve_batch(sc)
    modes = [s.mode for s in sols]
    assert res.modes == modes and "classical" in modes and "neural" in modes
    plain = np.empty(len(sc))
    for n in {m.n_dates for m in sc}:
        ids = [i for i, m in enumerate(sc) if m.n_dates == n]
        plain[ids] = price_batch([sols[i].marginals for i in ids],
                                 np.stack([sols[i].kernels for i in ids]), pay, support="full")
    np.testing.assert_allclose(res.neural, plain, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(res.marginal_error, [s.marginal_error for s in sols])
    with pytest.raises(ValueError, match="batch must be an integer >= 1, got 0"):
        sweep(sc[:1], pay, pricer=guarded, classical=False, batch=0)


def test_sweep_input_errors(pricer):
    with pytest.raises(ValueError, match="at least one scenario"):
        sweep([], AsianCall(strike=1.0), pricer=pricer)
    with pytest.raises(TypeError, match=r"marginals\[0\] must be a Marginals"):
        sweep([np.ones(3)], AsianCall(strike=1.0), pricer=pricer)
    with pytest.raises(TypeError, match="payoff must be a Payoff"):
        sweep([gbm_marginals(TIMES, grid=pricer.grid)], "asian", pricer=pricer)


def test_solve_batch_equals_solve(pricer):
    sc = [gbm_marginals(TIMES, grid=pricer.grid, sigma=s) for s in (0.18, 0.3)]
    batch = pricer.solve_batch(sc)
    for m, b in zip(sc, batch):
        one = pricer.solve(m)
        assert b.mode == one.mode == "neural"
        # float32 network, batched eager vs single traced forward: potentials agree to ~1e-5,
        # the kernels to a few 1e-5 (1.3e-5 measured with numpy 2.4), 50x below the network's
        # own price error
        assert np.max(np.abs(b.kernels - one.kernels)) < 5e-5
        assert b.drift < 1e-12


def test_cli_sweep(tmp_path):
    out = tmp_path / "sweep.json"
    r = CliRunner().invoke(main, ["sweep", "--num", "3", "--periods", "3", "--maturity", "0.3",
                                  "--strike", "1.0", "--vols", "0.3,0.2,0.25", "--json",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["scenarios"] == 3 and s["mean_err_pct"] < 5 and 0 <= s["fallbacks"] <= 3
    assert len(json.loads(out.read_text())["neural"]) == 3
    for args, msg in ((["--num", "0", "--strike", "1"], "--num must be >= 1"),
                      ([], "needs --strike"),
                      (["--strike", "1", "--vols", "0.2,0.3"], "--vols needs 1 or"),
                      (["--strike", "1", "--vols", "x"], "--vols must be comma-separated"),
                      (["--strike", "1", "--bump", "1.5"], "--bump must be in [0, 1)")):
        r = CliRunner().invoke(main, ["sweep", "--periods", "3", *args])
        assert r.exit_code == 2 and msg in r.output, (args, r.output)


def test_device_option():
    import torch

    from deepquant.neural.config import TrainConfig
    from deepquant.neural.model import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="train.device must be"):
        TrainConfig(device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            NeuralPricer(device="cuda")
        r = CliRunner().invoke(main, ["train", "--config", str(REPO / "configs" / "tiny.yaml"),
                                      "--device", "cuda", "--max-steps", "1"])
        assert r.exit_code == 2 and "CUDA is not available" in r.output, r.output


class TestSweepResult(ResultProtocol):
    result_type = SweepResult

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls, pricer):
        return sweep(bumped_scenarios(TIMES[:3], 0.2, pricer.grid, [0.0]), AsianCall(strike=1.0),
                     pricer=pricer)

    @pytest.fixture
    def failure(self, pricer):
        # a tolerance below rounding: every classical solve stops at its iteration limit
        return lambda: sweep(bumped_scenarios(TIMES[:3], 0.2, pricer.grid, [0.0]),
                             AsianCall(strike=1.0), pricer=pricer, tol=1e-30)


def test_cli_sweep_prints_a_heartbeat_on_a_log(pricer, monkeypatch):
    """The sweep is one library call: a spinner on a terminal, and on a log (CliRunner's stderr
    is not a terminal) its start and a line every PLAIN_PROGRESS_SECONDS; nothing before."""
    import time

    import deepquant.neural.sweep as ns

    monkeypatch.setattr("deepquant.cli.output.PLAIN_PROGRESS_SECONDS", 0.05)
    monkeypatch.setattr("deepquant.neural.pricer.NeuralPricer", lambda *a, **k: pricer)
    run = ns.sweep
    monkeypatch.setattr(ns, "sweep", lambda *a, **k: time.sleep(0.3) or run(*a, **k))
    r = CliRunner().invoke(main, ["sweep", "--strike", "1", "--num", "2", "--periods", "2",
                                  "--no-classical"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines[0] == "deepquant sweep: 2 scenarios", r.stderr
    assert "deepquant sweep: 2 scenarios: still running, 0:00:00 elapsed" in lines
