"""The choices a message's fields take, and the groups of them that the code asks about."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


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
NORMAL_STOP_REASONS = frozenset({"", "end_turn", "stop"})


# Finished replies that have no cost (usage unknown, or no price for the model), except those stopped
# before they ever reached the provider (cancelled while queued: no duration), which certainly cost nothing.
WITHOUT_COST = Q(role=Role.ASSISTANT, status__in=FINISHED, cost__isnull=True) & ~Q(
    status=Status.CANCELLED, duration_ms__isnull=True
)


class UsageSource(models.TextChoices):
    PROVIDER = "provider", "Reported by the provider"
    ESTIMATED = "estimated", "Estimated"
    UNKNOWN = "", "Unknown"


class CostSource(models.TextChoices):
    """Where a reply's cost came from (decision 0036): the provider's own figure wins over our prices."""

    PROVIDER = "provider", "Reported by the provider"
    PRICE_TABLE = "price_table", "The admin's price table"
    SNAPSHOT = "snapshot", "The genai-prices snapshot"
    FREE = "free", "Free (offline demo)"
    UNKNOWN = "", "Unknown"
