"""ASGI entry point: Django's handler (tuned unless CHAT_TUNING=0, see project/tuning/) and a worker's start-up."""

from __future__ import annotations

import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does

from django.conf import settings  # noqa: E402  (configured by the line above)
from django.core.handlers.asgi import ASGIHandler  # noqa: E402

from chat.streaming.lifecycle import ensure_upkeep, on_worker_start  # noqa: E402  (needs the app registry)

if settings.CHAT_TUNING:
    from project import tuning

    django_application = tuning.application()
else:
    django_application = ASGIHandler()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        # This loop's upkeep and admission probes, from the first request on (cheap once they run).
        ensure_upkeep()
    return await django_application(scope, receive, send)


on_worker_start()

if settings.CHAT_TUNING:
    tuning.after_start()
