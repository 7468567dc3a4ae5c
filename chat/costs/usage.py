"""A user's own spend for the Usage page: two months' totals, a month by day and by model, and the budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from chat.costs import limits, reports

Month = Literal["this", "last"]
MONTHS: tuple[Month, ...] = ("this", "last")


@dataclass(frozen=True, slots=True)
class Usage:
    month: Month
    period: reports.Period  # the chosen month, every day of it
    this_month: Decimal
    last_month: Decimal
    replies: int  # in the chosen month
    chart: reports.Chart
    by_model: list[reports.Row]
    spend: limits.Spend  # this month against the budget, as the composer and the send check read it
    resets_at: datetime

    @property
    def empty(self) -> bool:
        return self.replies == 0


def month_period(start: datetime) -> reports.Period:
    """The whole UTC calendar month that starts at `start`."""
    last_day = limits.next_month_start(start).date() - timedelta(days=1)
    return reports.Period(since=start.date(), until=last_day)


def chosen_month(value: str | None) -> Month:
    """?month=this|last; anything else is this month, never an error."""
    return "last" if value == "last" else "this"


def usage_of(user: Any, *, month: str | None = None, now: datetime | None = None) -> Usage:
    """The user's spend, deleted conversations and replies hidden by an edit included: they were paid for."""
    now = now or datetime.now(UTC)
    this_start = limits.month_start(now)
    this = month_period(this_start)
    last = month_period(limits.month_start(this_start - timedelta(days=1)))
    chosen = chosen_month(month)
    period = this if chosen == "this" else last
    by_day = reports.totals(period, by="day", user=user)
    return Usage(
        month=chosen,
        period=period,
        this_month=_total(this, user),
        last_month=_total(last, user),
        replies=sum(row.replies for row in by_day),
        chart=reports.spend_chart(period, by_day),
        by_model=reports.totals(period, by="model", user=user),
        spend=limits.check(user).spend,
        resets_at=limits.next_month_start(now),
    )


def _total(period: reports.Period, user: Any) -> Decimal:
    return reports.grand_total(period, user=user).cost
