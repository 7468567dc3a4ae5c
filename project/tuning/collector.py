"""The cycle collector, tuned for a worker with many open streams: start-up objects frozen, collections rarer.

What it changes: CPython's collector by default runs a young collection every 700 net container allocations
and, every 10 of those, an older one, and a full collection traverses every object the process holds,
Django's and the app's modules included. A worker streaming to a thousand browsers allocates fast, so the
collector ran often and each full pass walked the whole heap while every stream waited. `tune()` freezes what
start-up made (gc.freeze moves it to the permanent generation, never scanned again) and raises the thresholds.

Measured (docs/decisions/, `python -m bench --concurrency 1000 --intervals 20 --no-capacity --no-variants`):
p99 added TTFT 277 -> 45 ms at 1,000 open streams. The cost: garbage in cycles lives longer (project/tuning/
handler.py removes the two cycles every request made, which is most of it).

Delete this module the day a worker's allocation rate no longer makes the default collector a latency cost.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 50, 100)


def tune() -> None:
    """Call last at start-up: everything imported so far lives for the whole process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
