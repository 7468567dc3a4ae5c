"""Request threads that outlive their request, as a WSGI server's do.

Under ASGI, Django's handler gives each request a ThreadSensitiveContext, and asgiref starts a new
thread for the first sync call in it (the request_started signal, at the latest) and a second one to
join the first when the request ends. Each new thread also builds a new DatabaseWrapper for its
thread-local connection, which with the thread is cyclic garbage once the request is over: three thread starts
a reply (tests/tuning/test_threads.py counts the stock server's and the tuned one's).

Here a request's sync work goes to a thread leased from a pool at its first sync call and given back
when the request ends, or earlier when it has nothing more for the database (a stream, once its
response starts). A thread keeps its DatabaseWrapper from request to request; its connection still goes back
to the pool at every request's end (request_finished, CONN_MAX_AGE=0), as under WSGI.

Measured (docs/decisions/), alternated three times with the commit before at C=100, 20 ms (`python -m bench
--servers daphne --concurrency 100,250 --intervals 20 --no-capacity --no-variants --no-reference --app-dir
<checkout>`): CPU per upstream event, medians, 203.9 -> 171.9 µs (0.84), added TTFT p50 101, 180, 37 ms ->
17, 145, 13 ms; and with streams giving their thread back (give_back_request_thread), 200 open streams kept
28 threads instead of 205 (the run recorded in commit a81080a).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import SyncToAsync


class ThreadPool:
    """Idle single-thread executors, at most `keep` of them."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.idle: list[ThreadPoolExecutor] = []
        self.started = 0  # threads made, for tests and the benchmark's curiosity

    def lease(self) -> ThreadPoolExecutor:
        try:
            return self.idle.pop()  # atomic: two loops (two test servers in one process) may share the pool
        except IndexError:
            pass
        self.started += 1
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor, *, busy: bool) -> None:
        # A thread still running a cancelled request's call would hold up the next request behind it.
        if busy or len(self.idle) >= self.keep:
            executor.shutdown(wait=False)
        else:
            self.idle.append(executor)


class RequestExecutor(Executor):
    """One request's thread-sensitive work: one pooled thread from the first call until release()."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self.leased: ThreadPoolExecutor | None = None
        self.last: Future[Any] | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self.leased is None:
            self.leased = self.pool.lease()
        self.last = self.leased.submit(fn, *args, **kwargs)
        return self.last

    def release(self) -> None:
        """Give the thread back; a later call leases one again (any one: call this only when the
        thread holds nothing the request still needs, such as an open transaction)."""
        leased, last, self.leased, self.last = self.leased, self.last, None, None
        if leased is not None:
            # One thread runs the calls in order, so the last one done means all are.
            self.pool.give_back(leased, busy=last is not None and not last.done())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.release()


def give_back_request_thread(**kwargs: object) -> None:
    """chat.streaming.relay.stream_started's receiver: the stream's sync work is done until its end (its
    request_finished signal leases a thread again), so its thread goes back to the pool for other requests.
    The relay sends the signal between hops only, when the response starts, after the last middleware's hop.

    Measured (docs/decisions/0016): with a thread held per open stream, 200 open streams kept 205 threads (28 without).
    """
    # asgiref (pinned) keeps each context's executor in a class-level map; a tuned request's is a RequestExecutor.
    context = SyncToAsync.thread_sensitive_context.get(None)
    executor = SyncToAsync.context_to_thread_executor.get(context) if context is not None else None
    if isinstance(executor, RequestExecutor):
        executor.release()
