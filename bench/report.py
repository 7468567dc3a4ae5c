"""From what a cell collected to its row of numbers, and from the rows to bench/RESULTS.md."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.load import Collected

# Per reply the simulator sends a role chunk, the tokens, a finish chunk, a usage chunk and [DONE].
EXTRA_EVENTS_PER_REPLY = 4


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass
class Cell:
    server: str
    interval: float
    concurrency: int
    direct: int
    window: float
    samples: dict[str, int] = field(default_factory=dict)
    ttft: dict[str, float | None] = field(default_factory=dict)  # app/direct/added/send/user x p50/p99, ms
    gap_p99: dict[str, float | None] = field(default_factory=dict)  # app, direct, added; ms
    errors: int = 0
    attempts: int = 0
    direct_errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    refused_ms: dict[str, float | None] = field(default_factory=dict)  # how fast a 503 came back, p50/p99
    log_errors: int = 0
    replies_per_s: float = 0.0
    events_per_s: float = 0.0
    cpu_us_per_event: float | None = None
    server_cpu: float = 0.0  # share of its core in the window
    load_cpu: float = 0.0  # simulator + load generator, share of their core in the window
    other_cpu: float = 0.0  # every other process (PostgreSQL, other users of the machine), in cores
    quiet_wait: float = 0.0  # seconds waited before the cell for the machine to be quiet
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    kib_per_stream: float = 0.0
    threads: int = 0  # the server's peak thread count in the window
    db_connections: int | None = None  # peak connections to the bench database in the window (PostgreSQL)
    writes_per_reply: float | None = None
    all_writes_per_reply: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # settings that differ from the run's (variants)
    variant: str = ""
    content: str = "plain"  # what the replies are: "plain" ("tok0 tok1 ..."), "prose", "mixed" or "code"
    reply_bytes: float | None = None  # median bytes of the reply's stream body, completed replies in the window
    html_bytes: int | None = None  # the final HTML of that reply (the app's render_markdown), bytes
    profile: list[tuple[str, float, float]] = field(default_factory=list)
    profile_categories: list[tuple[str, float]] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        """The capacity criterion: zero errors and p99 added TTFT within 100 ms."""
        added = self.ttft.get("added_p99")
        return self.errors == 0 and self.direct_errors == 0 and added is not None and added <= 100

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(cell: Cell, got: Collected, *, tokens: int) -> None:
    in_window = [e for e in got.exchanges if e.in_window]
    app = [e for e in in_window if e.kind == "app" and not e.error and e.ttft is not None]
    direct = [e for e in in_window if e.kind == "direct" and not e.error and e.ttft is not None]
    cell.samples = {"app": len(app), "direct": len(direct)}
    cell.reply_bytes = statistics.median(e.body_bytes for e in app) if app else None
    app_ttft = [e.ttft for e in app]
    direct_ttft = [e.ttft for e in direct]
    send = [e.send for e in app if e.send is not None]
    user = [e.send + e.ttft for e in app if e.send is not None]  # type: ignore[operator]
    for q in (50, 99):
        cell.ttft[f"app_p{q}"] = ms(percentile(app_ttft, q))  # type: ignore[arg-type]
        cell.ttft[f"direct_p{q}"] = ms(percentile(direct_ttft, q))  # type: ignore[arg-type]
        cell.ttft[f"added_p{q}"] = minus(cell.ttft[f"app_p{q}"], cell.ttft[f"direct_p{q}"])
        cell.ttft[f"send_p{q}"] = ms(percentile(send, q))
        cell.ttft[f"user_p{q}"] = ms(percentile(user, q))
        cell.ttft[f"user_added_p{q}"] = minus(cell.ttft[f"user_p{q}"], cell.ttft[f"direct_p{q}"])
    cell.gap_p99 = {
        "app": ms(percentile(got.gaps["app"], 99)),
        "direct": ms(percentile(got.gaps["direct"], 99)),
    }
    cell.gap_p99["added"] = minus(cell.gap_p99["app"], cell.gap_p99["direct"])
    apps = [e for e in got.exchanges if e.kind == "app"]
    cell.attempts = len(apps)
    cell.errors = sum(1 for e in apps if e.error)
    cell.direct_errors = sum(1 for e in got.exchanges if e.kind == "direct" and e.error)
    cell.error_kinds = dict(Counter(f"{e.kind}: {e.error}" for e in got.exchanges if e.error))
    refused = [e.finished - e.started for e in apps if e.error.endswith("HTTP 503")]
    cell.refused_ms = {f"p{q}": ms(percentile(refused, q)) for q in (50, 99)} if refused else {}
    cell.replies_per_s = got.completed["app"] / cell.window
    # Counted from whole replies, not from what the browser got: the relay may merge and re-render text.
    cell.events_per_s = cell.replies_per_s * (tokens + EXTRA_EVENTS_PER_REPLY)


def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def pair(a: float | None, b: float | None, digits: int = 0) -> str:
    return f"{fmt(a, digits)} / {fmt(b, digits)}"


HEADER = (
    "| server | content | interval | C | TTFT app p50 / p99 | TTFT direct p50 / p99 | **added TTFT p50 / p99** "
    "| POST send p50 / p99 | user-seen added p50 / p99 | gap p99 added | errors | replies/s | upstream ev/s "
    "| CPU µs/event | server CPU | RSS idle → peak MiB | KiB/stream | threads / DB conns | DB rows/reply "
    "| load-core CPU | other CPU | KiB/reply (× HTML) |\n"
    "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
)


SERVER_LABELS = {"bare": "bare relay (reference)"}


def row(cell: Cell) -> str:
    t = cell.ttft
    errors = f"{cell.errors}/{cell.attempts}"
    if cell.direct_errors:
        errors += f" (+{cell.direct_errors} direct)"
    if cell.log_errors:
        errors += f" ({cell.log_errors} in log)"
    writes = "–" if cell.writes_per_reply is None else f"{cell.writes_per_reply:.1f} ({cell.all_writes_per_reply:.1f})"
    return (
        f"| {SERVER_LABELS.get(cell.server, cell.server)}{f' ({cell.variant})' if cell.variant else ''} "
        f"| {cell.content} "
        f"| {cell.interval * 1000:g} ms "
        f"| {cell.concurrency} "
        f"| {pair(t.get('app_p50'), t.get('app_p99'), 1)} | {pair(t.get('direct_p50'), t.get('direct_p99'), 1)} "
        f"| **{pair(t.get('added_p50'), t.get('added_p99'), 1)}** | {pair(t.get('send_p50'), t.get('send_p99'), 1)} "
        f"| {pair(t.get('user_added_p50'), t.get('user_added_p99'), 1)} | {fmt(cell.gap_p99.get('added'), 1)} "
        f"| {errors} | {fmt(cell.replies_per_s, 1)} | {fmt(cell.events_per_s)} | {fmt(cell.cpu_us_per_event, 1)} "
        f"| {cell.server_cpu * 100:.0f}% | {cell.rss_idle_mib:.0f} → {cell.rss_peak_mib:.0f} "
        f"| {fmt(cell.kib_per_stream, 1)} | {cell.threads} / {fmt(cell.db_connections)} | {writes} "
        f"| {cell.load_cpu * 100:.0f}% | {cell.other_cpu * 100:.0f}% | {reply_size(cell)} |\n"
    )


def reply_size(cell: Cell) -> str:
    """Bytes per reply over the wire in KiB, and as a multiple of the reply's final HTML."""
    if cell.reply_bytes is None:
        return "–"
    times = f" ({cell.reply_bytes / cell.html_bytes:.1f}×)" if cell.html_bytes else ""
    return f"{cell.reply_bytes / 1024:,.1f}{times}"


def table(cells: list[Cell]) -> str:
    return HEADER + "".join(row(cell) for cell in cells)


def category_table(categories: list[tuple[str, float]], *, cpu_ms_per_reply: float | None) -> str:
    lines = ["| where the relay process's CPU went | share | ≈ ms CPU per reply |", "|---|--:|--:|"]
    for name, share in categories:
        per_reply = "–" if cpu_ms_per_reply is None else f"{cpu_ms_per_reply * share / 100:.1f}"
        lines.append(f"| {name} | {share:.1f} % | {per_reply} |")
    return "\n".join(lines) + "\n"


def profile_table(frames: list[tuple[str, float, float]], limit: int = 15) -> str:
    lines = ["| frame | self % | total % |", "|---|--:|--:|"]
    lines += [f"| `{name}` | {own:.1f} | {total:.1f} |" for name, own, total in frames[:limit]]
    return "\n".join(lines) + "\n"
