"""The models offered in the picker (from CHAT_MODELS) and the provider instance that serves each."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from django.conf import settings

from chat.streaming.providers import Provider, Timeouts, build_provider
from chat.streaming.providers.http import configure_client


@dataclass(frozen=True, slots=True)
class ModelChoice:
    id: str  # provider:model
    provider: str
    name: str

    @property
    def is_demo(self) -> bool:
        return self.provider == "demo"

    @property
    def label(self) -> str:
        return "Demo model (offline, no API key)" if self.is_demo else f"{self.name} ({self.provider})"


def offered_models() -> list[ModelChoice]:
    choices = []
    for model_id in settings.CHAT_MODELS:
        provider, _, name = model_id.partition(":")
        choices.append(ModelChoice(id=model_id, provider=provider, name=name or provider))
    return choices


def is_offered(model_id: str) -> bool:
    return model_id in settings.CHAT_MODELS


def default_model() -> str:
    return settings.CHAT_DEFAULT_MODEL if is_offered(settings.CHAT_DEFAULT_MODEL) else settings.CHAT_MODELS[0]


@cache
def provider_named(name: str) -> Provider:
    """One adapter per provider per process; they hold configuration only, the HTTP client is shared."""
    configure_client(transport=settings.CHAT_HTTP_TRANSPORT, max_connections=settings.CHAT_MAX_CONNECTIONS)
    timeouts = Timeouts(
        connect=settings.CHAT_CONNECT_TIMEOUT,
        idle=settings.CHAT_IDLE_TIMEOUT,
        progress=settings.CHAT_PROGRESS_TIMEOUT,
        max_event_bytes=settings.CHAT_MAX_EVENT_BYTES,
    )
    if name == "openai":
        return build_provider(
            name,
            api_key=settings.OPENAI_API_KEY,
            base_url=settings.OPENAI_BASE_URL,
            timeouts=timeouts,
            usage_accounting=settings.OPENAI_USAGE_ACCOUNTING,
        )
    if name == "anthropic":
        return build_provider(
            name, api_key=settings.ANTHROPIC_API_KEY, base_url=settings.ANTHROPIC_BASE_URL, timeouts=timeouts
        )
    return build_provider(name, timeouts=timeouts, interval=settings.CHAT_DEMO_INTERVAL)
