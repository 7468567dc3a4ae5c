"""Patches to Django, asgiref and the interpreter, each kept for a measured gain; CHAT_TUNING=0 serves stock Django.

The app (chat/) never imports this package and is correct without it: CI runs the whole suite once with
CHAT_TUNING=0. Each module opens with what it changes in the framework, the gain it was measured to bring and
the command that measures it, and tests/tuning/ shows the stock behaviour it works around, so each can be
deleted the day a release fixes what it works around:

- handler.py: Django's ASGIHandler without the reference cycles it leaves behind every request;
- threads.py: a request's sync work on a pooled thread instead of two new threads per request;
- middleware.py: Django's MiddlewareMixin classes in one thread hop per request half, request_started in it;
- door.py: a reply-starting POST past capacity refused before Django's handler;
- collector.py: start-up objects frozen and the cycle collector's thresholds raised;
- switch_interval.py: sys.setswitchinterval from CHAT_SWITCH_INTERVAL (off by default).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings

from chat.streaming.relay import stream_started
from project.tuning import collector, door, middleware, switch_interval, threads
from project.tuning.handler import Handler

WHITENOISE = "whitenoise.middleware.WhiteNoiseMiddleware"


def handler_with(chain: list[str]) -> Handler:
    """A handler over another middleware chain (Django builds the chain when the handler is made)."""
    full = settings.MIDDLEWARE
    settings.MIDDLEWARE = chain
    try:
        return Handler()
    finally:
        settings.MIDDLEWARE = full


def application() -> Any:
    """The tuned ASGI application; call after django.setup()."""
    # WhiteNoise is sync-only: with it in the chain every request, streams included, runs its middleware in
    # a new thread and hops back to the event loop for the async view. It only ever answers STATIC_URL, so
    # every other path goes to a handler without it, whose Django middleware run in one hop per request half,
    # with request_started's receivers in the first group's hop; the static handler never uses the database.
    static = Handler()
    dynamic = handler_with(
        middleware.regroup(
            [name for name in settings.MIDDLEWARE if name != WHITENOISE],
            on_start=middleware.take_over_request_started(),
        )
    )
    # Idle request threads kept for the next requests: about as many as can use the database at once.
    pool = threads.ThreadPool(keep=max(settings.DATABASE_POOL_SIZE, 8))
    stream_started.connect(threads.give_back_request_thread, dispatch_uid="tuning.threads")
    static_prefix = "/" + settings.STATIC_URL.lstrip("/") if not settings.STATIC_URL.startswith("http") else "\0"

    async def tuned(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(static_prefix):
            return await static(scope, receive, send)
        if (busy := door.refused(scope)) is not None:
            return await dynamic.send_response(busy, send)
        # Django's handler finds this context already set and keeps it: a pooled thread for the request.
        executor = threads.RequestExecutor(pool)
        try:
            async with ThreadSensitiveContext(executor=executor):
                return await dynamic(scope, receive, send)
        finally:
            executor.release()

    return tuned


def after_start() -> None:
    """The interpreter's settings, last at start-up (the collector freezes everything made so far)."""
    collector.tune()
    switch_interval.tune()
