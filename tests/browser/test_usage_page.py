"""The Usage page in a real browser: reached from the composer's month figure, with the shared chart, the
table by model and the budget warning; screenshots at desktop and phone widths and in dark mode."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from chat.costs import limits
from chat.models import Conversation, Message, SpendingLimit
from tests.browser.conftest import SCREENSHOTS, Tab
from tests.conftest import stored_exchange

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# 85 % of a $5.00 limit, over two models and the days of this month so far; and some of last month.
COSTS = [("openai:gpt-4o-mini", "0.35"), ("anthropic:claude-sonnet-4-5", "1.90"), ("openai:gpt-4o-mini", "0.0042")]
COSTS += [("anthropic:claude-sonnet-4-5", "1.2458"), ("openai:gpt-4o-mini", "0.75")]
WARNING = "You have used 85% of your $5.00 monthly budget."


def spent_this_month(user: Any) -> Conversation:
    """A conversation to open, and replies costing $4.25 on the first days of this month (up to today)."""
    start, now = limits.month_start(), timezone.now()
    conversation = Conversation.objects.create(user=user, model="openai:gpt-4o-mini", title="Budget talk")
    for n, (model, cost) in enumerate(COSTS):
        when = min(start + timedelta(days=n, hours=10), now - timedelta(minutes=1))
        priced(conversation, model, cost, when)
    for day in (3, 9, 17):
        priced(
            conversation,
            "openai:gpt-4o-mini",
            "0.8",
            limits.month_start(start - timedelta(days=1)) + timedelta(days=day),
        )
    SpendingLimit.objects.create(user=user, monthly_usd=Decimal(5))
    assert limits.check(user).spend.spent == Decimal("4.25")
    return conversation


def priced(conversation: Conversation, model: str, cost: str, when: Any) -> None:
    provider, _, name = model.partition(":")
    answer = stored_exchange(
        conversation,
        "Q",
        provider=provider,
        model=name,
        input_tokens=2000,
        output_tokens=400,
        usage_source="provider",
        cost=Decimal(cost),
    )
    Message.objects.filter(pk__in=[answer.question.pk, answer.pk]).update(created_at=when, finished_at=when)


def assert_fits(tab: Tab) -> None:
    """Nothing wider than the window: the chart and the table scroll inside their own frames."""
    overflow = tab.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, overflow


def test_the_month_figure_leads_to_the_usage_page_and_warns_at_85_percent(tab: Tab, user) -> None:
    conversation = spent_this_month(user)
    tab.page.set_viewport_size({"width": 1280, "height": 800})
    tab.open(f"/chat/{conversation.pk}/")
    page = tab.page
    warning = page.get_by_role("status").filter(has_text=WARNING)
    assert warning.is_visible()  # before the wall: said next to the composer, and to screen readers
    tab.screenshot("usage-composer-warning")
    link = page.get_by_role("link", name=re.compile("^This month"))
    assert link.inner_text() == "This month: $4.25 of $5.00"
    link.click()
    page.wait_for_url("**/chat/usage/")
    assert page.get_by_role("heading", name="Usage", level=1).is_visible()
    assert page.title() == "Usage · streamchat"
    assert page.get_by_role("status").filter(has_text=WARNING).is_visible()
    chart = page.get_by_role("img", name=re.compile("^Spend per day"))
    assert chart.is_visible() and chart.bounding_box()["width"] > 500
    assert page.locator("svg.chart rect.bar").count() == (limits.next_month_start() - limits.month_start()).days
    table = page.get_by_role("table")
    assert table.get_by_role("rowheader").count() == 2  # the two models
    assert table.get_by_role("cell", name="$3.15").is_visible()  # claude: 1.90 + 1.2458, rounded to cents
    assert page.locator("#budget-left").inner_text() == "$0.75 left of $5.00"
    assert page.locator("#this-month").inner_text() == "$4.25" and page.locator("#last-month").inner_text() == "$2.40"
    assert_fits(tab)
    tab.screenshot("usage")
    tab.page.screenshot(path=str(SCREENSHOTS / "usage-full.png"), full_page=True, caret="initial")

    page.get_by_role("link", name="Last month").click()
    page.wait_for_url("**/chat/usage/?month=last")
    assert page.get_by_role("link", name="Last month").get_attribute("aria-current") == "page"
    assert page.get_by_role("table").get_by_role("cell", name="$2.40").is_visible()
    assert tab.errors == [], tab.errors  # no CSP violation, nothing broken


def test_the_usage_page_fits_a_phone(tab: Tab, user) -> None:
    spent_this_month(user)
    tab.page.set_viewport_size({"width": 390, "height": 844})
    tab.open("/chat/usage/")
    assert tab.page.get_by_role("heading", name="Usage", level=1).is_visible()
    assert_fits(tab)
    assert tab.page.get_by_role("img", name=re.compile("^Spend per day")).is_visible()
    tab.screenshot("usage-phone")
    # The whole page too, table and all, for a reviewer to look at.
    tab.page.screenshot(path=str(SCREENSHOTS / "usage-phone-full.png"), full_page=True, caret="initial")
    assert tab.errors == [], tab.errors


def test_the_usage_page_in_dark_mode(dark_tab: Tab, user) -> None:
    spent_this_month(user)
    dark_tab.page.set_viewport_size({"width": 1280, "height": 800})
    dark_tab.open("/chat/usage/")
    bar_fill = dark_tab.page.locator("svg.chart rect.bar").first.evaluate("bar => getComputedStyle(bar).fill")
    assert bar_fill == "rgb(143, 176, 255)"  # the dark theme's accent, from the stylesheet's classes
    dark_tab.screenshot("usage-dark")
    assert dark_tab.errors == [], dark_tab.errors


def test_an_empty_month_says_so(tab: Tab, user) -> None:
    tab.open("/chat/usage/")
    assert tab.page.get_by_role("heading", name=re.compile("^No replies in")).is_visible()
    assert tab.page.get_by_role("img").count() == 0
    tab.page.get_by_role("link", name="Start a chat").click()
    tab.page.wait_for_url("**/chat/")
