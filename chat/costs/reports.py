"""Cost totals per day, user, group or model over a period: the one source of the admin report, its CSV and
chat_costs."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any, Literal

from django.contrib.auth import get_user_model
from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate

from chat.costs.money import SMALLEST_SHOWN, usd
from chat.models import WITHOUT_COST, GroupPolicy, Message, MessageQuerySet

Grouping = Literal["day", "user", "group", "model"]
GROUPINGS: tuple[Grouping, ...] = ("day", "user", "group", "model")
CSV_HEADER = ["{by}", "replies", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"]
CSV_HEADER += ["cost_usd", "without_cost"]
MICRODOLLAR = Decimal("0.000001")
SMALLEST_TICK_TOP = 4 * SMALLEST_SHOWN
QUARTERS = [Decimal(n) / 4 for n in range(5)]
# The dates a report may name: a URL or a flag can say 9999-12-31, whose next day (a period's end) does not
# exist. Nothing was priced before 2000, and a thousand years leaves room for any report someone means.
EARLIEST, LATEST = date(2000, 1, 1), date(2999, 12, 31)


class PeriodError(ValueError):
    """A period no report can cover, said in words for a form or a terminal."""


@dataclass(frozen=True, slots=True)
class Period:
    """Whole UTC days, both ends included."""

    since: date
    until: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.since, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.until + timedelta(days=1), time.min, tzinfo=UTC)

    def days(self) -> list[date]:
        return [self.since + timedelta(days=n) for n in range((self.until - self.since).days + 1)]


def period(*, since: date, until: date) -> Period:
    """The period from since to until, or PeriodError: a date out of bounds, or the two the wrong way round."""
    if not (EARLIEST <= since <= LATEST and EARLIEST <= until <= LATEST):
        raise PeriodError(f"Dates must be between {EARLIEST.isoformat()} and {LATEST.isoformat()}.")
    if since > until:
        raise PeriodError("The period must start before it ends.")
    return Period(since=since, until=until)


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    replies: int
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    cost: Decimal
    without_cost: int
    ref: int | None = None  # the user's or group's id in a per-user or per-group row, for links; not a column
    # A per-group row's monthly budget (None: none), a column of that table only; shown as is, whatever the period.
    budget: Decimal | None = None

    def csv_values(self, *, by: Grouping = "day") -> list[str]:
        if by == "group":
            return [*self._csv_values(), "" if self.budget is None else money(self.budget)]
        return self._csv_values()

    def _csv_values(self) -> list[str]:
        return [
            spreadsheet_safe(self.key),
            str(self.replies),
            str(self.input_tokens),
            str(self.cache_read_tokens),
            str(self.cache_write_tokens),
            str(self.output_tokens),
            money(self.cost),
            str(self.without_cost),
        ]


def money(value: Decimal) -> str:
    """A report's USD amount, to the millionth of a dollar: the same text on the page, in the CSV and
    in the terminal. Each reply's stored cost keeps ten places; only the sums are rounded, once."""
    return str(value.quantize(MICRODOLLAR))


def spreadsheet_safe(text: str) -> str:
    """Spreadsheets run a cell that starts with = + - @ as a formula, and a username may start with + - @."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def replies_in(period: Period, *, user: Any = None) -> MessageQuerySet:
    """The period's replies; with a user, only theirs, billed as the budget is (deleted conversations and
    replies hidden by an edit count: they were paid for)."""
    replies = Message.objects.billed_to(user) if user is not None else Message.objects.all()
    return replies.replies().created_between(period.start, period.end)


# Named apart from the fields they add up: an alias equal to a field name would shadow it in the filter.
SUMS = {
    "sum_replies": Count("pk"),
    "sum_input_tokens": Sum("input_tokens"),
    "sum_cache_read_tokens": Sum("cache_read_tokens"),
    "sum_cache_write_tokens": Sum("cache_write_tokens"),
    "sum_output_tokens": Sum("output_tokens"),
    "sum_cost": Sum("cost"),
    "sum_without_cost": Count("pk", filter=WITHOUT_COST),
}


def _row(key: str, values: dict[str, Any]) -> Row:
    return Row(
        key=key,
        ref=values.get("ref"),
        replies=values["sum_replies"] or 0,
        input_tokens=values["sum_input_tokens"] or 0,
        cache_read_tokens=values["sum_cache_read_tokens"] or 0,
        cache_write_tokens=values["sum_cache_write_tokens"] or 0,
        output_tokens=values["sum_output_tokens"] or 0,
        cost=values["sum_cost"] or Decimal(0),
        without_cost=values["sum_without_cost"] or 0,
    )


def totals(period: Period, *, by: Grouping, user: Any = None) -> list[Row]:
    """One row per day (in order), per user or per model (most expensive first) that had replies; with a
    user, of their replies only."""
    replies = replies_in(period, user=user)
    if by == "day":
        grouped = replies.annotate(group=TruncDate("created_at")).values("group")
        rows = [_row(values["group"].isoformat(), values) for values in grouped.annotate(**SUMS).order_by("group")]
        return rows
    if by == "user":
        username = f"conversation__user__{get_user_model().USERNAME_FIELD}"
        grouped = replies.values(group=F(username), ref=F("conversation__user"))
        rows = [_row(str(values["group"]), values) for values in grouped.annotate(**SUMS).order_by()]
    elif by == "group":
        rows = group_rows(replies)
    elif by == "model":
        grouped = replies.values("provider", "model")
        rows = [_row(f"{v['provider']}:{v['model']}", v) for v in grouped.annotate(**SUMS).order_by()]
    else:
        raise ValueError(f"unknown grouping {by!r}")
    return sorted(rows, key=lambda row: (-row.cost, row.key))


def group_rows(replies: MessageQuerySet) -> list[Row]:
    """A row per group: its members' replies (a user's in each of their groups, so rows can overlap), with
    its budget. Members are the group's members now, as the budget check counts them."""
    grouped = replies.filter(conversation__user__groups__isnull=False).values(
        group=F("conversation__user__groups__name"), ref=F("conversation__user__groups")
    )
    budgets = dict(GroupPolicy.objects.values_list("group_id", "monthly_usd"))
    return [
        replace(_row(str(values["group"]), values), budget=budgets.get(values["ref"]))
        for values in grouped.annotate(**SUMS).order_by()
    ]


def grand_total(period: Period, *, user: Any = None) -> Row:
    return _row("Total", replies_in(period, user=user).aggregate(**SUMS))


def sum_of(rows: Iterable[Row]) -> Row:
    """The total line under a table, added up from its rows (the same as grand_total, from memory)."""
    rows = list(rows)
    return Row(
        key="Total",
        replies=sum(r.replies for r in rows),
        input_tokens=sum(r.input_tokens for r in rows),
        cache_read_tokens=sum(r.cache_read_tokens for r in rows),
        cache_write_tokens=sum(r.cache_write_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
        cost=sum((r.cost for r in rows), Decimal(0)),
        without_cost=sum(r.without_cost for r in rows),
    )


def replies_without_cost(period: Period) -> MessageQuerySet:
    """The replies to look into: usage unknown, or no price for their model."""
    return replies_in(period).without_cost().select_related("conversation__user").order_by("-created_at", "-pk")


def missing_cost_reason(reply: Message) -> str:
    if reply.input_tokens is None or reply.output_tokens is None:
        return "usage unknown"
    return "no price for this model"


def write_csv(rows: list[Row], out: IO[str], *, by: Grouping) -> None:
    writer = csv.writer(out)
    writer.writerow([column.format(by=by) for column in CSV_HEADER] + (["budget_usd"] if by == "group" else []))
    # Groups overlap (a person counts in each of theirs): a sum of their rows would count people twice.
    for row in rows if by == "group" else [*rows, sum_of(rows)]:
        writer.writerow(row.csv_values(by=by))


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    short: str
    cost: Decimal
    x: float
    y: float
    width: float
    height: float
    show_label: bool
    label_x: float
    label_anchor: str  # the last day's label ends at its bar, so it never runs past the chart


@dataclass(frozen=True, slots=True)
class Chart:
    """Geometry of the spend-per-day bar chart; the template draws it as SVG."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]

    @property
    def baseline(self) -> int:
        return self.top + self.plot_height


def nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 4 or 8 times a power of ten that is at least `value`: its quarters, the
    axis's ticks, then have at most two significant digits, which money.usd shows exactly."""
    if value <= 0:
        return Decimal(1)
    # A quarter of less would be under the smallest amount money.usd shows.
    value = max(value, SMALLEST_TICK_TOP)
    power = Decimal(1).scaleb(value.adjusted())
    return next(step * power for step in (1, 2, 4, 8, 10) if step * power >= value)


def spend_chart(period: Period, day_rows: list[Row]) -> Chart:
    """Every day of the period gets a slot, so a day without spend shows as a gap, not as nothing."""
    width, height, left, top, bottom, right = 960, 260, 80, 16, 44, 16
    plot_width, plot_height = width - left - right, height - top - bottom
    by_day = {row.key: row.cost for row in day_rows}
    days = period.days()
    top_value = nice_ceiling(max(by_day.values(), default=Decimal(0)))
    slot = plot_width / len(days)
    label_every = math.ceil(len(days) / 12)
    bars = []
    for n, day in enumerate(days):
        cost = by_day.get(day.isoformat(), Decimal(0))
        last = n == len(days) - 1
        bar_height = plot_height * float(cost / top_value)
        bars.append(
            Bar(
                label=day.isoformat(),
                short=day.strftime("%d %b"),
                cost=cost,
                x=round(left + n * slot + slot * 0.1, 2),
                y=round(top + plot_height - bar_height, 2),
                width=round(slot * 0.8, 2),
                height=round(bar_height, 2),
                show_label=n % label_every == 0,
                label_x=round(left + n * slot + (slot * 0.9 if last else slot * 0.5), 2),
                label_anchor="end" if last else "middle",
            )
        )
    ticks = [(round(top + plot_height * (1 - float(f)), 2), usd(top_value * f)) for f in QUARTERS]
    return Chart(width, height, left, top, plot_width, plot_height, bars, ticks)
