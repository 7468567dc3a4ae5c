"""Anthropic Messages streaming: every event type, cumulative usage, cache reads and writes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from . import (
    Event,
    Provider,
    ProviderError,
    Stop,
    StreamError,
    TextDelta,
    ThinkingDelta,
    Timeouts,
    Turn,
    Usage,
    UsageUpdate,
)
from .http import LOST, decode, open_sse, reported_error, request_body

OFFICIAL_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
RETRYABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


class AnthropicProvider(Provider):
    name = "anthropic"

    def __init__(self, *, api_key: str, base_url: str, timeouts: Timeouts) -> None:
        self.api_key = api_key
        self.base_url = (base_url or OFFICIAL_BASE_URL).rstrip("/")
        self.timeouts = timeouts

    def stream(
        self, *, model: str, messages: Sequence[Turn], system: str = "", max_tokens: int = 4096
    ) -> AsyncIterator[Event]:
        payload: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": turn.role, "content": turn.content} for turn in messages],
            "stream": True,
        }
        if system:
            payload["system"] = system
        return self._events(request_body(payload))

    async def _events(self, body: bytes) -> AsyncIterator[Event]:
        headers = {"x-api-key": self.api_key, "anthropic-version": API_VERSION}
        parser = MessageStreamParser()
        async with open_sse(
            url=f"{self.base_url}/v1/messages", body=body, headers=headers, timeouts=self.timeouts
        ) as events:
            async for sse in events:
                if not sse.data:
                    continue
                data = decode(sse.data)
                for event in parser.feed(sse.event, data):
                    yield event
                if parser.finished or parser.failed:
                    return
        raise ProviderError(LOST, retryable=True)


class MessageStreamParser:
    """Turns Anthropic's events into ours; keeps the usage totals, which arrive in two places."""

    def __init__(self) -> None:
        self.finished = False
        self.failed = False
        self.raw_usage: dict[str, int] = {}
        self.output_reported = False

    def feed(self, name: str, data: Any) -> list[Event]:
        kind = data.get("type", name) if isinstance(data, dict) else name
        if kind == "message_start":
            return self._usage((data.get("message") or {}).get("usage"), final=False)
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            if block.get("type") == "thinking" and block.get("thinking"):
                return [ThinkingDelta(block["thinking"])]
            return []  # tool_use, redacted_thinking, server tools: not shown
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [TextDelta(delta["text"])]
            if delta.get("type") == "thinking_delta" and delta.get("thinking"):
                return [ThinkingDelta(delta["thinking"])]
            return []  # signature_delta, input_json_delta, citations_delta
        if kind == "message_delta":
            events: list[Event] = []
            if stop := (data.get("delta") or {}).get("stop_reason"):
                events.append(Stop(str(stop)))
            return events + self._usage(data.get("usage"), final=True)
        if kind == "message_stop":
            self.finished = True
            return []
        if kind == "error":
            self.failed = True
            error = data.get("error") or {}
            return [
                StreamError(
                    message=reported_error(error),
                    retryable=error.get("type") in RETRYABLE_ERROR_TYPES,
                )
            ]
        return []  # ping, content_block_stop, and event types added after this was written

    def _usage(self, raw: Any, *, final: bool) -> list[Event]:
        if not isinstance(raw, dict):
            return []
        # message_delta's usage is cumulative: overwrite each field it carries, never add.
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            if isinstance(raw.get(key), int):
                self.raw_usage[key] = raw[key]
        self.output_reported = self.output_reported or (final and "output_tokens" in raw)
        return [UsageUpdate(self.usage())]

    def usage(self) -> Usage:
        raw = self.raw_usage
        cache_read = raw.get("cache_read_input_tokens")
        cache_write = raw.get("cache_creation_input_tokens")
        base = raw.get("input_tokens")
        total_input = None if base is None else base + (cache_read or 0) + (cache_write or 0)
        return Usage(
            input_tokens=total_input,
            # message_start's output_tokens is a placeholder (1); only message_delta's is a count.
            output_tokens=raw.get("output_tokens") if self.output_reported else None,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=None,  # Anthropic counts thinking inside output_tokens and does not split it out
        )
