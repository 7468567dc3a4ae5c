"""Worker start-up and upkeep: close replies a dead process left open, and keep our own marked alive."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from chat.costs import pricing
from chat.models import Message, Status
from chat.streaming import admission, control
from chat.streaming.live import Shutdown
from chat.streaming.providers.http import aclose_shared_client

logger = logging.getLogger(__name__)
_loop_tasks: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Task[None]] = {}


def interrupted_after() -> timedelta:
    return timedelta(seconds=settings.CHAT_INTERRUPTED_AFTER)


def on_worker_start() -> None:
    """Runs once when the ASGI application is imported, before the server accepts connections."""
    pricing.warm_up()
    install_drain_on_shutdown()
    try:
        swept = Message.sweep_interrupted(older_than=interrupted_after())
    except DatabaseError:
        # A first deploy can start the web process before `release: migrate` has run.
        logger.warning("start-up sweep skipped: the database is not ready")
        return
    finally:
        # This thread serves no request, so nothing else would ever close its connection: with a
        # pool, it would hold one of the pool's connections for the life of the worker.
        connection.close()
    if swept:
        logger.info("marked %d replies left streaming by a stopped worker as interrupted", swept)


def ensure_upkeep() -> None:
    """Start this loop's background tasks once: the upkeep of live rows and the probe of the loop's lag
    (chat.streaming.admission). Called on the event loop for each request by project.asgi: no ASGI server
    here has a start-up hook that runs in the loop, and admission must be measuring before the first send."""
    loop = asyncio.get_running_loop()
    for name, work in (("streamchat-upkeep", upkeep), ("streamchat-pressure", admission.measure_pressure)):
        task = _loop_tasks.get((loop, name))
        if task is None or task.done():
            _loop_tasks[loop, name] = loop.create_task(work(), name=name)


async def upkeep() -> None:
    # Renewing more often than the sweep threshold means a live reply in a quiet stretch (a model
    # thinking for a minute) is never mistaken for an orphan by another worker's sweep.
    interval = max(settings.CHAT_INTERRUPTED_AFTER / 3, 0.5)
    while True:
        await asyncio.sleep(interval)
        try:
            if ids := control.live_ids():
                await Message.objects.filter(pk__in=ids, status=Status.STREAMING).aupdate(checkpoint_at=timezone.now())
            swept = await Message.asweep_interrupted(older_than=interrupted_after(), keep=ids)
            if swept:
                logger.info("marked %d orphaned replies as interrupted", swept)
        except DatabaseError:
            logger.exception("upkeep failed; will try again")


def install_drain_on_shutdown() -> None:
    """Under daphne, SIGTERM stops the Twisted reactor; this runs first and the reactor waits for it."""
    if "twisted.internet.reactor" not in sys.modules:
        return  # not daphne (uvicorn, tests): no drain hook
    from twisted.internet import defer, reactor

    def before_shutdown() -> defer.Deferred:
        # Set at once, not in the coroutine: daphne cancels every open response right after this
        # returns, and those departing watchers must not be taken for users who closed their tab.
        Shutdown.requested = True
        # Let go of the port before the drain, not after: a new process restarted in place binds it
        # at once instead of failing while this one finishes its replies (README, Deploy).
        closed = stop_listening(reactor)
        logger.info(
            "shutting down: stopped listening on %d sockets, draining %d replies", closed, len(control.live_ids())
        )
        loop = asyncio.get_event_loop()
        return defer.Deferred.fromFuture(loop.create_task(drain_and_close()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)


def stop_listening(reactor: Any) -> int:
    """Close this process's listening sockets now; connections already open (the streams being
    drained) are left alone. daphne keeps its ports only as Deferreds in its Server, which the app
    cannot reach, so they are found among the reactor's readers: a listening socket is one."""
    from twisted.internet import tcp  # unix.Port is a tcp.Port too

    ports = [reader for reader in reactor.getReaders() if isinstance(reader, tcp.Port)]
    for port in ports:
        port.stopListening()  # the socket closes on the reactor's next turn, well before the drain ends
    return len(ports)


async def drain_and_close() -> None:
    await control.drain(grace=settings.CHAT_SHUTDOWN_GRACE)
    await aclose_shared_client()  # closes the upstream pool cleanly instead of leaving it to the GC
