"""Template filters for messages: sanitised markdown and readable numbers."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.utils.safestring import SafeString

from chat.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    return render_markdown(text or "")


@register.filter
def usd(value: Decimal | None) -> str:
    if value is None:
        return "unpriced"
    if value == 0:
        return "$0"
    return f"${value:.6f}".rstrip("0") if value < Decimal("0.01") else f"${value:.4f}"
