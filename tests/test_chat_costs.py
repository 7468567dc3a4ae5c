"""`manage.py chat_costs` prints the admin cost report's totals."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from tests.test_admin import OCTOBER, REPORT, Data, october, rows_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(django_user_model: Any) -> Data:
    return october(django_user_model)


def chat_costs(*args: str) -> str:
    out = io.StringIO()
    call_command("chat_costs", *args, stdout=out)
    return out.getvalue()


def terminal_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines()[2:]:
        if set(line) <= {"-", " "} or line.endswith("(usage unknown or no price)."):
            continue
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = [cell.replace(",", "") for cell in cells[1:]]
    return rows


@pytest.mark.parametrize("by", ["day", "user", "model"])
def test_it_prints_the_same_totals_as_the_admin_report(admin_client: Client, data: Data, by: str) -> None:
    page = admin_client.get(REPORT, OCTOBER).content.decode()
    text = chat_costs("--since", "2026-10-01", "--until", "2026-10-31", "--by", by)
    assert text.splitlines()[0] == f"Costs per {by}, 2026-10-01 to 2026-10-31 (UTC)"
    assert terminal_rows(text) == rows_of(page, f"by-{by}")
    assert terminal_rows(text)["Total"][3] == "1.753849"
    assert text.splitlines()[-1] == "3 finished replies have no cost (usage unknown or no price)."


def test_its_csv_is_the_admins_csv(admin_client: Client, data: Data) -> None:
    exported = admin_client.get(REPORT, {**OCTOBER, "export": "model"}).content.decode()
    assert chat_costs("--since", "2026-10-01", "--until", "2026-10-31", "--by", "model", "--csv") == exported


def test_it_defaults_to_today_as_the_last_day(data: Data) -> None:
    rows = terminal_rows(chat_costs("--since", "2026-10-01", "--by", "user"))
    # Everything since October: the 1 November reply of $200 counts now, the 30 September one does not.
    assert rows["Total"][3] == "201.753849"


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "yesterday"],
        ["--since", "2026-10-02", "--until", "2026-10-01"],
        ["--since", "2026-10-01", "--by", "week"],
        [],
    ],
)
def test_it_refuses_bad_arguments(args: list[str]) -> None:
    with pytest.raises((CommandError, SystemExit)):
        chat_costs(*args)


def test_an_empty_period_prints_a_zero_total() -> None:
    rows: dict[str, Any] = terminal_rows(chat_costs("--since", "2020-01-01", "--until", "2020-01-31"))
    assert rows == {"Total": ["0", "0", "0", "0.000000", "0"]}


def test_it_prints_the_per_group_totals_of_the_admin_report(admin_client: Client, data: Data) -> None:
    from tests.test_admin import with_groups

    with_groups(data)
    page = rows_of(admin_client.get(REPORT, OCTOBER).content.decode(), "by-group")
    text = chat_costs("--since", "2026-10-01", "--until", "2026-10-31", "--by", "group")
    rows = terminal_rows(text)
    assert rows["Research"] == page["Research"] and rows["Research"][5] == "50.000000"
    assert rows == page and "Total" not in rows  # overlapping rows: no total line, as on the page
    assert text.splitlines()[0].endswith("a user in several groups counts in each, so the rows can add up to more")
    exported = admin_client.get(REPORT, {**OCTOBER, "export": "group"}).content.decode()
    assert chat_costs("--since", "2026-10-01", "--until", "2026-10-31", "--by", "group", "--csv") == exported
