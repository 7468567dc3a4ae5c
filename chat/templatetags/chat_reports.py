"""Number formatting for the admin's cost report."""

from __future__ import annotations

from decimal import Decimal

from django import template

from chat.costs.reports import money

register = template.Library()


@register.filter
def thousands(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


@register.filter
def exact_usd(value: Decimal) -> str:
    """The digits the CSV and chat_costs print, for the title of a figure the page shows rounded (|usd)."""
    return f"${money(value)}"
