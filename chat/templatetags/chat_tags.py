"""Template filters for messages: sanitised markdown and readable numbers."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.utils.safestring import SafeString

from chat.costs import money
from chat.streaming import catalog
from chat.streaming.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    return render_markdown(text or "")


@register.filter
def usd(value: Decimal | None) -> str:
    """The one money format of every page (chat.costs.money)."""
    return money.usd(value)


@register.filter
def model_label(model_id: str) -> str:
    """The picker's label for a provider:model id, so the demo model is always called what it is."""
    provider, _, name = model_id.partition(":")
    if provider == "demo":
        return "Demo model"
    return next((choice.name for choice in catalog.offered_models() if choice.id == model_id), name or model_id)


@register.filter
def milliseconds(value: int | None) -> str:
    if value is None:
        return ""
    return f"{value} ms" if value < 1000 else f"{value / 1000:.1f} s"


@register.filter
def tokens(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"
