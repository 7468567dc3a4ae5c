"""The provider adapters against the loopback simulator, over both httpx transports."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest

from chat.streaming.providers import (
    Event,
    Provider,
    ProviderError,
    Stop,
    StreamError,
    TextDelta,
    ThinkingDelta,
    Timeouts,
    Turn,
    UsageUpdate,
    build_provider,
)
from tests.conftest import ROOT
from tests.fake_upstream import FakeUpstream, Scenario

SHORT = "Ré 世界 🎉 ok"  # 2-, 3- and 4-byte characters: splits land inside each kind
HELLO = [Turn(role="user", content="Hello")]


def adapter(name: str, sim: FakeUpstream, *, idle: float = 5.0) -> Provider:
    base_url = sim.openai_base_url if name == "openai" else sim.anthropic_base_url
    return build_provider(name, api_key="sk-test-key", base_url=base_url, timeouts=Timeouts(connect=2, idle=idle))


async def collect(provider: Provider) -> list[Event]:
    return [event async for event in provider.stream(model="gpt-4o-mini", messages=HELLO, max_tokens=100)]


def summary(events: list[Event]) -> tuple[str, str, str, object]:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    stops = [e.reason for e in events if isinstance(e, Stop)]
    usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
    return text, thinking, stops[-1] if stops else "", usages[-1] if usages else None


def raw_request(name: str, sim: FakeUpstream) -> tuple[str, dict[str, str], dict[str, object]]:
    """The URL, headers and JSON of a streaming request to the simulator, made without the adapter."""
    if name == "openai":
        payload = {"model": "gpt-4o-mini", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
        return f"{sim.openai_base_url}/chat/completions", {}, payload
    payload = {"model": "gpt-4o-mini", "messages": [], "stream": True, "max_tokens": 100}
    return f"{sim.anthropic_base_url}/v1/messages", {"anthropic-version": "2023-06-01"}, payload


async def body_length(name: str, sim: FakeUpstream, scenario: Scenario) -> int:
    """The exact size of the stream's body, so the split test covers every offset and no more."""
    sim.enqueue(scenario)
    url, headers, payload = raw_request(name, sim)
    async with httpx.AsyncClient() as client:
        return len((await client.post(url, json=payload, headers=headers)).content)


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_it_reassembles_a_stream_split_at_every_byte_offset(sim: FakeUpstream, name: str, transport: str) -> None:
    def scenario(split: int | str = "event") -> Scenario:
        return Scenario(text=SHORT, thinking="…🤔", cache_read_tokens=3, input_tokens=10, split=split)

    sim.enqueue(scenario())
    provider = adapter(name, sim)
    reference = summary(await collect(provider))
    assert reference[:3] == (SHORT, "…🤔", "stop" if name == "openai" else "end_turn")
    length = await body_length(name, sim, scenario())
    for batch_start in range(1, length, 50):
        offsets = range(batch_start, min(batch_start + 50, length))
        sim.enqueue(*[scenario(split=offset) for offset in offsets])
        results = await asyncio.gather(*[collect(provider) for _ in offsets])
        assert [summary(r) for r in results] == [reference] * len(offsets), batch_start


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_it_reads_one_byte_at_a_time_with_crlf_comments_and_tool_calls(sim, name: str, transport: str) -> None:
    sim.enqueue(Scenario(split="byte", crlf=True, comments=True, tool_call=True))
    text, _, stop, usage = summary(await collect(adapter(name, sim)))
    assert text == sim.expected_text()
    assert stop in {"tool_calls", "tool_use"}
    assert usage.output_tokens is not None


async def test_openai_usage_counts_cached_tokens_inside_the_prompt(sim: FakeUpstream, transport: str) -> None:
    sim.enqueue(Scenario(input_tokens=500, cache_read_tokens=400, output_tokens=20, reasoning_tokens=5))
    _, _, _, usage = summary(await collect(adapter("openai", sim)))
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (500, 400, 20)
    assert (usage.reasoning_tokens, usage.cache_write_tokens, usage.source) == (5, None, "provider")
    assert sim.log[0].body["stream_options"] == {"include_usage": True}


async def test_anthropic_usage_is_overwritten_by_message_delta_never_added(sim: FakeUpstream, transport: str) -> None:
    # The simulator repeats input and cache counts in message_delta, as the current API does:
    # adding instead of overwriting would double them.
    sim.enqueue(Scenario(input_tokens=12, cache_read_tokens=100, cache_write_tokens=50, output_tokens=33))
    events = await collect(adapter("anthropic", sim))
    usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
    assert usages[0].output_tokens is None  # message_start's placeholder is not a count
    final = usages[-1]
    assert (final.input_tokens, final.cache_read_tokens, final.cache_write_tokens) == (162, 100, 50)
    assert final.output_tokens == 33


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_an_error_event_after_200_becomes_a_stream_error(sim, name: str, transport: str) -> None:
    sim.enqueue(Scenario(error_after=2, error_message="Overloaded"))
    events = await collect(adapter(name, sim))
    errors = [e for e in events if isinstance(e, StreamError)]
    assert len(errors) == 1 and "Overloaded" in errors[0].message
    assert sum(isinstance(e, TextDelta) for e in events) == 2


@pytest.mark.parametrize("name", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", [{"omit_final": True}, {"abort_after": 2}])
async def test_a_stream_without_its_final_event_raises_a_retryable_lost_error(sim, name, fault, transport) -> None:
    sim.enqueue(Scenario(**fault))
    with pytest.raises(ProviderError, match="connection to the model was lost") as caught:
        await collect(adapter(name, sim))
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (500, True), (529, True), (400, False), (401, False), (404, False)]
)
async def test_http_errors_say_whether_to_retry(
    sim: FakeUpstream, status: int, retryable: bool, transport: str
) -> None:
    sim.enqueue(Scenario(status=status, retry_after="7", error_message="nope"))
    with pytest.raises(ProviderError) as caught:
        await collect(adapter("anthropic", sim))
    error = caught.value
    assert (error.status, error.retryable, error.retry_after) == (status, retryable, 7.0)
    assert f"(HTTP {status}): nope" in error.message


async def test_a_malformed_line_is_an_error_not_a_crash(sim: FakeUpstream, transport: str) -> None:
    sim.enqueue(Scenario(malformed_after=1))
    with pytest.raises(ProviderError, match="malformed"):
        await collect(adapter("openai", sim))


@pytest.mark.parametrize(
    ("name", "scenario"),
    [("openai", Scenario(silent_after=1)), ("anthropic", Scenario(ttft=3))],
    ids=["silent after a token", "headers and then nothing"],
)
async def test_a_silent_upstream_hits_the_idle_timeout(sim, name: str, scenario: Scenario, transport: str) -> None:
    sim.enqueue(scenario)
    started = time.monotonic()
    with pytest.raises(ProviderError, match=r"sent nothing for 0\.3 seconds"):
        await collect(adapter(name, sim, idle=0.3))
    assert time.monotonic() - started < 2


async def test_a_slow_upstream_that_never_pauses_for_the_idle_timeout_is_read_to_the_end(sim, transport: str) -> None:
    # Gaps of 0.2 s for 2 s in all, against an idle limit of 0.35 s: the timer comes due several times
    # and each time finds a byte has come since.
    sim.enqueue(Scenario(tokens=10, interval=0.2))
    text, *_ = summary(await collect(adapter("openai", sim, idle=0.35)))
    assert text == " ".join(f"tok{i}" for i in range(10))


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_closing_the_stream_closes_the_upstream_request_at_once(sim, name: str, transport: str) -> None:
    sim.enqueue(Scenario(tokens=500, interval=0.01))
    stream = adapter(name, sim).stream(model="m", messages=HELLO)
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()
    closed_at = time.monotonic()
    [record] = await asyncio.to_thread(sim.wait_for, lambda log: log and log[0].closed_at is not None, 3)
    assert record.end == "client_closed"
    assert record.closed_at - closed_at < 0.5
    assert record.deltas_sent < 50


async def test_the_demo_model_needs_no_network() -> None:
    provider = build_provider("demo", timeouts=Timeouts(), interval=0)
    full = summary([e async for e in provider.stream(model="demo", messages=HELLO, max_tokens=4096)])
    assert full[0].startswith("## Hello from the demo model") and full[1]
    assert full[2] == "end_turn" and full[3].output_tokens > 100
    cut = summary([e async for e in provider.stream(model="demo", messages=HELLO, max_tokens=10)])
    assert full[0].startswith(cut[0]) and cut[0] != full[0] and cut[2] == "max_tokens"


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[str]:
    """The simulator in a process of its own, so its copy of a request is not counted in this one's memory."""
    argv = [sys.executable, "-m", "tests.fake_upstream", "--port", "0", "--tokens", "100", "--interval", "0.05"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT) as process:
        try:
            line = process.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("fake upstream listening on "), line
            yield line.rsplit(" ", 1)[1].strip()
        finally:
            process.terminate()


CONVERSATION_CHARS = 4_000_000


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_an_open_stream_holds_its_conversation_once(simulator_process: str, name: str, transport: str) -> None:
    base_url = simulator_process + ("/v1" if name == "openai" else "")
    provider = build_provider(name, api_key="sk-test-key", base_url=base_url, timeouts=Timeouts(connect=5, idle=10))
    gc.collect()
    tracemalloc.start()
    try:
        turns = [Turn(role="user", content="x" * CONVERSATION_CHARS)]
        stream = provider.stream(model="m", messages=turns, max_tokens=100)
        del turns  # the caller's copy goes, as the Generation's does at the first token
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        await stream.aclose()
    finally:
        tracemalloc.stop()
    # Once: the request body, which httpx keeps while the response is open. Before, the provider's
    # generator also kept the turns, and httpx's stream() its JSON text: three copies, 12 MB.
    assert CONVERSATION_CHARS <= held < 1.5 * CONVERSATION_CHARS, f"{held / 1e6:.1f} MB held at the first token"


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_a_gzip_encoded_stream_is_decoded(sim: FakeUpstream, name: str, transport: str) -> None:
    # A compressing proxy in front of a server; an unencoded body is read raw, this one must not be.
    sim.enqueue(Scenario(gzip=True, text=SHORT, thinking="…🤔"))
    text, thinking, stop, usage = summary(await collect(adapter(name, sim)))
    assert (text, thinking) == (SHORT, "…🤔")
    assert stop and usage.output_tokens is not None


# ----- issue 21, part 3: an error is never a success ------------------------------------------------------------

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.mark.parametrize("shape", ["openai", "done", "vllm", "event", "openrouter"])
async def test_every_openai_compatible_error_shape_ends_the_reply_with_the_servers_message(
    sim: FakeUpstream, shape: str, transport: str
) -> None:
    sim.enqueue(Scenario(error_after=2, error_shape=shape, error_message="CUDA out of memory"))
    events = await collect(adapter("openai", sim))
    errors = [e for e in events if isinstance(e, StreamError)]
    assert [e.message for e in errors] == ["The model reported an error: CUDA out of memory"]
    assert events[-1] is errors[0]  # nothing after it, [DONE] or not
    assert sum(isinstance(e, TextDelta) for e in events) == 2
    assert not any(isinstance(e, Stop) for e in events)


async def test_an_error_field_line_from_an_older_llama_cpp_ends_the_reply_with_its_message(
    sim: FakeUpstream, transport: str
) -> None:
    sim.enqueue(Scenario(error_after=2, error_shape="llamacpp", error_message="CUDA out of memory"))
    events = await collect(adapter("openai", sim))
    assert [e.message for e in events if isinstance(e, StreamError)] == [
        "The model reported an error: CUDA out of memory"
    ]


async def test_done_without_a_finish_reason_is_a_truncation_not_a_success(sim: FakeUpstream, transport: str) -> None:
    # Usage and [DONE] arrive as usual, but no chunk ever said the reply was finished.
    sim.enqueue(Scenario(omit_finish=True))
    with pytest.raises(ProviderError, match="ended the stream before the reply was finished") as caught:
        await collect(adapter("openai", sim))
    assert caught.value.retryable


async def test_an_openai_refusal_is_the_replys_text_and_its_stop_reason(sim: FakeUpstream, transport: str) -> None:
    sim.enqueue(Scenario(refusal=True, text="I'm sorry, but I can't assist with that request."))
    text, _, stop, usage = summary(await collect(adapter("openai", sim)))
    assert (text, stop) == ("I'm sorry, but I can't assist with that request.", "refusal")
    assert usage.output_tokens is not None


@pytest.mark.parametrize("text", ["", "I can't help with that."])
async def test_an_anthropic_refusal_keeps_its_stop_reason(sim: FakeUpstream, text: str, transport: str) -> None:
    sim.enqueue(Scenario(refusal=True, text=text))
    assert summary(await collect(adapter("anthropic", sim)))[:3] == (text, "", "refusal")


@pytest.mark.parametrize("name", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("status", "title", "expected"),
    [
        (502, "502 Bad Gateway", "The model provider had a server error (HTTP 502): 502 Bad Gateway"),
        (
            403,
            "Attention  Required! &amp;#124;\n Cloudflare &#8212; <b>blocked</b>",
            "Access to this model was refused (HTTP 403): Attention Required! &#124; Cloudflare — blocked",
        ),
        (504, "", "The model provider had a server error (HTTP 504): Gateway Timeout"),
    ],
    ids=["nginx", "entities and tags in the title", "no title"],
)
async def test_an_html_error_page_from_a_proxy_becomes_its_status_and_title(
    sim: FakeUpstream, name: str, status: int, title: str, expected: str, transport: str
) -> None:
    sim.enqueue(Scenario(status=status, html_error=True, error_message=title))
    with pytest.raises(ProviderError) as caught:
        await collect(adapter(name, sim))
    assert caught.value.message == expected
    assert (caught.value.status, caught.value.retryable) == (status, status in {502, 504})


@pytest.mark.parametrize("encoding", ["deflate", "raw-deflate"])
@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_a_deflate_encoded_stream_is_decoded(sim: FakeUpstream, name: str, encoding: str, transport: str) -> None:
    sim.enqueue(Scenario(encoding=encoding, text=SHORT, thinking="…🤔"))
    text, thinking, stop, usage = summary(await collect(adapter(name, sim)))
    assert (text, thinking) == (SHORT, "…🤔")
    assert stop and usage.output_tokens is not None


async def compressed_length(name: str, sim: FakeUpstream, scenario: Scenario) -> int:
    """The size of the body as sent, still encoded."""
    sim.enqueue(scenario)
    url, headers, payload = raw_request(name, sim)
    async with httpx.AsyncClient() as client, client.stream("POST", url, json=payload, headers=headers) as response:
        return sum([len(piece) async for piece in response.aiter_raw()])


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_a_gzip_body_cut_at_every_offset_of_its_encoding_is_decoded_whole(sim, name: str, transport: str) -> None:
    # Compressed whole, then cut anywhere: inside the gzip header, a deflate block, the CRC trailer.
    def scenario(split: int | str = "event") -> Scenario:
        return Scenario(gzip=True, text=SHORT, thinking="…🤔", input_tokens=10, split=split)

    expected = (SHORT, "…🤔", "stop" if name == "openai" else "end_turn")
    length = await compressed_length(name, sim, scenario(split=[]))
    assert 100 < length < 1000, length
    provider = adapter(name, sim)
    for batch_start in range(1, length, 50):
        offsets = range(batch_start, min(batch_start + 50, length))
        sim.enqueue(*[scenario(split=offset) for offset in offsets])
        results = await asyncio.gather(*[collect(provider) for _ in offsets])
        assert [summary(r)[:3] for r in results] == [expected] * len(offsets), batch_start


def recorded(name: str) -> bytes:
    body = (FIXTURES / name).read_bytes()
    # The SDK stores its fixtures without the blank line that ends the last event on the wire.
    return body if body.endswith(b"\n\n") else body.rstrip(b"\n") + b"\n\n"


RECORDED = {
    "openai-text.sse": (
        "I'm unable to provide real-time updates, including current weather information. For the latest weather in "
        "San Francisco, I recommend checking a reliable weather website or app such as the Weather Channel, BBC "
        "Weather, or a local San Francisco news station.",
        "stop",
        (14, 47),
    ),
    "openai-refusal.sse": ("I'm sorry, but I can't assist with that request.", "refusal", (17, 12)),
    "anthropic-text.sse": ("Hello there!", "end_turn", (11, 6)),
    "anthropic-refusal.sse": ("", "refusal", (20, 0)),
}


@pytest.mark.parametrize("fixture", sorted(RECORDED))
async def test_a_recorded_real_stream_gives_its_text_stop_reason_and_usage(
    sim: FakeUpstream, fixture: str, transport: str
) -> None:
    body = recorded(fixture)
    provider = adapter(fixture.partition("-")[0], sim)
    sim.enqueue(Scenario(recorded=body))
    text, thinking, stop, usage = summary(await collect(provider))
    expected_text, expected_stop, expected_usage = RECORDED[fixture]
    assert (text, thinking, stop) == (expected_text, "", expected_stop)
    assert (usage.input_tokens, usage.output_tokens) == expected_usage
    # And cut at some 200 offsets through the body, in batches of 50.
    offsets = list(range(1, len(body), max(1, len(body) // 200)))
    for start in range(0, len(offsets), 50):
        batch = offsets[start : start + 50]
        sim.enqueue(*[Scenario(recorded=body, split=offset) for offset in batch])
        results = await asyncio.gather(*[collect(provider) for _ in batch])
        assert [summary(r) for r in results] == [(text, thinking, stop, usage)] * len(batch), batch[0]


async def test_an_error_object_sent_as_plain_json_with_200_ends_the_reply_with_its_message(
    sim: FakeUpstream, transport: str
) -> None:
    sim.enqueue(Scenario(json_error=True, error_message="max_tokens is too large"))
    with pytest.raises(ProviderError) as caught:
        await collect(adapter("openai", sim))
    assert caught.value.message == (
        "The model provider answered with an error instead of a stream (HTTP 200): max_tokens is too large"
    )
    assert not caught.value.retryable
