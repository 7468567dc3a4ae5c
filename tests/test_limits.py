"""Monthly budgets, concurrent replies and messages per minute: refused before any upstream request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.utils import timezone

from chat.costs import limits
from chat.models import Conversation, Message, Role, SpendingLimit, Status
from tests.conftest import ChatClient
from tests.fake_upstream import Scenario


def spent(user: Any, cost: str, *, when: datetime | None = None) -> Message:
    """A finished reply of `user` that cost `cost`, created now or at `when`."""
    conversation = Conversation.objects.create(user=user, model="openai:gpt-4o-mini")
    reply = Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        status=Status.COMPLETED,
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=10,
        cost=Decimal(cost),
    )
    if when:
        Message.objects.filter(pk=reply.pk).update(created_at=when)
    return reply


def replies(user: Any, count: int, *, status: Status, ago: timedelta = timedelta(0), role: Role = Role.ASSISTANT):
    conversation = Conversation.objects.create(user=user, model="openai:gpt-4o-mini")
    made = [Message.objects.create(conversation=conversation, role=role, status=status) for _ in range(count)]
    when = timezone.now() - ago
    Message.objects.filter(pk__in=[m.pk for m in made]).update(created_at=when, checkpoint_at=when)
    return made


@pytest.fixture
def person(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="payer", password="a-long-test-password")


pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("budget", "refused"), [(None, False), ("2.00", False), ("1.50", True), ("1.00", True)])
def test_the_default_budget_refuses_once_this_months_stored_costs_reach_it(settings, person, budget, refused) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = budget
    spent(person, "1.00")
    spent(person, "0.50")
    refusal = limits.refusal(person)
    assert (refusal is not None) is refused
    if refused:
        assert "monthly spending limit" in refusal.message and "$1.50" in refusal.message
        seconds_left = (limits.next_month_start() - datetime.now(UTC)).total_seconds()
        assert abs(refusal.retry_after - seconds_left) < 5


def test_last_months_spend_does_not_count(settings, person) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "1"
    spent(person, "50", when=limits.month_start() - timedelta(seconds=1))
    assert limits.month_spend(person).spent == 0
    assert limits.refusal(person) is None


def test_a_users_own_limit_wins_over_the_default_and_blank_means_no_limit(settings, person) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "1"
    spent(person, "2")
    assert limits.refusal(person) is not None
    own = SpendingLimit.objects.create(user=person, monthly_usd=Decimal("10"))
    assert limits.month_spend(person) == limits.Spend(spent=Decimal(2), limit=Decimal(10))
    assert limits.refusal(person) is None
    own.monthly_usd = None
    own.save()
    assert limits.month_spend(person).limit is None
    assert limits.refusal(person) is None
    own.monthly_usd = Decimal("2")
    own.save()
    assert limits.refusal(person) is not None


def test_the_months_spend_is_one_query(person, django_assert_num_queries) -> None:
    spent(person, "0.25")
    with django_assert_num_queries(1):
        assert limits.month_spend(person).spent == Decimal("0.25")


def test_the_spend_is_exact_to_the_costs_last_digit(person, django_user_model) -> None:
    # SQLite returns a sum of decimals as a float: 0.1 + 0.2 must still read back as 0.3.
    for cost in ("0.1", "0.2", "0.0000000001"):
        spent(person, cost)
    spent(django_user_model.objects.create_user(username="someone-else"), "7")
    assert limits.month_spend(person).spent == Decimal("0.3000000001")


def test_a_send_is_checked_against_every_limit_in_one_query(settings, person, django_assert_num_queries) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "5"
    settings.CHAT_MESSAGES_PER_MINUTE = 10
    SpendingLimit.objects.create(user=person, monthly_usd=Decimal("3.5"))
    spent(person, "1.25")
    replies(person, 2, status=Status.STREAMING)
    with django_assert_num_queries(1):
        standing = limits.check(person)
    assert standing == limits.Standing(spend=limits.Spend(spent=Decimal("1.25"), limit=Decimal("3.5")), refusal=None)


def test_concurrent_replies_count_live_ones_only(settings, person, django_user_model) -> None:
    settings.CHAT_MAX_CONCURRENT_REPLIES = 2
    settings.CHAT_INTERRUPTED_AFTER = 30
    replies(person, 1, status=Status.STREAMING)
    replies(person, 1, status=Status.STREAMING, ago=timedelta(minutes=5))  # a dead worker's row
    replies(person, 3, status=Status.QUEUED, ago=timedelta(minutes=10))  # pages that never opened the stream
    replies(person, 3, status=Status.COMPLETED)
    other = django_user_model.objects.create_user(username="other")
    replies(other, 3, status=Status.STREAMING)
    assert limits.refusal(person) is None
    replies(person, 1, status=Status.QUEUED)
    refusal = limits.refusal(person)
    assert refusal is not None
    assert refusal.retry_after == limits.CONCURRENCY_RETRY_AFTER
    assert "2 replies being written" in refusal.message


def test_messages_per_minute_count_the_replies_started_in_the_last_minute(settings, person) -> None:
    settings.CHAT_MESSAGES_PER_MINUTE = 3
    replies(person, 5, status=Status.COMPLETED, ago=timedelta(minutes=2))
    replies(person, 2, status=Status.COMPLETED, ago=timedelta(seconds=20))
    replies(person, 9, status=Status.COMPLETED, role=Role.USER, ago=timedelta(seconds=20))  # only replies count
    assert limits.refusal(person) is None
    replies(person, 1, status=Status.COMPLETED, ago=timedelta(seconds=20))
    refusal = limits.refusal(person)
    assert refusal is not None
    assert "too quickly" in refusal.message
    assert 38 <= refusal.retry_after <= 41  # the oldest of the three leaves the window in about 40 s


def test_zero_switches_the_rate_limits_off(settings, person) -> None:
    settings.CHAT_MAX_CONCURRENT_REPLIES = 0
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    replies(person, 50, status=Status.QUEUED)
    replies(person, 50, status=Status.COMPLETED)
    assert limits.refusal(person) is None


def render_spend(user: Any) -> str:
    request = RequestFactory().get("/")
    request.user = user
    return " ".join(render_to_string("chat/spend.html", request=request).split())


def test_the_composer_shows_this_months_spend_and_the_limit(settings, person) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = None
    html = render_spend(person)
    assert html.startswith('<p class="spend" id="spend"') and html.endswith(">This month: $0</a> </p>")
    assert '<a href="/chat/usage/"' in html  # the figure opens the Usage page
    spent(person, "0.004")
    assert ">This month: $0.004</a>" in render_spend(person)  # a small spend is shown, not rounded away
    spent(person, "1.496")
    settings.CHAT_MONTHLY_BUDGET_USD = "5"
    assert ">This month: $1.50 of $5.00</a>" in render_spend(person)
    SpendingLimit.objects.create(user=person, monthly_usd=Decimal("1.25"))
    html = render_spend(person)
    assert "This month: $1.50 of $1.25 — limit reached" in html and 'class="spend over"' in html


def test_the_spend_line_is_empty_for_an_anonymous_visitor() -> None:
    from django.contrib.auth.models import AnonymousUser

    assert render_spend(AnonymousUser()) == ""


# Through the live server: the refusal is an HTTP answer and the simulator hears nothing.

live_db = pytest.mark.django_db(transaction=True)


def send_refused(chat: ChatClient, sim, conversation: Conversation, **kwargs: Any):
    before = Message.objects.count()
    response = chat.send(conversation, "Will this be refused?", **kwargs)
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert Message.objects.count() == before, "a refused send must store nothing"
    assert sim.log == [], "a refused send must make no upstream request"
    return response


@live_db
def test_a_send_over_the_budget_is_refused_before_any_upstream_request(chat: ChatClient, sim) -> None:
    SpendingLimit.objects.create(user=chat.user, monthly_usd=Decimal("0.01"))
    spent(chat.user, "0.02")
    conversation = chat.conversation()
    response = send_refused(chat, sim, conversation)
    assert "You have reached your monthly spending limit ($0.02 of $0.01)" in response.text
    assert 'id="composer"' in response.text and "Will this be refused?" in response.text  # the text is kept
    assert response.headers["HX-Retarget"] == "#composer"


@live_db
def test_a_page_post_over_the_budget_gets_the_page_with_the_error(chat: ChatClient, sim) -> None:
    SpendingLimit.objects.create(user=chat.user, monthly_usd=Decimal("0"))
    conversation = chat.conversation(title="Budget page")
    response = send_refused(chat, sim, conversation, htmx=False)
    assert "<html" in response.text and "Budget page" in response.text  # the whole page, not a fragment
    assert "monthly spending limit" in response.text


@live_db
def test_a_send_beyond_the_concurrent_replies_is_refused_before_any_upstream_request(
    chat: ChatClient, sim, settings
) -> None:
    # Queued replies created just now hold a slot, like pages that are about to open their streams.
    replies(chat.user, settings.CHAT_MAX_CONCURRENT_REPLIES, status=Status.QUEUED)
    response = send_refused(chat, sim, chat.conversation())
    assert response.headers["Retry-After"] == str(limits.CONCURRENCY_RETRY_AFTER)
    assert "replies being written" in response.text
    Message.objects.filter(status=Status.QUEUED).update(status=Status.CANCELLED)  # nothing left to settle


@live_db
def test_a_send_beyond_the_messages_per_minute_is_refused_before_any_upstream_request(
    chat: ChatClient, sim, settings
) -> None:
    replies(chat.user, settings.CHAT_MESSAGES_PER_MINUTE, status=Status.COMPLETED)
    response = send_refused(chat, sim, chat.conversation())
    assert "too quickly" in response.text
    assert int(response.headers["Retry-After"]) <= 60


@live_db
def test_a_reply_already_running_finishes_when_the_budget_runs_out(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(input_tokens=1000, output_tokens=20))
    conversation = chat.conversation()
    reply = chat.ask(conversation)
    SpendingLimit.objects.create(user=chat.user, monthly_usd=Decimal("0.0001"))
    stream = chat.stream(reply)
    reply.refresh_from_db()
    assert stream.names()[-1] == "done"
    assert reply.status == Status.COMPLETED and reply.cost == Decimal("0.000162")  # 1000 at $0.15/M + 20 at $0.60/M
    sim.reset()
    send_refused(chat, sim, conversation)
