"""Admission at the door: a reply-starting POST past capacity is refused before Django's handler runs.

What it changes: Django's ASGIHandler sends request_started (a sync signal, so a hop to a new thread that waits
its turn for the GIL) and builds the request before any middleware can answer. On a worker past capacity the
refusal then waits behind everything it is refusing. `refused(scope)` asks the app's own admission rule
(chat.streaming.admission.refusal, which chat.streaming.admission.admission_middleware asks too, after the
handler) before the handler, on the event loop, and builds a request only when the worker is full.

Measured (docs/decisions/, `python -m bench --servers daphne --concurrency 1000 --intervals 20 --no-capacity
--no-variants`): the 503s at C=1,000 came back in p50 539 ms from here against 868 ms from the middleware.
"""

from __future__ import annotations

import io
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponseBase

from chat.streaming.admission import refusal, refused_reply


def refused(scope: dict[str, Any]) -> HttpResponseBase | None:
    """The 503 for a reply-starting POST when this worker is full, else None (let the handler serve it)."""
    if scope["method"] != "POST" or (why := refusal()) is None:
        return None
    return refused_reply(ASGIRequest(scope, io.BytesIO()), why)
