"""Groups' budgets and models: every applicable budget applies (a group's is shared by its members), a model must
be on the list of every group of the user's that has one, and a refusal comes before any upstream request."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from chat.costs import limits, reports
from chat.forms import MessageForm, SettingsForm
from chat.models import Conversation, GroupPolicy, Message, SpendingLimit
from chat.streaming import catalog
from tests.conftest import MODELS, ChatClient, stored_exchange
from tests.test_limits import render_spend, spent

pytestmark = pytest.mark.django_db

CHEAP = ["openai:gpt-4o-mini", "demo:demo"]
HTMX = {"HX-Request": "true"}


def group(name: str, *members: Any, budget: str | None = None, models: list[str] | None = None) -> Group:
    made = Group.objects.create(name=name)
    made.user_set.add(*members)
    if budget is not None or models is not None:
        GroupPolicy.objects.create(
            group=made, monthly_usd=None if budget is None else Decimal(budget), models=models or []
        )
    return made


@pytest.fixture(autouse=True)
def models(settings) -> None:
    """The live server's models, here too."""
    settings.CHAT_MODELS = MODELS.split(",")
    settings.CHAT_DEFAULT_MODEL = settings.CHAT_MODELS[0]


@pytest.fixture
def ann(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="ann", password="a-long-test-password")


@pytest.fixture
def ben(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="ben", password="a-long-test-password")


# The budget rule.


def test_a_user_in_no_group_has_their_own_budget_only_and_every_model(settings, ann) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "5"
    spent(ann, "1")
    standing = limits.check(ann)
    assert standing.spend == limits.Spend(spent=Decimal(1), limit=Decimal(5)) and standing.spend.groups == ()
    assert standing.refusal is None
    access = catalog.access_for(ann)
    assert [m.id for m in access.models()] == settings.CHAT_MODELS and access.default() == catalog.default_model()


def test_a_groups_budget_is_shared_by_its_members(settings, ann, ben, django_user_model) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = None
    group("Research", ann, ben, budget="10")
    spent(ann, "4")
    spent(ben, "5.5")
    spent(django_user_model.objects.create_user(username="outsider"), "100")  # not a member: not counted
    spent(ben, "50", when=limits.month_start() - timedelta(seconds=1))  # last month: not counted
    (research,) = limits.check(ann).spend.groups
    assert research == limits.Spend(spent=Decimal("9.5"), limit=Decimal(10), group="Research")
    assert limits.refusal(ann) is None
    spent(ben, "0.5")  # ben's reply takes the group to its budget: ann is refused too
    refusal = limits.refusal(ann)
    assert refusal is not None
    resets = limits.next_month_start()
    assert refusal.message == (
        f"Your group “Research” has reached its monthly budget ($10.00 of $10.00). "
        f"It resets on {resets.day} {resets:%B} (UTC)."
    )
    assert refusal.status == 429 and refusal.retry_after > 0


def test_in_two_groups_every_budget_applies_and_the_exhausted_one_is_named(settings, ann, ben) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = None
    group("Everyone", ann, ben, budget="100")
    group("Interns", ann, budget="2")
    group("Readers", ann, models=CHEAP)  # no budget: not a budget that applies
    spent(ben, "50")
    spent(ann, "1.99")
    budgets = limits.check(ann).spend.groups
    assert [(b.group, b.spent, b.limit) for b in budgets] == [
        ("Everyone", Decimal("51.99"), Decimal(100)),
        ("Interns", Decimal("1.99"), Decimal(2)),
    ]
    assert limits.refusal(ann) is None
    spent(ann, "0.01")
    assert "Your group “Interns” has reached its monthly budget ($2.00 of $2.00)" in limits.refusal(ann).message
    assert limits.refusal(ben) is None  # ben is not an intern, and Everyone has $48 left


def test_a_personal_limit_and_a_group_budget_both_apply(settings, ann) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "1"  # the default: replaced by ann's own limit, not by the group's
    SpendingLimit.objects.create(user=ann, monthly_usd=Decimal(20))
    group("Research", ann, budget="3")
    spent(ann, "2")
    assert limits.refusal(ann) is None
    spent(ann, "1")
    assert "Your group “Research”" in limits.refusal(ann).message  # $3 of the group's $3, $3 of ann's $20
    GroupPolicy.objects.update(monthly_usd=Decimal(50))
    SpendingLimit.objects.update(monthly_usd=Decimal(3))
    assert "You have reached your monthly spending limit ($3.00 of $3.00)" in limits.refusal(ann).message


def test_every_budget_is_read_in_the_one_query(settings, ann, ben, django_assert_num_queries) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "5"
    group("A", ann, ben, budget="10")
    group("B", ann, budget="7")
    spent(ann, "1.25")
    spent(ben, "2")
    with django_assert_num_queries(1):
        standing = limits.check(ann)
    assert [(b.group, b.spent, b.limit) for b in standing.spend.budgets] == [
        ("", Decimal("1.25"), Decimal(5)),
        ("A", Decimal("3.25"), Decimal(10)),
        ("B", Decimal("1.25"), Decimal(7)),
    ]


# The models rule.


def test_a_group_without_a_list_allows_every_model_and_one_with_a_list_restricts(ann) -> None:
    group("Everyone", ann, budget="100")
    assert catalog.access_for(ann).allows("anthropic:claude-sonnet-4-5")
    group("Interns", ann, models=CHEAP)
    access = catalog.access_for(ann)  # the intersection: Everyone allows all, Interns the cheap ones
    assert [m.id for m in access.models()] == ["openai:gpt-4o-mini", "demo:demo"]
    assert not access.allows("anthropic:claude-sonnet-4-5") and not access.allows("openai:unknown")
    assert access.why_not("anthropic:claude-sonnet-4-5") == (
        "claude-sonnet-4-5 (anthropic) is not available to your group “Interns”: choose another model in the picker."
    )


def test_two_lists_leave_the_models_on_both(ann) -> None:
    group("Interns", ann, models=CHEAP)
    group("Offline", ann, models=["demo:demo", "openai:local-llama"])
    assert [m.id for m in catalog.access_for(ann).models()] == ["demo:demo"]


def test_lists_with_nothing_in_common_leave_no_model_and_say_so(ann, client: Client) -> None:
    group("Interns", ann, models=["openai:gpt-4o-mini"])
    group("Offline", ann, models=["demo:demo"])
    access = catalog.access_for(ann)
    assert access.models() == [] and access.default() == ""
    assert access.why_not("demo:demo") == (
        "No model is available to you: your groups “Interns” and “Offline” have no model in common. "
        "Ask an administrator."
    )
    client.force_login(ann)
    conversation = Conversation.objects.create(user=ann, model="demo:demo")
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "<option" not in page and "No model is available to you" in page
    response = client.post(f"/chat/{conversation.pk}/messages/", {"text": "Hi"}, headers=HTMX)
    assert response.status_code == 400 and "No model is available to you" in response.content.decode()
    assert not Message.objects.exists()


def test_the_picker_offers_only_the_users_models_and_starts_on_an_allowed_one(ann, client: Client) -> None:
    group("Interns", ann, models=CHEAP)
    client.force_login(ann)
    conversation = Conversation.objects.create(user=ann, model="anthropic:claude-sonnet-4-5")  # forbidden now
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert '<option value="openai:gpt-4o-mini" selected>' in page and '<option value="demo:demo">' in page
    assert "claude-sonnet-4-5" not in page.split('name="model"')[1].split("</select>")[0]
    index = client.get("/chat/").content.decode()
    assert "anthropic:claude-sonnet-4-5" not in index and 'value="openai:gpt-4o-mini" selected' in index


def test_the_forms_refuse_a_forbidden_model_naming_the_group(ann) -> None:
    group("Interns", ann, models=CHEAP)
    access = catalog.access_for(ann)
    form = MessageForm({"text": "Hi", "model": "anthropic:claude-sonnet-4-5"}, access=access)
    assert not form.is_valid() and "your group “Interns”" in form.errors["model"][0]
    assert MessageForm({"text": "Hi", "model": "demo:demo"}, access=access).is_valid()
    settings_form = SettingsForm({"model": "anthropic:claude-sonnet-4-5"}, access=access)
    assert not settings_form.is_valid() and "your group “Interns”" in settings_form.errors["model"][0]
    assert MessageForm({"text": "Hi", "model": "anthropic:claude-sonnet-4-5"}).is_valid()  # no access: no group


def test_the_settings_view_will_not_switch_to_a_forbidden_model(ann, client: Client) -> None:
    group("Interns", ann, models=CHEAP)
    client.force_login(ann)
    conversation = Conversation.objects.create(user=ann, model="demo:demo")
    response = client.post(f"/chat/{conversation.pk}/settings/", {"model": "anthropic:claude-sonnet-4-5"})
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.model == "demo:demo"


def test_a_new_chat_with_a_forbidden_model_is_refused(ann, client: Client) -> None:
    group("Interns", ann, models=CHEAP)
    client.force_login(ann)
    response = client.post("/chat/new/", {"text": "Hi", "model": "anthropic:claude-sonnet-4-5"})
    assert response.status_code == 400 and "your group “Interns”" in response.content.decode()
    assert not Conversation.objects.exists()


# The composer's warnings.


def test_the_composer_warns_from_the_setting_for_a_group_budget_naming_the_group(settings, ann, ben) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = None
    settings.CHAT_BUDGET_WARNING_AT = 0.8
    group("Research", ann, ben, budget="50")
    spent(ben, "39.99")
    assert "spend-warning" not in render_spend(ann)  # 79 %
    spent(ann, "2.01")
    html = render_spend(ann)
    assert (
        '<p class="spend-warning" id="spend-warning" role="status">'
        "Your group “Research” has used 84% of its $50.00 monthly budget.</p>"
    ) in html
    assert ">This month: $2.01</a>" in html  # the month figure stays the user's own
    spent(ben, "8")
    assert "Your group “Research” has used all of its $50.00 monthly budget." in render_spend(ann)


def test_the_users_own_warning_and_a_groups_show_together(settings, ann) -> None:
    settings.CHAT_MONTHLY_BUDGET_USD = "5"
    group("Research", ann, budget="4.5")
    spent(ann, "4.25")
    html = render_spend(ann)
    assert "You have used 85% of your $5.00 monthly budget." in html
    assert "Your group “Research” has used 94% of its $4.50 monthly budget." in html
    assert html.count('id="spend-warning"') == 1


# The report per group.


def test_per_group_totals_equal_the_sums_of_the_members_stored_costs(ann, ben, django_user_model) -> None:
    """By hand: ann $1.25 + $0.10, ben $2.00, cat $0.50, dan (no group) $7. Research = ann + ben = $3.35;
    Interns = ann + cat = $1.85; the rows add up to $5.20, more than the $3.85 of group members, as ann is in both."""
    cat = django_user_model.objects.create_user(username="cat")
    dan = django_user_model.objects.create_user(username="dan")
    group("Research", ann, ben, budget="50")
    group("Interns", ann, cat, models=CHEAP)
    group("Empty", budget="1")
    for user, cost in [(ann, "1.25"), (ann, "0.10"), (ben, "2"), (cat, "0.5"), (dan, "7")]:
        spent(user, cost)
    period = reports.Period(since=limits.month_start().date(), until=limits.next_month_start().date())
    rows = {row.key: row for row in reports.totals(period, by="group")}
    assert list(rows) == ["Research", "Interns"]  # most expensive first; a group without replies has no row
    assert (rows["Research"].cost, rows["Research"].replies, rows["Research"].budget) == (Decimal("3.35"), 3, 50)
    assert (rows["Interns"].cost, rows["Interns"].replies, rows["Interns"].budget) == (Decimal("1.85"), 3, None)
    for name, row in rows.items():
        members = Group.objects.get(name=name).user_set.all()
        stored = Message.objects.filter(conversation__user__in=members, role="assistant")
        assert row.cost == sum(m.cost for m in stored) and row.replies == stored.count()
    assert reports.sum_of(rows.values()).cost == Decimal("5.20")


# Through the live server: refused with the simulator hearing nothing.

live_db = pytest.mark.django_db(transaction=True)


def post(chat: ChatClient, path: str, **data: str) -> Any:
    return chat.http.post(path, data=data, headers={"X-CSRFToken": chat.csrf, "HX-Request": "true"})


def refused(chat: ChatClient, sim, path: str, status: int, **data: str) -> str:
    before = Message.objects.count()
    response = post(chat, path, **data)
    assert response.status_code == status, response.text
    assert Message.objects.count() == before, "a refusal stores nothing"
    assert sim.log == [], "a refusal makes no upstream request"
    return response.text


@live_db
def test_a_send_with_a_forbidden_model_is_refused_before_any_upstream_request(chat: ChatClient, sim) -> None:
    group("Interns", chat.user, models=CHEAP)
    conversation = chat.conversation(model="anthropic:claude-sonnet-4-5")
    text = refused(chat, sim, f"/chat/{conversation.pk}/messages/", 400, text="Hi")  # the conversation's model
    assert "claude-sonnet-4-5 (anthropic) is not available to your group “Interns”" in text
    assert 'id="composer"' in text and "Hi</textarea>" in text  # the typed text is kept
    path = f"/chat/{chat.conversation().pk}/messages/"
    text = refused(chat, sim, path, 400, text="Hi", model="anthropic:claude-sonnet-4-5")  # the picker's
    assert "your group “Interns”" in text


@live_db
def test_a_send_over_a_group_budget_is_refused_before_any_upstream_request(chat: ChatClient, sim, ben) -> None:
    group("Research", chat.user, ben, budget="1")
    spent(ben, "1")
    conversation = chat.conversation()
    text = refused(chat, sim, f"/chat/{conversation.pk}/messages/", 429, text="Hi")
    assert "Your group “Research” has reached its monthly budget ($1.00 of $1.00)" in text


def actions(conversation: Conversation) -> dict[str, tuple[str, dict[str, str]]]:
    """Retry, Regenerate, Continue and Edit on a conversation's latest exchange (a reply cut off at the limit)."""
    reply = stored_exchange(conversation, stop_reason="length", input_tokens=5, output_tokens=5, cost=Decimal(0))
    return {
        "regenerate": (f"/chat/replies/{reply.pk}/regenerate/", {}),
        "continue": (f"/chat/replies/{reply.pk}/continue/", {}),
        "edit": (f"/chat/messages/{reply.question.pk}/edit/", {"text": "Edited"}),
    }


@live_db
def test_retry_regenerate_continue_and_edit_are_refused_for_a_forbidden_model(chat: ChatClient, sim) -> None:
    conversation = chat.conversation(model="anthropic:claude-sonnet-4-5")
    paths = actions(conversation)
    group("Interns", chat.user, models=CHEAP)  # the model was allowed when the reply was written
    for name, (path, data) in paths.items():
        text = refused(chat, sim, path, 400, **data)
        assert "is not available to your group “Interns”: choose another model in the picker." in text, name


@live_db
def test_retry_regenerate_continue_and_edit_are_refused_over_a_group_budget(chat: ChatClient, sim, ben) -> None:
    conversation = chat.conversation()
    paths = actions(conversation)
    group("Research", chat.user, ben, budget="0.5")
    spent(ben, "0.75")
    for name, (path, data) in paths.items():
        text = refused(chat, sim, path, 429, **data)
        assert "Your group “Research” has reached its monthly budget ($0.75 of $0.50)" in text, name
