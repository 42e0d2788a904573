"""Tests of the neural MMOT surrogate: import hygiene, model, losses, data, training,
checkpoints and inference. Small data only; every tolerance is stated with its reason."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deepquant.neural import data as nd  # noqa: E402
from deepquant.neural.config import ModelConfig, load_config  # noqa: E402
from deepquant.neural.losses import gibbs_log_kernel, kernel_drift, surrogate_loss  # noqa: E402
from deepquant.neural.model import (  # noqa: E402
    SEED_PARAMETER_COUNT,
    build_model,
    count_parameters,
)
from deepquant.neural.refit import RefitResult  # noqa: E402
from deepquant.neural.train import TrainResult  # noqa: E402
from tests.neural import helpers  # noqa: E402
from tests.result_protocol import ResultProtocol  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_import_deepquant_does_not_import_torch():
    code = ("import sys, deepquant, deepquant.cli, deepquant.neural; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_transformer_shapes_and_parameter_count():
    cfg = ModelConfig()
    model = build_model(cfg, nd.model_grid())
    n = count_parameters(model)
    # the seed's 4,423,468 cannot be reproduced from its own spec (its Appendix B is absent);
    # our reading of §9.2 gives 2.67M. Pin it so an accidental change of the spec is caught.
    assert n == 2_672_556, n
    assert n < SEED_PARAMETER_COUNT
    w = torch.rand(3, 11, 150)
    w = w / w.sum(-1, keepdim=True)
    v, h = model(w)
    assert v.shape == (3, 10, 150) and h.shape == (3, 10, 150)
    mlp = build_model(ModelConfig(kind="mlp"), nd.model_grid())
    v2, h2 = mlp(w)
    assert v2.shape == v.shape and h2.shape == h.shape
    with pytest.raises(ValueError, match="grid points"):
        model(torch.rand(1, 3, 100))


def test_conv_as_matmul_equals_conv1d():
    """The latency path of the date-axis embedding is the same linear map as nn.Conv1d."""
    from deepquant.neural.model import _conv_as_matmul

    torch.manual_seed(0)
    for c_in, c_out, k, t in ((6, 4, 5, 11), (300, 16, 3, 2), (8, 8, 1, 7)):
        conv = torch.nn.Conv1d(c_in, c_out, k, padding=k // 2)
        x = torch.randn(3, t, c_in)
        with torch.no_grad():
            ref = conv(x.transpose(1, 2)).transpose(1, 2)
            got = _conv_as_matmul(conv, x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_pricer_trace_matches_the_eager_model_for_every_shape():
    """predict() runs single instances through per-shape traces and batches eagerly: equal to
    the eager module for two horizons and batch sizes (a trace must never be reused for another
    shape)."""
    from deepquant.neural.pricer import NeuralPricer

    pricer = NeuralPricer()
    rng = np.random.default_rng(0)
    for b, n_dates in ((1, 11), (1, 6), (3, 6), (1, 11)):
        w = rng.random((b, n_dates, pricer.grid.size))
        w /= w.sum(-1, keepdims=True)
        v, h = pricer.predict(w)
        with torch.inference_mode():
            ve, he = pricer.model(torch.as_tensor(w, dtype=torch.float32))
        # float32 round-off of two op orders (fused by the trace): 1e-5 of the output scale
        for got, ref in ((v, ve), (h, he)):
            ref = ref.double().numpy()
            assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert set(pricer._traced) == {(1, 11, 150), (1, 6, 150)}


def test_config_rejects_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lrate: 0.1\n")
    with pytest.raises(ValueError, match="unknown key.*lrate"):
        load_config(p)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)


def test_loss_terms_match_numpy_reference():
    rng = np.random.default_rng(3)
    grid, w = helpers.kernel_marginals(rng, 4, 15)
    m = grid.size
    v = rng.normal(size=(3, m))
    h = rng.normal(size=(3, m)) * 3
    k_np = nd.gibbs_kernels_np(v, h, w, grid)
    tg = torch.as_tensor(grid)
    wt = torch.as_tensor(w)
    log_k = gibbs_log_kernel(torch.as_tensor(v), torch.as_tensor(h), wt[:-1], wt[1:], tg)
    # float64 on both sides: agreement to rounding
    np.testing.assert_allclose(torch.exp(log_k).numpy(), k_np, atol=1e-12)
    delta_np = k_np @ grid - grid
    np.testing.assert_allclose(kernel_drift(log_k, tg).numpy(), delta_np, atol=1e-12)
    batch = {"weights": wt[None], "grid": tg, "v": torch.as_tensor(v)[None] * 0,
             "h": torch.as_tensor(h)[None] * 0, "period_mask": torch.ones(1, 3, dtype=bool)}
    terms = surrogate_loss(torch.as_tensor(v)[None], torch.as_tensor(h)[None], batch,
                           drift_scale=0.01, h_units=1e-2, lambda_mart=5.0, lambda_h=1.0)
    mart_np = np.mean([(w[t] * (np.where(w[t] > 0, delta_np[t], 0) / 0.01) ** 2).sum()
                       for t in range(3)])
    assert float(terms.mart) == pytest.approx(mart_np, rel=1e-10)
    mean = w @ grid
    var = ((grid[None, :] - mean[:, None]) ** 2 * w).sum(1)
    s_np = np.maximum(np.diff(var), (grid[1] - grid[0]) ** 2 / 4)
    hpen_np = np.mean([np.mean((1e-2 * s_np[t] * h[t][w[t] > 1e-10]) ** 2) for t in range(3)])
    assert float(terms.hpen) == pytest.approx(hpen_np, rel=1e-10)
    assert float(terms.total) == pytest.approx(
        float(terms.dist) + 5.0 * mart_np + float(terms.hpen), rel=1e-10)


def test_relative_dist_is_invariant_to_one_instance_scale_and_absolute_is_unchanged():
    """dist_weighting="relative": each instance's error over the mean square of its own targets
    ("relative_root": the square roots of those), so scaling one instance's targets and
    predictions together leaves the loss unchanged; "absolute" (the default) is the plain masked
    mean squared error, as before."""
    rng = np.random.default_rng(5)
    grid, w = helpers.kernel_marginals(rng, 4, 15)
    tg, wt = torch.as_tensor(grid), torch.as_tensor(w)
    wb = torch.stack([wt, wt])                                          # two instances
    tv, th = torch.as_tensor(rng.normal(size=(2, 3, 15))), torch.as_tensor(rng.normal(size=(2, 3, 15)))
    pv, ph = tv + 0.1 * torch.as_tensor(rng.normal(size=(2, 3, 15))), th + 0.2
    batch = {"weights": wb, "grid": tg, "v": tv, "h": th,
             "period_mask": torch.ones(2, 3, dtype=bool)}
    kw = {"lambda_mart": 0.0, "lambda_h": 0.0, "v_scale": 2.0, "h_scale": 3.0}
    # absolute, against a direct numpy computation of the documented formula
    mean = w @ grid
    var = ((grid[None, :] - mean[:, None]) ** 2 * w).sum(1)
    s_np = np.maximum(np.diff(var), (grid[1] - grid[0]) ** 2 / 4)[:, None]
    vm, hm = w[1:] > 1e-10, w[:-1] > 1e-10

    def inst(p, t, scale, m, rel):
        e = (((p - t) * s_np / scale) ** 2)[m].mean()
        return e / (((t * s_np / scale) ** 2)[m].mean() if rel else 1.0)

    for mode, rel, f in (("absolute", False, lambda x: x), ("relative", True, lambda x: x),
                         ("relative_root", True, lambda x: np.sqrt(x + 1e-12))):
        want = np.mean([f(inst(pv[i].numpy(), tv[i].numpy(), 2.0, vm, rel))
                        + f(inst(ph[i].numpy(), th[i].numpy(), 3.0, hm, rel)) for i in range(2)])
        got = surrogate_loss(pv, ph, batch, dist_weighting=mode, **kw)
        assert float(got.dist) == pytest.approx(want, rel=1e-10)        # float64: round-off
    assert float(surrogate_loss(pv, ph, batch, **kw).dist) == pytest.approx(
        float(surrogate_loss(pv, ph, batch, dist_weighting="absolute", **kw).dist), rel=0)
    # instance 1 scaled by 50: relative unchanged, absolute not
    c = torch.tensor([1.0, 50.0], dtype=torch.float64)[:, None, None]
    scaled = {**batch, "v": tv * c, "h": th * c}
    for mode, same in (("relative", True), ("relative_root", True), ("absolute", False)):
        a = float(surrogate_loss(pv, ph, batch, dist_weighting=mode, **kw).dist)
        b = float(surrogate_loss(pv * c, ph * c, scaled, dist_weighting=mode, **kw).dist)
        assert (b == pytest.approx(a, rel=1e-10)) is same, (mode, a, b)
    # the gradient flows through the error only (the target scale is detached)
    for mode in ("relative", "relative_root"):
        pv2 = pv.clone().requires_grad_(True)
        surrogate_loss(pv2, ph, batch, dist_weighting=mode, **kw).dist.backward()
        assert torch.isfinite(pv2.grad).all()
    with pytest.raises(ValueError, match="dist_weighting"):
        surrogate_loss(pv, ph, batch, dist_weighting="per_family", **kw)
    with pytest.raises(ValueError, match="train.dist_weighting"):
        load_config(REPO / "configs" / "tiny.yaml", **{"train.dist_weighting": "rel"})
    with pytest.raises(ValueError, match="train.dist_floor"):
        load_config(REPO / "configs" / "tiny.yaml", **{"train.dist_floor": 0.0})
    assert load_config(REPO / "configs" / "tiny.yaml").train.dist_weighting == "absolute"


def test_teacher_potentials_give_martingale_kernels():
    """The stored (gauge-fixed) targets of the numpy teacher reproduce a martingale kernel, and
    the gauge fix does not change the kernel."""
    rng = np.random.default_rng(0)
    grid, w = helpers.kernel_marginals(rng, 3, 13)
    v, h = helpers.teacher_potentials(w, grid)
    k0 = nd.gibbs_kernels_np(v, h, w, grid)
    v2, h2 = nd.gauge_fix(v, h, w[1:], grid)
    k1 = nd.gibbs_kernels_np(v2, h2, w, grid)
    np.testing.assert_allclose(k1, k0, atol=1e-12)  # gauge invariance, exact up to rounding
    drift, merr = nd.kernel_drift_np(k1, w, grid)
    assert drift < 1e-3 and merr < 1e-2  # 600 plain Sinkhorn sweeps: loose on purpose


def _indices(path):
    import h5py

    with h5py.File(path, "r") as f:
        return list(f["instances/index"][:])


def test_dataset_resume_without_duplicates(tmp_path):
    out = tmp_path / "d.h5"
    grid = np.linspace(0.7, 1.3, 11)
    kw = {"seed": 0, "grid": grid, "backend": "serial", "chunk": 2,
          "worker": helpers.fake_worker, "n_choices": (2, 3)}
    helpers.FAIL_AT.clear()
    helpers.FAIL_AT.add(5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        nd.generate_dataset(out, 8, **kw)
    helpers.FAIL_AT.clear()
    parts = sorted((tmp_path / "d.h5.parts").glob("part-*.h5"))
    kept = sorted(i for p in parts for i in _indices(p))
    assert kept == [0, 1, 2, 3, 4]  # flushed in chunks of 2, the partial chunk too
    assert not out.exists()
    calls = []
    summary = nd.generate_dataset(out, 8, progress=lambda d, n: calls.append(d), **kw)
    assert summary["new"] == 3 and summary["instances"] == 8
    assert sorted(_indices(out)) == list(range(8))
    assert not (tmp_path / "d.h5.parts").exists()
    # a rerun with a larger num extends, keeping the old instances bit for bit
    recs_before = {r["index"]: r for r in nd.read_dataset(out)[0]}
    nd.generate_dataset(out, 10, **kw)
    recs = {r["index"]: r for r in nd.read_dataset(out)[0]}
    assert sorted(recs) == list(range(10))
    np.testing.assert_array_equal(recs[3]["v"], recs_before[3]["v"])
    rep = nd.validate_dataset(out, residual_tol=1.0, drift_tol=1.0)
    assert rep.duplicates == 0 and rep.nan_count == 0 and rep.convex_violations == 0


def test_partial_shard_does_not_corrupt(tmp_path):
    """A crash while a shard is written leaves only a hidden temp file, never a broken shard."""
    grid = np.linspace(0.7, 1.3, 11)
    rec = helpers.fake_worker((nd.instance_spec(0, 0, n_choices=(2,)), grid, 1.0, 1e-9))
    with pytest.raises(KeyError):
        nd.write_instances(tmp_path / "d.h5.parts" / "part-x.h5", [rec, {"index": 1}],
                           grid=grid, attrs={})
    assert list((tmp_path / "d.h5.parts").glob("*")) == []
    with pytest.raises(ValueError, match="not a readable HDF5"):
        (tmp_path / "bad.h5").write_bytes(b"garbage")
        nd.read_dataset(tmp_path / "bad.h5")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """24 real instances (GBM/Merton/Heston, N in {2, 3}) from the project's teacher."""
    out = tmp_path_factory.mktemp("neural") / "tiny.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nd.generate_dataset(out, 24, seed=7, backend="serial", n_choices=(2, 3))
    return out


def _tiny_cfg(data, out_dir, **train):
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    cfg.data.train = str(data)
    cfg.train.out_dir = str(out_dir)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_real_data_validates(tiny_data):
    rep = nd.validate_dataset(tiny_data)
    assert rep.instances == 24 and rep.duplicates == 0 and rep.convex_violations == 0
    # Gibbs kernels rebuilt from the stored potentials on rows with mass >= 1e-8: measured
    # 1.4e-5 at worst, on tail rows next to columns the teacher excluded (tiny mass, where the
    # product-reference formula and the teacher's pruned reference differ); bulk rows ~1e-9
    assert rep.max_recomputed_drift < 1e-4


def test_tiny_training_reduces_val_loss_and_resumes(tiny_data, tmp_path):
    from deepquant.neural.train import load_checkpoint, train

    cfg = _tiny_cfg(tiny_data, tmp_path / "run", max_steps=60, eval_every=30)
    res = train(cfg)
    first, last = res.history[0]["val_total"], res.best_val_loss
    assert last < 0.5 * first, (first, last)  # untrained -> trained: at least a factor 2
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 60 and state["version"]
    cfg2 = _tiny_cfg(tiny_data, tmp_path / "run", max_steps=90, eval_every=30)
    res2 = train(cfg2)
    assert res2.step == 90 and res2.history[0]["step"] == 0  # history carried over
    # a different architecture in the same folder is refused clearly
    cfg3 = _tiny_cfg(tiny_data, tmp_path / "run", max_steps=100)
    cfg3.model.d_model = 32
    with pytest.raises(ValueError, match="model config differs in.*d_model"):
        train(cfg3)


def test_checkpoint_roundtrip_and_errors(tiny_data, tmp_path):
    from deepquant.neural.train import export_checkpoint, load_model, train

    res = train(_tiny_cfg(tiny_data, tmp_path / "run", max_steps=10, eval_every=10))
    assert res.step == 10
    exp = export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "exp")
    m1, _ = load_model(tmp_path / "run" / "best.pt")
    m2, meta = load_model(exp)
    w = torch.as_tensor(nd.read_dataset(tiny_data)[0][0]["weights"], dtype=torch.float32)[None]
    with torch.no_grad():
        np.testing.assert_array_equal(m1(w)[1].numpy(), m2(w)[1].numpy())  # same weights
    assert meta["format"] == "deepquant-neural-export-v1"
    # corrupt training checkpoint
    bad = tmp_path / "bad.pt"
    bad.write_bytes((tmp_path / "run" / "best.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        load_model(bad)
    # corrupt safetensors
    (exp / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        load_model(exp)
    # mismatched config (grid size) for valid weights
    export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "exp2")
    meta2 = json.loads((tmp_path / "exp2" / "config.json").read_text())
    meta2["model"]["d_model"] = 32
    (tmp_path / "exp2" / "config.json").write_text(json.dumps(meta2))
    with pytest.raises(ValueError, match="does not match its model config"):
        load_model(tmp_path / "exp2")
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    from deepquant.neural.train import export_checkpoint, train

    d = tmp_path_factory.mktemp("ckpt")
    train(_tiny_cfg(tiny_data, d / "run", max_steps=40, eval_every=20))
    return export_checkpoint(d / "run" / "best.pt", d / "exp")


def test_pure_neural_and_ood_fallback(tiny_data, tiny_checkpoint):
    from deepquant.market.marginals import Marginals
    from deepquant.neural.pricer import NeuralGridWarning, NeuralPricer
    from deepquant.payoffs import AsianCall

    recs, grid, _ = nd.read_dataset(tiny_data)
    r = recs[0]
    marg = Marginals(grid, r["weights"])
    pricer = NeuralPricer(tiny_checkpoint, ood_drift=10.0, ood_marginal_error=10.0)
    pure = pricer.solve(marg)
    assert pure.mode == "neural" and pure.kernels.shape == (r["n_periods"], 150, 150)
    np.testing.assert_allclose(pure.kernels.sum(-1), 1.0, atol=1e-12)  # rows are laws
    # projected (default): exact martingale rows whatever the network (1-D row solve to 1e-13)
    assert pure.projected and pure.drift <= 1e-12
    raw = NeuralPricer(tiny_checkpoint, ood_drift=10.0, ood_marginal_error=10.0,
                       project=False).solve(marg)
    both = NeuralPricer(tiny_checkpoint, ood_drift=10.0, ood_marginal_error=10.0,
                        raw_residuals=True).solve(marg)
    assert np.isnan(pure.neural_drift)                 # not measured by default
    assert not raw.projected and raw.neural_drift == both.neural_drift == raw.drift
    np.testing.assert_array_equal(both.kernels, pure.kernels)
    np.testing.assert_allclose(raw.v, pure.v)        # the same network potentials v
    with pytest.raises(ValueError, match="project must be a bool"):
        NeuralPricer(tiny_checkpoint, project="yes")
    with pytest.raises(TypeError, match="hybrid"):            # removed (1.31x the cold solve)
        pricer.solve(marg, hybrid=True)
    price = pure.price(AsianCall(strike=1.0))
    assert 0.0 < price < 0.2
    assert pricer.price(marg, AsianCall(strike=1.0)) == price
    # OOD: a threshold no neural answer can meet (the projected kernels are exact martingales,
    # but their column sums carry the network's error) -> classical fallback, said so
    strict = NeuralPricer(tiny_checkpoint, ood_marginal_error=1e-12)
    fb = strict.solve(marg)
    assert fb.mode == "classical" and fb.fallback and "out of distribution" in fb.message
    assert fb.success and fb.drift <= 1e-9 and fb.marginal_error <= 1e-9  # classical tol
    assert fb.nit > 0 and fb.polish_seconds > 0
    assert 0.0 < fb.price(AsianCall(strike=1.0)) < 0.2
    # another grid: regridded onto the model grid with a warning
    fine = np.linspace(grid[0], grid[-1], 299)
    w_fine = np.vstack([np.interp(fine, grid, row) for row in r["weights"]])
    w_fine[:, 1:-1] = 0
    w_fine[:, ::2] = np.vstack([row for row in r["weights"]])  # grid is every other fine point
    m_fine = Marginals(fine, w_fine)
    with pytest.warns(NeuralGridWarning, match="moved onto the model"):
        sol = pricer.solve(m_fine)
    np.testing.assert_allclose(sol.marginals.weights, r["weights"], atol=1e-12)


def test_cli_generate_validate_train_evaluate(tmp_path, tiny_checkpoint):
    from click.testing import CliRunner

    from deepquant.cli import main

    runner = CliRunner()
    out = tmp_path / "cli.h5"
    r = runner.invoke(main, ["generate", "--num", "6", "--out", str(out), "--backend", "serial",
                             "--n-choices", "2", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["validate-data", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["instances"] == 6
    r = runner.invoke(main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--test", str(out),
                             "--max-instances", "3", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    fams = [row["family"] for row in rep["families"]]
    assert fams == ["gbm", "merton", "heston", "all"]
    assert all(row["max_drift"] <= 1e-12 for row in rep["families"])   # exact rows
    assert all(r["classical_drift"] <= 1e-9 for r in rep["instances"])
    assert not any("hybrid" in key for row in rep["families"] for key in row)
    r = runner.invoke(main, ["evaluate", "--test", str(out), "--hybrid"])
    assert r.exit_code == 2 and "No such option" in r.output
    r = runner.invoke(main, ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--data",
                             str(tmp_path / "missing.h5"), "--out-dir", str(tmp_path / "run")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_shipped_checkpoint_projected_prices_near_classical():
    """The shipped network on fresh short instances (seed 1, never in training): with exact
    row multipliers the ATM Asian price is within 3% of the classical calibrated price (measured
    0.1-1.1% on these; docs/benchmarks-neural.md), and the chain is an exact martingale."""
    from deepquant.mmot.augment import build_chain, expectation
    from deepquant.mmot.entropic import solve_entropic
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.payoffs import AsianCall

    pricer = NeuralPricer(fallback=False)
    for index in (9, 10, 13):                      # GBM, Merton, Merton with N = 3
        spec = nd.instance_spec(index, seed=1)
        assert spec.n_periods == 3
        marg = nd.build_marginals(spec, pricer.grid)
        sol = pricer.solve(marg)
        assert sol.mode == "neural" and sol.drift <= 1e-12
        classical = solve_entropic(marg, 1.0, tol=1e-9)
        chain = build_chain(marg, AsianCall(strike=1.0))
        p_cl = expectation(chain, classical.kernels, law0=marg.weights[0])
        assert abs(sol.price(AsianCall(strike=1.0)) - p_cl) <= 0.03 * p_cl


def test_call_increment_features():
    """in_features=3: (C_{t+1} - C_t) / s_t is zero at the last real date and on padded dates,
    and integrates over k to exactly 1/2 for any martingale increment: int C(k) dk =
    E[(X - lo)^2] / 2, so int (C_{t+1} - C_t) dk = (Var_{t+1} - Var_t) / 2 = s_t / 2."""
    import torch

    from deepquant.market.synthetic import gbm_marginals
    from deepquant.neural.model import marginal_features

    grid = nd.model_grid()
    m = gbm_marginals([0.0, 0.1, 0.2, 0.3], grid=grid, sigma=0.2)
    w = torch.zeros((1, 6, grid.size), dtype=torch.float64)
    w[0, :4] = torch.as_tensor(np.array(m.weights))         # 4 real dates, 2 padded
    g = torch.as_tensor(grid)
    f = marginal_features(w, g, 3)
    assert f.shape == (1, 6, 3, grid.size)
    inc = f[0, :, 2]
    assert torch.all(inc[3:] == 0)                           # last real date and padding
    step = float(grid[1] - grid[0])
    # integral over k of dC/dVar = 1/2 exactly for any martingale increment (int C dk is
    # E[(X - lo)^2] / 2 up to terms linear in the mean); tolerance 1%: grid truncation
    np.testing.assert_allclose((inc[:3].sum(-1) * step).numpy(), 0.5, rtol=1e-2)
    f2 = marginal_features(w, g, 2)
    assert torch.equal(f2, f[:, :, :2])                      # the old features are unchanged


def test_gap_finetuning_on_unlabelled_instances(tiny_data, tiny_checkpoint, tmp_path):
    """Fine-tuning from a checkpoint (train.init_from) with the teacher-free dual-gap loss on
    unlabelled instances: the validation reports the exact path-law KL (labelled validation
    file), training resumes, and bad combinations are refused with a clear error."""
    from deepquant.neural.train import load_model, train

    cfg = _tiny_cfg(tiny_data, tmp_path / "ft", max_steps=6, eval_every=3, lambda_dist=0.0,
                    lambda_gap=1.0, lambda_hcons=1.0, gap_periods=1, lr=1e-5,
                    init_from=str(tiny_checkpoint))
    cfg.data.unlabelled = 8
    cfg.data.val = str(tiny_data)
    init, _ = load_model(tiny_checkpoint)
    res = train(cfg)
    first = res.history[0]
    assert res.step == 6 and res.n_train > 8                       # labelled + unlabelled
    assert 0 <= first["val_sqrt_kl"] <= np.sqrt(first["val_kl"]) + 1e-12       # Jensen
    # step 0 evaluates the initial weights: the same as the checkpoint's, scales included
    model, _ = load_model(tmp_path / "ft" / "last.pt")
    assert float(model.v_scale) == float(init.v_scale)
    cfg.train.max_steps = 9
    assert train(cfg).step == 9                                     # resumed from last.pt
    bad = _tiny_cfg(tiny_data, tmp_path / "bad", max_steps=2)
    bad.data.unlabelled = 4
    with pytest.raises(ValueError, match="unlabelled instances carry no teacher"):
        train(bad)
    other = _tiny_cfg(tiny_data, tmp_path / "other", max_steps=2, lambda_gap=1.0,
                      init_from=str(tiny_checkpoint))
    other.model.d_model = 32
    with pytest.raises(ValueError, match="init_from"):
        train(other)
    with pytest.raises(ValueError, match="gap_weighting"):
        load_config(REPO / "configs" / "tiny.yaml", **{"train.gap_weighting": "sqrt"})


def test_finetuning_on_a_mix_of_files_from_the_cli(tiny_data, tiny_checkpoint, tmp_path):
    """`deepquant train --init CKPT --data A --data B`: fine-tuning starts from the checkpoint's
    weights (step 0 evaluates them) on the two files read as one set, restricted to
    data.families; files that cannot be read as one set are refused with a clear error."""
    from click.testing import CliRunner

    from deepquant.cli import main
    from deepquant.neural.dataset_io import read_datasets, write_instances
    from deepquant.neural.train import load_checkpoint, load_model

    recs, grid, attrs = nd.read_dataset(tiny_data)
    other = tmp_path / "other.h5"
    write_instances(other, recs[:12], grid=grid, attrs={**attrs, "seed": 8})
    both, grid2, merged = read_datasets([str(tiny_data), str(other)])
    assert len(both) == len(recs) + 12 and np.array_equal(grid2, grid)
    assert merged["seed"] == "7;8" and merged["eps"] == attrs["eps"]     # differing: joined
    assert {r["source"] for r in both} == {str(tiny_data), str(other)}
    assert read_datasets(str(tiny_data))[2] == attrs                      # one file: as before
    write_instances(tmp_path / "eps.h5", recs[:2], grid=grid, attrs={**attrs, "eps": 0.5})
    with pytest.raises(ValueError, match="eps"):
        read_datasets([str(tiny_data), str(tmp_path / "eps.h5")])
    write_instances(tmp_path / "grid.h5", recs[:2], grid=grid * 1.01, attrs=attrs)
    with pytest.raises(ValueError, match="another grid"):
        read_datasets([str(tiny_data), str(tmp_path / "grid.h5")])

    cfg_path = tmp_path / "ft.yaml"
    cfg_path.write_text((REPO / "configs" / "tiny.yaml").read_text().replace(
        "  val_fraction: 0.25", "  val_fraction: 0.25\n  families: [gbm, heston]"))
    out = tmp_path / "ft"
    r = CliRunner().invoke(main, ["train", "--config", str(cfg_path), "--data", str(tiny_data),
                                  "--data", str(other), "--init", str(tiny_checkpoint),
                                  "--out-dir", str(out), "--max-steps", "4", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    # 24 + 12 instances, the Merton third (index % 3 == 1) dropped: 12 GBM + 12 Heston kept,
    # a quarter of each family to validation (3 + 3; 9 if Merton had stayed)
    assert summary["step"] == 4 and summary["n_val"] == 6
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["data"]["train"] == [str(tiny_data), str(other)]
    assert state["config"]["train"]["init_from"] == str(tiny_checkpoint)
    assert state["data_attrs"]["files"] == f"{tiny_data};{other}"
    assert state["data_attrs"]["families"] == "gbm,heston"          # what was trained on
    # started from the checkpoint: its output scales, not ones fitted to the data
    init, _ = load_model(tiny_checkpoint)
    assert float(load_model(out / "last.pt")[0].v_scale) == float(init.v_scale)
    r = CliRunner().invoke(main, ["train", "--config", str(cfg_path), "--init",
                                  str(tmp_path / "nope"), "--data", str(tiny_data),
                                  "--out-dir", str(tmp_path / "ft2"), "--max-steps", "2"])
    assert r.exit_code != 0 and "does not exist" in r.output
    with pytest.raises(ValueError, match="data.families"):
        load_config(cfg_path, **{"data.families": ["gbm", "bsde"]})


def test_refit_head_lowers_its_objective_and_changes_only_the_v_head(tiny_data, tiny_checkpoint,
                                                                   tmp_path):
    from click.testing import CliRunner

    from deepquant.cli import main
    from deepquant.neural.pricer import NeuralPricer
    from deepquant.neural.refit import refit_head
    from deepquant.neural.train import load_model

    res = refit_head(tiny_checkpoint, tiny_data, tmp_path / "refit", iterations=30, threads=1)
    # CG on the ridge-regularised quadratic never increases it, so the metric alone falls too
    assert res.objective_end < res.objective_start and res.periods > 0
    before, _ = load_model(tiny_checkpoint)
    after, meta = load_model(tmp_path / "refit")
    changed = {k for k, v in after.state_dict().items()
               if not torch.equal(v, before.state_dict()[k])}
    assert changed == {"u_head.weight", "u_head.bias"}
    assert meta["extra"]["refit"]["metric"] == "call"
    assert NeuralPricer(tmp_path / "refit").grid.size == 150        # loads as a checkpoint
    for bad, match in (({"metric": "l2"}, "metric must be one of"),
                       ({"per_instance": 0}, "per_instance"),
                       ({"ridge": -1.0}, "ridge")):
        with pytest.raises(ValueError, match=match):
            refit_head(tiny_checkpoint, tiny_data, tmp_path / "bad", **bad)
    r = CliRunner().invoke(main, ["refit-head", "--checkpoint", str(tiny_checkpoint), "--data",
                                  str(tiny_data), "--out", str(tmp_path / "cli"), "--metric",
                                  "kl", "--iterations", "5", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["metric"] == "kl"


class TestTrainResult(ResultProtocol):
    result_type = TrainResult
    nit = True

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls, tiny_data, tmp_path_factory):
        from deepquant.neural.train import train

        out = tmp_path_factory.mktemp("protocol") / "run"
        return train(_tiny_cfg(tiny_data, out, max_steps=4, eval_every=2))


class TestRefitResult(ResultProtocol):
    result_type = RefitResult
    nit = True

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls, tiny_data, tiny_checkpoint, tmp_path_factory):
        from deepquant.neural.refit import refit_head

        out = tmp_path_factory.mktemp("protocol") / "refit"
        return refit_head(tiny_checkpoint, tiny_data, out, iterations=3, threads=1)


def test_cli_train_prints_steps_between_evaluations(tiny_data, tmp_path, monkeypatch):
    """Only the evaluations printed a line (every eval_every steps: minutes apart on the shipped
    configs); a step line now comes at most every PLAIN_PROGRESS_SECONDS (0 here: every step)."""
    from click.testing import CliRunner

    from deepquant.cli import main

    monkeypatch.setattr("deepquant.cli.output.PLAIN_PROGRESS_SECONDS", 0.0)
    r = CliRunner().invoke(main, ["train", "--config", str(REPO / "configs" / "tiny.yaml"),
                                  "--data", str(tiny_data), "--out-dir", str(tmp_path / "run"),
                                  "--max-steps", "3"])
    assert r.exit_code == 0, r.output
    steps = re.findall(r"^step +(\d)/3  loss \S+$", r.stderr, re.M)
    assert steps == ["1", "2", "3"], r.stderr
