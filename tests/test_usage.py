"""A user's own usage: the budget warning, the reports filtered to one user, and the Usage page."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from chat.costs import limits, reports, usage
from chat.costs.limits import Spend
from chat.models import Conversation, Message, Role, SpendingLimit, Status
from chat.templatetags.chat_tags import model_label

pytestmark = pytest.mark.django_db
URL = "/chat/usage/"


def reply(user: Any, cost: str | None, *, when: datetime | None = None, model: str = "openai:gpt-4o-mini", **fields):
    """A finished reply of `user` costing `cost`, in a conversation of its own, created now or at `when`."""
    provider, _, name = model.partition(":")
    conversation = Conversation.objects.create(user=user, model=model, title="Costs")
    made = Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        status=Status.COMPLETED,
        provider=provider,
        model=name,
        input_tokens=1000,
        output_tokens=200,
        cost=None if cost is None else Decimal(cost),
        **fields,
    )
    if when:
        Message.objects.filter(pk=made.pk).update(created_at=when)
    return made


@pytest.fixture
def person(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="payer", password="a-long-test-password")


@pytest.fixture
def stranger(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="stranger", password="a-long-test-password")


@pytest.fixture
def browser(client: Client, person: Any) -> Client:
    client.force_login(person)
    return client


def last_month() -> datetime:
    return limits.month_start() - timedelta(hours=1)


def days_in(moment: datetime) -> int:
    return calendar.monthrange(moment.year, moment.month)[1]


def text(response: Any) -> str:
    return " ".join(response.content.decode().split())


# The warning


@pytest.mark.parametrize(
    ("spent", "warned"),
    [("3.995", False), ("4.00", True), ("4.25", True), ("4.9999", True), ("5.00", False), ("6", False)],
)
def test_the_warning_starts_at_80_percent_and_ends_at_the_limit(spent: str, warned: bool) -> None:
    spend = Spend(spent=Decimal(spent), limit=Decimal(5))
    assert spend.warning is warned
    assert spend.exhausted is (Decimal(spent) >= 5)  # past the limit the refusal speaks instead


def test_the_warning_percentage_is_rounded_down_and_follows_the_setting(settings) -> None:
    assert Spend(spent=Decimal("3.995"), limit=Decimal(5)).percent_used == 79  # 79.9 % is not "80%"
    settings.CHAT_BUDGET_WARNING_AT = 0.5
    assert Spend(spent=Decimal("2.50"), limit=Decimal(5)).warning
    assert not Spend(spent=Decimal("2.49"), limit=Decimal(5)).warning


def test_there_is_no_warning_without_a_limit_or_with_a_zero_limit() -> None:
    assert not Spend(spent=Decimal(1000), limit=None).warning
    assert Spend(spent=Decimal(1000), limit=None).percent_used is None
    assert not Spend(spent=Decimal(0), limit=Decimal(0)).warning  # exhausted from the start


# The reports, per user


def test_the_reports_count_only_the_users_own_replies_and_their_deleted_ones(person, stranger) -> None:
    reply(person, "0.40")
    deleted = reply(person, "0.30", model="anthropic:claude-sonnet-4-5")
    deleted.conversation.remove()
    reply(person, "0.20", hidden_at=timezone.now())  # hidden by an edit, but paid for
    reply(person, None)  # no price: counted as a reply without a cost
    reply(stranger, "100")
    month = usage.month_period(limits.month_start())
    total = reports.grand_total(month, user=person)
    assert (total.cost, total.replies, total.without_cost) == (Decimal("0.90"), 4, 1)
    by_model = {row.key: row.cost for row in reports.totals(month, by="model", user=person)}
    assert by_model == {"openai:gpt-4o-mini": Decimal("0.60"), "anthropic:claude-sonnet-4-5": Decimal("0.30")}
    assert sum(row.cost for row in reports.totals(month, by="day", user=person)) == Decimal("0.90")
    assert reports.grand_total(month).cost == Decimal("100.90")  # without a user: everybody, as the admin sees it
    # The budget counts exactly what the page counts.
    assert limits.check(person).spend.spent == total.cost


# The page


def test_the_usage_page_needs_a_login(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_shows_this_months_and_last_months_own_totals(browser: Client, person, stranger) -> None:
    reply(person, "1.25")
    reply(person, "0.0123", model="anthropic:claude-sonnet-4-5").conversation.remove()  # deleted, still paid for
    reply(person, "7.5", when=last_month())
    reply(stranger, "999", model="openai:stranger-model")
    reply(stranger, "888", when=last_month())
    response = browser.get(URL)
    assert response.status_code == 200
    page = text(response)
    assert "<title>Usage · streamchat</title>" in page and "<h1>Usage</h1>" in page
    assert '<strong id="this-month">$1.26</strong>' in page
    assert '<strong id="last-month">$7.50</strong>' in page
    assert "$999" not in page and "$888" not in page and "stranger-model" not in page
    rows = re.findall(r'<tr data-key="([^"]+)">(.*?)</tr>', page)
    assert [key for key, _ in rows] == ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"]  # most expensive first
    cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", rows[1][1])]
    assert cells == [model_label("anthropic:claude-sonnet-4-5"), "1", "1,000", "200", "$0.012"]


def test_the_chart_has_a_bar_for_every_day_of_the_chosen_month(browser: Client, person) -> None:
    reply(person, "0.50")
    reply(person, "2", when=last_month())
    this = browser.get(URL).content.decode()
    assert this.count('<rect class="bar"') == days_in(timezone.now()) and 'role="img"' in this
    today = timezone.now().date()
    assert f"<title>{today.isoformat()}: $0.50</title>" in this
    assert 'href="?month=this" aria-current="page"' in this
    last = browser.get(URL, {"month": "last"}).content.decode()
    assert last.count('<rect class="bar"') == days_in(last_month())
    assert f"<title>{last_month().date().isoformat()}: $2.00</title>" in last
    assert 'href="?month=last" aria-current="page"' in last
    assert f"Spend by day, {last_month():%B %Y}" in last


@pytest.mark.parametrize("month", ["", "next", "LAST", "x" * 5000, "2026-11", "'><script>"])
def test_a_month_it_does_not_know_shows_this_month(browser: Client, person, month: str) -> None:
    reply(person, "0.50")
    response = browser.get(URL, {"month": month})
    assert response.status_code == 200
    assert response.content.decode().count('<rect class="bar"') == days_in(timezone.now())
    assert "<script>" not in response.content.decode()


def test_a_user_without_replies_sees_a_friendly_empty_state(browser: Client, person, stranger) -> None:
    reply(stranger, "3")
    page = text(browser.get(URL))
    assert f"No replies in {timezone.now():%B %Y}" in page and "Start a chat" in page
    assert '<strong id="this-month">$0</strong>' in page
    assert "<svg" not in page and 'id="by-model"' not in page


def test_it_shows_what_is_left_of_the_budget_and_when_it_resets(browser: Client, person, settings) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "5"
    reply(person, "1.80")
    reply(person, "40", when=last_month())  # last month's spend does not use this month's budget
    page = text(browser.get(URL))
    assert '<strong id="budget-left">$3.20 left of $5.00</strong>' in page
    assert re.search(r'<meter id="budget-meter" min="0" max="5" low="4\.0+" high="5" optimum="0" value="1\.80+"', page)
    assert f"Resets on {limits.next_month_start():%-d %B %Y} (UTC)." in page
    assert 'role="status"' not in page  # 36 %: no warning yet
    SpendingLimit.objects.create(user=person, monthly_usd=None)  # the user's own "no limit" wins
    assert "left of" not in text(browser.get(URL))


def test_a_user_at_85_percent_is_warned_on_the_usage_page_and_in_the_composer(browser: Client, person) -> None:
    SpendingLimit.objects.create(user=person, monthly_usd=Decimal("5"))
    conversation = reply(person, "4.25").conversation
    warning = (
        '<p class="spend-warning" id="spend-warning" role="status">You have used 85% of your $5.00 monthly budget.</p>'
    )
    assert warning in text(browser.get(URL))
    composer = text(browser.get(f"/chat/{conversation.pk}/"))
    assert warning in composer and '<p class="spend warn" id="spend">' in composer
    assert '<a href="/chat/usage/"' in composer and ">This month: $4.25 of $5.00</a>" in composer
    reply(person, "0.75")  # at the limit the refusal speaks instead
    page = text(browser.get(URL))
    assert "spend-warning" not in page and '<strong id="budget-left">$0 left of $5.00</strong>' in page
