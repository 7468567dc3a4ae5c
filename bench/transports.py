"""python -m bench.transports: the upstream half alone, per httpx transport — CPU per event through the
app's own provider code (chat.streaming.providers: openai over http), C streams from the simulator.

A third reader, "aiohttp+lines", is the app on the aiohttp transport with httpx-sse's line-by-line reader
in place of chat.streaming.providers.eventstream's byte framing, to weigh that choice in the same run."""

from __future__ import annotations

import argparse
import asyncio
import codecs
import os
import resource
import sys
import time
from collections.abc import AsyncIterator

from bench import procs


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def read_all(*, base_url: str, streams: int, rounds: int) -> tuple[int, float, float]:
    from chat.streaming.providers import TextDelta, Timeouts, Turn
    from chat.streaming.providers.http import aclose_shared_client
    from chat.streaming.providers.openai import OpenAIProvider

    provider = OpenAIProvider(api_key="sk-bench", base_url=base_url, timeouts=Timeouts(connect=30, idle=60))
    turns = [Turn(role="user", content="Benchmark me")]
    deltas = 0

    async def one() -> None:
        nonlocal deltas
        for _ in range(rounds):
            async for event in provider.stream(model="bench", messages=turns, max_tokens=4096):
                if type(event) is TextDelta:
                    deltas += 1

    await one()  # warm: imports, the pool's first connection
    deltas = 0
    cpu, wall = cpu_now(), time.monotonic()
    await asyncio.gather(*(one() for _ in range(streams)))
    cpu, wall = cpu_now() - cpu, time.monotonic() - wall
    await aclose_shared_client()
    return deltas, cpu, wall


async def line_reader(chunks: AsyncIterator[bytes], **_: object) -> AsyncIterator[object]:
    """httpx-sse's own path: bytes to text incrementally, text to lines, lines to events (as EventSource does).
    The app's reader's options (on_chunk, on_event, max_event_bytes) mean nothing to it."""
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text, lines, fields = codecs.getincrementaldecoder("utf-8")("replace"), SSELineDecoder(), SSEDecoder()
    async for chunk in chunks:
        for line in lines.decode(text.decode(chunk)):
            if (event := fields.decode(line)) is not None:
                yield event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--interval", type=float, default=20, help="ms between tokens")
    parser.add_argument("--repeat", type=int, default=2, help="runs per transport, alternated")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from chat.streaming.providers import http

    # The reader gets core 0 (where the relay runs in the full benchmark), the simulator core 1.
    os.sched_setaffinity(0, {int(procs.SERVER_CORE)})
    procs.raise_fd_limit()
    sim, url = procs.start_simulator(
        tokens=args.tokens, interval=args.interval / 1000, ttft=0.05, log=procs.ROOT / "bench/out/logs/sim-tr.log"
    )
    results: dict[str, list[float]] = {"aiohttp": [], "httpx": [], "aiohttp+lines": []}
    framing = http.server_sent_events
    try:
        for _ in range(args.repeat):
            for label in results:
                transport, _, reader = label.partition("+")
                http.server_sent_events = line_reader if reader else framing
                http.configure_client(transport=transport, max_connections=max(100, args.streams * 2))
                run = read_all(base_url=f"{url}/v1", streams=args.streams, rounds=args.rounds)
                deltas, cpu, wall = asyncio.run(run)
                events = deltas * (args.tokens + 4) / args.tokens
                results[label].append(cpu / events * 1e6)
                print(
                    f"{label:14} {args.streams} streams x {args.rounds}: {events:8.0f} events in {wall:5.1f} s, "
                    f"{cpu / events * 1e6:6.1f} µs CPU/event ({cpu / wall:.0%} of a core)",
                    flush=True,
                )
    finally:
        http.server_sent_events = framing
        sim.stop()
    for label, values in results.items():
        middle = sorted(values)[len(values) // 2]
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"{label}: median {middle:.1f} µs/event, best {min(values):.1f}, all {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
