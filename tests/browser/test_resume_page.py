"""A reply survives the page: a reload mid-reply continues it, and other tabs follow it."""

from __future__ import annotations

from typing import Any

import pytest

from chat.models import Message, Role, Status
from tests.browser.conftest import Tab, new_tab
from tests.browser.test_chat_page import conversation, open_and_send, reply_locator, send, wait_until
from tests.fake_upstream import Scenario

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SLOW = Scenario(tokens=250, interval=0.02)  # about 5 s of reply
REPLY_TEXT = "document.querySelector('#messages .message.assistant .content')?.innerText ?? ''"


@pytest.fixture
def patient_server(server_factory) -> Any:
    # A closed or reloading tab no longer cancels the reply at once (CHAT_UNWATCHED_TIMEOUT).
    return server_factory(CHAT_UNWATCHED_TIMEOUT="10")


@pytest.fixture
def tabs(chromium, patient_server, user) -> Any:
    first, second = new_tab(chromium, patient_server, user), new_tab(chromium, patient_server, user)
    yield next(first), next(second)
    for tab in (first, second):
        next(tab, None)


def stored_reply() -> Message:
    return Message.objects.get(role=Role.ASSISTANT)


def test_a_reload_mid_reply_picks_the_reply_up_and_it_finishes(tabs: tuple[Tab, Tab], user, sim) -> None:
    tab, _ = tabs
    sim.enqueue(SLOW)
    open_and_send(tab, user, "Count for me")
    wait_until(tab, f"{REPLY_TEXT}.length > 40")
    tab.page.reload()
    wait_until(tab, "document.querySelector('#messages .message.assistant.status-completed') !== null", timeout=20)
    reply = stored_reply()
    assert reply.status == Status.COMPLETED and len(sim.log) == 1  # one upstream call, never restarted
    assert reply.content == sim.expected_text(SLOW)
    shown = reply_locator(tab, "completed").locator(".content").inner_text().strip()
    assert shown == reply.content
    assert tab.errors == [], tab.errors


def test_a_second_tab_follows_the_reply_and_shows_the_same_result(tabs: tuple[Tab, Tab], user, sim) -> None:
    first, second = tabs
    sim.enqueue(SLOW)
    chat = open_and_send(first, user, "Count for me")
    wait_until(first, f"{REPLY_TEXT}.length > 40")
    second.open(f"/chat/{chat.pk}/")
    wait_until(second, f"{REPLY_TEXT}.length > 40")  # it is live in the second tab too
    for tab in tabs:
        wait_until(tab, "document.querySelector('#messages .message.assistant.status-completed') !== null", 20)
    html = [reply_locator(tab, "completed").locator(".content").inner_html() for tab in tabs]
    assert html[0] == html[1]
    assert stored_reply().status == Status.COMPLETED and len(sim.log) == 1


def test_a_message_sent_in_one_tab_shows_up_in_the_other(tabs: tuple[Tab, Tab], user, sim) -> None:
    first, second = tabs
    sim.enqueue(SLOW)
    chat = conversation(user)
    second.open(f"/chat/{chat.pk}/")
    first.open(f"/chat/{chat.pk}/")
    send(first, "Hello from the first tab")
    # The second tab's poller brings the question and the live reply, which it then follows.
    wait_until(second, "document.querySelector('#messages .message.user')?.innerText.includes('first tab')", 10)
    for tab in tabs:
        wait_until(tab, "document.querySelector('#messages .message.assistant.status-completed') !== null", 20)
        assert tab.page.locator("#messages .message.user").count() == 1  # never twice
        assert tab.page.locator("#messages .message.assistant").count() == 1
    assert reply_locator(second, "completed").locator(".content").inner_text().strip() == stored_reply().content
