"""Admission at the door (project/tuning/door.py): past capacity, a reply-starting POST is refused before
Django's handler, where stock Django first sends request_started, a hop to a thread."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started

from chat.streaming import live
from project.tuning import door

SEND = "/chat/1/messages/"  # send_message starts a reply (refuse_when_busy)


@pytest.fixture
def full_worker(settings: Any) -> Iterator[list[str]]:
    """A worker at its stream cap, and what request_started saw meanwhile."""
    settings.CHAT_MAX_STREAMS = 1
    live.owned[-1] = live.LiveReply.__new__(live.LiveReply)  # a reply this worker is writing, for the count
    started: list[str] = []

    def receiver(**kwargs: Any) -> None:
        started.append("request_started")

    request_started.connect(receiver)
    try:
        yield started
    finally:
        request_started.disconnect(receiver)
        del live.owned[-1]


def scope_of(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": [], "scheme": "http"}


async def test_stock_django_sends_request_started_before_a_full_worker_refuses(full_worker: list[str]) -> None:
    # Why the door exists: the handler's signal (a thread hop, waiting for the GIL) comes before any middleware.
    transport = httpx.ASGITransport(app=ASGIHandler())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(SEND, data={"text": "hello"})
    assert response.status_code == 503  # chat.streaming.admission.admission_middleware
    assert full_worker == ["request_started"]


async def test_the_door_refuses_a_full_workers_send_before_the_handler(full_worker: list[str]) -> None:
    refused = door.refused(scope_of("POST", SEND))
    assert refused is not None and refused.status_code == 503 and refused["Retry-After"]
    assert door.refused(scope_of("GET", "/chat/")) is None  # only POSTs that start a reply
    assert door.refused(scope_of("POST", "/chat/1/rename/")) is None
    assert full_worker == []
