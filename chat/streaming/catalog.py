"""The models offered in the picker (from CHAT_MODELS), the ones a user's groups let them use, and the provider
instance that serves each."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings

from chat.models import GroupPolicy
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


def label_of(model_id: str) -> str:
    provider, _, name = model_id.partition(":")
    return ModelChoice(id=model_id, provider=provider, name=name or provider).label


@dataclass(frozen=True, slots=True)
class ModelAccess:
    """The offered models a user may use: those on the list of every group of theirs that has a list.

    The intersection, not the union: a group's list is a restriction (decision 0037), so a user in
    "Everyone" (no list) and "Interns" (cheap models) gets the cheap ones."""

    # (group name, its list) for each of the user's groups with a list, by group name.
    restrictions: tuple[tuple[str, frozenset[str]], ...] = ()

    def refused_by(self, model_id: str) -> str | None:
        """The first group (by name) whose list leaves this model out, or None."""
        return next((group for group, ids in self.restrictions if model_id not in ids), None)

    def allows(self, model_id: str) -> bool:
        return is_offered(model_id) and self.refused_by(model_id) is None

    def models(self) -> list[ModelChoice]:
        """The picker's choices, in CHAT_MODELS order."""
        return [choice for choice in offered_models() if self.refused_by(choice.id) is None]

    def default(self) -> str:
        """The site's default if allowed, else the first allowed; "" when none is."""
        if self.allows(default_model()):
            return default_model()
        return next((choice.id for choice in self.models()), "")

    def why_not(self, model_id: str) -> str:
        """Why a model may not be used, naming the group, and what to do."""
        if not self.models():
            return f"No model is available to you: {self.none_available()}"
        group = self.refused_by(model_id)
        return f"{label_of(model_id)} is not available to your group “{group}”: choose another model in the picker."

    def none_available(self) -> str:
        groups = " and ".join(f"“{group}”" for group, _ in self.restrictions)
        return (
            f"your groups {groups} have no model in common. Ask an administrator."
            if len(self.restrictions) > 1
            else f"your group {groups} allows none of the models offered here. Ask an administrator."
        )


def access_for(user: Any) -> ModelAccess:
    """The user's model permissions: one small query over their groups' policies (none when anonymous)."""
    if user is None or not user.is_authenticated:
        return ModelAccess()
    lists = GroupPolicy.objects.of(user).values_list("group__name", "models")
    return ModelAccess(restrictions=tuple((name, frozenset(ids)) for name, ids in lists if ids))


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
