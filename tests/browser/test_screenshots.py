"""The screenshots of the README and the docs, taken from the real pages: a streamed chat reply, a code block
while it streams and once it is finished (docs/decisions/0032), and the admin cost report.

`SCREENSHOTS=update pytest tests/browser/test_screenshots.py` writes them to docs/screenshots/ (committed);
without it they go to artifacts/screenshots/ (ignored), so an ordinary run leaves the committed files alone.
"""

from __future__ import annotations

import os
import random
import re
import struct
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group

from chat.costs.money import usd
from chat.models import Conversation, GroupPolicy, Message, Role, Status
from tests.browser.conftest import Tab, new_tab
from tests.browser.test_chat_page import wait_until
from tests.browser.test_live_rendering import CLOSING, CODE, CODE_REPLY
from tests.conftest import ROOT, LiveServer, stored_exchange
from tests.fake_upstream import Scenario

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

UPDATE = os.environ.get("SCREENSHOTS") == "update"
OUT = ROOT / ("docs" if UPDATE else "artifacts") / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}

QUESTION = "How do I retry an HTTP request with exponential backoff in Python?"
ANSWER = """## Retry with exponential backoff

Wrap the call in a loop that **doubles the wait** after every failure:

- Start small, say half a second.
- Add random *jitter*, so clients don't retry in lockstep.
- Give up after a few attempts and re-raise the error.

```python
def fetch(url: str, attempts: int = 5) -> httpx.Response:
    for attempt in range(attempts):
        try:
            return httpx.get(url, timeout=10).raise_for_status()
        except httpx.HTTPError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt + random.random() / 10)
```
"""
# Earlier conversations, so the sidebar looks like somebody's.
HISTORY = [
    "Postgres index for a LIKE query",
    "Summarise the incident report",
    "Regex for ISO 8601 dates",
    "Explain CORS preflight requests",
]

REPORT = "/admin/chat/message/report/"
SINCE, UNTIL = date(2026, 11, 1), date(2026, 11, 30)
# List prices in USD per million input and output tokens, so the made-up costs are plausible ones.
PRICES = {
    "openai:gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "anthropic:claude-sonnet-4-5": (Decimal("3"), Decimal("15")),
}
MICRODOLLAR = Decimal("0.000001")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def screenshot(tab: Tab, name: str, *, full_page: bool = False, viewport: dict[str, int] = VIEWPORT) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    tab.page.mouse.move(0, 0)  # no hover state in the picture
    # caret="initial": hiding the caret would inject a <style>, which our CSP rightly refuses.
    tab.page.screenshot(path=str(path), caret="initial", full_page=full_page, animations="disabled")
    assert path.stat().st_size > 20_000, f"{path} is only {path.stat().st_size} bytes"
    width, height = png_size(path)
    assert width == viewport["width"] and height >= viewport["height"], (width, height)
    return path


def settle(tab: Tab, timeout: float = 5) -> None:
    """Wait until htmx has finished swapping (its htmx-added / htmx-settling marks are gone)."""
    expression = "document.querySelectorAll('.htmx-added, .htmx-settling, .htmx-request').length === 0"
    deadline = time.monotonic() + timeout
    while not tab.page.evaluate(expression):
        assert time.monotonic() < deadline, "htmx never settled"
        time.sleep(0.05)


@pytest.fixture
def wide_tab(chromium: Any, asgi_server: LiveServer, user: Any) -> Iterator[Tab]:
    for tab in new_tab(chromium, asgi_server, user):
        tab.page.set_viewport_size(VIEWPORT)
        yield tab


PHONE = {"width": 390, "height": 844}


@pytest.fixture
def phone(chromium: Any, asgi_server: LiveServer, user: Any) -> Iterator[Tab]:
    yield from new_tab(chromium, asgi_server, user, viewport=PHONE, is_mobile=True, has_touch=True)


@pytest.fixture
def dark_wide_tab(chromium: Any, asgi_server: LiveServer, user: Any) -> Iterator[Tab]:
    yield from new_tab(chromium, asgi_server, user, viewport=VIEWPORT, color_scheme="dark")


def stored_chat(user: Any) -> Conversation:
    """The README's conversation, finished and stored, after a few earlier ones."""
    for title in HISTORY:
        Conversation.objects.create(user=user, model="openai:gpt-4o-mini", title=title)
    chat = Conversation.objects.create(user=user, model="openai:gpt-4o-mini", title="Retry with backoff")
    stored_exchange(
        chat,
        QUESTION,
        ANSWER,
        stop_reason="stop",
        input_tokens=31,
        output_tokens=212,
        cost=Decimal("0.00013185"),
        ttft_ms=412,
        duration_ms=4630,
        usage_source="provider",
    )
    return chat


def test_the_phone_screenshots_show_the_messages_the_drawer_and_stop_in_the_composer(phone: Tab, user, sim) -> None:
    chat = stored_chat(user)
    phone.open(f"/chat/{chat.pk}/")
    settle(phone)
    screenshot(phone, "chat-phone", viewport=PHONE)
    phone.page.get_by_role("button", name="Conversations").click()
    phone.page.get_by_role("link", name=HISTORY[0]).wait_for(state="visible")
    phone.page.wait_for_timeout(300)  # the drawer's slide
    screenshot(phone, "chat-phone-drawer", viewport=PHONE)
    phone.page.keyboard.press("Escape")

    sim.enqueue(Scenario(text=ANSWER, interval=0.05))
    box = phone.page.get_by_role("textbox", name="Message")
    box.fill("And in JavaScript?")
    box.press("Enter")
    phone.page.locator("#messages .live").wait_for()
    live_text = "document.querySelector('#messages .live .content')?.textContent ?? ''"
    wait_until(phone, f"({live_text}).length > 2 * {len(ANSWER)} / 3")  # two thirds of it on screen
    assert phone.page.get_by_role("button", name="Stop").is_visible()
    screenshot(phone, "chat-phone-streaming", viewport=PHONE)
    phone.page.get_by_role("button", name="Stop").click()
    phone.page.locator("#messages .message.assistant.status-cancelled").wait_for()


def test_the_dark_screenshot_shows_the_chat_in_dark_mode(dark_wide_tab: Tab, user) -> None:
    chat = stored_chat(user)
    dark_wide_tab.open(f"/chat/{chat.pk}/")
    settle(dark_wide_tab)
    background = dark_wide_tab.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(23, 24, 27)", background  # chat.css's dark --bg
    screenshot(dark_wide_tab, "chat-dark")


@pytest.fixture
def admin_tab(chromium: Any, asgi_server: LiveServer, django_user_model: Any) -> Iterator[Tab]:
    admin = django_user_model.objects.create_superuser(username="admin", password="an-admin-test-password")
    for tab in new_tab(chromium, asgi_server, admin):
        tab.page.set_viewport_size(VIEWPORT)
        yield tab


def test_the_chat_screenshot_shows_a_finished_streamed_reply_with_highlighted_code(wide_tab: Tab, user, sim) -> None:
    for title in HISTORY:
        Conversation.objects.create(user=user, model="openai:gpt-4o-mini", title=title)
    chat = Conversation.objects.create(user=user, model="openai:gpt-4o-mini")
    sim.enqueue(Scenario(text=ANSWER, interval=0.01, input_tokens=31, ttft=0.3))
    wide_tab.open(f"/chat/{chat.pk}/")
    box = wide_tab.page.locator("#composer textarea")
    box.fill(QUESTION)
    box.press("Enter")

    finished = wide_tab.page.locator("#messages .message.assistant.status-completed")
    finished.wait_for(timeout=20_000)
    settle(wide_tab)
    reply = Message.objects.get(conversation=chat, role=Role.ASSISTANT)
    assert reply.status == Status.COMPLETED and reply.content == ANSWER
    [request] = sim.log
    assert request.body["messages"][-1]["content"] == QUESTION  # the question went upstream as typed

    assert wide_tab.page.locator("#messages .message.user .content").inner_text() == QUESTION
    assert finished.locator(".content h2").inner_text() == "Retry with exponential backoff"
    assert finished.locator("strong").inner_text() == "doubles the wait"
    assert finished.locator("ul > li").count() == 3
    assert finished.locator(".code-block .code-lang").inner_text() == "python"
    code = finished.locator(".code-block code")
    assert "def fetch(url: str, attempts: int = 5)" in code.inner_text()
    assert code.locator("span.k").count() >= 5  # def, for, try, return, except... highlighted by Pygments
    assert code.locator("span.nf").inner_text() == "fetch"
    assert "tokens/s" in finished.locator("footer.meta").inner_text()
    assert wide_tab.page.locator("#sidebar").get_by_text(HISTORY[0]).first.is_visible()

    # The whole conversation fits the window: the question has not scrolled away under the header.
    question_top = wide_tab.page.locator("#messages .message.user").bounding_box()["y"]
    assert question_top >= wide_tab.page.locator("#scroller").bounding_box()["y"], question_top
    screenshot(wide_tab, "chat")
    assert wide_tab.errors == [], wide_tab.errors


CODE_TEXT = "document.querySelector('#messages .message.assistant .content pre code')?.textContent ?? ''"
REPLY_TEXT = "document.querySelector('#messages .message.assistant .content')?.textContent ?? ''"


def test_the_code_screenshots_show_a_code_block_while_its_fence_is_open_and_once_it_closed(
    wide_tab: Tab, user, sim
) -> None:
    chat = Conversation.objects.create(user=user, model="openai:gpt-4o-mini", title="A polite page fetcher")
    # About 8 s of reply: a look every 30 ms catches the block at 40 lines with seconds of code still to come.
    sim.enqueue(Scenario(text=CODE_REPLY, interval=0.015, ttft=0.2))
    wide_tab.open(f"/chat/{chat.pk}/")
    box = wide_tab.page.locator("#composer textarea")
    box.fill("Write me a page fetcher with a per-host rate limit, retries and a cache.")
    box.press("Enter")

    wait_until(wide_tab, f"({CODE_TEXT}).split('\\n').length > 40")
    screenshot(wide_tab, "code-streaming")
    shown = wide_tab.page.evaluate(CODE_TEXT)
    # Still mid-stream once the picture was taken: the code part-way, the closing sentence not yet there.
    assert CODE.startswith(shown.rstrip()) and len(shown) < len(CODE)
    assert CLOSING not in wide_tab.page.evaluate(REPLY_TEXT)

    finished = wide_tab.page.locator("#messages .message.assistant.status-completed")
    finished.wait_for(timeout=20_000)
    settle(wide_tab)
    assert finished.locator(".content pre code").text_content() == CODE
    assert finished.locator(".content pre code span.k").count() >= 20  # highlighted by Pygments
    assert finished.get_by_text(CLOSING).is_visible()
    screenshot(wide_tab, "code-finished")
    assert wide_tab.errors == [], wide_tab.errors


def priced_reply(conversation: Conversation, when: datetime, input_tokens: int, output_tokens: int) -> Message:
    """A finished question and reply on `when`, the reply costing what its tokens cost at PRICES."""
    provider, _, model = conversation.model.partition(":")
    per_input, per_output = PRICES[conversation.model]
    cost = ((input_tokens * per_input + output_tokens * per_output) / 1_000_000).quantize(Decimal("1e-10"))
    question = Message.objects.create(
        conversation=conversation, role=Role.USER, status=Status.COMPLETED, content="A question."
    )
    answer = Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        status=Status.COMPLETED,
        content="An answer.",
        provider=provider,
        model=model,
        stop_reason="stop" if provider == "openai" else "end_turn",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_source="provider",
        cost=cost,
        ttft_ms=400,
        duration_ms=6000,
    )
    Message.objects.filter(pk__in=[question.pk, answer.pk]).update(created_at=when, finished_at=when)
    answer.refresh_from_db()
    return answer


def november(users: list[Any]) -> list[Message]:
    """A month of replies from two users on two models, on working days, with seeded token counts."""
    rng = random.Random(2026)  # the same month, and the same picture, every run
    conversations = [
        Conversation.objects.create(user=user, model=model, title=f"{user.username} on {model}")
        for user in users
        for model in PRICES
    ]
    replies = []
    day = SINCE
    while day <= UNTIL:
        if day.weekday() < 5:
            for conversation in conversations:
                for _ in range(rng.randint(0, 3)):
                    when = datetime(day.year, day.month, day.day, rng.randint(8, 18), rng.randint(0, 59), tzinfo=UTC)
                    replies.append(priced_reply(conversation, when, rng.randint(400, 9000), rng.randint(150, 1200)))
        day += timedelta(days=1)
    # Outside the period on both sides: the report must leave these out.
    for when in (datetime(2026, 10, 31, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, 0, 0, tzinfo=UTC)):
        priced_reply(conversations[1], when, 2_000_000, 100_000)
    return replies


def exact(value: Decimal) -> str:
    """What a figure's title says: the CSV's digits, to the millionth of a dollar."""
    return f"${value.quantize(MICRODOLLAR)}"


def test_the_cost_report_screenshot_shows_a_month_of_priced_replies(admin_tab: Tab, user, django_user_model) -> None:
    bob = django_user_model.objects.create_user(username="bob", password="bob-test-password")
    replies = november([user, bob])
    # Two teams, one person in both: the per-group rows overlap (docs/decisions/0037).
    research, interns = Group.objects.create(name="Research"), Group.objects.create(name="Interns")
    GroupPolicy.objects.create(group=research, monthly_usd=Decimal(5))
    GroupPolicy.objects.create(group=interns, monthly_usd=Decimal(1), models=["openai:gpt-4o-mini"])
    research.user_set.add(user, bob)
    interns.user_set.add(user)
    by_user: dict[str, Decimal] = defaultdict(Decimal)
    by_model: dict[str, Decimal] = defaultdict(Decimal)
    by_day: dict[str, Decimal] = defaultdict(Decimal)
    for reply in replies:
        by_user[reply.conversation.user.username] += reply.cost
        by_model[f"{reply.provider}:{reply.model}"] += reply.cost
        by_day[reply.created_at.date().isoformat()] += reply.cost
    total = sum(by_user.values(), Decimal(0))
    assert len(replies) > 40 and set(by_user) == {"alice", "bob"} and set(by_model) == set(PRICES)

    log_before = len(admin_tab.server.log())
    response = admin_tab.open(f"{REPORT}?since={SINCE}&until={UNTIL}")
    assert response.status == 200
    page = admin_tab.page
    assert page.locator("h1").inner_text() == "Cost report: 1 Nov 2026 – 30 Nov 2026 (UTC)"
    assert page.locator("#total-cost").inner_text() == usd(total)
    assert page.locator("#total-cost").get_attribute("title") == exact(total)
    assert page.locator("#total-replies").inner_text() == f"{len(replies):,}"
    assert page.locator("#total-without-cost").inner_text() == "0"

    for table, expected in (("by-user", by_user), ("by-model", by_model), ("by-day", by_day)):
        rows = page.locator(f"#{table} tbody tr")
        shown = {row.get_attribute("data-key"): row.locator("td.cost").inner_text() for row in rows.all()}
        assert shown == {key: usd(cost) for key, cost in expected.items()}, table
        titles = {row.get_attribute("data-key"): row.locator("td.cost").get_attribute("title") for row in rows.all()}
        assert titles == {key: exact(cost) for key, cost in expected.items()}, table
        assert page.locator(f"#{table} tfoot td.cost").inner_text() == usd(total), table

    groups = {row.get_attribute("data-key"): row for row in page.locator("#by-group tbody tr").all()}
    assert groups.keys() == {"Research", "Interns"}
    assert groups["Research"].locator("td.cost").get_attribute("title") == exact(total)  # both its members
    assert groups["Interns"].locator("td.cost").get_attribute("title") == exact(by_user["alice"])
    assert groups["Interns"].locator("td.budget").inner_text() == "$1.00"
    assert page.locator("#by-group tfoot").count() == 0  # overlapping rows have no total

    # A bar for each day of November; the working days' bars have the day's spend, and a height.
    bars = page.locator("#chart svg rect.bar")
    assert bars.count() == 30
    titles = [title.text_content() for title in page.locator("#chart svg rect.bar > title").all()]
    assert [t for t in titles if not t.endswith(": $0")] == [
        f"{day}: {usd(cost)}" for day, cost in sorted(by_day.items())
    ]
    heights = [float(bar.get_attribute("height")) for bar in bars.all()]
    assert sum(h > 0 for h in heights) == len(by_day)
    assert page.locator("#chart svg rect.bar").first.bounding_box()["width"] > 5  # drawn, not collapsed

    screenshot(admin_tab, "cost-report", full_page=True)
    # The admin links no favicon, so Chromium asks for /favicon.ico and logs its 404; nothing else may fail.
    served = re.findall(r'"[A-Z]+ (\S+)" (\d{3}) ', admin_tab.server.log()[log_before:])
    failed = {(path, status) for path, status in served if status >= "400"}
    assert len(served) > 3 and failed <= {("/favicon.ico", "404")}, served
    assert all("404 (Not Found)" in error for error in admin_tab.errors), admin_tab.errors
