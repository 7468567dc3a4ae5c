"""What one browser connection receives: our own events, rendered as HTML, for one reply."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from html import escape

from django.conf import settings
from django.dispatch import Signal
from django.template.loader import render_to_string

from chat.models import Message, Status
from chat.streaming import control, sse
from chat.streaming.live import TEXT, THINKING, LiveReply
from chat.streaming.rendering import LiveMarkdown

# Sent on the event loop when a stream's response starts: the request has no more sync work until it ends,
# so a server that leases a thread per request can give it back (project/tuning/threads.py connects here).
stream_started = Signal()


async def reply_events(opened: control.Opened, *, last_event_id: str | None) -> AsyncIterator[str]:
    reply, current = opened.reply, opened.live
    stream_started.send(sender=None)  # the middleware's response half has run: no sync work until the end
    try:
        # daphne sends no headers until the first body byte, and a router may be counting idle seconds.
        # A short retry: after a dropped connection or a worker's shutdown the browser's EventSource
        # comes back within a second, with Last-Event-ID, and resumes where it was.
        yield sse.comment("stream open") + sse.retry(1000)
        if current is not None:
            async for chunk in watch(current, resume_from=parse_event_id(last_event_id)):
                yield chunk
            return
    finally:
        if current is not None:
            current.release_hold()  # gone before watching: the claim's hold ends now, not in HOLD_SECONDS
    if not reply.is_finished:
        reply = await Message.objects.aget(pk=reply.pk)
        if not reply.is_finished:
            # This worker is shutting down and claims nothing new: reconnect, to another worker.
            yield sse.retry(1000)
            return
    for chunk in await final_events_async(reply, next_id=1):
        yield chunk


# At most this many writes a second per connection: a burst of tokens is one event and one write.
FRAME_SECONDS = 1 / 30
# A render of more source than this (a few milliseconds of work) runs on a thread, not on the event loop.
OFF_LOOP_CHARS = 4096


async def watch(generation: LiveReply, *, resume_from: int) -> AsyncIterator[str]:
    """Live deltas of a reply written here or followed from another process, then its final events."""
    waker = generation.attach()
    generation.release_hold()  # watched now: the claim's hold (control.open_reply) is over
    try:
        await generation.ready()
    except BaseException:  # the browser left while we waited for the owner
        generation.detach(waker)
        raise
    # Event ids count parts, so a reconnect that says "I have N" continues at part N exactly.
    position = resume_from if 0 <= resume_from <= generation.version else 0
    if resume_from and not position:
        # Those ids are not this reply's (a worker restarted): the browser must start the bubble over.
        yield sse.event("reset", "", id=0)
    view = LiveView(generation, resume_from=position)
    notice = ""
    heartbeat = settings.CHAT_HEARTBEAT_SECONDS
    loop = asyncio.get_running_loop()
    try:
        while True:
            waker.clear()  # before reading, so a delta that lands while we send is not missed
            finished = generation.finished  # read before the parts: once it is set no part follows
            end, now = generation.version, loop.time()
            chunk = ""
            if end > position or finished or view.markdown.due(now):
                chunk = await view.events(start=position, end=end, final=finished, now=now)
                position = end
                if chunk:
                    yield chunk
            if generation.notice != notice:
                notice = generation.notice
                # No id: a notice moves no part, and the browser's Last-Event-ID must stay a part count.
                yield sse.event("notice", escape(notice), id=None)
            if finished:
                for chunk in await final_events_async(generation.reply, next_id=view.last_id + 1, body_shown=True):
                    yield chunk
                return
            if chunk:
                # At most one write a frame: the tokens that land meanwhile wake nobody here and go out
                # together in the next one.
                await asyncio.sleep(FRAME_SECONDS)
            elif not waker.is_set():
                render_in = view.markdown.render_in(now)  # a render that waits for its cadence, not for text
                try:
                    async with asyncio.timeout(heartbeat if render_in is None else render_in):
                        await waker.wait()
                except TimeoutError:
                    if render_in is None:
                        yield sse.comment("keepalive")
    finally:
        # The reply decides what a departure means (see Generation.watchers_changed).
        generation.detach(waker)


class LiveView:
    """What one connection has shown of a live reply, and the events that bring its page up to date.

    A text event (type `message`, the one that needs no name) carries the reply's new raw text, which the
    page appends, as text, to the open block; a `thinking` event the new reasoning text, escaped. A `render`
    event catches the page up with the markdown: the blocks finished since the last one, appended once, and
    the open tail, replaced; see rendering.LiveMarkdown for when each is rendered.
    """

    def __init__(self, generation: LiveReply, *, resume_from: int) -> None:
        self.generation = generation
        self.pk = generation.reply.pk
        self.markdown = LiveMarkdown()
        # A reconnect resumes the raw text at its Last-Event-ID, but its first render replaces the
        # page's blocks, so the page and this connection agree on which blocks are frozen.
        self.markdown.feed(generation.text(TEXT, end=resume_from))
        self.fed = resume_from
        self.last_id = resume_from
        self.replace_blocks = True
        self.replace_thinking = resume_from == 0  # a fresh connection may find stale text on the page

    async def events(self, *, start: int, end: int, final: bool, now: float) -> str:
        """delta_events, on a thread when its render is long enough to hold up every other stream."""
        self._feed(end)
        markdown = self.markdown
        if len(markdown.tail) > OFF_LOOP_CHARS and (final or markdown.due(now)):
            return await asyncio.to_thread(self.delta_events, start=start, end=end, final=final, now=now)
        return self.delta_events(start=start, end=end, final=final, now=now)

    def delta_events(self, *, start: int, end: int, final: bool, now: float = 0.0) -> str:
        """Events for the parts in [start, end), and a render when one is due (or `final`)."""
        generation = self.generation
        self._feed(end)
        chunk = ""
        for kind, run_start, run_end in kind_runs(generation.kinds, start=start, end=end):
            # One event per run of one kind of part, its id the count of parts up to the run's end: the ids
            # grow with every event, and a reconnect from any of them resumes at exactly that part.
            data = generation.text(kind, start=run_start, end=run_end)
            if kind == THINKING:
                chunk += sse.event("thinking", self._thinking(data), id=run_end)
            else:
                chunk += sse.event("message", data, id=run_end)  # the text, in the type that needs no name
            self.last_id = run_end
        if final or self.markdown.due(now):
            # A render moves no part: mid-reply it carries no id (the browser's Last-Event-ID stays a part
            # count); the final one goes past the last part, and only error and done follow it.
            if final:
                self.last_id += 1
            chunk += sse.event("render", self._render(final=final, now=now), id=self.last_id if final else None)
        return chunk

    def _feed(self, end: int) -> None:
        if end > self.fed:
            self.markdown.feed(self.generation.text(TEXT, start=self.fed, end=end))
            self.fed = end

    # The events are built from literals, the reply's integer pk, nh3's sanitised markdown HTML and text the
    # page inserts as text; the thinking text is escaped with the standard library's escape, which gives
    # Django's output without its lazy-string checks (format_html and Django's escape were 2.7 % of the
    # relay's CPU at C=100, docs/decisions/0024).

    def _thinking(self, thinking: str) -> str:
        data = escape(thinking)
        if self.replace_thinking:
            self.replace_thinking = False
            data += f'<div hx-swap-oob="innerHTML:#thinking-{self.pk:d}"></div>'
        return data

    def _render(self, *, final: bool, now: float) -> str:
        render = self.markdown.flush(final=final, now=now)  # sanitised HTML (rendering.LiveMarkdown)
        # A line of JSON says how to put the HTML after it together with the last render (rendering.Render).
        head = {"same": render.same, "cut": render.cut}
        if self.replace_blocks:
            head["replace"], self.replace_blocks = True, False
        if render.rest:
            head["rest"] = render.rest
        return f"{json.dumps(head, separators=(',', ':'))}\n{render.html}"


def kind_runs(kinds: bytearray, *, start: int, end: int) -> list[tuple[int, int, int]]:
    """(kind, start, end) of each run of one kind of part in [start, end)."""
    runs = []
    while start < end:
        kind = kinds[start]
        other = kinds.find(TEXT if kind == THINKING else THINKING, start, end)
        stop = end if other < 0 else other
        runs.append((kind, start, stop))
        start = stop
    return runs


def final_events(reply: Message, *, next_id: int, body_shown: bool = False) -> list[str]:
    """The error, if any, and the finished message; without its body when the page has it from the stream."""
    events = []
    # An interrupted reply says why too (a shutdown or a dead worker), as a failed one does.
    if reply.status == Status.FAILED or (reply.status == Status.INTERRUPTED and reply.error):
        events.append(sse.event("error", escape(reply.error), id=next_id))
        next_id += 1
    message = render_to_string("chat/conversation.html#message", {"message": reply, "body_shown": body_shown})
    events.append(sse.event("done", message, id=next_id))
    return events


async def final_events_async(reply: Message, *, next_id: int, body_shown: bool = False) -> list[str]:
    """final_events; a whole reply's markdown, when it must go too, is rendered on a thread, away from the
    other streams."""
    if body_shown:
        return final_events(reply, next_id=next_id, body_shown=True)
    return await asyncio.to_thread(final_events, reply, next_id=next_id, body_shown=body_shown)


def parse_event_id(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
