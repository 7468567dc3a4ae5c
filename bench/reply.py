"""python -m bench.reply: the CPU of whole replies (the send, then the stream read to `done`), one at a time,
in-process through project.asgi's application, for this checkout and any others named, alternated in one run.

A full `python -m bench` cell measures a shared core under load, where one change of a few per cent is lost in
the noise. Here nothing competes: each checkout runs in its own process (`--app-dir`, e.g. a `git worktree` of an
earlier commit) pinned to the relay's core, against the same PostgreSQL bench database and a loopback simulator
on the other core, with production settings, and each round reports the process's CPU time (not wall time: the
database and the simulator are not ours) per reply. With `--tokens 2` that is the fixed cost of a reply (two
requests, sessions, users, the claim, the templates, the final write); the difference between two token counts,
divided by the difference in upstream events, is the cost per event. No server is involved (httpx's ASGI
transport calls the application directly), so daphne's share is not in these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

# Also run as a script from the measured checkout (see run_checkout): nothing outside the standard library at the top.
HERE = Path(__file__).resolve()
PER_CONVERSATION = 4
STREAM_URL = re.compile(r"/chat/replies/(\d+)/stream/")
ENV = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/streamchat_bench",
    "SECRET_KEY": "bench-reply",
    "DEBUG": "0",
    "SECURE_SSL_REDIRECT": "0",
    "ALLOWED_HOSTS": "testserver",
    "CHAT_MODELS": "openai:bench",
    "OPENAI_API_KEY": "sk-bench-not-a-key",
    "CHAT_MESSAGES_PER_MINUTE": "1000000",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "project.settings",
}


def measure(replies: int) -> dict[str, float]:
    """In the checkout this process runs from: CPU µs per whole reply, over `replies` replies in a row."""
    import django

    django.setup()
    import httpx
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from chat.models import Conversation

    user = get_user_model().objects.create_user(username=f"reply-{uuid.uuid4().hex[:12]}")
    session = SessionStore()
    session.update(
        {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
    )
    session.create()
    # A few replies per conversation, as in the full benchmark's cells: one conversation for all would send a
    # longer prompt with every reply.
    conversations = Conversation.objects.bulk_create(
        [Conversation(user=user, model="openai:bench", title="bench") for _ in range(replies // PER_CONVERSATION + 4)]
    )
    turn = iter(range(10**9))
    csrf = "b" * 32
    cookies = {"sessionid": session.session_key, "csrftoken": csrf}
    from django.db import connection

    connection.close()  # this thread serves no request: its connection would hold one of the pool's
    from project.asgi import application

    async def one(client: httpx.AsyncClient) -> None:
        conversation = conversations[next(turn) // PER_CONVERSATION]
        form = {"text": "Benchmark me", "model": "openai:bench", "request_key": uuid.uuid4().hex}
        headers = {"X-CSRFToken": csrf, "HX-Request": "true"}
        sent = await client.post(f"/chat/{conversation.pk}/messages/", data=form, headers=headers)
        if sent.status_code != 200 or not (match := STREAM_URL.search(sent.text)):
            raise SystemExit(f"send answered HTTP {sent.status_code}")
        streamed = await client.get(match.group(0), headers={"Accept": "text/event-stream"})
        if streamed.status_code != 200 or "event: done" not in streamed.text:
            raise SystemExit(f"stream answered HTTP {streamed.status_code} without its done event")

    async def run() -> float:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", cookies=cookies) as client:
            for _ in range(10):  # imports, templates, connections, the upstream pool
                await one(client)
            started = time.process_time()
            for _ in range(replies):
                await one(client)
            cpu = time.process_time() - started
        try:
            from chat.streaming.providers.http import aclose_shared_client
        except ImportError:  # a checkout from before the tree followed the reply's path (4b8a09a and earlier)
            from chat.providers.http import aclose_shared_client  # type: ignore[no-redef]

        await aclose_shared_client()
        return cpu

    cpu = asyncio.run(run())
    return {"reply_us": cpu / replies * 1e6}


def py_spy(profile: Path) -> list[str]:
    """py-spy samples every thread, the sync work's too, for the whole run (the warm-up is short)."""
    command = Path(sys.executable).with_name("py-spy")
    return [str(command), "record", "--gil", "--rate", "500", "--format", "raw", "--output", str(profile), "--"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reply", description=__doc__)
    parser.add_argument("--app-dir", action="append", default=[], help="another checkout to measure (repeatable)")
    parser.add_argument("--replies", type=int, default=100, help="replies per round and checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2, help="tokens per reply (2: the fixed cost of a reply)")
    parser.add_argument("--interval", type=float, default=0, help="ms between tokens")
    parser.add_argument("--profile", action="store_true", help="also a py-spy round of this checkout")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # the child process's own mode
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    from bench import database, procs

    checkouts = [procs.ROOT, *(Path(d).resolve() for d in args.app_dir)]
    database.recreate(database.POSTGRES_URL, {**os.environ, **ENV})
    sim, sim_url = procs.start_simulator(
        tokens=args.tokens, interval=args.interval / 1000, ttft=0, log=procs.ROOT / "bench/out/logs/sim-reply.log"
    )
    results: dict[Path, list[float]] = {c: [] for c in checkouts}
    env, measure_args = {**ENV, "OPENAI_BASE_URL": f"{sim_url}/v1"}, ["--measure", str(args.replies)]
    try:
        for checkout in procs.alternated(checkouts, args.rounds):
            measured = procs.measure_checkout(HERE, checkout, measure_args, env)
            results[checkout].append(measured["reply_us"] / 1000)
        if args.profile:
            out = procs.ROOT / "bench/out/profile-reply.txt"
            procs.measure_checkout(HERE, procs.ROOT, measure_args, env, wrapper=py_spy(out))
            print(f"py-spy's stacks: {out}")
    finally:
        sim.stop()
    events = args.tokens + 4
    print(f"CPU per reply ({args.tokens} tokens, {events} upstream events), median of {args.rounds} rounds of")
    print(f"{args.replies} replies in a row (every round in brackets):")
    base = statistics.median(results[procs.ROOT])
    for checkout, rounds in results.items():
        listed = ", ".join(f"{v:.2f}" for v in rounds)
        ratio = statistics.median(rounds) / base
        print(f"  {checkout}: {statistics.median(rounds):.2f} ms ({listed}); × {ratio:.2f} of this checkout's")


if __name__ == "__main__":
    main()
