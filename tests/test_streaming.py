"""Every row of the failure table, through the real stack: simulator -> daphne -> browser stream -> database."""

from __future__ import annotations

import html
import os
import signal
import time
from decimal import Decimal

import httpx
import pytest

from chat.costs import pricing
from chat.models import Message, Status
from chat.streaming.generation import Generation
from chat.streaming.live import TEXT
from chat.streaming.providers import Turn
from chat.streaming.rendering import render_markdown
from tests.conftest import ChatClient, wait_for_status
from tests.fake_upstream import Scenario

pytestmark = pytest.mark.django_db(transaction=True)

LONG = Scenario(tokens=400, interval=0.01)


def assert_seen_equals_stored(stream, reply: Message) -> None:
    assert stream.text() == reply.content
    assert stream.names()[-1] == "done"
    if "render" in stream.names():  # streamed live, not replayed: the page built the stored render
        assert stream.rendered() == render_markdown(reply.content)


def test_it_streams_an_openai_reply_and_stores_usage_and_cost(chat: ChatClient, sim) -> None:
    sim.enqueue(
        Scenario(input_tokens=1200, cache_read_tokens=1000, output_tokens=40, reasoning_tokens=8, interval=0.01)
    )
    reply = chat.ask(chat.conversation("openai:gpt-4o-mini"))
    stream = chat.stream(reply)
    reply.refresh_from_db()

    assert stream.status == 200
    assert reply.thinking_ms is None  # it did not think
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in stream.headers
    assert stream.raw.startswith(": ")  # the comment goes out before the upstream call
    ids = [int(e.id) for e in stream.events if e.id]  # a render moves no part: it has none
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len(stream.names()) > 3 and set(stream.names()) == {"message", "render", "done"}

    assert reply.status == Status.COMPLETED
    assert reply.content == sim.expected_text()
    assert_seen_equals_stored(stream, reply)
    assert reply.stop_reason == "stop"
    assert (reply.input_tokens, reply.output_tokens) == (1200, 40)
    assert (reply.cache_read_tokens, reply.cache_write_tokens, reply.reasoning_tokens) == (1000, None, 8)
    assert reply.usage_source == "provider"
    # gpt-4o-mini: $0.15/M input, $0.075/M cached input, $0.60/M output.
    assert reply.cost == Decimal("0.000030") + Decimal("0.000075") + Decimal("0.000024")  # 200 + 1000 cached + 40
    assert reply.ttft_ms is not None and reply.duration_ms >= reply.ttft_ms
    assert reply.finished_at is not None
    request = sim.log[0]
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["messages"][-1] == {"role": "user", "content": "Hello there"}
    assert request.headers["authorization"] == "Bearer sk-test-openai-secret"


def test_it_streams_an_anthropic_reply_with_thinking_and_cache_tokens(chat: ChatClient, sim) -> None:
    sim.enqueue(
        Scenario(
            thinking="Weighing it… 世界",
            input_tokens=30,
            cache_read_tokens=2000,
            cache_write_tokens=500,
            output_tokens=77,
        )
    )
    conversation = chat.conversation("anthropic:claude-sonnet-4-5", system_prompt="Be brief.")
    reply = chat.ask(conversation)
    stream = chat.stream(reply)
    reply.refresh_from_db()

    assert reply.status == Status.COMPLETED
    assert reply.stop_reason == "end_turn"
    assert reply.thinking == "Weighing it… 世界" == stream.thinking()
    # From the first thought to the first word of the answer, within the reply's own time.
    assert reply.thinking_ms is not None and 0 <= reply.thinking_ms <= reply.duration_ms
    assert_seen_equals_stored(stream, reply)
    assert reply.input_tokens == 30 + 2000 + 500
    assert (reply.cache_read_tokens, reply.cache_write_tokens, reply.output_tokens) == (2000, 500, 77)
    # claude-sonnet-4-5: $3/M input, $0.30/M cache read, $3.75/M cache write, $15/M output.
    expected = (Decimal(30) * 3 + Decimal(2000) * Decimal("0.3") + Decimal(500) * Decimal("3.75") + 77 * 15) / 1_000_000
    assert reply.cost == expected
    body = sim.log[0].body
    assert body["system"] == "Be brief." and body["stream"] is True
    assert sim.log[0].headers["x-api-key"] == "sk-ant-test-secret"


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"])
def test_it_survives_bytes_split_anywhere_crlf_comments_and_tool_calls(chat: ChatClient, sim, model: str) -> None:
    sim.enqueue(Scenario(split="byte", crlf=True, comments=True, tool_call=True, thinking="ok 🤔"))
    reply = chat.ask(chat.conversation(model))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert reply.status == Status.COMPLETED
    assert reply.content == sim.expected_text()
    assert reply.thinking == "ok 🤔"
    assert_seen_equals_stored(stream, reply)


def test_it_retries_a_429_honouring_retry_after_then_streams(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(status=429, retry_after="0.4"), Scenario())
    reply, stream = chat.exchange()
    first, second = sim.log
    # The server caps waits at CHAT_RETRY_MAX_DELAY=0.5 s; 0.4 s is under the cap and is honoured.
    assert second.received_at - first.received_at >= 0.4
    assert reply.status == Status.COMPLETED and reply.content == sim.expected_text()
    assert "notice" in stream.names()  # the user is told it is retrying
    assert_seen_equals_stored(stream, reply)


@pytest.mark.parametrize(("model", "status"), [("openai:gpt-4o-mini", 500), ("anthropic:claude-sonnet-4-5", 529)])
def test_it_gives_up_after_the_retries_and_says_so(chat: ChatClient, sim, model: str, status: int) -> None:
    sim.enqueue(*[Scenario(status=status, error_message="upstream is unwell")] * 3)
    reply = chat.ask(chat.conversation(model))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert len(sim.log) == 3  # CHAT_MAX_RETRIES=2: one try and two retries
    assert reply.status == Status.FAILED
    assert f"HTTP {status}" in reply.error and "upstream is unwell" in reply.error
    assert reply.content == "" and reply.input_tokens is None and reply.usage_source == "" and reply.cost is None
    assert stream.names()[-2:] == ["error", "done"]
    assert html.unescape(stream.first("error").data) == reply.error


def test_it_does_not_retry_a_bad_key_and_shows_the_providers_message(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(status=401, error_message="Incorrect API key provided: sk-live-abcdef123456"))
    reply, stream = chat.exchange()
    assert len(sim.log) == 1
    assert reply.status == Status.FAILED
    assert reply.error.startswith("The API key was rejected (HTTP 401): Incorrect API key provided")
    assert "abcdef123456" not in reply.error and "abcdef123456" not in stream.raw
    assert "sk-test-openai-secret" not in stream.raw


def test_it_reports_a_connection_failure_after_retrying(server_factory, user, sim) -> None:
    closed_port = "http://127.0.0.1:9/v1"
    chat = ChatClient(server_factory(OPENAI_BASE_URL=closed_port), user)
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert reply.error == "Could not connect to the model provider."
    assert stream.names()[-2:] == ["error", "done"]


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"])
def test_an_error_event_mid_stream_keeps_the_partial_text(chat: ChatClient, sim, model: str) -> None:
    sim.enqueue(Scenario(error_after=4, error_message="Overloaded"))
    reply = chat.ask(chat.conversation(model))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert reply.status == Status.FAILED
    assert "Overloaded" in reply.error
    assert reply.content and sim.expected_text().startswith(reply.content)
    assert len(sim.log) == 1  # never retried once text was shown
    assert stream.names()[-2:] == ["error", "done"]
    assert stream.text() == reply.content


@pytest.mark.parametrize("fault", [{"abort_after": 4}, {"omit_final": True}])
@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"])
def test_a_stream_that_ends_without_its_final_event_is_a_lost_connection(chat: ChatClient, sim, model, fault) -> None:
    sim.enqueue(Scenario(**fault))
    reply = chat.ask(chat.conversation(model))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert reply.status == Status.FAILED
    assert "connection to the model was lost" in reply.error
    assert reply.content and stream.text() == reply.content
    assert stream.names()[-2:] == ["error", "done"]


def test_a_malformed_event_fails_the_reply_with_the_text_so_far(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(malformed_after=3))
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert "malformed" in reply.error
    assert reply.content and stream.text() == reply.content


def test_a_silent_upstream_times_out_with_heartbeats_meanwhile(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(silent_after=3))
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert "sent nothing for 1.5 seconds" in reply.error and "timeout" in reply.error
    assert reply.content and stream.text() == reply.content
    # CHAT_HEARTBEAT_SECONDS=0.5: the 1.5 s silence carried keep-alive comments to the browser.
    assert stream.raw.count(": keepalive") >= 2
    sim.wait_for(lambda log: log[0].closed_at is not None)


def test_a_reply_longer_than_the_wall_clock_cap_is_stopped(server_factory, user, sim) -> None:
    chat = ChatClient(server_factory(CHAT_MAX_DURATION="1"), user)
    sim.enqueue(Scenario(tokens=100, interval=0.05))  # 5 s of steady tokens: never idle, but too long
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert "longer than 1 seconds" in reply.error
    assert 0 < len(reply.content) < len(sim.expected_text())
    assert stream.text() == reply.content
    assert 900 <= reply.duration_ms < 3000


@pytest.mark.parametrize(
    ("model", "reason"), [("openai:gpt-4o-mini", "length"), ("anthropic:claude-sonnet-4-5", "max_tokens")]
)
def test_a_reply_cut_off_at_the_token_limit_is_completed_and_flagged(chat: ChatClient, sim, model, reason) -> None:
    sim.enqueue(Scenario(truncated=True))
    reply = chat.ask(chat.conversation(model))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert reply.status == Status.COMPLETED
    assert reply.stop_reason == reason
    assert reply.was_truncated
    assert "Cut off at the token limit" in stream.events[-1].data


def test_stop_closes_the_upstream_request_and_keeps_the_partial(chat: ChatClient, sim) -> None:
    sim.enqueue(LONG)
    reply = chat.ask(chat.conversation())
    stopped_at = []

    def press_stop(stream) -> bool:
        if not stopped_at and len(stream.text()) > 20:
            stopped_at.append(time.monotonic())
            assert chat.stop(reply).status_code == 204
        return False

    stream = chat.stream(reply, stop_after=press_stop)
    reply.refresh_from_db()
    [request] = sim.wait_for(lambda log: log and log[0].closed_at is not None)
    assert request.end == "client_closed"
    assert request.closed_at - stopped_at[0] < 1.0
    assert reply.status == Status.CANCELLED
    assert 0 < len(reply.content) < len(sim.expected_text(LONG))
    assert stream.text() == reply.content
    assert "Stopped." in stream.events[-1].data


def test_a_browser_that_goes_away_cancels_the_upstream_request_within_a_second(chat: ChatClient, sim) -> None:
    sim.enqueue(LONG)
    reply = chat.ask(chat.conversation())
    stream = chat.stream(reply, stop_after=lambda s: len(s.text()) > 30)
    [request] = sim.wait_for(lambda log: log and log[0].closed_at is not None)
    assert request.end == "client_closed"
    assert request.closed_at - stream.left_at < 1.0
    reply = wait_for_status(reply, {Status.CANCELLED})
    assert reply.content.startswith(stream.text())
    assert len(reply.content) < len(sim.expected_text(LONG))
    assert reply.usage_source == "estimated" and reply.output_tokens > 0  # billed tokens are not lost


def test_a_reply_left_streaming_by_a_killed_server_is_interrupted_on_restart(server_factory, user, sim) -> None:
    sim.enqueue(Scenario(tokens=2000, interval=0.005))
    server = server_factory(CHAT_INTERRUPTED_AFTER="0.5")
    chat = ChatClient(server, user)
    reply = chat.ask(chat.conversation())
    with pytest.raises(httpx.HTTPError):
        chat.stream(
            reply, stop_after=lambda s: (len(s.text()) > 200 and os.kill(server.process.pid, signal.SIGKILL)) or False
        )
    reply.refresh_from_db()
    assert reply.status == Status.STREAMING
    saved = reply.content
    assert saved, "a checkpoint should have saved text before the kill"
    time.sleep(0.6)
    restarted = server_factory(CHAT_INTERRUPTED_AFTER="0.5")  # its start-up sweep closes the row
    reply.refresh_from_db()
    assert reply.status == Status.INTERRUPTED
    assert reply.content == saved
    stream = ChatClient(restarted, user).stream(reply)
    assert stream.names() == ["error", "done"] and "it shows what was saved" in stream.events[0].data


def test_a_finished_reply_is_replayed_without_calling_the_provider_again(chat: ChatClient, sim) -> None:
    reply = chat.ask(chat.conversation())
    first = chat.stream(reply)
    again = chat.stream(reply)
    assert len(sim.log) == 1
    assert again.names() == ["done"]
    # Live, the page has the body already (data-live); a replay brings it, as a page load renders it.
    assert "data-live></div>" in first.events[-1].data
    reply.refresh_from_db()
    assert again.events[0].data == first.events[-1].data.replace(
        " data-live></div>", f">{render_markdown(reply.content)}</div>"
    )


def test_two_concurrent_streams_of_one_queued_reply_start_one_upstream_call(chat: ChatClient, sim) -> None:
    import threading

    sim.enqueue(Scenario(tokens=60, interval=0.01))
    reply = chat.ask(chat.conversation())
    results = []
    threads = [threading.Thread(target=lambda: results.append(chat.stream(reply))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reply.refresh_from_db()
    assert len(sim.log) == 1
    assert reply.status == Status.COMPLETED
    assert [r.names()[-1] for r in results] == ["done", "done"]
    assert results[0].events[-1].data == results[1].events[-1].data


def test_a_reconnect_with_last_event_id_continues_without_loss_or_duplication(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(tokens=300, interval=0.01))
    reply = chat.ask(chat.conversation())
    keep_open = chat.stream  # the first connection is a watcher that stays, so leaving it does not cancel
    import threading

    watcher = threading.Thread(target=lambda: keep_open(reply))
    watcher.start()
    first = chat.stream(reply, stop_after=lambda s: len(s.text()) > 50)
    resumed = chat.stream(reply, last_event_id=[e for e in first.events if e.event == "message"][-1].id)
    watcher.join()
    reply.refresh_from_db()
    assert reply.status == Status.COMPLETED
    assert first.text() + resumed.text() == reply.content


def test_the_stream_of_another_users_reply_is_a_404(chat: ChatClient, asgi_server, other_user) -> None:
    reply = chat.ask(chat.conversation())
    intruder = ChatClient(asgi_server, other_user)
    assert intruder.http.get(f"/chat/replies/{reply.pk}/stream/").status_code == 404
    assert intruder.stop(reply).status_code == 404
    anonymous = httpx.get(f"{asgi_server.url}/chat/replies/{reply.pk}/stream/")
    assert anonymous.status_code == 401
    chat.stream(reply)


def test_the_demo_model_streams_markdown_offline(chat: ChatClient, sim) -> None:
    reply = chat.ask(chat.conversation("demo:demo"), "What is this?")
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert sim.log == []
    assert reply.status == Status.COMPLETED and "## Hello from the demo model" in reply.content
    assert "What is this?" in reply.content
    assert reply.cost == 0 and reply.usage_source == "provider"
    assert "<h2>Hello from the demo model</h2>" in stream.rendered()
    assert_seen_equals_stored(stream, reply)


def test_a_generation_lets_go_of_its_prompt_at_its_first_token() -> None:
    # Kept for retries until then; afterwards no retry can happen, and an open stream of a long conversation
    # would otherwise hold it for minutes beside the request body.
    turns = [Turn(role="user", content="x" * 4000)]
    generation = Generation(Message(pk=1, role="assistant"), hub=None, prompt=(turns, "be brief"))  # type: ignore[arg-type]
    assert generation.prompt == (turns, "be brief")
    generation._publish(TEXT, "Hi")
    assert generation.prompt is None
    # Its size is kept: a reply stopped before the provider counted its prompt is estimated from it.
    usage = generation.final_usage(content="Hi", thinking="")
    assert usage.input_tokens == pricing.estimate_tokens(chars=4008) and usage.source == "estimated"


@pytest.mark.parametrize("shape", ["vllm", "done"])
def test_an_openai_compatible_error_chunk_then_done_fails_the_reply_with_the_servers_message(
    chat: ChatClient, sim, shape: str
) -> None:
    sim.enqueue(Scenario(error_after=4, error_shape=shape, error_message="CUDA out of memory"))
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert reply.error == "The model reported an error: CUDA out of memory"
    assert reply.content and sim.expected_text().startswith(reply.content)
    assert stream.text() == reply.content
    assert stream.names()[-2:] == ["error", "done"]


def test_done_without_a_finish_reason_fails_the_reply_with_the_text_so_far(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(omit_finish=True))
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert "ended the stream before the reply was finished" in reply.error
    assert reply.content == sim.expected_text() and stream.text() == reply.content
    assert len(sim.log) == 1  # text had been shown: not retried
    assert stream.names()[-2:] == ["error", "done"]


@pytest.mark.parametrize(
    ("model", "text"),
    [
        ("openai:gpt-4o-mini", "Sorry, I cannot assist with that request."),
        ("anthropic:claude-sonnet-4-5", "Sorry, I will not help with that."),
        ("anthropic:claude-sonnet-4-5", ""),
    ],
    ids=["openai delta.refusal", "anthropic with text", "anthropic without text"],
)
def test_a_refusal_is_shown_and_stored_as_one(chat: ChatClient, sim, model: str, text: str) -> None:
    sim.enqueue(Scenario(refusal=True, text=text))
    reply = chat.ask(chat.conversation(model))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert reply.status == Status.COMPLETED
    assert (reply.content, reply.stop_reason) == (text, "refusal")
    assert_seen_equals_stored(stream, reply)
    final = stream.events[-1].data
    assert "The model declined to answer." in final
    assert text in stream.rendered() and "stop: refusal" not in final


def test_event_ids_grow_with_every_event_and_a_reconnect_at_any_of_them_is_exact(chat: ChatClient, sim) -> None:
    import itertools
    import threading

    from tests.conftest import raw_delta

    thinking = " ".join(f"thought{i}" for i in range(300))
    sim.enqueue(Scenario(tokens=300, thinking=thinking, interleave=True, interval=0.005))  # both kinds every frame
    reply = chat.ask(chat.conversation())
    whole: list = []  # a watcher that stays, so leaving the first connection does not cancel the reply
    watcher = threading.Thread(target=lambda: whole.append(chat.stream(reply)))
    watcher.start()
    first = chat.stream(reply, stop_after=lambda s: len(s.text()) > 200)
    # The browser got the events up to a `thinking` one and the connection dropped right after it.
    cut = max(i for i, e in enumerate(first.events) if e.event == "thinking" and e.id)
    seen = first.events[: cut + 1]
    resumed = chat.stream(reply, last_event_id=seen[-1].id)
    watcher.join()
    reply.refresh_from_db()
    assert reply.status == Status.COMPLETED and reply.thinking == thinking

    for stream in (whole[0], first, resumed):
        ids = [int(e.id) for e in stream.events if e.id]
        assert all(a < b for a, b in itertools.pairwise(ids)), f"event ids that do not grow: {ids}"
    kinds = {e.event for e in whole[0].events}
    assert {"message", "thinking"} <= kinds
    text = "".join(e.data for e in seen if e.event == "message") + resumed.text()
    thought = "".join(raw_delta(e.data) for e in seen if e.event == "thinking") + resumed.thinking()
    assert (text, thought) == (reply.content, reply.thinking)  # nothing lost, nothing repeated
    assert (whole[0].text(), whole[0].thinking()) == (reply.content, reply.thinking)


def test_an_html_error_page_from_a_proxy_is_shown_as_its_status_and_title(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(status=403, html_error=True, error_message="Attention Required! &#124; Cloudflare"))
    reply, stream = chat.exchange()
    assert reply.status == Status.FAILED
    assert reply.error == "Access to this model was refused (HTTP 403): Attention Required! | Cloudflare"
    assert "Attention Required! | Cloudflare" in stream.events[-1].data and "&lt;" not in stream.events[-1].data
    assert len(sim.log) == 1
