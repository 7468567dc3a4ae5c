"""python -m bench.screen: what a person sees. Each token's lag from the simulator's send to the screen, the
longest freeze, the DOM updates, in Chromium through Playwright, per content and concurrency.

The simulator records when it wrote every delta (`--record-sends`); the page records, on the frame after each
DOM change of the live reply, how many letters and digits its text shows. A delta is on screen when the count
first reaches the letters and digits of the source up to it (tests/sample_replies.py: visible_counts).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import cell, database, procs
from bench.load import Plan, Run
from bench.report import fmt, percentile
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.sample_replies import visible_counts

SECTION = "## On screen"
# Installed in the page before the question is sent. One observer batch is one DOM update; the count is read on
# the next frame, when the browser paints what the batch changed. The code blocks' heads (language label, Copy
# button) are not the reply's text.
OBSERVE = """() => {
  const record = window.__screen = {changes: [], batches: 0, tasks: []};
  const messages = document.getElementById('messages');
  const alnum = /[A-Za-z0-9]/g;
  const count = (text) => (text.match(alnum) || []).length;
  function shown() {
    const replies = messages.querySelectorAll('.message.assistant');
    const content = replies.length ? replies[replies.length - 1].querySelector('.content') : null;
    if (!content) return 0;
    let n = count(content.textContent);
    for (const head of content.querySelectorAll('.code-head')) n -= count(head.textContent);
    return n;
  }
  let queued = false;
  new MutationObserver(() => {
    record.batches++;
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      const n = shown();
      const last = record.changes.length ? record.changes[record.changes.length - 1][1] : -1;
      if (n !== last) record.changes.push([performance.timeOrigin + performance.now(), n]);
    });
  }).observe(messages, {childList: true, subtree: true, characterData: true});
  new PerformanceObserver((list) => {
    for (const task of list.getEntries()) record.tasks.push([performance.timeOrigin + task.startTime, task.duration]);
  }).observe({type: 'longtask'});
}"""
NOW = "() => performance.timeOrigin + performance.now()"


@dataclass
class Seen:
    """One reply watched in the browser."""

    lags: list[float]  # seconds, one per delta that adds letters or digits
    unreached: int  # such deltas whose count the screen never showed
    freeze: float  # the longest stretch of the upstream's sending in which the screen did not change, seconds
    updates: int  # observer batches from the send to the end
    longest_task: float | None  # seconds


@dataclass
class Row:
    content: str
    concurrency: int
    tokens: int
    seen: list[Seen] = field(default_factory=list)
    background: str = ""

    def line(self) -> str:
        lags = [lag for s in self.seen for lag in s.lags]
        p50, p99 = percentile(lags, 50), percentile(lags, 99)
        freezes = [s.freeze * 1000 for s in self.seen]
        tasks = [s.longest_task for s in self.seen if s.longest_task is not None]
        return (
            f"| {self.content} | {self.concurrency} | {self.tokens} | {len(self.seen)} "
            f"| {fmt(ms(p50))} / {fmt(ms(p99))} / {fmt(ms(max(lags, default=None)))} "
            f"| {fmt(max(freezes, default=None))} ({', '.join(f'{f:.0f}' for f in freezes)}) "
            f"| {fmt(statistics.median(s.updates for s in self.seen) if self.seen else None)} "
            f"| {fmt(ms(max(tasks, default=None)))} | {sum(s.unreached for s in self.seen)} "
            f"| {self.background or '–'} |"
        )


HEADER = (
    "| content | C | deltas | runs | lag p50 / p99 / max, ms | longest freeze, ms: worst (each run) "
    "| DOM updates per reply | longest task, ms | never shown | background replies (errors) |\n"
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
)


def ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def analyse(deltas: list[list[Any]], record: dict[str, Any], skew: float) -> Seen:
    """From the simulator's [sent at, text] per delta and the page's record (browser clock, ms; `skew` seconds
    ahead of ours) to one reply's lags, longest freeze, DOM updates and longest task."""
    sent = [at for at, _ in deltas]
    counts = visible_counts([text for _, text in deltas])
    times = [at / 1000 - skew for at, _ in record["changes"]]
    highest, most = [], 0
    for _, shown in record["changes"]:
        most = max(most, shown)
        highest.append(most)
    lags, unreached, before = [], 0, 0
    for at, count in zip(sent, counts, strict=True):
        if count == before:
            continue  # whitespace or markup only: nothing to see
        before = count
        i = bisect.bisect_left(highest, count)
        if i == len(highest):
            unreached += 1
        else:
            lags.append(times[i] - at)
    start, end = sent[0], sent[-1]
    stills = [start, *(t for t in times if start < t < end), end]
    tasks = [duration / 1000 for at, duration in record["tasks"] if start <= at / 1000 - skew <= end + 1]
    return Seen(
        lags=lags,
        unreached=unreached,
        freeze=max(b - a for a, b in itertools.pairwise(stills)),
        updates=record["batches"],
        longest_task=max(tasks, default=None),
    )


def clock_skew(page: Any) -> float:
    """How far the browser's clock is ahead of ours, seconds: of five readings, the one with the shortest trip."""
    best = (float("inf"), 0.0)
    for _ in range(5):
        before = time.time()
        theirs = page.evaluate(NOW) / 1000
        after = time.time()
        best = min(best, (after - before, theirs - (before + after) / 2))
    return best[1]


def watch_one(browser: Any, *, app_url: str, sim_url: str, cookie: str, conversation: int, label: str) -> Seen:
    """Open the conversation, send a question through the page (type, Enter) and watch the reply to its end."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    session = dict(part.strip().split("=", 1) for part in cookie.split(";"))["sessionid"]
    context.add_cookies([{"name": "sessionid", "value": session, "url": app_url}])
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{app_url}/chat/{conversation}/")
        if page.locator("#messages").count() == 0:
            raise RuntimeError(f"no #messages at {page.url}: {page.title()!r} {page.inner_text('body')[:300]!r}")
        page.evaluate(OBSERVE)
        skew = clock_skew(page)
        question = f"Screen {label} {secrets.token_hex(4)}"
        box = page.locator("#composer textarea")
        box.fill(question)
        box.press("Enter")
        page.locator(
            "#messages .message.assistant.status-completed, #messages .message.assistant.status-failed"
        ).last.wait_for()
        time.sleep(0.3)  # the last frames
        record = page.evaluate("() => window.__screen")
    finally:
        context.close()
    sent = httpx.get(f"{sim_url}/_sent", params={"last": 200}, timeout=30).json()["replies"]
    [reply] = [r for r in sent if r["question"] == question]
    if reply["end"] != "completed":
        raise RuntimeError(f"the watched reply ended {reply['end']!r} at the simulator")
    return analyse(reply["deltas"], record, skew)


class Background:
    """C - 1 conversations through the app (bench/load.py's users), in a thread, until stopped."""

    def __init__(self, plan: Plan) -> None:
        self.run = Run(plan)
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[Any] | None = None
        self.thread = threading.Thread(target=self._main, name="background-load", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.run.run())
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    def stop(self) -> str:
        """Stop it (its open streams are closed); "completed (errors)" of its replies."""
        self.loop.call_soon_threadsafe(lambda: self.task and self.task.cancel())
        self.thread.join(timeout=60)
        exchanges = list(self.run.out.exchanges)
        return f"{sum(1 for e in exchanges if not e.error)} ({sum(1 for e in exchanges if e.error)})"


def measure(args: argparse.Namespace) -> list[Row]:
    from playwright.sync_api import sync_playwright

    from bench.__main__ import server_env

    env = server_env(database.database_url(args.db), args.env)
    database.recreate(database.database_url(args.db), env)
    database.setup_django({k: v for k, v in env.items() if k in ("DATABASE_URL", "SECRET_KEY", "DEBUG")})
    users = database.make_accounts(max(args.concurrency))
    app_dir = Path(args.app_dir).resolve() if args.app_dir else procs.ROOT
    # The page's static files, as a deploy's build step collects them (production settings serve the manifest).
    collect = [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"]
    subprocess.run(collect, cwd=app_dir, env=env, check=True)
    # Playwright's sync API keeps an event loop running in this thread; our ORM calls here are safe.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for content in args.content:
            tokens = args.code_tokens if content == "code" else args.tokens
            sim, sim_url = procs.start_simulator(
                tokens=tokens,
                interval=args.interval / 1000,
                ttft=args.ttft / 1000,
                log=cell.OUT / "logs" / f"screen-simulator-{content}.log",
                content=content,
                record_sends=True,
            )
            try:
                for c in args.concurrency:
                    rows.append(watch_cell(args, browser, users, content, tokens, c, sim_url, app_dir, env))
                    print(HEADER.splitlines()[0] + "\n" + rows[-1].line(), flush=True)
            finally:
                sim.stop()
        browser.close()
    return rows


def watch_cell(
    args: argparse.Namespace,
    browser: Any,
    users: list[tuple[int, str, str]],
    content: str,
    tokens: int,
    concurrency: int,
    sim_url: str,
    app_dir: Path,
    env: dict[str, str],
) -> Row:
    log = cell.OUT / "logs" / f"screen-daphne-{content}-c{concurrency}.log"
    app, app_url = procs.start_server(
        server="daphne", env={**env, "OPENAI_BASE_URL": f"{sim_url}/v1"}, log=log, app_dir=app_dir
    )
    row = Row(content=content, concurrency=concurrency, tokens=tokens)
    reply = args.ttft / 1000 + tokens * args.interval / 1000
    accounts = database.fresh_conversations(users[:concurrency])
    plan = Plan(
        app_url=app_url,
        sim_url=sim_url,
        accounts=accounts[1:] or accounts[:1],
        direct=0,
        ramp=reply,
        window_start=0.0,
        window_end=1e9,
        timeout=max(60.0, 6 * reply),
    )
    background = None
    try:
        # One conversation first, so imports, templates and connections are ready.
        # In a thread of its own: Playwright's sync API runs an event loop in this one.
        with ThreadPoolExecutor(1) as pool:
            warm = pool.submit(asyncio.run, Run(plan).warm_up()).result()
        if warm:
            raise RuntimeError(f"the warm-up conversation failed: {warm}\n{app.log_text()[-3000:]}")
        if concurrency > 1:
            background = Background(plan)
            time.sleep(reply + 1)  # past the ramp: every background user streaming
        for number in range(args.runs):
            [fresh] = database.fresh_conversations(users[:1])
            row.seen.append(
                watch_one(
                    browser,
                    app_url=app_url,
                    sim_url=sim_url,
                    cookie=users[0][1],
                    conversation=fresh.conversation_id,
                    label=f"{content} C={concurrency} run {number + 1}",
                )
            )
    finally:
        if background is not None:
            row.background = background.stop()
        app.stop()
    return row


def document(rows: list[Row], *, command: str, app_dir: Path, interval: float) -> str:
    when = datetime.now(UTC)
    box = procs.machine()
    return (
        f"{SECTION} (lag from the simulator's send to the screen, `python -m bench.screen`)\n\n"
        f"- **Date:** {when:%Y-%m-%d %H:%M} UTC. **Command:** `{command}`. **App:** {app_dir}.\n"
        f"- **Machine:** {box['cores']} cores ({box['cpu']}), shared with other work. daphne pinned to core "
        f"{procs.SERVER_CORE}; the simulator, the background load and Chromium (headless) on core {procs.LOAD_CORE}.\n"
        f"- One question sent through the page (typed, Enter) per run, {interval:g} ms per delta; at C > 1, C − 1 "
        "other users stream replies of the same content through the app meanwhile.\n"
        "- *lag*: for each delta that adds letters or digits, the first frame whose reply text shows as many "
        "(code blocks' language label and Copy button left out) minus the simulator's send time, pooled over the "
        "runs. *longest freeze*: the longest stretch between the first and the last delta's send in which the "
        "screen did not change. *DOM updates*: MutationObserver batches per reply. *longest task*: Chromium's "
        "main thread (`longtask`). *never shown*: deltas whose letters the screen never reached.\n\n"
        + HEADER
        + "".join(row.line() + "\n" for row in rows)
    )


def write_into(path: Path, section: str) -> None:
    """Replace the On screen section of a results file (or add it at the end)."""
    text = path.read_text() if path.exists() else ""
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    path.write_text(text.rstrip("\n") + "\n\n" + section)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.screen", description=__doc__)
    parser.add_argument("--content", default="prose,mixed,code", help="comma-separated: prose, mixed, code")
    parser.add_argument("--concurrency", default="1", help="comma-separated C (the browser and C − 1 others)")
    parser.add_argument("--runs", type=int, default=3, help="replies watched per content and C")
    parser.add_argument("--tokens", type=int, default=400, help="deltas per prose and mixed reply")
    parser.add_argument("--code-tokens", type=int, default=2000, help="deltas per code reply")
    parser.add_argument("--interval", type=float, default=20, help="ms between deltas")
    parser.add_argument("--ttft", type=float, default=50, help="simulated time to first token, ms")
    parser.add_argument("--app-dir", help="measure the app of another checkout")
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    parser.add_argument("--output", default=str(cell.OUT / "SCREEN.md"), help="the Markdown table")
    parser.add_argument("--into", help="also put the table in this results file, e.g. bench/RESULTS.md")
    args = parser.parse_args(argv)
    args.content = [c for c in args.content.split(",") if c]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"bench.screen drives the system Chromium at {CHROMIUM}, which is not installed")
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(procs.LOAD_CORE)})  # the browser and the load; daphne has core 0
    procs.raise_fd_limit()
    cell.OUT.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    command = " ".join([".venv/bin/python", "-m", "bench.screen", *argv])
    app_dir = Path(args.app_dir).resolve() if args.app_dir else procs.ROOT
    section = document(rows, command=command, app_dir=app_dir, interval=args.interval)
    Path(args.output).write_text(section)
    if args.into:
        write_into(Path(args.into), section)
    print(section, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
