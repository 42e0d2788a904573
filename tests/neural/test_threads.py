"""torch threads under ``OMP_NUM_THREADS=1``: the library warns, the command line sets the
passive OpenMP wait policy before torch loads (``deepquant.neural.threads``). On a busy 2-core
machine two torch threads took 250-389 ms per ``NeuralPricer.solve`` without it, 6-13 ms with it
(docs/robustness.md, "Fifth pass")."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")

import deepquant  # noqa: E402
from deepquant.neural.pricer import NeuralPricer  # noqa: E402

SRC = str(Path(deepquant.__file__).parents[1])   # the checkout under test


@pytest.mark.parametrize("threads, env, warned", [
    (2, {"OMP_NUM_THREADS": "1"}, True),
    (2, {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}, False),
    (2, {}, False),
    (1, {"OMP_NUM_THREADS": "1"}, False),
])
def test_neural_pricer_warns_when_its_threads_would_spin(monkeypatch, threads, env, warned):
    import torch

    before = torch.get_num_threads()
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            NeuralPricer(threads=threads)
    finally:
        torch.set_num_threads(before)
    spin = [w for w in caught if issubclass(w.category, RuntimeWarning)
            and "OMP_WAIT_POLICY=PASSIVE" in str(w.message)]
    assert bool(spin) == warned
    if warned:
        assert str(spin[0].message).startswith("threads=2 torch threads with OMP_NUM_THREADS=1")


@pytest.mark.parametrize("env, policy", [
    ({"OMP_NUM_THREADS": "1"}, "PASSIVE"),           # set before torch loads
    ({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),   # the user's kept
    ({}, None),                                       # no pin to one thread: left alone
])
def test_the_command_line_sets_the_passive_policy_before_torch(tmp_path, env, policy):
    code = ("import os, sys; from deepquant.cli import main; "
            "main(['marginals', '--grid-size', '5', '--out', sys.argv[1]], "
            "standalone_mode=False); "
            "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                             "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.npz")],
                         env={**base, "PYTHONPATH": SRC, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", str(policy)]


def test_a_million_torch_threads_are_refused_by_name():
    # fifth pass: NeuralPricer(threads=10**6) started a million OpenMP threads, and the next
    # shared library failed to map ("failed to map segment from shared object")
    from click.testing import CliRunner

    from deepquant.cli import main
    from deepquant.neural.threads import max_torch_threads

    with pytest.raises(ValueError, match=r"threads must be at most MAX_THREADS_PER_CORE x "
                                         rf"cores = 8 x \d+ = {max_torch_threads()}, "
                                         r"got 1000000"):
        NeuralPricer(threads=10**6)
    res = CliRunner().invoke(main, ["sweep", "--strike", "1", "--num", "2", "--periods", "2",
                                    "--no-classical", "--threads", "1000000"])
    assert res.exit_code == 2
    assert f"'--threads': 1000000 is not in the range 1<=x<={max_torch_threads()}" in res.output
