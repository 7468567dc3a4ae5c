"""python -m bench.big_event: how long one huge upstream event holds up other users' requests on the same worker.

The app (this checkout, or `--app-dir` another, e.g. a `git worktree` of an earlier commit) runs under daphne on
the relay's core with production settings, against the PostgreSQL bench database and a loopback simulator on the
other core whose every reply is one content delta of `--mib` MiB. One reply is sent and its stream read to the end
while a trivial request (GET /, a redirect through Django's handler) is timed every `--probe-ms` ms; the report
is that latency's p50/p99/max while the big event is in flight, next to the same probe with nothing else running.
A worker that frames, decodes or renders the event on its loop in one piece shows it as the max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from bench import database, procs

DATABASE_URL = "postgres://postgres@127.0.0.1:5432/streamchat_bigevent"
ENV = {
    "DATABASE_URL": DATABASE_URL,
    "SECRET_KEY": "bench-big-event",
    "DEBUG": "0",
    "SECURE_SSL_REDIRECT": "0",
    "ALLOWED_HOSTS": "127.0.0.1",
    "CHAT_MODELS": "openai:bench",
    "OPENAI_API_KEY": "sk-bench-not-a-key",
    "CHAT_MESSAGES_PER_MINUTE": "1000000",
    "CHAT_IDLE_TIMEOUT": "120",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "project.settings",
}


def serve_simulator(port: int, size: int) -> None:
    """The simulator's process: every reply is "Hello " and then one delta of `size` bytes of text."""
    from tests.fake_upstream import FakeUpstream, Scenario, _serve_forever

    up = FakeUpstream(Scenario(text="Hello " + "x" * size), port=port, max_log=10)
    asyncio.run(_serve_forever(up))


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"n={len(ordered):4d}  p50 {statistics.median(ordered) * 1000:7.1f} ms  "
        f"p99 {p99 * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"
    )


def probe(url: str, until: threading.Event, every: float) -> list[float]:
    """The latency of a trivial request, one every `every` seconds, over one kept-alive connection."""
    import httpx

    latencies: list[float] = []
    with httpx.Client(timeout=60) as client:
        while not until.is_set():
            started = time.perf_counter()
            response = client.get(f"{url}/")
            latencies.append(time.perf_counter() - started)
            if response.status_code != 302:
                raise SystemExit(f"the probe answered HTTP {response.status_code}")
            time.sleep(max(0.0, every - (time.perf_counter() - started)))
    return latencies


def one_reply(url: str, cookie: str, csrf: str, conversation: int) -> tuple[float, str, int]:
    """Send a message and read its stream to the end: (seconds, the last event's name, bytes received)."""
    import httpx

    headers = {"Cookie": cookie, "X-CSRFToken": csrf, "HX-Request": "true"}
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=300) as client:
        sent = client.post(f"/chat/{conversation}/messages/", data={"text": "Send a huge event"}, headers=headers)
        if sent.status_code != 200 or "/stream/" not in sent.text:
            raise SystemExit(f"send answered HTTP {sent.status_code}: {sent.text[:300]}")
        path = sent.text.split("/chat/replies/", 1)[1].split("/", 1)[0]
        received, last = 0, ""
        with client.stream("GET", f"/chat/replies/{path}/stream/", headers=headers) as stream:
            for chunk in stream.iter_bytes():
                received += len(chunk)
                if b"event:" in chunk:  # "event:NAME" (or "event: NAME" from a checkout before 0032)
                    last = chunk.rsplit(b"event:", 1)[1].split(b"\n", 1)[0].strip().decode(errors="replace")
    return time.perf_counter() - started, last, received


def components(size: int) -> None:
    """In this process, the parts one event of `size` bytes costs: framing (in aiohttp's 16 KiB and in 64 KiB
    packets), json.loads of its data line, and render_markdown of its text; best of 3 each, in CPU time (on a
    shared machine wall time would count the waits for a core too)."""
    import json

    from chat.streaming.providers.eventstream import EventStreamDecoder
    from chat.streaming.rendering import render_markdown

    text = "x" * size
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    body = f"data: {json.dumps(chunk)}\n\n".encode()

    def best(work: object) -> float:
        times = []
        for _ in range(3):
            started = time.process_time()
            work()  # type: ignore[operator]
            times.append(time.process_time() - started)
        return min(times) * 1000

    for packet in (16 * 1024, 64 * 1024):
        packets = [body[i : i + packet] for i in range(0, len(body), packet)]
        longest: list[float] = []  # per run, the slowest single feed

        def frame(packets: list[bytes] = packets, longest: list[float] = longest) -> None:
            slowest = 0.0
            try:
                decoder = EventStreamDecoder(2 * len(body))
            except TypeError:  # a checkout from before the limit (d9059dc and earlier)
                decoder = EventStreamDecoder()
            for piece in packets:
                started = time.process_time()
                decoder.feed(piece)
                slowest = max(slowest, time.process_time() - started)
            longest.append(slowest)

        total = best(frame)
        print(
            f"framing in {packet // 1024} KiB packets: {total:.1f} ms in all, slowest feed {min(longest) * 1000:.1f} ms"
        )
    data = json.dumps(chunk)
    print(f"json.loads of the data line: {best(lambda: json.loads(data)):.1f} ms")
    print(f"render_markdown of the text: {best(lambda: render_markdown(text)):.1f} ms")


def run(app_dir: Path, args: argparse.Namespace) -> None:
    logs = procs.ROOT / "bench/out/logs"
    port = procs.free_port()
    sim_argv = [sys.executable, "-m", "bench.big_event", "--serve-simulator", str(port), "--mib", str(args.mib)]
    sim = procs.Process(name="simulator", argv=sim_argv, env=dict(os.environ), log=logs / "sim-big.log", core="1")
    sim.wait_listening(port)
    env = {**os.environ, **ENV, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    if args.max_event_bytes:
        env["CHAT_MAX_EVENT_BYTES"] = str(args.max_event_bytes)
    server, url = procs.start_server(server="daphne", env=env, log=logs / "daphne-big.log", app_dir=app_dir)
    try:
        from chat.models import Conversation

        [(user_id, cookie, csrf)] = database.make_accounts(1)
        every = args.probe_ms / 1000
        for round_ in range(args.rounds):
            # The same probe with nothing else running: this machine's floor for it.
            quiet = threading.Event()
            timer = threading.Timer(2.0, quiet.set)
            timer.start()
            baseline = probe(url, quiet, every)
            conversation = Conversation.objects.create(user_id=user_id, model="openai:bench", title="big").pk
            done = threading.Event()
            result: list[float] = []
            probes = threading.Thread(target=lambda r=result, d=done: r.extend(probe(url, d, every)))
            probes.start()
            try:
                seconds, last, received = one_reply(url, cookie, csrf, conversation)
            finally:
                done.set()
                probes.join()
            print(f"{app_dir.name} round {round_ + 1}: reply in {seconds:.2f} s, {received / 2**20:.1f} MiB to the")
            print(f"  browser, last event {last!r}; a GET / (its redirect) every {args.probe_ms:g} ms:")
            print(f"  quiet         {percentiles(baseline)}")
            print(f"  during reply  {percentiles(result)}", flush=True)
    finally:
        server.stop()
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.big_event", description=__doc__)
    parser.add_argument("--app-dir", type=Path, default=procs.ROOT, help="the checkout to serve (default: this one)")
    parser.add_argument("--mib", type=float, default=8, help="the size of the one big event, MiB")
    parser.add_argument("--probe-ms", type=float, default=10, help="ms between probe requests")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-event-bytes", type=int, default=0, help="CHAT_MAX_EVENT_BYTES for the app (0: its own)")
    parser.add_argument("--components", action="store_true", help="only time the parts in this process")
    parser.add_argument("--serve-simulator", type=int, help=argparse.SUPPRESS)  # the simulator process's own mode
    args = parser.parse_args(argv)
    if args.components:
        database.setup_django({"DJANGO_SETTINGS_MODULE": "project.settings"})
        components(int(args.mib * 2**20))
        return
    if args.serve_simulator:
        serve_simulator(args.serve_simulator, int(args.mib * 2**20))
        return
    database.recreate(DATABASE_URL, {**os.environ, **ENV})
    database.setup_django(ENV)
    run(args.app_dir.resolve(), args)


if __name__ == "__main__":
    main()
