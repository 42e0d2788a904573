"""The forked second process of ``deepquant.mmot.beside``: answers, failures and time-outs."""

from __future__ import annotations

import os
import time

import pytest

from deepquant.mmot.beside import Beside, fork_available

pytestmark = pytest.mark.skipif(not fork_available(), reason="no fork on this platform")


def test_the_child_answers_with_what_it_computed_from_the_parents_memory():
    data = list(range(1000))  # inherited by the fork, not sent
    with Beside(lambda: (sum(data), os.getpid())) as child:
        answered, (total, pid) = child.result(30.0)
    assert answered and total == 499500 and pid != os.getpid()


def test_a_failure_in_the_child_is_raised_in_the_parent():
    def fail():
        raise ValueError("bad pass")

    with Beside(fail) as child, pytest.raises(RuntimeError, match="ValueError: bad pass"):
        child.result(30.0)


def test_a_child_late_past_the_timeout_is_stopped_and_gives_no_answer():
    with Beside(lambda: time.sleep(60)) as child:
        t0 = time.perf_counter()
        answered, value = child.result(0.2)
        waited = time.perf_counter() - t0
        assert not answered and value is None
        assert not child._proc.is_alive()  # stopped, not left running
    assert waited < 10.0


def test_an_interrupt_in_the_parent_stops_the_child():
    # Ctrl-C reaches the parent (the child ignores SIGINT): leaving the block stops the child
    with pytest.raises(KeyboardInterrupt), Beside(lambda: time.sleep(60)) as child:
        proc = child._proc
        raise KeyboardInterrupt
    assert not proc.is_alive()


def test_no_second_process_is_no_answer_with_the_reason(monkeypatch):
    # the system refuses the fork (process or memory limits): no exception, an answer at once
    # that there is none, and the reason for the caller's report
    import multiprocessing.process

    def refuse(self):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    with Beside(lambda: 1) as child:
        t0 = time.perf_counter()
        assert child.result(30.0) == (False, None)
        assert time.perf_counter() - t0 < 1.0
    assert child.status == "no second process (BlockingIOError: [Errno 11] Resource " \
        "temporarily unavailable)"  # errno 11 is EAGAIN, raised as its subclass
