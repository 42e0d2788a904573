"""Ensembles of independent Bermudan runs with t-intervals, resumable (DESIGN §4, seed 004
§3.3).

``ensemble`` runs N independent pricings (seeds from ``SeedSequence.spawn``) through
``deepquant.parallel``; the midpoint of each run is (lower + upper)/2; the final price is the
mean of the midpoints, with 95% t-intervals (N - 1 degrees of freedom) for the midpoint, the
lower and the upper bound. A JSON state file makes an interrupted ensemble resumable.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from deepquant.atomic import ensure_writable
from deepquant.payoffs import Payoff
from deepquant.results import check_callback, result_dict, warn_failure
from deepquant.rough.engine import BermudanPricer, BermudanResult
from deepquant.rough.exercise import is_path_dependent, option_name
from deepquant.rough.qmc import RngLike, as_seed_sequence, t_interval
from deepquant.rough.rbergomi import RoughBergomi

__all__ = ["EnsembleResult", "ensemble"]


@dataclass(frozen=True)
class EnsembleResult:
    """Seed 004 §3.3 table over ``n_runs`` independent runs (95% t-intervals, n_runs - 1 dof).

    midpoint : mean of the runs' (lower + upper) / 2, with midpoint_ci
    lower, upper : means of the runs' bounds, with lower_ci, upper_ci
    runs : the individual ``BermudanResult`` objects
    seconds : wall time of the ensemble
    success : every run succeeded (``status`` "done", else "runs_failed"): none missed its
        target and none is ``crossed`` (an invalid bracket); message : one line naming the
        failed runs
    """

    midpoint: float
    midpoint_ci: tuple[float, float]
    lower: float
    lower_ci: tuple[float, float]
    upper: float
    upper_ci: tuple[float, float]
    n_runs: int
    seconds: float
    runs: list
    success: bool = True
    status: str = "done"
    message: str = ""

    @property
    def value(self) -> float:
        return self.midpoint

    def to_dict(self) -> dict:
        """JSON-safe fields, the runs through their ``to_dict``."""
        return result_dict(self)


def _ensemble_task(args) -> BermudanResult:  # module level: picklable for process pools/Ray
    pricer, model, payoff, seed = args
    return pricer(model, payoff, rng=seed)


def _spawned(root: np.random.SeedSequence, runs: int, chunk: int = 1024):
    """The seeds of ``root.spawn(runs)``, in the same order, spawned ``chunk`` at a time as they
    are taken (consecutive spawns continue the children's numbering, so the seeds are the same;
    all at once, 10^9 of them took minutes and gigabytes before the first run)."""
    for start in range(0, runs, chunk):
        yield from root.spawn(min(chunk, runs - start))


def _ensemble_fingerprint(pricer, model, payoff, runs, root) -> str:
    import hashlib

    key = (pricer, model, float(payoff.strike), option_name(payoff), int(runs), root.entropy,
           root.spawn_key)
    if is_path_dependent(payoff):
        key += (payoff,)
    key = repr(key)
    return hashlib.sha256(key.encode()).hexdigest()


def _load_resume(path, rng: RngLike) -> tuple[np.random.SeedSequence | None, dict]:
    """(root seed sequence, finished runs by index) from a resume file, or (None, {})."""
    import json

    try:
        path = ensure_writable(path)  # rewritten after every run: fail now, not after the first
    except ValueError as exc:
        raise ValueError(f"resume: {exc}") from None
    if not path.exists():
        return None, {}
    try:
        state = json.loads(path.read_text())
        entropy = state["entropy"]
        done = {int(k): BermudanResult.from_dict(v) for k, v in state["runs"].items()}
        fingerprint = state["fingerprint"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"resume file {str(path)!r} is not an ensemble state file ({exc})"
                         ) from exc
    root = as_seed_sequence(rng) if rng is not None else np.random.SeedSequence(entropy)
    return root, {"fingerprint": fingerprint, "runs": done}


def ensemble(model: RoughBergomi, strike: Payoff | float, *, runs: int = 10, option: str = "put",
             pricer: BermudanPricer | None = None, rng: RngLike = None,
             backend: str | None = "local", n_workers: int = 0,
             progress: Callable[[int, BermudanResult], None] | None = None,
             resume: str | None = None) -> EnsembleResult:
    """Run ``runs`` independent pricings (seeds from ``SeedSequence.spawn``) in parallel via
    ``deepquant.parallel.get_executor(backend)``; ``progress(done, result)`` after each run.

    ``resume``: a JSON state file, rewritten atomically after every finished run (the root seed
    entropy, a fingerprint of the configuration and the finished runs). Rerunning with the same
    file after an interruption keeps the finished runs and computes only the missing ones, with
    the same seeds (the stored entropy is used when ``rng`` is None); a file written for another
    configuration (pricer, model, strike, option, runs or seed) is a ``ValueError``.
    """
    from deepquant.parallel import get_executor

    if not isinstance(runs, int) or runs < 2:
        raise ValueError(f"runs must be an integer >= 2 for t-intervals, got {runs!r}")
    check_callback(progress, "progress")
    pricer = pricer or BermudanPricer()
    payoff = pricer.prepare_payoff(strike, option)  # validated before starting workers
    root, state = _load_resume(resume, rng) if resume is not None else (None, {})
    root = root if root is not None else as_seed_sequence(rng)
    fingerprint = _ensemble_fingerprint(pricer, model, payoff, runs, root)
    results: dict[int, BermudanResult] = {}   # finished runs by index (not a list of
    if state:                                  # `runs` entries: 10^9 would not start)
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"resume file {str(resume)!r} was written for another ensemble "
                             "configuration (pricer, model, strike, option, runs or seed); "
                             "delete it or pass another path")
        results.update((i, res) for i, res in state["runs"].items() if 0 <= i < runs)
    t0 = time.perf_counter()

    def save() -> None:
        if resume is None:
            return
        from deepquant.atomic import write_json

        entropy = root.entropy
        write_json(resume, {"fingerprint": fingerprint,
                            "entropy": entropy if isinstance(entropy, int) else list(entropy),
                            "runs": {str(i): asdict(results[i]) for i in sorted(results)}})

    done = len(results)
    if progress and done:
        progress(done, results[min(results)])
    if done < runs:
        executor = get_executor(backend, n_workers=n_workers)
        todo: list[int] = []   # the run index of each task, appended as the executor takes it

        def tasks():  # lazily, as deepquant.neural.data.generate_dataset makes its tasks
            for i, seed in enumerate(_spawned(root, runs)):
                if i not in results:
                    todo.append(i)
                    yield pricer, model, payoff, seed

        for j, res in executor.as_completed(_ensemble_task, tasks()):
            results[todo[j]] = res
            done += 1
            save()
            if progress:
                progress(done, res)
    save()
    ordered = [results[i] for i in range(runs)]
    lows = np.array([r.lower for r in ordered])
    ups = np.array([r.upper for r in ordered])
    mids = 0.5 * (lows + ups)

    def ci(x):
        m, _, hw = t_interval(x)
        return float(m), (float(m - hw), float(m + hw))

    mid, mid_ci = ci(mids)
    lo, lo_ci = ci(lows)
    up, up_ci = ci(ups)
    failed = [i for i, r in enumerate(ordered) if not r.success]
    crossed = [i for i, r in enumerate(ordered) if r.crossed]
    missed = [i for i in failed if i not in crossed]
    message = f"{runs} runs, 95% t-intervals ({runs - 1} degrees of freedom)"
    if missed:
        message = (f"{len(missed)} of {runs} runs missed their target (runs {missed}); the "
                   f"first: {ordered[missed[0]].message}")
    if crossed:   # the runs' own warnings stay in their worker processes
        message += (f"; {len(crossed)} of {runs} runs have an invalid bracket, the upper "
                    f"estimate below a lower bound of the price beyond sampling noise (runs "
                    f"{crossed}): their brackets are not to be trusted; the first: "
                    f"{ordered[crossed[0]].message}")
        warnings.warn(f"ensemble: {message}", RuntimeWarning, stacklevel=2)
    out = EnsembleResult(midpoint=mid, midpoint_ci=mid_ci, lower=lo, lower_ci=lo_ci, upper=up,
                         upper_ci=up_ci, n_runs=runs, seconds=time.perf_counter() - t0,
                         runs=ordered, success=not failed,
                         status="runs_failed" if failed else "done", message=message)
    if not crossed:   # a crossed ensemble has warned already (RuntimeWarning)
        warn_failure(out, "ensemble")
    return out
