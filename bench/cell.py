"""One cell of the matrix: a fresh server, a warm-up, C conversations for a window, and its numbers."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import database, procs, profile
from bench.load import Plan, Run, question
from bench.report import Cell, summarise
from tests.fake_upstream import generated_text
from tests.sample_replies import CONTENTS, reply_text

OUT = procs.ROOT / "bench" / "out"


@dataclass
class Setting:
    """What every cell of a run shares."""

    tokens: int  # deltas per reply, whatever the content
    ttft: float
    quick: bool
    env: dict[str, str]  # the server's environment
    users: list[tuple[int, str, str]]
    window: float | None = None  # seconds; None = by concurrency and interval
    direct_share: float = 0.25
    question_chars: int = 0  # every question padded to this many characters; 0: the short default question
    profile: set[tuple[str, int, int]] = field(default_factory=set)  # (server, interval ms, C) to profile
    app_dir: Path = procs.ROOT  # the checkout whose app is measured
    # The machine is shared: before measuring, wait (boundedly) for other processes to use less than this.
    quiet_cores: float = 0.35
    quiet_wait_left: float = 90.0  # seconds of waiting left for the whole run


def reply_seconds(setting: Setting, interval: float) -> float:
    return setting.ttft + setting.tokens * interval


def window_seconds(setting: Setting, interval: float, concurrency: int) -> float:
    if setting.window:
        return setting.window
    if interval == 0:
        return 4.0 if setting.quick else 5.0
    # About 100 replies per window where that fits, but at least two reply lengths of steady state.
    duration = reply_seconds(setting, interval)
    longest = 2 if setting.quick else 6
    return duration * min(max(math.ceil(100 / concurrency), 2), longest)


def direct_readers(setting: Setting, concurrency: int) -> int:
    """Direct readers run alongside: all of C when small, a share of it when large (they share a core)."""
    return min(concurrency, max(10, math.ceil(concurrency * setting.direct_share)))


def run_cell(
    *,
    setting: Setting,
    server: str,
    interval: float,
    concurrency: int,
    sim: procs.Process,
    sim_url: str,
    variant: str = "",
    extra_env: dict[str, str] | None = None,
    content: str = "plain",
    html_bytes: int | None = None,
) -> Cell:
    accounts = database.fresh_conversations(setting.users[:concurrency])
    writes_before = database.row_writes()
    duration = reply_seconds(setting, interval)
    ramp = max(duration, 1.0)
    window = window_seconds(setting, interval, concurrency)
    name = f"{server}-{content}-{interval * 1000:g}ms-c{concurrency}" + (f"-{variant}" if variant else "")
    env = {**setting.env, **(extra_env or {}), "OPENAI_BASE_URL": f"{sim_url}/v1"}
    if server == "bare":
        # The bare relay has no question of its own to send: it sends the one the direct readers send.
        env["BENCH_QUESTION_CHARS"] = str(setting.question_chars)
    app, app_url = procs.start_server(server=server, env=env, log=OUT / "logs" / f"{name}.log", app_dir=setting.app_dir)
    cell = Cell(
        server=server,
        interval=interval,
        concurrency=concurrency,
        direct=direct_readers(setting, concurrency),
        window=window,
        env=extra_env or {},
        variant=variant,
        content=content,
        html_bytes=html_bytes,
    )
    plan = Plan(
        app_url=app_url,
        sim_url=sim_url,
        accounts=accounts,
        direct=cell.direct,
        ramp=ramp,
        window_start=ramp + 0.5,
        window_end=ramp + 0.5 + window,
        timeout=max(60.0, 6 * duration),
        bare=server == "bare",
        question=question(setting.question_chars),
    )
    wanted = (server, round(interval * 1000), concurrency) in setting.profile and not variant
    profile_path = OUT / f"profile-{name}.txt" if wanted else None
    try:
        warm = asyncio.run(Run(dataclasses.replace(plan, accounts=accounts[:1], direct=0)).warm_up())
        if warm:
            raise RuntimeError(f"{name}: the warm-up conversation failed: {warm}\n{app.log_text()[-3000:]}")
        cell.quiet_wait = wait_for_quiet(setting)
        idle_rss = procs.rss_bytes(app.pid)
        sampler = Sampler(app=app.pid, sim=sim.pid, plan=plan, profile=profile_path)
        got = asyncio.run(Run(plan).run(sampler.sample))
    finally:
        app.stop()
    time.sleep(0.5)  # PostgreSQL publishes a backend's counters when it exits
    writes_after = database.row_writes()
    summarise(cell, got, tokens=setting.tokens)
    cell.log_errors = procs.server_log_errors(app.log_text())
    cell.rss_idle_mib = idle_rss / 2**20
    cell.rss_peak_mib = sampler.peak_rss / 2**20
    cell.kib_per_stream = max(0, sampler.peak_rss - idle_rss) / 1024 / concurrency
    cell.threads = sampler.peak_threads
    cell.db_connections = sampler.peak_db_connections
    cpu, events = sampler.cpu["app"], cell.events_per_s * window
    cell.server_cpu = cpu / window
    cell.load_cpu = (sampler.cpu["sim"] + sampler.cpu["load"]) / window
    cell.other_cpu = max(0.0, sampler.cpu["machine"] - cpu - sampler.cpu["sim"] - sampler.cpu["load"]) / window
    cell.cpu_us_per_event = cpu / events * 1e6 if events else None
    if writes_before is not None and writes_after is not None and not plan.bare:
        # Every conversation sent (the warm-up's too); the server's start-up writes (price snapshots) are in
        # other tables, and the C conversations the bench made for the cell are not the app's.
        replies = 1 + sum(1 for e in got.exchanges if e.kind == "app" and e.send is not None)

        def delta(table: str) -> int:
            return writes_after.get(table, 0) - writes_before.get(table, 0)  # type: ignore[union-attr]

        cell.writes_per_reply = delta("chat_message") / replies
        cell.all_writes_per_reply = (delta("chat_message") + delta("chat_conversation") - concurrency) / replies
    if profile_path is not None:
        sampler.wait_profiler()
        if profile_path.exists():
            cell.profile = profile.summarise(profile_path)
            cell.profile_categories = profile.categories(profile_path)
    return cell


def content_text(content: str, tokens: int) -> str:
    """The reply the simulator streams for a content: "plain" is its "tok0 tok1 ...", the others markdown."""
    return reply_text(content, tokens) if content in CONTENTS else generated_text(tokens)


# Run in the measured checkout, so the size is that of the HTML its own renderer makes of the reply.
RENDER = (
    "import sys; from chat.streaming.rendering import render_markdown as r; print(len(r(sys.stdin.read()).encode()))"
)


def final_html_bytes(app_dir: Path, text: str) -> int:
    """The size of a reply's final HTML (the stored reply as the page shows it), in bytes."""
    env = {**os.environ, "PYTHONPATH": str(app_dir)}
    out = subprocess.run(
        [sys.executable, "-c", RENDER], cwd=app_dir, env=env, input=text, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def wait_for_quiet(setting: Setting, *, most: float = 30.0) -> float:
    """Sample the whole machine's busy CPU each second until it is below the threshold (our idle processes
    included), for at most `most` seconds and what is left of the run's waiting budget; seconds waited."""
    started = time.monotonic()
    limit = min(most, setting.quiet_wait_left)
    while True:
        before = procs.machine_busy_seconds()
        time.sleep(1.0)
        if procs.machine_busy_seconds() - before < setting.quiet_cores or time.monotonic() - started >= limit:
            break
    waited = time.monotonic() - started - 1.0
    setting.quiet_wait_left = max(0.0, setting.quiet_wait_left - waited)
    return max(0.0, waited)


class Sampler:
    """Reads CPU at the window's edges and RSS through it; starts py-spy for the window when asked."""

    def __init__(self, *, app: int, sim: int, plan: Plan, profile: Path | None) -> None:
        self.pids = {"app": app, "sim": sim, "load": os.getpid()}
        self.plan = plan
        self.profile = profile
        self.profiler: subprocess.Popen[bytes] | None = None
        self.cpu = {"app": 0.0, "sim": 0.0, "load": 0.0, "machine": 0.0}
        self.peak_rss = 0
        self.peak_threads = 0
        self.peak_db_connections: int | None = None

    def _cpu(self) -> dict[str, float]:
        return {"machine": procs.machine_busy_seconds()} | {
            name: procs.cpu_seconds(pid) for name, pid in self.pids.items()
        }

    async def sample(self, t0: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, t0 + self.plan.window_start - loop.time()))
        start = self._cpu()
        if self.profile is not None:
            seconds = self.plan.window_end - self.plan.window_start
            self.profiler = procs.start_profiler(pid=self.pids["app"], seconds=seconds, out=self.profile)
        end_at = t0 + self.plan.window_end
        ticks = 0
        while loop.time() < end_at:
            self.peak_rss = max(self.peak_rss, procs.rss_bytes(self.pids["app"]))
            self.peak_threads = max(self.peak_threads, procs.threads(self.pids["app"]))
            if ticks % 10 == 5:
                try:
                    count = await asyncio.to_thread(database.open_connections)
                except Exception:  # e.g. the server has taken every connection: that shows in its errors
                    count = None
                if count is not None:
                    self.peak_db_connections = max(self.peak_db_connections or 0, count)
            ticks += 1
            await asyncio.sleep(min(0.2, max(0.0, end_at - loop.time())))
        end = self._cpu()
        self.cpu = {name: end[name] - start[name] for name in start}

    def wait_profiler(self) -> None:
        if self.profiler is not None:
            try:
                self.profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait()
