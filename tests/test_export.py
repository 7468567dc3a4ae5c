"""Export: a conversation's shown messages as Markdown and JSON downloads, the user's own only."""

# ruff: noqa: F811 (the tests take test_views' fixtures, imported below, as arguments of the same names)
from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from chat import export
from chat.models import Conversation, Message, Role, Status
from tests.test_views import client, owner  # noqa: F401 (fixtures: a user and their logged-in client)

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(owner) -> Conversation:
    conversation = Conversation.objects.create(
        user=owner, model="openai:gpt-4o-mini", title="Crème brûlée, step by step!", system_prompt="Be brief."
    )
    Message.objects.create(
        conversation=conversation, role=Role.USER, content="How do I <caramelise> sugar?", status=Status.COMPLETED
    )
    reply = Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        content="Use a **torch**.\n\n```sh\necho done\n```",
        status=Status.COMPLETED,
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=1200,
        output_tokens=345,
        cache_read_tokens=1000,
        reasoning_tokens=64,
        usage_source="provider",
        cost=Decimal("0.0001234567"),
        stop_reason="stop",
        ttft_ms=420,
        duration_ms=2345,
    )
    finished = datetime(2026, 12, 1, 9, 30, 5, 123456, tzinfo=UTC)
    Message.objects.filter(pk=reply.pk).update(finished_at=finished)
    # An earlier question and answer, hidden by an edit: kept for costs, never exported.
    for role, text in ((Role.USER, "A question the user edited away"), (Role.ASSISTANT, "An answer to it")):
        Message.objects.create(
            conversation=conversation,
            role=role,
            content=text,
            status=Status.COMPLETED,
            hidden_at=timezone.now(),
            cost=Decimal("0.5") if role == Role.ASSISTANT else None,
        )
    return conversation


def test_json_has_the_conversation_and_every_shown_message_with_exact_cost(client, conversation) -> None:
    response = client.get(f"/chat/{conversation.pk}/export.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json; charset=utf-8"
    document = json.loads(response.content.decode("utf-8"))
    assert document["format"] == "streamchat.conversation/1"
    assert document["conversation"] == {
        "id": conversation.pk,
        "title": "Crème brûlée, step by step!",
        "model": "openai:gpt-4o-mini",
        "system_prompt": "Be brief.",
        "created_at": conversation.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    question, reply = document["messages"]
    assert question["role"] == "user" and question["text"] == "How do I <caramelise> sugar?"
    assert "cost_usd" not in question and "model" not in question
    assert reply["text"] == "Use a **torch**.\n\n```sh\necho done\n```"  # the markdown source, not HTML
    assert reply["cost_usd"] == "0.0001234567"  # a string: every stored digit, no float rounding
    assert (reply["model"], reply["input_tokens"], reply["output_tokens"]) == ("openai:gpt-4o-mini", 1200, 345)
    assert (reply["cache_read_tokens"], reply["reasoning_tokens"]) == (1000, 64)
    assert "cache_write_tokens" not in reply  # absent, not null, when the provider reported none
    assert (reply["stop_reason"], reply["status"], reply["ttft_ms"], reply["duration_ms"]) == (
        "stop",
        "completed",
        420,
        2345,
    )
    assert reply["finished_at"] == "2026-12-01T09:30:05.123456Z" and reply["created_at"].endswith("Z")
    assert "edited away" not in response.content.decode() and "An answer to it" not in response.content.decode()


def test_json_cost_is_null_when_unpriced_and_never_in_exponent_form(conversation) -> None:
    reply = conversation.messages.shown().get(role=Role.ASSISTANT)
    reply.cost = None
    assert json.loads(export.as_json(conversation, [reply]))["messages"][0]["cost_usd"] is None
    reply.cost = Decimal("1E-10")
    assert json.loads(export.as_json(conversation, [reply]))["messages"][0]["cost_usd"] == "0.0000000001"


def test_markdown_reads_as_the_conversation_with_a_meta_line_per_reply(client, conversation) -> None:
    response = client.get(f"/chat/{conversation.pk}/export.md")
    assert response.status_code == 200 and response["Content-Type"] == "text/markdown; charset=utf-8"
    text = response.content.decode("utf-8")
    assert text.startswith("# Crème brûlée, step by step!\n")
    assert "## System prompt\n\nBe brief.\n" in text
    assert "## 1. You\n" in text and "How do I <caramelise> sugar?" in text  # the text as written
    assert "## 2. gpt-4o-mini\n" in text  # the picker's label (this test's catalog has none for it)
    assert "Use a **torch**.\n\n```sh\necho done\n```" in text
    meta = next(line for line in text.splitlines() if "in ·" in line)
    assert "1,200 in · 345 out (1,000 cache read, 64 reasoning)" in meta
    assert "$0.00012" in meta  # the page's `usd` format
    assert "first token 420 ms" in meta and "took 2,345 ms" in meta and "completed (stop)" in meta
    assert meta.startswith("*20") and " → 2026-12-01T09:30:05.123456Z · " in meta
    assert "edited away" not in text and "An answer to it" not in text


def test_the_download_is_named_from_the_title_as_an_attachment(client, conversation) -> None:
    response = client.get(f"/chat/{conversation.pk}/export.md")
    assert response["Content-Disposition"] == 'attachment; filename="creme-brulee-step-by-step.md"'
    conversation.rename("../../etc/passwd")
    assert (
        client.get(f"/chat/{conversation.pk}/export.json")["Content-Disposition"]
        == 'attachment; filename="etcpasswd.json"'
    )
    conversation.rename("")
    untitled = client.get(f"/chat/{conversation.pk}/export.json")["Content-Disposition"]
    assert untitled == f'attachment; filename="conversation-{conversation.pk}.json"'
    conversation.rename("日本語のタイトル")  # nothing ASCII to keep
    assert export.filename(conversation, "md") == f"conversation-{conversation.pk}.md"
    conversation.rename("x" * 200)
    assert export.filename(conversation, "md") == "x" * export.MAX_FILENAME_CHARS + ".md"


def test_another_users_or_a_deleted_conversation_is_a_404(conversation, django_user_model) -> None:
    stranger = django_user_model.objects.create_user(username="stranger", password="another-long-password")
    client = Client()
    client.force_login(stranger)
    for path in (f"/chat/{conversation.pk}/export.md", f"/chat/{conversation.pk}/export.json"):
        assert client.get(path).status_code == 404
    conversation.remove()
    owner_client = Client()
    owner_client.force_login(conversation.user)
    assert owner_client.get(f"/chat/{conversation.pk}/export.json").status_code == 404
    assert Client().get(f"/chat/{conversation.pk}/export.json").status_code == 302  # login first


def test_the_conversation_page_offers_the_export_menu(client, conversation) -> None:
    html = client.get(f"/chat/{conversation.pk}/").content.decode()
    toggle = '<button type="button" class="export-toggle" aria-expanded="false" aria-controls="export-menu">'
    assert f"{toggle}Export</button>" in html and '<div class="menu" id="export-menu">' in html
    assert f'<a href="/chat/{conversation.pk}/export.md" download>Markdown</a>' in html
    assert f'<a href="/chat/{conversation.pk}/export.json" download>JSON</a>' in html
