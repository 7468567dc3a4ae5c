"""What one browser connection receives: our own events, rendered as HTML, for one reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from django.conf import settings
from django.template.loader import render_to_string
from django.utils.html import escape

from chat import lifecycle, sse, streaming
from chat.models import Message, Status
from chat.streaming import NOBODY_WATCHING, TEXT, Generation

# How often a follower of a reply owned by another process re-reads its checkpoint.
FOLLOW_POLL_SECONDS = 1.0


async def reply_events(reply: Message, *, last_event_id: str | None) -> AsyncIterator[str]:
    # daphne sends no headers until the first body byte, and a router may be counting idle seconds.
    yield sse.comment("stream open")
    lifecycle.ensure_upkeep()
    if not reply.is_finished:
        generation = await streaming.start_or_join(reply)
        if generation is not None:
            async for chunk in watch(generation, resume_from=parse_event_id(last_event_id)):
                yield chunk
            return
        async for chunk in follow_stored(reply):
            yield chunk
        return
    for chunk in final_events(reply, next_id=1):
        yield chunk


async def watch(generation: Generation, *, resume_from: int) -> AsyncIterator[str]:
    """Live deltas from this process's generation, then its final events."""
    waker = asyncio.Event()
    generation.watchers.add(waker)
    # Event ids count parts, so a reconnect that says "I have N" continues at part N exactly.
    position = resume_from if 0 <= resume_from <= generation.version else 0
    notice = ""
    heartbeat = settings.CHAT_HEARTBEAT_SECONDS
    try:
        while True:
            waker.clear()  # before reading, so a delta that lands while we send is not missed
            if position < generation.version:
                end = generation.version
                yield delta_events(generation, start=position, end=end)
                position = end
            if generation.notice != notice:
                notice = generation.notice
                yield sse.event("notice", escape(notice), id=position)
            if generation.finished:
                for chunk in final_events(generation.reply, next_id=position + 1):
                    yield chunk
                return
            if not waker.is_set():
                try:
                    async with asyncio.timeout(heartbeat):
                        await waker.wait()
                except TimeoutError:
                    yield sse.comment("keepalive")
    finally:
        generation.watchers.discard(waker)
        if not generation.watchers and not generation.finished:
            # Nobody is left to see this reply: close the upstream request rather than pay for it.
            generation.stop(NOBODY_WATCHING)


def delta_events(generation: Generation, *, start: int, end: int) -> str:
    """One event per kind for the parts in [start, end): coalesced, so a burst is one write."""
    text = generation.text(TEXT, start=start, end=end)
    thinking = generation.text(streaming.THINKING, start=start, end=end)
    chunk = ""
    if thinking:
        chunk += sse.event("thinking", escape(thinking), id=end)
    if text:
        chunk += sse.event("text", escape(text), id=end)
    return chunk


def final_events(reply: Message, *, next_id: int) -> list[str]:
    events = []
    if reply.status == Status.FAILED:
        events.append(sse.event("error", escape(reply.error), id=next_id))
        next_id += 1
    events.append(sse.event("done", render_to_string("chat/conversation.html#message", {"message": reply}), id=next_id))
    return events


async def follow_stored(reply: Message) -> AsyncIterator[str]:
    """A reply another process is writing: show its checkpoints until it finishes."""
    shown, ticks = None, 0
    while True:
        current = await Message.objects.aget(pk=reply.pk)
        if current.is_finished:
            for chunk in final_events(current, next_id=ticks + 1):
                yield chunk
            return
        if generation := streaming.live(reply.pk):  # it moved into this process after all
            yield sse.event("snapshot", "", id=ticks)  # start over from the generation's first part
            async for chunk in watch(generation, resume_from=0):
                yield chunk
            return
        ticks += 1
        if current.content != shown:
            shown = current.content
            yield sse.event("snapshot", escape(current.content), id=ticks)
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


def parse_event_id(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
