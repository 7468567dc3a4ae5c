"""The admin's record of what happened: conversations and messages, what each reply cost and where that
figure came from. Records are reviewed and may be deleted, never rewritten."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils.html import format_html
from django.utils.safestring import SafeString

from chat.admin import report
from chat.costs import reports
from chat.models import Conversation, Message, Role
from chat.models.choices import CostSource
from chat.templatetags.chat_tags import usd


def cost_cell(value: Decimal) -> SafeString:
    """An amount as every page shows it, with every stored digit in its title for the operator."""
    return format_html('<span title="${}">{}</span>', f"{value.normalize():f}", usd(value))


def reply_cost(message: Message) -> str:
    """A reply's cost as the list shows it: a price, or why there is none."""
    if message.role != Role.ASSISTANT:
        return ""
    if not message.is_finished:
        return "running"
    if message.cost is None:
        return reports.missing_cost_reason(message)
    return cost_cell(message.cost)


def cost_difference(message: Message) -> str:
    """What the provider charged minus what our prices said, signed, with every digit in the title; "" unless
    the cost is the provider's own figure and ours exists too (decision 0036)."""
    if message.cost_source != CostSource.PROVIDER or message.cost is None or message.computed_cost is None:
        return ""
    difference = message.cost - message.computed_cost
    if difference == 0:
        return format_html('<span title="{}">{}</span>', "the same to the last digit", "$0")
    sign = "+" if difference > 0 else "\N{MINUS SIGN}"
    exact = f"{sign}${abs(difference).normalize():f}"
    return format_html('<span title="{}">{}{}</span>', exact, sign, usd(abs(difference)))


class MessageInline(admin.TabularInline):
    model = Message
    fields = [
        "created_at",
        "role",
        "status",
        "preview",
        "model",
        "stop_reason",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "cost_source",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="content")
    def preview(self, message: Message) -> str:
        text = message.content or message.error
        return text[:300] + ("…" if len(text) > 300 else "")

    @admin.display(description="cost")
    def cost_usd(self, message: Message) -> str:
        return reply_cost(message)


class ReadOnlyAdmin(admin.ModelAdmin):
    """A record of what happened: operators review and may delete it, but never rewrite it."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "user", "model", "message_count", "total_tokens", "total_cost", "updated_at"]
    list_filter = ["model", ("user", admin.RelatedOnlyFieldListFilter), "updated_at", "deleted_at"]
    list_select_related = ["user"]
    search_fields = ["title", "user__username"]
    date_hierarchy = "updated_at"
    inlines = [MessageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_count=Count("messages"),
                total_tokens=Sum(
                    Coalesce("messages__input_tokens", Value(0)) + Coalesce("messages__output_tokens", Value(0))
                ),
                total_cost=Sum("messages__cost"),
            )
        )

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, conversation: Conversation) -> int:
        return conversation.message_count  # type: ignore[attr-defined]

    @admin.display(description="tokens (in + out)", ordering="total_tokens")
    def total_tokens(self, conversation: Conversation) -> int:
        return conversation.total_tokens or 0  # type: ignore[attr-defined]

    @admin.display(description="cost", ordering="total_cost")
    def total_cost(self, conversation: Conversation) -> str:
        return cost_cell(conversation.total_cost or Decimal(0))  # type: ignore[attr-defined]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = [
        "created",
        "user",
        "conversation",
        "role",
        "model_id",
        "status",
        "stop_reason",
        "tokens_in",
        "tokens_cache_read",
        "tokens_cache_write",
        "tokens_out",
        "tokens_reasoning",
        "usage_source",
        "cost_usd",
        "cost_source",
        "cost_difference",
        "ttft",
        "duration",
    ]
    list_filter = [
        "provider",
        "model",
        "status",
        "stop_reason",
        "role",
        "usage_source",
        "cost_source",
        ("conversation__user", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    list_select_related = ["conversation__user"]
    search_fields = ["content"]
    date_hierarchy = "created_at"
    readonly_fields = ["cost_difference"]
    fieldsets = [
        (None, {"fields": ["conversation", "role", "status", "provider", "model", "stop_reason", "error"]}),
        ("Text", {"fields": ["content", "thinking"]}),
        (
            "Usage and cost",
            {
                "fields": [
                    "input_tokens",
                    "cache_read_tokens",
                    "cache_write_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                    "usage_source",
                    "cost",
                    "cost_source",
                    "computed_cost",
                    "cost_difference",
                ]
            },
        ),
        ("Timing", {"fields": ["created_at", "finished_at", "ttft_ms", "duration_ms"]}),
    ]

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, message: Message) -> str:
        return f"{message.created_at:%Y-%m-%d %H:%M}"

    @admin.display(description="user", ordering="conversation__user")
    def user(self, message: Message) -> Any:
        return message.conversation.user

    @admin.display(description="model", ordering="model")
    def model_id(self, message: Message) -> str:
        return message.model_id if message.provider else ""

    @admin.display(description="cost", ordering="cost")
    def cost_usd(self, message: Message) -> str:
        return reply_cost(message)

    @admin.display(description="provider − our prices")
    def cost_difference(self, message: Message) -> str:
        return cost_difference(message)

    # Short headers: eighteen columns have to fit one screen.
    @admin.display(description="in", ordering="input_tokens")
    def tokens_in(self, message: Message) -> int | None:
        return message.input_tokens

    @admin.display(description="cache read", ordering="cache_read_tokens")
    def tokens_cache_read(self, message: Message) -> int | None:
        return message.cache_read_tokens

    @admin.display(description="cache write", ordering="cache_write_tokens")
    def tokens_cache_write(self, message: Message) -> int | None:
        return message.cache_write_tokens

    @admin.display(description="out", ordering="output_tokens")
    def tokens_out(self, message: Message) -> int | None:
        return message.output_tokens

    @admin.display(description="reasoning", ordering="reasoning_tokens")
    def tokens_reasoning(self, message: Message) -> int | None:
        return message.reasoning_tokens

    @admin.display(description="TTFT ms", ordering="ttft_ms")
    def ttft(self, message: Message) -> int | None:
        return message.ttft_ms

    @admin.display(description="total ms", ordering="duration_ms")
    def duration(self, message: Message) -> int | None:
        return message.duration_ms

    def get_urls(self) -> list[URLPattern]:
        report = path("report/", self.admin_site.admin_view(self.cost_report), name="chat_message_report")
        return [report, *super().get_urls()]

    def cost_report(self, request: HttpRequest) -> HttpResponse:
        return report.cost_report(self, request)
