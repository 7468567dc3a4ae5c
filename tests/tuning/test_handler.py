"""Django's ASGI handler without the reference cycles it leaves behind every request (project/tuning/handler.py)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import httpx
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest

from project.tuning.handler import Handler


def cyclic_garbage_of(app: Any, path: str) -> list[object]:
    """What the cycle collector alone would free after one request to `app`."""

    async def get() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return (await client.get(path)).status_code

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # The login page: sessions, auth, messages, htmx, CSRF, a form and a template all take part. (Not a 4xx:
        # its log record would keep the request alive here, in pytest's log capture.)
        assert asyncio.run(get()) == 200
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def holding_a_request(garbage: list[object]) -> list[object]:
    return [o for o in garbage if isinstance(o, RequestAborted) or (isinstance(o, HttpRequest) and vars(o))]


def test_a_finished_request_is_in_no_cycle_that_holds_what_it_referenced() -> None:
    assert holding_a_request(cyclic_garbage_of(Handler(), "/accounts/login/")) == []


def test_djangos_own_handler_leaves_the_request_and_its_disconnect_in_cycles() -> None:
    # Why Handler exists; should a Django release stop doing this, Handler can go.
    kinds = {type(o) for o in holding_a_request(cyclic_garbage_of(ASGIHandler(), "/accounts/login/"))}
    assert RequestAborted in kinds and any(issubclass(kind, HttpRequest) for kind in kinds)
