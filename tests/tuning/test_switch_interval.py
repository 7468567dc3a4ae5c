"""The switch interval (project/tuning/switch_interval.py): a thread that wants the GIL waits out the busy
thread's interval, and the knob sets it."""

from __future__ import annotations

import statistics
import sys
import threading
import time

import pytest

from project.tuning import switch_interval


def gil_waits(*, rounds: int) -> list[float]:
    """How long a thread whose sleep has ended waits for the GIL while the main thread runs pure Python."""
    waits: list[float] = []
    done = threading.Event()

    def sleeper() -> None:
        for _ in range(rounds):
            asked = time.perf_counter()
            time.sleep(0.0005)  # releases the GIL; wants it back after half a millisecond
            waits.append(time.perf_counter() - asked - 0.0005)
        done.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    while not done.is_set():  # the event loop busy with other streams' tokens, in miniature
        sum(range(200))
    thread.join()
    return waits


@pytest.fixture
def restore_interval() -> object:
    before = sys.getswitchinterval()
    yield before
    sys.setswitchinterval(before)


def test_a_thread_with_its_answer_waits_out_the_busy_threads_switch_interval(restore_interval: object) -> None:
    sys.setswitchinterval(0.005)  # Python's default
    # A lower bound: the waiting thread cannot take the GIL before the interval has passed, however busy the host.
    assert statistics.median(gil_waits(rounds=20)) >= 0.004


def test_the_knob_sets_the_interval_and_zero_leaves_pythons(settings, restore_interval: object) -> None:
    sys.setswitchinterval(0.005)
    settings.CHAT_SWITCH_INTERVAL = 0
    switch_interval.tune()
    assert sys.getswitchinterval() == pytest.approx(0.005)
    settings.CHAT_SWITCH_INTERVAL = 0.001
    switch_interval.tune()
    assert sys.getswitchinterval() == pytest.approx(0.001)
