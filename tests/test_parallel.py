"""Executors: every backend returns the same results in the same order; Ray is started for real."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from deepquant.parallel import LocalExecutor, chunked, get_executor


def _task(seed: int) -> float:
    """A deterministic numerical task (module level, so every backend can pickle it)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((30, 30))
    return float(np.linalg.slogdet(a @ a.T + np.eye(30))[1])


ITEMS = list(range(12))
EXPECTED = [_task(i) for i in ITEMS]


@pytest.mark.parametrize("backend", ["serial", "local"])
def test_local_backends_match_in_process_results(backend):
    ex = get_executor(backend, n_workers=2 if backend == "local" else 0)
    assert ex.map(_task, ITEMS) == EXPECTED
    seen = dict(ex.as_completed(_task, ITEMS))
    assert [seen[i] for i in ITEMS] == EXPECTED


def _env(name: str) -> str | None:
    return os.environ.get(name)


def test_local_workers_run_single_threaded_blas():
    ex = LocalExecutor(2)
    assert ex.map(_env, ["OMP_NUM_THREADS"]) == ["1"]


@pytest.mark.ray
def test_ray_backend_matches_local():
    """Start a real local Ray runtime with 2 CPUs and run a small batch through it."""
    pytest.importorskip("ray")
    ex = get_executor("ray", num_cpus=2)
    try:
        assert ex.n_workers == 2
        assert ex.map(_task, ITEMS) == EXPECTED
    finally:
        ex.shutdown()


def test_bad_backend_and_arguments():
    with pytest.raises(ValueError, match="backend must be 'serial', 'local', 'ray'"):
        get_executor("threads")
    with pytest.raises(ValueError, match="n_workers must be >= 0"):
        LocalExecutor(-1)
    with pytest.raises(ValueError, match="size must be >= 1"):
        chunked([1, 2], 0)
    assert chunked(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def test_import_deepquant_does_not_import_torch_or_ray():
    code = ("import sys, deepquant, deepquant.cli, deepquant.payoffs, deepquant.parallel; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_task_is_deterministic():
    assert math.isfinite(EXPECTED[0]) and _task(0) == EXPECTED[0]


def test_unreachable_ray_address_fails_fast_naming_it():
    import socket
    import time

    with socket.socket() as s:       # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for addr in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=f"no Ray cluster at backend address '{addr}'"):
            get_executor(addr)
        assert time.perf_counter() - t0 < 15
    for bad in ("ray://nohost", "host:notaport"):
        with pytest.raises(ValueError, match="Ray address 'host:port'"):
            get_executor(bad)


def test_silent_ray_address_fails_within_the_connect_timeout(monkeypatch):
    """A port that accepts the connection but never answers (not a Ray server) is refused
    within ``connect_timeout``, before ``ray.init``, which has no overall timeout and retried
    such an address for minutes (over 150 s here); a gRPC server that answers passes."""
    import socket
    import time
    from concurrent import futures

    pytest.importorskip("ray")
    grpc = pytest.importorskip("grpc")
    from deepquant.parallel import RayExecutor, _check_ray_address

    calls = []
    monkeypatch.setattr("ray.init", lambda **kw: calls.append(kw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)  # the kernel accepts connections; nothing reads or answers
        port = s.getsockname()[1]
        for addr in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
            t0 = time.perf_counter()
            with pytest.raises(ValueError, match=f"no Ray cluster at backend address '{addr}': "
                               f"127.0.0.1:{port} accepted a connection but did not answer as "
                               r"a gRPC server \(Ray\) within 0.5 s"):
                RayExecutor(addr, connect_timeout=0.5)
            # the bound plus the start of a gRPC channel, with room for a loaded machine
            assert time.perf_counter() - t0 < 5
    assert calls == []
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _check_ray_address(f"127.0.0.1:{port}", 5.0)  # answers its handshake: no error
    finally:
        server.stop(None)


@pytest.mark.parametrize("kw, match", [
    (dict(backend="serial", n_workers=-1), "n_workers must be an integer >= 0"),
    (dict(backend="local", n_workers=2.5), "n_workers must be an integer >= 0"),
    # before: accepted, and the serial executor ignored the pool size without a word
    (dict(backend="serial", n_workers=2), "backend 'serial' would ignore it"),
])
def test_get_executor_checks_the_pool_size(kw, match):
    with pytest.raises(ValueError, match=match):
        get_executor(**kw)
