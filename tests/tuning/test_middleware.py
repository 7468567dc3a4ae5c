"""Django's middleware under ASGI run as one group (project/tuning/middleware.py): same hooks, order and answers."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from project import tuning
from project.tuning import middleware
from tests.conftest import ChatClient

calls: list[str] = []


class First(MiddlewareMixin):
    def process_request(self, request: HttpRequest) -> None:
        calls.append("first request")

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        calls.append("first response")
        response["X-First"] = "1"
        return response


class Gate(MiddlewareMixin):
    """Answers by itself when asked to; its own process_response still runs, as in Django's chain."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        calls.append("gate request")
        if request.GET.get("gate") == "closed":
            return HttpResponse("closed by the gate", status=403)
        if request.GET.get("gate") == "broken":
            raise PermissionError("not a Django exception")  # becomes a 500, like any middleware error
        return None

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        calls.append("gate response")
        return response


class Last(MiddlewareMixin):
    def process_request(self, request: HttpRequest) -> None:
        calls.append("last request")

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        calls.append("last response")
        return response


PATHS = [f"{__name__}.{name}" for name in ("First", "Gate", "Last")]


@pytest.fixture
def group() -> middleware.OneHop:
    calls.clear()
    (path,) = middleware.regroup(PATHS)
    group_class = getattr(middleware, path.rsplit(".", 1)[1])

    async def view(request: HttpRequest) -> HttpResponse:
        calls.append("view")
        return HttpResponse("from the view")

    return group_class(view)


async def test_a_group_runs_every_hook_in_django_order(group) -> None:
    response = await group(RequestFactory().get("/"))
    assert response.content == b"from the view" and response["X-First"] == "1"
    assert calls == [
        "first request", "gate request", "last request", "view", "last response", "gate response", "first response",
    ]  # fmt: skip


async def test_a_member_that_answers_skips_the_rest_but_keeps_the_responses_of_those_reached(group) -> None:
    response = await group(RequestFactory().get("/", {"gate": "closed"}))
    assert response.status_code == 403 and response["X-First"] == "1"
    assert calls == ["first request", "gate request", "gate response", "first response"]


async def test_an_exception_in_a_member_becomes_a_response_as_in_djangos_chain(group) -> None:
    response = await group(RequestFactory().get("/", {"gate": "broken"}))
    assert response.status_code == 500 and response["X-First"] == "1"
    assert calls == ["first request", "gate request", "gate response", "first response"]


def test_regroup_keeps_other_middleware_in_place() -> None:
    grouped = middleware.regroup(["chat.csp.csp_middleware", *PATHS, "django_htmx.middleware.HtmxMiddleware"])
    assert grouped[0] == "chat.csp.csp_middleware" and grouped[2] == "django_htmx.middleware.HtmxMiddleware"
    assert grouped[1].startswith("project.tuning.middleware.OneHop") and len(grouped) == 3
    assert middleware.regroup([PATHS[0]]) == [PATHS[0]]  # a lone class stays as it is


async def test_only_the_first_group_runs_request_starteds_receivers_and_before_its_members() -> None:
    calls.clear()
    started = (lambda: calls.append("request started"),)
    first, _, second = middleware.regroup([*PATHS[:2], "chat.csp.csp_middleware", *PATHS[1:]], on_start=started)

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    outer = getattr(middleware, first.rsplit(".", 1)[1])
    inner = getattr(middleware, second.rsplit(".", 1)[1])
    await outer(inner(view))(RequestFactory().get("/"))
    assert calls[:3] == ["request started", "first request", "gate request"]
    assert calls.count("request started") == 1
    with pytest.raises(ValueError):
        middleware.regroup([PATHS[0]], on_start=started)  # no group: the receivers would be lost


def test_taking_over_request_started_leaves_the_handler_no_thread_hop_for_it() -> None:
    receivers = middleware.take_over_request_started()
    try:
        assert receivers == (reset_queries, close_old_connections)
        assert not request_started.has_listeners()  # so the handler's asend returns at once, without a thread
    finally:
        for receiver in receivers:
            request_started.connect(receiver)


def test_the_running_server_sends_every_grouped_middlewares_headers(chat: ChatClient) -> None:
    response = chat.http.get("/chat/")
    assert response.status_code == 200
    assert response.headers["X-Frame-Options"] == "DENY"  # XFrameOptionsMiddleware
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware
    assert "Cookie" in response.headers["Vary"]  # SessionMiddleware saw the session used
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]  # outside the group


def test_the_running_server_still_checks_csrf_in_the_group(chat: ChatClient) -> None:
    conversation = chat.conversation()
    forged = chat.http.post(f"/chat/{conversation.pk}/messages/", data={"text": "no token"})
    assert forged.status_code == 403
    assert not conversation.messages.exists()
    sent = chat.send(conversation, "with the token")
    assert sent.status_code == 200 and conversation.messages.count() == 2


class CountingExecutor(ThreadPoolExecutor):
    """One request's thread-sensitive executor, counting the calls it is handed: each is a thread hop."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.hops = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.hops += 1
        return super().submit(fn, *args, **kwargs)


def hops_for_one_request(app: Any, path: str) -> int:
    executor = CountingExecutor()

    async def get() -> int:
        async with ThreadSensitiveContext(executor=executor):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return (await client.get(path)).status_code

    try:
        assert asyncio.run(get()) == 200
    finally:
        executor.shutdown()
    return executor.hops


def test_djangos_chain_takes_a_thread_hop_per_middleware_and_the_group_one_per_half() -> None:
    chain = [name for name in settings.MIDDLEWARE if name != tuning.WHITENOISE]
    # Why OneHop exists: each MiddlewareMixin's request half and response half are a hop of their own.
    stock = hops_for_one_request(tuning.handler_with(chain), "/accounts/login/")
    grouped = hops_for_one_request(tuning.handler_with(middleware.regroup(chain)), "/accounts/login/")
    factories = [import_string(name) for name in chain]
    mixins = [f for f in factories if isinstance(f, type) and issubclass(f, MiddlewareMixin)]
    # Each hook a MiddlewareMixin defines runs in a hop of its own in Django's chain.
    hooks = sum(hasattr(m, "process_request") + hasattr(m, "process_response") for m in mixins)
    assert stock >= hooks  # 15 with Django's own and the request size check
    # The group: two hops for all of them (measured with Django 5.2: 18 against 6).
    assert grouped <= stock - hooks + 3
