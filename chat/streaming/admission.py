"""Past capacity, a worker refuses new replies at once (503 with Retry-After) rather than slow every stream.

One process carries a bounded number of streams (bench/RESULTS.md: its capacity). Beyond it requests
queue, the first token comes seconds late for everyone, and requests end as timeouts. Measured, the queue
forms at the database pool rather than in the event loop (C=500: 331 requests waiting for a connection
while the loop ran 0.07 s late; docs/decisions/0013). Three signals say "full", all checked before a reply is
stored and before the session is read (admission_middleware, on the event loop), never for a reply
already accepted:

- the event loop's lag: how late a timer fires, measured here every PROBE_SECONDS; above
  CHAT_MAX_LAG seconds each new reply would only add to the queue every stream is waiting in;
- the database pool's queue: how long a new request would wait for a connection, from the requests
  waiting and the rate the pool hands connections out (PoolQueue); above CHAT_MAX_DB_WAIT seconds
  (by default the pool's own timeout) a new reply would end as a timeout after that wait anyway;
- CHAT_MAX_STREAMS: a cap on the replies this worker writes at once, for an operator who has
  measured the capacity of the machine (0: no cap).

A request that waits longer than DATABASE_POOL_TIMEOUT for a database connection is answered the
same way (DatabaseBusyMiddleware) instead of with a 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.template.loader import render_to_string
from django.urls import Resolver404, resolve
from django.utils.decorators import sync_and_async_middleware

from chat.costs.limits import Refusal
from chat.csp import with_policy
from chat.streaming import live

logger = logging.getLogger(__name__)

PROBE_SECONDS = 0.1
# Each quiet probe lets the remembered lag fall by this factor: up at once, down over about a second,
# so one timer that happens to fire on time in a saturated loop does not open the door.
DECAY = 0.8
MAX_RETRY_AFTER = 30
BUSY = "streamchat is busy with other replies right now, so nothing was sent. Try again in {} s."


class Pressure:
    """How far behind this worker runs, in seconds (read from request threads too): its event loop's lag,
    and the wait for a database connection a request starting now can expect."""

    lag = 0.0
    db_wait = 0.0


class PoolQueue:
    """Little's law on psycopg-pool's counters: a newcomer waits about (requests waiting) / (hand-out rate).

    The rate is learnt only while requests wait at both ends of a probe, when it is the pool's capacity
    rather than the demand, and afresh for each queue: until a queue has lasted a probe nothing is
    estimated, so a cold start that briefly queues while the pool opens connections is not refused.
    A pool that hands out nothing while requests wait (a stuck database) estimates an unbounded wait.
    """

    SMOOTHING = 0.2  # weight of the newest rate sample: about half a second of memory at PROBE_SECONDS

    def __init__(self) -> None:
        self.served: int | None = None  # requests given a connection, at once or after waiting
        self.waiting = 0
        self.rate: float | None = None  # connections handed out per second while saturated

    def update(self, stats: dict[str, int], *, elapsed: float) -> float:
        """The expected wait in seconds for a request starting now, given the pool's stats `elapsed` s later."""
        waiting = stats.get("requests_waiting", 0)
        # A request that timed out left the queue without a connection: it is no measure of capacity.
        served = stats.get("requests_num", 0) - waiting - stats.get("requests_errors", 0)
        if self.served is not None and waiting and self.waiting and elapsed > 0:
            sample = max(served - self.served, 0) / elapsed
            self.rate = sample if self.rate is None else self.rate + self.SMOOTHING * (sample - self.rate)
        self.served, self.waiting = served, waiting
        if not waiting:
            # The queue drained: whatever slowed it (a stuck database) is over, so learn afresh next time.
            self.rate = None
            return 0.0
        if self.rate is None:
            return 0.0
        return waiting / self.rate if self.rate > 0 else math.inf


REPORT_EVERY = 10.0
MAX_DB_WAIT = 3600.0


async def measure_pressure() -> None:
    """This loop's probe of its lag and of the database pool's queue, started by lifecycle.ensure_upkeep
    with the worker's other background work."""
    loop = asyncio.get_running_loop()
    pool = database_pool()
    queue = PoolQueue()
    reported_at = float("-inf")
    while True:
        asked = loop.time()
        await asyncio.sleep(PROBE_SECONDS)
        now = loop.time()
        Pressure.lag = max(now - asked - PROBE_SECONDS, Pressure.lag * DECAY, 0.0)
        if pool is not None:
            expected = queue.update(pool.get_stats(), elapsed=now - asked)
            # No queue, no wait; a stuck pool's unbounded estimate is capped so that it can decay.
            Pressure.db_wait = max(min(expected, MAX_DB_WAIT), Pressure.db_wait * DECAY) if queue.waiting else 0.0
        if (Pressure.lag > 1 or queue.waiting) and now - reported_at >= REPORT_EVERY:
            # What an operator needs to see before users do: a worker running behind.
            reported_at = now
            logger.warning(
                "under pressure: event loop %.2f s late, %d requests waiting for a database connection "
                "(about %.1f s), %d replies",
                Pressure.lag,
                queue.waiting,
                Pressure.db_wait,
                len(live.owned),
            )


def database_pool() -> Any:
    """The process's psycopg pool (PostgreSQL with DATABASE_POOL_SIZE), or None."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    return wrapper.pool if wrapper.vendor == "postgresql" else None


def refusal() -> Refusal | None:
    """Why this worker takes no new reply now (status 503), or None when it has room."""
    max_streams = settings.CHAT_MAX_STREAMS
    if max_streams and len(live.owned) >= max_streams:
        return busy(retry_after=5)
    max_lag, lag = settings.CHAT_MAX_LAG, Pressure.lag
    if max_lag and lag > max_lag:
        # By then the queue the lag measures has drained, if no new work joined it.
        return busy(retry_after=math.ceil(lag))
    max_wait, wait = settings.CHAT_MAX_DB_WAIT, Pressure.db_wait
    if max_wait and wait > max_wait:
        return busy(retry_after=math.ceil(min(wait, MAX_RETRY_AFTER)))
    return None


def refuse_when_busy(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Marks a view that starts a reply: past capacity, project.asgi or admission_middleware refuses it."""
    view.starts_a_reply = True  # type: ignore[attr-defined]
    return view


@sync_and_async_middleware
def admission_middleware(get_response: Callable) -> Callable:
    """Refuses a POST to a view marked by refuse_when_busy when the worker is full, before every middleware
    but the CSP header's: on the event loop, so the answer does not wait for a thread among hundreds contending for
    the GIL, and before the session, the user or anything else has touched the database.

    Under daphne project.asgi makes the same check before Django's handler, whose request_started signal
    is already a hop to a thread (the 503s came back at C=1000 in p50 868 ms from here, 539 ms from
    there; 1.7 s at C=500 when the check sat on the view); this covers every other way in (the test
    client, WSGI)."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponseBase:
            return refused_at_the_door(request) or await get_response(request)

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        return refused_at_the_door(request) or get_response(request)

    return middleware


def refused_at_the_door(request: HttpRequest) -> HttpResponseBase | None:
    if request.method != "POST" or (refused := refusal()) is None:
        return None
    return refused_reply(request, refused)


def refused_reply(request: HttpRequest, refused: Refusal) -> HttpResponseBase | None:
    """The busy answer if this request is for a view that starts a reply, else None (let it through)."""
    try:
        view = resolve(request.path_info).func
    except Resolver404:
        return None
    if not getattr(view, "starts_a_reply", False):
        return None
    return with_security_headers(request, busy_response(request, refused))


def with_security_headers(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """The headers the middleware after the refusal would have added (HSTS, nosniff, Referrer-Policy,
    Cross-Origin-Opener-Policy, X-Frame-Options) and the Content-Security-Policy, which the refusal in
    project.asgi comes before too: a 503 is a page like any other."""
    # Made as Django makes them (they read their settings then); only their response half is called.
    for middleware in (SecurityMiddleware(_not_called), XFrameOptionsMiddleware(_not_called)):
        response = middleware.process_response(request, response)
    return with_policy(request, response)


def _not_called(request: HttpRequest) -> HttpResponseBase:
    raise AssertionError("only the response half of these middleware is used")


def busy_response(request: HttpRequest, refused: Refusal) -> HttpResponse:
    """The refusal next to the composer for htmx, whose box keeps the text; else a plain page."""
    if request.headers.get("HX-Request") != "true":
        return plain_response(refused)
    # No request in the context: a context processor could read the session.
    html = render_to_string("chat/conversation.html#page_notice", {"notice": refused.message})
    response = HttpResponse(html, status=refused.status, headers={"Retry-After": str(refused.retry_after)})
    response["HX-Retarget"], response["HX-Reswap"] = "#composer-status", "innerHTML"
    return response


def plain_response(refused: Refusal) -> HttpResponse:
    return HttpResponse(
        refused.message,
        status=refused.status,
        content_type="text/plain; charset=utf-8",
        headers={"Retry-After": str(refused.retry_after)},
    )


def busy(*, retry_after: int) -> Refusal:
    seconds = min(max(retry_after, 1), MAX_RETRY_AFTER)
    return Refusal(message=BUSY.format(seconds), retry_after=seconds, status=503)


class DatabaseBusyMiddleware:
    """A request that waited its full DATABASE_POOL_TIMEOUT for a database connection gets a 503 with
    Retry-After, logged as a warning, instead of a 500 with a traceback: the pool is busy, not broken."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if not waited_for_connection(exception):
            return None
        logger.warning("no database connection within %s s for %s", settings.DATABASE_POOL_TIMEOUT, request.path)
        # Plain, never retargeted at the composer: this may be any request, a background poll included.
        return plain_response(busy(retry_after=5))


def waited_for_connection(exception: BaseException) -> bool:
    try:
        from psycopg_pool import PoolTimeout
    except ImportError:  # no pool installed: nothing to wait for
        return False
    # Django wraps the driver's error in its own OperationalError; the pool's is its cause.
    return isinstance(exception, PoolTimeout) or isinstance(exception.__cause__, PoolTimeout)
