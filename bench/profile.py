"""Reads py-spy's collapsed stacks into the frames that cost the most, by own time and by time below them."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r" \(([^()]*?)(?::\d+)?\)$")
_SITE = "site-packages/"


def frame_name(frame: str) -> str:
    """`function (path:line)` -> `function (short path)`: lines merged, library paths cut to the package."""
    match = _LINE.search(frame)
    if not match:
        return frame
    path = match.group(1)
    if _SITE in path:
        path = path.split(_SITE, 1)[1]
    elif "/lib/python" in path:
        path = "stdlib/" + path.rsplit("/", 1)[-1]
    else:
        path = path.rsplit("/work/main/", 1)[-1]
    return f"{frame[: match.start()]} ({path})"


def summarise(path: Path, *, files: bool = False) -> list[tuple[str, float, float]]:
    """(frame, self %, total %) for every frame, most own time first; files=True groups per source file."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        names = [frame_name(f) for f in stack.split(";")]
        if files:
            names = [name[name.rfind("(") + 1 : -1] for name in names]
        own[names[-1]] += n
        for name in set(names):
            total[name] += n
    if not samples:
        return []
    rows = [(name, 100 * own[name] / samples, 100 * n / samples) for name, n in total.items()]
    return sorted(rows, key=lambda r: (-r[1], -r[2]))


def by_total(rows: list[tuple[str, float, float]], *, contains: str, limit: int = 15) -> list[tuple[str, float, float]]:
    """The frames whose name contains `contains` (e.g. "chat/"), by inclusive time: where our own code spends."""
    return sorted((r for r in rows if contains in r[0]), key=lambda r: -r[2])[:limit]


# Where a sample's CPU goes: the first of these whose marker is anywhere on its stack (specific first) ...
CATEGORIES = [
    ("POST send view (thread)", ("send_message (chat/views",)),
    ("checkpoint writes", ("checkpoint_many", "SQLUpdateCompiler")),
    ("DB reads: session, user, reply, prompt", ("QuerySet.get", "_fetch_all", "SessionStore", "Message.claim")),
    ("relay: markdown render + sanitise", ("rendering.py", "LiveView._render")),
    (
        "relay: watch loop + SSE encoding",
        ("streaming/relay.py", "streaming/sse.py", "streaming/live.py"),
    ),
    (
        "upstream: read + parse (httpx, aiohttp, SSE framing, json)",
        ("chat/streaming/providers", "httpx", "httpcore", "aiohttp/"),
    ),
    (
        "generation loop",
        ("streaming/generation.py", "streaming/control.py", "streaming/checkpoints.py", "streaming/fanout.py"),
    ),
]
# ... else the layer of the frame nearest the leaf that belongs to one of these (servers sit at every root).
LAYERS = [
    ("other database (connect, close, psycopg)", ("psycopg", "django/db")),
    ("daphne / Twisted (HTTP out)", ("daphne/", "twisted/")),
    ("uvicorn (HTTP out)", ("uvicorn/", "httptools")),
    ("Django ASGI handler + middleware", ("django/", "whitenoise/", "chat/csp.py", "project/tuning/middleware.py")),
    ("thread hops (asgiref, executor, threading)", ("asgiref/", "concurrent/futures", "threading.py")),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py")),
]


def category(stack: str) -> str:
    for name, markers in CATEGORIES:
        if any(marker in stack for marker in markers):
            return name
    for frame in reversed(stack.split(";")):
        for name, markers in LAYERS:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def categories(path: Path) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples += int(count)
        counts[category(stack)] += int(count)
    return [(name, 100 * n / samples) for name, n in counts.most_common()] if samples else []
