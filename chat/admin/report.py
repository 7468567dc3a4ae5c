"""The admin's cost report: totals per day, user, group and model for a period, the spend chart, the CSV,
and the replies without a cost (one page, reached from the message list)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from chat.costs import reports
from chat.models import Role

# The longest period the report page draws day by day; `manage.py chat_costs` has no such cap.
MAX_REPORT_DAYS = 366


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


def cost_report(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """Totals per day, user and model for a period, the spend chart, the CSV, and the replies without a cost."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    today = datetime.now(UTC).date()
    form = PeriodForm(request.GET if "since" in request.GET else None, initial=vars_of(default_period(today)))
    period = reports.Period(**form.cleaned_data) if form.is_valid() else default_period(today)
    tables = {by: reports.totals(period, by=by) for by in reports.GROUPINGS}
    if (by := request.GET.get("export")) in tables:
        return csv_response(tables[by], by=by, period=period)  # type: ignore[arg-type]
    without_cost = reports.replies_without_cost(period)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Cost report",
        "form": form,
        "period": period,
        "presets": [(label, urlencode(vars_of(p))) for label, p in presets(today)],
        "total": reports.grand_total(period),
        **{f"by_{by}": report_table(by, rows, period) for by, rows in tables.items()},
        "chart": reports.spend_chart(period, tables["day"]),
        "without_cost": [(m, reports.missing_cost_reason(m)) for m in without_cost[:100]],
        "without_cost_count": without_cost.count(),
    }
    return TemplateResponse(request, "admin/chat/message/cost_report.html", context)


def report_table(by: reports.Grouping, rows: list[reports.Row], period: reports.Period) -> dict[str, Any]:
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
        lookups = {key: value.isoformat() if isinstance(value, datetime) else value for key, value in lookups.items()}
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
