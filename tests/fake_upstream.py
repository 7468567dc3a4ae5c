"""Loopback fake of the OpenAI and Anthropic streaming APIs with exact wire formats and switchable faults."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import logging
import re
import secrets
import signal
import socket
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

from tests.sample_replies import reply_text

logger = logging.getLogger(__name__)

# Multibyte UTF-8 (2-, 3- and 4-byte sequences) so that byte-level splits land mid-character.
DEFAULT_TEXT = (
    "# Résumé of the café\n\n"
    "Hello, **world**! Voilà: the crème brûlée costs 5 € today.\n\n"
    "- 世界 means *world* in Chinese.\n"
    "- Celebrate with 🎉 and `naïve_code()`.\n\n"
    "That's all — merci!"
)
DEFAULT_THINKING = "Let me think about this… The user wants a résumé; 世界 is fine. 🤔"
TOOL_CALL_ID = "call_1"
TOOL_USE_ID = "toolu_1"
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"location": "Paris, France", "unit": "celsius"}'
THINKING_SIGNATURE = "EqQBCkgIBBABGAIiQFakeSignatureForTestsOnlyZm9vYmFyYmF6"
DEFAULT_CONTENT_TOKENS = 400

# Item tags. "pre" precedes the content, "think" is a reasoning delta, "content" a text delta, "post" follows
# the content (tool call, finish reason, block stop), "final" is what omit_final drops, "comment" is filler
# (keep-alive / ping), "malformed" is injected garbage. "abort", "silent" and "end" are actions, not bytes.
_PACED = frozenset({"think", "content"})
_FAULT_POINTS = frozenset({"content", "post", "final"})
_ACTIONS = frozenset({"abort", "silent", "trickle", "end"})

_Item = tuple[str, bytes]


# Compact separators and raw UTF-8 match what both providers put on the wire. One shared encoder, because
# json.dumps with non-default options builds a new encoder per call (measurable at 200k events).
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


_PIECE_RE = re.compile(r"\S+\s*|\s+")


def split_deltas(text: str) -> list[str]:
    """Word-ish pieces (a word plus its trailing whitespace) that concatenate back to ``text``."""
    return _PIECE_RE.findall(text)


def generated_text(tokens: int) -> str:
    return " ".join(f"tok{i}" for i in range(tokens))


@dataclass
class Scenario:
    """What one response looks like. Fault counters ("after N") count content deltas, not thinking deltas."""

    text: str = DEFAULT_TEXT
    thinking: str = ""  # reasoning text: an Anthropic thinking block / OpenAI reasoning_content deltas
    interleave: bool = False  # OpenAI: a reasoning_content delta before each content delta, not all first
    tool_call: bool = False  # also stream a get_weather tool call after the text
    truncated: bool = False  # stop reason "length" / "max_tokens"
    ttft: float = 0.0  # seconds between sending the headers and the first body byte
    interval: float = 0.0  # seconds between consecutive text deltas (thinking and content alike)
    tokens: int | None = None  # replace the text by "tok0 tok1 ..." with this many words (one delta each)
    # "prose", "mixed" or "code": replace the text by that realistic markdown reply of `tokens` deltas
    # (tests/sample_replies.py; DEFAULT_CONTENT_TOKENS without tokens). None: "tok0 tok1 ..." or the text.
    content: str | None = None
    status: int = 200  # non-200: reply with the provider's error JSON instead of a stream
    retry_after: str | None = None  # Retry-After header on a non-200 reply
    error_message: str = "simulated failure"
    error_after: int | None = None  # in-stream error event after N content deltas, then a clean end
    abort_after: int | None = None  # abort the TCP connection after N content deltas
    omit_final: bool = False  # end cleanly without usage/[DONE] (OpenAI) or message_delta/message_stop
    silent_after: int | None = None  # after N content deltas send nothing until the client goes away
    malformed_after: int | None = None  # after N content deltas send a broken JSON data line, then go on
    crlf: bool = False  # \r\n line endings in the SSE framing
    cr: bool = False  # bare \r line endings in the SSE framing (the spec allows CR, LF and CRLF alike)
    bom: bool = False  # a UTF-8 byte order mark before the first event
    charset: str = "utf-8"  # the charset the Content-Type names; the body is UTF-8 whatever it says
    hold_open: bool = False  # after the last event send nothing until the client goes: the body never ends
    trickle_after: int | None = None  # after N content deltas "data: ", then a byte every 20 ms, never a line end
    gzip: bool = False  # Content-Encoding: gzip, flushed after every write so the stream still streams
    comments: bool = False  # interleave ": keep-alive" comments and, for Anthropic, ping events
    # "event": one write per SSE event; "byte": one byte per write; int or list of ints: the whole body is
    # serialised first and written in pieces cut at those byte offsets (no interval pacing then).
    split: str | int | list[int] = "event"
    input_tokens: int = 25  # reported verbatim as prompt_tokens / input_tokens
    output_tokens: int | None = None  # None: the number of content deltas
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # Anthropic only (cache_creation_input_tokens)
    reasoning_tokens: int = 0  # OpenAI only (completion_tokens_details.reasoning_tokens)
    # OpenAI-compatible only, how error_after's error looks: "openai" {"error": {...}} and the body ends; "done"
    # the same, then data: [DONE]; "vllm" a flat {"object": "error", ...}, then [DONE]; "llamacpp" an `error:`
    # field line (older llama.cpp server); "event" that JSON as `event: error`; "openrouter" a chunk with `error`
    # and finish_reason "error", then [DONE].
    error_shape: str = "openai"
    omit_finish: bool = False  # OpenAI: no finish_reason anywhere, but usage and [DONE] as usual
    # OpenAI: the text comes as delta.refusal pieces (content null), finish "stop", as the API sends a refusal;
    # Anthropic: stop_reason "refusal" after `text` (which may be "", as in a refusal before any text).
    refusal: bool = False
    html_error: bool = False  # with status: an HTML page from a proxy in front of the model, not the provider's JSON
    json_error: bool = False  # a 200 whose body is vLLM's flat error object as plain JSON, not a stream
    encoding: str = ""  # Content-Encoding: "gzip" (as gzip=True), "deflate" (zlib) or "raw-deflate" (sent as deflate)
    recorded: bytes | None = None  # replay these bytes (a recorded stream, tests/fixtures/) as the body; split applies
    # OpenAI streams: the final usage chunk also carries "cost": <this text, written verbatim into the JSON>, as
    # OpenRouter and a LiteLLM proxy send it; e.g. "0.000123456789", or '"0.5"' for a string, or "-1".
    reported_cost: str | None = None

    def streamed_text(self) -> str:
        if self.content is not None:
            return reply_text(self.content, self.tokens if self.tokens is not None else DEFAULT_CONTENT_TOKENS)
        return generated_text(self.tokens) if self.tokens is not None else self.text


class Headers(dict[str, str]):
    """Request headers with lower-cased keys and case-insensitive lookups (``h["Authorization"]`` works)."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class RequestRecord:
    path: str
    headers: dict[str, str]
    body: dict
    scenario: Scenario
    received_at: float
    first_byte_at: float | None = None
    closed_at: float | None = None
    end: str = ""
    deltas_sent: int = 0
    sent_at: list[float] | None = None  # time.time() as each content delta was written, when sends are recorded

    @property
    def asked_usage_accounting(self) -> bool:
        """Whether the request asked for OpenRouter's usage accounting (`"usage": {"include": true}`)."""
        usage = self.body.get("usage")
        return isinstance(usage, dict) and usage.get("include") is True


class _Framer:
    """Builds SSE bytes; CRLF is applied to the framing only (compact JSON never contains a raw newline)."""

    __slots__ = ("cr", "crlf")

    def __init__(self, crlf: bool, cr: bool = False) -> None:
        self.crlf, self.cr = crlf, cr

    def raw(self, text: str) -> bytes:
        if self.crlf:
            text = text.replace("\n", "\r\n")
        elif self.cr:
            text = text.replace("\n", "\r")
        return text.encode()

    def data(self, payload: str) -> bytes:
        return self.raw(f"data: {payload}\n\n")

    def event(self, name: str, payload: str) -> bytes:
        return self.raw(f"event: {name}\ndata: {payload}\n\n")

    def comment(self) -> bytes:
        return self.raw(": keep-alive\n\n")


def _fragments(text: str, size: int = 10) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _openai_finish(sc: Scenario) -> str:
    if sc.truncated:
        return "length"
    return "tool_calls" if sc.tool_call else "stop"


def _anthropic_stop(sc: Scenario) -> str:
    if sc.refusal:
        return "refusal"
    if sc.truncated:
        return "max_tokens"
    return "tool_use" if sc.tool_call else "end_turn"


def _openai_usage(sc: Scenario, pieces: int) -> dict[str, Any]:
    completion = sc.output_tokens if sc.output_tokens is not None else pieces
    return {
        "prompt_tokens": sc.input_tokens,
        "completion_tokens": completion,
        "total_tokens": sc.input_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": sc.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": sc.reasoning_tokens},
    }


def _anthropic_usage(sc: Scenario, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": sc.input_tokens,
        "cache_creation_input_tokens": sc.cache_write_tokens,
        "cache_read_input_tokens": sc.cache_read_tokens,
        "output_tokens": output_tokens,
    }


def _openai_items(sc: Scenario, model: str, include_usage: bool) -> Iterator[_Item]:
    f = _Framer(sc.crlf, sc.cr)
    pieces = split_deltas(sc.streamed_text())
    # Chunks share everything but the delta and finish_reason, so format around a prefix instead of
    # re-encoding the whole dict per delta (matters at 1000 streams x 200 deltas).
    base = (
        f'{{"id":"chatcmpl-{secrets.token_hex(12)}","object":"chat.completion.chunk",'
        f'"created":{int(time.time())},"model":{_dumps(model)}'
    )
    head = base + ',"choices":[{"index":0,"delta":'
    # Real OpenAI puts "usage":null on every chunk when include_usage is set; clients must tolerate it.
    tail_usage = ',"usage":null' if include_usage else ""

    open_tail = f',"finish_reason":null}}]{tail_usage}}}'

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return f.data(f'{head}{_dumps(delta)},"finish_reason":{_dumps(finish)}}}]{tail_usage}}}')

    def text_chunk(key: str, piece: str) -> bytes:
        # The hot path: only the string itself goes through the encoder.
        return f.data(f'{head}{{"{key}":{_dumps(piece)}}}{open_tail}')

    # A refusal starts like the recorded one in tests/fixtures/openai-refusal.sse: content null, refusal "".
    opening: dict[str, Any] = {"role": "assistant", "content": ""}
    if sc.refusal:
        opening.update(content=None, refusal="")
    yield "pre", chunk(opening)
    if sc.comments:
        yield "comment", f.comment()
    thoughts = split_deltas(sc.thinking)
    for piece in [] if sc.interleave else thoughts:
        yield "think", text_chunk("reasoning_content", piece)
    for i, piece in enumerate(pieces):
        if sc.comments and i and i % 4 == 0:
            yield "comment", f.comment()
        if sc.interleave and i < len(thoughts):
            yield "think", text_chunk("reasoning_content", thoughts[i])
        yield "content", text_chunk("refusal" if sc.refusal else "content", piece)
    if sc.tool_call:
        function = {"name": TOOL_NAME, "arguments": ""}
        header = {"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": function}
        yield "post", chunk({"tool_calls": [header]})
        for frag in _fragments(TOOL_ARGUMENTS):
            yield "post", chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]})
    if not sc.omit_finish:
        yield "post", chunk({}, _openai_finish(sc))
    if include_usage:
        usage = _dumps(_openai_usage(sc, len(pieces)))
        if sc.reported_cost is not None:  # spliced in as text, so the test decides every digit on the wire
            usage = f'{usage[:-1]},"cost":{sc.reported_cost}}}'
        yield "final", f.data(f'{base},"choices":[],"usage":{usage}}}')
    yield "final", f.data("[DONE]")


def _anthropic_items(sc: Scenario, model: str) -> Iterator[_Item]:
    f = _Framer(sc.crlf, sc.cr)
    pieces = split_deltas(sc.streamed_text())
    message = {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(sc, 1),
    }
    yield "pre", f.event("message_start", _dumps({"type": "message_start", "message": message}))
    ping = f.event("ping", '{"type":"ping"}')
    if sc.comments:
        yield "comment", ping
    index = 0
    if sc.thinking:
        block = {"type": "thinking", "thinking": ""}
        start = {"type": "content_block_start", "index": index, "content_block": block}
        yield "pre", f.event("content_block_start", _dumps(start))
        for piece in split_deltas(sc.thinking):
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "thinking_delta", "thinking": piece},
            }
            yield "think", f.event("content_block_delta", _dumps(delta))
        sig = {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE},
        }
        yield "pre", f.event("content_block_delta", _dumps(sig))
        yield "pre", f.event("content_block_stop", _dumps({"type": "content_block_stop", "index": index}))
        index += 1
    start = {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
    yield "pre", f.event("content_block_start", _dumps(start))
    prefix = f'{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":'
    for i, piece in enumerate(pieces):
        if sc.comments and i and i % 4 == 0:
            # Alternate the two kinds of filler a real stream can carry between deltas.
            yield "comment", ping if i % 8 == 0 else f.comment()
        yield "content", f.event("content_block_delta", f"{prefix}{_dumps(piece)}}}}}")
    yield "post", f.event("content_block_stop", _dumps({"type": "content_block_stop", "index": index}))
    if sc.tool_call:
        index += 1
        block = {"type": "tool_use", "id": TOOL_USE_ID, "name": TOOL_NAME, "input": {}}
        start = {"type": "content_block_start", "index": index, "content_block": block}
        yield "post", f.event("content_block_start", _dumps(start))
        for frag in _fragments(TOOL_ARGUMENTS):
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": frag},
            }
            yield "post", f.event("content_block_delta", _dumps(delta))
        yield "post", f.event("content_block_stop", _dumps({"type": "content_block_stop", "index": index}))
    output = sc.output_tokens if sc.output_tokens is not None else len(pieces)
    # message_delta usage is cumulative; newer API versions repeat the input/cache fields here too.
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": _anthropic_stop(sc), "stop_sequence": None},
        "usage": _anthropic_usage(sc, output),
    }
    yield "final", f.event("message_delta", _dumps(delta))
    yield "final", f.event("message_stop", '{"type":"message_stop"}')


def _with_faults(items: Iterator[_Item], total: int, sc: Scenario, provider: str) -> Iterator[_Item]:
    """Inject the scenario's faults; a fault 'after N' fires just before the (N+1)th content delta.

    N at or beyond the number of content deltas fires right after the last one.
    """
    f = _Framer(sc.crlf, sc.cr)
    if provider == "openai":
        malformed = f.raw('data: {"choices": [\n\n')
        error = _openai_stream_error(sc, f)
    else:
        malformed = f.raw('event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n')
        error = f.event(
            "error", _dumps({"type": "error", "error": {"type": "overloaded_error", "message": sc.error_message}})
        )
    # Terminal faults: the earliest wins; ties resolve in the listed order.
    terminal = sorted(
        (min(n, total), order, name)
        for order, (name, n) in enumerate(
            (
                ("error", sc.error_after),
                ("abort", sc.abort_after),
                ("silent", sc.silent_after),
                ("trickle", sc.trickle_after),
            )
        )
        if n is not None
    )
    malformed_at = min(sc.malformed_after, total) if sc.malformed_after is not None else None
    sent = 0
    for tag, data in items:
        if tag in _FAULT_POINTS:
            if malformed_at is not None and sent == malformed_at:
                malformed_at = None
                yield "malformed", malformed
            if terminal and sent == terminal[0][0]:
                name = terminal[0][2]
                if name == "error":
                    yield "post", error
                    yield "end", b""
                else:
                    yield name, b""
                return
        if tag == "final" and sc.omit_final:
            continue
        if tag == "content":
            sent += 1
        yield tag, data
    yield "end", b""


def _openai_stream_error(sc: Scenario, f: _Framer) -> bytes:
    """The in-stream error of an OpenAI-compatible server, in the shape `sc.error_shape` names."""
    nested = {"message": sc.error_message, "type": "server_error", "code": None}
    done = f.data("[DONE]")
    if sc.error_shape == "openai":
        return f.data(_dumps({"error": nested}))
    if sc.error_shape == "done":
        return f.data(_dumps({"error": nested})) + done
    if sc.error_shape == "vllm":
        # vLLM's ErrorResponse, sent as a data line and followed by [DONE].
        flat = {"object": "error", "message": sc.error_message, "type": "InternalServerError", "param": None}
        return f.data(_dumps({**flat, "code": 500})) + done
    if sc.error_shape == "llamacpp":
        # Older llama.cpp server: `error:` + its format_error_response JSON, and then the body ends.
        return f.raw(f"error: {_dumps({'code': 500, 'message': sc.error_message, 'type': 'server_error'})}\n\n")
    if sc.error_shape == "event":
        # The same JSON as an SSE event named `error`: what the framer hands over for the line above.
        return f.event("error", _dumps({"code": 500, "message": sc.error_message, "type": "server_error"}))
    if sc.error_shape == "openrouter":
        chunk = {
            "id": "gen-1",
            "object": "chat.completion.chunk",
            "error": {"code": 502, "message": sc.error_message},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
        return f.data(_dumps(chunk)) + done
    raise ValueError(f"unknown error_shape {sc.error_shape!r}")


def _openai_error(status: int, message: str) -> dict[str, Any]:
    kind, code = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", "unsupported_country_region_territory"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _html_error_page(status: int, title: str) -> bytes:
    """A proxy's error page (nginx's, padded as Cloudflare's are); `title` goes in as markup, entities and all."""
    return (
        f"<!DOCTYPE html>\n<html>\n<head><meta charset=utf-8>\n<title>{title}</title>\n"
        "<style>body { font-family: sans-serif; }</style></head>\n"
        f"<body>\n<center><h1>{title}</h1></center>\n<hr><center>nginx</center>\n"
        + "<!-- a padding to disable MSIE and Chrome friendly error page -->\n" * 6
        + "</body>\n</html>\n"
    ).encode()


def _question(body: dict[str, Any]) -> str:
    """The last user message's text of a chat request, "" when it has none as a plain string."""
    messages = body.get("messages")
    users = (
        [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) else []
    )
    text = users[-1].get("content") if users else ""
    return text if isinstance(text, str) else ""


def _encoding(sc: Scenario) -> str:
    return "gzip" if sc.gzip else sc.encoding


class _ClientGone(Exception):
    """The peer went away before we finished writing."""


class FakeUpstream:
    """A loopback aiohttp server streaming scenarios; run in a thread (tests) or a process (benchmark)."""

    def __init__(
        self,
        default: Scenario | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_log: int | None = None,
        record_sends: bool = False,
    ) -> None:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"FakeUpstream only listens on loopback, not {host!r}")
        self.default = default or Scenario()
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        # Off by default: the benchmark's 1,000 streams should not pay for a list of times each.
        self.record_sends = record_sends
        self._lock = threading.Lock()
        self._queue: deque[Scenario] = deque()
        # Bounded in benchmark mode so a long run does not grow memory without limit.
        self._log: deque[RequestRecord] = deque(maxlen=max_log)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ----- public sync API ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_async())
            except Exception as exc:  # handed to the starting thread instead of dying silently
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start within 10 s")
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop_async(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread = None
            self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def enqueue(self, *scenarios: Scenario) -> None:
        with self._lock:
            self._queue.extend(scenarios)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._log.clear()

    @property
    def log(self) -> list[RequestRecord]:
        # Copies, so a snapshot does not keep changing while the server thread updates live records.
        with self._lock:
            return [dataclasses.replace(r) for r in self._log]

    def wait_for(self, predicate: Callable[[list[RequestRecord]], bool], timeout: float = 5.0) -> list[RequestRecord]:
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.log
            if predicate(snapshot):
                return snapshot
            if time.monotonic() >= deadline:
                lines = "\n".join(
                    f"  {r.path} end={r.end!r} deltas={r.deltas_sent} received={r.received_at:.3f} "
                    f"first_byte={r.first_byte_at} closed={r.closed_at}"
                    for r in snapshot
                )
                raise AssertionError(f"condition not met within {timeout} s; log:\n{lines or '  (empty)'}")
            time.sleep(0.01)

    def expected_text(self, scenario: Scenario | None = None) -> str:
        return (scenario or self.default).streamed_text()

    # ----- server lifecycle -----------------------------------------------------------------------

    async def _start_async(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/_sent", self._sent)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # handler_cancellation: a client disconnect cancels the handler at once, even mid-sleep or silent.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        # A deep backlog so 1000 simultaneous benchmark connects are not refused or retried.
        await web.SockSite(self._runner, sock, backlog=4096).start()
        logger.info("fake upstream listening on %s", self.url)

    async def _stop_async(self) -> None:
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----- bookkeeping ----------------------------------------------------------------------------

    def _next_scenario(self) -> Scenario:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def _finish(self, rec: RequestRecord, end: str) -> None:
        with self._lock:
            if not rec.end:
                rec.end = end
                rec.closed_at = time.monotonic()

    async def _record(self, request: web.Request, scenario: Scenario) -> tuple[RequestRecord, bytes]:
        received = time.monotonic()
        headers = Headers()
        for key, value in request.headers.items():
            # Repeated headers are folded into one comma-separated value, as HTTP allows.
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raw = await request.read()
        rec = RequestRecord(path=request.path, headers=headers, body={}, scenario=scenario, received_at=received)
        if self.record_sends:
            rec.sent_at = []
        with self._lock:
            self._log.append(rec)
        return rec, raw

    # ----- handlers -------------------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        rec, _ = await self._record(request, self.default)
        self._finish(rec, "error_status")
        error = {"message": f"Unknown path {request.path}", "type": "invalid_request_error", "code": "unknown_url"}
        return web.json_response({"error": error}, status=404)

    async def _sent(self, request: web.Request) -> web.Response:
        """GET /_sent?last=N: the last N streamed replies (default 10), oldest first, each with the question that
        asked for it and [time.time() when written, text] for every content delta sent so far."""
        try:
            last = max(1, int(request.query.get("last", "10")))
        except ValueError:
            return web.json_response({"error": "last must be a whole number"}, status=400)
        with self._lock:
            taken = [(r, list(r.sent_at)) for r in self._log if r.sent_at is not None][-last:]
        # zip stops at the times: a reply still streaming has sent fewer deltas than its text has.
        replies = [
            {
                "question": _question(r.body),
                "end": r.end,
                "deltas": [
                    [at, piece] for at, piece in zip(times, split_deltas(r.scenario.streamed_text()), strict=False)
                ],
            }
            for r, times in taken
        ]
        return web.json_response({"recording": self.record_sends, "replies": replies})

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, "openai")

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, "anthropic")

    async def _guarded(self, request: web.Request, provider: str) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        rec: RequestRecord | None = None
        try:
            rec, raw = await self._record(request, self._next_scenario())
            return await self._serve(request, rec, raw, provider)
        except asyncio.CancelledError:
            if rec is not None:
                self._finish(rec, "server_stopped" if self._stopping else "client_closed")
                logger.info("client closed %s after %d deltas (noticed by cancellation)", rec.path, rec.deltas_sent)
            raise
        except Exception:
            if rec is not None:
                self._finish(rec, "server_error")
            raise
        finally:
            self._tasks.discard(task)

    def _error_response(
        self, rec: RequestRecord, provider: str, status: int, message: str, retry_after: str | None = None
    ) -> web.Response:
        make = _openai_error if provider == "openai" else _anthropic_error
        payload = make(status, message)
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        self._finish(rec, "error_status")
        return web.json_response(
            payload, status=status, headers=headers, reason="Overloaded" if status == 529 else None
        )

    async def _serve(self, request: web.Request, rec: RequestRecord, raw: bytes, provider: str) -> web.StreamResponse:
        sc = rec.scenario
        try:
            body = json.loads(raw)
        except ValueError:
            rec.body = {"_raw": raw.decode("utf-8", "replace")}
            return self._error_response(rec, provider, 400, "request body is not valid JSON")
        if not isinstance(body, dict):
            rec.body = {"_json": body}
            return self._error_response(rec, provider, 400, "request body must be a JSON object")
        rec.body = body
        if provider == "anthropic" and "anthropic-version" not in rec.headers:
            return self._error_response(rec, provider, 400, "anthropic-version: header is required")
        if sc.json_error:
            self._finish(rec, "error_status")
            flat = {"object": "error", "message": sc.error_message, "type": "BadRequestError", "param": None}
            return web.json_response({**flat, "code": 400})
        if sc.status != 200 and sc.html_error:
            self._finish(rec, "error_status")
            page = _html_error_page(sc.status, sc.error_message)
            return web.Response(body=page, status=sc.status, content_type="text/html")
        if sc.status != 200:
            return self._error_response(rec, provider, sc.status, sc.error_message, sc.retry_after)
        model = str(body.get("model") or "fake-model")
        if body.get("stream") is not True:
            return await self._non_stream(rec, provider, model)

        if provider == "openai":
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            items: Iterator[_Item] = _openai_items(sc, model, include_usage)
            ids = {"x-request-id": f"req_{secrets.token_hex(8)}"}
        else:
            items = _anthropic_items(sc, model)
            ids = {"request-id": f"req_{secrets.token_hex(8)}"}
        items = _with_faults(items, len(split_deltas(sc.streamed_text())), sc, provider)
        if sc.recorded is not None:
            items = iter([("post", sc.recorded), ("end", b"")])
        if sc.bom:
            items = itertools.chain([("pre", b"\xef\xbb\xbf")], items)

        if encoding := _encoding(sc):
            ids["content-encoding"] = "deflate" if encoding == "raw-deflate" else encoding
        resp = web.StreamResponse(
            status=200,
            headers={"content-type": f"text/event-stream; charset={sc.charset}", "cache-control": "no-cache", **ids},
        )
        # Headers go out now, so the client has its response object before ttft elapses.
        writer = await resp.prepare(request)
        assert writer is not None
        stream = _Stream(self, request, resp, writer, rec)
        try:
            if isinstance(sc.split, str) and sc.split in ("event", "byte"):
                action = await stream.paced(items, per_byte=sc.split == "byte")
            else:
                offsets = [sc.split] if isinstance(sc.split, int) else list(sc.split)
                action = await stream.by_offsets(items, offsets)
        except _ClientGone:
            self._finish(rec, "client_closed")
            logger.info("client closed %s after %d deltas (noticed on write)", rec.path, rec.deltas_sent)
            return resp

        if action == "abort":
            self._finish(rec, "aborted")
            if request.transport is not None:
                # abort() drops the socket without the chunked terminator, like a crashed upstream.
                request.transport.abort()
            return resp
        if action == "trickle":
            try:
                await stream.trickle()
            except _ClientGone:
                self._finish(rec, "client_closed")
                logger.info("client closed %s while it trickled", rec.path)
                return resp
        if action == "silent" or (action == "end" and sc.hold_open):
            # Parked until the client closes; handler cancellation turns that into client_closed.
            await asyncio.get_running_loop().create_future()
        try:
            await stream.end()
            await resp.write_eof()
        except (ConnectionError, _ClientGone):
            self._finish(rec, "client_closed")
            logger.info("client closed %s before end of stream", rec.path)
            return resp
        self._finish(rec, "completed")
        return resp

    async def _non_stream(self, rec: RequestRecord, provider: str, model: str) -> web.Response:
        sc = rec.scenario
        if sc.ttft:
            await asyncio.sleep(sc.ttft)
        text, pieces = sc.streamed_text(), len(split_deltas(sc.streamed_text()))
        payload: dict[str, Any]
        if provider == "openai":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if sc.thinking:
                message["reasoning_content"] = sc.thinking
            if sc.tool_call:
                message["tool_calls"] = [
                    {
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS},
                    }
                ]
            payload = {
                "id": f"chatcmpl-{secrets.token_hex(12)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": _openai_finish(sc)}],
                "usage": _openai_usage(sc, pieces),
            }
        else:
            content: list[dict[str, Any]] = []
            if sc.thinking:
                content.append({"type": "thinking", "thinking": sc.thinking, "signature": THINKING_SIGNATURE})
            content.append({"type": "text", "text": text})
            if sc.tool_call:
                content.append(
                    {"type": "tool_use", "id": TOOL_USE_ID, "name": TOOL_NAME, "input": json.loads(TOOL_ARGUMENTS)}
                )
            output = sc.output_tokens if sc.output_tokens is not None else pieces
            payload = {
                "id": f"msg_{secrets.token_hex(12)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": _anthropic_stop(sc),
                "stop_sequence": None,
                "usage": _anthropic_usage(sc, output),
            }
        with self._lock:
            rec.first_byte_at = time.monotonic()
            rec.deltas_sent = pieces
        self._finish(rec, "completed")
        return web.Response(body=_dumps(payload).encode(), content_type="application/json")


class _Stream:
    """Writes one response body, tracking the record and noticing a departed client before each write."""

    __slots__ = ("compressor", "rec", "request", "resp", "up", "writer")

    def __init__(
        self, up: FakeUpstream, request: web.Request, resp: web.StreamResponse, writer: Any, rec: RequestRecord
    ) -> None:
        self.up, self.request, self.resp, self.writer, self.rec = up, request, resp, writer, rec
        # wbits=31: a gzip member, as a server behind a compressing proxy sends it; 15 a zlib stream (HTTP's
        # "deflate"), -15 a bare deflate stream, which some servers send as "deflate" all the same.
        wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}.get(_encoding(rec.scenario))
        self.compressor = zlib.compressobj(wbits=wbits) if wbits is not None else None

    async def _write(self, data: bytes, *, final: bool = False) -> None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise _ClientGone
        if self.rec.first_byte_at is None:
            with self.up._lock:
                self.rec.first_byte_at = time.monotonic()
        if self.compressor is not None:
            # A sync flush per write, or the compressor would hold the events back until the end.
            mode = zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH
            data = self.compressor.compress(data) + self.compressor.flush(mode)
        try:
            await self.resp.write(data)
            await self.writer.drain()
        except ConnectionError as exc:
            raise _ClientGone from exc

    async def end(self) -> None:
        """A clean end: a compressed body closes its gzip member (its trailer), a plain one has nothing to add."""
        if self.compressor is not None:
            await self._write(b"", final=True)

    async def trickle(self) -> None:
        """Bytes that never complete an event: an open `data:` line growing by one byte every 20 ms."""
        await self._write(b"data: ")
        while True:
            await asyncio.sleep(0.02)
            await self._write(b"x")

    def _count_delta(self, n: int = 1) -> None:
        with self.up._lock:
            self.rec.deltas_sent += n
            if self.rec.sent_at is not None:
                self.rec.sent_at.extend([time.time()] * n)

    async def paced(self, items: Iterator[_Item], per_byte: bool) -> str:
        sc = self.rec.scenario
        loop = asyncio.get_running_loop()
        first = True
        next_at: float | None = None
        for tag, data in items:
            if tag in _ACTIONS:
                return tag
            if first:
                first = False
                if sc.ttft > 0:
                    await asyncio.sleep(sc.ttft)
            if tag in _PACED and sc.interval > 0:
                # An absolute schedule: a real model emits at its own rate, so a stalled reader gets a burst
                # afterwards rather than the whole stream drifting later.
                now = loop.time()
                if next_at is None:
                    next_at = now
                elif next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at += sc.interval
            if per_byte:
                for i in range(len(data)):
                    await self._write(data[i : i + 1])
                    # Yield so each byte leaves as its own segment instead of coalescing in the buffer.
                    await asyncio.sleep(0)
            else:
                await self._write(data)
            if tag == "content":
                self._count_delta()
        return "end"

    async def by_offsets(self, items: Iterator[_Item], offsets: list[int]) -> str:
        chunks: list[bytes] = []
        content_ends: list[int] = []
        size = 0
        action = "end"
        for tag, data in items:
            if tag in _ACTIONS:
                action = tag
                break
            chunks.append(data)
            size += len(data)
            if tag == "content":
                content_ends.append(size)
        body = b"".join(chunks)
        if self.compressor is not None:
            # Compressed whole and then cut, so the offsets fall inside the encoding (its header, a deflate
            # block, the trailer), not between flushed events; deltas are counted as the last piece goes.
            body = self.compressor.compress(body) + self.compressor.flush(zlib.Z_FINISH)
            self.compressor = None
            content_ends = [len(body)] * len(content_ends)
        cuts = sorted({o for o in offsets if 0 < o < len(body)})
        bounds = [0, *cuts, len(body)]
        sc = self.rec.scenario
        if sc.ttft > 0:
            await asyncio.sleep(sc.ttft)
        counted = 0
        for start, stop in itertools.pairwise(bounds):
            await self._write(body[start:stop])
            done = bisect.bisect_right(content_ends, stop)
            if done > counted:
                self._count_delta(done - counted)
                counted = done
            # A short real sleep (not just a yield) so each piece arrives as a separate TCP read; with very
            # many pieces fall back to a yield so the stream still finishes quickly.
            await asyncio.sleep(0.001 if len(bounds) <= 66 else 0)
        return action


# ----- CLI (benchmark) ----------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    # 1000 concurrent streams plus listening sockets exceed the common default soft limit of 1024.
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else 65536
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _serve_forever(up: FakeUpstream) -> None:
    await up._start_async()
    print(f"fake upstream listening on {up.url}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await up._stop_async()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--tokens", type=int, default=None, help="generated tokens per response (default: the sample text)"
    )
    parser.add_argument(
        "--content",
        choices=["prose", "mixed", "code"],
        help=f"a realistic markdown reply of --tokens deltas (default {DEFAULT_CONTENT_TOKENS}) instead of tokN",
    )
    parser.add_argument(
        "--record-sends", action="store_true", help="record when each delta is sent, served as JSON at GET /_sent"
    )
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first body byte")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _raise_fd_limit()
    up = FakeUpstream(
        Scenario(tokens=args.tokens, content=args.content, interval=args.interval, ttft=args.ttft),
        host=args.host,
        port=args.port,
        max_log=1000,
        record_sends=args.record_sends,
    )
    asyncio.run(_serve_forever(up))
    return 0


if __name__ == "__main__":
    sys.exit(main())
