"""`manage.py chat_costs`: the admin cost report's totals per day, user, group or model, in a terminal."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.costs import reports


def iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from exc


class Command(BaseCommand):
    help = (
        "Print reply costs per day, user, group or model since a date (UTC), as the admin's cost report shows them. "
        "Per group, a user counts in each of their groups: the rows can overlap."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", type=iso_date, required=True, help="first day, YYYY-MM-DD (UTC)")
        parser.add_argument("--until", type=iso_date, help="last day, included (default: today, UTC)")
        parser.add_argument("--by", choices=reports.GROUPINGS, default="day")
        parser.add_argument("--csv", action="store_true", help="CSV, exactly as the admin's export")

    def handle(
        self, *args: Any, since: date, until: date | None, by: reports.Grouping, csv: bool, **options: Any
    ) -> None:
        try:
            period = reports.period(since=since, until=until or datetime.now(UTC).date())
        except reports.PeriodError as exc:
            raise CommandError(str(exc)) from exc
        rows = reports.totals(period, by=by)
        if csv:
            reports.write_csv(rows, self.stdout, by=by)
            return
        total = reports.sum_of(rows)
        header = [by, "replies", "input tokens", "output tokens", "cost (USD)", "without cost"]
        lines = [cells(row) for row in rows]
        # Groups overlap (a person counts in each of theirs): their rows get no total line, which would
        # count people twice; the admin report and its CSV leave it out too.
        footer = [] if by == "group" else [cells(total)]
        if by == "group":
            header.append("monthly budget")
            lines = [[*line, budget_cell(row)] for line, row in zip(lines, rows, strict=True)]
        widths = [max(len(line[i]) for line in [header, *lines, *footer]) for i in range(len(header))]
        overlap = "; a user in several groups counts in each, so the rows can add up to more" if by == "group" else ""
        self.stdout.write(f"Costs per {by}, {period.since} to {period.until} (UTC){overlap}")
        self.stdout.write(format_line(header, widths))
        for line in lines:
            self.stdout.write(format_line(line, widths))
        for line in footer:
            self.stdout.write(format_line(["-" * width for width in widths], widths))
            self.stdout.write(format_line(line, widths))
        if total.without_cost:
            self.stdout.write(f"{total.without_cost} finished replies have no cost (usage unknown or no price).")


def cells(row: reports.Row) -> list[str]:
    return [
        row.key,
        f"{row.replies:,}",
        f"{row.input_tokens:,}",
        f"{row.output_tokens:,}",
        reports.money(row.cost),
        f"{row.without_cost:,}",
    ]


def budget_cell(row: reports.Row) -> str:
    """A group's monthly budget, or "none" for a group without one."""
    return "none" if row.budget is None else reports.money(row.budget)


def format_line(cells: list[str], widths: list[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True))]
    )
