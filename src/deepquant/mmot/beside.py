"""The inner value's path passes in a second process, beside the polish of the certificate.

On the user's own grid a certified side ends with three stages that share what is left of its
budget: the Markov chain's ascent (``markov_inner``), the passes whose kernels see the running
statistic (``path_inner``; the best inner values there) and the subgradient polish of the
outer bound (``polish``). The path passes and the polish are independent once the Markov chain
is known: the passes read the chain and the certified dual's values to go from before the
polish, and the polish needs a valid floor (the Markov chain's value on the same marginals)
but nothing from the passes. With ``workers=2`` the passes run in a forked child process while
the parent polishes, so each gets all of the time that is left instead of a share of it.
Once its passes are done the child polishes the same certificate as well, with targets below
the floor (``polish.REACH``: longer steps, better on some sides and worse on others; both
polishes take dilated steps, ``polish.DILATION``), and the tighter of the two certificates is
kept.

The child only computes and sends back the chains it found (values, errors and reports; the
arithmetic is that of the serial stages); the parent adopts them by the same rule
(``InnerSearch.adopt``). The parent waits for it at most ``GRACE_SECONDS`` past the deadline
and then stops it (the side keeps the Markov chain, and says so; likewise when no process can
start). Where ``fork`` is not available the stages run in turn, as with ``workers=1``.
"""

from __future__ import annotations

import multiprocessing
import signal
import time

import numpy as np

from deepquant.mmot.path_inner import classes_per_point

__all__ = ["GRACE_SECONDS", "Beside", "check_workers", "fork_available", "inner_beside_polish",
           "quote_inner_beside_polish"]

GRACE_SECONDS = 2.0
"""How long past the side's deadline the parent waits for the child's path passes (a pass
stops at its deadline but finishes the one-period LP it is in, about a second at 12 periods
of 150 points)."""


def check_workers(workers) -> None:
    """A ``ValueError`` naming ``workers`` unless it is the integer 1 or 2 (not a bool)."""
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) \
            or workers not in (1, 2):
        raise ValueError(f"workers must be 1 or 2, got {workers!r}")


def fork_available() -> bool:
    """Whether a child process can start as a copy of this one (``fork``: Linux and the other
    POSIX systems, not Windows). Only a fork starts fast enough for a side's budget: a fresh
    interpreter would import the library and load the compiled kernels again."""
    return "fork" in multiprocessing.get_all_start_methods()


def _child(fn, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the parent's to handle
    try:
        out = (True, fn())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        out = (False, f"{type(exc).__name__}: {exc}")
    try:
        conn.send(out)
    finally:
        conn.close()


class Beside:
    """``fn()`` run in a forked child process while the caller goes on; ``result`` collects
    its return value. A context manager: leaving it stops the child if it still runs. When no
    process can start (the system's process or memory limits), ``error`` says why and
    ``result`` answers at once that there is no answer."""

    def __init__(self, fn):
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(fn, send), daemon=True)
        self.error = None
        try:
            self._proc.start()
        except OSError as exc:
            self.error, self._proc = f"{type(exc).__name__}: {exc}", None
        finally:
            send.close()

    @property
    def status(self) -> str:
        """What a caller reports when ``result`` gave no answer."""
        return "no answer" if self.error is None else f"no second process ({self.error})"

    def result(self, timeout: float):
        """(True, value) when the child answered within ``timeout`` seconds, else (False,
        None); an exception in the child is raised here as a ``RuntimeError``."""
        try:
            if self._proc is None or not self._recv.poll(max(timeout, 0.0)):
                return False, None
            ok, value = self._recv.recv()
        except (EOFError, OSError):  # the child died without an answer
            return False, None
        finally:
            self.close()
        if not ok:
            raise RuntimeError(f"the process beside the polish failed: {value}")
        return True, value

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc.join()
        self._recv.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def inner_beside_polish(side, chain, marginals, sense: str, *, markov_seconds: float,
                        max_seconds: float, inner_resid_tol: float, rtol: float,
                        two_date: tuple | None = None, polish: bool = True):
    """``side`` with the inner value of ``markov_inner.adopt_markov_inner`` and the outer bound
    of ``polish.polish_side``, in ``max_seconds`` for both: the Markov chain's ascent first
    (``markov_seconds`` of it; its value is the polish's floor), then its path passes in a
    forked child process while this one polishes the certificate, each to the deadline; the
    child then polishes the same certificate with ``polish.REACH`` in what is left, and the
    tighter of the two polished bounds is kept (``info["polish"]["kept"]``).
    ``info["path"]["status"]`` says ``"no answer"`` when the child did not answer in time (or
    why no child could start: the side then keeps the Markov chain). ``two_date``: as in
    ``adopt_markov_inner``, after the Markov chain, in this process.

    ``polish=False`` says the certificate is final (the relaxation's optimum, which no polish
    moved in any run measured): where the passes run more than one round of classes
    (``path_inner.classes_per_point``: a remembered value's 4, then 32) the two processes then
    share the passes instead, the child the first round and this one the later ones, and
    neither polishes (``_shared_passes``). Measured on the forward-start straddle's upper side
    (Heston N = 5, M = 150, 10 s): the serial rounds took 3.9 s of the child's 3.9 s and the
    last pass, the best one, was cut in some runs (inner value 0.107505 instead of 0.107640)."""
    from deepquant.mmot.markov_inner import InnerSearch
    from deepquant.mmot.polish import REACH, polish_side

    t0 = time.perf_counter()

    def left():
        return max(max_seconds - (time.perf_counter() - t0), 0.0)

    opts = dict(inner_resid_tol=inner_resid_tol, rtol=rtol)
    search = InnerSearch(side, chain, marginals, sense)
    side = search.adopt(side, search.markov(min(markov_seconds, left())), **opts)
    if search.kernels is not None and two_date is not None and left() > 0:
        side = search.adopt(side, search.two_date(left(), *two_date), **opts)
    if side.status == "certified" or left() <= 0:
        return side
    if search.kernels is None:
        return polish_side(side, chain, marginals, sense, max_seconds=left(), **opts) \
            if polish else side
    rounds = classes_per_point(chain.kind)
    if not polish and len(rounds) > 1:
        return _shared_passes(search, side, rounds, left, opts)
    seconds = left()
    deadline = time.perf_counter() + seconds

    def passes_then_polish():
        found = search.path(seconds)
        rest = deadline - time.perf_counter()
        second = None if rest <= 0 else polish_side(side, chain, marginals, sense,
                                                    max_seconds=rest, reach=REACH, **opts)
        return found, search.info["path"], second

    with Beside(passes_then_polish) as child:
        polished = polish_side(side, chain, marginals, sense, max_seconds=seconds, **opts)
        answered, out = child.result(left() + GRACE_SECONDS)
    if answered:
        found, search.info["path"], second = out
        polished = _better_polish(polished, second, search.sign)
    else:
        found, search.info["path"] = [], dict(status=child.status, seconds=seconds, tried={},
                                              fits=False, adopted=False)
    return search.adopt(polished, found, **opts)


def _shared_passes(search, side, rounds: tuple, left, opts: dict):
    """``side`` with the best chain of the path passes, the first round of classes
    (``rounds[0]``) run in a forked child and the later rounds in this process, both to the
    deadline (``inner_beside_polish`` with ``polish=False``). ``info["path"]`` is the better
    round's report with every pass of both in ``tried`` (the later rounds' passes named
    "name, b classes", as in one serial search) and ``shared`` True."""
    seconds = left()
    with Beside(lambda: (search.path(seconds, buckets=rounds[:1]), search.info["path"])) \
            as child:
        found = search.path(seconds, buckets=rounds[1:])
        mine = search.info["path"]
        answered, out = child.result(left() + GRACE_SECONDS)
    theirs = out[1] if answered else dict(status=child.status, seconds=seconds, tried={},
                                          fits=False, adopted=False)
    found = found + (out[0] if answered else [])
    report = _merged_report(search.sign, theirs, mine)
    search.info["path"] = report
    return search.adopt(side, [(*f[:3], report) for f in found], **opts)


def _merged_report(sign: float, first: dict, later: dict) -> dict:
    """One report of the shared passes (``_shared_passes``): the better fitting round's (by
    ``sign`` times its value) with every pass of both in ``tried``, the later rounds' passes
    named "name, b classes" as in one serial search, and the longer time."""
    tried = dict(first["tried"])
    for key, entry in later["tried"].items():
        tried[key if "classes" in key else f"{key}, {entry['buckets']} classes"] = entry
    fitting = [r for r in (first, later) if r.get("fits")]
    best = max(fitting, key=lambda r: sign * r["value"]) if fitting else later
    return dict(best, tried=tried, shared=True, adopted=False,
                seconds=max(first["seconds"], later["seconds"]))


def _better_polish(first, second, sign: float):
    """The side of the tighter certificate of two polishes of one side (``second``: the
    child's, with ``polish.REACH``; None if it had no time), ``info["polish"]["kept"]`` naming
    it ("floor": the parent's, targets down to the floor; "reach": the child's) and the
    other's report in ``info["polish"]["other"]``. Both certificates come from the same exact
    sweep and check (``_Sweeper.certify``), the child's computed in its process."""
    import dataclasses

    if second is None or "polish" not in second.info:
        return first
    keep, other = (second, first) if sign * second.value < sign * first.value else (first,
                                                                                    second)
    report = dict(keep.info.get("polish", {}), kept="reach" if keep is second else "floor",
                  other=other.info.get("polish"))
    return dataclasses.replace(keep, info=dict(keep.info, polish=report))


def quote_inner_beside_polish(fine, prob, side: str, *, inner_seconds: float,
                              max_seconds: float, band_tol: float, rtol: float):
    """As ``inner_beside_polish`` for a side of the bounds from quotes
    (``quotes_bounds``): the Markov chain on laws inside the bands
    (``quote_inner.QuoteSearch.markov`` with ``inner_seconds``, the inner value's time of the
    serial stages, of which the ascent takes ``MARKOV_SHARE``) first, as the inner value and
    the floor of the positions' polish; then its path passes in a forked child process while
    this one polishes the positions (``quotes_bounds._polish_side``), each to the deadline.
    ``info["markov"]["path"]["status"]`` as in ``inner_beside_polish``."""
    from deepquant.mmot.quote_inner import QuoteSearch, adopt_quote_chain
    from deepquant.mmot.quotes_bounds import _polish_side

    t0 = time.perf_counter()

    def left():
        return max(max_seconds - (time.perf_counter() - t0), 0.0)

    tols = dict(band_tol=band_tol, rtol=rtol)
    search = QuoteSearch(prob, side, np.concatenate(fine.info["positions"]), band_tol)
    search.markov(min(inner_seconds, left()))
    fine = adopt_quote_chain(fine, prob, side,
                              search.result(seconds=time.perf_counter() - t0), **tols)
    if fine.status == "certified" or left() <= 0:
        return fine
    if search.res is None:
        return _polish_side(fine, prob, side, max_seconds=left(), **tols)
    seconds = left()
    with Beside(lambda: search.path(seconds)) as child:
        polished = _polish_side(fine, prob, side, max_seconds=seconds, **tols)
        answered, path = child.result(left() + GRACE_SECONDS)
    if not answered:
        path = (np.nan, None, np.inf, np.inf, dict(status=child.status, seconds=seconds,
                                                   tried={}, fits=False, adopted=False))
    mk = search.result(path, seconds=time.perf_counter() - t0)
    return adopt_quote_chain(polished, prob, side, mk, **tols)
