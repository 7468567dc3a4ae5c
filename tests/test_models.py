"""Conversation and Message: user scoping, the reply lifecycle, the sweep, and the prompt history."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone

from chat.models import Conversation, Message, Role, Status, turns_from
from chat.streaming.providers import Turn, Usage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conversation(django_user_model) -> Conversation:
    user = django_user_model.objects.create_user(username="ann", password="a-long-test-password")
    return Conversation.objects.create(user=user, model="openai:gpt-4o-mini")


def test_for_user_only_returns_that_users_rows(conversation: Conversation, django_user_model) -> None:
    other = django_user_model.objects.create_user(username="bob", password="a-long-test-password")
    reply = conversation.ask(text="hi")
    assert list(Conversation.objects.for_user(other)) == []
    assert list(Message.objects.for_user(other)) == []
    assert list(Message.objects.for_user(conversation.user).replies()) == [reply]


def test_ask_stores_the_question_and_a_queued_reply_and_titles_the_conversation(conversation) -> None:
    reply = conversation.ask(text="  What is   the capital\nof France?  ", model="anthropic:claude-sonnet-4-5")
    question = Message.objects.get(conversation=conversation, role=Role.USER)
    assert question.status == Status.COMPLETED
    assert (reply.role, reply.status, reply.provider, reply.model) == (
        Role.ASSISTANT,
        Status.QUEUED,
        "anthropic",
        "claude-sonnet-4-5",
    )
    conversation.refresh_from_db()
    assert conversation.title == "What is the capital of France?"
    assert conversation.model == "anthropic:claude-sonnet-4-5"


def test_ask_with_a_repeated_request_key_returns_the_first_reply(conversation) -> None:
    first = conversation.ask(text="hi", request_key="k1")
    again = conversation.ask(text="hi", request_key="k1")
    other = conversation.ask(text="hi", request_key="k2")
    assert first.pk == again.pk != other.pk
    assert conversation.messages.count() == 4


def test_the_claim_returns_the_row_as_the_orm_reads_it_and_the_prompt_that_prompt_reads(conversation) -> None:
    # On PostgreSQL the claim reads both in its own statement (models._CLAIM_SQL), elsewhere with the ORM.
    conversation.configure(system_prompt="Be brief.")
    first = conversation.ask(text="one")
    first.finish(status=Status.COMPLETED, content="answer one")
    failed = conversation.ask(text="two")
    failed.finish(status=Status.FAILED, content="", error="upstream down")
    reply = conversation.regenerate(failed)
    expected = reply.prompt()
    assert expected == ([Turn("user", "one"), Turn("assistant", "answer one"), Turn("user", "two")], "Be brief.")
    claimed = Message.claim_for(conversation.user, reply.pk)
    assert claimed is not None
    row, prompt = claimed
    assert prompt == expected
    stored = Message.objects.get(pk=reply.pk)
    assert stored.status == Status.STREAMING and stored.checkpoint_at is not None
    fields = [field.attname for field in Message._meta.concrete_fields]
    assert [getattr(row, name) for name in fields] == [getattr(stored, name) for name in fields]
    assert not row._state.adding and row._state.db == "default"
    assert Message.claim_for(conversation.user, reply.pk) is None  # claimed once only


def test_the_claim_of_a_first_reply_reads_the_system_prompt_alone(conversation) -> None:
    conversation.configure(system_prompt="Be brief.")
    reply = conversation.ask(text="one")
    claimed = Message.claim_for(conversation.user, reply.pk)
    assert claimed is not None and claimed[1] == ([Turn("user", "one")], "Be brief.")


def test_nobody_claims_another_users_reply_a_question_or_a_deleted_conversations_reply(
    conversation, django_user_model
) -> None:
    other = django_user_model.objects.create_user(username="bob", password="a-long-test-password")
    reply = conversation.ask(text="hi")
    question = reply.question
    assert Message.claim_for(other, reply.pk) is None
    assert Message.claim_for(conversation.user, question.pk) is None
    conversation.remove()
    assert Message.claim_for(conversation.user, reply.pk) is None
    assert Message.objects.get(pk=reply.pk).status == Status.QUEUED  # none of the three claimed it


def test_only_one_of_two_concurrent_claims_wins(conversation) -> None:
    reply = conversation.ask(text="hi")

    async def race() -> list[bool]:
        claims = await asyncio.gather(
            *(sync_to_async(Message.claim_for)(conversation.user, reply.pk) for _ in range(2))
        )
        return [claimed is not None for claimed in claims]

    assert sorted(async_to_sync(race)()) == [False, True]
    reply.refresh_from_db()
    assert reply.status == Status.STREAMING and reply.checkpoint_at is not None


def test_finish_writes_once_and_a_late_checkpoint_cannot_reopen_the_row(conversation) -> None:
    reply = conversation.ask(text="hi")

    async def lifecycle() -> tuple[bool, bool]:
        await sync_to_async(Message.claim_for)(conversation.user, reply.pk)
        await sync_to_async(Message.checkpoint_many)([(reply.pk, "par", "thought")])
        saved = await Message.objects.aget(pk=reply.pk)
        assert (saved.content, saved.thinking) == ("par", "thought")
        first = await reply.afinish(
            status=Status.COMPLETED,
            content="partial text",
            stop_reason="end_turn",
            usage=Usage(input_tokens=3, output_tokens=2),
        )
        second = await reply.afinish(status=Status.FAILED, content="other", error="late")
        await sync_to_async(Message.checkpoint_many)([(reply.pk, "stale", "")])
        return first, second

    assert async_to_sync(lifecycle)() == (True, False)
    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.error, reply.stop_reason) == (
        Status.COMPLETED,
        "partial text",
        "",
        "end_turn",
    )
    assert (reply.input_tokens, reply.output_tokens, reply.usage_source) == (3, 2, "provider")
    assert reply.cache_read_tokens is None  # unknown stays NULL, never a made-up 0


def test_the_sweep_closes_only_stale_streaming_rows(conversation) -> None:
    stale, fresh, queued = (conversation.ask(text=str(i)) for i in range(3))
    old = timezone.now() - timedelta(minutes=5)
    Message.objects.filter(pk=stale.pk).update(status=Status.STREAMING, checkpoint_at=old, content="saved part")
    Message.objects.filter(pk=fresh.pk).update(status=Status.STREAMING, checkpoint_at=timezone.now())
    assert Message.sweep_interrupted(older_than=timedelta(seconds=30)) == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    queued.refresh_from_db()
    assert (stale.status, stale.content) == (Status.INTERRUPTED, "saved part")
    assert stale.finished_at is not None and "what was saved" in stale.error
    assert (fresh.status, queued.status) == (Status.STREAMING, Status.QUEUED)


def test_the_prompt_is_the_history_before_the_reply_with_the_system_prompt(conversation) -> None:
    conversation.system_prompt = "Answer in French."
    conversation.save()
    first = conversation.ask(text="one")
    Message.objects.filter(pk=first.pk).update(status=Status.COMPLETED, content="un")
    failed = conversation.ask(text="two")
    Message.objects.filter(pk=failed.pk).update(status=Status.FAILED, content="")
    reply = conversation.ask(text="three")
    later = conversation.ask(text="four")  # noqa: F841 - after the reply, so not part of its prompt
    turns, system = reply.prompt()
    assert system == "Answer in French."
    assert turns == [Turn("user", "one"), Turn("assistant", "un"), Turn("user", "two\n\nthree")]


def test_turns_start_with_the_user_and_alternate() -> None:
    history = [("assistant", "orphan"), ("user", "a"), ("user", "b"), ("assistant", ""), ("assistant", "c")]
    assert turns_from(history) == [Turn("user", "a\n\nb"), Turn("assistant", "c")]
