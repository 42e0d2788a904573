"""Bad inputs to the neural engine: each gets a clear error naming the argument or file, or a
documented fallback that says what happened (never a silent wrong answer, a traceback or an
orphan process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from deepquant.cli import main  # noqa: E402
from deepquant.market.marginals import Marginals  # noqa: E402
from deepquant.market.synthetic import gbm_marginals  # noqa: E402
from deepquant.mmot.model import CalibratedModel  # noqa: E402
from deepquant.neural import data as nd  # noqa: E402
from deepquant.neural.config import load_config  # noqa: E402
from deepquant.neural.pricer import NeuralPricer  # noqa: E402
from deepquant.payoffs import AsianCall  # noqa: E402
from tests.neural import helpers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pricer():
    return NeuralPricer()


def test_marginals_off_the_model_grid_fall_back_with_the_reason(pricer):
    """Marginals in price units (mean 7.5 on [3.75, 11.25]): the classical solver on the
    marginals as given, mode 'classical' and the reason; the price is the classical model's
    (1e-12: the same solver on the same input)."""
    m = gbm_marginals([0.0, 0.1, 0.2, 0.3], grid=np.linspace(0.5, 1.5, 61))
    m75 = Marginals(m.grid * 7.5, m.weights, m.times)
    sol = pricer.solve(m75)
    assert sol.mode == "classical" and sol.success
    assert "mean 7.5" in sol.message and "moneyness" in sol.message
    asian = AsianCall(strike=7.5)
    ref = CalibratedModel.calibrate(m75).price(asian)
    assert sol.price(asian) == pytest.approx(ref, abs=1e-12)
    assert ref == pytest.approx(7.5 * CalibratedModel.calibrate(m).price(AsianCall(strike=1.0)),
                                rel=1e-6)


def test_a_single_date_is_refused_by_name(pricer):
    """One date has no period to calibrate (found by fuzzing: numpy's 'zero-size array to
    reduction operation' before)."""
    one = gbm_marginals([0.0, 0.1], grid=pricer.grid)
    with pytest.raises(ValueError, match="marginals must have at least 2 dates.*got 1"):
        pricer.solve(Marginals(one.grid, one.weights[:1]))


def test_sweep_with_more_periods_than_the_model_is_refused(pricer, monkeypatch):
    """Found by fuzzing: every scenario fell back to a classical solve (--periods 1000 ran for
    minutes) in a command that prices with the neural model."""
    monkeypatch.setattr("deepquant.neural.pricer.NeuralPricer", lambda *a, **k: pricer)
    n = pricer.max_dates
    r = CliRunner().invoke(main, ["sweep", "--strike", "1", "--num", "2", "--periods", str(n),
                                  "--no-classical"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"--periods {n} exceeds the model's {n - 1} periods" in r.output, r.output


@pytest.mark.parametrize("strike", ["-1", "0"])
def test_sweep_refuses_a_strike_at_or_below_zero(pricer, monkeypatch, strike):
    """Strikes are in forward moneyness of a positive underlying: a call struck at or below 0
    is the linear forward, a put worth 0 (found by fuzzing: accepted without a word)."""
    monkeypatch.setattr("deepquant.neural.pricer.NeuralPricer", lambda *a, **k: pricer)
    r = CliRunner().invoke(main, ["sweep", "--strike", strike, "--num", "2", "--no-classical"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"Invalid value for '--strike': {float(strike)} is not in the range x>0" in r.output


def test_sweep_refuses_a_barrier_at_or_below_zero(pricer, monkeypatch):
    """An up barrier at or below 0 is crossed at once (the price is 0), a down one never: the
    same rule as ``--strike`` (priced without a word before)."""
    monkeypatch.setattr("deepquant.neural.pricer.NeuralPricer", lambda *a, **k: pricer)
    r = CliRunner().invoke(main, ["sweep", "--payoff", "up-and-out-call", "--strike", "1",
                                  "--barrier", "0", "--num", "2", "--no-classical"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Invalid value for '--barrier': 0.0 is not in the range x>0.0" in r.output


def test_sweep_refuses_a_num_beyond_the_memory(pricer, monkeypatch):
    """Every scenario's laws (and the calibrated ones) are kept: --num 10^9 on 10 periods would
    hold 2 x 11 x 150 x 8 bytes each, 26.4 TB (found by fuzzing: the bumps alone, 80 GB, were
    drawn first). Refused before a bump is drawn; a machine of 1 GB refuses 10^5 (2.64 GB)."""
    monkeypatch.setattr("deepquant.neural.pricer.NeuralPricer", lambda *a, **k: pricer)
    built = []
    monkeypatch.setattr("deepquant.neural.sweep.bumped_scenarios",
                        lambda *a: built.append(a) or [])
    assert pricer.grid.size == 150
    r = CliRunner().invoke(main, ["sweep", "--strike", "1", "--num", "1000000000"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "--num 1000000000 would hold 26.4 TB (2 x 11 dates x 150 grid points x 8 bytes " \
           "per scenario" in " ".join(r.output.split()), r.output
    monkeypatch.setattr("deepquant.cli.output.physical_memory", lambda: 10**9)
    r = CliRunner().invoke(main, ["sweep", "--strike", "1", "--num", "100000"])
    assert r.exit_code == 2 and "more than this machine's 1 GB of memory" in r.output, r.output
    assert built == []


def test_no_fallback_price_raises(pricer):
    strict = NeuralPricer(fallback=False)
    m = gbm_marginals([0.0, 0.1, 0.2], grid=np.linspace(0.5, 1.5, 61))
    m75 = Marginals(m.grid * 7.5, m.weights, m.times)
    sol = strict.solve(m75)
    assert not sol.success and "no fallback" in sol.message
    with pytest.raises(ValueError, match="cannot price.*mean 7.5.*fallback=True"):
        strict.price(m75, AsianCall(strike=7.5))
    with pytest.raises(ValueError, match="cannot price"):
        sol.price(AsianCall(strike=7.5))


def test_wider_grid_and_more_dates_fall_back_with_the_reason(pricer):
    wide = gbm_marginals([0.0, 0.25, 0.5], grid=np.linspace(0.2, 3.0, 120), sigma=0.6)
    sol = pricer.solve(wide)
    assert sol.mode == "classical" and sol.success
    assert "outside the model grid" in sol.message and "unequal" not in sol.message
    many = gbm_marginals(np.linspace(0.0, 0.5, pricer.max_dates + 2), grid=pricer.grid)
    sol = pricer.solve(many)
    assert sol.mode == "classical" and f"max_dates={pricer.max_dates}" in sol.message
    # a narrower grid inside the model's is moved onto it (mass and mean exact), with a warning
    narrow = gbm_marginals([0.0, 0.1, 0.2], grid=np.linspace(0.7, 1.4, 71))
    with pytest.warns(UserWarning, match="moved onto the model"):
        sol = pricer.solve(narrow)
    assert sol.mode == "neural" and sol.regridded


def _gen_kwargs(**kw):
    base = {"seed": 0, "grid": np.linspace(0.7, 1.3, 11), "backend": "serial", "chunk": 2,
            "worker": helpers.fake_worker, "n_choices": (2, 3)}
    base.update(kw)
    return base


@pytest.mark.parametrize("num", [-5, 0, 2.5, True])
def test_generate_rejects_bad_num(tmp_path, num):
    with pytest.raises(ValueError, match=f"num must be an integer >= 1, got {num!r}"):
        nd.generate_dataset(tmp_path / "d.h5", num, **_gen_kwargs())
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize("choices", [(0,), (), ("two",), (2, -1)])
def test_generate_rejects_bad_n_choices(tmp_path, choices):
    with pytest.raises(ValueError, match="n_choices must be a non-empty sequence of integers"):
        nd.generate_dataset(tmp_path / "d.h5", 2, **_gen_kwargs(n_choices=choices))


def test_generate_resume_with_other_settings_refuses(tmp_path):
    out = tmp_path / "d.h5"
    nd.generate_dataset(out, 3, **_gen_kwargs())
    with pytest.raises(ValueError, match=r"another n_choices \(file 2,3, requested 2,3,5\)"):
        nd.generate_dataset(out, 5, **_gen_kwargs(n_choices=(2, 3, 5)))
    with pytest.raises(ValueError, match=r"another tol \(file 1e-09, requested 1e-06\)"):
        nd.generate_dataset(out, 5, tol=1e-6, **_gen_kwargs())
    assert nd.read_dataset(out)[2]["n_choices"] == "2,3"
    # the shards of an interrupted run are checked too
    helpers.FAIL_AT.clear()
    helpers.FAIL_AT.add(1)
    try:
        with pytest.raises(RuntimeError):
            nd.generate_dataset(tmp_path / "e.h5", 4, **_gen_kwargs())
    finally:
        helpers.FAIL_AT.clear()
    with pytest.raises(ValueError, match="another n_choices"):
        nd.generate_dataset(tmp_path / "e.h5", 4, **_gen_kwargs(n_choices=(5,)))


def test_generate_checks_the_output_path_first(tmp_path):
    calls = []

    def worker(task):
        calls.append(task)
        return helpers.fake_worker(task)

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, msg in ((blocker / "d.h5", "output file: cannot write .* is a regular file"),
                     (tmp_path, "output file: cannot write .* it is a folder")):
        with pytest.raises(ValueError, match=msg):
            nd.generate_dataset(out, 2, **_gen_kwargs(worker=worker))
    assert calls == []
    # a folder that does not exist yet is created (it used to be refused, although the
    # writer creates it: the rule of deepquant.atomic.ensure_writable)
    out = tmp_path / "missing" / "deeper" / "d.h5"
    nd.generate_dataset(out, 2, **_gen_kwargs(worker=worker))
    assert out.exists() and len(calls) == 2


@pytest.mark.parametrize("args, msg", [
    (["--num", "-5"], "--num must be >= 1, got -5"),
    (["--n-choices", "two"], "--n-choices must be comma-separated integers"),
    (["--n-choices", "0"], "n_choices must be a non-empty sequence of integers >= 1"),
    # an L1 distance of two laws is at most 2: a tolerance of 2 or more is met by any plan
    (["--tol", "10"], "Invalid value for '--tol': 10.0 is not in the range 0<x<2"),
    (["--tol", "2"], "Invalid value for '--tol': 2.0 is not in the range 0<x<2"),
    # the network takes ModelConfig.max_dates = 64 dates (63 periods); train refused it later
    (["--n-choices", "2,64"], "--n-choices 2,64 has 64 periods, more than the model's 63 "
                              "(ModelConfig.max_dates = 64 dates)"),
    (["--n-choices", "1000"], "--n-choices 1000 has 1000 periods, more than the model's 63"),
])
def test_cli_generate_bad_options(tmp_path, args, msg):
    r = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "d.h5"), "--backend",
                                  "serial", "--num", "2", *args])
    assert r.exit_code == 2 and msg in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "d.h5").exists()


def test_cli_generate_and_train_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["generate", "--out", str(blocker / "d.h5"), "--num", "2",
                                  "--backend", "serial"])
    assert r.exit_code == 2 and "regular file" in r.output, r.output
    r = CliRunner().invoke(main, ["train", "--config", str(REPO / "configs" / "tiny.yaml"),
                                  "--out-dir", str(blocker / "run")])
    assert r.exit_code == 2 and "--out-dir" in r.output and "regular file" in r.output, r.output


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    """4 instances on the 150-point model grid from the numpy teacher of the test helpers."""
    out = tmp_path_factory.mktemp("bad") / "fake.h5"
    nd.generate_dataset(out, 4, **_gen_kwargs(grid=nd.model_grid(150), n_choices=(2,)))
    return out


def _corrupt(src: Path, dst: Path, how: str) -> Path:
    raw = bytearray(src.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # garble the first compressed chunk of the weights (the file's structure is intact)
        import h5py

        with h5py.File(src, "r") as f:
            info = f["weights"].id.get_chunk_info(0)
        start = info.byte_offset + 4
        junk = np.random.default_rng(0).integers(0, 256, info.size - 8, dtype=np.uint8)
        raw[start:start + junk.size] = junk.tobytes()
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("how", ["truncated", "block"])
def test_corrupted_data_file_one_line_error(fake_data, tmp_path, how):
    bad = _corrupt(fake_data, tmp_path / f"{how}.h5", how)
    with pytest.raises(ValueError, match=f"data file '{bad}'") as exc:
        nd.validate_dataset(bad)
    assert "\n" not in str(exc.value)
    r = CliRunner().invoke(main, ["validate-data", str(bad)])
    assert r.exit_code == 2 and str(bad) in r.output and "Traceback" not in r.output, r.output


def test_npy_and_npz_passed_as_data_file(tmp_path):
    npy = tmp_path / "w.npz"
    np.save(tmp_path / "w.npy", np.ones(3))
    (tmp_path / "w.npy").rename(npy)
    with pytest.raises(ValueError, match=f"data file '{npy}' is not a readable HDF5 file"):
        nd.read_dataset(npy)
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.ones(3))
    r = CliRunner().invoke(main, ["validate-data", str(npz)])
    assert r.exit_code == 2 and "not a readable HDF5 file" in r.output, r.output


def test_train_on_a_nan_weight_fails_clearly(fake_data, tmp_path):
    from deepquant.neural.train import train

    records, grid, attrs = nd.read_dataset(fake_data)
    records[2]["weights"] = records[2]["weights"].copy()
    records[2]["weights"][1, 70] = np.nan
    bad = nd.write_instances(tmp_path / "nan.h5", records, grid=grid, attrs=attrs)
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    cfg.data.train = str(bad)
    cfg.train.out_dir = str(tmp_path / "run")
    cfg.train.max_steps = 2
    with pytest.raises(ValueError, match=r"instance 2 has 1 non-finite weights"):
        train(cfg)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_evaluate_on_another_grid_size(tmp_path):
    out = tmp_path / "g50.h5"
    nd.generate_dataset(out, 1, **_gen_kwargs(grid=nd.model_grid(50), n_choices=(2,)))
    r = CliRunner().invoke(main, ["evaluate", "--test", str(out)])
    assert r.exit_code == 2 and "50-point grid" in r.output and "--grid-size 150" in r.output, \
        r.output


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_local_pool_worker_exits_when_its_parent_is_killed(tmp_path):
    """The parent runs a long task in a 1-worker local pool and is SIGKILLed; the worker must
    be gone within a few poll periods (0.5 s each), not left running under init."""
    pid_file = tmp_path / "worker.pid"
    script = textwrap.dedent(f"""
        import os, time
        from deepquant.parallel import LocalExecutor

        def task(_):
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(120)

        if __name__ == "__main__":
            list(LocalExecutor(1).as_completed(task, [0]))
    """)
    (tmp_path / "job.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"),
                                                        os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "job.py")], env=env)
    try:
        deadline = time.time() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _alive(worker):
            time.sleep(0.1)
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the pool worker outlived its SIGKILLed parent by 10 s")
    finally:
        if proc.poll() is None:
            proc.kill()



@pytest.mark.parametrize("size, lo, hi", [(1, 0.5, 2.0), (2, 0.5, 2.0), (150, 1.2, 2.0),
                                          (150, 0.5, float("nan")), (150.5, 0.5, 2.0)])
def test_model_grid_rejects_bad_sizes_and_ranges(size, lo, hi):
    # a 1-point grid divided by zero, a 2-point one was returned
    with pytest.raises(ValueError, match="grid"):
        nd.model_grid(size, lo, hi)


@pytest.mark.parametrize("threads", [0, -1, 2.5, "2"])
def test_threads_below_one_are_refused(threads):
    # torch raised a RuntimeError from set_num_threads
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        NeuralPricer(threads=threads)


@pytest.mark.parametrize("kw, msg", [(dict(residual_tol=float("nan")), "residual_tol"),
                                     (dict(drift_tol=-1.0), "drift_tol")])
def test_validate_dataset_rejects_tolerances_no_instance_can_fail(fake_data, kw, msg):
    # a NaN tolerance passed every instance ("ok")
    from deepquant.neural.dataset_io import validate_dataset

    with pytest.raises(ValueError, match=msg):
        validate_dataset(fake_data, **kw)


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_max_instances_zero_is_not_every_instance(fake_data, n):
    # 0 was read as "no limit" and every instance was used
    from deepquant.neural.evaluate import evaluate
    from deepquant.neural.refit import refit_head

    with pytest.raises(ValueError, match="max_instances"):
        evaluate(fake_data, max_instances=n)
    with pytest.raises(ValueError, match="max_instances"):
        refit_head(None, fake_data, "unused-out", max_instances=n)


@pytest.mark.parametrize("text", ["nan", ".nan", ".inf", "-1.0e-4", "0"])
def test_config_learning_rate_must_be_finite_and_positive(tmp_path, text):
    # `lr: nan` was accepted (YAML reads it as text, `.nan` as a float that passes `<= 0`)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"train:\n  lr: {text}\n")
    with pytest.raises(ValueError, match="train.lr must be"):
        load_config(cfg)


@pytest.mark.parametrize("value", ["no", "false", 0, None])
def test_fallback_must_be_a_bool(value):
    # fallback="no" was truthy: the classical fallback ran when it was refused
    with pytest.raises(ValueError, match="fallback must be a bool"):
        NeuralPricer(fallback=value)


def test_checkpoint_file_names_the_path_given(tmp_path):
    # a file was reported as a missing config.json beside it
    f = tmp_path / "weights.bin"
    f.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"weights\.bin.*is a file.*checkpoint is a folder"):
        NeuralPricer(f)


# --- found by fuzzing (docs/robustness.md, "Bad inputs: fuzzing") --------------------------

@pytest.mark.parametrize("section, key, value, msg", [
    # tracebacks before: ZeroDivisionError, IndexError, torch's RuntimeError / TypeError
    ("model", "n_heads", 0, "model.n_heads must be > 0, got 0"),
    ("model", "d_model", 0, "model.d_model must be > 0, got 0"),
    ("model", "n_layers", 0, "model.n_layers must be > 0, got 0"),
    ("model", "d_embed", -1, "model.d_embed must be > 0, got -1"),
    ("model", "conv_kernel", -3, "model.conv_kernel must be > 0, got -3"),
    ("model", "dropout", float("nan"), "model.dropout must be a finite number, got nan"),
    ("model", "dropout", 1.5, r"model.dropout must be in \[0, 1\), got 1.5"),
    ("model", "max_dates", 1, "model.max_dates must be >= 2"),
    ("train", "batch_size", 2.5, "train.batch_size must be an integer, got 2.5"),
    # accepted before, a training that means something else than asked
    ("train", "grad_clip", -1.0, "train.grad_clip must be >= 0"),   # flips the gradient
    ("train", "lambda_mart", -1.0, "train.lambda_mart must be >= 0"),  # rewards drift
    ("train", "lambda_h", -1.0, "train.lambda_h must be >= 0"),
    ("train", "h_units", 0.0, "train.h_units must be > 0"),
    ("train", "drift_scale", 0.0, "train.drift_scale must be > 0"),  # NaN loss at step 0
    ("train", "mass_floor", -1.0, "train.mass_floor must be >= 0"),
    ("train", "warmup_steps", -5, "train.warmup_steps must be >= 0"),
    ("train", "mart_periods", -1, "train.mart_periods must be >= 0"),
    ("train", "min_lr_ratio", 2.0, r"train.min_lr_ratio must be in \[0, 1\]"),
    ("train", "seed", -1, "train.seed must be >= 0"),
    ("train", "max_minutes", 0.0, "train.max_minutes must be > 0"),
    ("data", "max_instances", 0, "data.max_instances must be > 0, got 0"),  # read as "all"
    ("data", "unlabelled_seed", -1, "data.unlabelled_seed must be >= 0"),
])
def test_config_numbers_are_checked_by_name(section, key, value, msg):
    from deepquant.neural.config import Config

    with pytest.raises(ValueError, match=msg):
        Config.from_dict({section: {key: value}})


def test_config_defaults_and_shipped_configs_still_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)
    from deepquant.neural.config import Config

    cfg = Config.from_dict({"train": {"grad_clip": 0.0, "max_minutes": None}})
    assert cfg.train.grad_clip == 0.0  # 0 = no clipping


def test_train_creates_a_missing_output_folder(tmp_path, monkeypatch):
    """The default out_dir (runs/neural-tiny) in a fresh folder: refused before ("folder 'runs'
    does not exist") although training creates it; now the run goes on to read its data."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", "--config", str(REPO / "configs" / "tiny.yaml"),
                                  "--data", str(tmp_path / "missing.h5")])
    assert r.exit_code == 2 and "missing.h5" in r.output and "out_dir" not in r.output, r.output
    assert (tmp_path / "runs" / "neural-tiny").is_dir()


@pytest.mark.parametrize("args, option", [
    # before: NotADirectoryError traceback after the refit
    (["refit-head", "--data", "DATA", "--out", "BLOCK/x"], "--out"),
    (["evaluate", "--test", "DATA", "--lofo-train", "DATA", "--lofo-dir", "BLOCK/x"],
     "--lofo-dir"),
    (["train", "--config", "CONFIG", "--export", "BLOCK/x"], "--export"),
])
def test_output_folders_are_checked_before_the_work(fake_data, tmp_path, args, option):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    subst = {"DATA": str(fake_data), "CONFIG": str(REPO / "configs" / "tiny.yaml")}
    argv = [subst.get(a, a.replace("BLOCK", str(blocker))) for a in args]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2 and f"{option}: cannot write the folder" in r.output, r.output
    assert "is a regular file, not a folder" in r.output


def test_generate_starts_at_once_for_a_huge_num(tmp_path):
    """Tasks are made lazily: before, a list of every index and task was built first (minutes
    for 10^7, the memory for more) before the first instance."""
    calls = []

    class Stop(Exception):
        pass

    def worker(task):
        calls.append(task)
        raise Stop

    t0 = time.perf_counter()
    with pytest.raises(Stop):
        nd.generate_dataset(tmp_path / "d.h5", 10**7, **_gen_kwargs(worker=worker))
    assert len(calls) == 1 and time.perf_counter() - t0 < 5.0


def test_generate_unreachable_ray_cluster_is_one_line(tmp_path, monkeypatch):
    """A RuntimeError of the executor (a Ray address that does not answer) was a traceback."""
    import deepquant.parallel

    def unreachable(backend, **kw):
        raise RuntimeError(f"cannot connect to the Ray cluster at {backend!r}: timed out")

    monkeypatch.setattr(deepquant.parallel, "get_executor", unreachable)
    r = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "d.h5"), "--num", "1",
                                  "--backend", "10.0.0.1:6379", "--grid-size", "11"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "--backend 10.0.0.1:6379: cannot connect to the Ray cluster" in r.output


@pytest.mark.parametrize("kw, msg", [
    # before: accepted; a NaN mass floor leaves no row live, so the OOD guard's drift read 0
    (dict(mass_floor=float("nan")), "mass_floor must be a finite number >= 0, got nan"),
    (dict(mass_floor=-1.0), "mass_floor must be a finite number >= 0, got -1.0"),
    (dict(tol=0.0), "tol must be a finite number > 0, got 0.0"),
    (dict(tol=float("nan")), "tol must be a finite number > 0, got nan"),
])
def test_pricer_tolerance_and_mass_floor_are_checked(kw, msg):
    with pytest.raises(ValueError, match=msg):
        NeuralPricer(**kw)


@pytest.mark.parametrize("payoff", [None, 1.0, "asian-call"])
def test_price_refuses_a_payoff_that_is_not_one(pricer, payoff):
    """Found by the library fuzz (third pass): an AttributeError ('... has no attribute
    last_date') from inside the chain builder, after the solve; now the package's payoff
    TypeError, before it (``NeuralPricer.price``, ``NeuralSolution.price``, ``price_batch``)."""
    from deepquant.mmot.model import price_batch

    m = gbm_marginals([0.0, 0.1, 0.2], grid=pricer.grid)
    sol = pricer.solve(m)
    match = f"payoff must be a Payoff, got {type(payoff).__name__}"
    for call in (lambda: pricer.price(m, payoff), lambda: sol.price(payoff),
                 lambda: price_batch(m, sol.kernels, payoff)):
        with pytest.raises(TypeError, match=match):
            call()


@pytest.mark.parametrize("n_paths, rng, match", [
    # before (library fuzz, third pass): 0 gave an empty array, -1 numpy's "negative
    # dimensions", 2.5 and NaN "'float' object cannot be interpreted as an integer", 1.5 as a
    # seed numpy's "SeedSequence expects int" (none named the argument)
    (0, 0, "n_paths must be an integer >= 1, got 0"),
    (-1, 0, "n_paths must be an integer >= 1, got -1"),
    (2.5, 0, "n_paths must be an integer >= 1, got 2.5"),
    (float("nan"), 0, "n_paths must be an integer >= 1, got nan"),
    (10, 1.5, "rng must be an int, a numpy Generator, a SeedSequence or None, got 1.5"),
])
def test_solution_sample_refuses_bad_counts_and_seeds(pricer, n_paths, rng, match):
    sol = pricer.solve(gbm_marginals([0.0, 0.1, 0.2], grid=pricer.grid))
    with pytest.raises(ValueError, match=match):
        sol.sample(n_paths, rng=rng)
