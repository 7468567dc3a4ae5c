"""Our browser event encoding, and the channel layer the deployment is configured with."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from chat.streaming import sse


def test_an_event_has_id_name_and_one_data_line_per_line() -> None:
    assert sse.event("text", "a\nb\r\nc", id=7) == "id:7\nevent:text\ndata:a\ndata:b\ndata:c\n\n"
    assert sse.event("message", " a\n b", id=None) == "data:  a\ndata:  b\n\n"  # one space is dropped


def test_a_comment_is_ignored_by_eventsource_but_is_a_body_byte() -> None:
    assert sse.comment("keepalive") == ": keepalive\n\n"


def test_the_response_has_the_contract_headers_and_no_compression() -> None:
    async def events():
        yield sse.comment("x")

    response = sse.response(events())
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    assert not response.has_header("Content-Encoding")


def test_the_configured_channel_layer_delivers_a_message() -> None:
    """In-memory by default; with REDIS_URL set this goes through the real Redis server."""
    layer = get_channel_layer()
    expected = "RedisChannelLayer" if settings.REDIS_URL else "InMemoryChannelLayer"
    assert type(layer).__name__ == expected

    async def roundtrip() -> dict:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "ping", "n": 1})
        return await layer.receive(channel)

    assert async_to_sync(roundtrip)() == {"type": "ping", "n": 1}
