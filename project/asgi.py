"""ASGI entry point: Django's handler, plus the start-up work a streaming worker needs."""

from __future__ import annotations

import gc
import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_asgi_application()

from chat.lifecycle import on_worker_start  # noqa: E402  (needs the app registry loaded above)

on_worker_start()

# Everything imported so far lives for the whole process: freezing it keeps the collector from
# rescanning it under load, and a higher threshold makes collections rarer (measured: p99 added
# TTFT 277 -> 45 ms at 1,000 open streams).
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 50, 100)

if os.environ.get("BENCH_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
