"""python -m bench: the matrix of concurrency x token interval per server, the capacity search, bench/RESULTS.md."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import cell, database, procs, results
from bench.load import QUESTION, question
from bench.report import Cell

MATRIX = [1, 10, 100, 250, 500, 1000]
QUICK = [1, 10, 100]
# The capacity criterion is checked at this interval (seconds between tokens).
CAPACITY_INTERVAL = 0.02
MAX_PROBES = 4
# Alternatives measured against the defaults, at 20 ms and C=100 under daphne: "label:KEY=VALUE,...".
VARIANTS = [
    "httpx transport:CHAT_HTTP_TRANSPORT=httpx",
    "no DB pool:DATABASE_POOL_SIZE=0",
    "GIL switch 1 ms:CHAT_SWITCH_INTERVAL=0.001",
]
VARIANT_C = 100
# The bare Django relay (bench/bare.py) at these C, 20 ms, in every run that measures daphne there: what a
# relay that does nothing costs on the same machine at the same moment, the floor streamchat's numbers stand on.
REFERENCE_C = [100, 250, 500]
# What the replies are (tests/sample_replies.py; "plain" is the simulator's "tok0 tok1 ..."). The first content
# gets the whole run; each other one the rows below at 20 ms under each server, and the bare relay at C=100 beside
# them, so a full run shows every content in about five more minutes.
CONTENTS = ["mixed", "prose", "code"]
QUICK_CONTENTS = ["mixed"]
OTHER_CONTENT_C = [1, 10, 100]
# The app's default CHAT_MAX_MESSAGE_CHARS: a longer question would be refused, and every send count as an error.
MAX_QUESTION_CHARS = 32000


def question_chars(value: str) -> int:
    """--question-chars: 0 (the default question), or a length the app accepts that pads the default question."""
    try:
        chars = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if chars < 0 or chars > MAX_QUESTION_CHARS:
        raise argparse.ArgumentTypeError(
            f"{chars} is not from 0 to {MAX_QUESTION_CHARS} (the app's default CHAT_MAX_MESSAGE_CHARS)"
        )
    if 0 < chars < len(QUESTION):
        raise argparse.ArgumentTypeError(f"{chars} would cut the question short: 0, or at least {len(QUESTION)}")
    return chars


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="C in 1,10,100 at 20 ms only, no capacity search (~2 min)")
    parser.add_argument(
        "--servers", default="daphne,uvicorn", help="comma-separated: daphne, uvicorn, bare (the reference relay)"
    )
    parser.add_argument("--concurrency", help="comma-separated C values (default: 1,10,100,250,500,1000)")
    parser.add_argument("--intervals", help="comma-separated ms between tokens (default: 20,0; quick: 20)")
    parser.add_argument("--tokens", type=int, default=200, help="deltas per reply, whatever the content")
    parser.add_argument(
        "--content",
        help="comma-separated: mixed, prose, code, plain (default: mixed,prose,code; quick: mixed); the first "
        "gets the whole run, the others C=1,10,100 at 20 ms and the bare relay at C=100",
    )
    parser.add_argument("--ttft", type=float, default=50, help="simulated time to first token, ms")
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--no-capacity", action="store_true", help="skip the capacity search")
    parser.add_argument("--window", type=float, help="measured seconds per cell (default: by C and interval)")
    parser.add_argument("--direct-share", type=float, default=0.25, help="direct readers per app conversation above 10")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    parser.add_argument("--profile", action="append", default=[], metavar="SERVER:MS:C", help="py-spy this cell")
    parser.add_argument("--output", help="Markdown file (default: bench/RESULTS.md; quick: bench/out/RESULTS-quick.md)")
    parser.add_argument(
        "--variant", action="append", metavar="LABEL:KEY=VALUE,...", help="extra cell with these settings"
    )
    parser.add_argument("--no-variants", action="store_true", help="skip the variant cells")
    parser.add_argument("--no-reference", action="store_true", help="skip the bare relay's reference cells")
    parser.add_argument("--app-dir", help="measure the app of another checkout (e.g. a copy before a change)")
    parser.add_argument("--budget", type=float, default=1200, help="seconds; cells that would start later are skipped")
    parser.add_argument(
        "--question-chars",
        type=question_chars,
        default=0,
        metavar="N",
        help=f"pad every question to N characters, a pasted document (up to {MAX_QUESTION_CHARS}; default 0: "
        f"{QUESTION!r})",
    )
    args = parser.parse_args(argv)
    # A lower limit set for the run's servers would refuse every send: say so now, not after the warm-up.
    limits = [item.partition("=")[2] for item in args.env if item.partition("=")[0] == "CHAT_MAX_MESSAGE_CHARS"]
    if limits and limits[-1].strip().isdigit() and args.question_chars > int(limits[-1]):
        parser.error(f"--question-chars {args.question_chars} is above --env CHAT_MAX_MESSAGE_CHARS={limits[-1]}")
    return args


def csv(value: str | None, default: list, cast: type = int) -> list:
    return [cast(v) for v in value.split(",") if v.strip()] if value else default


def server_env(db_url: str, extra: list[str]) -> dict[str, str]:
    env = {
        **os.environ,
        # Production settings (DEBUG off) over plain local HTTP, as a deployment runs.
        "SECRET_KEY": "bench-" + secrets.token_urlsafe(32),
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": db_url,
        "CHAT_MODELS": "openai:bench",
        "OPENAI_API_KEY": "sk-bench-not-a-key",
        # A bench user sends far faster than a person; a huge limit keeps the check (and its query) in the path.
        "CHAT_MESSAGES_PER_MINUTE": "1000000",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def parse_variants(specs: list[str]) -> list[tuple[str, dict[str, str]]]:
    variants = []
    for spec in specs:
        label, _, settings = spec.partition(":")
        if label == "no DB pool" and importlib.util.find_spec("psycopg_pool") is None:
            continue  # without psycopg-pool the default is already no pool
        variants.append((label, dict(item.split("=", 1) for item in settings.split(",") if item)))
    return variants


def capacity_search(
    run: callable, server: str, cells: list[Cell], deadline: float
) -> tuple[int, int | None, list[Cell]]:
    """Bisect between the largest passing and the smallest failing C measured so far."""
    measured = [c for c in cells if c.server == server and c.interval == CAPACITY_INTERVAL]
    lo = max((c.concurrency for c in measured if c.passes), default=0)
    hi = min((c.concurrency for c in measured if not c.passes and c.concurrency > lo), default=None)
    probes: list[Cell] = []
    while hi is not None and len(probes) < MAX_PROBES and time.monotonic() < deadline:
        step = 25 if hi > 100 else 5
        if hi - lo <= step:
            break
        mid = max(lo + step, min(hi - step, round((lo + hi) / 2 / step) * step))
        probe = run(server, CAPACITY_INTERVAL, mid)
        probes.append(probe)
        if probe.passes:
            lo = mid
        else:
            hi = mid
    return lo, hi, probes


def progress(result: Cell, started: float) -> None:
    t = result.ttft
    name = result.server + (f" ({result.variant})" if result.variant else "")
    print(
        f"  {name:8} {result.content:5} {result.interval * 1000:4g} ms C={result.concurrency:5}: "
        f"added TTFT p50 {t.get('added_p50') or 0:7.1f} p99 {t.get('added_p99') or 0:7.1f} ms, "
        f"errors {result.errors}/{result.attempts}, {result.events_per_s:8.0f} ev/s, "
        f"{result.cpu_us_per_event or 0:5.1f} µs/ev, {result.kib_per_stream:6.1f} KiB/stream, "
        f"{result.threads} threads, {result.db_connections} DB conns, CPU {result.server_cpu:.0%}, "
        f"others {result.other_cpu:.0%}, waited {result.quiet_wait:.0f} s  [{time.monotonic() - started:4.0f} s]",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    started = time.monotonic()
    deadline = started + args.budget
    if len(os.sched_getaffinity(0)) > 1 or os.cpu_count() == 1:
        # This process is the load generator: it shares core 1 with the simulator, the relay has core 0.
        os.sched_setaffinity(0, {int(procs.LOAD_CORE)})
    procs.raise_fd_limit()
    servers = csv(args.servers, [], str)
    contents = csv(args.content, QUICK_CONTENTS if args.quick else CONTENTS, str)
    unknown = [c for c in contents if c not in (*CONTENTS, "plain")]
    if unknown:
        raise SystemExit(f"bench: unknown content {', '.join(unknown)}: use mixed, prose, code or plain")
    concurrency = csv(args.concurrency, QUICK if args.quick else MATRIX)
    intervals = [ms / 1000 for ms in csv(args.intervals, [20] if args.quick else [20, 0], float)]
    capacity = not (args.no_capacity or args.quick)
    variants = [] if args.no_variants or args.quick else parse_variants(args.variant or VARIANTS)
    reference = (
        []
        if args.no_reference or "bare" in servers or "daphne" not in servers
        else [c for c in REFERENCE_C if c in concurrency]
    )
    db_url = database.database_url(args.db)
    env = server_env(db_url, args.env)
    cell.OUT.mkdir(parents=True, exist_ok=True)
    print(
        f"bench: database {db_url}; servers {servers}; contents {contents}; C {concurrency}; intervals {intervals}; "
        f"question {len(question(args.question_chars))} characters",
        flush=True,
    )
    database.recreate(db_url, env)
    database.setup_django({k: v for k, v in env.items() if k in ("DATABASE_URL", "SECRET_KEY", "DEBUG")})
    setting = cell.Setting(
        tokens=args.tokens,
        ttft=args.ttft / 1000,
        quick=args.quick,
        env=env,
        users=database.make_accounts(max([*concurrency, 1000 if capacity else 0])),
        window=args.window,
        direct_share=args.direct_share,
        question_chars=args.question_chars,
        profile={(s, int(ms), int(c)) for s, ms, c in (p.split(":") for p in args.profile)},
        app_dir=Path(args.app_dir).resolve() if args.app_dir else procs.ROOT,
        quiet_wait_left=30.0 if args.quick else 90.0,
    )
    cells: list[Cell] = []
    skipped: list[str] = []
    capacities: dict[str, tuple[int, int | None, list[Cell]]] = {}
    # The matrix first, every interval, then the other contents, then the variants and the capacity search: if
    # the time budget runs out, what is skipped is a probe, not a row of the matrix.
    main_content = contents[0]
    phases = [(main_content, interval, "matrix") for interval in intervals]
    phases += [(content, CAPACITY_INTERVAL, "content") for content in contents[1:]]
    if CAPACITY_INTERVAL in intervals and (variants or capacity or reference):
        phases.append((main_content, CAPACITY_INTERVAL, "extra"))
    html_bytes = {
        content: cell.final_html_bytes(setting.app_dir, cell.content_text(content, args.tokens)) for content in contents
    }
    for content, interval, phase in phases:
        sim, sim_url = procs.start_simulator(
            tokens=args.tokens,
            interval=interval,
            ttft=setting.ttft,
            log=cell.OUT / "logs" / "simulator.log",
            content=content,
        )

        def run(
            server: str,
            interval: float,
            c: int,
            variant: str = "",
            extra: dict[str, str] | None = None,
            sim: procs.Process = sim,
            sim_url: str = sim_url,
            content: str = content,
        ) -> Cell:
            result = cell.run_cell(
                setting=setting,
                server=server,
                interval=interval,
                concurrency=c,
                sim=sim,
                sim_url=sim_url,
                variant=variant,
                extra_env=extra,
                content=content,
                html_bytes=html_bytes[content],
            )
            progress(result, started)
            return result

        try:
            if phase == "matrix":
                for server in servers:
                    for c in concurrency:
                        if time.monotonic() > deadline:
                            skipped.append(f"{server} {interval * 1000:g} ms C={c}")
                            continue
                        cells.append(run(server, interval, c))
                continue
            if phase == "content":
                rows = [(s, c) for s in servers for c in OTHER_CONTENT_C if c in concurrency]
                rows += [("bare", c) for c in reference[:1]]
                for server, c in rows:
                    if time.monotonic() > deadline:
                        skipped.append(f"{server} {content} C={c}")
                        continue
                    cells.append(run(server, interval, c))
                continue
            for c in reference:
                if time.monotonic() > deadline:
                    skipped.append(f"bare relay C={c}")
                    continue
                cells.append(run("bare", interval, c))
            for label, extra in variants:
                if time.monotonic() > deadline:
                    skipped.append(f"variant {label}")
                    continue
                cells.append(run(servers[0], interval, VARIANT_C, label, extra))
            if capacity:
                for server in servers:
                    capacities[server] = capacity_search(run, server, [c for c in cells if not c.variant], deadline)
        finally:
            sim.stop()
    elapsed = time.monotonic() - started
    stamp = datetime.now(UTC)
    raw = cell.OUT / f"results-{stamp:%Y%m%dT%H%M%S}.json"
    command = shlex.join([".venv/bin/python", "-m", "bench", *argv])
    raw.write_text(
        json.dumps(
            {
                "command": command,
                "when": stamp.isoformat(),
                "elapsed": elapsed,
                "code": results.code_state(),
                "skipped": skipped,
                "setting": {
                    "contents": contents,
                    "tokens": setting.tokens,
                    "ttft": setting.ttft,
                    "direct_share": setting.direct_share,
                    "question_chars": setting.question_chars,
                },
                "cells": [c.as_dict() for c in cells],
                "capacity": {s: [lo, hi, [p.as_dict() for p in probes]] for s, (lo, hi, probes) in capacities.items()},
            },
            indent=1,
        )
    )
    output = args.output or str(procs.ROOT / ("bench/out/RESULTS-quick.md" if args.quick else "bench/RESULTS.md"))
    text = results.document(
        cells=cells,
        capacities=capacities,
        command=command,
        db=database.server_version(),
        setting=setting,
        elapsed=elapsed,
        skipped=skipped,
        when=stamp,
    )
    with open(output, "w") as f:
        f.write(text)
    print(f"bench: {len(cells)} cells in {elapsed:.0f} s; wrote {output} and {raw}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
