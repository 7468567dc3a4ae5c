"""The sidebar's list of a user's conversations: the most recent page first, older ones a page at a time.

Every page and every send used to render all of a user's conversations, each with its rename and
delete forms: for a user with 300 of them a send cost 99 ms of CPU and 415 KiB of HTML, against
11 ms and 5 KiB with none (`python -m bench.send --history 300`). A page is now at most PAGE_SIZE
items, and a send moves just its own conversation to the top of the list: 9 to 11 ms and 4.4 KiB
whatever the history.

The items are grouped under Today, Yesterday, Previous 7 days and Older, by the day each was last
updated in the user's time zone (the one chat/timezone.py activated). The first page always starts
with Today, even empty, so that a send's item has its place right under that heading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone

from chat.models import Conversation

PAGE_SIZE = 50
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


TODAY, YESTERDAY, WEEK, OLDER = "today", "yesterday", "previous-7-days", "older"
LABELS = {TODAY: "Today", YESTERDAY: "Yesterday", WEEK: "Previous 7 days", OLDER: "Older"}


@dataclass
class Group:
    key: str
    conversations: list[Conversation] = field(default_factory=list)
    # False on a page that continues the previous page's last group: its heading is already shown.
    heading: bool = True

    @property
    def label(self) -> str:
        return LABELS[self.key]


def group_of(moment: datetime, today: date) -> str:
    """Which group a conversation last updated at `moment` belongs to, on the local day `today`."""
    days = (today - timezone.localtime(moment).date()).days
    if days <= 0:
        return TODAY  # a clock a little ahead is still today
    if days == 1:
        return YESTERDAY
    return WEEK if days <= 7 else OLDER


class BadPosition(ValueError):
    """A `before` value that is not one this module wrote."""


class Sidebar:
    """One page of the user's conversations, newest first; read from the database only if shown."""

    def __init__(self, user: AbstractBaseUser, *, before: str = "") -> None:
        self.user = user
        self.older_than = parse_position(before) if before else None

    @cached_property
    def _page(self) -> list[Conversation]:
        conversations = Conversation.objects.for_user(self.user).order_by("-updated_at", "-pk")
        if self.older_than is not None:
            updated_at, pk = self.older_than
            conversations = conversations.filter(Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, pk__lt=pk))
        # The title is all an item shows: not the system prompt, which can be long.
        return list(conversations.only("pk", "title", "updated_at")[: PAGE_SIZE + 1])

    @property
    def conversations(self) -> list[Conversation]:
        return self._page[:PAGE_SIZE]

    @cached_property
    def groups(self) -> list[Group]:
        today = timezone.localdate()
        groups = [Group(TODAY)] if self.older_than is None else []
        for conversation in self.conversations:
            key = group_of(conversation.updated_at, today)
            if not groups or groups[-1].key != key:
                groups.append(Group(key))
            groups[-1].conversations.append(conversation)
        if self.older_than is not None and groups and groups[0].key == group_of(self.older_than[0], today):
            groups[0].heading = False
        return groups

    @property
    def older(self) -> str:
        """Where the next page starts, or "" when this is the last one."""
        if len(self._page) <= PAGE_SIZE:
            return ""
        last = self._page[PAGE_SIZE - 1]
        return f"{(last.updated_at - _EPOCH) // _MICROSECOND}-{last.pk}"


def parse_position(value: str) -> tuple[datetime, int]:
    micros, _, pk = value.partition("-")
    if not (micros.isdigit() and pk.isdigit()) or len(micros) > 20:
        raise BadPosition(value)
    return _EPOCH + int(micros) * _MICROSECOND, int(pk)
