"""Opening and closing a reply's stream: claim a queued reply or join the one running, Stop, and drain on shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from chat.models import Message, Prompt, Status
from chat.streaming import fanout, live
from chat.streaming.generation import SHUTTING_DOWN, STOPPED_BY_USER, Generation
from chat.streaming.live import LiveReply, Shutdown

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = ["Opened", "drain", "live_ids", "open_reply", "request_stop"]


def live_ids() -> list[int]:
    return list(live.owned)


# A stream that claimed its reply holds it watched until its response starts reading it, or for this long
# should the response never be read (the browser gone before the first byte, an error response instead).
HOLD_SECONDS = 10.0


@dataclass(frozen=True)
class Opened:
    """What a stream request found: its reply, and what its response should watch."""

    reply: Message
    live: LiveReply | None = None  # None: the reply is finished (read the row), or this worker is shutting down


async def open_reply(
    message_id: int, *, user: Callable[[], AbstractBaseUser | None], lookup: Callable[[], Message]
) -> Opened | None:
    """Claim the reply if it is queued and start it, or else look it up, with one thread hop for all of it,
    which gives back the request's database connection if the reply is live. `user` is the request's
    session and user (None if nobody is logged in); `lookup` finds the user's reply (Http404 if it is not
    theirs) when it was not claimed here.

    Each hop, and each query in it, waits its turn behind a busy event loop before the upstream request
    can start (docs/decisions/0018: about 1 ms a query at C=100), so they are as few as can be: a fresh
    reply takes the user's query and the claim's (Message.claim_for). The claim is a conditional UPDATE:
    of two concurrent requests exactly one starts the upstream call, and the other joins it here, or
    follows it from another process.
    """
    hub = await fanout.hub()
    # No await from this check to registering the claim, so of two requests here only one claims.
    claiming = not Shutdown.requested and live.here(message_id) is None and message_id not in live.claiming
    claim: asyncio.Future[None] | None = None
    started = None
    try:
        if claiming:
            claim = live.claiming[message_id] = asyncio.get_running_loop().create_future()
            # In the reply's group before the row says `streaming`: a follower in another process that reads
            # the row from then on asks the group, and its `watch` waits here until the claim is decided.
            await hub.join(message_id)
        reply, prompt = await sync_to_async(_look_up_and_claim)(message_id, user, lookup, claim=claiming)
        if reply is not None and prompt is not None:
            started = live.owned[reply.pk] = Generation(reply, hub, prompt)
            started.hold(HOLD_SECONDS)
            # Its own context, not a copy of this request's: its few database calls then share one
            # thread and one connection for the process instead of holding this request's for minutes.
            started.task = asyncio.create_task(started.run(), name=f"reply-{reply.pk}", context=contextvars.Context())
    finally:
        if claim is not None:
            del live.claiming[message_id]
            claim.set_result(None)
            if started is None:
                await hub.leave(message_id)
    if reply is None:
        return None
    if started is not None:
        return Opened(reply, started)
    return Opened(reply, await _join(reply, hub))


def _look_up_and_claim(
    message_id: int,
    user_of: Callable[[], AbstractBaseUser | None],
    lookup: Callable[[], Message],
    *,
    claim: bool,
) -> tuple[Message | None, Prompt | None]:
    if (user := user_of()) is None:
        return None, None
    if claim and (claimed := Message.claim_for(user, message_id)) is not None:
        reply, prompt = claimed
    else:
        # Not claimed: already streaming or finished, another request's, or not this user's (Http404).
        reply, prompt = lookup(), None
        if reply.is_finished:
            return reply, None  # answered at once: the request's end gives back its connection
    # The stream now only waits for parts, for minutes. Measured (bench/RESULTS.md): with a connection
    # held per open stream, PostgreSQL's default 100 ran out at C=100.
    close_old_connections()
    return reply, prompt


async def _join(reply: Message, hub: fanout.Hub) -> LiveReply | None:
    """What to watch for a reply this request did not claim: written here, or followed from elsewhere."""
    if (claim := live.claiming.get(reply.pk)) is not None:
        # Another request here is claiming it, and the row may already say `streaming`: wait for that
        # claim rather than race it. Shielded: this request may leave, the claim may not.
        await asyncio.shield(claim)
    if (local := live.here(reply.pk)) is not None:
        return local
    if reply.status == Status.QUEUED:  # claimed meanwhile, here or elsewhere, or this worker is shutting down
        reply = await Message.objects.aget(pk=reply.pk)
        if (local := live.here(reply.pk)) is not None:
            return local
    if reply.status != Status.STREAMING:
        return None
    mirror = fanout.Mirror(reply, hub)
    mirror.start()
    return mirror


async def request_stop(reply: Message) -> None:
    """Stop pressed: cancel the generation wherever it runs, or close a reply that never started."""
    if (generation := live.owned.get(reply.pk)) is not None:
        generation.stop(STOPPED_BY_USER)
    elif reply.status == Status.QUEUED:
        await reply.afinish(status=Status.CANCELLED, content="")
    else:
        fanout.request_remote_stop(await fanout.hub(), reply.pk)


async def drain(*, grace: float) -> None:
    """Shutdown: claim nothing new, let running replies finish for `grace` seconds, then interrupt
    the rest; their rows are closed as interrupted with their text."""
    Shutdown.requested = True
    deadline = time.monotonic() + grace
    while live.owned and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    generations = [g for g in live.owned.values() if isinstance(g, Generation)]
    for generation in generations:
        generation.stop(SHUTTING_DOWN)
    await asyncio.gather(*(g.task for g in generations if g.task), return_exceptions=True)
