"""Starting a reply in one process: the window between the row's claim and its Generation being known."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from chat import fanout, live, streaming
from chat.models import Conversation, Message, Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def late_claim(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The winning claim's answer comes back late, as it does to a loop busy with other replies' tokens:
    the row already says `streaming` while this process does not yet know the reply is its own.
    Set the returned event to let the answer through."""
    real_aclaim = Message.aclaim
    release = asyncio.Event()

    async def aclaim(self: Message) -> Any:
        prompt = await real_aclaim(self)
        if prompt is not None:
            await release.wait()
        return prompt

    monkeypatch.setattr(Message, "aclaim", aclaim)
    return release


def queued_reply(user: Any) -> Message:
    return Conversation.objects.create(user=user, model="demo:demo").ask(text="hi")


@pytest.fixture(autouse=True)
def in_memory_layer(settings: Any) -> None:
    # The window is this process's; the cross-process half is test_resume.py's. (A Redis layer's
    # mailbox does not let go of a loop that ends, as this test's do and a worker's never does.)
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


async def settle(generation: live.LiveReply) -> None:
    generation.stop(streaming.STOPPED_BY_USER)
    await generation.task  # type: ignore[attr-defined]


def test_a_second_request_here_joins_the_claim_in_flight_instead_of_following_it_as_a_mirror(
    user: Any, late_claim: asyncio.Event
) -> None:
    reply = queued_reply(user)

    async def two_requests() -> tuple[live.LiveReply | None, live.LiveReply | None]:
        first = asyncio.create_task(streaming.start_or_join(await Message.objects.aget(pk=reply.pk)))
        await wait_for(lambda: reply.pk in live.claiming)
        second = asyncio.create_task(streaming.start_or_join(await Message.objects.aget(pk=reply.pk)))
        await asyncio.sleep(0.2)  # long enough for the second to read the row as `streaming`
        assert not second.done() and reply.pk not in live.mirrors
        late_claim.set()
        results = await first, await second
        await settle(results[0])  # type: ignore[arg-type]
        return results

    first, second = async_to_sync(two_requests)()
    assert isinstance(first, streaming.Generation)
    assert second is first  # the same parts, so the same event ids on both connections
    assert live.mirrors == {} and live.claiming == {}
    assert Message.objects.get(pk=reply.pk).status in (Status.CANCELLED, Status.COMPLETED)


def test_a_followers_watch_that_arrives_during_the_claim_is_answered_once_it_returns(
    user: Any, late_claim: asyncio.Event
) -> None:
    reply = queued_reply(user)

    async def watch_during_claim() -> dict[str, int]:
        request = asyncio.create_task(streaming.start_or_join(await Message.objects.aget(pk=reply.pk)))
        await wait_for(lambda: reply.pk in live.claiming)
        # What another process's Mirror sends once it has read the row as `streaming`.
        fanout.dispatch({"type": "watch", "reply": reply.pk, "channel": "elsewhere", "start": 0})
        late_claim.set()
        generation = await request
        await asyncio.sleep(0)  # the claim's callbacks run on the next turn of the loop
        positions = dict(generation.remote.positions)  # type: ignore[union-attr]
        await settle(generation)  # type: ignore[arg-type]
        return positions

    assert "elsewhere" in async_to_sync(watch_during_claim)()


async def wait_for(condition: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
