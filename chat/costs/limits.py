"""Spending limits and rate limits, checked before any upstream request: counted from the database, so
they hold across processes with no extra infrastructure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Min

from chat.costs.money import usd
from chat.models import GroupPolicy, Message, Role, SpendingLimit, Status

# A queued reply starts when its page opens the stream, within a second or so. One that is still
# queued after this long was left by a page that never connected; it must not hold a slot forever.
QUEUED_HOLDS_A_SLOT_FOR = timedelta(minutes=2)
# A running reply's end is unknown: this is a reasonable wait before trying again.
CONCURRENCY_RETRY_AFTER = 5
RATE_WINDOW = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Spend:
    """This calendar month's (UTC) stored costs against one budget: the user's own (their replies, and their
    limit or the default), or with `group` a group's shared one (all its members' replies)."""

    spent: Decimal
    limit: Decimal | None
    group: str = ""
    # On the user's own: the budgets of their groups, which apply as well (see decision 0037).
    groups: tuple[Spend, ...] = ()

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit

    @property
    def warn_from(self) -> Decimal | None:
        """The spend from which the user is warned: CHAT_BUDGET_WARNING_AT of the limit."""
        return None if self.limit is None else self.limit * Decimal(str(settings.CHAT_BUDGET_WARNING_AT))

    @property
    def warning(self) -> bool:
        """Close to the limit but not at it, so the user hears before a send is refused."""
        return self.warn_from is not None and not self.exhausted and self.spent >= self.warn_from

    @property
    def percent_used(self) -> int | None:
        """Whole percent of the limit spent, rounded down: 79.9 % is not yet "80%"."""
        if not self.limit:
            return None
        return math.floor(self.spent * 100 / self.limit)

    @property
    def left(self) -> Decimal | None:
        return None if self.limit is None else max(self.limit - self.spent, Decimal(0))

    @property
    def budgets(self) -> tuple[Spend, ...]:
        """Every budget that applies: the user's own first, then their groups' by name."""
        return (self, *self.groups)

    @property
    def warnings(self) -> list[Spend]:
        """The budgets to warn about next to the composer: close to their limit, or (a group's) at it."""
        return [b for b in self.budgets if b.warning or (b.group and b.exhausted)]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a new reply may not start now, and in how many seconds asking again could succeed."""

    message: str
    retry_after: int
    status: int = 429  # a user's own limit; 503 is the server's (chat.streaming.admission)


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
    """The month's stored costs of the user's replies, next to their own limit if they have one (one query)."""
    return check(user).spend


def check(user: Any) -> Standing:
    """The month's spend and the first limit this user has reached (None when a new reply may start).

    One query, in SQL: it runs before every reply, and the ORM took longer to build and compile
    this query (four subqueries) than the database took to answer it; measured in `bench`'s
    profile, 7.2 ms against 1.7 ms per call. The group budgets are in the same statement: one row
    per group of the user's that has a budget (one row of NULLs for none)."""
    now = datetime.now(UTC)
    adapt = connection.ops.adapt_datetimefield_value
    running_since = now - timedelta(seconds=settings.CHAT_INTERRUPTED_AFTER)
    params = [
        *(user.pk, adapt(month_start(now))),
        *(user.pk, Role.ASSISTANT.value, Status.STREAMING.value, adapt(running_since)),
        *(Status.QUEUED.value, adapt(now - QUEUED_HOLDS_A_SLOT_FOR)),
        *(user.pk, Role.ASSISTANT.value, adapt(now - RATE_WINDOW)),
        *(user.pk, user.pk),
        *(adapt(month_start(now)), user.pk),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_CHECK_SQL, params)
        rows = cursor.fetchall()
    spent, running, sent, own, own_limit = rows[0][:5]
    limit = _decimal(SpendingLimit, "monthly_usd", own_limit) if own is not None else default_budget()
    groups = tuple(
        Spend(
            spent=_decimal(Message, "cost", group_spent) or Decimal(0),
            limit=_decimal(GroupPolicy, "monthly_usd", group_limit),
            group=name,
        )
        for name, group_limit, group_spent in (row[5:] for row in rows)
        if name is not None
    )
    spend = Spend(spent=_decimal(Message, "cost", spent) or Decimal(0), limit=limit, groups=groups)
    return Standing(spend=spend, refusal=_refusal(spend, user, running=running, sent=sent, now=now))


def refusal(user: Any) -> Refusal | None:
    """The first limit this user has reached, or None when a new reply may start."""
    return check(user).refusal


# A user's messages, deleted conversations included (Message.objects.billed_to): deleting a chat is
# no way round a limit. A reply holds a concurrency slot while it streams with a recent checkpoint
# (an older one is a dead worker's row, which the sweep will close) or is queued since recently (a
# page that never opened its stream must not block the user).
# A group's budget is shared: it counts the replies of everyone in the group now (auth_user_groups),
# deleted conversations included, as the user's own does.
# The tables are Message's, Conversation's, SpendingLimit's, auth's User.groups and Group, and GroupPolicy's.
_CHECK_SQL = """
SELECT
  (SELECT SUM(m.cost) FROM chat_message m JOIN chat_conversation c ON c.id = m.conversation_id
    WHERE c.user_id = %s AND m.created_at >= %s),
  (SELECT COUNT(*) FROM chat_message m JOIN chat_conversation c ON c.id = m.conversation_id
    WHERE c.user_id = %s AND m.role = %s
      AND ((m.status = %s AND m.checkpoint_at >= %s) OR (m.status = %s AND m.created_at >= %s))),
  (SELECT COUNT(*) FROM chat_message m JOIN chat_conversation c ON c.id = m.conversation_id
    WHERE c.user_id = %s AND m.role = %s AND m.created_at >= %s),
  (SELECT id FROM chat_spendinglimit WHERE user_id = %s),
  (SELECT monthly_usd FROM chat_spendinglimit WHERE user_id = %s),
  budgets.name, budgets.monthly_usd,
  (SELECT SUM(m.cost) FROM chat_message m JOIN chat_conversation c ON c.id = m.conversation_id
    JOIN auth_user_groups ug ON ug.user_id = c.user_id
    WHERE ug.group_id = budgets.group_id AND m.created_at >= %s)
FROM (SELECT 1 AS one) AS base
LEFT JOIN (
  SELECT g.id AS group_id, g.name AS name, p.monthly_usd AS monthly_usd
  FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id JOIN chat_grouppolicy p ON p.group_id = g.id
  WHERE ug.user_id = %s AND p.monthly_usd IS NOT NULL
) AS budgets ON 1 = 1
ORDER BY budgets.name
"""


def _decimal(model: Any, field_name: str, value: Any) -> Decimal | None:
    """A decimal column as the ORM would return it (SQLite gives sums as floats)."""
    if value is None:
        return None
    field = model._meta.get_field(field_name)
    return field.to_python(value).quantize(Decimal(1).scaleb(-field.decimal_places), context=field.context)


def _refusal(spend: Spend, user: Any, *, running: int, sent: int, now: datetime) -> Refusal | None:
    if spend.exhausted:
        # The next reply's cost is unknown until it finishes, so a send is refused only once the
        # stored costs have reached the limit; a reply already running is allowed to finish.
        return Refusal(
            message=(
                f"You have reached your monthly spending limit ({usd(spend.spent)} of {usd(spend.limit)}). "
                "It resets at the start of next month (UTC)."
            ),
            retry_after=math.ceil((next_month_start(now) - now).total_seconds()),
        )
    if group := next((g for g in spend.groups if g.exhausted), None):
        resets = next_month_start(now)
        return Refusal(
            message=(
                f"Your group “{group.group}” has reached its monthly budget ({usd(group.spent)} of "
                f"{usd(group.limit)}). It resets on {resets.day} {resets:%B} (UTC)."
            ),
            retry_after=math.ceil((resets - now).total_seconds()),
        )
    max_running = settings.CHAT_MAX_CONCURRENT_REPLIES
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
    if 0 < per_minute <= sent:
        # Only a refusal needs the oldest of them, to say when a slot frees up.
        oldest = (
            Message.objects.billed_to(user).replies().created_between(now - RATE_WINDOW).aggregate(Min("created_at"))
        )
        frees_up = oldest["created_at__min"] + RATE_WINDOW - now
        return Refusal(
            message=f"You are sending messages too quickly (the limit is {per_minute} a minute). Wait a moment.",
            retry_after=max(1, math.ceil(frees_up.total_seconds())),
        )
    return None
