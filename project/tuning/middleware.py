"""Django's own middleware under ASGI, in one thread hop per request half instead of one per middleware.

Django's built-in middleware (SecurityMiddleware, SessionMiddleware, CsrfViewMiddleware, ...) are
MiddlewareMixin classes. In an async handler each of them runs process_request and process_response
in a thread of its own via sync_to_async: seven of them cost about fifteen hops per request, each
a round trip through the event loop (about 50-70 µs of CPU here, and a wait behind everything else
queued on the loop under load). Both of a reply's requests (the POST and the stream) paid that before
the upstream call could start. `regroup` replaces each run of such classes in MIDDLEWARE by one
middleware that calls the same methods, in the same order, in one hop for the request half (with
process_view) and one for the response half. WSGI and the test client keep the plain chain.

The same holds for Django's request_started receivers (reset_queries, close_old_connections): both are
sync, so the handler runs them in a hop of their own before the first middleware. `take_over_request_started`
moves them into the first group's hop.

Measured (docs/decisions/): one request to the login page takes 18 thread hops through Django 5.2's chain and
6 through the group (tests/tuning/test_middleware.py counts them and shows the stock chain's). With the session
and reply reads in one hop and the frame-paced watch loop, the same round took added TTFT at C=100 from
216 / 343 ms to 22 / 84 ms (p50 / p99) and the capacity from 35 to 90 streams, alternated with the commit
before (`python -m bench --servers daphne --concurrency 100 --intervals 20 --no-capacity --no-variants
--app-dir <checkout>`).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.core.handlers.exception import response_for_exception
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver, set_urlconf
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

Handler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class OneHop:
    """A run of MiddlewareMixin classes as one async middleware; subclasses name them in `members`."""

    members: tuple[str, ...] = ()
    on_start: tuple[Callable[[], object], ...] = ()  # request_started's receivers, for the first group
    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        # Each member is made as Django makes it; its own get_response is never called.
        self.chain = [import_string(path)(_never_called) for path in self.members]
        self.views = [m.process_view for m in self.chain if hasattr(m, "process_view")]
        for member in self.chain:
            if hasattr(member, "process_exception") or hasattr(member, "process_template_response"):
                raise TypeError(f"{type(member).__name__} has hooks OneHop does not run; leave it out of the group")
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response, reached = await sync_to_async(self.before, thread_sensitive=True)(request)
        if response is None:
            response = await self.get_response(request)
        return await sync_to_async(self.after, thread_sensitive=True)(request, response, reached)

    def before(self, request: HttpRequest) -> tuple[HttpResponseBase | None, int]:
        """process_request of each member, then process_view; (a response that ends it early, members reached)."""
        for receiver in self.on_start:
            receiver()
        for index, member in enumerate(self.chain):
            try:
                response = member.process_request(request) if hasattr(member, "process_request") else None
            except Exception as exc:  # as Django's per-middleware wrapper does
                return response_for_exception(request, exc), index
            if response is not None:
                return response, index
        if self.views and (match := _resolve(request)) is not None:
            for process_view in self.views:
                try:
                    response = process_view(request, match.func, match.args, match.kwargs)
                except Exception as exc:
                    return response_for_exception(request, exc), len(self.chain) - 1
                if response is not None:
                    return response, len(self.chain) - 1
        return None, len(self.chain) - 1

    def after(self, request: HttpRequest, response: HttpResponseBase, reached: int) -> HttpResponseBase:
        """process_response of each member the request reached, innermost first."""
        for member in reversed(self.chain[: reached + 1]):
            if hasattr(member, "process_response"):
                try:
                    response = member.process_response(request, response)
                except Exception as exc:
                    response = response_for_exception(request, exc)
        return response


def _resolve(request: HttpRequest) -> Any:
    # As the handler will (it resolves again for the view): only the default urlconf is in use here.
    set_urlconf(None)
    try:
        return get_resolver().resolve(request.path_info)
    except Resolver404:
        return None  # the handler answers 404; no view, so no process_view


def _never_called(request: HttpRequest) -> HttpResponseBase:
    raise AssertionError("a OneHop member's get_response is never called")


def regroup(middleware: list[str], *, on_start: tuple[Callable[[], object], ...] = ()) -> list[str]:
    """MIDDLEWARE with each run of two or more MiddlewareMixin classes replaced by one OneHop; the first
    group also calls `on_start` (see take_over_request_started)."""
    result: list[str] = []
    run: list[str] = []
    for path in [*middleware, ""]:
        factory = import_string(path) if path else None
        if isinstance(factory, type) and issubclass(factory, MiddlewareMixin):
            run.append(path)
            continue
        if len(run) > 1:
            result.append(_group(run, on_start=on_start))
            on_start = ()
        else:
            result.extend(run)
        run = []
        if path:
            result.append(path)
    if on_start:  # taken from request_started, they must run somewhere
        raise ValueError("on_start needs a group of two or more MiddlewareMixin classes to run in")
    return result


def _group(paths: list[str], *, on_start: tuple[Callable[[], object], ...]) -> str:
    # Django imports middleware by dotted path, so each group is a class of this module.
    name = f"OneHop{next(_numbers)}"
    attributes = {"members": tuple(paths), "on_start": on_start, "__module__": __name__}
    globals()[name] = type(name, (OneHop,), attributes)
    return f"{__name__}.{name}"


_numbers = itertools.count()

# Django's own receivers of request_started (django/db/__init__.py), both sync.
REQUEST_STARTED_RECEIVERS = (reset_queries, close_old_connections)


def take_over_request_started() -> tuple[Callable[[], object], ...]:
    """Disconnect Django's request_started receivers and return them for regroup(on_start=...): with no
    receiver left, the handler's asend of request_started is no thread hop (docs/decisions/0009:
    about 0.5 ms a hop at C=100, on both of a reply's requests before its first token). Their work is
    unchanged: the first group runs them in the request's thread before any middleware, as the signal did.
    """
    for receiver in REQUEST_STARTED_RECEIVERS:
        request_started.disconnect(receiver)
    return REQUEST_STARTED_RECEIVERS
