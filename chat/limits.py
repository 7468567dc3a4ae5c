"""Spending limits and rate limits, checked before any upstream request: counted from the database, so
they hold across processes with no extra infrastructure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, F, Min, OuterRef, Subquery, Sum

from chat.models import Message

# A queued reply starts when its page opens the stream, within a second or so. One that is still
# queued after this long was left by a page that never connected; it must not hold a slot forever.
QUEUED_HOLDS_A_SLOT_FOR = timedelta(minutes=2)
# A running reply's end is unknown: this is a reasonable wait before trying again.
CONCURRENCY_RETRY_AFTER = 5
RATE_WINDOW = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Spend:
    """This calendar month's (UTC) stored costs of a user's replies, and the limit that applies."""

    spent: Decimal
    limit: Decimal | None

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a new reply may not start now, and in how many seconds asking again could succeed."""

    message: str
    retry_after: int


def month_start(now: datetime | None = None) -> datetime:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime | None = None) -> datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def default_budget() -> Decimal | None:
    value = settings.CHAT_MONTHLY_BUDGET_USD
    return None if value in (None, "") else Decimal(str(value))


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a user stands against every limit, read in one query before a reply may start."""

    spend: Spend
    refusal: Refusal | None


def month_spend(user: Any) -> Spend:
    """One query: the month's stored costs of the user's replies, next to their own limit if they have one."""
    row = _user_row(user, spent=_per_user(_mine().created_between(month_start()), Sum("cost")))
    return _spend(row)


def check(user: Any) -> Standing:
    """The month's spend and the first limit this user has reached (None when a new reply may start).

    One query with a subquery per limit: this runs before every reply, and each query costs more in
    the ORM and the driver than in the database."""
    now = datetime.now(UTC)
    mine = _mine()
    recent = mine.replies().created_between(now - RATE_WINDOW)
    running = mine.running(
        stale_after=timedelta(seconds=settings.CHAT_INTERRUPTED_AFTER), queued_within=QUEUED_HOLDS_A_SLOT_FOR
    )
    row = _user_row(
        user,
        spent=_per_user(mine.created_between(month_start(now)), Sum("cost")),
        running=_per_user(running, Count("pk")),
        sent=_per_user(recent, Count("pk")),
        oldest=_per_user(recent, Min("created_at")),
    )
    spend = _spend(row)
    return Standing(spend=spend, refusal=_refusal(spend, row, now))


def refusal(user: Any) -> Refusal | None:
    """The first limit this user has reached, or None when a new reply may start."""
    return check(user).refusal


def _mine() -> Any:
    # Deleted conversations included (Message.objects.billed_to): deleting a chat is no way round a limit.
    return Message.objects.filter(conversation__user=OuterRef("pk"))


def _per_user(rows: Any, aggregate: Any) -> Subquery:
    return Subquery(rows.values("conversation__user").annotate(value=aggregate).values("value")[:1])


def _user_row(user: Any, **values: Any) -> dict[str, Any]:
    return (
        get_user_model()
        .objects.filter(pk=user.pk)
        .values(**values, own_limit=F("spending_limit__monthly_usd"), own=F("spending_limit__pk"))
        .get()
    )


def _spend(row: dict[str, Any]) -> Spend:
    limit = row["own_limit"] if row["own"] is not None else default_budget()
    return Spend(spent=row["spent"] or Decimal(0), limit=limit)


def _refusal(spend: Spend, row: dict[str, Any], now: datetime) -> Refusal | None:
    if spend.exhausted:
        # The next reply's cost is unknown until it finishes, so a send is refused only once the
        # stored costs have reached the limit; a reply already running is allowed to finish.
        return Refusal(
            message=(
                f"You have reached your monthly spending limit (${spend.spent:.2f} of ${spend.limit:.2f}). "
                "It resets at the start of next month (UTC)."
            ),
            retry_after=math.ceil((next_month_start(now) - now).total_seconds()),
        )
    max_running = settings.CHAT_MAX_CONCURRENT_REPLIES
    running = row["running"] or 0
    if 0 < max_running <= running:
        return Refusal(
            message=(
                f"You already have {running} replies being written (the limit is {max_running}). "
                "Wait for one to finish, or stop one, then send again."
            ),
            retry_after=CONCURRENCY_RETRY_AFTER,
        )
    # Replies, not the user's own messages: Retry, Regenerate and Continue start a reply (an
    # upstream request) without one, and every send starts exactly one.
    per_minute = settings.CHAT_MESSAGES_PER_MINUTE
    if 0 < per_minute <= (row["sent"] or 0):
        frees_up = row["oldest"] + RATE_WINDOW - now
        return Refusal(
            message=f"You are sending messages too quickly (the limit is {per_minute} a minute). Wait a moment.",
            retry_after=max(1, math.ceil(frees_up.total_seconds())),
        )
    return None
