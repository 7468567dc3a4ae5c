"""The admin: conversations and messages with their costs, the cost report, its CSV, and escaping everywhere."""

from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from chat.models import Conversation, Message, ModelPrice, Role, SpendingLimit, Status

pytestmark = pytest.mark.django_db

HOSTILE_USER = "<script>alert('user')</script>"
HOSTILE_TITLE = "<img src=x onerror=alert('title')>"
HOSTILE_CONTENT = "<script>alert('reply')</script>"
HOSTILE_MODEL = "<b>evil</b>"
REPORT = "/admin/chat/message/report/"
OCTOBER = {"since": "2026-10-01", "until": "2026-10-31"}


@dataclass
class Data:
    ann: Any
    ben: Any
    eve: Any
    convs: dict[str, Conversation]


def reply(conversation: Conversation, day: date | datetime, *, cost: str | None, model: str = "", **fields: Any):
    provider, _, name = (model or conversation.model).partition(":")
    question = Message.objects.create(conversation=conversation, role=Role.USER, status=Status.COMPLETED, content="Q?")
    answer = Message.objects.create(
        conversation=conversation,
        role=Role.ASSISTANT,
        provider=provider,
        model=name,
        cost=None if cost is None else Decimal(cost),
        **{"status": Status.COMPLETED, "duration_ms": 900, "content": "An answer.", **fields},
    )
    when = day if isinstance(day, datetime) else datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    Message.objects.filter(pk__in=[question.pk, answer.pk]).update(created_at=when)
    return answer


@pytest.fixture
def data(django_user_model: Any) -> Data:
    return october(django_user_model)


def october(django_user_model: Any) -> Data:
    """Replies with hand-picked costs in October 2026, and two just outside it."""
    ann = django_user_model.objects.create_user(username="ann")
    ben = django_user_model.objects.create_user(username="ben")
    eve = django_user_model.objects.create_user(username=HOSTILE_USER)
    convs = {
        "ann-mini": Conversation.objects.create(user=ann, model="openai:gpt-4o-mini", title="Ann mini"),
        "ann-claude": Conversation.objects.create(user=ann, model="anthropic:claude-sonnet-4-5", title="Ann claude"),
        "ben-mini": Conversation.objects.create(user=ben, model="openai:gpt-4o-mini", title="Ben mini"),
        "ben-llama": Conversation.objects.create(user=ben, model="openai:local-llama", title="Ben llama"),
        "eve": Conversation.objects.create(user=eve, model="anthropic:claude-sonnet-4-5", title=HOSTILE_TITLE),
    }
    tokens = {"input_tokens": 1200, "output_tokens": 40, "cache_read_tokens": 1000, "usage_source": "provider"}
    reply(convs["ann-mini"], date(2026, 10, 5), cost="0.000129", **tokens, stop_reason="stop")
    reply(convs["ann-claude"], date(2026, 10, 6), cost="0.00372", input_tokens=2530, output_tokens=77)
    reply(convs["ben-mini"], date(2026, 10, 6), cost="1.25", input_tokens=5_000_000, output_tokens=833_333)
    reply(convs["ben-llama"], date(2026, 10, 7), cost=None, input_tokens=100, output_tokens=10)  # no price
    reply(convs["eve"], date(2026, 10, 7), cost="0.5", content=HOSTILE_CONTENT, status=Status.FAILED, error="cut")
    eve_conv = convs["eve"]
    reply(eve_conv, date(2026, 10, 7), cost=None, model=f"openai:{HOSTILE_MODEL}", input_tokens=1, output_tokens=1)
    reply(convs["ann-mini"], date(2026, 10, 7), cost=None, status=Status.FAILED, error="bad key")  # usage unknown
    reply(convs["ann-mini"], date(2026, 10, 7), cost=None, status=Status.CANCELLED, duration_ms=None)  # never ran
    reply(convs["ann-mini"], date(2026, 9, 30), cost="100")  # outside the period
    reply(convs["ann-mini"], datetime(2026, 11, 1, 0, 0, tzinfo=UTC), cost="200")  # outside: the next day starts
    return Data(ann=ann, ben=ben, eve=eve, convs=convs)


def october_costs(**filters: Any) -> Decimal:
    rows = Message.objects.filter(created_at__date__range=(date(2026, 10, 1), date(2026, 10, 31)), **filters)
    return sum((m.cost for m in rows if m.cost is not None), Decimal(0))


def module(page: str, module_id: str) -> str:
    start = page.index(f'id="{module_id}"')
    return page[start : page.index("</table>", start)]


def rows_of(page: str, module_id: str, *, exact: bool = True) -> dict[str, list[str]]:
    """The table of one report module as text cells by row key, without the $ and thousands separators;
    a cost cell as its title has it (the exact figure), or with exact=False as the page shows it."""
    rows = {}
    for key, body in re.findall(r'<tr data-key="([^"]*)">(.*?)</tr>', module(page, module_id), re.S):
        cells = []
        for attributes, text in re.findall(r"<t[hd]([^>]*)>(.*?)</t[hd]>", body, re.S):
            title = re.search(r'title="([^"]*)"', attributes)
            cells.append(html.unescape(title[1] if title and exact else re.sub(r"<[^>]+>", "", text)).strip())
        rows[html.unescape(key)] = [cell.replace(",", "").lstrip("$") for cell in cells[1:]]
    return rows


def assert_escaped(page: str) -> None:
    for raw in (HOSTILE_USER, HOSTILE_TITLE, HOSTILE_CONTENT, HOSTILE_MODEL):
        assert raw not in page
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>evil" not in page


def test_the_conversation_list_annotates_messages_tokens_and_cost(admin_client: Client, data: Data) -> None:
    response = admin_client.get("/admin/chat/conversation/")
    assert response.status_code == 200
    by_title = {c.title: c for c in response.context["cl"].result_list}
    ann_claude = by_title["Ann claude"]
    assert (ann_claude.message_count, ann_claude.total_tokens, ann_claude.total_cost) == (2, 2607, Decimal("0.00372"))
    ann_mini = by_title["Ann mini"]
    assert ann_mini.message_count == 10
    assert ann_mini.total_cost == Decimal("300.000129") == sum(m.cost or 0 for m in ann_mini.messages.all())
    assert sum(c.total_cost or 0 for c in by_title.values()) == sum(m.cost or 0 for m in Message.objects.all())
    page = response.content.decode()
    # Rounded for reading, every stored digit in the title.
    assert '<span title="$0.00372">$0.0037</span>' in page and '<span title="$300.000129">$300.00</span>' in page
    assert_escaped(page)
    assert html.escape(HOSTILE_TITLE) in page


def test_a_conversation_shows_its_messages_inline_and_read_only(admin_client: Client, data: Data) -> None:
    response = admin_client.get(f"/admin/chat/conversation/{data.convs['eve'].pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert_escaped(page)
    assert html.escape(HOSTILE_CONTENT, quote=False) in page.replace("&#x27;", "'")
    assert 'name="messages-0-content"' not in page and "Save" not in page  # nothing is editable
    assert ">$0.50</span>" in page and "no price for this model" in page


@pytest.mark.parametrize(
    ("query", "filters"),
    [
        ("provider__exact=anthropic", {"provider": "anthropic"}),
        ("model__exact=gpt-4o-mini", {"model": "gpt-4o-mini"}),
        ("status__exact=failed", {"status": "failed"}),
        ("stop_reason__exact=stop", {"stop_reason": "stop"}),
        ("role__exact=assistant", {"role": "assistant"}),
        (
            "created_at__gte=2026-10-06T00:00:00%2B00:00&created_at__lt=2026-10-07T00:00:00%2B00:00",
            {"created_at__date": date(2026, 10, 6)},
        ),
        ("created_at__year=2026&created_at__month=10", {"created_at__month": 10}),
        ("q=answer", {"content__icontains": "answer"}),
    ],
)
def test_the_message_list_filters(admin_client: Client, data: Data, query: str, filters: dict[str, Any]) -> None:
    response = admin_client.get(f"/admin/chat/message/?{query}")
    assert response.status_code == 200
    assert response.context["cl"].result_count == Message.objects.filter(**filters).count() > 0
    assert_escaped(response.content.decode())


def test_the_message_list_filters_by_user(admin_client: Client, data: Data) -> None:
    response = admin_client.get(f"/admin/chat/message/?conversation__user__id__exact={data.ben.pk}")
    assert response.context["cl"].result_count == Message.objects.filter(conversation__user=data.ben).count() == 4


def test_a_message_page_shows_every_field_escaped_and_read_only(admin_client: Client, data: Data) -> None:
    message = Message.objects.get(content=HOSTILE_CONTENT)
    page = admin_client.get(f"/admin/chat/message/{message.pk}/change/").content.decode()
    assert_escaped(page)
    for label in ("Input tokens", "Cache read tokens", "Usage source", "Cost", "Ttft ms", "Duration ms"):
        assert label in page
    assert admin_client.get("/admin/chat/message/add/").status_code == 403


def report(client: Client, **params: str) -> str:
    response = client.get(REPORT, {**OCTOBER, **params})
    assert response.status_code == 200
    return response.content.decode()


def test_the_cost_report_totals_equal_the_sum_of_the_message_costs(admin_client: Client, data: Data) -> None:
    page = report(admin_client)
    total = october_costs()
    assert total == Decimal("1.753849")  # 0.000129 + 0.00372 + 1.25 + 0.5, by hand
    assert re.search(r'id="total-cost" title="\$1\.753849">\$1\.75<', page)
    assert re.search(r'id="total-replies">8<', page)  # the cancelled-before-start reply is a reply, just free
    assert re.search(r'id="total-without-cost">3<', page)  # no price twice, usage unknown once

    by_user = rows_of(page, "by-user")
    assert by_user["ann"][3] == "0.003849" == f"{october_costs(conversation__user=data.ann):.6f}"
    assert by_user["ben"][3] == "1.250000" == f"{october_costs(conversation__user=data.ben):.6f}"
    assert by_user[HOSTILE_USER][3] == "0.500000"
    tokens_in, tokens_out = 1200 + 2530 + 5_000_000 + 100 + 1, 40 + 77 + 833_333 + 10 + 1
    assert by_user["Total"] == ["8", str(tokens_in), str(tokens_out), "1.753849", "3"]
    assert list(by_user) == ["ben", HOSTILE_USER, "ann", "Total"]  # most expensive first

    by_model = rows_of(page, "by-model")
    assert by_model["openai:gpt-4o-mini"][3] == "1.250129"
    assert by_model["anthropic:claude-sonnet-4-5"][3] == "0.503720"
    assert by_model["openai:local-llama"] == ["1", "100", "10", "0.000000", "1"]
    assert by_model["Total"][3] == "1.753849"
    shown = rows_of(page, "by-model", exact=False)  # the page's one money format; the exact figure in the title
    assert shown["openai:gpt-4o-mini"][3] == "1.25" and shown["anthropic:claude-sonnet-4-5"][3] == "0.50"
    assert shown["openai:local-llama"][3] == "0" and shown["Total"][3] == "1.75"
    assert rows_of(page, "by-user", exact=False)["ann"][3] == "0.0038"

    by_day = rows_of(page, "by-day")
    assert [k for k in by_day] == ["2026-10-05", "2026-10-06", "2026-10-07", "Total"]
    assert [by_day[k][3] for k in by_day] == ["0.000129", "1.253720", "0.500000", "1.753849"]

    # The chart has a bar for every day of October; its labels and values are the page's.
    assert page.count('<rect class="bar"') == 31
    assert "<title>2026-10-06: $1.25</title>" in page and "<title>2026-10-05: $0.00013</title>" in page
    assert "<title>2026-10-01: $0</title>" in page
    assert_escaped(page)


def test_every_row_of_the_report_links_to_the_replies_it_adds_up(admin_client: Client, data: Data) -> None:
    page = report(admin_client)
    for by in ("day", "user", "model"):
        links = re.findall(r'<tr data-key="[^"]*">\s*<th scope="row"><a href="([^"]+)">', module(page, f"by-{by}"))
        replies = [int(cells[0]) for key, cells in rows_of(page, f"by-{by}").items() if key != "Total"]
        assert len(links) == len(replies) > 1
        for link, count in zip(links, replies, strict=True):
            response = admin_client.get(html.unescape(link))
            assert response.status_code == 200 and "e=1" not in response.get("Location", "")
            assert response.context["cl"].result_count == count, link


def test_the_report_lists_replies_without_a_cost_with_the_reason(admin_client: Client, data: Data) -> None:
    section = module(report(admin_client), "without-cost")
    assert "Replies without a cost (3)" in section
    assert section.count("no price for this model") == 2 and section.count("usage unknown") == 1
    assert "openai:local-llama" in section and html.escape(f"openai:{HOSTILE_MODEL}") in section
    never_ran = Message.objects.get(status=Status.CANCELLED)
    assert f"/admin/chat/message/{never_ran.pk}/change/" not in section
    assert_escaped(section)


@pytest.mark.parametrize("by", ["day", "user", "model"])
def test_the_csv_matches_the_page(admin_client: Client, data: Data, by: str) -> None:
    page_rows = rows_of(report(admin_client), f"by-{by}")
    response = admin_client.get(REPORT, {**OCTOBER, "export": by})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert f"costs-by-{by}-2026-10-01-to-2026-10-31.csv" in response["Content-Disposition"]
    header, *lines = list(csv.reader(io.StringIO(response.content.decode())))
    tokens = ["input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"]
    assert header == [by, "replies", *tokens, "cost_usd", "without_cost"]
    csv_rows = {key.removeprefix("'"): [n, i, o, cost, w] for key, n, i, _cr, _cw, o, cost, w in lines}
    assert csv_rows == page_rows
    assert csv_rows["Total"][3] == "1.753849"


def test_the_csv_keeps_a_spreadsheet_from_running_a_username(admin_client: Client, data: Data) -> None:
    data.ben.username = "=HYPERLINK(1)"
    data.ben.save()
    lines = admin_client.get(REPORT, {**OCTOBER, "export": "user"}).content.decode().splitlines()
    assert "'=HYPERLINK(1),2," in "\n".join(lines)


def test_a_bad_period_says_so_and_shows_this_month(admin_client: Client, data: Data) -> None:
    page = report(admin_client, since="2026-10-31", until="2026-10-01")
    assert "The period must start before it ends." in page
    today = datetime.now(UTC).date()
    assert f"manage.py chat_costs --since {today.replace(day=1):%Y-%m-%d} --until {today:%Y-%m-%d}" in page


def test_the_report_needs_the_permission_to_view_messages(client: Client, data: Data, django_user_model) -> None:
    assert client.get(REPORT).status_code == 302  # to the admin login
    staff = django_user_model.objects.create_user(username="staff", password="x-long-password-1", is_staff=True)
    client.force_login(staff)
    assert client.get(REPORT).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_message"))
    assert client.get(REPORT, OCTOBER).status_code == 200


def test_the_admin_index_and_message_list_link_to_the_report(admin_client: Client, data: Data) -> None:
    assert f'href="{REPORT}"' in admin_client.get("/admin/").content.decode()
    assert f'href="{REPORT}"' in admin_client.get("/admin/chat/message/").content.decode()


def test_spending_limits_and_prices_have_their_admin_pages(admin_client: Client, data: Data) -> None:
    SpendingLimit.objects.create(user=data.ann, monthly_usd=Decimal("5"))
    SpendingLimit.objects.create(user=data.eve, monthly_usd=None)
    page = admin_client.get("/admin/chat/spendinglimit/").content.decode()
    assert "$5.00" in page and "no limit" in page and "default for everybody else: no limit" in page
    assert_escaped(page)
    ModelPrice.objects.create(
        provider="openai", model="gpt-4o-mini", effective_from=date(2026, 1, 1), input_per_mtok=1, output_per_mtok=2
    )
    page = admin_client.get("/admin/chat/modelprice/").content.decode()
    assert "$0.15/input MTok" in page  # the snapshot's price beside the operator's
    assert admin_client.get("/admin/chat/modelprice/add/").status_code == 200


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("9999-12-31", "9999-12-31", "Dates must be between 2000-01-01 and 2999-12-31."),
        ("0001-01-01", "0001-01-01", "Dates must be between 2000-01-01 and 2999-12-31."),
        ("2026-10-31", "2026-10-01", "The period must start before it ends."),
        ("2000-01-01", "2999-12-31", "Choose at most 366 days"),
    ],
)
def test_a_period_out_of_bounds_is_a_form_error_not_a_500(admin_client: Client, data: Data, since, until, message):
    page = report(admin_client, since=since, until=until)
    assert message in page and "Showing this month instead." in page
    export = admin_client.get(REPORT, {"since": since, "until": until, "export": "day"})
    assert export.status_code == 200  # this month's CSV, as the page shows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "9999-12-31", "--until", "9999-12-31"], "Dates must be between 2000-01-01 and 2999-12-31."),
        (["--since", "9999-12-31"], "Dates must be between 2000-01-01 and 2999-12-31."),
        (["--since", "1999-12-31", "--until", "2026-10-01"], "Dates must be between 2000-01-01 and 2999-12-31."),
        (["--since", "2026-10-31", "--until", "2026-10-01"], "The period must start before it ends."),
    ],
)
def test_chat_costs_says_what_is_wrong_with_a_period_out_of_bounds(data: Data, args, message) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("chat_costs", *args, stdout=io.StringIO())


def test_chat_costs_takes_the_widest_period_there_is(data: Data) -> None:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("chat_costs", "--since", "2000-01-01", "--until", "2999-12-31", "--by", "model", stdout=out)
    assert "Costs per model, 2000-01-01 to 2999-12-31 (UTC)" in out.getvalue()


def test_every_admin_page_has_the_chat_favicon(django_user_model: Any) -> None:
    icon = '<link rel="icon" href="/static/chat/icon.svg" type="image/svg+xml">'
    assert icon in Client().get("/admin/login/").content.decode()  # before logging in, too
    admin = Client()
    admin.force_login(django_user_model.objects.create_superuser(username="root", password="a-long-admin-password"))
    for path in ("/admin/", "/admin/chat/message/", "/admin/chat/message/report/", "/admin/chat/spendinglimit/add/"):
        response = admin.get(path)
        assert response.status_code == 200 and response.content.decode().count(icon) == 1, path
    # The chat's add pages are closed (replies are written by the app): our 403 page says so, and where to go.
    refused = admin.get("/admin/chat/conversation/add/")
    assert refused.status_code == 403 and "Go to your chats" in refused.content.decode()


# Groups: the chat policy inline, and the report per group.

GROUP_MODELS = ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "demo:demo"]


def policy_post(name: str, **policy: Any) -> dict[str, Any]:
    prefix = "chat_policy"
    return {
        "name": name,
        f"{prefix}-TOTAL_FORMS": "1",
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1",
        **{f"{prefix}-0-{field}": value for field, value in policy.items()},
    }


def test_a_group_gets_its_budget_and_models_in_the_group_admin(admin_client: Client, settings) -> None:
    from django.contrib.auth.models import Group

    from chat.models import GroupPolicy

    settings.CHAT_MODELS = GROUP_MODELS
    page = admin_client.get("/admin/auth/group/add/").content.decode()
    assert "Chat budget and models" in page
    assert page.count('type="checkbox" name="chat_policy-0-models"') == 3 and "Demo model (offline, no API key)" in page
    response = admin_client.post(
        "/admin/auth/group/add/",
        policy_post("Research", monthly_usd="50", models=["openai:gpt-4o-mini", "demo:demo"]),
    )
    assert response.status_code == 302, response.content.decode()
    policy = GroupPolicy.objects.get(group__name="Research")
    assert (policy.monthly_usd, policy.models) == (Decimal(50), ["openai:gpt-4o-mini", "demo:demo"])
    listing = admin_client.get("/admin/auth/group/").content.decode()
    assert "$50.00" in listing and "openai:gpt-4o-mini, demo:demo" in listing
    # A model that is not offered, and a negative budget, are refused with a clear error.
    response = admin_client.post("/admin/auth/group/add/", policy_post("Bad", models=["openai:gpt-5-pro"]))
    assert response.status_code == 200
    assert (
        "openai:gpt-5-pro is not one of the models offered here (CHAT_MODELS): untick it." in response.content.decode()
    )
    response = admin_client.post("/admin/auth/group/add/", policy_post("Negative", monthly_usd="-1"))
    assert "A budget cannot be negative" in response.content.decode()
    assert not Group.objects.filter(name__in=["Bad", "Negative"]).exists()


def with_groups(data: Data) -> None:
    from django.contrib.auth.models import Group

    from chat.models import GroupPolicy

    research = Group.objects.create(name="Research")
    research.user_set.add(data.ann, data.ben)
    GroupPolicy.objects.create(group=research, monthly_usd=Decimal(50))
    Group.objects.create(name=HOSTILE_TITLE).user_set.add(data.ann, data.eve)
    Group.objects.create(name="Nobody")


def test_the_report_has_totals_per_group_checked_by_hand(admin_client: Client, data: Data) -> None:
    with_groups(data)
    page = report(admin_client)
    by_group = rows_of(page, "by-group")
    # By hand, October: ann $0.000129 + $0.00372 = $0.003849 (4 replies, 1 without a cost), ben $1.25 (2, 1),
    # eve $0.5 (2, 1). Research = ann + ben = $1.253849 (6, 2), budget $50; the hostile group = ann + eve =
    # $0.503849 (6, 2), no budget. Their sum, $1.757698, is more than the total ($1.753849): ann is in both.
    tokens_in, tokens_out = 1200 + 2530 + 5_000_000 + 100, 40 + 77 + 833_333 + 10
    assert by_group["Research"] == ["6", str(tokens_in), str(tokens_out), "1.253849", "2", "50.000000"]
    assert by_group[HOSTILE_TITLE][3:] == ["0.503849", "2", "none"]
    assert "Total" not in by_group and "Nobody" not in by_group  # overlapping rows: no total (it would be 1.757698)
    shown = rows_of(page, "by-group", exact=False)  # the one money format on the page, the exact figure in its title
    assert shown["Research"][3:] == ["1.25", "2", "50.00"] and shown[HOSTILE_TITLE][3] == "0.50"
    assert by_group["Research"][3] == f"{october_costs(conversation__user__in=[data.ann, data.ben]):.6f}"
    assert by_group[HOSTILE_TITLE][3] == f"{october_costs(conversation__user__in=[data.ann, data.eve]):.6f}"
    assert "rows per group can overlap" in page
    assert_escaped(page)
    # Each row links to its group's admin page (members, budget, models).
    links = re.findall(r'<th scope="row"><a href="(/admin/auth/group/\d+/change/)">', module(page, "by-group"))
    assert len(links) == 2 and all(admin_client.get(link).status_code == 200 for link in links)


def test_the_group_csv_matches_the_page_with_its_budget(admin_client: Client, data: Data) -> None:
    with_groups(data)
    page_rows = rows_of(report(admin_client), "by-group")
    response = admin_client.get(REPORT, {**OCTOBER, "export": "group"})
    assert "costs-by-group-2026-10-01-to-2026-10-31.csv" in response["Content-Disposition"]
    header, *lines = list(csv.reader(io.StringIO(response.content.decode())))
    tokens = ["input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"]
    assert header == ["group", "replies", *tokens, "cost_usd", "without_cost", "budget_usd"]
    csv_rows = {key: [n, i, o, cost, w, b] for key, n, i, _cr, _cw, o, cost, w, b in lines}
    assert csv_rows["Research"][5] == "50.000000" and csv_rows[HOSTILE_TITLE][5] == "" and "Total" not in csv_rows
    assert csv_rows == {**page_rows, HOSTILE_TITLE: [*page_rows[HOSTILE_TITLE][:5], ""]}  # "none" on the page
