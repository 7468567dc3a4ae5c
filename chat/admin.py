"""The admin: what each reply cost, who spent it, on which model, which replies went wrong; prices, limits, and
the groups' budgets and models."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from chat.costs import pricing, reports
from chat.costs.limits import default_budget, month_start
from chat.models import Conversation, GroupPolicy, Message, ModelPrice, Role, SpendingLimit
from chat.models.choices import CostSource
from chat.streaming import catalog
from chat.templatetags.chat_tags import usd

# The longest period the report page draws day by day; `manage.py chat_costs` has no such cap.
MAX_REPORT_DAYS = 366


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


class PeriodForm(forms.Form):
    since = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until:
            try:
                reports.period(since=since, until=until)
            except reports.PeriodError as exc:
                raise forms.ValidationError(str(exc)) from exc
            if (until - since).days >= MAX_REPORT_DAYS:  # the chart has a bar a day
                raise forms.ValidationError(
                    f"Choose at most {MAX_REPORT_DAYS} days; chat_costs in a terminal has no cap."
                )
        return data


def default_period(today: date) -> reports.Period:
    return reports.Period(since=today.replace(day=1), until=today)


def presets(today: date) -> list[tuple[str, reports.Period]]:
    last_month_end = today.replace(day=1) - timedelta(days=1)
    return [
        ("This month", default_period(today)),
        ("Last month", reports.Period(since=last_month_end.replace(day=1), until=last_month_end)),
        ("Last 7 days", reports.Period(since=today - timedelta(days=6), until=today)),
        ("Last 30 days", reports.Period(since=today - timedelta(days=29), until=today)),
    ]


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
        """Totals per day, user and model for a period, the spend chart, the CSV, and the replies without a cost."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        today = datetime.now(UTC).date()
        form = PeriodForm(request.GET if "since" in request.GET else None, initial=vars_of(default_period(today)))
        period = reports.Period(**form.cleaned_data) if form.is_valid() else default_period(today)
        tables = {by: reports.totals(period, by=by) for by in reports.GROUPINGS}
        if (by := request.GET.get("export")) in tables:
            return csv_response(tables[by], by=by, period=period)  # type: ignore[arg-type]
        without_cost = reports.replies_without_cost(period)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Cost report",
            "form": form,
            "period": period,
            "presets": [(label, urlencode(vars_of(p))) for label, p in presets(today)],
            "total": reports.grand_total(period),
            **{f"by_{by}": self.report_table(by, rows, period) for by, rows in tables.items()},
            "chart": reports.spend_chart(period, tables["day"]),
            "without_cost": [(m, reports.missing_cost_reason(m)) for m in without_cost[:100]],
            "without_cost_count": without_cost.count(),
        }
        return TemplateResponse(request, "admin/chat/message/cost_report.html", context)

    def report_table(self, by: reports.Grouping, rows: list[reports.Row], period: reports.Period) -> dict[str, Any]:
        """A table of the report, each row linked to the replies it adds up in the message list."""
        changelist = reverse("admin:chat_message_changelist")
        # Aware datetimes, so the changelist filters on exactly the report's UTC days.
        base = {"role__exact": Role.ASSISTANT, "created_at__gte": period.start, "created_at__lt": period.end}
        linked = []
        for row in rows:
            if by == "day":
                day = reports.Period(since=date.fromisoformat(row.key), until=date.fromisoformat(row.key))
                lookups = {**base, "created_at__gte": day.start, "created_at__lt": day.end}
            elif by == "user":
                lookups = {**base, "conversation__user__id__exact": row.ref}
            elif by == "group":
                # The group's page (its members, budget and models): the message list cannot filter by group.
                linked.append((row, reverse("admin:auth_group_change", args=[row.ref])))
                continue
            else:
                provider, _, model = row.key.partition(":")
                lookups = {**base, "provider__exact": provider, "model__exact": model}
            lookups = {
                key: value.isoformat() if isinstance(value, datetime) else value for key, value in lookups.items()
            }
            linked.append((row, f"{changelist}?{urlencode(lookups)}"))
        export = urlencode({**vars_of(period), "export": by})
        return {"by": by, "rows": linked, "total": reports.sum_of(rows), "csv": f"?{export}"}


def vars_of(period: reports.Period) -> dict[str, str]:
    return {"since": period.since.isoformat(), "until": period.until.isoformat()}


def csv_response(rows: list[reports.Row], *, by: reports.Grouping, period: reports.Period) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    name = f"costs-by-{by}-{period.since.isoformat()}-to-{period.until.isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    reports.write_csv(rows, response, by=by)
    return response


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "provider",
        "model",
        "effective_from",
        "input_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "output_per_mtok",
        "reasoning_per_mtok",
        "snapshot",
        "note",
    ]
    list_filter = ["provider", "effective_from"]
    search_fields = ["model", "note"]
    readonly_fields = ["snapshot"]

    @admin.display(description="genai-prices snapshot (per million)")
    def snapshot(self, price: ModelPrice) -> str:
        if not price.provider or not price.model:
            return ""
        return pricing.snapshot_price(provider=price.provider, model=price.model) or "not in the snapshot"


@admin.register(SpendingLimit)
class SpendingLimitAdmin(admin.ModelAdmin):
    list_display = ["user", "limit", "spent_this_month", "updated_at"]
    search_fields = ["user__username"]
    autocomplete_fields = ["user"]
    list_select_related = ["user"]

    @admin.display(description="monthly limit", ordering="monthly_usd")
    def limit(self, row: SpendingLimit) -> str:
        return "no limit" if row.monthly_usd is None else usd(row.monthly_usd)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SpendingLimit]:
        this_month = Q(user__conversations__messages__created_at__gte=month_start())
        return (
            super().get_queryset(request).annotate(spent=Sum("user__conversations__messages__cost", filter=this_month))
        )

    @admin.display(description="spent this month (UTC)", ordering="spent")
    def spent_this_month(self, row: SpendingLimit) -> str:
        return cost_cell(row.spent or Decimal(0))  # type: ignore[attr-defined]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        budget = default_budget()
        default = "no limit" if budget is None else usd(budget)
        context = {**(extra_context or {}), "title": f"Spending limits (default for everybody else: {default})"}
        return super().changelist_view(request, extra_context=context)


class GroupPolicyForm(forms.ModelForm):
    """The models as checkboxes of the offered ones; a stored id no longer offered is refused by name."""

    models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The models members may use. None ticked: all of them. A user in several groups may use only "
        "the models every one of their groups allows.",
    )

    class Meta:
        model = GroupPolicy
        fields = ["monthly_usd", "models"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [(choice.id, choice.label) for choice in catalog.offered_models()]
        self.fields["models"].error_messages["invalid_choice"] = (
            "%(value)s is not one of the models offered here (CHAT_MODELS): untick it."
        )

    def clean_monthly_usd(self) -> Decimal | None:
        value = self.cleaned_data.get("monthly_usd")
        if value is not None and value < 0:
            raise forms.ValidationError("A budget cannot be negative; leave it blank for no group budget.")
        return value


class GroupPolicyInline(admin.StackedInline):
    model = GroupPolicy
    form = GroupPolicyForm
    can_delete = False
    max_num = 1
    verbose_name = verbose_name_plural = "Chat budget and models"


admin.site.unregister(Group)


@admin.register(Group)
class ChatGroupAdmin(GroupAdmin):
    """Django's group admin, with the group's chat budget and models inline."""

    inlines = [*GroupAdmin.inlines, GroupPolicyInline]
    list_display = ["name", "budget", "models_allowed"]
    list_select_related = ["chat_policy"]

    @admin.display(description="monthly budget (shared)")
    def budget(self, group: Group) -> str:
        policy = getattr(group, "chat_policy", None)
        return "no budget" if policy is None or policy.monthly_usd is None else usd(policy.monthly_usd)

    @admin.display(description="models")
    def models_allowed(self, group: Group) -> str:
        policy = getattr(group, "chat_policy", None)
        return "all" if policy is None or not policy.models else ", ".join(policy.models)
