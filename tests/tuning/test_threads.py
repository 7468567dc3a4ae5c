"""Request threads are pooled (project/tuning/threads.py): reused from request to request, never shared by two."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from project.tuning.threads import RequestExecutor, ThreadPool
from tests.conftest import ChatClient, skip_without_connection_pool
from tests.fake_upstream import Scenario


def thread_of(executor: RequestExecutor) -> int:
    return executor.submit(threading.get_ident).result(timeout=5)


def test_a_request_keeps_one_thread_and_the_next_request_gets_it_back() -> None:
    pool = ThreadPool(keep=4)
    first = RequestExecutor(pool)
    ident = thread_of(first)
    assert thread_of(first) == ident, "one request's calls run on one thread"
    first.release()
    second = RequestExecutor(pool)
    assert thread_of(second) == ident, "the next request reuses the idle thread"
    second.release()
    assert pool.started == 1


def test_two_requests_at_once_never_share_a_thread() -> None:
    pool = ThreadPool(keep=4)
    one, two = RequestExecutor(pool), RequestExecutor(pool)
    assert thread_of(one) != thread_of(two)
    one.release()
    two.release()
    assert len(pool.idle) == 2 and pool.started == 2


def test_a_thread_still_busy_with_a_left_request_is_not_handed_to_the_next() -> None:
    pool = ThreadPool(keep=4)
    left = RequestExecutor(pool)
    gate = threading.Event()
    busy_ident: Future[int] = left.submit(lambda: (gate.wait(5), threading.get_ident())[1])
    left.release()  # as when a cancelled request's call is still running in its thread
    try:
        following = RequestExecutor(pool)
        started = time.monotonic()
        ident = thread_of(following)
        assert time.monotonic() - started < 1, "the next request waited behind the busy thread"
    finally:
        gate.set()
    assert ident != busy_ident.result(timeout=5)
    following.release()
    assert len(pool.idle) == 1 and pool.started == 2, "the busy thread was shut down, not pooled"


def test_at_most_keep_idle_threads_stay() -> None:
    pool = ThreadPool(keep=2)
    executors = [RequestExecutor(pool) for _ in range(4)]
    for executor in executors:
        thread_of(executor)
    for executor in executors:
        executor.release()
    assert len(pool.idle) == 2


def test_a_released_request_leases_again_for_later_sync_work() -> None:
    # A stream gives its thread back after the claim; its request_finished signal still needs one.
    pool = ThreadPool(keep=1)
    stream, other = RequestExecutor(pool), RequestExecutor(pool)
    thread_of(stream)
    stream.release()
    taken = thread_of(other)  # another request now has the idle thread
    assert thread_of(stream) != taken
    stream.release()
    other.release()


def os_threads(pid: int) -> set[int]:
    return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}


class ThreadWatcher:
    """Every thread id a process shows while this runs: a request's thread lives for at least its request,
    much longer than the 1 ms between looks, so threads that come and go in between are seen too."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: set[int] = set()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while self.running:
            self.seen |= os_threads(self.pid)
            time.sleep(0.001)

    def __enter__(self) -> ThreadWatcher:
        self.seen = os_threads(self.pid)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def threads_started_by_replies(server_factory: Any, user: Any, sim: Any, *, tuning: str) -> int:
    """New OS threads in a warmed-up server while it serves eight replies (sixteen requests)."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counts the server's threads in /proc (Linux)")
    server = server_factory(CHAT_TUNING=tuning)
    chat = ChatClient(server, user)
    conversation = chat.conversation()
    try:
        for _ in range(3):  # warm up: the upstream pool, the checkpointer, the probes
            sim.enqueue(Scenario(tokens=3))
            assert chat.stream(chat.ask(conversation)).names()[-1] == "done"
        before = os_threads(server.process.pid)
        with ThreadWatcher(server.process.pid) as watcher:
            for _ in range(8):
                sim.enqueue(Scenario(tokens=3))
                assert chat.stream(chat.ask(conversation)).names()[-1] == "done"
        assert "Traceback" not in server.log()
        return len(watcher.seen - before)
    finally:
        chat.close()


@pytest.mark.django_db(transaction=True)
def test_stock_asgiref_starts_threads_for_every_request(server_factory: Any, user: Any, sim: Any) -> None:
    # Each request's first sync call starts a thread, and its end another to join it: what the pool works around.
    started = threads_started_by_replies(server_factory, user, sim, tuning="0")
    assert started >= 16, f"{started} new threads for 8 replies"


@pytest.mark.django_db(transaction=True)
def test_replies_in_a_row_start_no_new_threads_in_the_tuned_server(server_factory: Any, user: Any, sim: Any) -> None:
    started = threads_started_by_replies(server_factory, user, sim, tuning="1")
    assert started <= 1, f"{started} new threads for 8 replies"


@pytest.mark.django_db(transaction=True)
def test_open_streams_hold_no_database_connection(server_factory: Any, user: Any, sim: Any) -> None:
    """A stream gives its pooled thread and its connection back after the claim: more streams than the
    database pool has connections all run at once."""
    skip_without_connection_pool()
    server = server_factory(DATABASE_POOL_SIZE="2", DATABASE_POOL_TIMEOUT="3", CHAT_MAX_CONCURRENT_REPLIES="0")
    chat = ChatClient(server, user)
    replies = [chat.ask(chat.conversation(), f"question {i}") for i in range(5)]
    results: dict[int, Any] = {}
    try:
        for _ in replies:
            sim.enqueue(Scenario(tokens=20, interval=0.1))  # each stream stays open about 2 s
        readers = [threading.Thread(target=lambda r=r: results.update({r.pk: chat.stream(r)})) for r in replies]
        started = time.monotonic()
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=30)
        took = time.monotonic() - started
        assert [results[r.pk].names()[-1] for r in replies] == ["done"] * 5
        assert took < 6, f"five 2 s streams over two connections took {took:.1f} s: they queued"
        assert "Traceback" not in server.log()
    finally:
        chat.close()
