"""The sidebar's search: the user's own, shown text only; escaped excerpts; bounded queries; both databases."""

# ruff: noqa: F811 (the tests take test_views' fixtures, imported below, as arguments of the same names)
from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from chat import search
from chat.models import Conversation, Message, Role, Status
from tests.test_views import HTMX, client, owner  # noqa: F401 (fixtures: a user and their logged-in client)

pytestmark = pytest.mark.django_db

ON_POSTGRESQL = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="full-text search (ranking, stemming, ts_headline) is PostgreSQL's"
)
ON_SQLITE = pytest.mark.skipif(connection.vendor != "sqlite", reason="the plain contains search is SQLite's path")


def chat(user, title: str, *texts: str) -> Conversation:
    conversation = Conversation.objects.create(user=user, model="demo:demo", title=title)
    for number, text in enumerate(texts):
        role = Role.USER if number % 2 == 0 else Role.ASSISTANT
        Message.objects.create(conversation=conversation, role=role, content=text, status=Status.COMPLETED)
    return conversation


def titles(results: list[search.Result]) -> list[str]:
    return [r.conversation.title for r in results]


def test_it_finds_the_users_own_conversations_by_message_text_only(owner, django_user_model) -> None:
    stranger = django_user_model.objects.create_user(username="stranger", password="another-long-password")
    mine = chat(owner, "Dinner", "How long do I boil potatoes?", "About twenty minutes.")
    chat(stranger, "Their dinner", "How long do I boil potatoes?")
    chat(owner, "Unrelated", "What is a monad?")
    results = search.search(owner, "potatoes")
    assert [r.conversation for r in results] == [mine]
    assert "<mark>potatoes</mark>" in results[0].excerpt


def test_a_deleted_conversation_and_a_message_hidden_by_an_edit_are_not_found(owner) -> None:
    chat(owner, "Gone", "the word zucchini").remove()
    edited = chat(owner, "Edited", "first try", "a reply about zucchini")
    Message.objects.filter(conversation=edited, role=Role.ASSISTANT).update(hidden_at=timezone.now())
    assert search.search(owner, "zucchini") == []
    Message.objects.filter(conversation=edited).update(hidden_at=None)
    assert titles(search.search(owner, "zucchini")) == ["Edited"]


def test_a_title_matches_and_comes_back_marked(owner) -> None:
    chat(owner, "Bread <baking> notes", "flour and water")
    chat(owner, "Cars", "engines")
    [result] = search.search(owner, "bread")
    assert result.conversation.title == "Bread <baking> notes"
    assert "<mark>Bread</mark>" in result.title and "&lt;baking&gt;" in result.title and "<baking>" not in result.title


def test_the_excerpt_marks_the_match_and_escapes_everything_else(owner, client) -> None:
    text = "The lighthouse: <script>alert('x')</script> & <b>text</b>."
    chat(owner, "Escapes", text)
    [result] = search.search(owner, "lighthouse")
    assert "<mark>lighthouse</mark>" in result.excerpt
    assert "<script>" not in result.excerpt and "&lt;script&gt;" in result.excerpt
    assert "<b>" not in result.excerpt and "&amp;" in result.excerpt
    # And so on the page, with htmx and without.
    for headers in (HTMX, {}):
        html = client.get("/chat/search/", {"q": "lighthouse"}, headers=headers).content.decode()
        assert "&lt;script&gt;alert(" in html and "<script>alert(" not in html
        assert "<mark>lighthouse</mark>" in html


def test_an_excerpt_is_cut_around_the_match_on_one_line() -> None:
    text = "word " * 100 + "needle\nin the\n\nhaystack " + "tail " * 100
    excerpt = search.excerpt_around(text, "NEEDLE")
    assert excerpt.startswith("…") and excerpt.endswith("…") and "\n" not in excerpt
    assert "<mark>needle</mark> in the haystack" in excerpt
    assert len(excerpt) < search.BEFORE + search.AFTER + 40


def test_a_query_is_bounded_and_a_longer_one_is_said_not_searched(owner, client) -> None:
    chat(owner, "Long", "x" * 300)
    too_long = "x" * (search.MAX_QUERY_CHARS + 1)
    found = search.find(owner, too_long)
    assert found.results == [] and "at most 200 characters" in found.error
    for headers in (HTMX, {}):
        response = client.get("/chat/search/", {"q": too_long}, headers=headers)
        assert response.status_code == 200 and "Search for at most 200 characters" in response.content.decode()
    assert search.find(owner, "  " + "x" * search.MAX_QUERY_CHARS + "  ").error == ""  # stripped first


def test_at_most_thirty_results(owner) -> None:
    for number in range(search.MAX_RESULTS + 5):
        chat(owner, f"Chat {number}", "the same pelican again")
    assert len(search.search(owner, "pelican")) == search.MAX_RESULTS


@pytest.mark.parametrize("query", ["!!!", "&|!():*'\"", "<>", "-", "\x00", "a\x00b", "''", "\\"])
def test_a_query_of_punctuation_only_is_answered_not_a_500(owner, client, query) -> None:
    chat(owner, "Punctuation", "Hello!!! (really) <> & friends")
    response = client.get("/chat/search/", {"q": query}, headers=HTMX)
    assert response.status_code == 200
    search.search(owner, search.clean_query(query))  # and the function itself, on this database


def test_no_match_is_said_and_an_empty_query_gives_the_usual_list_back(owner, client) -> None:
    chat(owner, "Soup", "leek and potato")
    none = client.get("/chat/search/", {"q": "spaceship"}, headers=HTMX).content.decode()
    assert "No conversations match “spaceship”." in none
    # The live search's cleared box: nothing to show over the list, so the list is back.
    empty = client.get("/chat/search/", {"q": "   "}, headers=HTMX).content.decode()
    assert empty.strip() == ""
    page = client.get("/chat/search/", {"q": ""}).content.decode()
    assert 'id="conversation-list"' in page and ">Soup</a>" in page and "match" not in page


def test_without_javascript_the_results_are_a_page_with_the_box_filled_in(owner, client) -> None:
    soup = chat(owner, "Soup", "leek and potato")
    page = client.get("/chat/search/", {"q": "leek"}).content.decode()
    assert "<html" in page and 'value="leek"' in page and "1 conversation matches “leek”." in page
    assert re.search(rf'<a href="/chat/{soup.pk}/"[^>]*>Soup</a>\s*<p class="excerpt"><mark>leek</mark>', page)


def test_the_sidebar_has_a_search_box_named_for_what_it_does(client) -> None:
    page = client.get("/chat/").content.decode()
    assert '<label for="search-q" class="visually-hidden">Search conversations</label>' in page
    assert re.search(r'<form class="search" role="search" method="get" action="/chat/search/"', page)
    assert 'hx-trigger="input changed delay:250ms, search"' in page and 'hx-target="#search-results"' in page
    assert "{#" not in page and "#}" not in page and "comment %}" not in page  # template comments stay out


def test_search_needs_a_login() -> None:
    response = Client().get("/chat/search/", {"q": "x"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@ON_SQLITE
def test_on_sqlite_a_part_of_a_word_matches_case_insensitively(owner) -> None:
    chat(owner, "Trains", "The STEAMengine was loud")
    [result] = search.search(owner, "steam")
    assert "<mark>STEAM</mark>engine" in result.excerpt


@ON_POSTGRESQL
def test_on_postgresql_words_match_by_their_stem_and_the_best_ranked_comes_first(owner) -> None:
    chat(owner, "Once", "We talked about running once.")
    chat(owner, "Often", "Runners run; running, runs, and the run again. Run!")
    results = search.search(owner, "runs")
    assert titles(results) == ["Often", "Once"]
    assert "<mark>" in results[1].excerpt and "running" in results[1].excerpt


@ON_POSTGRESQL
def test_on_postgresql_websearch_syntax_works(owner) -> None:
    chat(owner, "Both", "apples and pears")
    chat(owner, "Apples only", "just apples")
    assert titles(search.search(owner, "apples -pears")) == ["Apples only"]
    assert titles(search.search(owner, '"apples and pears"')) == ["Both"]


@ON_POSTGRESQL
def test_on_postgresql_stored_text_cannot_forge_a_mark(owner) -> None:
    # The headline's sentinels are random per search: text that looks like one stays text.
    chat(owner, "Forge", "qs0000000000000000q <mark>lighthouse</mark> keeper")
    [result] = search.search(owner, "lighthouse")
    assert result.excerpt.count("<mark>") == 1 and "&lt;mark&gt;" in result.excerpt


@ON_POSTGRESQL
def test_on_postgresql_the_message_search_uses_the_gin_index(owner) -> None:
    from django.contrib.postgres.search import SearchQuery, SearchVector

    chat(owner, "Indexed", "a lighthouse")
    query = SearchQuery("lighthouse", search_type="websearch", config=search.CONFIG)
    # The expression search.py filters on, as the ORM compiles it: the index must be usable for it.
    rows = Message.objects.annotate(document=SearchVector("content", config=search.CONFIG)).filter(document=query)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    assert "chat_message_content_fts" in rows.explain()
