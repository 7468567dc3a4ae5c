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


def month_spend(user: Any) -> Spend:
    """One query: the month's stored costs of the user's replies, next to their own limit if they have one."""
    spent = (
        Message.objects.filter(conversation__user=OuterRef("pk"))
        .created_between(month_start())
        .values("conversation__user")
        .annotate(total=Sum("cost"))
        .values("total")
    )
    row = (
        get_user_model()
        .objects.filter(pk=user.pk)
        .values(spent=Subquery(spent[:1]), own_limit=F("spending_limit__monthly_usd"), own=F("spending_limit__pk"))
        .get()
    )
    limit = row["own_limit"] if row["own"] is not None else default_budget()
    return Spend(spent=row["spent"] or Decimal(0), limit=limit)


def refusal(user: Any) -> Refusal | None:
    """The first limit this user has reached, or None when a new reply may start."""
    now = datetime.now(UTC)
    spend = month_spend(user)
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
    mine = Message.objects.billed_to(user)
    max_running = settings.CHAT_MAX_CONCURRENT_REPLIES
    if max_running > 0:
        running = mine.running(
            stale_after=timedelta(seconds=settings.CHAT_INTERRUPTED_AFTER), queued_within=QUEUED_HOLDS_A_SLOT_FOR
        ).count()
        if running >= max_running:
            return Refusal(
                message=(
                    f"You already have {running} replies being written (the limit is {max_running}). "
                    "Wait for one to finish, or stop one, then send again."
                ),
                retry_after=CONCURRENCY_RETRY_AFTER,
            )
    per_minute = settings.CHAT_MESSAGES_PER_MINUTE
    if per_minute > 0:
        # Replies, not the user's own messages: Retry, Regenerate and Continue start a reply (an
        # upstream request) without one, and every send starts exactly one.
        recent = mine.replies().created_between(now - RATE_WINDOW)
        window = recent.aggregate(sent=Count("pk"), oldest=Min("created_at"))
        if window["sent"] >= per_minute:
            frees_up = window["oldest"] + RATE_WINDOW - now
            return Refusal(
                message=f"You are sending messages too quickly (the limit is {per_minute} a minute). Wait a moment.",
                retry_after=max(1, math.ceil(frees_up.total_seconds())),
            )
    return None
