"""The chat pages and actions: login, the sidebar, rename/delete/settings, Retry/Regenerate/Continue, limits."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat import sidebar
from chat.costs import limits
from chat.models import CONTINUE_PROMPT, Conversation, Message, Role, Status
from chat.streaming.providers import Turn
from tests.conftest import stored_exchange

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user(username="owner", password="a-long-test-password")


@pytest.fixture
def client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def conversation(owner) -> Conversation:
    return Conversation.objects.create(user=owner, model="demo:demo", title="Soup")


@pytest.fixture
def refuse(monkeypatch) -> None:
    refused = limits.Refusal(message="Slow down, please.", retry_after=7)
    standing = limits.Standing(spend=limits.Spend(spent=Decimal(0), limit=None), refusal=refused)
    monkeypatch.setattr(limits, "check", lambda user: standing)


def exchange(conversation: Conversation, question: str, answer: str, **reply: object) -> Message:
    return stored_exchange(conversation, question, answer, **reply)


def test_the_chat_pages_require_login(conversation) -> None:
    anonymous = Client()
    for path in ("/chat/", f"/chat/{conversation.pk}/"):
        response = anonymous.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", ["/accounts/login/", "/chat/", "/chat/{pk}/"])
def test_every_page_has_a_content_security_policy_without_inline_or_eval_scripts(client, conversation, path) -> None:
    policy = client.get(path.format(pk=conversation.pk))["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "img-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_the_page_has_no_inline_script_or_style(client, conversation) -> None:
    exchange(conversation, "Hi", "**Hello** | a |\n|--:|\n| 1 |")
    html = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "<script>" not in html and "<style" not in html and " style=" not in html and " on" + "click=" not in html
    assert '"allowEval": false' in html and '"includeIndicatorStyles": false' in html


def test_the_sidebar_lists_only_the_users_conversations(client, conversation, django_user_model) -> None:
    other = django_user_model.objects.create_user(username="other", password="another-long-password")
    Conversation.objects.create(user=other, model="demo:demo", title="Not yours")
    html = client.get("/chat/").content.decode()
    assert "Soup" in html and "Not yours" not in html


def test_history_is_rendered_on_the_server_readable_without_javascript(client, conversation) -> None:
    exchange(conversation, "Show <b>code</b>", "## Heading\n\n```python\nx = 1\n```")
    html = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "Show &lt;b&gt;code&lt;/b&gt;" in html
    assert "<h2>Heading</h2>" in html and '<span class="code-lang">python</span>' in html


def test_new_chat_reuses_an_untouched_conversation(client, owner) -> None:
    first = client.post("/chat/new/", {"model": "demo:demo"})
    second = client.post("/chat/new/", {"model": "demo:demo"})
    assert first["Location"] == second["Location"]
    assert Conversation.objects.for_user(owner).count() == 1


def test_the_first_page_starts_a_conversation_with_the_question(client, owner) -> None:
    response = client.post("/chat/new/", {"text": "How do I make soup?", "model": "demo:demo", "request_key": "k1"})
    conversation = Conversation.objects.for_user(owner).get()
    assert response["Location"] == f"/chat/{conversation.pk}/"
    assert conversation.title == "How do I make soup?"
    assert [m.role for m in conversation.messages.all()] == [Role.USER, Role.ASSISTANT]


def test_the_first_page_is_refused_over_the_limit_and_keeps_the_text(client, owner, refuse) -> None:
    response = client.post("/chat/new/", {"text": "Too much?", "model": "demo:demo"})
    assert response.status_code == 429 and response["Retry-After"] == "7"
    assert "Slow down, please." in response.content.decode() and "Too much?" in response.content.decode()
    assert Message.objects.count() == 0


def test_a_send_over_the_limit_is_a_429_with_the_composer_and_its_text(client, conversation, refuse) -> None:
    response = client.post(f"/chat/{conversation.pk}/messages/", {"text": "Hello?"}, headers=HTMX)
    assert response.status_code == 429 and response["HX-Retarget"] == "#composer"
    assert "Slow down, please." in response.content.decode() and "Hello?" in response.content.decode()
    assert Message.objects.count() == 0


def test_the_sidebar_shows_a_page_of_recent_conversations_and_the_older_ones_on_request(
    client, owner, django_user_model
) -> None:
    stranger = django_user_model.objects.create_user(username="stranger", password="x-long-test-password")
    Conversation.objects.create(user=stranger, model="openai:gpt-4o-mini", title="Not yours")
    made = [
        Conversation.objects.create(user=owner, model="openai:gpt-4o-mini", title=f"Chat number {i}")
        for i in range(sidebar.PAGE_SIZE + 5)
    ]
    # Two conversations touched in the same microsecond still page in a fixed order, neither lost.
    Conversation.objects.filter(pk__in=[made[4].pk, made[5].pk]).update(updated_at=made[5].updated_at)
    newest_first = [c.title for c in Conversation.objects.filter(user=owner).order_by("-updated_at", "-pk")]

    page = client.get("/chat/").content.decode()
    shown = re.findall(r'<a href="/chat/\d+/"[^>]*>(Chat number \d+)</a>', page)
    assert shown == newest_first[: sidebar.PAGE_SIZE]
    older = re.search(r'hx-get="/chat/\?before=([0-9-]+)"', page)
    assert older and "Older conversations" in page

    rest = client.get(f"/chat/?before={older.group(1)}", headers=HTMX).content.decode()
    assert re.findall(r">(Chat number \d+)</a>", rest) == newest_first[sidebar.PAGE_SIZE :]
    assert "Older conversations" not in rest and "<html" not in rest and "Not yours" not in rest
    whole = client.get(f"/chat/?before={older.group(1)}").content.decode()  # without JavaScript: a page
    assert "<html" in whole and "Chat number 0" in whole and "Chat number 54" not in whole

    for bad in ("yesterday", "12-x", "1" * 30 + "-1"):
        response = client.get(f"/chat/?before={bad}", headers=HTMX)
        assert response.status_code == 400 and b"Not a position" in response.content


def test_a_send_returns_the_exchange_and_refreshes_composer_title_and_sidebar(client, conversation) -> None:
    conversation.rename("")
    Conversation.objects.create(user=conversation.user, model="openai:gpt-4o-mini", title="An older chat")
    body = client.post(f"/chat/{conversation.pk}/messages/", {"text": "Soup, please"}, headers=HTMX).content.decode()
    assert 'id="composer"' in body and '<div id="conversation-title" class="title" hx-swap-oob="true">' in body
    assert "<h1>Soup, please</h1>" in body  # titled from the first message
    # Only this conversation's sidebar item, retitled, to put at the top: not the whole list again.
    item = f'<li id="conversation-{conversation.pk}" class="current">'
    assert f'<div hx-swap-oob="afterend:.group-today">\n{item}' in body and ">Soup, please</a>" in body
    assert 'id="sidebar"' not in body and "An older chat" not in body


def test_rename_changes_the_title_and_an_htmx_rename_returns_the_sidebar(client, conversation) -> None:
    response = client.post(
        f"/chat/{conversation.pk}/rename/", {"title": "  Tomato   soup "}, headers={**HTMX, "HX-Current-URL": "/"}
    )
    conversation.refresh_from_db()
    assert conversation.title == "Tomato soup"
    body = response.content.decode()
    assert body.lstrip().startswith('<nav id="sidebar"') and "conversation-title" not in body
    shown = client.post(
        f"/chat/{conversation.pk}/rename/",
        {"title": "Leek soup"},
        headers={**HTMX, "HX-Current-URL": f"http://testserver/chat/{conversation.pk}/"},
    )
    assert (
        '<div id="conversation-title" class="title" hx-swap-oob="true"><h1>Leek soup</h1></div>'
        in shown.content.decode()
    )


def test_delete_hides_the_conversation_but_keeps_its_costs_for_the_operator(client, conversation, owner) -> None:
    reply = exchange(conversation, "a", "b")
    Message.objects.filter(pk=reply.pk).update(cost=Decimal("0.5"))
    response = client.post(f"/chat/{conversation.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/chat/"
    assert not Conversation.objects.for_user(owner).exists() and not Message.objects.for_user(owner).exists()
    assert client.get(f"/chat/{conversation.pk}/").status_code == 404
    assert client.get(f"/chat/replies/{reply.pk}/stream/").status_code == 404
    # Deleting a chat must not lower this month's spend (a way round the budget otherwise).
    assert limits.month_spend(owner).spent == Decimal("0.5")
    assert Message.objects.billed_to(owner).count() == 2


def test_deleting_the_shown_conversation_with_htmx_goes_back_to_the_first_page(client, conversation, owner) -> None:
    other = Conversation.objects.create(user=owner, model="demo:demo", title="Other")
    current = {**HTMX, "HX-Current-URL": f"http://testserver/chat/{conversation.pk}/"}
    sidebar = client.post(f"/chat/{other.pk}/delete/", headers=current)
    assert "Soup" in sidebar.content.decode() and "Other" not in sidebar.content.decode()
    gone = client.post(f"/chat/{conversation.pk}/delete/", headers=current)
    assert gone.status_code == 204 and gone["HX-Redirect"] == "/chat/"


def test_another_users_conversation_and_replies_are_404s(conversation, django_user_model) -> None:
    reply = exchange(conversation, "a", "b")
    intruder = Client()
    intruder.force_login(django_user_model.objects.create_user(username="eve", password="a-long-test-password"))
    for path in ("rename", "delete", "settings"):
        assert intruder.post(f"/chat/{conversation.pk}/{path}/", {"title": "x"}).status_code == 404
    for path in ("regenerate", "continue", "stop"):
        assert intruder.post(f"/chat/replies/{reply.pk}/{path}/").status_code == 404
    assert Conversation.objects.get().title == "Soup" and Message.objects.count() == 2


def test_settings_change_only_what_was_posted(client, conversation, settings) -> None:
    settings.CHAT_MODELS = ["demo:demo", "openai:gpt-4o-mini"]
    client.post(f"/chat/{conversation.pk}/settings/", {"system_prompt": "Be terse."})
    client.post(f"/chat/{conversation.pk}/settings/", {"model": "openai:gpt-4o-mini"}, headers=HTMX)
    conversation.refresh_from_db()
    assert (conversation.system_prompt, conversation.model) == ("Be terse.", "openai:gpt-4o-mini")
    refused = client.post(f"/chat/{conversation.pk}/settings/", {"model": "openai:gpt-secret"}, headers=HTMX)
    assert refused.status_code == 400
    conversation.refresh_from_db()
    assert conversation.model == "openai:gpt-4o-mini"


def test_regenerate_adds_a_reply_whose_prompt_leaves_the_replaced_one_out(client, conversation) -> None:
    first = exchange(conversation, "Name a soup", "Gazpacho")
    response = client.post(f"/chat/replies/{first.pk}/regenerate/", headers=HTMX)
    assert response.status_code == 200
    new = Message.objects.get(status=Status.QUEUED)
    assert f'sse-connect="/chat/replies/{new.pk}/stream/"' in response.content.decode()
    turns, _ = new.prompt()
    assert turns == [Turn("user", "Name a soup")]
    # The next question sees the regenerated answer only.
    new.content, new.status = "Borscht", Status.COMPLETED
    new.save()
    later = conversation.ask(text="Another?")
    turns, _ = later.prompt()
    assert turns == [Turn("user", "Name a soup"), Turn("assistant", "Borscht"), Turn("user", "Another?")]


def test_retry_is_offered_on_a_failed_reply_and_regenerate_on_a_finished_one(client, conversation) -> None:
    exchange(conversation, "a", "partial", status=Status.FAILED, error="Overloaded")
    html = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "Overloaded" in html and ">Retry</button>" in html
    exchange(conversation, "b", "fine")
    assert ">Regenerate</button>" in client.get(f"/chat/{conversation.pk}/").content.decode()


def test_only_the_latest_reply_can_be_regenerated(client, conversation) -> None:
    old = exchange(conversation, "a", "b")
    exchange(conversation, "c", "d")
    response = client.post(f"/chat/replies/{old.pk}/regenerate/", headers=HTMX)
    assert response.status_code == 409 and response["HX-Retarget"] == "#composer-status"
    assert "Only the latest" in response.content.decode()
    assert Message.objects.count() == 4


def test_continue_asks_for_the_rest_of_a_truncated_reply(client, conversation) -> None:
    cut = exchange(conversation, "Long story", "Once upon", stop_reason="length")
    response = client.post(f"/chat/replies/{cut.pk}/continue/", headers=HTMX)
    assert response.status_code == 200 and CONTINUE_PROMPT in response.content.decode()
    new = Message.objects.get(status=Status.QUEUED)
    turns, _ = new.prompt()
    assert turns[-2:] == [Turn("assistant", "Once upon"), Turn("user", CONTINUE_PROMPT)]


def test_continue_is_only_for_a_reply_cut_off_at_the_token_limit(client, conversation) -> None:
    done = exchange(conversation, "Short story", "The end.", stop_reason="end_turn")
    assert client.post(f"/chat/replies/{done.pk}/continue/", headers=HTMX).status_code == 409
    assert Message.objects.count() == 2


@pytest.mark.parametrize("action", ["regenerate", "continue"])
def test_new_replies_are_refused_over_the_limit_and_nothing_is_stored(client, conversation, refuse, action) -> None:
    reply = exchange(conversation, "a", "b", stop_reason="max_tokens")
    response = client.post(f"/chat/replies/{reply.pk}/{action}/", headers=HTMX)
    assert response.status_code == 429 and response["Retry-After"] == "7"
    assert response["HX-Retarget"] == "#composer-status" and "Slow down, please." in response.content.decode()
    assert Message.objects.count() == 2


def test_an_htmx_request_with_an_expired_session_gets_a_login_prompt_not_the_login_page(conversation) -> None:
    anonymous = Client()
    headers = {**HTMX, "HX-Current-URL": f"http://testserver/chat/{conversation.pk}/"}
    response = anonymous.post(f"/chat/{conversation.pk}/messages/", {"text": "hi"}, headers=headers, follow=True)
    body = response.content.decode()
    assert '<div id="dialog" class="dialog open" role="alert" hx-swap-oob="true">' in body
    assert f"/accounts/login/?next=/chat/{conversation.pk}/" in body
    assert "<form" not in body and "<html" not in body
    assert "<form" in anonymous.get("/accounts/login/").content.decode()  # a plain visit gets the page


def test_the_session_check_says_whether_the_user_is_logged_in(client) -> None:
    assert client.get("/chat/session/").status_code == 204
    assert Client().get("/chat/session/").status_code == 401


def test_a_session_is_read_from_the_cache_and_the_user_from_the_database(client, conversation) -> None:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"/chat/{conversation.pk}/").status_code == 200
    tables = " ".join(query["sql"] for query in queries)
    assert "django_session" not in tables
    assert "auth_user" in tables  # a deactivated user or a changed password still ends the session at once


def test_logging_out_ends_a_cached_session_for_every_copy_of_its_cookie(client, conversation) -> None:
    assert client.get(f"/chat/{conversation.pk}/").status_code == 200  # read, so in the cache
    copy = Client()
    copy.cookies["sessionid"] = client.cookies["sessionid"].value
    assert copy.get(f"/chat/{conversation.pk}/").status_code == 200
    client.post("/accounts/logout/")
    response = copy.get(f"/chat/{conversation.pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_replys_footer_shows_model_tokens_cost_speed_and_an_unusual_stop(client, conversation) -> None:
    exchange(
        conversation,
        "a",
        "b",
        provider="openai",
        model="gpt-4o-mini",
        stop_reason="length",
        input_tokens=1200,
        output_tokens=300,
        usage_source="provider",
        cost=Decimal("0.000360"),
        ttft_ms=420,
        duration_ms=6420,
    )
    html = " ".join(client.get(f"/chat/{conversation.pk}/").content.decode().split())
    for expected in ("gpt-4o-mini", "1,200 in · 300 out", "$0.00036", "first token 420 ms", "50 tokens/s"):
        assert expected in html
    assert "stop: length" in html and "Cut off at the token limit." in html and ">Continue</button>" in html


def test_a_normal_stop_is_not_shown_and_the_demo_model_is_labelled(client, conversation) -> None:
    exchange(conversation, "a", "b", stop_reason="end_turn")
    html = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "stop: end_turn" not in html and '<span class="model">Demo model</span>' in html
    assert "Demo model (offline, no API key)" in html  # in the picker


def test_thinking_is_in_a_collapsed_section_that_says_how_long_it_took(client, conversation) -> None:
    exchange(conversation, "a", "b", thinking="Hmm <think>", thinking_ms=4400)
    exchange(conversation, "c", "d", thinking="Quick", thinking_ms=300)
    exchange(conversation, "e", "f", thinking="From before the figure was stored")
    html = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert '<details class="thinking"><summary>Thought for 4 s</summary>' in html and "Hmm &lt;think&gt;" in html
    assert "<summary>Thought for 1 s</summary>" in html  # never "0 s" once it thought
    assert "<summary>Thoughts</summary>" in html  # no duration stored: no made-up figure


def test_the_demo_login_exists_only_in_debug(settings) -> None:
    settings.DEBUG = False
    assert Client().post("/chat/demo-login/").status_code == 404
    settings.DEBUG = True
    assert Client().post("/chat/demo-login/")["Location"] == "/chat/"


def test_the_update_poll_brings_only_messages_newer_than_the_newest_shown(client, conversation) -> None:
    first = exchange(conversation, "old question", "old answer")
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert f"/chat/{conversation.pk}/updates/?after={first.pk}" in page
    assert client.get(f"/chat/{conversation.pk}/updates/?after={first.pk}").content.decode().strip() == ""
    second = exchange(conversation, "new <b>question</b>", "new answer")
    update = client.get(f"/chat/{conversation.pk}/updates/?after={first.pk}", headers=HTMX).content.decode()
    assert "new &lt;b&gt;question&lt;/b&gt;" in update and f'id="message-{second.pk}"' in update
    assert "old question" not in update
    assert f"?after={second.pk}" in update  # the poller moves on


def test_the_update_poll_of_another_users_conversation_is_a_404(conversation, django_user_model) -> None:
    intruder = Client()
    intruder.force_login(django_user_model.objects.create_user(username="eve", password="a-long-test-password"))
    assert intruder.get(f"/chat/{conversation.pk}/updates/?after=0").status_code == 404


def ask_at_once(tabs: list, texts: list[str]) -> list:
    """Each tab posts its question on the first page at the same moment: the answers, in order."""
    import threading

    gate, answers = threading.Barrier(len(tabs)), [None] * len(tabs)

    def send(i: int) -> None:
        data = {"text": texts[i], "model": "openai:gpt-4o-mini", "request_key": texts[i]}
        gate.wait()
        answers[i] = tabs[i].http.post("/chat/new/", data=data, headers={"X-CSRFToken": tabs[i].csrf})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(tabs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return answers


@pytest.mark.django_db(transaction=True)
def test_questions_from_two_tabs_at_once_each_start_their_own_conversation(asgi_server, user, sim) -> None:
    from tests.conftest import ChatClient, wait_until_settled

    tabs = [ChatClient(asgi_server, user) for _ in range(3)]  # the default limit: 3 replies at once
    for round in range(4):
        Conversation.objects.create(user=user, model="openai:gpt-4o-mini")  # New chat was pressed: untouched
        answers = ask_at_once(tabs, [f"question {round}.{i}" for i in range(len(tabs))])
        assert [a.status_code for a in answers] == [302] * len(tabs)
        started = {int(a.headers["location"].strip("/").split("/")[-1]) for a in answers}
        assert len(started) == len(tabs), f"round {round}: {len(tabs)} questions landed in {len(started)}"
        for pk in started:
            conversation = Conversation.objects.get(pk=pk)
            assert conversation.messages.filter(role=Role.USER).count() == 1
            [reply] = conversation.messages.filter(role=Role.ASSISTANT)
            assert tabs[0].stream(reply).names()[-1] == "done"
            assert Message.objects.get(pk=reply.pk).status == Status.COMPLETED
        assert not Message.objects.filter(conversation__user=user, status=Status.QUEUED).exists()
    for tab in tabs:
        tab.close()
    wait_until_settled()


def test_a_double_submit_of_the_first_pages_question_starts_one_conversation(client, owner) -> None:
    Conversation.objects.create(user=owner, model="demo:demo")
    data = {"text": "How do I make soup?", "model": "demo:demo", "request_key": "same-form"}
    first, second = client.post("/chat/new/", data), client.post("/chat/new/", data)
    assert first["Location"] == second["Location"]
    [conversation] = Conversation.objects.for_user(owner).exclude(title="")
    assert [m.role for m in conversation.messages.all()] == [Role.USER, Role.ASSISTANT]


def test_error_pages_say_what_happened_and_what_to_press(client, conversation, django_user_model) -> None:
    stranger = Client()
    stranger.force_login(django_user_model.objects.create_user(username="stranger"))
    missing = stranger.get(f"/chat/{conversation.pk}/")  # someone else's conversation: not found
    page = missing.content.decode()
    assert missing.status_code == 404 and "That page isn’t here" in page
    assert '<a class="button primary" href="/chat/">Go to your chats</a>' in page
    assert str(conversation) not in page
    checked = Client(enforce_csrf_checks=True)
    checked.force_login(conversation.user)
    refused = checked.post(f"/chat/{conversation.pk}/messages/", {"text": "hi"})
    assert refused.status_code == 403 and "This page is out of date" in refused.content.decode()
    assert "Reload your chats" in refused.content.decode()


def test_the_server_error_page_renders_without_a_request_context(rf) -> None:
    from django.views.defaults import server_error

    page = server_error(rf.get("/chat/")).content.decode()
    assert "Something went wrong on our side" in page and 'href="/chat/">Reload your chats</a>' in page
