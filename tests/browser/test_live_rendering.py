"""A reply as it renders live, seen from the page: a long code block grows token by token as plain text and is
highlighted once, when its fence closes; a reload shows exactly what the live page showed; model text that looks
like HTML stays text (issue 22)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from chat.models import Message, Role, Status
from tests.browser.conftest import Tab
from tests.browser.test_chat_page import conversation, reply_locator, send
from tests.fake_upstream import Scenario, split_deltas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# A realistic module of about 150 lines: Pygments finds keywords (`.k`) and function names (`.nf`) in it.
CODE = '''"""Fetch pages politely: a per-host rate limit, retries with backoff, and a small on-disk cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(Exception):
    """A page that could not be fetched after every retry."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass
class TokenBucket:
    """At most `rate` requests a second to one host, with bursts of up to `capacity`."""

    rate: float
    capacity: int = 5
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.capacity)

    def refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self) -> None:
        while True:
            self.refill()
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class DiskCache:
    """Response bodies keyed by URL, kept for `ttl` seconds."""

    def __init__(self, root: Path, ttl: float = 3600) -> None:
        self.root = root
        self.ttl = ttl
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, url: str) -> str | None:
        path = self.path_for(url)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if time.time() - entry["stored_at"] > self.ttl:
            path.unlink(missing_ok=True)
            return None
        return entry["body"]

    def put(self, url: str, body: str) -> None:
        path = self.path_for(url)
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"stored_at": time.time(), "body": body}))
        temporary.replace(path)


@dataclass
class Fetcher:
    """One client for many pages: polite to every host, patient with flaky ones."""

    cache: DiskCache
    per_host_rate: float = 2.0
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def bucket(self, url: str) -> TokenBucket:
        host = urlsplit(url).netloc
        if host not in self.buckets:
            self.buckets[host] = TokenBucket(rate=self.per_host_rate)
        return self.buckets[host]

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_delay)
        backoff = self.base_delay * 2**attempt
        return min(backoff + random.uniform(0, backoff / 2), self.max_delay)

    async def fetch(self, client: httpx.AsyncClient, url: str) -> str:
        if (cached := self.cache.get(url)) is not None:
            return cached
        reason = "no attempt made"
        for attempt in range(self.attempts):
            await self.bucket(url).take()
            try:
                response = await client.get(url, follow_redirects=True)
            except httpx.TransportError as exc:
                reason = type(exc).__name__
                await asyncio.sleep(self.delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES:
                reason = f"HTTP {response.status_code}"
                await asyncio.sleep(self.delay(attempt, response.headers.get("retry-after")))
                continue
            response.raise_for_status()
            self.cache.put(url, response.text)
            return response.text
        raise FetchError(url, reason)

    async def fetch_all(self, urls: list[str], concurrency: int = 8) -> dict[str, str | FetchError]:
        results: dict[str, str | FetchError] = {}
        limit = asyncio.Semaphore(concurrency)

        async def one(client: httpx.AsyncClient, url: str) -> None:
            async with limit:
                try:
                    results[url] = await self.fetch(client, url)
                except FetchError as exc:
                    logger.warning("giving up on %s", exc)
                    results[url] = exc

        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(*(one(client, url) for url in urls))
        return results


async def main(urls: list[str]) -> None:
    fetcher = Fetcher(cache=DiskCache(Path(".cache/pages")))
    pages = await fetcher.fetch_all(urls)
    for url, page in pages.items():
        print(url, "failed" if isinstance(page, FetchError) else f"{len(page):,} chars")
'''
INTRO = "Here is the whole module, with the rate limit, the retries and the cache in one place."
CLOSING = "Run it with asyncio.run(main(urls)) and the cache fills as pages arrive."
CODE_REPLY = f"{INTRO}\n\n```python\n{CODE}```\n\n{CLOSING}\n"
HTML_AS_TEXT = ("<img src=x onerror=alert(1)>", "<b>bold?</b>")
HTML_REPLY = f"""To make text bold, write {HTML_AS_TEXT[1]} in HTML; this page shows it as it is.

An image such as {HTML_AS_TEXT[0]} runs its handler wherever HTML is trusted.

{HTML_AS_TEXT[0]} {HTML_AS_TEXT[1]}

Both stay text here.
"""

# Installed with page.evaluate before the send (a MutationObserver needs no change to the CSP, unlike an init
# script): it notes, with a timestamp, every state of the newest reply in #messages, each state once until it
# changes. A state: the length of the text of the reply's `pre code` (-1 while there is none), whether it
# holds highlighting spans, how many elements matching `forbidden` the reply's content holds, which of the
# `watched` strings its text contains, and whether the reply is finished.
RECORDER = """({forbidden, watched}) => {
  const messages = document.getElementById('messages');
  const looks = window.__looks = [];
  let last = '';
  const look = () => {
    const reply = [...messages.querySelectorAll('.message.assistant')].pop();
    const content = reply && reply.querySelector('.content');
    if (!content) return;
    const code = content.querySelector('pre code');
    const text = content.textContent;
    const state = {
      length: code ? code.textContent.length : -1,
      highlighted: Boolean(code && code.querySelector('span[class]')),
      forbidden: content.querySelectorAll(forbidden).length,
      watched: watched.map((part) => text.includes(part)),
      finished: reply.classList.contains('status-completed'),
    };
    const key = JSON.stringify(state);
    if (key !== last) {
      last = key;
      looks.push({at: performance.now(), ...state});
    }
  };
  new MutationObserver(look).observe(messages, {childList: true, subtree: true, characterData: true});
}"""

# The newest reply's content as HTML, without the marks htmx leaves on fresh swaps for a few milliseconds.
CONTENT_HTML = """(() => {
  const reply = [...document.querySelectorAll('#messages .message.assistant')].pop();
  const content = reply.querySelector('.content').cloneNode(true);
  for (const added of content.querySelectorAll('.htmx-added, .htmx-settling, .htmx-swapping')) {
    added.classList.remove('htmx-added', 'htmx-settling', 'htmx-swapping');
    if (!added.classList.length) added.removeAttribute('class');
  }
  return content.innerHTML;
})()"""


@dataclass
class Look:
    """One state of the reply as the page's MutationObserver saw it (see RECORDER)."""

    at: float  # milliseconds, the page's performance.now()
    length: int
    highlighted: bool
    forbidden: int
    watched: list[bool]
    finished: bool


def record(tab: Tab, *, watched: Sequence[str] = (), forbidden: str = "img, script, iframe") -> None:
    tab.page.evaluate(RECORDER, {"forbidden": forbidden, "watched": list(watched)})


def recorded(tab: Tab) -> list[Look]:
    return [Look(**look) for look in tab.page.evaluate("window.__looks")]


def reload_shows_the_same_content(tab: Tab) -> None:
    live_html = tab.page.evaluate(CONTENT_HTML)
    tab.page.reload()
    reply_locator(tab, "completed").wait_for()
    assert tab.page.evaluate(CONTENT_HTML) == live_html


def assert_shown_as_text(tab: Tab, when: str) -> None:
    content = reply_locator(tab, "completed").locator(".content")
    assert content.locator("img, b, script, iframe").count() == 0, when
    shown = content.inner_text()
    assert [shown.count(part) for part in HTML_AS_TEXT] == [2, 2], f"{when}: {shown}"


def test_a_long_code_block_grows_as_plain_text_and_is_highlighted_once_when_it_closes(tab: Tab, user, sim) -> None:
    interval = 0.008
    sim.enqueue(Scenario(text=CODE_REPLY, interval=interval))
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    record(tab)
    send(tab, "Write me a polite page fetcher")
    finished = reply_locator(tab, "completed")
    finished.wait_for(timeout=30_000)
    looks = recorded(tab)

    reply = Message.objects.get(role=Role.ASSISTANT)
    assert reply.status == Status.COMPLETED and reply.content == CODE_REPLY
    code = finished.locator(".content pre code")
    assert code.text_content() == CODE
    assert code.locator("span.k").count() >= 20, code.inner_html()[:500]  # highlighted by Pygments
    assert {"fetch", "fetch_all", "refill"} <= set(code.locator("span.nf").all_text_contents())

    # The code's text only ever grew, in many small steps spread over the stream, to the whole code.
    with_code = [look for look in looks if look.length >= 0]
    lengths = [look.length for look in with_code]
    went_back = [(a, b) for a, b in itertools.pairwise(with_code) if b.length < a.length]
    assert not went_back, "the code's text went back while it streamed: " + "; ".join(
        f"from {a.length} to {b.length} characters after {b.at - a.at:.0f} ms" for a, b in went_back
    )
    assert lengths[-1] == len(CODE)
    steps = [b - a for a, b in itertools.pairwise([0, *dict.fromkeys(lengths)])]
    growing = [look for look in with_code if look.length < len(CODE)]  # its fence is certainly still open
    took = growing[-1].at - growing[0].at
    gaps = [b.at - a.at for a, b in itertools.pairwise(growing)]
    timing = f"{len(steps)} steps, largest {max(steps)} chars, over {took:.0f} ms, longest gap {max(gaps):.0f} ms"
    assert len(steps) >= 30, timing
    # A frame's worth of tokens is ~40 characters here; re-rendering the open block each time it grows by 1/32
    # (before issue 22) gave steps of up to ~250. A step of 1/16 of the code is a stall, not a frame.
    assert max(steps) <= len(CODE) / 16, timing
    sent_over = len(split_deltas(CODE)) * interval * 1000
    assert took >= sent_over / 2, f"the code arrived in a burst, sent over {sent_over:.0f} ms: {timing}"

    # While its fence was open the block was plain text; it was highlighted after that, once, and stayed so.
    highlighted_open = sum(look.highlighted for look in growing)
    first = next((look.length for look in growing if look.highlighted), None)
    assert highlighted_open == 0, (
        f"the open code block was highlighted in {highlighted_open} of {len(growing)} looks while it streamed, "
        f"first at {first} of {len(CODE)} characters"
    )
    marks = [look.highlighted for look in with_code]
    assert marks == sorted(marks), "the code block lost its highlighting after it had it"

    reload_shows_the_same_content(tab)
    assert tab.errors == [], tab.errors  # a refused inline style or script (CSP) is a console error


def test_model_text_that_looks_like_html_stays_text_while_streaming_and_after_a_reload(tab: Tab, user, sim) -> None:
    dialogs: list[str] = []
    tab.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sim.enqueue(Scenario(text=HTML_REPLY, interval=0.02))
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    record(tab, watched=list(HTML_AS_TEXT), forbidden="img, b, script, iframe")
    send(tab, "How do I make text bold?")
    reply_locator(tab, "completed").wait_for()
    looks = recorded(tab)

    assert Message.objects.get(role=Role.ASSISTANT).content == HTML_REPLY
    assert [look for look in looks if look.forbidden] == [], "model text reached the page as HTML"
    streaming = [look for look in looks if not look.finished]
    assert any(all(look.watched) for look in streaming), f"never shown as text while streaming: {streaming[-3:]}"
    assert_shown_as_text(tab, "live")
    reload_shows_the_same_content(tab)
    assert_shown_as_text(tab, "after a reload")
    assert dialogs == [] and tab.errors == [], (dialogs, tab.errors)
