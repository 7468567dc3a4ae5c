"""The upstream SSE framing on its own: blank-line boundaries in any packet, every line ending, every field."""

from __future__ import annotations

import random
import time

import pytest

from chat.streaming.providers import ProviderError
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


# ----- The WHATWG rules one by one ("Parsing an event stream", "Interpreting an event stream") -----

BOM = b"\xef\xbb\xbf"


def test_a_leading_bom_is_dropped_and_the_first_event_kept() -> None:
    body = BOM + b"data: first\n\ndata: second\n\n"
    for cut in range(len(body) + 1):  # the BOM itself split across packets too
        assert decode([body[:cut], body[cut:]]) == [("message", "first", ""), ("message", "second", "")], cut


def test_only_one_bom_is_dropped() -> None:
    # The second one is part of the first line, whose field name is then "\ufeffdata": an unknown field.
    assert decode([BOM + BOM + b"data: x\n\ndata: y\n\n"]) == [("message", "y", "")]


def test_a_bom_later_in_the_stream_is_data() -> None:
    assert decode([b"data: a\n\n", BOM + b"data: b\n\n"]) == [("message", "a", "")]
    assert decode([b"data: " + BOM + b"b\n\n"]) == [("message", "\ufeffb", "")]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending_ends_a_line(ending: bytes) -> None:
    body = b"event: e" + ending + b"data: 1" + ending + b"data: 2" + ending + ending
    assert decode([body]) == [("e", "1\n2", "")]


def test_mixed_line_endings_in_one_stream() -> None:
    assert decode([b"data: a\rdata: b\r\ndata: c\n\r\n"]) == [("message", "a\nb\nc", "")]


@pytest.mark.parametrize("body", [b"data: x\r\r", b"data: x\r\n\r", b"data: x\n\r"])
def test_a_cr_at_the_end_of_a_packet_dispatches_at_once(body: bytes) -> None:
    # The CR ends the blank line now; an LF in the next packet would only complete a CRLF.
    assert [(e.event, e.data) for e in EventStreamDecoder().feed(body)] == [("message", "x")]


def test_an_lf_after_a_packet_final_cr_is_swallowed_once() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n") == []  # the second half of CRLF, not a blank line
    assert [e.data for e in decoder.feed(b"\n")] == ["x"]  # this one is the blank line
    assert [e.data for e in decoder.feed(b"data: y\r\r")] == ["y"]
    assert decoder.feed(b"\n") == []  # swallowed: completes the CRLF after the blank line's CR
    assert [e.data for e in decoder.feed(b"data: z\n\n")] == ["z"]
    assert decoder.close() == []


def test_the_last_event_is_dispatched_before_the_body_ends() -> None:
    for ending in (b"\n", b"\r\n", b"\r"):
        decoder = EventStreamDecoder()
        assert [e.data for e in decoder.feed(b"data: [DONE]" + ending + ending)] == ["[DONE]"], ending
        assert decoder.close() == []


def test_comment_lines_are_ignored() -> None:
    assert decode([b":\n: keep-alive\ndata: a\n:data: b\n\n"]) == [("message", "a", "")]
    assert decode([b": only a comment\n\n"]) == []


def test_a_field_without_a_colon_has_an_empty_value() -> None:
    # "data" alone appends an empty line to the data buffer: two of them give one LF.
    assert decode([b"data\ndata\n\n"]) == [("message", "\n", "")]
    assert decode([b"data\n\n"]) == [("message", "", "")]
    assert decode([b"event\ndata: x\n\n"]) == [("message", "x", "")]  # an empty type is "message"


def test_one_space_after_the_colon_is_dropped_and_only_one() -> None:
    assert decode([b"data:  two spaces\n\n"]) == [("message", " two spaces", "")]
    assert decode([b"data:no space\n\n"]) == [("message", "no space", "")]
    assert decode([b"data:\tx\n\n"]) == [("message", "\tx", "")]
    assert decode([b"data: a: b\n\n"]) == [("message", "a: b", "")]  # only the first colon splits


def test_data_lines_are_joined_with_lf_and_the_last_lf_removed() -> None:
    assert decode([b"data: a\ndata:\ndata: c\n\n"]) == [("message", "a\n\nc", "")]


def test_an_event_without_data_is_not_dispatched_and_its_type_does_not_leak() -> None:
    assert decode([b"event: ping\n\ndata: x\n\n"]) == [("message", "x", "")]
    assert decode([b"id: 3\n\ndata: x\n\n"]) == [("message", "x", "3")]  # but the id is kept


def test_the_event_type_resets_after_each_dispatch() -> None:
    assert decode([b"event: a\ndata: 1\n\ndata: 2\n\n"]) == [("a", "1", ""), ("message", "2", "")]


def test_an_id_with_a_null_is_ignored() -> None:
    assert decode([b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"]) == [("message", "a", "1"), ("message", "b", "1")]


def test_an_empty_id_resets_the_last_event_id() -> None:
    assert decode([b"id: 1\ndata: a\n\nid\ndata: b\n\n"]) == [("message", "a", "1"), ("message", "b", "")]


def test_retry_takes_only_ascii_digits() -> None:
    decoder = EventStreamDecoder()
    events = decoder.feed(b"retry: 1500\ndata: a\n\nretry: 15x\ndata: b\n\nretry: -1\ndata: c\n\n")
    assert [e.retry for e in events] == [1500, 1500, 1500]


def test_unknown_fields_are_ignored() -> None:
    assert decode([b"foo: bar\nDATA: no\ndata: yes\n\n"]) == [("message", "yes", "")]


def test_blank_lines_between_events_dispatch_nothing() -> None:
    assert decode([b"\n\n\r\n\rdata: a\n\n\n\n\ndata: b\r\r\r"]) == [("message", "a", ""), ("message", "b", "")]


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_every_split_point_with_a_bom(ending: str) -> None:
    body = BOM + STREAM.replace("\n", ending).encode()
    for cut in range(1, len(body)):
        assert decode([body[:cut], body[cut:]]) == EXPECTED, (ending, cut)
    assert decode([body[i : i + 1] for i in range(len(body))]) == EXPECTED


def test_each_event_is_out_as_soon_as_its_blank_line_is_in() -> None:
    # Byte by byte: an event is returned by the very feed that completes its blank line, never later.
    for ending in (b"\n", b"\r\n", b"\r"):
        body = b"data: 1" + ending + ending + b"data: 2" + ending + ending
        decoder, seen = EventStreamDecoder(), []
        for i in range(len(body)):
            seen += [(i, e.data) for e in decoder.feed(body[i : i + 1])]
        first_end = len(b"data: 1" + ending + ending) - (2 if ending == b"\r\n" else 1)
        # With CRLF the event is complete at the blank line's CR: its LF is only swallowed.
        assert seen == [(first_end, "1"), (len(body) - (2 if ending == b"\r\n" else 1), "2")], ending


# ----- Bounded input ------------------------------------------------------------------------------


def test_an_event_longer_than_the_limit_is_refused_before_it_completes() -> None:
    decoder = EventStreamDecoder(max_event_bytes=1024)
    decoder.feed(b"data: " + b"x" * 1000)
    with pytest.raises(ProviderError, match="larger than 1 KiB"):
        decoder.feed(b"x" * 100)


def test_an_event_longer_than_the_limit_in_one_packet_is_refused() -> None:
    with pytest.raises(ProviderError, match="larger than 1 KiB"):
        EventStreamDecoder(max_event_bytes=1024).feed(b"data: " + b"x" * 2000 + b"\n\n")


def test_a_line_without_end_longer_than_the_limit_is_refused() -> None:
    decoder = EventStreamDecoder(max_event_bytes=1024)
    with pytest.raises(ProviderError, match="larger than 1 KiB"):
        for _ in range(20):
            decoder.feed(b": a comment that never ends " * 4)


def test_an_event_at_the_limit_passes_and_many_events_do_not_add_up() -> None:
    decoder = EventStreamDecoder(max_event_bytes=1024)
    event = b"data: " + b"x" * (1024 - 6) + b"\n\n"  # 1024 bytes before its blank line's terminator
    events = [e for _ in range(50) for e in decoder.feed(event)]
    assert len(events) == 50 and len(events[0].data) == 1018


def feed_time(size: int, packet: int = 1024) -> float:
    body = b"data: " + b"x" * size + b"\n\n"
    packets = [body[i : i + packet] for i in range(0, len(body), packet)]
    best = float("inf")
    for _ in range(3):
        decoder = EventStreamDecoder(max_event_bytes=2 * size + 1024)
        # This thread's CPU time, not the wall clock: other processes on a shared machine do not count.
        started = time.thread_time()
        events = [e for p in packets for e in decoder.feed(p)]
        best = min(best, time.thread_time() - started)
        assert len(events) == 1 and len(events[0].data) == size
    return best


def test_framing_is_linear_in_the_bytes_of_one_long_event() -> None:
    # Twice the bytes in the same 1 KiB packets must cost about twice the time, not four times (a buffer
    # copied and re-scanned per packet). A ratio, so that a slow machine does not fail it.
    small, large = feed_time(2 * 1024 * 1024), feed_time(4 * 1024 * 1024)
    assert large / small < 3, (small, large)


def spec_events(body: bytes) -> list[tuple[str, str, str, int | None]]:
    """The spec's algorithm written out plainly, line by line over the whole body: the reference."""
    text = body.decode("utf-8", "replace").removeprefix("\ufeff")
    events, data, kind, last_id, retry, i = [], [], "", "", None, 0
    while True:
        ends = [j for j in (text.find("\r", i), text.find("\n", i)) if j >= 0]
        if not ends:
            return events  # what follows the last line end is an incomplete line: discarded at the end
        end = min(ends)
        line, i = text[i:end], end + (2 if text.startswith("\r\n", end) else 1)
        if line == "":
            if data:
                events.append((kind or "message", "\n".join(data), last_id, retry))
            data, kind = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)


PIECES = [b"data", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\r\n", b"x", b"7", b"\x00", BOM, b"\xc3\xa9"]


def test_random_streams_cut_anywhere_match_the_spec_line_by_line() -> None:
    rng = random.Random(21)
    for _ in range(3000):
        body = b"".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 40)))
        if rng.random() < 0.5:
            body = BOM + body
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randrange(0, 6)))) if len(body) > 1 else []
        packets = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        decoder = EventStreamDecoder()
        got = [(e.event, e.data, e.id, e.retry) for p in packets for e in decoder.feed(p)] + decoder.close()
        assert got == spec_events(body), (body, packets)


def test_an_error_field_line_is_read_as_an_error_event() -> None:
    # Not the spec's rule (an unknown field is ignored there): older llama.cpp servers report a failure so.
    assert decode([b'error: {"code": 500}\n\n']) == [("error", '{"code": 500}', "")]
    assert decode([b"data: a\n\nerror: b\n\ndata: c\n\n"]) == [
        ("message", "a", ""),
        ("error", "b", ""),
        ("message", "c", ""),
    ]
