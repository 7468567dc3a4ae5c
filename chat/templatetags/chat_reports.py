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
def report_usd(value: Decimal) -> str:
    """The same digits as the CSV and chat_costs print, with a dollar sign."""
    return f"${money(value)}"
