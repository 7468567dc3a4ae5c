"""Conversations and messages; a reply's lifecycle is a set of model methods that write only their fields."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from chat.providers import Turn, Usage

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


class Role(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    STREAMING = "streaming", "Streaming"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"
    INTERRUPTED = "interrupted", "Interrupted"


FINISHED = (Status.COMPLETED, Status.CANCELLED, Status.FAILED, Status.INTERRUPTED)
TRUNCATION_STOP_REASONS = frozenset({"max_tokens", "length", "model_length_exceeded"})


# Finished replies that have no cost (usage unknown, or no price for the model), except those stopped
# before they ever reached the provider (cancelled while queued: no duration), which certainly cost nothing.
WITHOUT_COST = Q(role=Role.ASSISTANT, status__in=FINISHED, cost__isnull=True) & ~Q(
    status=Status.CANCELLED, duration_ms__isnull=True
)


class UsageSource(models.TextChoices):
    PROVIDER = "provider", "Reported by the provider"
    ESTIMATED = "estimated", "Estimated"
    UNKNOWN = "", "Unknown"


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def for_user(self, user: AbstractBaseUser) -> ConversationQuerySet:
        return self.filter(user=user)


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, help_text="provider:model")
    system_prompt = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    def ask(self, *, text: str, model: str | None = None, request_key: str = "") -> Message:
        """Store the user's message and a queued reply in one transaction; a repeated request_key
        (a double submit of the same form) returns the reply the first submit created."""
        if request_key:
            existing = self.messages.filter(request_key=request_key, role=Role.ASSISTANT).first()
            if existing:
                return existing
        fields = ["updated_at"]
        if model and model != self.model:
            self.model = model
            fields.append("model")
        if not self.title:
            self.title = title_from(text)
            fields.append("title")
        provider, _, model_name = self.model.partition(":")
        try:
            with transaction.atomic():
                self.save(update_fields=fields)
                Message.objects.create(conversation=self, role=Role.USER, content=text, status=Status.COMPLETED)
                return Message.objects.create(
                    conversation=self,
                    role=Role.ASSISTANT,
                    status=Status.QUEUED,
                    provider=provider,
                    model=model_name,
                    request_key=request_key,
                )
        except IntegrityError:
            # Two submits raced past the lookup above; the unique constraint let exactly one in.
            return self.messages.get(request_key=request_key, role=Role.ASSISTANT)


def title_from(text: str) -> str:
    first_line = " ".join(text.split())
    return first_line[:80] + ("…" if len(first_line) > 80 else "")


class MessageQuerySet(models.QuerySet["Message"]):
    def for_user(self, user: AbstractBaseUser) -> MessageQuerySet:
        return self.filter(conversation__user=user)

    def replies(self) -> MessageQuerySet:
        return self.filter(role=Role.ASSISTANT)

    def stale_streaming(self, *, older_than: timedelta) -> MessageQuerySet:
        return self.filter(status=Status.STREAMING, checkpoint_at__lt=timezone.now() - older_than)

    def created_between(self, start: datetime, end: datetime | None = None) -> MessageQuerySet:
        """Created at or after `start` and, when given, before `end` (a half-open range)."""
        rows = self.filter(created_at__gte=start)
        return rows if end is None else rows.filter(created_at__lt=end)

    def running(self, *, stale_after: timedelta, queued_within: timedelta) -> MessageQuerySet:
        """Replies that hold a concurrency slot: streaming and checkpointed recently (an older
        checkpoint means a dead worker's row, which the sweep will close), or queued recently (a
        reply whose stream was never opened, e.g. the tab closed right after sending, would
        otherwise block the user until somebody opened it)."""
        now = timezone.now()
        return self.replies().filter(
            Q(status=Status.STREAMING, checkpoint_at__gte=now - stale_after)
            | Q(status=Status.QUEUED, created_at__gte=now - queued_within)
        )

    def without_cost(self) -> MessageQuerySet:
        return self.filter(WITHOUT_COST)

    def total_cost(self) -> Decimal:
        return self.aggregate(total=Sum("cost"))["total"] or Decimal(0)


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
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
    cost = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True, help_text="USD")
    error = models.TextField(blank=True, help_text="Shown to the user.")
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Beyond the contract, for the machinery: the send form's one-time key (a double submit finds
    # the first reply), and the last checkpoint, which tells a live reply from one a dead process left.
    request_key = models.CharField(max_length=64, blank=True, default="")
    checkpoint_at = models.DateTimeField(null=True, blank=True)

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

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def was_truncated(self) -> bool:
        return self.status == Status.COMPLETED and self.stop_reason in TRUNCATION_STOP_REASONS

    @property
    def model_id(self) -> str:
        return f"{self.provider}:{self.model}"

    async def aclaim(self) -> bool:
        """Move a queued reply to streaming; True only for the one caller that won the row."""
        now = timezone.now()
        claimed = await Message.objects.filter(pk=self.pk, status=Status.QUEUED).aupdate(
            status=Status.STREAMING, checkpoint_at=now
        )
        if claimed:
            self.status, self.checkpoint_at = Status.STREAMING, now
        return bool(claimed)

    async def acheckpoint(self, *, content: str, thinking: str) -> None:
        self.content, self.thinking, self.checkpoint_at = content, thinking, timezone.now()
        # Filtered on status so a checkpoint can never resurrect a row that was already closed.
        await Message.objects.filter(pk=self.pk, status=Status.STREAMING).aupdate(
            content=content, thinking=thinking, checkpoint_at=self.checkpoint_at
        )

    async def afinish(
        self,
        *,
        status: Status,
        content: str,
        thinking: str = "",
        stop_reason: str = "",
        usage: Usage | None = None,
        cost: Decimal | None = None,
        error: str = "",
        ttft_ms: int | None = None,
        duration_ms: int | None = None,
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
            "error": error,
            "ttft_ms": ttft_ms,
            "duration_ms": duration_ms,
            "finished_at": timezone.now(),
        }
        closed = await Message.objects.filter(pk=self.pk, status__in=[Status.QUEUED, Status.STREAMING]).aupdate(
            **values
        )
        if closed:
            for name, value in values.items():
                setattr(self, name, value)
        return bool(closed)

    async def aprompt(self) -> tuple[list[Turn], str]:
        """The turns before this reply, as a provider needs them, and the conversation's system prompt."""
        conversation = await Conversation.objects.aget(pk=self.conversation_id)
        earlier = Message.objects.filter(conversation_id=self.conversation_id, pk__lt=self.pk).order_by("pk")
        return turns_from([(m.role, m.content) async for m in earlier.only("role", "content")]), (
            conversation.system_prompt
        )

    @classmethod
    def sweep_interrupted(cls, *, older_than: timedelta) -> int:
        """Close rows a dead process left `streaming`; their text is what the last checkpoint saved."""
        return cls.objects.stale_streaming(older_than=older_than).update(**interrupted_values())

    @classmethod
    async def asweep_interrupted(cls, *, older_than: timedelta, keep: list[int]) -> int:
        """The same sweep from a running worker, which never touches the replies it is writing itself."""
        rows = cls.objects.stale_streaming(older_than=older_than).exclude(pk__in=keep)
        return await rows.aupdate(**interrupted_values())


def interrupted_values() -> dict[str, object]:
    return {
        "status": Status.INTERRUPTED,
        "error": "The server stopped while this reply was being written; it shows what was saved.",
        "finished_at": timezone.now(),
    }


def turns_from(history: list[tuple[str, str]]) -> list[Turn]:
    """Providers want alternating turns that start with the user: failed replies leave empty
    assistant turns (dropped) and so two user turns in a row (joined)."""
    turns: list[Turn] = []
    for role, content in history:
        if not content.strip():
            continue
        if turns and turns[-1].role == role:
            turns[-1] = Turn(role=role, content=f"{turns[-1].content}\n\n{content}")
        elif turns or role == Role.USER:
            turns.append(Turn(role=role, content=content))
    return turns


class ModelPriceQuerySet(models.QuerySet["ModelPrice"]):
    def effective(self, *, provider: str, model: str, on: date) -> ModelPriceQuerySet:
        """The prices of this model that had started by `on`, the one in force first."""
        return self.filter(provider=provider, model=model, effective_from__lte=on).order_by("-effective_from")


class ModelPrice(models.Model):
    """An operator's price for a model, overriding the genai-prices snapshot from a date on.
    A reply is priced once, when it finishes, so editing a price never rewrites stored costs."""

    provider = models.CharField(max_length=50, help_text="As in provider:model, e.g. openai.")
    model = models.CharField(max_length=200, help_text="The model id as requested, e.g. gpt-4o-mini.")
    effective_from = models.DateField(help_text="UTC date from which replies are priced with this row.")
    input_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, help_text="USD per million input tokens.")
    output_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, help_text="USD per million output tokens.")
    cache_read_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="Blank: cache reads cost the input price."
    )
    cache_write_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="Blank: cache writes cost the input price."
    )
    reasoning_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Only if reasoning tokens are billed differently; blank: they are output tokens at the output price.",
    )
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelPriceQuerySet.as_manager()

    class Meta:
        ordering = ["provider", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model", "effective_from"], name="one_price_per_model_and_day")
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model} from {self.effective_from}"


class SpendingLimit(models.Model):
    """A user's own monthly limit; without a row the global default (CHAT_MONTHLY_BUDGET_USD) applies."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="spending_limit")
    monthly_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="USD per calendar month (UTC). Blank: no limit for this user, whatever the global default.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Spending limit of {self.user}"
