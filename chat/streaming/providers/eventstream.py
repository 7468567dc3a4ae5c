"""Frames a response's bytes into Server-Sent Events, for the upstream half of the relay.

httpx-sse's own reader decodes bytes to text and text to lines through four async generators
before it sees an event; at thousands of upstream events a second that framing cost as much as
everything else we do per event (bench/RESULTS.md). Here the bytes are cut at blank lines first and
only whole events are decoded, which also means a UTF-8 character split across packets is never
decoded in halves. The field rules (comments, `event:`, `data:`, `id:`, `retry:`) stay httpx-sse's.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable

from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder


class EventStreamDecoder:
    """Incremental: feed it chunks as they arrive, get back the events they complete."""

    def __init__(self) -> None:
        self._pending = b""  # bytes after the last blank line, with line ends normalised to \n
        self._held_cr = False  # a chunk ended in \r: it may be the first half of \r\n
        self._fields = SSEDecoder()

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._held_cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, self._pending = (self._pending + chunk).split(b"\n\n")
        return [event for block in blocks if (event := self._event(block)) is not None]

    def close(self) -> list[ServerSentEvent]:
        """At the end of the body: a held \r ends its line; an event without its blank line is dropped."""
        return self.feed(b"\n") if self._held_cr else []

    def _event(self, block: bytes) -> ServerSentEvent | None:
        if not block:
            return None
        fields = self._fields
        for line in block.decode("utf-8", "replace").split("\n"):
            fields.decode(line)
        return fields.decode("")


async def server_sent_events(
    chunks: AsyncIterable[bytes], *, on_chunk: Callable[[], None] | None = None
) -> AsyncIterator[ServerSentEvent]:
    """The events of a body; `on_chunk` is told of every chunk, events or not (an idle timer's touch)."""
    decoder = EventStreamDecoder()
    async for chunk in chunks:
        if on_chunk is not None:
            on_chunk()
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
