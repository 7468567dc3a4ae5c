"""The reference point: the least a Django relay can do, measured by the same load in the same run.

One async view that POSTs the simulated request upstream through the same httpx client and transport
the app uses (httpx on aiohttp, a pool as large as the load) and hands every upstream chunk to the
browser as it comes: no session, no database, no parsing, no rendering, no middleware. Served by
daphne like the app, on the same core, it shows what daphne, Django's ASGI handler and the HTTP
client cost on this machine by themselves, so streamchat's own share is the difference.

Run as `daphne bench.bare:application` with OPENAI_BASE_URL set to the simulator's /v1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator

import django
import httpx
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path
from httpx_aiohttp import HttpxAiohttpClient

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
PAYLOAD = json.dumps(
    {
        "model": "bench",
        "messages": [{"role": "user", "content": "Benchmark me"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 4096,
    }
)
# It never closes its client (no shutdown hook, unlike the app): asyncio's "Unclosed client session" at exit
# would count as errors in its log.
logging.getLogger("asyncio").setLevel(logging.CRITICAL)
HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    if loop not in _clients:
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=100)
        _clients[loop] = HttpxAiohttpClient(limits=limits, trust_env=False)
    return _clients[loop]


async def relay(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        async with client().stream("POST", UPSTREAM, content=PAYLOAD, headers=HEADERS) as upstream:
            async for chunk in upstream.aiter_bytes():
                yield chunk

    response = StreamingHttpResponse(body(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


urlpatterns = [path("relay/", relay)]
application = get_asgi_application()
