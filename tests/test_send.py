"""The send endpoint: validation at the edge, one transaction, CSRF, user scoping and double submits."""

from __future__ import annotations

import pytest
from django.test import Client

from chat.models import Conversation, Message, Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user(username="owner", password="a-long-test-password")


@pytest.fixture
def conversation(owner) -> Conversation:
    return Conversation.objects.create(user=owner, model="demo:demo")


@pytest.fixture
def client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def post(client: Client, conversation: Conversation, **data: str):
    return client.post(f"/chat/{conversation.pk}/messages/", data, headers={"HX-Request": "true"})


@pytest.mark.parametrize(
    ("text", "model", "error"),
    [
        ("", "", "Type a message first."),
        ("   \n\t ", "", "Type a message first."),
        ("x" * 32001, "", "That message is too long: 32,001 characters, and the limit is 32,000."),
        ("hello", "openai:gpt-5-secret", "That model is not available here: choose another one from the list."),
    ],
)
def test_it_refuses_bad_input_clearly_and_stores_nothing(client, conversation, text, model, error) -> None:
    response = post(client, conversation, text=text, model=model)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert Message.objects.count() == 0
    assert text.strip()[:20] in response.content.decode()  # the typed text is kept in the composer


def test_it_stores_the_question_and_a_queued_reply_and_returns_the_stream_fragment(client, conversation) -> None:
    response = post(client, conversation, text="Hi <script>alert(1)</script>", request_key="abc")
    assert response.status_code == 200
    question, reply = Message.objects.order_by("pk")
    assert (question.role, question.content) == ("user", "Hi <script>alert(1)</script>")
    assert (reply.role, reply.status) == ("assistant", Status.QUEUED)
    body = response.content.decode()
    assert f'sse-connect="/chat/replies/{reply.pk}/stream/"' in body
    assert "<script>alert(1)</script>" not in body and "&lt;script&gt;" in body


def test_a_double_submit_of_the_same_form_creates_one_reply(client, conversation) -> None:
    first = post(client, conversation, text="once", request_key="same-form")
    second = post(client, conversation, text="once", request_key="same-form")
    assert first.status_code == second.status_code == 200
    assert Message.objects.filter(role="assistant").count() == 1
    assert Message.objects.filter(role="user").count() == 1


def test_a_send_may_switch_the_conversations_model(client, conversation, settings) -> None:
    settings.CHAT_MODELS = ["demo:demo", "openai:gpt-4o-mini"]
    post(client, conversation, text="hi", model="openai:gpt-4o-mini")
    conversation.refresh_from_db()
    reply = Message.objects.get(role="assistant")
    assert conversation.model == "openai:gpt-4o-mini"
    assert (reply.provider, reply.model) == ("openai", "gpt-4o-mini")


def test_it_requires_a_csrf_token(owner, conversation) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert post(client, conversation, text="hi").status_code == 403
    assert Message.objects.count() == 0


def test_another_users_conversation_is_a_404(conversation, django_user_model) -> None:
    intruder = django_user_model.objects.create_user(username="eve", password="a-long-test-password")
    client = Client()
    client.force_login(intruder)
    assert post(client, conversation, text="hi").status_code == 404
    assert client.get(f"/chat/{conversation.pk}/").status_code == 404
    assert Message.objects.count() == 0


def test_it_requires_login_and_post(conversation) -> None:
    anonymous = Client()
    assert post(anonymous, conversation, text="hi").status_code == 302
    logged_in = Client()
    logged_in.force_login(conversation.user)
    assert logged_in.get(f"/chat/{conversation.pk}/messages/").status_code == 405
