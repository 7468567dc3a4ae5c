"""Edit a question: the new text is asked in its place, and what followed leaves the page and the prompt but
stays stored, with its cost, for the admin, the reports and the budget."""

# ruff: noqa: F811 (the tests take test_views' fixtures, imported below, as arguments of the same names)
from __future__ import annotations

from decimal import Decimal

import pytest

from chat.costs import limits
from chat.models import Conversation, Message, Role, Status
from chat.streaming.providers import Turn

# The chat's fixtures: a user, their logged-in client and a conversation of theirs.
from tests.test_views import HTMX, client, conversation, exchange, owner  # noqa: F401

pytestmark = pytest.mark.django_db


def question_of(reply: Message) -> Message:
    return Message.objects.filter(conversation=reply.conversation, role=Role.USER, pk__lt=reply.pk).last()


def test_editing_a_question_asks_it_anew_and_hides_what_followed(client, conversation) -> None:
    first = exchange(conversation, "Name a soup", "Gazpacho", cost=Decimal("0.0010"))
    second = exchange(conversation, "Hot or cold?", "Cold", cost=Decimal("0.0020"))
    edited = question_of(second)

    response = client.post(f"/chat/messages/{edited.pk}/edit/", {"text": "Name a hot one"}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    new = Message.objects.get(status=Status.QUEUED)
    # The new question and its reply join the page; the edited question and its answer leave it.
    assert "Name a hot one" in html and f'sse-connect="/chat/replies/{new.pk}/stream/"' in html
    for gone in (edited, second):
        assert f'<div id="message-{gone.pk}" hx-swap-oob="delete"></div>' in html
    assert f'id="message-{first.pk}"' not in html
    # Stored, hidden: the costs stay counted.
    assert set(Message.objects.exclude(hidden_at=None).values_list("pk", flat=True)) == {edited.pk, second.pk}
    assert limits.month_spend(conversation.user).spent == Decimal("0.0030")
    # The model sees the conversation as the user now does.
    expected = [Turn("user", "Name a soup"), Turn("assistant", "Gazpacho"), Turn("user", "Name a hot one")]
    assert new.prompt()[0] == expected
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "Hot or cold?" not in page and ">Cold<" not in page and "Name a hot one" in page
    # Nor does another tab's poller bring them back.
    updates = client.get(f"/chat/{conversation.pk}/updates/?after=0").content.decode()
    assert "Hot or cold?" not in updates and "Gazpacho" in updates


def test_the_first_question_can_be_edited_and_the_title_stays(client, conversation) -> None:
    reply = exchange(conversation, "Name a soup", "Gazpacho")
    response = client.post(f"/chat/messages/{question_of(reply).pk}/edit/", {"text": "Name a stew"})
    assert response.status_code == 302 and response["Location"] == f"/chat/{conversation.pk}/"
    new = Message.objects.get(status=Status.QUEUED)
    assert new.prompt()[0] == [Turn("user", "Name a stew")]
    conversation.refresh_from_db()
    assert conversation.title == "Soup"


def test_only_the_users_own_shown_questions_can_be_edited(client, conversation, django_user_model) -> None:
    reply = exchange(conversation, "Name a soup", "Gazpacho")
    stranger = django_user_model.objects.create_user(username="stranger")
    theirs = exchange(Conversation.objects.create(user=stranger, model="demo:demo"), "Secret", "Answer")
    for message in (question_of(theirs), reply):  # someone else's question; a reply is not a question
        assert client.post(f"/chat/messages/{message.pk}/edit/", {"text": "x"}).status_code == 404
    question = question_of(reply)
    assert client.post(f"/chat/messages/{question.pk}/edit/", {"text": "Once"}).status_code == 302
    # An edited question is gone from the page: a second edit of it (a double submit) finds nothing.
    assert client.post(f"/chat/messages/{question.pk}/edit/", {"text": "Twice"}).status_code == 404
    assert Message.objects.filter(content="Twice").count() == 0
    assert client.get(f"/chat/messages/{question.pk}/edit/").status_code == 405


def test_an_edit_waits_for_a_reply_being_written(client, conversation) -> None:
    reply = exchange(conversation, "Name a soup", "Gaz", status=Status.STREAMING)
    response = client.post(f"/chat/messages/{question_of(reply).pk}/edit/", {"text": "Other"}, headers=HTMX)
    assert response.status_code == 409 and response["HX-Retarget"] == "#composer-status"
    assert "press Stop" in response.content.decode()
    assert not Message.objects.exclude(hidden_at=None).exists() and Message.objects.count() == 2


def test_an_empty_edit_or_a_refused_one_changes_nothing(client, conversation, monkeypatch) -> None:
    reply = exchange(conversation, "Name a soup", "Gazpacho")
    question = question_of(reply)
    response = client.post(f"/chat/messages/{question.pk}/edit/", {"text": "   "}, headers=HTMX)
    assert response.status_code == 400 and "Type a message first." in response.content.decode()
    refused = limits.Refusal(message="Slow down, please.", retry_after=7)
    standing = limits.Standing(spend=limits.Spend(spent=Decimal(0), limit=None), refusal=refused)
    monkeypatch.setattr(limits, "check", lambda user: standing)
    response = client.post(f"/chat/messages/{question.pk}/edit/", {"text": "Again"}, headers=HTMX)
    assert response.status_code == 429 and "Slow down" in response.content.decode()
    assert not Message.objects.exclude(hidden_at=None).exists() and Message.objects.count() == 2


def test_every_message_has_copy_with_its_source_and_every_question_has_edit(client, conversation) -> None:
    exchange(conversation, "What is <b>bold</b>?", "It is **bold**.")
    exchange(conversation, "And *italic*?", "It is _italic_.")
    html = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert html.count(">Copy</button>") == 4 and html.count(">Edit</button>") == 2
    # The source, escaped in the attribute: a reply copies its markdown, a question its text.
    assert 'data-source="It is **bold**."' in html and 'data-source="What is &lt;b&gt;bold&lt;/b&gt;?"' in html
    # Regenerate is the latest reply's alone (the earlier one's is in the markup but never shown: chat.css).
    assert html.count(">Regenerate</button>") == 2 and html.count('<div class="latest-only">') == 2
