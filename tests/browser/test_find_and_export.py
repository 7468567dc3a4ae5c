"""Find and export in a real browser: the sidebar's search and its day groups, the title at send, the downloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from chat.models import Conversation, Message, Role, Status
from tests.browser.conftest import SCREENSHOTS, Tab, new_tab
from tests.browser.test_chat_page import reply_locator, send
from tests.conftest import LiveServer
from tests.fake_upstream import Scenario
from tests.test_sidebar_groups import KIRITIMATI, boundary_items, grouped

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def chat(user: Any, title: str, *texts: str, days_ago: float = 0) -> Conversation:
    conversation = Conversation.objects.create(user=user, model="openai:gpt-4o-mini", title=title)
    for number, text in enumerate(texts):
        reply = {"role": Role.ASSISTANT, "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 12}
        fields = {"role": Role.USER} if number % 2 == 0 else {**reply, "output_tokens": 9, "cost": Decimal("0.00001")}
        Message.objects.create(conversation=conversation, content=text, status=Status.COMPLETED, **fields)
    moment = timezone.now() - timedelta(days=days_ago)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=moment)
    return conversation


def history(user: Any) -> None:
    """A sidebar that looks like somebody's: conversations from today back to last month."""
    chat(user, "Lighthouse keeping in winter", "What did a lighthouse keeper do all winter?", "Trimmed wicks.")
    chat(user, "Regex for ISO 8601 dates", "A regex for 2026-12-07?", "Use `\\d{4}-\\d{2}-\\d{2}`.", days_ago=0.01)
    chat(user, "Postgres index for a LIKE query", "Why is my LIKE query slow?", "Try a trigram index.", days_ago=1)
    chat(user, "Summarise the incident report", "Summarise this, please.", "The lighthouse cable failed.", days_ago=3)
    chat(user, "Explain CORS preflight requests", "What is a preflight?", "An OPTIONS request first.", days_ago=5)
    chat(user, "Sourdough starter schedule", "How often do I feed it?", "Twice a day.", days_ago=20)
    chat(user, "Bike chain maintenance", "How do I clean a chain?", "Degrease, then lube.", days_ago=45)


def sidebar_headings(tab: Tab) -> list[str]:
    nav = tab.page.get_by_role("navigation", name="Conversations")
    return [h.text_content() for h in nav.get_by_role("heading", level=2).all() if h.is_visible()]


def search_box(tab: Tab) -> Any:
    return tab.page.get_by_role("searchbox", name="Search conversations")


def test_typing_a_search_shows_the_matches_with_excerpts_and_clearing_it_brings_the_list_back(tab: Tab, user) -> None:
    history(user)
    chat(user, "Hostile", "a lighthouse <img src=x onerror=\"window.__pwned='search'\"> here")
    tab.open("/chat/")
    results = tab.page.locator("#search-results")
    search_box(tab).press_sequentially("lighthouse", delay=30)

    found = results.get_by_role("link", name="Lighthouse keeping in winter")
    expect(found).to_be_visible()
    expect(results.get_by_role("status")).to_have_text("3 conversations match “lighthouse”.")
    keeping = results.locator("li").filter(has=tab.page.get_by_role("link", name="Lighthouse keeping in winter"))
    expect(keeping.locator(".excerpt mark")).to_have_text("lighthouse")
    incident = results.locator("li").filter(has_text="Summarise the incident report")
    expect(incident.locator(".excerpt")).to_contain_text("The lighthouse cable failed.")
    expect(results.locator(".excerpt").filter(has_text="<img src=x")).to_have_count(1)  # shown as text
    assert tab.page.evaluate("window.__pwned") is None
    expect(tab.page.locator("#conversation-list")).to_be_hidden()  # the results take the list's place

    search_box(tab).press_sequentially("zzz", delay=30)
    expect(results.get_by_role("status")).to_have_text("No conversations match “lighthousezzz”.")

    search_box(tab).fill("")
    expect(tab.page.locator("#conversation-list")).to_be_visible()
    expect(results.locator("*")).to_have_count(0)
    expect(tab.page.get_by_role("link", name="Bike chain maintenance")).to_be_visible()

    found_by_enter = search_box(tab)
    found_by_enter.fill("trigram")
    found_by_enter.press("Enter")  # the form's own submit, taken over by htmx: no page load
    expect(results.get_by_role("link", name="Postgres index for a LIKE query")).to_be_visible()
    assert tab.page.url.endswith("/chat/")
    assert tab.errors == [], (tab.errors, [r for r in tab.requests if "search" in r])


def test_the_sidebar_groups_conversations_by_the_day_in_the_browsers_time_zone(
    chromium: Any, asgi_server: LiveServer, user
) -> None:
    now = timezone.now()
    items = boundary_items(now)
    for title, moment in items:
        conversation = Conversation.objects.create(user=user, model="demo:demo", title=title)
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=moment)
    for tab in new_tab(chromium, asgi_server, user, timezone_id=KIRITIMATI):
        tab.open("/chat/")
        cookies = {c["name"]: c["value"] for c in tab.page.context.cookies()}
        assert cookies["tz"] == KIRITIMATI  # set by chat.js from Intl's zone
        tab.page.reload()
        expected = grouped(items, ZoneInfo(KIRITIMATI), now)
        headings = [entry for entry in expected if entry in ("Today", "Yesterday", "Previous 7 days", "Older")]
        assert sidebar_headings(tab) == headings
        listed = tab.page.locator("#conversation-list > li").all()
        shown = [li.locator("h2, a").first.text_content() for li in listed if li.is_visible()]
        assert shown == expected
        assert tab.errors == []


def test_a_new_chat_is_titled_from_its_first_message_while_the_reply_is_still_written(tab: Tab, user, sim) -> None:
    chat(user, "An old chat", "old", "older", days_ago=40)
    empty = Conversation.objects.create(user=user, model="openai:gpt-4o-mini")
    Conversation.objects.filter(pk=empty.pk).update(updated_at=timezone.now() - timedelta(days=30))
    sim.enqueue(Scenario(tokens=150, interval=0.03))
    tab.open(f"/chat/{empty.pk}/")
    assert sidebar_headings(tab) == ["Older"]  # Today is there for the send, but has nothing to show yet
    send(tab, "Knitting a scarf for a giraffe")

    heading = tab.page.get_by_role("heading", level=1)
    expect(heading).to_have_text("Knitting a scarf for a giraffe")
    expect(tab.page).to_have_title("Knitting a scarf for a giraffe · streamchat")
    item = tab.page.locator(f"#conversation-{empty.pk}")
    expect(item.get_by_role("link")).to_have_text("Knitting a scarf for a giraffe")
    assert reply_locator(tab).get_attribute("data-status") in {"queued", "streaming"}  # not yet finished
    # Moved to the top, under Today: the heading is now shown, and the item is the first after it.
    assert sidebar_headings(tab) == ["Today", "Older"]
    assert tab.page.evaluate("document.querySelector('#conversation-list > .group-today').nextElementSibling.id") == (
        f"conversation-{empty.pk}"
    )
    reply_locator(tab, "completed").wait_for(timeout=20_000)
    assert tab.page.locator(f"#conversation-{empty.pk}").count() == 1
    assert tab.errors == []


def test_a_chat_started_on_the_first_page_is_titled_at_once(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(tokens=150, interval=0.03))
    tab.open("/chat/")
    box = tab.page.locator("#composer textarea")
    box.fill("Plan a picnic on the moon")
    box.press("Enter")
    expect(tab.page.get_by_role("heading", level=1)).to_have_text("Plan a picnic on the moon")
    expect(tab.page).to_have_title("Plan a picnic on the moon · streamchat")
    nav = tab.page.get_by_role("navigation", name="Conversations")
    expect(nav.get_by_role("link", name="Plan a picnic on the moon")).to_be_visible()
    assert reply_locator(tab).get_attribute("data-status") in {"queued", "streaming"}
    assert sidebar_headings(tab) == ["Today"]
    reply_locator(tab, "completed").wait_for(timeout=20_000)


@pytest.fixture
def exported(user: Any) -> Conversation:
    conversation = chat(user, "Crème brûlée: the torch question", "How do I caramelise sugar?")
    Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        content="Use a **torch**, and keep it moving.",
        status=Status.COMPLETED,
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=18,
        output_tokens=9,
        cost=Decimal("0.0000081234"),
        stop_reason="stop",
        ttft_ms=310,
        duration_ms=900,
        finished_at=timezone.now(),
    )
    return conversation


def test_the_export_menu_downloads_markdown_and_json(tab: Tab, exported: Conversation) -> None:
    tab.open(f"/chat/{exported.pk}/")
    header = tab.page.locator(".chat-head")
    control = header.get_by_role("button", name="Export")
    assert control.get_attribute("aria-expanded") == "false"
    markdown_link = tab.page.get_by_role("link", name="Markdown")
    expect(markdown_link).to_be_hidden()
    control.click()
    expect(markdown_link).to_be_visible()
    assert control.get_attribute("aria-expanded") == "true"
    expect(markdown_link).to_be_focused()  # focus moves into the menu
    tab.page.keyboard.press("Escape")
    expect(markdown_link).to_be_hidden()
    expect(control).to_be_focused()  # and back to its button
    control.click()

    with tab.page.expect_download() as info:
        markdown_link.click()
    download = info.value
    assert download.suggested_filename == "creme-brulee-the-torch-question.md"
    text = open(download.path(), encoding="utf-8").read()
    assert text.startswith("# Crème brûlée: the torch question\n")
    assert "How do I caramelise sugar?" in text and "Use a **torch**, and keep it moving." in text
    assert "<$0.0001" in text and "18 in · 9 out" in text  # the one money format: a tiny cost is not "$0"

    expect(markdown_link).to_be_hidden()  # a download closes the menu
    control.click()
    with tab.page.expect_download() as info:
        tab.page.get_by_role("link", name="JSON").click()
    download = info.value
    assert download.suggested_filename == "creme-brulee-the-torch-question.json"
    document = json.loads(open(download.path(), encoding="utf-8").read())
    assert document["format"] == "streamchat.conversation/1"
    assert [m["role"] for m in document["messages"]] == ["user", "assistant"]
    assert document["messages"][1]["cost_usd"] == "0.0000081234"
    assert tab.errors == []


# Screenshots to look at: the grouped sidebar and a search, wide, narrow and dark (artifacts/screenshots/).


@pytest.fixture(params=[("wide", 1280, 800, "light"), ("narrow", 390, 844, "light"), ("dark", 1280, 800, "dark")])
def shot_tab(request: Any, chromium: Any, asgi_server: LiveServer, user: Any) -> Iterator[tuple[str, Tab]]:
    name, width, height, scheme = request.param
    for tab in new_tab(chromium, asgi_server, user, color_scheme=scheme):
        tab.page.set_viewport_size({"width": width, "height": height})
        yield name, tab


def test_screenshots_of_the_groups_and_a_search(shot_tab: tuple[str, Tab], user) -> None:
    name, tab = shot_tab
    history(user)
    current = Conversation.objects.get(user=user, title="Lighthouse keeping in winter")
    tab.open(f"/chat/{current.pk}/")
    if name == "narrow":  # on a phone the list is a drawer
        tab.page.get_by_role("button", name="Conversations").click()
        tab.page.wait_for_timeout(300)  # its slide
    expect(tab.page.get_by_role("heading", name="Yesterday")).to_be_visible()
    tab.page.mouse.move(0, 0)
    path = tab.screenshot(f"find-groups-{name}")
    assert path.stat().st_size > 10_000

    search_box(tab).press_sequentially("lighthouse", delay=20)
    expect(tab.page.locator("#search-results .excerpt mark").first).to_be_visible()
    tab.screenshot(f"find-search-{name}")

    if name == "narrow":
        tab.page.keyboard.press("Escape")
    tab.page.get_by_role("button", name="Export").click()
    expect(tab.page.get_by_role("link", name="JSON")).to_be_visible()
    tab.screenshot(f"find-export-{name}")
    assert (SCREENSHOTS / f"find-export-{name}.png").exists()
    assert tab.errors == []
