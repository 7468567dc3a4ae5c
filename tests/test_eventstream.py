"""The upstream SSE framing on its own: blank-line boundaries in any packet, every line ending, every field."""

from __future__ import annotations

import pytest

from chat.streaming.providers.eventstream import EventStreamDecoder

STREAM = (
    ": a comment, ignored\n"
    "event: message_start\n"
    'data: {"text": "Ré 世界 🎉"}\n'
    "\n"
    "id: 7\n"
    "data: first line\n"
    "data:second line, no space\n"
    "\n"
    "\n"  # an extra blank line dispatches nothing
    "retry: 1500\n"
    "data: [DONE]\n"
    "\n"
)
# An event without `event:` is a "message", as in the browser.
EXPECTED = [
    ("message_start", '{"text": "Ré 世界 🎉"}', ""),
    ("message", "first line\nsecond line, no space", "7"),
    ("message", "[DONE]", "7"),  # the last event id carries over, as the SSE spec says
]


def decode(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    decoder = EventStreamDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)] + decoder.close()
    return [(event.event, event.data, event.id) for event in events]


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_every_split_point_gives_the_same_events(ending: str) -> None:
    body = STREAM.replace("\n", ending).encode()
    assert decode([body]) == EXPECTED
    for cut in range(1, len(body)):
        assert decode([body[:cut], body[cut:]]) == EXPECTED, (ending, cut)


def test_one_byte_at_a_time_with_crlf() -> None:
    body = STREAM.replace("\n", "\r\n").encode()
    assert decode([body[i : i + 1] for i in range(len(body))]) == EXPECTED


def test_a_lone_cr_at_the_very_end_still_ends_its_line() -> None:
    assert decode([b"data: x\r", b"\r"]) == [("message", "x", "")]


def test_an_event_without_its_blank_line_at_the_end_is_dropped() -> None:
    # The SSE spec: an incomplete event at end of stream is not dispatched; the adapter reports the loss.
    assert decode([b"data: complete\n\n", b"data: cut off"]) == [("message", "complete", "")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode([b"data: \xff ok\n\n"]) == [("message", "\ufffd ok", "")]
