"""Starting a reply in one process: the window between the row's claim and its Generation being known."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from chat.models import Conversation, Message, Status
from chat.streaming import control, fanout, live, relay
from chat.streaming.generation import NOBODY_WATCHING, STOPPED_BY_USER, Generation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def late_claim(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The winning claim's answer comes back late, as it does to a loop busy with other replies' tokens:
    the row already says `streaming` while this process does not yet know the reply is its own.
    Set the returned event to let the answer through."""
    real_claim = Message.claim_for
    release = threading.Event()

    def claim_for(user: Any, reply_id: int) -> Any:
        claimed = real_claim(user, reply_id)
        if claimed is not None:
            release.wait(timeout=10)
        return claimed

    monkeypatch.setattr(Message, "claim_for", claim_for)
    return release


async def open_stream(reply: Message) -> control.Opened:
    """What a stream request for this reply opens (control.open_reply, as the view calls it)."""
    opened = await control.open_reply(
        reply.pk, user=lambda: reply.conversation.user, lookup=lambda: Message.objects.get(pk=reply.pk)
    )
    assert opened is not None
    return opened


def queued_reply(user: Any) -> Message:
    return Conversation.objects.create(user=user, model="demo:demo").ask(text="hi")


@pytest.fixture(autouse=True)
def in_memory_layer(settings: Any) -> None:
    # The window is this process's; the cross-process half is test_resume.py's. (A Redis layer's
    # mailbox does not let go of a loop that ends, as this test's do and a worker's never does.)
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


async def settle(generation: live.LiveReply) -> None:
    generation.stop(STOPPED_BY_USER)
    await generation.task  # type: ignore[attr-defined]


def test_a_second_request_here_joins_the_claim_in_flight_instead_of_following_it_as_a_mirror(
    user: Any, late_claim: threading.Event
) -> None:
    reply = queued_reply(user)

    async def two_requests() -> tuple[live.LiveReply | None, live.LiveReply | None]:
        first = asyncio.create_task(open_stream(reply))
        await wait_for(lambda: reply.pk in live.claiming)
        second = asyncio.create_task(open_stream(reply))
        await asyncio.sleep(0.2)  # long enough for the second to read the row as `streaming`
        assert not second.done() and reply.pk not in live.mirrors
        late_claim.set()
        results = (await first).live, (await second).live
        await settle(results[0])  # type: ignore[arg-type]
        return results

    first, second = async_to_sync(two_requests)()
    assert isinstance(first, Generation)
    assert second is first  # the same parts, so the same event ids on both connections
    assert live.mirrors == {} and live.claiming == {}
    assert Message.objects.get(pk=reply.pk).status in (Status.CANCELLED, Status.COMPLETED)


def test_a_followers_watch_that_arrives_during_the_claim_is_answered_once_it_returns(
    user: Any, late_claim: threading.Event
) -> None:
    reply = queued_reply(user)

    async def watch_during_claim() -> dict[str, int]:
        request = asyncio.create_task(open_stream(reply))
        await wait_for(lambda: reply.pk in live.claiming)
        # What another process's Mirror sends once it has read the row as `streaming`.
        fanout.dispatch({"type": "watch", "reply": reply.pk, "channel": "elsewhere", "start": 0})
        late_claim.set()
        generation = (await request).live
        await asyncio.sleep(0)  # the claim's callbacks run on the next turn of the loop
        positions = dict(generation.remote.positions)  # type: ignore[union-attr]
        await settle(generation)  # type: ignore[arg-type]
        return positions

    assert "elsewhere" in async_to_sync(watch_during_claim)()


def test_a_claimed_reply_whose_response_is_never_read_is_cancelled_once_the_claims_hold_ends(
    user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The view claims and starts the reply before its response exists; a browser gone before the first
    # byte (or an error response in its place) never reads it, and must not leave it running for nobody.
    settings.CHAT_UNWATCHED_TIMEOUT = 0
    monkeypatch.setattr(control, "HOLD_SECONDS", 0.3)
    reply = queued_reply(user)

    async def never_read() -> tuple[bool, str]:
        generation = (await open_stream(reply)).live
        assert isinstance(generation, Generation)
        await asyncio.sleep(0.1)
        running_while_held = not generation.task.done()  # type: ignore[union-attr]
        await asyncio.wait_for(generation.task, 5)  # type: ignore[arg-type]
        return running_while_held, generation.stop_reason_requested

    running_while_held, reason = async_to_sync(never_read)()
    assert running_while_held and reason == NOBODY_WATCHING
    assert Message.objects.get(pk=reply.pk).status == Status.CANCELLED


def test_a_response_closed_before_it_watches_gives_up_the_claims_hold_at_once(user: Any, settings: Any) -> None:
    settings.CHAT_UNWATCHED_TIMEOUT = 0
    reply = queued_reply(user)

    async def leave_after_the_first_chunk() -> tuple[str, float]:
        opened = await open_stream(reply)
        assert isinstance(opened.live, Generation)
        events = relay.reply_events(opened, last_event_id=None)
        assert "stream open" in await anext(events)
        left = asyncio.get_running_loop().time()
        await events.aclose()
        await asyncio.wait_for(opened.live.task, 5)  # type: ignore[arg-type]
        return opened.live.stop_reason_requested, asyncio.get_running_loop().time() - left

    reason, after = async_to_sync(leave_after_the_first_chunk)()
    assert reason == NOBODY_WATCHING
    assert after < control.HOLD_SECONDS / 2  # released by the response, not by the hold's timer
    assert Message.objects.get(pk=reply.pk).status == Status.CANCELLED


async def wait_for(condition: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
