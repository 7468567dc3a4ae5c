"""OpenAI Chat Completions streaming, and every server that speaks it (Ollama, vLLM, llama.cpp, OpenRouter)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal, InvalidOperation
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
from .http import LOST, RETRYABLE_STATUSES, decode, open_sse, reported_error, request_body

OFFICIAL_BASE_URL = "https://api.openai.com/v1"
# In-band error types that say "try again" rather than "this request is wrong".
NON_RETRYABLE_ERROR_TYPES = frozenset(
    {"invalid_request_error", "authentication_error", "permission_error", "BadRequestError", "NotFoundError"}
)
UNFINISHED = "The model ended the stream before the reply was finished (it sent no finish reason)."
# A reported cost at or above this many USD for one reply is a broken figure, not a price (decision 0036).
MAX_REPORTED_COST = Decimal(1_000_000)
MAX_COST_CHARS = 64  # a cost sent as a string: longer is no amount

logger = logging.getLogger(__name__)


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, *, api_key: str, base_url: str, timeouts: Timeouts, usage_accounting: bool = False) -> None:
        self.api_key = api_key
        self.base_url = (base_url or OFFICIAL_BASE_URL).rstrip("/")
        self.timeouts = timeouts
        # OpenRouter's `"usage": {"include": true}`: off for other servers, some of which reject unknown fields.
        self.usage_accounting = usage_accounting

    def request_payload(self, *, model: str, messages: Sequence[Turn], system: str, max_tokens: int) -> dict[str, Any]:
        turns = ([{"role": "system", "content": system}] if system else []) + [
            {"role": turn.role, "content": turn.content} for turn in messages
        ]
        # OpenAI's reasoning models reject max_tokens; compatible servers mostly know only max_tokens.
        limit_key = "max_completion_tokens" if self.base_url == OFFICIAL_BASE_URL else "max_tokens"
        payload: dict[str, Any] = {
            "model": model,
            "messages": turns,
            "stream": True,
            "stream_options": {"include_usage": True},
            limit_key: max_tokens,
        }
        if self.usage_accounting:
            payload["usage"] = {"include": True}
        return payload

    def stream(
        self, *, model: str, messages: Sequence[Turn], system: str = "", max_tokens: int = 4096
    ) -> AsyncIterator[Event]:
        payload = self.request_payload(model=model, messages=messages, system=system, max_tokens=max_tokens)
        return self._events(request_body(payload))

    async def _events(self, body: bytes) -> AsyncIterator[Event]:
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        parser = ChunkParser()
        async with open_sse(
            url=f"{self.base_url}/chat/completions", body=body, headers=headers, timeouts=self.timeouts
        ) as events:
            async for sse in events:
                if sse.event == "error":
                    # `event: error`, or an `error:` field line (older llama.cpp server) as the framer hands it over.
                    yield stream_error(error_object(sse.data))
                    return
                if sse.data == "[DONE]":
                    if parser.finished:
                        return
                    # [DONE] only says the body ends: a reply no chunk ever finished was cut short somewhere.
                    raise ProviderError(UNFINISHED, retryable=True)
                if not sse.data:
                    continue
                for event in parser.feed(decode(sse.data, exact=True)):
                    yield event
                    if type(event) is StreamError:
                        return  # an error is the stream's last word, whether or not [DONE] follows
        raise ProviderError(LOST, retryable=True)


class ChunkParser:
    """Turns chunks into events; remembers whether a finish_reason came and whether the text was a refusal."""

    def __init__(self) -> None:
        self.finished = False
        self.refused = False

    def feed(self, chunk: Any) -> list[Event]:
        if not isinstance(chunk, dict):
            return []
        # {"error": ...} from OpenAI and most servers; a flat {"object": "error", "message": ...} from vLLM.
        if chunk.get("error") or chunk.get("object") == "error":
            return [stream_error(chunk["error"] if chunk.get("error") else chunk)]
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # we ask for one choice; ignore others rather than interleave them
            delta = choice.get("delta") or {}
            # DeepSeek and vLLM send `reasoning_content`, OpenRouter and Ollama `reasoning`.
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events.append(ThinkingDelta(reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                events.append(TextDelta(delta["content"]))
            # A refusal is what the model said, in its own field: shown and stored as the reply's text.
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                self.refused = True
                events.append(TextDelta(delta["refusal"]))
            # Tool-call deltas (`delta.tool_calls`) are not shown; we never offer tools, so they are ignored.
            if reason := choice.get("finish_reason"):
                if reason == "error":  # OpenRouter's mid-stream error without an error object
                    return [*events, stream_error({"message": "the provider ended the reply with an error"})]
                self.finished = True
                # The API finishes a refusal with "stop"; recorded as "refusal", as Anthropic reports one.
                events.append(Stop("refusal" if self.refused and reason == "stop" else str(reason)))
        if isinstance(chunk.get("usage"), dict):
            events.append(UsageUpdate(usage_from(chunk["usage"])))
        return events


def error_object(data: str) -> Any:
    """The error an `error` event carries: JSON, nested (`{"error": ...}`) or flat, or else its text."""
    try:
        error = json.loads(data)
    except ValueError:
        return data
    return (error.get("error") or error) if isinstance(error, dict) else error


def stream_error(error: Any) -> StreamError:
    if not isinstance(error, dict):
        error = {"message": str(error)}  # TGI's {"error": "text"}, or an event's bare text
    code = error.get("code")
    # A numeric code is an HTTP status (vLLM, llama.cpp, OpenRouter); OpenAI's codes are names, its type says.
    if isinstance(code, int):
        retryable = code in RETRYABLE_STATUSES
    else:
        retryable = error.get("type") not in NON_RETRYABLE_ERROR_TYPES
    return StreamError(message=reported_error(error), retryable=retryable)


def usage_from(raw: dict[str, Any]) -> Usage:
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=_int(raw.get("prompt_tokens")),  # cached tokens are a part of this already
        output_tokens=_int(raw.get("completion_tokens")),
        cache_read_tokens=_int(prompt_details.get("cached_tokens")),
        cache_write_tokens=None,  # OpenAI does not report cache writes
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
        cost=reported_cost(raw.get("cost")),
    )


def reported_cost(value: Any) -> Decimal | None:
    """`usage.cost` (OpenRouter's credits, which are USD; a LiteLLM proxy's USD) as sent, or None.

    The chunk was decoded with Decimal for fractions, so 0.000123456789 arrives with every digit; an int or a
    numeric string is taken too. A negative, non-numeric, infinite or absurdly large figure is ignored, with
    a warning, and the reply is then priced by our own prices."""
    if value is None:
        return None
    amount: Decimal | None = None
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    elif isinstance(value, float):  # NaN and Infinity, which json gives as floats whatever parse_float says
        amount = Decimal(repr(value))
    elif isinstance(value, str) and len(value) <= MAX_COST_CHARS:
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite() or amount < 0 or amount >= MAX_REPORTED_COST:
        logger.warning("ignored the cost the provider reported: %.80r", value)
        return None
    return Decimal(0) if amount.is_zero() else amount  # -0 is a free reply too


def _int(value: Any) -> int | None:
    if isinstance(value, Decimal):  # a count written as 12.0
        return int(value) if value.is_finite() and value >= 0 else None
    # NaN compares false and Infinity is no count, so neither passes.
    return int(value) if isinstance(value, int | float) and 0 <= value < float("inf") else None
