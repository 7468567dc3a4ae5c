"""The everyday page, found as a person finds it (by the names of its controls): the conversations drawer on a
phone, Stop where Send was, Copy and Edit on every message, "Thought for N s", and a page that keeps its own
Content-Security-Policy (every tab checks that when it closes: tests/browser/conftest.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from chat.models import Message, Role, Status
from tests.browser.conftest import Tab, csp_violations
from tests.browser.test_chat_page import REPLY_LENGTH, conversation, open_and_send, reply_locator, send, wait_until
from tests.fake_upstream import Scenario

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FOCUS_IN_SIDEBAR = "document.getElementById('sidebar').contains(document.activeElement)"


def box_of(locator: Any) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not on screen"
    return box


def test_on_a_phone_the_conversations_are_a_drawer_and_the_messages_get_the_screen(phone_tab: Tab, user) -> None:
    tab = phone_tab
    chat = conversation(user, title="Soup ideas")
    conversation(user, title="Another chat")
    tab.open(f"/chat/{chat.pk}/")
    sidebar_link = tab.page.get_by_role("link", name="Another chat")
    assert not sidebar_link.is_visible()  # behind the drawer
    messages = box_of(tab.page.locator("#scroller"))
    assert messages["height"] > 0.7 * 844, messages  # was 364 of 844 with the list above the chat

    button = tab.page.get_by_role("button", name="Conversations")
    assert button.get_attribute("aria-expanded") == "false"
    button.click()
    sidebar_link.wait_for(state="visible")
    assert button.get_attribute("aria-expanded") == "true"
    wait_until(tab, FOCUS_IN_SIDEBAR)  # focus moves into it
    tab.page.keyboard.press("Escape")
    sidebar_link.wait_for(state="hidden")
    assert tab.page.evaluate("document.activeElement.classList.contains('drawer-button')")  # back where it was

    button.click()
    sidebar_link.wait_for(state="visible")
    tab.page.mouse.click(380, 420)  # a tap on the dimmed chat, outside the drawer
    sidebar_link.wait_for(state="hidden")
    assert button.get_attribute("aria-expanded") == "false"

    button.click()
    sidebar_link.click()  # choosing a conversation goes there
    tab.page.wait_for_url(re.compile(r"/chat/\d+/$"))
    assert tab.page.get_by_role("heading", name="Another chat").is_visible()


def test_on_a_phone_the_composer_is_one_line_without_keyboard_hints(phone_tab: Tab, user) -> None:
    tab = phone_tab
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    box, send_button = tab.page.get_by_role("textbox", name="Message"), tab.page.get_by_role("button", name="Send")
    line = box_of(box)
    assert abs(box_of(send_button)["y"] - line["y"]) < line["height"]  # side by side
    assert line["height"] < 48, line
    assert not tab.page.get_by_text("Shift+Enter").first.is_visible()  # no keyboard on a touch screen
    bar = box_of(tab.page.locator("#composer .composer-bar"))
    assert bar["height"] < 40, bar  # the model and the month figure, on one line
    assert box_of(tab.page.locator("#composer"))["width"] <= 390


def test_on_a_computer_there_is_no_drawer_and_the_keys_are_explained(tab: Tab, user) -> None:
    chat = conversation(user, title="Soup ideas")
    tab.open(f"/chat/{chat.pk}/")
    assert not tab.page.get_by_role("button", name="Conversations").is_visible()
    assert tab.page.get_by_role("link", name="Soup ideas").is_visible()
    assert tab.page.get_by_text("Shift+Enter").first.is_visible()


def test_esc_stops_a_reply_from_the_message_box(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(tokens=400, interval=0.02))
    open_and_send(tab, user, "Count slowly")
    wait_until(tab, f"{REPLY_LENGTH} > 40")
    tab.page.wait_for_timeout(600)  # long enough for a speed to mean something (Message.tokens_per_second)
    tab.page.get_by_role("textbox", name="Message").press("Escape")
    reply_locator(tab, "cancelled").wait_for()
    assert tab.page.locator("#composer").get_by_role("button", name="Send").is_visible()
    reply = Message.objects.get(role=Role.ASSISTANT)
    # Its speed is over the time it ran: from its first token to the Stop.
    assert reply.tokens_per_second == pytest.approx(reply.output_tokens * 1000 / (reply.duration_ms - reply.ttft_ms))
    footer = reply_locator(tab, "cancelled").locator("footer.meta").inner_text()
    assert f"{reply.tokens_per_second:.0f} tokens/s" in footer


def test_copy_gives_a_replys_markdown_and_a_questions_text(tab: Tab, user, sim) -> None:
    reply_text = "Use **bold** and a [link](https://example.com/)."
    sim.enqueue(Scenario(text=reply_text))
    open_and_send(tab, user, "Format <this>, please")
    reply = reply_locator(tab, "completed")
    reply.wait_for()
    reply.get_by_role("button", name="Copy", exact=True).click()
    wait_until(tab, "document.querySelector('#messages .assistant .copy-message').textContent === 'Copied'")
    assert tab.page.evaluate("navigator.clipboard.readText()") == reply_text
    question = tab.page.locator("#messages .message.user")
    question.hover()
    question.get_by_role("button", name="Copy", exact=True).click()
    wait_until(tab, "document.querySelector('#messages .user .copy-message').textContent === 'Copied'")
    assert tab.page.evaluate("navigator.clipboard.readText()") == "Format <this>, please"


def test_edit_asks_again_from_that_question_and_hides_what_followed(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(text="Gazpacho."), Scenario(text="Cold."), Scenario(text="Goulash."))
    chat = open_and_send(tab, user, "Name a soup")
    reply_locator(tab, "completed").wait_for()
    send(tab, "Hot or cold?")
    tab.page.locator("#messages .message.assistant.status-completed").nth(1).wait_for()

    first_question = tab.page.locator("#messages .message.user").first
    first_question.hover()
    first_question.get_by_role("button", name="Edit").click()
    editor = tab.page.get_by_role("textbox", name="Edit your message")
    assert editor.input_value() == "Name a soup"
    assert editor.evaluate("box => box === document.activeElement")
    editor.fill("Name a hot soup")
    tab.page.get_by_role("button", name="Save and send").click()

    tab.page.get_by_text("Goulash.").wait_for()
    reply_locator(tab, "completed").wait_for()
    # The page now reads as the conversation the model was sent.
    assert tab.page.locator("#messages .message.user .content").all_inner_texts() == ["Name a hot soup"]
    assert tab.page.get_by_text("Gazpacho.").count() == 0 and tab.page.get_by_text("Hot or cold?").count() == 0
    assert sim.log[2].body["messages"][-1] == {"role": "user", "content": "Name a hot soup"}
    assert len([turn for turn in sim.log[2].body["messages"] if turn["role"] != "system"]) == 1
    # Kept, hidden, with their costs.
    assert Message.objects.filter(conversation=chat).exclude(hidden_at=None).count() == 4
    tab.page.reload()
    assert tab.page.locator("#messages .message.user .content").all_inner_texts() == ["Name a hot soup"]


def test_an_edit_can_be_cancelled_with_esc_or_the_button(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(text="Gazpacho."))
    open_and_send(tab, user, "Name a soup")
    reply_locator(tab, "completed").wait_for()
    question = tab.page.locator("#messages .message.user")
    question.hover()
    question.get_by_role("button", name="Edit").click()
    tab.page.get_by_role("textbox", name="Edit your message").press("Escape")
    assert tab.page.get_by_role("textbox", name="Edit your message").count() == 0
    question.get_by_role("button", name="Edit").click()
    tab.page.get_by_role("button", name="Cancel").click()
    assert tab.page.get_by_role("textbox", name="Edit your message").count() == 0
    assert question.locator(".content").inner_text() == "Name a soup" and len(sim.log) == 1


def test_thinking_becomes_thought_for_n_seconds_when_the_answer_starts(tab: Tab, user, sim) -> None:
    thoughts = " ".join(f"step{i}" for i in range(60))
    sim.enqueue(Scenario(thinking=thoughts, tokens=80, interval=0.03))
    chat = conversation(user, model="anthropic:claude-sonnet-4-5")
    tab.open(f"/chat/{chat.pk}/")
    send(tab, "Think first")
    summary = tab.page.locator("#messages .message.assistant .thinking > summary")
    summary.wait_for()
    seen = summary.inner_text()
    reply_locator(tab, "completed").wait_for()
    reply = Message.objects.get(role=Role.ASSISTANT, status=Status.COMPLETED)
    assert seen in ("Thinking…", f"Thought for {reply.thinking_seconds} s")
    assert summary.inner_text() == f"Thought for {reply.thinking_seconds} s"
    assert reply.thinking_seconds >= 1


def test_the_csp_check_of_every_tab_can_fail(tab: Tab, user) -> None:
    """The check every tab makes when it closes sees a violation when there is one."""
    tab.open(f"/chat/{conversation(user).pk}/")
    tab.page.evaluate("document.body.setAttribute('style', 'color: red')")  # what htmx's settle used to do
    wait_until(tab, "true")
    tab.page.wait_for_timeout(200)
    assert csp_violations(tab), tab.errors
    tab.errors.clear()  # seen; the tab may close
