"""Self-test of the fake LLM upstream: wire formats, byte splits, faults and disconnect bookkeeping."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.fake_upstream import TOOL_ARGUMENTS, FakeUpstream, RequestRecord, Scenario, split_deltas
from tests.sample_replies import reply_text

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "test"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(server: FakeUpstream) -> FakeUpstream:
    server.reset()
    return server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


@dataclass
class Parsed:
    text: str = ""
    thinking: str = ""
    tool_args: str = ""
    stop: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)
    malformed: int = 0
    events: list[str] = field(default_factory=list)


def _loads(data: str, parsed: Parsed) -> dict[str, Any] | None:
    try:
        return json.loads(data)
    except ValueError:
        parsed.malformed += 1
        return None


def read_openai(client: httpx.Client, up: FakeUpstream) -> Parsed:
    parsed = Parsed()
    body = {
        "model": "gpt-test",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    with connect_sse(client, "POST", up.openai_base_url + "/chat/completions", json=body) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if sse.data == "[DONE]":
                parsed.done = True
                continue
            chunk = _loads(sse.data, parsed)
            if chunk is None:
                continue
            if "error" in chunk:
                parsed.errors.append(chunk["error"])
                continue
            assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "gpt-test"
            if chunk.get("usage"):
                parsed.usage = chunk["usage"]
            for choice in chunk["choices"]:
                delta = choice["delta"]
                parsed.text += delta.get("content") or ""
                parsed.thinking += delta.get("reasoning_content") or ""
                for call in delta.get("tool_calls") or []:
                    parsed.tool_args += call["function"].get("arguments") or ""
                parsed.stop = choice["finish_reason"] or parsed.stop
    return parsed


def read_anthropic(client: httpx.Client, up: FakeUpstream) -> Parsed:
    parsed = Parsed()
    body = {"model": "claude-test", "stream": True, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    with connect_sse(
        client, "POST", up.anthropic_base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS
    ) as source:
        for sse in source.iter_sse():
            parsed.events.append(sse.event)
            data = _loads(sse.data, parsed)
            if data is None:
                continue
            assert data["type"] == sse.event
            if sse.event == "message_start":
                assert data["message"]["model"] == "claude-test"
                parsed.usage = dict(data["message"]["usage"])
            elif sse.event == "content_block_delta":
                delta = data["delta"]
                parsed.text += delta.get("text", "")
                parsed.thinking += delta.get("thinking", "")
                parsed.tool_args += delta.get("partial_json", "")
            elif sse.event == "message_delta":
                parsed.stop = data["delta"]["stop_reason"]
                parsed.usage.update(data["usage"])
            elif sse.event == "message_stop":
                parsed.done = True
            elif sse.event == "error":
                parsed.errors.append(data["error"])
    return parsed


def last(up: FakeUpstream, end: str) -> RequestRecord:
    records = up.wait_for(lambda log: bool(log) and log[-1].end == end)
    return records[-1]


def test_openai_stream_reconstructs_text_and_usage(up: FakeUpstream, client: httpx.Client) -> None:
    sc = Scenario(thinking="Hmm… 世界 🤔", input_tokens=40, cache_read_tokens=30, reasoning_tokens=4, comments=True)
    up.enqueue(sc)
    parsed = read_openai(client, up)
    assert parsed.text == up.expected_text(sc)
    assert parsed.thinking == sc.thinking
    assert parsed.stop == "stop" and parsed.done and parsed.malformed == 0
    deltas = last(up, "completed").deltas_sent
    assert parsed.usage == {
        "prompt_tokens": 40,
        "completion_tokens": deltas,
        "total_tokens": 40 + deltas,
        "prompt_tokens_details": {"cached_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    rec = up.log[-1]
    assert rec.path == "/v1/chat/completions" and rec.body["model"] == "gpt-test"
    assert rec.received_at <= rec.first_byte_at <= rec.closed_at  # type: ignore[operator]


def test_anthropic_stream_with_thinking_and_tool(up: FakeUpstream, client: httpx.Client) -> None:
    sc = Scenario(
        thinking="Considering 世界…",
        tool_call=True,
        comments=True,
        output_tokens=77,
        cache_read_tokens=5,
        cache_write_tokens=6,
    )
    up.enqueue(sc)
    parsed = read_anthropic(client, up)
    assert parsed.text == up.expected_text() and parsed.thinking == sc.thinking
    assert json.loads(parsed.tool_args) == json.loads(TOOL_ARGUMENTS)
    assert parsed.stop == "tool_use" and parsed.done
    assert parsed.usage["output_tokens"] == 77 and parsed.usage["input_tokens"] == 25
    assert parsed.usage["cache_read_input_tokens"] == 5 and parsed.usage["cache_creation_input_tokens"] == 6
    assert parsed.events[0] == "message_start" and parsed.events[-2:] == ["message_delta", "message_stop"]
    assert "ping" in parsed.events
    headers = last(up, "completed").headers
    assert headers["anthropic-version"] == "2023-06-01" and headers["X-Api-Key"] == "test"
    assert "Anthropic-Version" in headers and headers.get("USER-AGENT", "").startswith("python-httpx")


def test_truncated_and_generated_tokens(up: FakeUpstream, client: httpx.Client) -> None:
    sc = Scenario(tokens=7, truncated=True)
    up.enqueue(sc, sc)
    assert up.expected_text(sc) == "tok0 tok1 tok2 tok3 tok4 tok5 tok6"
    openai = read_openai(client, up)
    assert (openai.text, openai.stop) == (up.expected_text(sc), "length")
    assert openai.usage["completion_tokens"] == 7
    anthropic = read_anthropic(client, up)
    assert (anthropic.text, anthropic.stop) == (up.expected_text(sc), "max_tokens")


@pytest.mark.parametrize("reader", [read_openai, read_anthropic])
def test_byte_split_with_crlf(up: FakeUpstream, client: httpx.Client, reader: Any) -> None:
    sc = Scenario(text="Café 世界 🎉 — done.", split="byte", crlf=True, comments=True)
    up.enqueue(sc)
    started = time.monotonic()
    parsed = reader(client, up)
    assert time.monotonic() - started < 2
    assert parsed.text == sc.text and parsed.done


@pytest.mark.parametrize("reader", [read_openai, read_anthropic])
def test_offset_splits_inside_multibyte_chars(up: FakeUpstream, client: httpx.Client, reader: Any) -> None:
    # Ids and timestamps have fixed widths, so one event-split body tells where every byte will land.
    up.enqueue(Scenario(crlf=True))
    if reader is read_openai:
        path, headers, model = "/v1/chat/completions", {}, "gpt-test"
    else:
        path, headers, model = "/v1/messages", ANTHROPIC_HEADERS, "claude-test"
    request = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    body = client.post(up.url + path, json=request, headers=headers).content
    offsets = [
        body.index("世".encode()) + 1,
        body.index("🎉".encode()) + 2,
        body.index("é".encode()) + 1,
        body.index(b"\r\n") + 1,
        1,
        len(body) - 1,
    ]
    for split in [*offsets, offsets]:
        up.enqueue(Scenario(crlf=True, split=split))
        parsed = reader(client, up)
        assert parsed.text == up.expected_text() and parsed.done, split


def test_abort_after_breaks_the_read(up: FakeUpstream, client: httpx.Client, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    up.enqueue(Scenario(abort_after=3))
    with pytest.raises(httpx.TransportError):
        read_openai(client, up)
    rec = last(up, "aborted")
    assert rec.deltas_sent == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@pytest.mark.parametrize("reader", [read_openai, read_anthropic])
def test_in_stream_error_and_malformed(up: FakeUpstream, client: httpx.Client, reader: Any) -> None:
    up.enqueue(Scenario(error_after=2, error_message="boom"), Scenario(malformed_after=1), Scenario(omit_final=True))
    errored = reader(client, up)
    assert len(errored.errors) == 1 and errored.errors[0]["message"] == "boom" and not errored.done
    assert last(up, "completed").deltas_sent == 2
    malformed = reader(client, up)
    assert malformed.malformed == 1 and malformed.text == up.expected_text() and malformed.done
    omitted = reader(client, up)
    assert omitted.text == up.expected_text() and not omitted.done and omitted.stop != "end_turn"


def test_error_status_with_retry_after(up: FakeUpstream, client: httpx.Client) -> None:
    up.enqueue(Scenario(status=429, retry_after="7", error_message="slow down"), Scenario(status=529))
    r = client.post(up.openai_base_url + "/chat/completions", json={"model": "m", "stream": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["message"] == "slow down" and r.json()["error"]["code"] == "rate_limit_exceeded"
    r = client.post(up.url + "/v1/messages", json={"model": "m", "stream": True}, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 529 and "retry-after" not in r.headers
    assert r.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "simulated failure"}}
    assert [rec.end for rec in up.log] == ["error_status", "error_status"]
    # Protocol errors: missing anthropic-version, unknown path.
    missing_version = client.post(up.url + "/v1/messages", json={"model": "m"})
    assert missing_version.status_code == 400
    assert missing_version.json()["error"]["type"] == "invalid_request_error"
    assert client.get(up.url + "/nope").status_code == 404


def test_client_close_mid_stream_is_logged(up: FakeUpstream, client: httpx.Client, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    up.enqueue(Scenario(tokens=200, interval=0.02))
    seen = 0
    with connect_sse(
        client, "POST", up.openai_base_url + "/chat/completions", json={"model": "m", "stream": True}
    ) as source:
        for sse in source.iter_sse():
            seen += bool(json.loads(sse.data)["choices"][0]["delta"].get("content"))
            if seen == 3:
                # Stamp before break: dropping the SSE iterator already closes the connection.
                closed = time.monotonic()
                break
    rec = last(up, "client_closed")
    assert rec.closed_at is not None and 0 <= rec.closed_at - closed < 0.5
    assert 3 <= rec.deltas_sent < 100
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_silent_then_client_close(up: FakeUpstream, client: httpx.Client, path: str) -> None:
    up.enqueue(Scenario(silent_after=2))
    request = {"model": "m", "stream": True}
    with client.stream("POST", up.url + path, json=request, headers=ANTHROPIC_HEADERS) as r:
        received = b""
        # Keep a reference to the iterator: dropping it mid-body would close the connection early.
        chunks = r.iter_raw()
        for chunk in chunks:
            received += chunk
            # Two content deltas (the OpenAI role chunk also carries a "content" key).
            if received.count(b'"content"') >= 3 if "chat" in path else received.count(b"text_delta") >= 2:
                break
        time.sleep(0.2)
        rec = up.log[-1]
        assert rec.end == "" and rec.deltas_sent == 2
        closed = time.monotonic()
    rec = last(up, "client_closed")
    assert rec.closed_at is not None and 0 <= rec.closed_at - closed < 0.5


def test_headers_before_ttft_and_interval_pacing(up: FakeUpstream, client: httpx.Client) -> None:
    up.enqueue(Scenario(ttft=0.3, tokens=6, interval=0.03))
    started = time.monotonic()
    request = {"model": "m", "stream": True}
    with client.stream("POST", up.openai_base_url + "/chat/completions", json=request) as r:
        assert time.monotonic() - started < 0.25
        r.read()
    rec = last(up, "completed")
    assert rec.first_byte_at is not None and rec.closed_at is not None
    assert rec.first_byte_at - rec.received_at >= 0.3
    assert rec.closed_at - rec.first_byte_at >= 5 * 0.03 - 0.01


@pytest.mark.parametrize("content", ["prose", "mixed", "code"])
def test_a_content_streams_that_sample_reply_one_piece_a_delta(
    up: FakeUpstream, client: httpx.Client, content: str
) -> None:
    up.enqueue(Scenario(content=content, tokens=150))
    parsed = read_openai(client, up)
    assert parsed.text == reply_text(content, 150)
    assert parsed.usage["completion_tokens"] == 150 and parsed.done


def test_send_times_are_not_recorded_unless_switched_on(up: FakeUpstream, client: httpx.Client) -> None:
    up.enqueue(Scenario(tokens=5))
    read_openai(client, up)
    assert last(up, "completed").sent_at is None
    assert client.get(up.url + "/_sent").json() == {"recording": False, "replies": []}


def test_recorded_send_times_are_served_with_each_delta_and_the_question(client: httpx.Client) -> None:
    with FakeUpstream(Scenario(content="code", tokens=30, interval=0.01), record_sends=True) as up:
        for question in ("first", "Screen me"):
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": question}]}
            before = time.time()
            client.post(up.openai_base_url + "/chat/completions", json=body).read()
            after = time.time()
        sent = client.get(up.url + "/_sent", params={"last": 1}).json()
    assert sent["recording"] is True
    [reply] = sent["replies"]
    assert reply["question"] == "Screen me" and reply["end"] == "completed"
    times = [at for at, _ in reply["deltas"]]
    assert [piece for _, piece in reply["deltas"]] == split_deltas(reply_text("code", 30))
    assert before <= times[0] and times == sorted(times) and times[-1] <= after
    assert times[-1] - times[0] >= 29 * 0.01 - 0.005  # paced: the times are when each delta went out


@contextlib.contextmanager
def simulator_cli(*options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m tests.fake_upstream` with these options on a free port: the process and its URL."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", "0", *options],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serves_until_sigterm() -> None:
    with simulator_cli("--tokens", "5", "--interval", "0.001") as (proc, url):
        r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "stream": True}, timeout=5)
        assert '"content":"tok4"' in r.text and r.text.endswith("data: [DONE]\n\n")
        assert httpx.get(url + "/_sent", timeout=5).json()["recording"] is False
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_cli_streams_a_content_and_records_its_send_times() -> None:
    with simulator_cli("--content", "mixed", "--tokens", "60", "--record-sends") as (_, url):
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=5)
        assert r.text.count('{"content":') == 60
        [reply] = httpx.get(url + "/_sent", timeout=5).json()["replies"]
        assert "".join(piece for _, piece in reply["deltas"]) == reply_text("mixed", 60)
