"""The interpreter's switch interval, as a knob: how long the event loop may keep the GIL from a thread.

What it changes: CPython makes a thread that wants the GIL wait up to `sys.getswitchinterval()` (5 ms) before
it asks the running thread to drop it. A database call made through sync_to_async finishes in its thread and
then waits that long behind an event loop busy with other streams' tokens before it can hand its answer back.
`tune()` sets CHAT_SWITCH_INTERVAL (seconds) when it is above 0; the default, 0, leaves Python's 5 ms.

Measured (bench/RESULTS.md, the run of 89ef044: `python -m bench`, whose variant cells include
"GIL switch 1 ms:CHAT_SWITCH_INTERVAL=0.001"): at C=100, 20 ms, added TTFT p50 / p99 27.6 / 62.9 ms with 1 ms
against 10.8 / 23.4 ms without, so it stays off by default and is kept as a knob to measure on other machines.
"""

from __future__ import annotations

import sys

from django.conf import settings


def tune() -> None:
    if settings.CHAT_SWITCH_INTERVAL > 0:
        sys.setswitchinterval(settings.CHAT_SWITCH_INTERVAL)
