"""Framing by the spec and bounded input through the real HTTP stack: adapters against the simulator, and the app."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat.models import Status
from chat.streaming.providers import Provider, ProviderError, Stop, TextDelta, Timeouts, Turn, build_provider
from chat.streaming.providers.http import open_sse
from tests.conftest import ChatClient
from tests.fake_upstream import FakeUpstream, RequestRecord, Scenario

SHORT = "Ré 世界 🎉 ok"  # 2-, 3- and 4-byte characters
HELLO = [Turn(role="user", content="Hello")]


def adapter(name: str, sim: FakeUpstream, timeouts: Timeouts) -> Provider:
    base_url = sim.openai_base_url if name == "openai" else sim.anthropic_base_url
    return build_provider(name, api_key="sk-test-key", base_url=base_url, timeouts=timeouts)


async def reply_of(provider: Provider) -> tuple[str, list[str]]:
    events = [event async for event in provider.stream(model="gpt-4o-mini", messages=HELLO, max_tokens=100)]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, [e.reason for e in events if isinstance(e, Stop)]


async def raw_events(sim: FakeUpstream, name: str, scenario: Scenario) -> list[tuple[str, str]]:
    """Every SSE event of one response as open_sse hands them to an adapter, to the end of the body."""
    sim.enqueue(scenario)
    if name == "openai":
        url, headers = f"{sim.openai_base_url}/chat/completions", {}
    else:
        url, headers = f"{sim.anthropic_base_url}/v1/messages", {"anthropic-version": "2023-06-01"}
    body = b'{"model": "m", "messages": [], "stream": true, "max_tokens": 10}'
    async with open_sse(url=url, body=body, headers=headers, timeouts=Timeouts(connect=2, idle=5)) as events:
        return [(event.event, event.data) async for event in events]


async def ended(sim: FakeUpstream, timeout: float = 5.0) -> RequestRecord:
    """The one request's record once the simulator has seen it end; polled without blocking this loop, which
    must run for a closed connection's socket to actually close (asyncio closes it in a callback)."""
    deadline = time.monotonic() + timeout
    while not ((log := sim.log) and log[0].end) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert log and log[0].end, f"the request had not ended after {timeout} s: {log}"
    return log[0]


# ----- Framing by the spec, through HTTP ----------------------------------------------------------


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_a_bom_led_stream_loses_no_event(sim: FakeUpstream, name: str, transport: str) -> None:
    plain = await raw_events(sim, name, Scenario(text=SHORT))
    with_bom = await raw_events(sim, name, Scenario(text=SHORT, bom=True))
    # The ids in the JSON differ per response; the events' count, types and first payload's shape must not.
    assert [event for event, _ in with_bom] == [event for event, _ in plain]
    assert len(with_bom) == len(plain) > 3
    sim.enqueue(Scenario(text=SHORT, bom=True))
    assert await reply_of(adapter(name, sim, Timeouts(connect=2, idle=5))) == (
        SHORT,
        ["stop" if name == "openai" else "end_turn"],
    )


@pytest.mark.parametrize("name", ["openai", "anthropic"])
@pytest.mark.parametrize("ending", ["cr", "crlf", "lf"])
async def test_the_last_event_completes_the_reply_while_the_body_stays_open(
    sim: FakeUpstream, name: str, ending: str, transport: str
) -> None:
    # The simulator sends every event and then neither ends the body nor sends a byte: the reply is complete
    # at its final event (OpenAI's [DONE], Anthropic's message_stop), long before the idle timeout.
    sim.enqueue(Scenario(text=SHORT, hold_open=True, cr=ending == "cr", crlf=ending == "crlf"))
    started = time.monotonic()
    assert await reply_of(adapter(name, sim, Timeouts(connect=2, idle=2))) == (
        SHORT,
        ["stop" if name == "openai" else "end_turn"],
    )
    assert time.monotonic() - started < 1.5
    assert (await ended(sim)).end == "client_closed"


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_a_charset_other_than_utf8_still_reads_as_utf8(sim: FakeUpstream, name: str, transport: str) -> None:
    sim.enqueue(Scenario(text=SHORT, charset="iso-8859-1", cr=True))
    assert (await reply_of(adapter(name, sim, Timeouts(connect=2, idle=5))))[0] == SHORT


# ----- Bounded input, through HTTP ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_an_event_over_the_limit_fails_the_reply_and_closes_the_request(
    sim: FakeUpstream, name: str, transport: str
) -> None:
    # An 8 MiB delta against a 64 KiB limit: refused once 64 KiB of it are in, the request closed under the writer.
    sim.enqueue(Scenario(text="Hello there " + "x" * (8 * 1024 * 1024), hold_open=True))
    provider = adapter(name, sim, Timeouts(connect=2, idle=5, max_event_bytes=64 * 1024))
    seen: list[str] = []
    with pytest.raises(ProviderError) as failure:
        async for event in provider.stream(model="gpt-4o-mini", messages=HELLO, max_tokens=100):
            if isinstance(event, TextDelta):
                seen.append(event.text)
    assert "larger than 64 KiB" in failure.value.message and not failure.value.retryable
    assert "".join(seen) == "Hello there "
    assert (await ended(sim)).end == "client_closed"


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_a_trickle_that_never_completes_an_event_is_cut_by_the_progress_timeout(
    sim: FakeUpstream, name: str, transport: str
) -> None:
    # A byte every 20 ms keeps the idle timer (1 s) happy forever; only the progress timer (0.5 s) can end it.
    sim.enqueue(Scenario(text=SHORT, trickle_after=2))
    provider = adapter(name, sim, Timeouts(connect=2, idle=1, progress=0.5))
    started = time.monotonic()
    with pytest.raises(ProviderError) as failure:
        await reply_of(provider)
    assert "without completing an event" in failure.value.message and "0.5 seconds" in failure.value.message
    assert 0.4 < time.monotonic() - started < 1.5
    assert (await ended(sim)).end == "client_closed"


async def test_steady_events_are_progress(sim: FakeUpstream, transport: str) -> None:
    # 40 deltas 50 ms apart: 2 s in all, four times the progress timeout, and never 0.5 s without an event.
    sim.enqueue(Scenario(tokens=40, interval=0.05))
    text, stops = await reply_of(adapter("openai", sim, Timeouts(connect=2, idle=1, progress=0.5)))
    assert text == sim.expected_text(Scenario(tokens=40)) and stops == ["stop"]


# ----- Through the whole app ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"])
def test_a_cr_framed_reply_completes_while_upstream_holds_the_connection(
    chat: ChatClient, sim: FakeUpstream, model: str
) -> None:
    # CHAT_IDLE_TIMEOUT is 1.5 s here: a final event held back until the body ends would fail the reply.
    sim.enqueue(Scenario(text=SHORT, cr=True, bom=True, hold_open=True))
    reply = chat.ask(chat.conversation(model))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert reply.status == Status.COMPLETED, reply.error
    assert reply.content == SHORT == stream.text()
    assert stream.names()[-1] == "done"
    assert reply.duration_ms < 1000


@pytest.mark.django_db(transaction=True)
def test_an_over_limit_event_fails_the_reply_with_the_text_so_far(server_factory, user, sim: FakeUpstream) -> None:
    chat = ChatClient(server_factory(CHAT_MAX_EVENT_BYTES=str(64 * 1024)), user)
    sim.enqueue(Scenario(text="Hello there " + "x" * (1024 * 1024), hold_open=True))
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert "larger than 64 KiB" in reply.error
    assert reply.content == "Hello there " == stream.text()
    assert sim.wait_for(lambda log: bool(log) and log[-1].end != "")[-1].end == "client_closed"
    chat.close()


@pytest.mark.django_db(transaction=True)
def test_a_trickling_upstream_is_cut_by_the_progress_timeout(server_factory, user, sim: FakeUpstream) -> None:
    # CHAT_MAX_DURATION is set low so that without a progress timeout the test fails in seconds, not minutes.
    chat = ChatClient(server_factory(CHAT_PROGRESS_TIMEOUT="1", CHAT_MAX_DURATION="6"), user)
    sim.enqueue(Scenario(trickle_after=3))
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert "without completing an event" in reply.error and "timeout" in reply.error
    assert reply.content and stream.text() == reply.content
    assert sim.wait_for(lambda log: bool(log) and log[-1].end != "")[-1].end == "client_closed"
    chat.close()
