"""ASGI entry point: Django's handler, plus the start-up work a streaming worker needs."""

from __future__ import annotations

import gc
import io
import os
import sys
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does

from project.handler import Handler  # noqa: E402  (Django's handler, without its per-request cycles)

# Serves /static/ (WhiteNoise is in MIDDLEWARE).
django_application = Handler()

from asgiref.sync import ThreadSensitiveContext  # noqa: E402
from django.conf import settings  # noqa: E402  (configured by the line above)
from django.core.handlers.asgi import ASGIRequest  # noqa: E402

from chat.admission import refusal, refused_reply  # noqa: E402
from chat.lifecycle import ensure_upkeep, on_worker_start  # noqa: E402  (needs the app registry loaded above)
from project.middleware import regroup, take_over_request_started  # noqa: E402
from project.threads import RequestExecutor, ThreadPool  # noqa: E402

WHITENOISE = "whitenoise.middleware.WhiteNoiseMiddleware"


def application_with(middleware: list[str]) -> Any:
    """The same Django application with another middleware chain (the chain is built when it is made)."""
    full = settings.MIDDLEWARE
    settings.MIDDLEWARE = middleware
    try:
        return Handler()
    finally:
        settings.MIDDLEWARE = full


# WhiteNoise is sync-only: with it in the chain every request, streams included, runs its middleware in
# a new thread and hops back to the event loop for the async view. It only ever answers STATIC_URL, so
# every other path goes to an app without it, whose Django middleware run in one thread hop per request
# half rather than two per middleware (project/middleware.py).
# request_started's receivers run in the first group's hop too; the static app's requests never use the database.
_dynamic = application_with(
    regroup([name for name in settings.MIDDLEWARE if name != WHITENOISE], on_start=take_over_request_started())
)
# Idle request threads kept for the next requests: about as many as can use the database at once.
_threads = ThreadPool(keep=max(settings.DATABASE_POOL_SIZE, 8))
_static_prefix = "/" + settings.STATIC_URL.lstrip("/") if not settings.STATIC_URL.startswith("http") else "\0"


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and not scope["path"].startswith(_static_prefix):
        # From the first request on (daphne has no start-up hook that runs in the loop): the probes that
        # decide admission must be running before the first send, not from the first stream.
        ensure_upkeep()
        # Past capacity, a new reply is refused here, before Django's handler: its request_started signal
        # alone is a hop to a new thread, which waits its turn for the GIL behind every other request's.
        # The request is built only when the worker is full, not for every POST.
        if scope["method"] == "POST" and (refused := refusal()) is not None:
            if (busy := refused_reply(ASGIRequest(scope, io.BytesIO()), refused)) is not None:
                return await _dynamic.send_response(busy, send)
        # A pooled thread for this request's sync work (project/threads.py); Django's handler finds this
        # context already set and keeps it.
        executor = RequestExecutor(_threads)
        try:
            async with ThreadSensitiveContext(executor=executor):
                return await _dynamic(scope, receive, send)
        finally:
            executor.release()
    return await django_application(scope, receive, send)


on_worker_start()

# Everything imported so far lives for the whole process: freezing it keeps the collector from
# rescanning it under load, and a higher threshold makes collections rarer (measured: p99 added
# TTFT 277 -> 45 ms at 1,000 open streams).
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 50, 100)

if settings.CHAT_SWITCH_INTERVAL > 0:
    # How long the event loop may keep the GIL when a database thread has its answer (Python's default 5 ms).
    sys.setswitchinterval(settings.CHAT_SWITCH_INTERVAL)
