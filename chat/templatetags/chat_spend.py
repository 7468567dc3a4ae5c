"""The composer's "This month: $X of $Y" line."""

from __future__ import annotations

from django import template

from chat.costs.limits import Spend, month_spend

register = template.Library()


@register.simple_tag(takes_context=True)
def spend_this_month(context: template.Context) -> Spend | None:
    if (known := context.get("spend")) is not None:
        return known  # read by the view moments ago (limits.check)
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return month_spend(user)
