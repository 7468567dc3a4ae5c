"""The load generator: C conversations through the app and, at the same moments, readers of the simulator."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

STREAM_URL = re.compile(rb"/chat/replies/(\d+)/stream/")
# What marks a chunk carrying reply text, whatever the text is: the app's text event (since decision 0032 an event
# of the type that needs no name, its id line followed at once by data; before, `event: text`), and a content
# delta of the simulator (its opening chunk has role and content, in that order, so it does not match).
Markers = tuple[bytes, ...]
APP_TEXT: Markers = (b"event: text\n", *(b"%d\ndata:" % digit for digit in range(10)))
APP_DONE: Markers = (b"event: done", b"event:done")
APP_ERROR: Markers = (b"event: error", b"event:error")
DIRECT_TEXT: Markers = (b'"delta":{"content":',)
DIRECT_DONE: Markers = (b"data: [DONE]",)
DIRECT_ERROR: Markers = (b'{"error"',)
QUESTION = "Benchmark me"  # what every user asks by default
# --question-chars pads the question with this, a pasted document: plain prose the form keeps as it is (no
# markup to escape, no whitespace at the ends to strip) and without the markers the readers look for (the text,
# done and error events), so a long question changes what the app stores and sends, not what is timed.
FILLER = (
    "The quarterly report covers revenue, costs and the outlook for the next year in some detail. "
    "Each section lists the figures first and then explains what changed since the last report and why.\n\n"
)


def question(chars: int) -> str:
    """The question a user sends: QUESTION as it is for 0, else QUESTION and FILLER to exactly `chars`
    characters (at least len(QUESTION): bench/__main__.py checks)."""
    if chars <= 0:
        return QUESTION
    text = (f"{QUESTION}. {FILLER * (chars // len(FILLER) + 1)}")[:chars]
    # The form strips whitespace at the ends: a last character that is none keeps the length exact.
    return text[:-1] + "." if text[-1].isspace() else text


def simulated_request(text: str) -> str:
    """What a direct reader (and the bare relay, bench/bare.py) asks the simulator for: the app's request for
    a conversation's first question, in short (the app's later requests also carry the earlier turns)."""
    return json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 4096,
        }
    )


@dataclass(frozen=True, slots=True)
class Account:
    """One logged-in browser: its session and CSRF cookies, and the conversation it writes in."""

    conversation_id: int
    cookie: str
    csrf: str


@dataclass(frozen=True, slots=True)
class Plan:
    app_url: str
    sim_url: str
    accounts: list[Account]
    direct: int  # concurrent direct readers of the simulator, interleaved with the app's conversations
    ramp: float  # first starts are spread over this many seconds, so arrivals are steady, not a herd
    window_start: float  # seconds after the start: measure from here ...
    window_end: float  # ... to here; no exchange starts after it
    timeout: float  # per exchange, so every run ends
    bare: bool = False  # app_url is the bare reference relay (bench/bare.py): one GET per reply, no accounts
    question: str = QUESTION  # the text of every send, and of every direct reader's request


@dataclass(slots=True)
class Exchange:
    kind: str  # "app" or "direct"
    started: float
    in_window: bool
    send: float | None = None  # the POST, app only
    ttft: float | None = None  # from the stream request to the first chunk carrying a token
    finished: float = 0.0
    error: str = ""
    body_bytes: int = 0  # of the reply's stream (the app's, or the relay's), as it came over the wire


@dataclass
class Collected:
    exchanges: list[Exchange] = field(default_factory=list)
    gaps: dict[str, array] = field(default_factory=lambda: {"app": array("d"), "direct": array("d")})
    completed: dict[str, int] = field(default_factory=lambda: {"app": 0, "direct": 0})


class Run:
    """One cell: closed-loop workers until the window ends, then every exchange in flight finishes."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.out = Collected()
        self.t0 = 0.0
        # Built once: at 32,000 characters a request per exchange would be the load generator's own cost.
        self.direct_request = simulated_request(plan.question)

    async def run(self, sampler: Callable[[float], object] | None = None) -> Collected:
        plan = self.plan
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout, auto_decompress=False
        ) as http:
            self.t0 = loop.time()
            workers = len(plan.accounts) + plan.direct
            # Interleave the two kinds in the start order, so each second starts both alike.
            every = max(1, round(workers / max(plan.direct, 1)))
            tasks, app_i, direct_i = [], 0, 0
            for slot in range(workers):
                delay = plan.ramp * slot / workers
                if direct_i < plan.direct and (slot % every == every - 1 or app_i >= len(plan.accounts)):
                    tasks.append(asyncio.create_task(self._loop(http, delay, None)))
                    direct_i += 1
                else:
                    tasks.append(asyncio.create_task(self._loop(http, delay, plan.accounts[app_i])))
                    app_i += 1
            sampling = asyncio.create_task(sampler(self.t0)) if sampler else None  # type: ignore[arg-type]
            try:
                await asyncio.gather(*tasks)
            finally:
                if sampling:
                    sampling.cancel()
        return self.out

    async def warm_up(self) -> str:
        """One conversation before measuring, so imports, templates and connections are ready; its error or ""."""
        self.t0 = asyncio.get_running_loop().time()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            await self._conversation(http, self.plan.accounts[0])
        return self.out.exchanges[-1].error

    async def _loop(self, http: aiohttp.ClientSession, delay: float, account: Account | None) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)
        stop_at = self.t0 + self.plan.window_end
        while loop.time() < stop_at:
            if account is None:
                await self._direct(http)
            else:
                # A browser told to come back later does, not at once: a refusal storm is not a user.
                if wait := await self._conversation(http, account):
                    await asyncio.sleep(wait)

    async def _conversation(self, http: aiohttp.ClientSession, account: Account) -> float:
        """One measured exchange: a reply through the app, or through the bare relay in its place;
        the seconds a refusal asked the user to wait before the next one."""
        if self.plan.bare:
            await self._direct(http, via_relay=True)
            return 0.0
        return await self._app(http, account)

    def _exchange(self, kind: str) -> Exchange:
        now = asyncio.get_running_loop().time()
        rel = now - self.t0
        return Exchange(kind, now, self.plan.window_start <= rel < self.plan.window_end)

    async def _app(self, http: aiohttp.ClientSession, account: Account) -> float:
        ex = self._exchange("app")
        loop = asyncio.get_running_loop()
        base = self.plan.app_url
        try:
            async with asyncio.timeout(self.plan.timeout):
                headers = {"Cookie": account.cookie, "X-CSRFToken": account.csrf, "HX-Request": "true"}
                form = {"text": self.plan.question, "model": "openai:bench", "request_key": uuid.uuid4().hex}
                send_url = f"{base}/chat/{account.conversation_id}/messages/"
                async with http.post(send_url, data=form, headers=headers) as r:
                    body = await r.read()
                    if r.status != 200:
                        ex.error = f"send HTTP {r.status}"
                        return refusal_wait(r)
                match = STREAM_URL.search(body)
                if match is None:
                    ex.error = "no stream url"
                    return 0.0
                opened = loop.time()
                ex.send = opened - ex.started
                headers = {"Cookie": account.cookie, "Accept": "text/event-stream"}
                async with http.get(base + match.group(0).decode(), headers=headers) as r:
                    if r.status != 200:
                        ex.error = f"stream HTTP {r.status}"
                        return refusal_wait(r)
                    await self._read(r, ex, opened, APP_TEXT, APP_DONE, APP_ERROR)
        except TimeoutError:
            ex.error = "timeout"
        except aiohttp.ClientError as exc:
            ex.error = type(exc).__name__
        finally:
            ex.finished = loop.time()
            self.out.exchanges.append(ex)
        return 0.0

    async def _direct(self, http: aiohttp.ClientSession, *, via_relay: bool = False) -> None:
        """The simulator's stream as it is: straight from it, or through the bare relay, which passes it on
        unchanged and stands where the app would (an "app" exchange)."""
        ex = self._exchange("app" if via_relay else "direct")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.plan.timeout):
                if via_relay:
                    request = http.get(f"{self.plan.app_url}/relay/", headers={"accept": "text/event-stream"})
                else:
                    headers = {"content-type": "application/json", "accept": "text/event-stream"}
                    url = f"{self.plan.sim_url}/v1/chat/completions"
                    request = http.post(url, data=self.direct_request, headers=headers)
                async with request as r:
                    if r.status != 200:
                        ex.error = f"{'relay' if via_relay else 'direct'} HTTP {r.status}"
                        return
                    await self._read(r, ex, ex.started, DIRECT_TEXT, DIRECT_DONE, DIRECT_ERROR)
        except TimeoutError:
            ex.error = "timeout"
        except aiohttp.ClientError as exc:
            ex.error = type(exc).__name__
        finally:
            ex.finished = loop.time()
            self.out.exchanges.append(ex)

    async def _read(
        self,
        response: aiohttp.ClientResponse,
        ex: Exchange,
        opened: float,
        text: Markers,
        done: Markers,
        error: Markers,
    ) -> None:
        """Times every chunk that carries text and counts the body's bytes; a reply is complete when its done
        event came and no error event did (the done event may or may not repeat the text)."""
        loop = asyncio.get_running_loop()
        window_start, window_end = self.t0 + self.plan.window_start, self.t0 + self.plan.window_end
        gaps, kind = self.out.gaps[ex.kind], ex.kind
        tail, last_at, finished = b"", 0.0, False
        async for chunk in response.content.iter_any():
            now = loop.time()
            ex.body_bytes += len(chunk)
            seen = len(tail)
            data = tail + chunk  # a marker split across two reads is still found
            tail = data[-24:]
            if finished:
                continue
            if first(data, error, 0) >= 0:
                ex.error = "error event"
            cut = first(data, done, 0)
            if cut >= 0:
                finished = True
                data = data[:cut]
            # A marker that ends in this read (it may have begun in the last one) makes it a chunk carrying text.
            if first(data, text, seen) < 0:
                continue
            if ex.ttft is None:
                ex.ttft = now - opened
            elif window_start <= now < window_end:
                gaps.append(now - last_at)
            last_at = now
        if not ex.error:
            if not finished:
                ex.error = "stream ended without its final event"
            elif window_start <= loop.time() < window_end:
                self.out.completed[kind] += 1


def first(data: bytes, markers: Markers, seen: int) -> int:
    """Where the first of the markers that ends after `seen` bytes of data starts, or -1."""
    found = [i for m in markers if (i := data.find(m, max(0, seen - len(m) + 1))) >= 0]
    return min(found, default=-1)


def refusal_wait(response: aiohttp.ClientResponse) -> float:
    """The Retry-After of a refusal (429, 503): how long a user told to wait waits before trying again."""
    if response.status not in (429, 503):
        return 0.0
    try:
        return float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0
