"""The sidebar's groups: Today, Yesterday, Previous 7 days, Older, by the day in the tz cookie's time zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from chat import sidebar
from chat.models import Conversation
from chat.timezone import zone_named

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
# Fourteen hours ahead of UTC: its day and UTC's differ for ten hours of every day and by a date at midnight.
KIRITIMATI = "Pacific/Kiritimati"


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user(username="owner", password="a-long-test-password")


def client_in(owner, zone: str | None) -> Client:
    client = Client()
    client.force_login(owner)
    if zone is not None:
        client.cookies["tz"] = zone
    return client


def conversation_at(owner, title: str, moment: datetime) -> Conversation:
    conversation = Conversation.objects.create(user=owner, model="demo:demo", title=title)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=moment)  # auto_now bypassed
    return conversation


def midnight(zone: ZoneInfo, now: datetime) -> datetime:
    """The start of the local day that contains `now`, in `zone`."""
    local = now.astimezone(zone)
    return datetime(local.year, local.month, local.day, tzinfo=zone)


def expected_group(moment: datetime, zone: ZoneInfo, now: datetime) -> str:
    # Written apart from chat/sidebar.py: the calendar days between the moment's local date and today's.
    days = (now.astimezone(zone).date() - moment.astimezone(zone).date()).days
    return "Today" if days <= 0 else "Yesterday" if days == 1 else "Previous 7 days" if days <= 7 else "Older"


def shown(html: str) -> list[str]:
    """The list as a reader meets it: headings and titles, in order (only the list, not the search box)."""
    listing = html.split('id="conversation-list"', 1)[-1].split("</nav>", 1)[0]
    return [
        heading or title
        for heading, title in re.findall(r'<h2>([^<]+)</h2>|<a href="/chat/\d+/"[^>]*>([^<]+)</a>', listing)
    ]


def grouped(items: list[tuple[str, datetime]], zone: ZoneInfo, now: datetime) -> list[str]:
    """What the list should read, newest first, with a heading wherever the group changes."""
    result, last = [], None
    for title, moment in sorted(items, key=lambda item: item[1], reverse=True):
        group = expected_group(moment, zone, now)
        if group != last:
            result.append(group)
            last = group
        result.append(title)
    return result


def boundary_items(now: datetime) -> list[tuple[str, datetime]]:
    """Conversations each side of both zones' midnights, so that the two zones group them differently."""
    k_midnight, u_midnight = midnight(ZoneInfo(KIRITIMATI), now), midnight(UTC, now)
    return [
        ("Just now", now - timedelta(seconds=1)),
        ("Before Kiritimati midnight", k_midnight - timedelta(seconds=1)),
        ("Before UTC midnight", u_midnight - timedelta(seconds=1)),
        ("Three days back", u_midnight - timedelta(days=3, hours=1)),
        ("Two weeks back", now - timedelta(days=14)),
    ]


def test_conversations_are_grouped_by_the_day_in_the_cookies_time_zone(owner) -> None:
    now = timezone.now()
    items = boundary_items(now)
    for title, moment in items:
        conversation_at(owner, title, moment)
    in_kiritimati, in_utc = grouped(items, ZoneInfo(KIRITIMATI), now), grouped(items, UTC, now)
    assert in_kiritimati != in_utc  # the zone makes a difference, whatever time of day the test runs

    assert shown(client_in(owner, KIRITIMATI).get("/chat/").content.decode()) == in_kiritimati
    assert shown(client_in(owner, None).get("/chat/").content.decode()) == in_utc  # settings.TIME_ZONE
    assert timezone.get_current_timezone_name() == "UTC"  # the zone was the request's only


def test_every_group_has_its_heading_once_in_order(owner) -> None:
    now = timezone.now()
    start = midnight(UTC, now)
    for title, moment in [
        ("a", now),
        ("b", start - timedelta(hours=2)),
        ("c", start - timedelta(days=2)),
        ("d", start - timedelta(days=6, hours=23)),
        ("e", start - timedelta(days=8)),
        ("f", start - timedelta(days=400)),
    ]:
        conversation_at(owner, title, moment)
    html = client_in(owner, "UTC").get("/chat/").content.decode()
    assert shown(html) == ["Today", "a", "Yesterday", "b", "Previous 7 days", "c", "d", "Older", "e", "f"]
    # Headings a screen reader lists, in list items that are no list entries of their own.
    assert '<li role="presentation" class="group-head group-today"><h2>Today</h2></li>' in html


def test_the_first_page_starts_with_today_even_when_nothing_is_from_today(owner) -> None:
    # A send moves its conversation right under this heading (the exchange's out-of-band swap).
    conversation_at(owner, "Old one", timezone.now() - timedelta(days=30))
    html = client_in(owner, "UTC").get("/chat/").content.decode()
    assert shown(html) == ["Today", "Older", "Old one"]
    assert html.index("group-today") < html.index("group-older")


def test_a_send_puts_its_conversation_under_today(owner) -> None:
    conversation = conversation_at(owner, "", timezone.now() - timedelta(days=30))
    body = (
        client_in(owner, "UTC")
        .post(f"/chat/{conversation.pk}/messages/", {"text": "Soup, please"}, headers=HTMX)
        .content.decode()
    )
    assert f'<div hx-swap-oob="afterend:.group-today">\n<li id="conversation-{conversation.pk}"' in body


def test_a_next_page_that_continues_a_group_does_not_repeat_its_heading(owner, monkeypatch) -> None:
    monkeypatch.setattr(sidebar, "PAGE_SIZE", 3)
    now = timezone.now()
    start = midnight(UTC, now)
    for number in range(5):  # five yesterday: three on the first page, two on the next
        conversation_at(owner, f"y{number}", start - timedelta(hours=1, minutes=number))
    conversation_at(owner, "old", start - timedelta(days=20))
    client = client_in(owner, "UTC")
    first = client.get("/chat/").content.decode()
    assert shown(first) == ["Today", "Yesterday", "y0", "y1", "y2"]
    position = re.search(r'hx-get="/chat/\?before=([0-9-]+)"', first).group(1)
    second = client.get(f"/chat/?before={position}", headers=HTMX).content.decode()
    assert shown(second) == ["y3", "y4", "Older", "old"]
    assert "Yesterday" not in second and "group-today" not in second


def test_a_next_page_that_starts_a_new_group_has_its_heading(owner, monkeypatch) -> None:
    monkeypatch.setattr(sidebar, "PAGE_SIZE", 2)
    now = timezone.now()
    for number in range(2):
        conversation_at(owner, f"t{number}", now - timedelta(seconds=number))
    conversation_at(owner, "old", now - timedelta(days=20))
    client = client_in(owner, "UTC")
    position = re.search(r'hx-get="/chat/\?before=([0-9-]+)"', client.get("/chat/").content.decode()).group(1)
    assert shown(client.get(f"/chat/?before={position}", headers=HTMX).content.decode()) == ["Older", "old"]


@pytest.mark.parametrize(
    "cookie",
    ["Mars/Olympus_Mons", "../../../etc/passwd", "Europe/" + "A" * 100, "Europe/Berlin;x", "", "/", "UTC\x00"],
)
def test_an_invalid_tz_cookie_is_ignored_for_the_default_zone(owner, cookie) -> None:
    now = timezone.now()
    items = boundary_items(now)
    for title, moment in items:
        conversation_at(owner, title, moment)
    response = client_in(owner, cookie).get("/chat/")
    assert response.status_code == 200
    assert shown(response.content.decode()) == grouped(items, UTC, now)


def test_zone_named_accepts_iana_names_only() -> None:
    assert str(zone_named("Europe/Berlin")) == "Europe/Berlin"
    assert str(zone_named("America/Argentina/Buenos_Aires")) == "America/Argentina/Buenos_Aires"
    for bad in ("Nowhere/Special", "../zoneinfo/UTC", "Europe//Berlin", "/etc/localtime", "A" * 65, "Etc/GMT+x y"):
        assert zone_named(bad) is None, bad
