"""jobs.label.background.InOrderWorker: the per-frame encoding thread of the job's actors."""
import threading
import time

import pytest

from jobs.label.background import InOrderWorker


def test_runs_every_call_in_order_off_the_calling_thread():
    seen, threads = [], set()

    def step(i, name):
        time.sleep(0.001 * (i % 3))  # uneven durations must not reorder
        seen.append((i, name))
        threads.add(threading.get_ident())

    with InOrderWorker(step, depth=3) as w:
        for i in range(50):
            w.submit(i, f"f{i}")
    assert seen == [(i, f"f{i}") for i in range(50)]
    assert threads and threading.get_ident() not in threads


def test_backlog_is_bounded_submit_waits():
    gate = threading.Event()
    started = []

    def step(i):
        started.append(i)
        gate.wait(5)

    w = InOrderWorker(step, depth=2)
    w.submit(0)  # running (blocked on the gate)
    w.submit(1)  # holds the second slot
    blocked = threading.Thread(target=w.submit, args=(2,))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "a third submit with depth 2 must wait for a free slot"
    gate.set()
    blocked.join(5)
    w.close()
    assert started == [0, 1, 2]


def test_first_error_is_raised_and_later_calls_do_not_run():
    ran = []

    def step(i):
        if i == 3:
            raise ValueError("bad frame 3")
        ran.append(i)

    with pytest.raises(ValueError, match="bad frame 3"):
        with InOrderWorker(step, depth=2) as w:
            for i in range(20):
                w.submit(i)
                time.sleep(0.002)
    assert ran == [0, 1, 2]


def test_leaving_with_an_error_joins_the_thread_before_cleanup():
    running = threading.Event()
    finished = []

    def step(i):
        running.set()
        time.sleep(0.2)
        finished.append(i)

    with pytest.raises(RuntimeError, match="model failed"):
        with InOrderWorker(step, depth=4) as w:
            w.submit(0)
            w.submit(1)  # queued: dropped
            running.wait(5)
            raise RuntimeError("model failed")
    assert finished == [0]  # the running call completed before the block was left; the queued one never ran


def test_depth_zero_runs_inline_and_negative_is_refused():
    seen = []
    with InOrderWorker(lambda i: seen.append((i, threading.get_ident())), depth=0) as w:
        w.submit(1)
        assert seen == [(1, threading.get_ident())]  # done before submit returned, on this thread
    with pytest.raises(ValueError):
        InOrderWorker(print, depth=-1)
