"""The provider contract: typed events every adapter yields, the one error type, and the registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as stored: input_tokens counts every prompt token, cache reads and writes included.
    A field is None when the provider did not report it. `cost` is what the provider said the reply cost,
    in USD, exactly as it wrote it (OpenRouter, a LiteLLM proxy); None from every provider that does not."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    source: str = "provider"
    cost: Decimal | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    """The provider's latest totals; each one replaces the previous (providers report cumulatively)."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class Stop:
    reason: str  # the provider's raw value: end_turn, max_tokens, stop, length, ...


@dataclass(frozen=True, slots=True)
class StreamError:
    """An error the provider sent inside a stream that had started with 200."""

    message: str
    retryable: bool = False


Event = TextDelta | ThinkingDelta | UsageUpdate | Stop | StreamError


class ProviderError(Exception):
    """Anything that ends a provider call early: HTTP status, transport, protocol or timeout."""

    def __init__(
        self, message: str, *, retryable: bool = False, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long and how much an upstream stream may take; built from settings by chat.streaming.catalog."""

    connect: float = 10.0
    idle: float = 60.0  # seconds without a byte from upstream
    progress: float = 60.0  # seconds without a complete event while bytes keep coming
    max_event_bytes: int = 4 * 1024 * 1024  # one event's bytes before its blank line (so each of its lines too)


class Provider(ABC):
    """One upstream wire format. Knows HTTP and JSON, nothing of Django."""

    name: str = ""

    @abstractmethod
    def stream(
        self, *, model: str, messages: Sequence[Turn], system: str = "", max_tokens: int = 4096
    ) -> AsyncIterator[Event]:
        """An iterator of events up to the reply's final event; it raises ProviderError when it cannot get there.

        Not an async generator itself: it reads the conversation before it returns, and the iterator
        keeps none of it, since a generator's arguments live as long as it does (for a whole reply)."""


def build_provider(
    name: str, *, api_key: str = "", base_url: str = "", timeouts: Timeouts, **options: object
) -> Provider:
    """Instantiate the adapter for `name`; imports are local so an unused adapter costs nothing."""
    if name == "openai":
        from .openai import OpenAIProvider

        return OpenAIProvider(
            api_key=api_key,
            base_url=base_url,
            timeouts=timeouts,
            usage_accounting=bool(options.get("usage_accounting", False)),
        )
    if name == "anthropic":
        from .anthropic import AnthropicProvider

        return AnthropicProvider(api_key=api_key, base_url=base_url, timeouts=timeouts)
    if name == "demo":
        from .demo import DemoProvider

        return DemoProvider(interval=float(options.get("interval", 0.03)))  # type: ignore[arg-type]
    raise ValueError(f"unknown provider {name!r}")
