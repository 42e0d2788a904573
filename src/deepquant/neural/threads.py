"""torch's intra-op threads and OpenMP's wait policy (torch-free until a thread count is set).

torch runs its intra-op threads on OpenMP (libgomp). With ``OMP_NUM_THREADS=1`` in the
environment and more than one torch thread, libgomp's idle threads spin while they wait for
work, and on a machine whose other cores are busy the spinning thread and the working one share
a core. Measured (``NeuralPricer(threads=2).solve`` on 11 dates x 150 points, medians of 15
solves, three alternating rounds at load 2.3-2.8 on 2 cores; docs/robustness.md, "Fifth pass"):
250 / 250 / 255 ms per solve, against 4.1 / 4.5 / 4.5 ms with ``OMP_WAIT_POLICY=PASSIVE`` and
2.9 / 3.5 / 3.5 ms on one thread. libgomp reads the policy once, when torch loads it (``import
torch``), so it cannot be changed from Python afterwards: the library warns
(``set_torch_threads``), and the command line, which owns its process, sets the passive policy
before torch is imported (``prefer_passive_wait``).
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["MAX_THREADS_PER_CORE", "max_torch_threads", "prefer_passive_wait", "set_torch_threads", "spin_risk"]

MAX_THREADS_PER_CORE = 8
"""Most torch threads per core of the machine (``os.cpu_count()``) that ``set_torch_threads``
takes: more threads than cores only cost (the docstring of ``NeuralPricer``), the margin is for
configs written for larger machines. ``NeuralPricer(threads=10**6)`` started a million OpenMP
threads, and the next shared library then failed to map ("failed to map segment from shared
object")."""


def max_torch_threads() -> int:
    """``MAX_THREADS_PER_CORE`` times this machine's cores."""
    return MAX_THREADS_PER_CORE * (os.cpu_count() or 1)


def spin_risk(threads: int | None) -> bool:
    """Whether ``threads`` torch threads would spin on a busy core: more than one, with
    ``OMP_NUM_THREADS=1`` in the environment and no passive wait policy."""
    env = os.environ
    return (threads is not None and int(threads) > 1
            and env.get("OMP_NUM_THREADS", "").strip() == "1"
            and env.get("OMP_WAIT_POLICY", "").strip().lower() != "passive")


def set_torch_threads(threads: int, name: str = "threads") -> None:
    """``torch.set_num_threads(threads)``, with a ``RuntimeWarning`` naming ``name`` when
    ``spin_risk(threads)``; a ``ValueError`` beyond ``MAX_THREADS_PER_CORE`` per core."""
    import torch

    if int(threads) > max_torch_threads():
        raise ValueError(f"{name} must be at most MAX_THREADS_PER_CORE x cores = "
                         f"{MAX_THREADS_PER_CORE} x {os.cpu_count() or 1} = "
                         f"{max_torch_threads()}, got {threads!r}")
    if spin_risk(threads):
        warnings.warn(
            f"{name}={threads} torch threads with OMP_NUM_THREADS=1 and no "
            "OMP_WAIT_POLICY=PASSIVE in the environment: OpenMP's waiting threads spin, and on "
            "a busy machine a solve can take 50x longer (measured 250 ms against 4 ms); set "
            "OMP_WAIT_POLICY=PASSIVE before Python starts, or use 1 thread",
            RuntimeWarning, stacklevel=3)
    torch.set_num_threads(int(threads))


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in this process's environment when it pins OpenMP to
    one thread (``OMP_NUM_THREADS=1``), sets no policy and has not loaded torch yet: threads
    asked for explicitly (``--threads 2``) then sleep while they wait instead of spinning, and
    one thread is unaffected. For the command line, which owns its process; returns whether
    it set it."""
    env = os.environ
    if ("torch" in sys.modules or env.get("OMP_NUM_THREADS", "").strip() != "1"
            or "OMP_WAIT_POLICY" in env):
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
