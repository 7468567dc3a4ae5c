"""ASGI entry point: Django's handler (tuned unless CHAT_TUNING=0, see project/tuning/) and a worker's start-up."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does

from django.conf import settings  # noqa: E402  (configured by the line above)
from django.core.handlers.asgi import ASGIHandler  # noqa: E402

from chat.streaming.lifecycle import on_worker_start  # noqa: E402  (needs the app registry loaded above)

if settings.CHAT_TUNING:
    from project import tuning

    application = tuning.application()
else:
    application = ASGIHandler()

on_worker_start()

if settings.CHAT_TUNING:
    tuning.after_start()
