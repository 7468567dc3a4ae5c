"""The collector's settings (project/tuning/collector.py): what a stock worker's full collection walks, and
what the tuned worker leaves it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = (
    "import gc, json, project.asgi; "
    "print(json.dumps({'threshold': gc.get_threshold(), 'frozen': gc.get_freeze_count(), "
    "'scanned': len(gc.get_objects())}))"
)


def worker_collector(*, tuning: str) -> dict[str, object]:
    """The collector's state in a worker process just started from project.asgi."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "CHAT_TUNING": tuning}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_stock_worker_makes_every_full_collection_walk_all_it_imported() -> None:
    stock = worker_collector(tuning="0")
    assert stock["threshold"] == [700, 10, 10]  # Python's defaults: a young collection every 700 allocations
    assert stock["frozen"] == 0
    # Django, the app and their libraries: a full collection walks all of it, while every stream waits.
    assert stock["scanned"] > 50_000


def test_the_tuned_worker_freezes_what_start_up_made_and_collects_less_often() -> None:
    stock, tuned = worker_collector(tuning="0"), worker_collector(tuning="1")
    assert tuned["threshold"] == [50_000, 50, 100]
    assert tuned["frozen"] > 0.9 * stock["scanned"]  # start-up's objects, never walked again
    assert tuned["scanned"] < 0.01 * stock["scanned"]
