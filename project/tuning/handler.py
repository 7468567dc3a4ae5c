"""Django's ASGI handler, minus the reference cycles it leaves behind every request.

Each request handled by Django 5.2's ASGIHandler ends as cyclic garbage: objects that only the cycle collector
frees, not their reference counts: about 470 objects and 45 KB a reply (gc.DEBUG_SAVEALL around 20
in-process replies), held until a collection of the generation they have reached, which project/tuning/
collector.py makes rare. tests/tuning/test_handler.py shows the stock handler's cycles. Two cycles hold nearly
all of it:

- `handle()` keeps its two tasks in a list. When the disconnect listener's task ends with RequestAborted,
  `handle()` reads its result, so the exception's traceback holds `handle()`'s frame, which holds that list,
  which holds the task and its exception: the frame, and with it the request, the response and everything
  they reference, stay alive as garbage.
- The request itself is in cycles made by middleware: `request.user` is a lazy object whose loader closes
  over the request; so is `request.auser`; the message storage and django-htmx's details hold the request.

`handle()` treats the listener's end the same whether it raises or returns: either way it ends
`asyncio.wait(..., FIRST_COMPLETED)` and the other task is cancelled if still running, and the result is
read only to ignore RequestAborted. Here it returns. And once `handle()` is over (the response sent and closed,
or the request cancelled) the request lets go of its attributes, so nothing it references can reach it back.

Measured (docs/decisions/, `python -m bench --servers daphne --concurrency 25,100 --intervals 20 --no-capacity
--no-variants --app-dir <checkout>`, alternated): RSS per open stream 252 -> 166 KiB at C=100, 482 -> 225 KiB
at C=25.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.http import HttpResponseBase

# The request handle() is serving: create_request runs inside handle(), in the same task and context.
_serving: ContextVar[ASGIRequest | None] = ContextVar("serving", default=None)


class Handler(ASGIHandler):
    def create_request(
        self, scope: dict[str, Any], body_file: Any
    ) -> tuple[ASGIRequest | None, HttpResponseBase | None]:
        request, error_response = super().create_request(scope, body_file)
        _serving.set(request)
        return request, error_response

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().handle(scope, receive, send)
        finally:
            if (request := _serving.get()) is not None:
                _serving.set(None)
                # Nothing reads it from here on: a view's tasks that outlive their request never take it along.
                request.__dict__.clear()

    async def listen_for_disconnect(self, receive: Any) -> None:
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")  # as Django's
        # The client is gone: returning ends handle()'s wait as RequestAborted would, without the cycle.
