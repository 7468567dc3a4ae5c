"""The admin's controls over spending: prices per model, each user's limit, and each group's budget and models."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet, Sum
from django.http import HttpRequest, HttpResponse

from chat.admin.records import cost_cell
from chat.costs import pricing
from chat.costs.limits import default_budget, month_start
from chat.models import GroupPolicy, ModelPrice, SpendingLimit
from chat.streaming import catalog
from chat.templatetags.chat_tags import usd


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
