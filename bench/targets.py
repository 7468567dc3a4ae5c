"""The targets of bench/RESULTS.md: each the figure that decides it, met or missed, and the bare relay's beside it."""

from __future__ import annotations

from collections.abc import Callable

from bench.cell import Setting
from bench.report import SERVER_LABELS, Cell, fmt


def find(cells: list[Cell], server: str, interval: float, concurrency: int, content: str | None = None) -> Cell | None:
    """The cell of that server, interval and C, with that content (default: the run's first, its main one)."""
    content = content or (cells[0].content if cells else None)
    return next(
        (
            c
            for c in cells
            if (c.server, c.interval, c.concurrency, c.content) == (server, interval, concurrency, content)
            and not c.variant
        ),
        None,
    )


def contents_of(cells: list[Cell]) -> list[str]:
    """The contents a run measured, its main one first."""
    return list(dict.fromkeys(c.content for c in cells))


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def bare_says(cells: list[Cell], concurrency: int, say: Callable[[Cell], str]) -> str:
    """The bare relay's figure for the same target, measured in the same run, or nothing."""
    bare = find(cells, "bare", 0.02, concurrency)
    return "" if bare is None else f"; the bare relay, same run: {say(bare)}"


def targets(
    cells: list[Cell], capacities: dict[str, tuple[int, int | None, list[Cell]]], setting: Setting
) -> list[str]:
    all_cells = cells + [p for _, _, probes in capacities.values() for p in probes]
    at100 = find(cells, "daphne", 0.02, 100)
    lines = []
    if at100:
        p50, p99 = at100.ttft.get("added_p50"), at100.ttft.get("added_p99")
        ok = p50 is not None and p99 is not None and p50 <= 5 and p99 <= 15
        lines.append(
            f"- daphne, 20 ms, C=100: added TTFT ≤ 5 ms p50 / ≤ 15 ms p99 — {verdict(ok)} "
            f"({fmt(p50, 1)} / {fmt(p99, 1)} ms on the stream request; the POST before it took "
            f"{fmt(at100.ttft.get('send_p50'), 1)} / {fmt(at100.ttft.get('send_p99'), 1)} ms"
            + bare_says(
                cells, 100, lambda b: f"{fmt(b.ttft.get('added_p50'), 1)} / {fmt(b.ttft.get('added_p99'), 1)} ms"
            )
            + ")"
        )
    at250 = find(all_cells, "daphne", 0.02, 250)
    if at250:
        lines.append(
            f"- daphne, 20 ms, C=250: zero errors and p99 added TTFT ≤ 100 ms — {verdict(at250.passes)} "
            f"({at250.errors} errors, p99 added {fmt(at250.ttft.get('added_p99'), 1)} ms"
            + bare_says(cells, 250, lambda b: f"{b.errors} errors, p99 added {fmt(b.ttft.get('added_p99'), 1)} ms")
            + ")"
        )
    at500 = find(all_cells, "daphne", 0.02, 500)
    if at500:
        lines.append(
            f"- daphne, 20 ms, C=500: zero errors — {verdict(at500.errors == 0 and at500.direct_errors == 0)} "
            f"({at500.errors} errors of {at500.attempts}"
            + bare_says(cells, 500, lambda b: f"{b.errors} errors of {b.attempts}")
            + ")"
        )
    loaded = [
        c for c in cells if c.server == "daphne" and c.interval == 0.02 and c.concurrency >= 100 and not c.variant
    ]
    if loaded:
        worst = max(loaded, key=lambda c: c.kib_per_stream)
        lines.append(
            f"- ≤ 64 KiB RSS per open stream — {verdict(worst.kib_per_stream <= 64)} "
            f"(worst {worst.kib_per_stream:.1f} KiB at C={worst.concurrency}; "
            + ", ".join(f"C={c.concurrency}: {c.kib_per_stream:.1f}" for c in loaded)
            + bare_says(cells, worst.concurrency, lambda b: f"{b.kib_per_stream:.1f} KiB at C={b.concurrency}")
            + ")"
        )
    for content in contents_of(cells):
        sized = [
            c
            for c in cells
            if c.server == "daphne" and c.content == content and c.interval == 0.02 and c.reply_bytes and c.html_bytes
        ]
        if sized:
            first = min(sized, key=lambda c: c.concurrency)
            times = first.reply_bytes / first.html_bytes  # type: ignore[operator]
            lines.append(
                f"- {content}: bytes per reply ≤ 3× the final HTML — {verdict(times <= 3)} "
                f"({first.reply_bytes:,.0f} bytes over the wire for {first.html_bytes:,} of HTML, {times:.1f}×, "
                f"at C={first.concurrency})"
            )
    for content in contents_of(cells):
        gaps = [find(cells, "daphne", 0.02, c, content) for c in (1, 10)]
        added = [a for g in gaps if g is not None and (a := g.gap_p99.get("added")) is not None]
        if len(added) == 2:
            lines.append(
                f"- {content}: gap p99 added ≤ 20 ms at C=1 and C=10 — {verdict(max(added) <= 20)} "
                f"({' / '.join(fmt(a, 1) for a in added)} ms)"
            )
    mixed, bare = find(cells, "daphne", 0.02, 100, "mixed"), find(cells, "bare", 0.02, 100, "mixed")
    if mixed and bare and mixed.cpu_us_per_event and bare.cpu_us_per_event:
        times = mixed.cpu_us_per_event / bare.cpu_us_per_event
        lines.append(
            f"- mixed, C=100: CPU per upstream event ≤ 1.5× the bare relay's — {verdict(times <= 1.5)} "
            f"({mixed.cpu_us_per_event:.1f} µs against {bare.cpu_us_per_event:.1f}, {times:.2f}×)"
        )
    slow, fast = find(cells, "daphne", 0.02, 100), find(cells, "daphne", 0.0, 100)
    if slow and fast and slow.writes_per_reply is not None and fast.writes_per_reply is not None:
        seconds = setting.ttft + setting.tokens * 0.02
        extra = slow.writes_per_reply - fast.writes_per_reply
        ok = fast.writes_per_reply <= 8 and extra <= seconds + 2
        lines.append(
            f"- O(1) database writes per reply — {verdict(ok)} ({fast.writes_per_reply:.1f} rows of chat_message "
            f"per reply when it streams in ~0.1 s, {slow.writes_per_reply:.1f} when it streams for "
            f"{seconds:.1f} s: the difference is the once-a-second checkpoint)"
        )
    for server, (lo, hi, probes) in capacities.items():
        name = SERVER_LABELS.get(server, server)
        if hi is not None and not probes:
            # The time budget ran out before any probe: the matrix only brackets it.
            lines.append(
                f"- {name} capacity at 20 ms (zero errors, p99 added TTFT ≤ 100 ms): between **{lo}** and {hi} "
                "(no probe fitted the time budget)"
            )
            continue
        lines.append(
            f"- {name} capacity at 20 ms (zero errors, p99 added TTFT ≤ 100 ms): **{lo}**"
            + (f" (fails at {hi})" if hi else " (passed every C measured)")
        )
    return lines
