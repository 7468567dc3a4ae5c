"""What one browser connection receives: our own events, rendered as HTML, for one reply."""

from __future__ import annotations

import asyncio
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
    for chunk in final_events(reply, next_id=1):
        yield chunk


# At most this many text updates a second per connection: a burst of tokens is one render and one write.
FRAME_SECONDS = 1 / 30


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
    looked = position  # parts this connection has considered, whether or not they have gone out yet
    notice = ""
    heartbeat = settings.CHAT_HEARTBEAT_SECONDS
    try:
        while True:
            waker.clear()  # before reading, so a delta that lands while we send is not missed
            finished = generation.finished  # read before the parts: once it is set no part follows
            end = generation.version
            fresh = end > looked or (finished and view.rendering_pending)
            if fresh:
                looked = end
                if chunk := view.delta_events(start=position, end=end, final=finished):
                    yield chunk
                    position = end
            if generation.notice != notice:
                notice = generation.notice
                # No id: a notice moves no part, and the browser's Last-Event-ID must stay a part count.
                yield sse.event("notice", escape(notice), id=None)
            if finished:
                for chunk in final_events(generation.reply, next_id=view.last_id + 1):
                    yield chunk
                return
            if fresh:
                # At most one look a frame: the tokens that land meanwhile wake nobody here and go out
                # together in the next write (or wait for a render that is due, see LiveView).
                await asyncio.sleep(FRAME_SECONDS)
            elif not waker.is_set():
                try:
                    async with asyncio.timeout(heartbeat):
                        await waker.wait()
                except TimeoutError:
                    yield sse.comment("keepalive")
    finally:
        # The reply decides what a departure means (see Generation.watchers_changed).
        generation.detach(waker)


class LiveView:
    """What one connection has shown of a live reply, and the events that bring its page up to date.

    `text` and `thinking` events start with the new raw text, escaped (the page discards it for
    `text`; it is what the reply stores, so the stream can be checked against the row). A `text`
    event then carries out-of-band swaps: markdown blocks that are finished, appended once, and
    the open tail block, replaced; see rendering.LiveMarkdown for when each is rendered.
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

    @property
    def rendering_pending(self) -> bool:
        return bool(self.markdown.tail) or self.markdown.fresh > 0

    def delta_events(self, *, start: int, end: int, final: bool) -> str:
        """Events for the parts in [start, end), or "" to wait for more before a worthwhile render."""
        generation = self.generation
        self.markdown.feed(generation.text(TEXT, start=self.fed, end=end))
        self.fed = end
        render = final or self.markdown.due()
        runs = kind_runs(generation.kinds, start=start, end=end)
        if not render and all(kind == TEXT for kind, _, _ in runs):
            return ""  # the page shows the swaps, not the raw text: text alone waits for a render
        last_text = max((i for i, (kind, _, _) in enumerate(runs) if kind == TEXT), default=-1)
        chunk = ""
        for i, (kind, run_start, run_end) in enumerate(runs):
            # One event per run of one kind of part, its id the count of parts up to the run's end: the ids
            # grow with every event, and a reconnect from any of them resumes at exactly that part.
            data = generation.text(kind, start=run_start, end=run_end)
            if kind == THINKING:
                chunk += sse.event("thinking", self._thinking(data), id=run_end)
            else:
                swaps = self._render(final=final) if render and i == last_text else ""
                chunk += sse.event("text", escape(data) + swaps, id=run_end)
        if runs:
            self.last_id = end
        if render and last_text < 0:
            # Swaps for text sent before: they move no part, so mid-reply they carry no id (the browser's
            # Last-Event-ID stays a part count); the final render goes past the last part, and only error
            # and done follow it.
            if final:
                self.last_id += 1
            chunk += sse.event("text", self._render(final=final), id=self.last_id if final else None)
        return chunk

    # The swaps are built from literals, the reply's integer pk and nh3's sanitized markdown HTML; the raw
    # text is escaped with the standard library's escape, which gives Django's output without its lazy-string
    # checks (format_html and Django's escape were 2.7 % of the relay's CPU at C=100, docs/decisions/0024).

    def _thinking(self, thinking: str) -> str:
        data = escape(thinking)
        if self.replace_thinking:
            self.replace_thinking = False
            data += f'<div hx-swap-oob="innerHTML:#thinking-{self.pk:d}"></div>'
        return data

    def _render(self, *, final: bool) -> str:
        frozen, tail = self.markdown.flush(final=final)  # sanitized HTML (rendering.LiveMarkdown)
        swaps = ""
        if frozen or self.replace_blocks:
            how = "innerHTML" if self.replace_blocks else "beforeend"
            swaps += f'<div hx-swap-oob="{how}:#blocks-{self.pk:d}">{frozen}</div>'
            self.replace_blocks = False
        return swaps + f'<div hx-swap-oob="innerHTML:#tail-{self.pk:d}">{tail}</div>'


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


def final_events(reply: Message, *, next_id: int) -> list[str]:
    events = []
    # An interrupted reply says why too (a shutdown or a dead worker), as a failed one does.
    if reply.status == Status.FAILED or (reply.status == Status.INTERRUPTED and reply.error):
        events.append(sse.event("error", escape(reply.error), id=next_id))
        next_id += 1
    events.append(sse.event("done", render_to_string("chat/conversation.html#message", {"message": reply}), id=next_id))
    return events


def parse_event_id(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
