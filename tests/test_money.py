"""The one money format of every page, the chart's axis that uses it, and the budget warning's setting."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Template

from chat.costs.money import usd
from chat.costs.reports import QUARTERS, nice_ceiling
from project.settings import budget_warning_at


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "unpriced"),
        (Decimal(0), "$0"),
        (Decimal("0.0000000000"), "$0"),  # a stored free reply, ten places
        (Decimal("0.0000000001"), "<$0.0001"),
        (Decimal("0.00009999"), "<$0.0001"),
        (Decimal("0.0001"), "$0.0001"),
        (Decimal("0.000149"), "$0.00015"),
        (Decimal("0.0012"), "$0.0012"),
        (Decimal("0.001234"), "$0.0012"),
        (Decimal("0.00125"), "$0.0013"),  # halves round up, as a person would
        (Decimal("0.012"), "$0.012"),
        (Decimal("0.02"), "$0.02"),  # two significant digits at most: no "$0.020"
        (Decimal("0.0999"), "$0.10"),  # the carry into the next power of ten
        (Decimal("0.12345"), "$0.12"),
        (Decimal("0.5"), "$0.50"),  # at least two decimals
        (Decimal("0.994"), "$0.99"),
        (Decimal("0.995"), "$1.00"),
        (Decimal("0.99999"), "$1.00"),
        (Decimal(1), "$1.00"),
        (Decimal("1.005"), "$1.01"),
        (Decimal("12.344"), "$12.34"),
        (Decimal("1234.5"), "$1,234.50"),
        (Decimal("1234567.891"), "$1,234,567.89"),
        (3, "$3.00"),
        (0.25, "$0.25"),
    ],
)
def test_it_formats_money_for_people(value, shown: str) -> None:
    assert usd(value) == shown


def test_the_usd_filter_is_the_same_function() -> None:
    template = Template("{% load chat_tags %}{{ a|usd }} {{ b|usd }} {{ c|usd }}")
    assert template.render(Context({"a": Decimal("0.00372"), "b": None, "c": Decimal("1234.5")})) == (
        "$0.0037 unpriced $1,234.50"
    )


@pytest.mark.parametrize(
    ("top", "ceiling", "ticks"),
    [
        ("0", "1", ["$0", "$0.25", "$0.50", "$0.75", "$1.00"]),
        ("0.00001", "0.0004", ["$0", "$0.0001", "$0.0002", "$0.0003", "$0.0004"]),
        ("0.0013", "0.002", ["$0", "$0.0005", "$0.001", "$0.0015", "$0.002"]),
        ("1.25372", "2", ["$0", "$0.50", "$1.00", "$1.50", "$2.00"]),
        ("5.1", "8", ["$0", "$2.00", "$4.00", "$6.00", "$8.00"]),
        ("250.5", "400", ["$0", "$100.00", "$200.00", "$300.00", "$400.00"]),
    ],
)
def test_the_charts_axis_has_ticks_the_money_format_shows_exactly(top: str, ceiling: str, ticks: list[str]) -> None:
    value = nice_ceiling(Decimal(top))
    assert value == Decimal(ceiling)
    assert [usd(value * quarter) for quarter in QUARTERS] == ticks


@pytest.mark.parametrize(("raw", "fraction"), [(None, 0.8), ("", 0.8), ("0.5", 0.5), ("1", 1.0), ("0.01", 0.01)])
def test_the_budget_warning_setting_is_a_fraction(raw: str | None, fraction: float) -> None:
    assert budget_warning_at(raw) == fraction


@pytest.mark.parametrize("raw", ["0", "-0.2", "1.01", "80", "80%", "nan", "inf", "eighty"])
def test_a_budget_warning_setting_out_of_range_stops_the_start_and_says_why(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="CHAT_BUDGET_WARNING_AT must be a fraction above 0 and at most 1"):
        budget_warning_at(raw)
