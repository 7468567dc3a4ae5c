"""python -m bench.send: the CPU of the send request (POST a message, get the exchange back) and of the
limits check inside it, measured in-process, for this checkout and any others named, alternated in one run.

Per-reply costs dominate a reply's CPU, and the send request is the largest of them; a full `python -m bench`
cell on a saturated core is too noisy to weigh one change to it. Here each checkout runs in its own process
(`--app-dir`, e.g. a `git worktree` of an earlier commit) against the same PostgreSQL bench database, with
production settings, and each round reports the CPU time (not wall time: the database's own CPU is not ours)
per request. Rounds alternate between checkouts, so the machine's noise hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

# Also run as a script from the measured checkout (see run_checkout): the bench package imported here
# would be that checkout's, so nothing outside the standard library is imported at the top.
HERE = Path(__file__).resolve()
ENV = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/streamchat_bench",
    "SECRET_KEY": "bench-send",
    "DEBUG": "0",
    "SECURE_SSL_REDIRECT": "0",
    "ALLOWED_HOSTS": "testserver",
    "CHAT_MODELS": "openai:bench",
    "OPENAI_API_KEY": "sk-bench-not-a-key",
    # Nothing streams here, so every reply stays queued: neither limit may refuse the sends.
    "CHAT_MESSAGES_PER_MINUTE": "0",
    "CHAT_MAX_CONCURRENT_REPLIES": "0",
    "DJANGO_SETTINGS_MODULE": "project.settings",
}


def measure(requests: int, history: int = 0) -> dict[str, float]:
    """In the checkout this process runs from: CPU µs per send request and per limits check, for a user
    with `history` other conversations."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.costs import limits
    from chat.models import Conversation

    user = get_user_model().objects.create_user(username=f"send-{uuid.uuid4().hex[:12]}")
    Conversation.objects.bulk_create(
        [Conversation(user=user, model="openai:bench", title=f"earlier {i}") for i in range(history)]
    )
    conversation = Conversation.objects.create(user=user, model="openai:bench")
    client = Client()
    client.force_login(user)
    url = f"/chat/{conversation.pk}/messages/"

    sizes: list[int] = []

    def send() -> None:
        form = {"text": "Benchmark me", "model": "openai:bench", "request_key": uuid.uuid4().hex}
        response = client.post(url, form, headers={"HX-Request": "true"})
        if response.status_code != 200:
            raise SystemExit(f"send answered HTTP {response.status_code}")
        sizes.append(len(response.content))

    def cpu_per_call(call: object, count: int) -> float:
        for _ in range(5):  # imports, templates, the connection
            call()  # type: ignore[operator]
        started = time.process_time()
        for _ in range(count):
            call()  # type: ignore[operator]
        return (time.process_time() - started) / count * 1e6

    return {
        "send_us": cpu_per_call(send, requests),
        "check_us": cpu_per_call(lambda: limits.check(user), requests),
        "send_bytes": statistics.median(sizes),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.send", description=__doc__)
    parser.add_argument("--app-dir", action="append", default=[], help="another checkout to measure (repeatable)")
    parser.add_argument("--requests", type=int, default=100, help="requests per round and checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history", type=int, default=0, help="the sending user's other conversations")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # the child process's own mode
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.history)))
        return
    from bench import database, procs

    checkouts = [procs.ROOT, *(Path(d).resolve() for d in args.app_dir)]
    database.recreate(database.POSTGRES_URL, {**os.environ, **ENV})
    results: dict[Path, list[dict[str, float]]] = {c: [] for c in checkouts}
    measure_args = ["--measure", str(args.requests), "--history", str(args.history)]
    for checkout in procs.alternated(checkouts, args.rounds):
        results[checkout].append(procs.measure_checkout(HERE, checkout, measure_args, ENV))
    print(
        f"CPU per call, median of {args.rounds} rounds of {args.requests} (every round in brackets), "
        f"for a user with {args.history} other conversations:"
    )
    base = statistics.median(r["send_us"] for r in results[procs.ROOT])
    for checkout, rounds in results.items():
        send, check = ([r[key] / 1000 for r in rounds] for key in ("send_us", "check_us"))
        ratio = statistics.median(send) * 1000 / base
        size = statistics.median(r.get("send_bytes", 0) for r in rounds) / 1024
        print(
            f"  {checkout}: send {_ms(send)}, limits.check {_ms(check)}; send × {ratio:.2f} of this checkout's;"
            f" response {size:.1f} KiB"
        )


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ms ({', '.join(f'{v:.2f}' for v in values)})"


if __name__ == "__main__":
    main()
