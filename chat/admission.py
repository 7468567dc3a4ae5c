"""Past capacity, a worker refuses new replies at once (503 with Retry-After) rather than slow every stream.

One process carries a bounded number of streams (bench/RESULTS.md: its capacity). Beyond it every
reply's tokens wait in the same event-loop queue, the first token comes seconds late for everyone,
and requests end as timeouts, or as 500s after waiting for a database connection. Two signals say
"full", both checked before a reply is stored, never for a reply already accepted:

- the event loop's lag: how late a timer fires, measured here every PROBE_SECONDS; above
  CHAT_MAX_LAG seconds each new reply would only add to the queue every stream is waiting in;
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
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from chat import live
from chat.limits import Refusal

logger = logging.getLogger(__name__)

PROBE_SECONDS = 0.1
# Each quiet probe lets the remembered lag fall by this factor: up at once, down over about a second,
# so one timer that happens to fire on time in a saturated loop does not open the door.
DECAY = 0.8
MAX_RETRY_AFTER = 30
BUSY = "streamchat is busy with other replies right now, so this message was not sent. Try again in {} s."


class Pressure:
    """How far behind this worker's event loop runs, in seconds (read from request threads too)."""

    lag = 0.0


_monitors: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def ensure_monitor() -> None:
    """Start this loop's lag probe once; called where a loop is running (the stream view)."""
    loop = asyncio.get_running_loop()
    task = _monitors.get(loop)
    if task is None or task.done():
        _monitors[loop] = loop.create_task(measure_lag(), name="streamchat-lag")


async def measure_lag() -> None:
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(PROBE_SECONDS)
        late = max(0.0, loop.time() - asked - PROBE_SECONDS)
        Pressure.lag = max(late, Pressure.lag * DECAY)


def refusal() -> Refusal | None:
    """Why this worker takes no new reply now (status 503), or None when it has room."""
    max_streams = settings.CHAT_MAX_STREAMS
    if max_streams and len(live.owned) >= max_streams:
        return busy(retry_after=5)
    max_lag, lag = settings.CHAT_MAX_LAG, Pressure.lag
    if max_lag and lag > max_lag:
        # By then the queue the lag measures has drained, if no new work joined it.
        return busy(retry_after=math.ceil(lag))
    return None


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
        refused = busy(retry_after=5)
        return HttpResponse(
            refused.message,
            status=503,
            content_type="text/plain; charset=utf-8",
            headers={"Retry-After": str(refused.retry_after)},
        )


def waited_for_connection(exception: BaseException) -> bool:
    try:
        from psycopg_pool import PoolTimeout
    except ImportError:  # no pool installed: nothing to wait for
        return False
    # Django wraps the driver's error in its own OperationalError; the pool's is its cause.
    return isinstance(exception, PoolTimeout) or isinstance(exception.__cause__, PoolTimeout)
