"""Frames a response's bytes into Server-Sent Events as the WHATWG spec parses them, in bounded, linear work.

httpx-sse's own reader decodes bytes to text and text to lines through four async generators
before it sees an event; at thousands of upstream events a second that framing cost as much as
everything else we do per event (bench/RESULTS.md). Here the bytes are cut at blank lines first and
only whole events are decoded, which also means a UTF-8 character split across packets is never
decoded in halves. The rules are the spec's ("Parsing an event stream", "Interpreting an event
stream"), each with its test in tests/test_eventstream.py:

- the body is UTF-8 whatever its Content-Type says; one BOM at its very start is dropped;
- CRLF, LF and CR each end a line, and a blank line dispatches the event at once: a CR that ends a
  packet ends its line then and there, and an LF that opens the next packet is swallowed as its pair;
- `data` lines are joined with LF, an event with no data is not dispatched, `event` names the type
  (else "message"), `id` sets the last event id unless it holds a NULL, `retry` takes digits only,
  a line starting with `:` is a comment, a field without a colon has an empty value, one space after
  the colon is dropped;
- an event without its blank line when the body ends is discarded.

One addition the spec does not make: an `error:` field line (older llama.cpp servers) is read as an
event named `error` with that value as its data, where the spec would ignore the unknown field.

Bounded: an event (the bytes before its blank line, so each of its lines too) longer than
`max_event_bytes` raises ProviderError instead of growing the buffer. Linear: a packet is scanned once
and the pieces of an unfinished event are joined once, when it completes.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable

from httpx_sse import ServerSentEvent

from . import ProviderError

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventStreamDecoder:
    """Incremental: feed it chunks as they arrive, get back the events they complete."""

    __slots__ = (
        "_data",
        "_last_id",
        "_max",
        "_pending",
        "_pending_nl",
        "_pending_size",
        "_retry",
        "_start",
        "_swallow_lf",
        "_type",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._start: bytes | None = b""  # the body's first bytes until a BOM is ruled in or out; then None
        self._swallow_lf = False  # the last chunk ended in CR: an LF opening the next one completes that CRLF
        # The unfinished event, line ends normalised to LF, as the chunks' pieces: joined once, when it completes.
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_nl = False  # it ends with a line end: an LF opening the next chunk makes the blank line
        self._data: list[str] = []
        self._type = ""
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._start is not None:
            chunk = self._start + chunk
            if len(chunk) < len(BOM) and BOM.startswith(chunk):
                self._start = chunk
                return []
            self._start = None
            if chunk.startswith(BOM):
                chunk = chunk[len(BOM) :]
        if self._swallow_lf and chunk:
            self._swallow_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if b"\r" in chunk:
            # Within one chunk CRLF and CR both become LF; a final CR ends its line now and the pair's LF,
            # if the next chunk brings it, is dropped there.
            self._swallow_lf = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return []
        events: list[ServerSentEvent] = []
        if self._pending_nl and chunk[0] == 0x0A:
            # The blank line straddles the chunks: the pending event (without its final LF) is complete.
            self._pending[-1] = self._pending[-1][:-1]
            self._complete(b"".join(self._pending), events)
            self._clear()
            chunk = chunk[1:]
            if not chunk:
                return events
        blocks = chunk.split(b"\n\n")
        if len(blocks) == 1:
            self._hold(chunk)
            return events
        first = blocks[0]
        if self._pending:
            self._check(self._pending_size + len(first))
            self._pending.append(first)
            first = b"".join(self._pending)  # the event's one copy as bytes
            self._clear()
        self._complete(first, events)
        for block in blocks[1:-1]:
            self._complete(block, events)
        if blocks[-1]:
            self._hold(blocks[-1])
        return events

    def close(self) -> list[ServerSentEvent]:
        """At the end of the body: an event without its blank line is discarded, as the spec says."""
        self._clear()
        return []

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        self._pending_nl = piece[-1] == 0x0A
        # A line end waiting to become a blank line is not part of the event's size.
        self._check(self._pending_size - self._pending_nl)

    def _clear(self) -> None:
        self._pending.clear()
        self._pending_size = 0
        self._pending_nl = False

    def _check(self, size: int) -> None:
        if size > self._max:
            raise ProviderError(f"The model sent an event larger than {_size(self._max)}, so the reply was stopped.")

    def _complete(self, block: bytes, events: list[ServerSentEvent]) -> None:
        """The lines of one block and the blank line that ended it."""
        if not block:
            return  # a blank line right after a dispatch: the buffers are already empty
        self._check(len(block))
        for line in block.decode("utf-8", "replace").split("\n"):
            if not line:
                self._dispatch(events)  # a blank line inside the block: "\n\n\n" and longer runs
                continue
            if line[0] == ":":
                continue
            # One slice for the value (a huge event's line is copied once here, not twice).
            colon = line.find(":")
            if colon < 0:
                name, value = line, ""
            else:
                name = line[:colon]
                value = line[colon + 2 :] if line.startswith(" ", colon + 1) else line[colon + 1 :]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._type = value
            elif name == "id":
                if "\0" not in value:
                    self._last_id = value
            elif name == "retry":
                if value.isascii() and value.isdigit():
                    self._retry = int(value)
            elif name == "error":
                # Not the spec's (which ignores unknown fields): older llama.cpp servers send a failure as an
                # `error:` line. Read as an `error` event with that data, it reaches the adapter instead of vanishing.
                self._type = "error"
                self._data.append(value)
        self._dispatch(events)

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        if self._data:
            events.append(ServerSentEvent(self._type, "\n".join(self._data), self._last_id, self._retry))
            self._data = []
        self._type = ""


def _size(limit: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= scale and limit % scale == 0:
            return f"{limit // scale} {unit}"
    return f"{limit} bytes"


async def server_sent_events(
    chunks: AsyncIterable[bytes],
    *,
    on_chunk: Callable[[], None] | None = None,
    on_event: Callable[[], None] | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> AsyncIterator[ServerSentEvent]:
    """The events of a body; `on_chunk` is told of every chunk, events or not (an idle timer's touch),
    `on_event` of every chunk that completed an event (a progress timer's)."""
    decoder = EventStreamDecoder(max_event_bytes)
    async for chunk in chunks:
        if on_chunk is not None:
            on_chunk()
        events = decoder.feed(chunk)
        if events and on_event is not None:
            on_event()  # once a chunk: the time is the same for every event it completed
        for event in events:
            yield event
    for event in decoder.close():
        yield event
