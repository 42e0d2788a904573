"""One executor interface for every batch job (dataset generation, ensembles, batch pricing).

``get_executor(backend)`` returns an ``Executor`` with two methods:

* ``map(fn, items)`` -> list of results in the order of ``items``;
* ``as_completed(fn, items)`` -> iterator of ``(index, result)`` as each task finishes, so a
  caller can persist finished work at once (resumable jobs).

Backends: ``"serial"`` (in-process; for debugging and tiny jobs), ``"local"`` (a process pool,
the default) and ``"ray"``: ``backend="ray"`` or ``"auto"`` starts or joins a Ray runtime,
``backend="ray://host:port"`` or ``"host:port"`` connects to a cluster. Ray is imported only when
asked for. Every backend calls ``fn(item)`` on each item and returns identical results for
deterministic ``fn`` (tested).

Workers run with one BLAS thread each (DESIGN §7: on 2 cores, 2 OpenBLAS threads per process
made small dense linear algebra many times slower). Local pool workers exit within
``_PARENT_POLL_S`` seconds when their parent process dies (even by SIGKILL), so no orphan is
left behind.
"""

from __future__ import annotations

import itertools
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Executor", "SerialExecutor", "LocalExecutor", "RayExecutor", "get_executor"]


class Executor(Protocol):
    """What every backend offers."""

    n_workers: int

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]: ...

    def as_completed(
        self, fn: Callable[[Any], Any], items: Iterable[Any]
    ) -> Iterator[tuple[int, Any]]: ...


_PARENT_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """A daemon thread of a pool worker: exit the worker as soon as its parent is gone (a
    SIGKILLed parent cannot shut its pool down, and the worker would otherwise wait on the
    pipe for ever, re-parented to init)."""
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(_PARENT_POLL_S)

    threading.Thread(target=watch, name="deepquant-parent-watchdog", daemon=True).start()


def _single_thread_init(parent: int | None = None) -> None:
    if parent is not None:
        if os.getppid() != parent:   # the parent died before this worker started
            os._exit(1)
        _exit_with_parent(parent)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # pragma: no cover - threadpoolctl is a dependency; never fatal
        pass


def _collect(pairs: Iterator[tuple[int, Any]], n: int) -> list[Any]:
    out: list[Any] = [None] * n
    for i, r in pairs:
        out[i] = r
    return out


@dataclass
class SerialExecutor:
    """Runs tasks one after another in this process."""

    n_workers: int = 1

    def as_completed(self, fn, items):
        for i, item in enumerate(items):
            yield i, fn(item)

    def map(self, fn, items):
        items = list(items)
        return _collect(self.as_completed(fn, items), len(items))


@dataclass
class LocalExecutor:
    """A pool of local processes (``concurrent.futures.ProcessPoolExecutor``).

    At most ``2 * n_workers`` tasks are in flight at once, so a long job submits lazily and an
    interrupted job loses only the tasks in flight. The pool never starts more processes than
    there are tasks in the first round (a fork start method starts them all at once: a large
    ``n_workers`` for a few tasks would fork that many processes).
    """

    n_workers: int = 0

    def __post_init__(self) -> None:
        if self.n_workers < 0:
            raise ValueError(f"n_workers must be >= 0 (0 = all cores), got {self.n_workers}")
        if self.n_workers == 0:
            self.n_workers = max(1, os.cpu_count() or 1)

    def as_completed(self, fn, items):
        it = iter(enumerate(items))
        first = list(itertools.islice(it, 2 * self.n_workers))
        if not first:
            return
        with ProcessPoolExecutor(min(self.n_workers, len(first)),
                                 initializer=_single_thread_init,
                                 initargs=(os.getpid(),)) as pool:
            pending = {pool.submit(fn, item): i for i, item in first}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    yield i, fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending[pool.submit(fn, nxt[1])] = nxt[0]

    def map(self, fn, items):
        items = list(items)
        return _collect(self.as_completed(fn, items), len(items))


def _check_ray_address(address: str, timeout: float) -> None:
    """Fail fast unless a gRPC server answers at a Ray address ("ray://host:port" or
    "host:port"), within ``timeout`` seconds in all.

    Both a cluster's GCS and the Ray Client server speak gRPC (HTTP/2), which answers a new
    connection with its settings at once. A port that accepts the connection and then stays
    silent (not Ray, or a host that is stuck) would keep ``ray.init`` in its own retries for
    minutes; ``ray.init`` has no overall timeout. The gRPC check is skipped where Ray uses TLS
    (``RAY_USE_TLS``) and when grpcio (a Ray dependency) is missing."""
    import socket
    import time

    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"backend must be a Ray address 'host:port' or 'ray://host:port', got "
                         f"{address!r}")
    start = time.monotonic()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(f"no Ray cluster at backend address {address!r}: {host}:{port} did "
                         f"not accept a connection within {timeout:g} s ({exc})") from exc
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio comes with Ray
        return
    channel = grpc.insecure_channel(hostport)
    try:
        grpc.channel_ready_future(channel).result(
            timeout=max(timeout - (time.monotonic() - start), 0.1))
    except grpc.FutureTimeoutError:
        raise ValueError(f"no Ray cluster at backend address {address!r}: {host}:{port} "
                         f"accepted a connection but did not answer as a gRPC server (Ray) "
                         f"within {timeout:g} s") from None
    finally:
        channel.close()


def _ray_call(fn, item):  # module level so Ray can pickle it by reference
    _single_thread_init()
    return fn(item)


@dataclass
class RayExecutor:
    """Tasks on a Ray runtime: a local one (``address="local"``, or ``"auto"`` to join a running
    cluster and else start one) or a cluster at ``address``.

    ``num_cpus`` limits a runtime this executor starts itself (ignored when joining a cluster).
    ``connect_timeout``: seconds to wait for the cluster's port to answer (a connection, then
    a gRPC handshake) before a ``ValueError`` naming the address (Ray itself retries a dead or
    silent address for minutes).
    """

    address: str = "local"
    num_cpus: int | None = None
    n_workers: int = 0
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValueError(
                "backend 'ray' needs Ray: pip install 'deepquant-mmot[distributed]'"
            ) from exc
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                      "include_dashboard": False}
            if self.address == "local":
                kwargs["num_cpus"] = self.num_cpus
            elif self.address == "auto":
                try:
                    ray.init(address="auto", **kwargs)
                except (ConnectionError, RuntimeError):
                    ray.init(num_cpus=self.num_cpus, **kwargs)
                kwargs = {}
            else:
                _check_ray_address(self.address, self.connect_timeout)
                kwargs["address"] = self.address
            if kwargs:
                try:
                    ray.init(**kwargs)
                except (ConnectionError, TimeoutError, OSError) as exc:
                    raise RuntimeError(f"cannot connect to the Ray cluster at "
                                       f"{self.address!r}: {exc}") from exc
        self.n_workers = int(ray.cluster_resources().get("CPU", 1))
        self._remote = ray.remote(num_cpus=1)(_ray_call)

    def as_completed(self, fn, items):
        ray = self._ray
        fn_ref = ray.put(fn)
        it = iter(enumerate(items))
        pending: dict = {}
        for i, item in it:
            pending[self._remote.remote(fn_ref, item)] = i
            if len(pending) >= 2 * self.n_workers:
                break
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                yield i, ray.get(ref)
                nxt = next(it, None)
                if nxt is not None:
                    pending[self._remote.remote(fn_ref, nxt[1])] = nxt[0]

    def map(self, fn, items):
        items = list(items)
        return _collect(self.as_completed(fn, items), len(items))

    def shutdown(self) -> None:
        """Stop the Ray runtime of this process."""
        self._ray.shutdown()


def get_executor(backend: str | None = "local", *, n_workers: int = 0,
                 num_cpus: int | None = None) -> Executor:
    """Executor for ``backend``: ``"serial"``, ``"local"`` (default), ``"ray"``/``"auto"`` or a
    Ray address (``"ray://host:10001"``, ``"host:6379"``).

    ``n_workers`` sizes the local pool (0 = all cores; another backend would ignore it, so
    there it must be 0); ``num_cpus`` sizes a Ray runtime that this call starts.
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, numbers.Integral) \
            or n_workers < 0:
        raise ValueError(f"n_workers must be an integer >= 0 (0 = all cores), got {n_workers!r}")
    if n_workers and backend not in (None, "local"):
        raise ValueError(f"n_workers sizes the local process pool (backend 'local'); backend "
                         f"{backend!r} would ignore it, got n_workers={n_workers}")
    if backend is None or backend == "local":
        return LocalExecutor(n_workers)
    if backend == "serial":
        return SerialExecutor()
    if backend == "ray":
        return RayExecutor("local", num_cpus=num_cpus)
    if backend == "auto" or backend.startswith("ray://") or ":" in backend:
        return RayExecutor(backend, num_cpus=num_cpus)
    raise ValueError(
        f"backend must be 'serial', 'local', 'ray', 'auto' or a Ray address, got {backend!r}"
    )


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Split ``items`` into consecutive chunks of at most ``size`` (batches for the executors)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
