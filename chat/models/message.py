"""A message; a reply's lifecycle is a set of model methods that write only their fields."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import connection, models, transaction
from django.db.models import Q, Sum
from django.utils import timezone
from django.utils.functional import cached_property

from chat.models.choices import (
    FINISHED,
    NORMAL_STOP_REASONS,
    TRUNCATION_STOP_REASONS,
    WITHOUT_COST,
    CostSource,
    Role,
    Status,
    UsageSource,
)
from chat.models.prompts import Prompt, prompt_from
from chat.streaming.providers import Usage

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


class MessageQuerySet(models.QuerySet["Message"]):
    def for_user(self, user: AbstractBaseUser) -> MessageQuerySet:
        """What the user may see: messages of conversations they have not deleted."""
        return self.filter(conversation__user=user, conversation__deleted_at__isnull=True)

    def billed_to(self, user: AbstractBaseUser) -> MessageQuerySet:
        """What the user has spent, deleted conversations included: deleting a chat is no way round a limit."""
        return self.filter(conversation__user=user)

    def replies(self) -> MessageQuerySet:
        return self.filter(role=Role.ASSISTANT)

    def shown(self) -> MessageQuerySet:
        """Not hidden by an edit: what the user sees, and what a model is sent."""
        return self.filter(hidden_at__isnull=True)

    def stale_streaming(self, *, older_than: timedelta) -> MessageQuerySet:
        return self.filter(status=Status.STREAMING, checkpoint_at__lt=timezone.now() - older_than)

    def created_between(self, start: datetime, end: datetime | None = None) -> MessageQuerySet:
        """Created at or after `start` and, when given, before `end` (a half-open range)."""
        rows = self.filter(created_at__gte=start)
        return rows if end is None else rows.filter(created_at__lt=end)

    def without_cost(self) -> MessageQuerySet:
        return self.filter(WITHOUT_COST)

    def total_cost(self) -> Decimal:
        return self.aggregate(total=Sum("cost"))["total"] or Decimal(0)


class Message(models.Model):
    conversation = models.ForeignKey("chat.Conversation", on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True, help_text="The visible text only.")
    thinking = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    provider = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=200, blank=True, help_text="The model id requested and priced.")
    stop_reason = models.CharField(max_length=50, blank=True, help_text="The provider's raw value.")
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_read_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_write_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage_source = models.CharField(max_length=16, choices=UsageSource.choices, blank=True, default="")
    # Twelve places keep a provider's own figure to its last digit (a millionth of a millionth of a dollar), and
    # SQLite, which stores a decimal as a float, still gives sums up to $1,000 back exactly (decision 0036).
    # Computed costs are rounded to ten (chat.costs.pricing).
    cost = models.DecimalField(
        max_digits=22, decimal_places=12, null=True, blank=True, help_text="USD: the preferred figure, see source."
    )
    cost_source = models.CharField(max_length=16, choices=CostSource.choices, blank=True, default="")
    computed_cost = models.DecimalField(
        max_digits=22, decimal_places=12, null=True, blank=True, help_text="USD by our prices, whatever the source."
    )
    error = models.TextField(blank=True, help_text="Shown to the user.")
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Beyond the contract, for the machinery: the send form's one-time key (a double submit finds
    # the first reply), and the last checkpoint, which tells a live reply from one a dead process left.
    request_key = models.CharField(max_length=64, blank=True, default="")
    checkpoint_at = models.DateTimeField(null=True, blank=True)
    # How long the model thought before it wrote (the page's "Thought for N s").
    thinking_ms = models.PositiveIntegerField(null=True, blank=True)
    # Set when the user edits an earlier question: this message and all after it leave the page and the
    # prompt, and stay, with their costs, for the admin, the reports and the budget (as deleting a chat does).
    hidden_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "request_key", "role"],
                condition=~Q(request_key=""),
                name="one_reply_per_request_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} ({self.status})"

    @cached_property
    def question(self) -> Message | None:
        """The user's message this reply answers (Conversation.ask sets it, saving the query)."""
        return self.conversation.messages.shown().filter(role=Role.USER, pk__lt=self.pk).last()

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def was_truncated(self) -> bool:
        return self.status == Status.COMPLETED and self.stop_reason in TRUNCATION_STOP_REASONS

    @property
    def model_id(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def unusual_stop_reason(self) -> str:
        """The provider's stop reason when it is not a normal end of the reply, else ""."""
        return "" if self.stop_reason in NORMAL_STOP_REASONS else self.stop_reason

    @property
    def thinking_seconds(self) -> int | None:
        """Whole seconds of thinking, as the page says it ("Thought for N s"); at least 1 once it thought."""
        return None if self.thinking_ms is None else max(1, round(self.thinking_ms / 1000))

    @property
    def tokens_per_second(self) -> float | None:
        """Output speed after the first token: output tokens over the time spent writing them."""
        if self.output_tokens is None or self.ttft_ms is None or self.duration_ms is None:
            return None
        writing_ms = self.duration_ms - self.ttft_ms
        # Under a quarter of a second the figure says more about timer and network jitter than the model.
        return self.output_tokens * 1000 / writing_ms if writing_ms >= 250 else None

    @classmethod
    def claim_for(cls, user: AbstractBaseUser, reply_id: int) -> tuple[Message, Prompt] | None:
        """Claim the user's queued reply `reply_id` (move it to streaming) and read the prompt it answers.

        The one caller that wins the row gets the reply and its prompt. Every other caller gets None,
        whether another request won the row, the reply is streaming or finished, or it is not this
        user's: a lookup tells those apart, off the path of a fresh reply's first token.
        """
        now = timezone.now()
        if connection.vendor == "postgresql":
            return cls._claim_in_one_statement(user, reply_id, now)
        reply = cls.objects.for_user(user).replies().filter(pk=reply_id, status=Status.QUEUED).first()
        if reply is None:
            return None
        claimed = cls.objects.filter(pk=reply.pk, status=Status.QUEUED).update(
            status=Status.STREAMING, checkpoint_at=now
        )
        if not claimed:
            return None  # another request won the row between the read and the update
        reply.status, reply.checkpoint_at = Status.STREAMING, now
        return reply, reply.prompt()

    @classmethod
    def _claim_in_one_statement(
        cls, user: AbstractBaseUser, reply_id: int, now: datetime
    ) -> tuple[Message, Prompt] | None:
        # Ownership, the claim, the claimed row and the prompt in one round trip, with no ORM query to build:
        # the stream request waits for each answer behind an event loop busy with other replies' tokens.
        params = [
            Status.STREAMING.value,
            connection.ops.adapt_datetimefield_value(now),
            reply_id,
            Status.QUEUED.value,
            Role.ASSISTANT.value,
            user.pk,
        ]
        sql, attnames = _claim_statement()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        if not rows:
            return None
        # Every row repeats the claimed reply's columns after the prompt's three.
        reply = cls.from_db(connection.alias, attnames, rows[0][3:])
        return reply, prompt_from([row[:3] for row in rows])

    @classmethod
    def checkpoint_many(cls, rows: list[tuple[int, str, str]]) -> None:
        """Save the partial (pk, content, thinking) of many streaming replies in one transaction.

        Filtered on status so a checkpoint can never resurrect, or shorten, a row closed meanwhile.
        One prepared UPDATE per row, sent together (psycopg pipelines executemany): the ORM's
        single UPDATE with a CASE per row took 27 ms of CPU to build for 100 replies, holding the
        GIL, and so the event loop, for that long once a second.
        """
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        params = [(content, thinking, now, pk, Status.STREAMING.value) for pk, content, thinking in rows]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(_CHECKPOINT_SQL, params)

    def finish(
        self,
        *,
        status: Status,
        content: str,
        thinking: str = "",
        stop_reason: str = "",
        usage: Usage | None = None,
        cost: Decimal | None = None,
        computed_cost: Decimal | None = None,
        cost_source: str = CostSource.UNKNOWN,
        error: str = "",
        ttft_ms: int | None = None,
        duration_ms: int | None = None,
        thinking_ms: int | None = None,
    ) -> bool:
        """Close the reply once; False (and nothing written) when it was already closed elsewhere."""
        usage = usage or Usage(source=UsageSource.UNKNOWN)
        values = {
            "status": status,
            "content": content,
            "thinking": thinking,
            "stop_reason": stop_reason,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "usage_source": usage.source,
            "cost": cost,
            "computed_cost": computed_cost,
            "cost_source": cost_source,
            "error": error,
            "ttft_ms": ttft_ms,
            "duration_ms": duration_ms,
            "thinking_ms": thinking_ms,
            "finished_at": timezone.now(),
        }
        closed = Message.objects.filter(pk=self.pk, status__in=[Status.QUEUED, Status.STREAMING]).update(**values)
        if closed:
            for name, value in values.items():
                setattr(self, name, value)
        return bool(closed)

    async def afinish(self, **outcome: Any) -> bool:
        return await sync_to_async(self.finish)(**outcome)

    def prompt(self) -> Prompt:
        """The turns before this reply, as a provider needs them, and the conversation's system prompt."""
        earlier = Message.objects.shown().filter(conversation_id=self.conversation_id, pk__lt=self.pk).order_by("pk")
        # The system prompt rides along on every row: one query instead of two on the way to the first token.
        rows: list[tuple[str | None, str | None, str]] = list(
            earlier.values_list("role", "content", "conversation__system_prompt")
        )
        if not rows:
            rows = [(None, None, Message.objects.values_list("conversation__system_prompt", flat=True).get(pk=self.pk))]
        return prompt_from(rows)

    @classmethod
    def sweep_interrupted(cls, *, older_than: timedelta) -> int:
        """Close rows a dead process left `streaming`; their text is what the last checkpoint saved."""
        return cls.objects.stale_streaming(older_than=older_than).update(**interrupted_values())

    @classmethod
    async def asweep_interrupted(cls, *, older_than: timedelta, keep: list[int]) -> int:
        """The same sweep from a running worker, which never touches the replies it is writing itself."""
        rows = cls.objects.stale_streaming(older_than=older_than).exclude(pk__in=keep)
        return await rows.aupdate(**interrupted_values())


# PostgreSQL only (SQLite has no UPDATE in a WITH). The earlier turns are read from the snapshot before the
# UPDATE, which changes none of them; a reply with no earlier turns still gets its one row, with NULLs.
_CLAIM_SQL = """
WITH claimed AS (
    UPDATE chat_message SET status = %s, checkpoint_at = %s
    FROM chat_conversation owner
    WHERE chat_message.id = %s AND chat_message.status = %s AND chat_message.role = %s
        AND owner.id = chat_message.conversation_id AND owner.user_id = %s AND owner.deleted_at IS NULL
    RETURNING {returning}
)
SELECT earlier.role, earlier.content, conversation.system_prompt, {claimed}
FROM claimed
JOIN chat_conversation conversation ON conversation.id = claimed.conversation_id
LEFT JOIN chat_message earlier ON earlier.conversation_id = claimed.conversation_id AND earlier.id < claimed.id
    AND earlier.hidden_at IS NULL
ORDER BY earlier.id
"""


@functools.cache
def _claim_statement() -> tuple[str, list[str]]:
    """_CLAIM_SQL with the claimed row's columns named one by one, and their attribute names in that order,
    which is the order from_db expects."""
    fields = Message._meta.concrete_fields
    columns = [connection.ops.quote_name(field.column) for field in fields]
    sql = _CLAIM_SQL.format(
        returning=", ".join(f"chat_message.{column}" for column in columns),
        claimed=", ".join(f"claimed.{column}" for column in columns),
    )
    return sql, [field.attname for field in fields]


# The table is Message's.
_CHECKPOINT_SQL = (
    "UPDATE chat_message SET content = %s, thinking = %s, checkpoint_at = %s WHERE id = %s AND status = %s"
)


# Why a reply ends `interrupted`, whether its worker died (the sweep) or shut down (the drain).
INTERRUPTED = "The server stopped while this reply was being written; it shows what was saved."


def interrupted_values() -> dict[str, object]:
    return {
        "status": Status.INTERRUPTED,
        "error": INTERRUPTED,
        "finished_at": timezone.now(),
    }
