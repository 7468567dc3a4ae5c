"""Search a user's conversations by title and message text: full-text on PostgreSQL, a plain contains on SQLite.

Every excerpt is built here from escaped pieces, with the match in <mark>: message text is user and model
text, and never reaches the page as HTML.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Replace
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from chat.models import Conversation, Message

if TYPE_CHECKING:
    from datetime import datetime

    from django.contrib.auth.models import AbstractBaseUser

MAX_QUERY_CHARS = 200
MAX_RESULTS = 30
# The language the message index (migration 0005) is built with; the query must use the same one to use it.
CONFIG = "english"
# Characters of context kept around a match in an excerpt (SQLite's path; ts_headline counts words).
BEFORE, AFTER = 60, 140


class QueryTooLong(ValueError):
    """A query over MAX_QUERY_CHARS: said to the user, never searched."""


@dataclass(frozen=True)
class Result:
    conversation: Conversation
    title: SafeString  # the title, escaped, with a match marked
    excerpt: SafeString  # the best matching message's text around the match, escaped and marked; "" for a title match


@dataclass(frozen=True)
class Found:
    """What the sidebar shows for a query: the results, or why there are none."""

    query: str
    results: list[Result]
    error: str = ""


def find(user: AbstractBaseUser, raw: str) -> Found:
    """Search for the query as typed; an empty one finds nothing (the page shows the usual list)."""
    try:
        query = clean_query(raw)
    except QueryTooLong as exc:
        return Found(query=raw[:MAX_QUERY_CHARS], results=[], error=str(exc))
    return Found(query=query, results=search(user, query))


def clean_query(raw: str) -> str:
    """The query as searched: stripped, without NUL (which PostgreSQL refuses in any string), bounded."""
    query = raw.replace("\x00", "").strip()
    if len(query) > MAX_QUERY_CHARS:
        raise QueryTooLong(f"Search for at most {MAX_QUERY_CHARS} characters; this is {len(query):,}.")
    return query


def search(user: AbstractBaseUser, query: str) -> list[Result]:
    """The user's conversations (not deleted) whose title or shown messages match, best first, at most MAX_RESULTS."""
    if not query:
        return []
    if connection.vendor == "postgresql":
        return _full_text(user, query)
    return _contains(user, query)


# SQLite: case-insensitive contains, most recently updated first, the first matching message as the excerpt.


def _contains(user: AbstractBaseUser, query: str) -> list[Result]:
    first_hit = (
        Message.objects.shown()
        .filter(conversation=OuterRef("pk"), content__icontains=query)
        .order_by("pk")
        .values("pk")[:1]
    )
    conversations = list(
        Conversation.objects.for_user(user)
        .annotate(hit=Subquery(first_hit))
        .filter(Q(title__icontains=query) | Q(hit__isnull=False))
        .order_by("-updated_at", "-pk")
        .only("pk", "title", "updated_at")[:MAX_RESULTS]
    )
    texts = dict(Message.objects.filter(pk__in=[c.hit for c in conversations if c.hit]).values_list("pk", "content"))
    return [
        Result(
            conversation=c,
            title=mark_first(str(c), query) or escape(str(c)),
            excerpt=excerpt_around(texts.get(c.hit, ""), query),
        )
        for c in conversations
    ]


def mark_first(text: str, query: str) -> SafeString:
    """The whole text, escaped, with the first case-insensitive match marked; "" when it does not match."""
    match = re.search(re.escape(query), text, re.IGNORECASE)
    if match is None:
        return SafeString("")
    start, end = match.span()
    return _marked(text[:start], text[start:end], text[end:])


def excerpt_around(text: str, query: str) -> SafeString:
    """A one-line excerpt of `text` around the first match of `query`, escaped, the match marked."""
    flat = " ".join(text.split())
    match = re.search(re.escape(" ".join(query.split())), flat, re.IGNORECASE)
    if match is None:
        return SafeString("")
    start, end = match.span()
    before, after = flat[max(0, start - BEFORE) : start], flat[end : end + AFTER]
    # Cut at word boundaries where there is one, and say that text was left out.
    if start > BEFORE:
        before = "…" + (before.split(" ", 1)[1] if " " in before else before)
    if end + AFTER < len(flat):
        after = (after.rsplit(" ", 1)[0] if " " in after else after) + "…"
    return _marked(before, flat[start:end], after)


def _marked(before: str, match: str, after: str) -> SafeString:
    # Each piece is escaped; only the <mark> tags around them are ours.
    return mark_safe(f"{escape(before)}<mark>{escape(match)}</mark>{escape(after)}")  # noqa: S308


# PostgreSQL: websearch syntax, ranked, excerpts from ts_headline.


def _full_text(user: AbstractBaseUser, query: str) -> list[Result]:
    from django.contrib.postgres.search import SearchQuery

    ts_query = SearchQuery(query, search_type="websearch", config=CONFIG)
    best_message = _best_messages(user, ts_query)
    title_hits = _title_hits(user, ts_query, query)
    ids = set(best_message) | set(title_hits)
    if not ids:
        return []

    marks = _Sentinels()
    conversations = {
        c.pk: c
        for c in Conversation.objects.filter(pk__in=ids)
        .annotate(marked=marks.headline("title", ts_query, highlight_all=True))
        .only("pk", "title", "updated_at")
    }
    excerpts = dict(
        Message.objects.filter(pk__in=[pk for pk, _ in best_message.values()])
        .annotate(marked=marks.headline("content", ts_query, highlight_all=False))
        .values_list("pk", "marked")
    )

    def score(pk: int) -> tuple[float, datetime, int]:
        # A title match weighs double: titles are short, and named on purpose.
        rank = 2 * (title_hits.get(pk) or 0.0) + (best_message[pk][1] if pk in best_message else 0.0)
        return (rank, conversations[pk].updated_at, pk)

    ordered = sorted(ids, key=score, reverse=True)[:MAX_RESULTS]
    return [
        Result(
            conversation=conversations[pk],
            title=marks.html(conversations[pk].marked if conversations[pk].title else "")
            or escape(str(conversations[pk])),
            excerpt=marks.html(excerpts.get(best_message[pk][0], "")) if pk in best_message else SafeString(""),
        )
        for pk in ordered
    ]


def _best_messages(user: AbstractBaseUser, ts_query: Any) -> dict[int, tuple[int, float]]:
    """{conversation id: (its best-ranked matching message, that rank)} for the best MAX_RESULTS conversations."""
    from django.contrib.postgres.search import SearchRank, SearchVector

    # The same expression as the GIN index of migration 0005, so that the index answers the match.
    content = SearchVector("content", config=CONFIG)
    best_per_conversation = (
        Message.objects.for_user(user)
        .shown()
        .annotate(document=content)
        .filter(document=ts_query)
        .annotate(rank=SearchRank(content, ts_query))
        .order_by("conversation_id", "-rank", "pk")
        .distinct("conversation_id")
        .values("pk")
    )
    hits = (
        Message.objects.filter(pk__in=Subquery(best_per_conversation))
        .annotate(rank=SearchRank(content, ts_query))
        .order_by("-rank", "-pk")
        .values_list("pk", "conversation_id", "rank")[:MAX_RESULTS]
    )
    return {conversation_id: (pk, rank) for pk, conversation_id, rank in hits}


def _title_hits(user: AbstractBaseUser, ts_query: Any, query: str) -> dict[int, float]:
    """{conversation id: rank} of titles that match the words, or contain the query as typed."""
    from django.contrib.postgres.search import SearchRank, SearchVector

    title = SearchVector("title", config=CONFIG)
    return dict(
        Conversation.objects.for_user(user)
        .annotate(document=title)
        .filter(Q(document=ts_query) | Q(title__icontains=query))
        .annotate(rank=SearchRank(title, ts_query))
        .order_by("-rank", "-updated_at")
        .values_list("pk", "rank")[:MAX_RESULTS]
    )


class _Sentinels:
    """ts_headline's markers, and stand-ins for the text it would drop.

    Random per search, so that no stored text can contain them and be turned into markup. ts_headline's
    parser takes `<b>` or `<script>` for tags and `&amp;` for an entity, and leaves them out of its
    headline; `<` and `&` go in as words of their own and come back out as they were."""

    def __init__(self) -> None:
        token = secrets.token_hex(8)
        self.start, self.stop = f"qs{token}q", f"qe{token}q"
        self.stand_ins = {"<": f"ql{token}q", "&": f"qa{token}q"}

    def headline(self, field: str, ts_query: Any, *, highlight_all: bool) -> Any:
        from django.contrib.postgres.search import SearchHeadline

        text: Any = F(field)
        for char, stand_in in self.stand_ins.items():
            text = Replace(text, Value(char), Value(f" {stand_in} "))
        options = {"highlight_all": True} if highlight_all else {"max_words": 30, "min_words": 12}
        return SearchHeadline(text, ts_query, config=CONFIG, start_sel=self.start, stop_sel=self.stop, **options)

    def html(self, headline: str) -> SafeString:
        """The headline escaped whole, the stand-ins turned back, then the markers (escaping leaves them as
        they are) made <mark>s."""
        for char, stand_in in self.stand_ins.items():
            headline = headline.replace(f" {stand_in} ", char).replace(stand_in, char)
        flat = " ".join(headline.split())
        if not flat:
            return SafeString("")
        html = str(escape(flat)).replace(self.start, "<mark>").replace(self.stop, "</mark>")
        return mark_safe(html)  # noqa: S308 - escaped above; only our own tags added
