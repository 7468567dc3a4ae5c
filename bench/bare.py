"""The reference point: the least a Django relay can do, measured by the same load in the same run.

One async view that POSTs the simulated request upstream through the app's own shared httpx client
(chat.streaming.providers.http: httpx on aiohttp, a pool as large as the load) and hands every upstream chunk to the
browser as it comes: no session, no database, no parsing, no rendering, no middleware. Served by
daphne like the app, on the same core, it shows what daphne, Django's ASGI handler and the HTTP
client cost on this machine by themselves, so streamchat's own share is the difference.

Run as `daphne bench.bare:application` with OPENAI_BASE_URL set to the simulator's /v1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

import django
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path

from bench.load import question, simulated_request
from chat.streaming.providers.http import shared_client

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("SECRET_KEY", "bench-bare-relay"),
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 - after settings.configure

UPSTREAM = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:9/v1").rstrip("/") + "/chat/completions"
# It never closes its client (no shutdown hook, unlike the app): asyncio's "Unclosed client session" at exit
# would count as errors in its log.
logging.getLogger("asyncio").setLevel(logging.CRITICAL)
HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
# The run's --question-chars (bench/cell.py sets it): the same upstream request as the direct readers send.
REQUEST = simulated_request(question(int(os.environ.get("BENCH_QUESTION_CHARS", "0"))))


async def relay(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        async with shared_client().stream("POST", UPSTREAM, content=REQUEST, headers=HEADERS) as upstream:
            async for chunk in upstream.aiter_bytes():
                yield chunk

    response = StreamingHttpResponse(body(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


urlpatterns = [path("relay/", relay)]
application = get_asgi_application()
