"""What replies cost: an operator's prices per model, and each user's monthly limit."""

from __future__ import annotations

from datetime import date

from django.conf import settings
from django.db import models


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
    input_per_mtok = models.DecimalField(
        "input price", max_digits=14, decimal_places=6, help_text="USD per million input tokens."
    )
    output_per_mtok = models.DecimalField(
        "output price", max_digits=14, decimal_places=6, help_text="USD per million output tokens."
    )
    cache_read_per_mtok = models.DecimalField(
        "cache read price",
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million cache-read tokens. Blank: they cost the input price.",
    )
    cache_write_per_mtok = models.DecimalField(
        "cache write price",
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million cache-write tokens. Blank: they cost the input price.",
    )
    reasoning_per_mtok = models.DecimalField(
        "reasoning price",
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million reasoning tokens, only if billed apart from output. Blank: output price.",
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
